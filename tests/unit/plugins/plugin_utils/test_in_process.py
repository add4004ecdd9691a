"""A bakery module run in Ansible's worker: the task's result is the one the module gives when Ansible runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ansible_collections.bakery.images.plugins.plugin_utils import _in_process

REPO = Path(__file__).resolve().parents[4]


def action(
    tmp_path: Path, check_mode: bool = False, transport: str = "local", environment=None, **task
) -> SimpleNamespace:
    """The parts of an action plugin that eligible() and run_module() read."""
    templar = SimpleNamespace(template=lambda value: value)
    return SimpleNamespace(
        _connection=SimpleNamespace(transport=transport),
        _play_context=SimpleNamespace(become=False, check_mode=check_mode, diff=False),
        _task=SimpleNamespace(
            async_val=task.get("async_val", 0),
            environment=environment or [{}],
            delegate_to=task.get("delegate_to"),
        ),
        _templar=templar,
        _loader=SimpleNamespace(get_basedir=lambda: str(tmp_path)),
    )


def provenance_args(tmp_path: Path) -> dict:
    return {
        "path": str(tmp_path / "x.intoto.json"),
        "target": {"name": "docker", "type": "docker", "fingerprint": "ab" * 32, "inputs": {}},
        "artifact": {"status": "built", "id": "sha256:" + "cd" * 32, "fingerprint": "ab" * 32},
    }


def test_only_a_local_task_in_the_controllers_python_runs_in_the_worker(tmp_path, monkeypatch):
    here = {"ansible_python_interpreter": sys.executable}
    assert _in_process.eligible(action(tmp_path), here)
    assert not _in_process.eligible(action(tmp_path), {"ansible_python_interpreter": "/usr/bin/python3.9"})
    assert not _in_process.eligible(action(tmp_path), {})
    assert not _in_process.eligible(action(tmp_path, transport="ssh"), here)
    assert not _in_process.eligible(action(tmp_path, async_val=30), here)
    assert not _in_process.eligible(action(tmp_path, environment=[{"HTTP_PROXY": "x"}]), here)
    become = action(tmp_path)
    become._play_context.become = True
    assert not _in_process.eligible(become, here)
    monkeypatch.setenv(_in_process.SWITCH, "0")
    assert not _in_process.eligible(action(tmp_path), here)


def test_a_task_delegated_to_a_local_host_in_the_controllers_python_runs_in_the_worker(tmp_path):
    """A builder's task delegated to its target's host (the docker step cache's commit, say): the interpreter is the
    delegated host's, as Ansible's ActionBase reads it, not the builder's."""
    builder = {"ansible_python_interpreter": "/usr/bin/python3"}
    delegated = dict(builder, ansible_delegated_vars={"t1": {"ansible_python_interpreter": sys.executable}})
    assert _in_process.eligible(action(tmp_path, delegate_to="t1"), delegated)
    assert not _in_process.eligible(action(tmp_path), delegated)
    assert not _in_process.eligible(action(tmp_path, delegate_to="t2"), delegated)
    reversed_ = {"ansible_python_interpreter": sys.executable, "ansible_delegated_vars": {"t1": builder}}
    assert not _in_process.eligible(action(tmp_path, delegate_to="t1"), reversed_)


def test_the_module_writes_its_result_with_defaults_applied_and_changed_truthful(tmp_path):
    args = provenance_args(tmp_path)
    result = _in_process.run_module(action(tmp_path), "provenance", args)
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert json.loads(Path(args["path"]).read_text())["subject"]
    # the defaults of the spec are what the module was given
    assert result["invocation"]["module_args"]["versions"] == {}
    again = _in_process.run_module(action(tmp_path), "provenance", args)
    assert again["changed"] is False


def test_check_mode_reaches_the_module(tmp_path):
    args = provenance_args(tmp_path)
    result = _in_process.run_module(action(tmp_path, check_mode=True), "provenance", args)
    assert result["changed"] is True
    assert not Path(args["path"]).exists()


def test_bad_arguments_fail_as_ansible_module_fails_them(tmp_path):
    missing = _in_process.run_module(action(tmp_path), "provenance", {"path": str(tmp_path / "p")})
    assert missing["failed"] and "missing required arguments: artifact, target" in missing["msg"]
    unknown = _in_process.run_module(
        action(tmp_path), "provenance", dict(provenance_args(tmp_path), colour="red")
    )
    assert unknown["failed"]
    assert unknown["msg"].startswith("Unsupported parameters for (provenance) module: colour")
    wrong_type = _in_process.run_module(
        action(tmp_path), "provenance", dict(provenance_args(tmp_path), target="not a dict")
    )
    assert wrong_type["failed"] and "target" in wrong_type["msg"]


def test_a_bakery_error_is_the_tasks_message(tmp_path):
    args = provenance_args(tmp_path)
    args["artifact"] = {"status": "built"}
    result = _in_process.run_module(action(tmp_path), "provenance", args)
    assert result["failed"] is True
    assert "has no digest" in result["msg"]
    assert result["changed"] is False


def test_no_log_values_leave_the_result(tmp_path, monkeypatch):
    """A secret option's value is masked wherever the module's result repeats it, as AnsibleModule masks it."""
    seen = {}

    def main():
        module = _in_process_module(
            argument_spec=dict(token=dict(type="str", no_log=True), name=dict(type="str")),
            supports_check_mode=True,
        )
        seen["params"] = dict(module.params)
        module.exit_json(
            changed=True, msg="used %s for %s" % (module.params["token"], module.params["name"]), ok=True
        )

    fake = SimpleNamespace(main=main)

    def _in_process_module(**kwargs):
        return fake.AnsibleModule(**kwargs)

    monkeypatch.setattr(_in_process.importlib, "import_module", lambda name: fake)
    result = _in_process.run_module(action(tmp_path), "fake", {"token": "s3cr3t-value", "name": "web"})
    assert seen["params"]["token"] == "s3cr3t-value"
    assert "s3cr3t-value" not in json.dumps(result)
    assert result["msg"] == "used ******** for web"
    assert result["invocation"]["module_args"]["token"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert result["ok"] is True


def _raises_value_error():
    raise ValueError("boom")


def _exits():
    raise SystemExit(3)


def _returns():
    return None


@pytest.mark.parametrize(
    "main, expected",
    [
        (_raises_value_error, "module fake failed: ValueError: boom"),
        (_exits, "module fake exited (3) without a result"),
        (_returns, "module fake returned without exit_json or fail_json"),
    ],
)
def test_a_module_that_crashes_fails_the_task(tmp_path, monkeypatch, main, expected):
    monkeypatch.setattr(_in_process.importlib, "import_module", lambda name: SimpleNamespace(main=main))
    result = _in_process.run_module(action(tmp_path), "fake", {})
    assert result["failed"] is True and result["msg"] == expected


def test_the_module_runs_in_the_tasks_base_directory(tmp_path, monkeypatch):
    seen = {}

    def main():
        seen["cwd"] = os.getcwd()
        raise _in_process.ModuleExit({"changed": False})

    monkeypatch.setattr(_in_process.importlib, "import_module", lambda name: SimpleNamespace(main=main))
    monkeypatch.chdir("/")
    _in_process.run_module(action(tmp_path), "fake", {})
    assert seen["cwd"] == str(tmp_path)


def test_a_bake_target_runs_its_modules_in_the_worker_and_the_switch_turns_it_off(tmp_path):
    """Through ansible-playbook: a local host in the playbook's Python runs the module without a module file (no
    AnsiballZ in -vvv), and BAKERY_IN_PROCESS=0 runs it as any module; both give the same result."""
    playbook = tmp_path / "play.yml"
    out = tmp_path / "out"
    out.mkdir()
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.add_host: {name: t1, ansible_connection: local,"
        " ansible_python_interpreter: '{{ ansible_playbook_python }}'}\n"
        "- hosts: t1\n  gather_facts: false\n  tasks:\n"
        "    - bakery.images.provenance:\n"
        '        path: \'%s/{{ lookup("env", "WHICH") }}.json\'\n'
        "        target: {name: docker, type: docker, fingerprint: '%s', inputs: {}}\n"
        "        artifact: {status: found, id: 'sha256:%s', fingerprint: '%s'}\n"
        "      register: made\n"
        "    - ansible.builtin.copy: {content: '{{ made | to_json }}', dest: '%s/{{ lookup(\"env\", \"WHICH\") }}.result'}\n"
        % (out, "ab" * 32, "cd" * 32, "ab" * 32, out)
    )
    logs = {}
    for which, switch in (("worker", "1"), ("module", "0")):
        env = dict(
            os.environ,
            WHICH=which,
            BAKERY_IN_PROCESS=switch,
            ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
        )
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-vvv", str(playbook)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        logs[which] = proc.stdout
    assert "AnsiballZ_provenance" not in logs["worker"]
    assert "AnsiballZ_provenance" in logs["module"]
    worker, module = (json.loads((out / ("%s.result" % w)).read_text()) for w in ("worker", "module"))
    assert (out / "worker.json").read_text() == (out / "module.json").read_text()
    assert sorted(worker) == sorted(module)
    for key in ("changed", "subjects", "msg", "failed"):
        assert worker.get(key) == module.get(key)
    assert worker["statement"]["sha256"] == module["statement"]["sha256"]
