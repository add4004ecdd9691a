"""Roles that misbehave the way roles written for booted systems do, and the bake still cleans up and reports.

Each bake has two Docker targets; the role fails on both builders in one of the ways a real role fails: a
handler fails (a service restart where no service manager runs), a task with ``any_errors_fatal`` fails on
one builder, the builder goes away in the middle of the role, or the role ends the play (``meta: end_play``).
Ansible alone would stop the run after the provisioning play in the first three; the bake must still run the
capture, cleanup and report plays: no build container is left (``docker_leftovers``), nothing is tagged, and
the failure names the task or handler, the builder and its last output lines.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import BAKE_BASE, REPO, docker_client, remove_repositories, run_playbook

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"

ROLES = {
    "handler": (
        """
- name: Configure the web server
  ansible.builtin.copy:
    content: "worker_processes {{ ansible_processor_vcpus | default(1) }};\\n"
    dest: /etc/unruly.conf
    mode: "0644"
  notify: Restart nginx
""",
        """
- name: Restart nginx
  ansible.builtin.shell: echo "restarting nginx on {{ inventory_hostname }}"; echo "no service manager" >&2; exit 1
""",
    ),
    "fatal": (
        """
- name: Check the kernel, fatal for every host
  ansible.builtin.shell: echo "kernel check failed on {{ inventory_hostname }}"; exit 2
  any_errors_fatal: true
  changed_when: false
  when: inventory_hostname == 'bakery-one-builder'
""",
        None,
    ),
    "unreachable": (
        """
- name: Note the first step
  ansible.builtin.copy:
    content: "first\\n"
    dest: /first
    mode: "0644"

- name: Lose the builder (as a reboot that never comes back, or a role that kills the machine's network)
  community.docker.docker_container:
    name: "{{ ansible_host }}"
    state: absent
    force_kill: true
  delegate_to: localhost
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"

- name: Carry on as on a machine that stayed
  ansible.builtin.copy:
    content: "second\\n"
    dest: /second
    mode: "0644"
""",
        None,
    ),
    "end_play": (
        """
- name: Stop here on systems this role does not support
  ansible.builtin.meta: end_play
""",
        None,
    ),
}


def unruly_bake(tmp_path: Path, cache_dir: str, mode: str) -> tuple[dict, str]:
    repo = "bakery-test/unruly-%s-%s" % (mode.replace("_", "-"), uuid.uuid4().hex[:8])
    tasks, handlers = ROLES[mode]
    role = tmp_path / "roles" / "unruly"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text(tasks)
    if handlers:
        (role / "handlers").mkdir()
        (role / "handlers" / "main.yml").write_text(handlers)
    definition = {
        "name": "unruly",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        "provisioners": [{"role": "unruly"}],
        # one bake leaves the package lists alone (no apt-get update in the builders); the others refresh them
        "package_lists": "keep" if mode == "end_play" else "refresh",
        "targets": [
            {"name": "one", "docker": {"repository": repo, "tags": ["one"]}},
            {"name": "two", "docker": {"repository": repo, "tags": ["two"]}},
        ],
    }
    return definition, repo


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            "handler",
            ["handler 'Restart nginx'", "restarting nginx on bakery-one-builder", "no service manager"],
        ),
        (
            "fatal",
            ["task 'Check the kernel, fatal for every host'", "kernel check failed on bakery-one-builder"],
        ),
        ("unreachable", ["did not finish provisioning (it stopped in role unruly)", "became unreachable"]),
        ("end_play", ["did not finish provisioning (it stopped in role unruly)", "meta end_play"]),
    ],
)
def test_cleanup_and_report_run_whatever_the_role_does(bake_base, tmp_path, docker_leftovers, mode, expected):
    definition, repo = unruly_bake(tmp_path, bake_base["cache_dir"], mode)
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    try:
        run = run_playbook(
            BAKE_PLAYBOOK,
            tmp_path,
            args=["-e", "@%s" % path],
            env={"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")},
        )
        assert run.rc != 0
        # the cleanup play ran on both targets, then the report: manifest, summary, the failure named
        assert {"bakery-one", "bakery-two"} <= set(run.stats), run.stats
        assert len(run.task_results("Remove every temporary resource of the bake")) == 2, run.stdout[-3000:]
        summary = run.task_result("Artifact summary")["msg"]
        assert summary[0].endswith("2 failed"), summary
        failure = run.task_result("Fail for the targets that failed")["msg"]
        assert "2 target(s) failed" in failure, failure
        for target in ("one", "two"):
            assert "target %s failed in provision on builder bakery-%s-builder" % (target, target) in failure
        for text in expected:
            assert text in failure, failure
        assert not (tmp_path / "output" / "bake-manifest.json").exists(), "a manifest lists what failed"
        assert not docker_client().images.list(name=repo), "a failed target was captured"
        refreshed = run.task_results("Refresh the package lists before the first provisioner")
        ran = [r for r in refreshed if not r.get("skipped")]
        assert len(ran) == (0 if mode == "end_play" else 2), refreshed
    finally:
        remove_repositories(repo)
