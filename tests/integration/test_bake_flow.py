"""The bake as a whole: targets in parallel, a failing target does not stop the others unless fail_fast,
selection with bake_only/bake_except.

Two Docker targets share one provisioning role that fails on the builder of the target named ``bad``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from conftest import BAKE_BASE, REPO, docker_client, remove_repositories, run_playbook

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"

# Fails on one builder only; on the others it writes a file the test finds in the image.
ROLE = """
- name: Note that this builder was provisioned, and where (the variables a bake gives its builders)
  ansible.builtin.copy:
    content: "provisioned in a {{ bakery_builder_type }} for {{ bakery_target_name }}\\n"
    dest: /provisioned
    mode: "0644"

- name: Find a package without updating the package lists first (the builder has them, as a cloud image)
  ansible.builtin.command: apt-cache show --no-all-versions hello
  changed_when: false

- name: Break on the builder of target bad
  ansible.builtin.shell: echo breaking {{ inventory_hostname }}; exit 4
  when: inventory_hostname == 'bakery-bad-builder'
  changed_when: false
"""


def two_targets(tmp_path: Path, cache_dir: str, **extra) -> tuple[dict, str]:
    repo = "bakery-test/flow-%s" % uuid.uuid4().hex[:8]
    role = tmp_path / "roles" / "breaks_on_bad" / "tasks"
    role.mkdir(parents=True, exist_ok=True)
    (role / "main.yml").write_text(ROLE)
    definition = {
        "name": "flow",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        "provisioners": [{"role": "breaks_on_bad"}],
        "targets": [
            {"name": "good", "docker": {"repository": repo, "tags": ["good"]}},
            {"name": "bad", "docker": {"repository": repo, "tags": ["bad"]}},
        ],
        **extra,
    }
    return definition, repo


def bake(tmp_path: Path, definition: dict, *args: str):
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    return run_playbook(
        BAKE_PLAYBOOK,
        tmp_path,
        args=["-e", "@%s" % path, *args],
        env={"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")},
    )


def images(repo: str) -> set[str]:
    return {tag for image in docker_client().images.list(name=repo) for tag in image.tags}


def test_a_failing_target_does_not_stop_the_other(bake_base, tmp_path, docker_leftovers):
    definition, repo = two_targets(tmp_path, bake_base["cache_dir"])
    try:
        run = bake(tmp_path, definition)
        assert run.rc != 0
        failure = run.task_result("Fail for the targets that failed")["msg"]
        assert "1 target(s) failed" in failure
        assert "target bad failed in provision on builder bakery-bad-builder" in failure
        assert "breaking bakery-bad-builder" in failure
        assert "good" not in failure.split("\n", 1)[1]
        assert images(repo) == {"%s:good" % repo}
        out = docker_client().containers.run("%s:good" % repo, ["cat", "/provisioned"], remove=True)
        assert out.decode() == "provisioned in a container for good\n"
        # the package lists the builder had are not in the image
        lists = docker_client().containers.run(
            "%s:good" % repo, ["find", "/var/lib/apt/lists", "/var/cache/apt", "-type", "f"], remove=True
        )
        assert sorted(lists.decode().split()) == [
            "/var/cache/apt/archives/lock",
            "/var/lib/apt/lists/lock",
        ], lists.decode()
        summary = run.task_result("Artifact summary")["msg"]
        assert summary[0].endswith("1 built, 1 failed"), summary

        # selection: every docker target but bad (bake_only by type, bake_except by name); good is found unchanged
        again = bake(tmp_path, definition, "-e", "bake_only=docker", "-e", "bake_except=bad")
        assert again.rc == 0, again.explain()
        assert "bakery-bad" not in again.stats
        assert again.stats["bakery-good"]["changed"] == 0
        summary = again.task_result("Artifact summary")["msg"]
        assert "not selected: bad" in summary
        assert any(line.startswith("good") and "unchanged" in line for line in summary), summary
    finally:
        remove_repositories(repo)


def test_fail_fast_stops_the_other_target_and_still_cleans_up(bake_base, tmp_path, docker_leftovers):
    definition, repo = two_targets(tmp_path, bake_base["cache_dir"], fail_fast=True)
    try:
        run = bake(tmp_path, definition)
        assert run.rc != 0
        failure = run.task_result("Fail for the targets that failed")["msg"]
        assert "1 target(s) failed" in failure
        assert "target bad failed in provision on builder bakery-bad-builder" in failure
        assert "not captured because fail_fast is set: good" in failure
        assert images(repo) == set()
        summary = run.task_result("Artifact summary")["msg"]
        assert summary[0].endswith("1 failed, 1 cancelled"), summary
        # docker_leftovers: the cleanup play removed both build containers
    finally:
        remove_repositories(repo)
