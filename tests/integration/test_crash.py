"""Bakes that are killed or interrupted leak nothing: SIGKILL of the whole run at each phase of a Docker
target, then the janitor; SIGINT and SIGTERM, which clean up before the run exits; on_error keep and abort.

The qemu and vagrant targets have their crash tests in test_qemu_crash.py (they need the kernel rootfs of the
VM stream); the AMI and GCE targets in test_ami.py and test_gce.py.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import BAKE_BASE, REPO, docker_client, run_playbook
from crash import HOLD_ROLE, Run, run_janitor, write_role

BAKE = REPO / "playbooks" / "bake.yml"
BAKE_ID_LABEL = "bakery-bake-id"
IMAGE_BAKE_ID_LABEL = "org.bakery.bake-id"

# the provisioning role: a layer big enough that the commit takes a moment, then a wait that a test can
# stretch to hold the bake in its provisioning phase
BALLAST_AND_HOLD = (
    """
- name: Write a layer worth committing
  ansible.builtin.command: dd if=/dev/urandom of=/var/tmp/ballast bs=1M count={{ ballast_mb }} status=none
  changed_when: true
"""
    + HOLD_ROLE
)


def definition(tmp_path: Path, cache_dir: str, hold: int = 0, ballast: int = 16, **top) -> Path:
    run = uuid.uuid4().hex[:8]
    repository = "bakery-test/crash-%s" % run
    write_role(tmp_path, BALLAST_AND_HOLD)
    bake = {
        "name": "crash",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        # the run's own value: the fingerprint of this bake is one no other bake has
        "provisioners": [
            {"role": "hold", "vars": {"hold_seconds": hold, "ballast_mb": ballast, "crash_run": run}}
        ],
        "targets": [{"name": "web", "docker": {"repository": repository}}],
        **top,
    }
    path = tmp_path / "bake.yml"
    path.write_text(yaml.safe_dump({"bake": bake}))
    return path


def repository_of(path: Path) -> str:
    return yaml.safe_load(path.read_text())["bake"]["targets"][0]["docker"]["repository"]


def env_for(tmp_path: Path) -> dict[str, str]:
    return {"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}


def of_bake(bake_id: str) -> dict[str, list[str]]:
    """What of bake *bake_id* the engine still has: containers, and images by label or tag."""
    client = docker_client()
    containers = client.containers.list(all=True, filters={"label": "%s=%s" % (BAKE_ID_LABEL, bake_id)})
    images = client.images.list(all=True, filters={"label": "%s=%s" % (IMAGE_BAKE_ID_LABEL, bake_id)})
    return {
        "containers": sorted(c.name for c in containers),
        "images": sorted(i.id for i in images),
    }


def janitor(tmp_path: Path, bake_file: Path, bake_id: str, *args: str):
    return run_janitor(tmp_path, bake_file, bake_id, *args, env=env_for(tmp_path))


def start(tmp_path: Path, bake_file: Path, bake_id: str, *args: str) -> Run:
    return Run(
        [str(BAKE), "-e", "@%s" % bake_file, "-e", "bake_id=%s" % bake_id, *args],
        tmp_path,
        env=env_for(tmp_path),
    )


# (phase, the task banner that starts it, seconds to wait after the banner before the kill)
KILL_POINTS = [
    ("launch", r"TASK \[bakery\.images\.docker : Start the build container\]", 0.3),
    ("provision", r"TASK \[hold : Hold the builder\]", 1.0),
    ("capture", r"TASK \[bakery\.images\.docker : Commit the provisioned build container\]", 1.5),
]


@pytest.mark.parametrize("phase, banner, delay", KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_sigkill_at_each_phase_then_the_janitor_leaves_nothing(bake_base, tmp_path, phase, banner, delay):
    bake_file = definition(
        tmp_path, bake_base["cache_dir"], hold=120 if phase == "provision" else 0, ballast=256
    )
    repository = repository_of(bake_file)
    bake_id = "crash-%s-%s" % (phase, uuid.uuid4().hex[:6])
    run = start(tmp_path, bake_file, bake_id)
    run.wait_for(banner, timeout=300)
    time.sleep(delay)
    killed = run.kill()
    assert len(killed) > 1, "only ansible-playbook itself was running: %s" % killed
    if phase == "provision":
        assert of_bake(bake_id)["containers"], "the build container should exist while provisioning"

    cleaned = janitor(tmp_path, bake_file, bake_id)
    assert of_bake(bake_id) == {"containers": [], "images": []}, cleaned.stdout[-3000:]
    assert not docker_client().images.list(name=repository), "the killed bake tagged an image"
    again = janitor(tmp_path, bake_file, bake_id)
    assert "changed=0" in again.stdout or '"changed": 0' in again.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_clean_up_before_the_run_exits(bake_base, tmp_path, signum):
    bake_file = definition(tmp_path, bake_base["cache_dir"], hold=300)
    bake_id = "signal-%s" % uuid.uuid4().hex[:6]
    run = start(tmp_path, bake_file, bake_id)
    run.wait_for(r"TASK \[hold : Hold the builder\]", timeout=300)
    time.sleep(1)
    assert of_bake(bake_id)["containers"]
    started = time.monotonic()
    rc = run.signal(signum, timeout=180)
    assert rc != 0
    assert "removing the temporary resources of bake %s" % bake_id in run.output
    assert "temporary resources of bake %s removed" % bake_id in run.output, run.output[-3000:]
    assert of_bake(bake_id) == {"containers": [], "images": []}
    assert time.monotonic() - started < 120


def test_on_error_keep_leaves_a_reachable_builder_and_the_janitor_command(bake_base, tmp_path):
    bake_file = definition(tmp_path, bake_base["cache_dir"])
    broken = tmp_path / "roles" / "broken" / "tasks"
    broken.mkdir(parents=True)
    (broken / "main.yml").write_text(
        "- name: Break\n  ansible.builtin.shell: echo last words; exit 3\n  changed_when: false\n"
    )
    data = yaml.safe_load(bake_file.read_text())
    data["bake"]["provisioners"] = [{"role": "broken"}]
    bake_file.write_text(yaml.safe_dump(data))
    bake_id = "keep-%s" % uuid.uuid4().hex[:6]
    run = run_playbook(
        BAKE,
        tmp_path,
        args=["-e", "@%s" % bake_file, "-e", "bake_id=%s" % bake_id, "-e", "bakery_on_error=keep"],
        json_output=False,
        env=env_for(tmp_path),
    )
    assert run.rc != 0
    assert "on_error=keep: the failed builders were kept" in run.stdout
    assert "last words" in run.stdout
    container = of_bake(bake_id)["containers"]
    assert len(container) == 1
    reach = "docker exec -it %s /bin/sh" % container[0]
    assert reach in run.stdout
    # the printed command works (without -it: no terminal here)
    client = docker_client()
    assert client.containers.get(container[0]).exec_run(["cat", "/etc/debian_version"]).exit_code == 0
    command = "ansible-playbook bakery.images.janitor -e @%s -e janitor_bake_id=%s" % (bake_file, bake_id)
    assert command in run.stdout
    janitor(tmp_path, bake_file, bake_id)
    assert of_bake(bake_id) == {"containers": [], "images": []}


def test_on_error_abort_stops_everything_and_removes_nothing(bake_base, tmp_path):
    bake_file = definition(tmp_path, bake_base["cache_dir"])
    picky = tmp_path / "roles" / "picky" / "tasks"
    picky.mkdir(parents=True)
    (picky / "main.yml").write_text(
        "- name: Refuse one of the builders\n  ansible.builtin.fail:\n    msg: not on this one\n"
        "  when: inventory_hostname == 'bakery-gone-builder'\n"
    )
    data = yaml.safe_load(bake_file.read_text())
    # two targets: one fails in provisioning, the other is then not captured, and nothing is removed
    repository = repository_of(bake_file)
    data["bake"]["on_error"] = "abort"
    data["bake"]["provisioners"] = [{"role": "picky"}]
    data["bake"]["targets"] = [
        {"name": "web", "docker": {"repository": repository}},
        {"name": "gone", "docker": {"repository": repository + "-gone"}},
    ]
    bake_file.write_text(yaml.safe_dump(data))
    bake_id = "abort-%s" % uuid.uuid4().hex[:6]
    run = run_playbook(
        BAKE, tmp_path, args=["-e", "@%s" % bake_file, "-e", "bake_id=%s" % bake_id], env=env_for(tmp_path)
    )
    assert run.rc != 0
    failure = run.task_result("Fail for the targets that failed")["msg"]
    assert "on_error=abort: temporary resources were left" in failure, failure
    assert "target gone failed in provision" in failure and "not on this one" in failure
    assert "not captured because fail_fast is set: web" in failure
    assert len(of_bake(bake_id)["containers"]) == 2, "abort removed a build container"
    assert not docker_client().images.list(name=repository), "abort captured web"
    assert (
        "ansible-playbook bakery.images.janitor -e @%s -e janitor_bake_id=%s" % (bake_file, bake_id)
        in failure
    )
    janitor(tmp_path, bake_file, bake_id)
    assert of_bake(bake_id) == {"containers": [], "images": []}


# a role that holds the builder as long as the run's environment says: its content (its step key) is the same
# in a run that is held and killed and in the run after it
ENV_HOLD_ROLE = """
- name: Hold the builder while the environment asks
  ansible.builtin.command: sleep {{ lookup('ansible.builtin.env', 'BAKERY_TEST_HOLD') | default('0', true) }}
  changed_when: true
"""


def test_a_bake_killed_in_a_step_resumes_after_the_last_step_it_kept(bake_base, tmp_path):
    """Per-step cache: SIGKILL while the second provisioner runs. The first provisioner's state was kept (a step
    image), the second kept nothing, so the next bake, after the janitor, starts after the first provisioner and
    runs the second one again: no state of an unfinished step is ever used."""
    run_id = uuid.uuid4().hex[:8]
    repository = "bakery-test/crash-step-%s" % run_id
    write_role(tmp_path, ENV_HOLD_ROLE, name="env_hold")
    bake = {
        "name": "crash-step",
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        "package_lists": "keep",
        "provisioners": [
            {
                "shell": {
                    "inline": ["od -An -N8 -tx1 /dev/urandom > /etc/bakery-one"],
                    "environment": {"RUN": run_id},
                }
            },
            {"role": "env_hold"},
        ],
        "targets": [{"name": "web", "docker": {"repository": repository}}],
    }
    bake_file = tmp_path / "bake.yml"
    bake_file.write_text(yaml.safe_dump({"bake": bake}))
    bake_id = "crash-step-%s" % run_id
    made: list[str] = []
    try:
        held = Run(
            [str(BAKE), "-e", "@%s" % bake_file, "-e", "bake_id=%s" % bake_id],
            tmp_path,
            env=dict(env_for(tmp_path), BAKERY_TEST_HOLD="300"),
        )
        held.wait_for(r"TASK \[env_hold : Hold the builder while the environment asks\]", timeout=300)
        time.sleep(1.0)
        held.kill()
        janitor(tmp_path, bake_file, bake_id)
        assert of_bake(bake_id) == {"containers": [], "images": []}

        again = run_playbook(BAKE, tmp_path, args=["-e", "@%s" % bake_file], env=env_for(tmp_path))
        assert again.rc == 0, again.explain()
        keys = again.task_result("Start the build container")["step_cache"]["keys"]
        for key in keys:
            made += [
                i["Id"]
                for i in docker_client().api.images(
                    all=True, filters={"label": "org.bakery.step-key=%s" % key}
                )
            ]
        (entry,) = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"]
        made.append(entry["id"])
        # the first step from the killed bake, the second run again (the killed one kept no state of it)
        assert entry["step_cache"]["steps"] == ["hit", "miss"] and entry["step_cache"]["resume"] == 1, entry
        # and what the killed bake kept of the first step is a sealed step image, the one the bake started from
        (first_state,) = docker_client().api.images(
            all=True, filters={"label": "org.bakery.step-key=%s" % keys[1]}
        )
        assert entry["step_cache"]["image"] == first_state["Id"]
    finally:
        for repo_image in docker_client().images.list(name=repository):
            made.append(repo_image.id)
        for _attempt in range(2):
            for image in reversed(list(dict.fromkeys(made))):
                try:
                    docker_client().api.remove_image(image, force=True, noprune=False)
                except Exception:  # noqa: BLE001 - gone already, or the parent of another
                    pass
