"""Provisioners as Packer users write them: role, shell (inline and script), file, local, selected per target.

One bake with two Docker targets, ``a`` and ``b``. Every provisioner appends a line to ``/prov.log`` in the
builder (the local one through ``docker exec`` from the controller), so the committed images tell exactly
which provisioners ran where, and in which order. Then: a second run changes nothing; one byte more in a
script that only ``a`` runs rebuilds ``a`` alone (``--check`` names the input first); a failing script shows
its last output lines in the summary, and one that outlasts its timeout is named, and the error provisioners
that then run on the failed builders show their output and fetch a log into the output directory; the local
entry fails once per target (a marker file on the controller) and succeeds on its retry; a no_log entry's
secret environment reaches its script and is printed nowhere.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from conftest import BAKE_BASE, REPO, docker_client, remove_repositories, run_playbook

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"

ROLE = """
- name: Log that the role ran, with its variable
  ansible.builtin.shell: echo "role {{ greeting }} {{ bakery_target_name }}" >> /prov.log
  changed_when: true
"""


def write_files(directory: Path) -> None:
    role = directory / "roles" / "logrole" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(ROLE)
    scripts = directory / "scripts"
    scripts.mkdir()
    (scripts / "only-a.sh").write_text('echo "script only-a $(basename "$0")" >> /prov.log\n')
    (scripts / "broken.sh").write_text("echo preparing\necho 'step two went wrong' >&2\nexit 3\necho never\n")
    tool = directory / "tree" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho tool from tree\n")
    tool.chmod(0o755)
    (directory / "tree" / "etc").mkdir()
    (directory / "tree" / "etc" / "tool.conf").write_text("colour = blue\n")


def definition(directory: Path, cache_dir: str, repo: str) -> dict:
    return {
        "name": "prov",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        # no apt-get update: these provisioners need no package
        "package_lists": "keep",
        "provisioners": [
            {"role": "logrole", "vars": {"greeting": "hello"}},
            {
                "name": "inline",
                "shell": {
                    "inline": ['echo "inline $GREETING" >> /prov.log', 'test -n "$GREETING"'],
                    # RUN: this run's own fingerprints (an engine may hold an image of an earlier run's)
                    "environment": {"GREETING": "hi", "RUN": uuid.uuid4().hex},
                },
            },
            {"name": "only-a", "shell": {"script": "scripts/only-a.sh"}, "only": ["a"]},
            {"name": "tree", "file": {"src": "tree", "dest": "/opt"}, "except": ["a"]},
            {
                "name": "use-tree",
                "shell": {
                    "inline": ["/opt/tree/bin/tool >> /prov.log", "grep -q blue /opt/tree/etc/tool.conf"],
                    "interpreter": ["/bin/sh", "-eu"],
                },
                "only": ["b"],
            },
            {
                "name": "from-controller",
                "retries": 1,
                "local": {
                    "inline": [
                        'marker="$MARKERS/$BAKERY_TARGET_NAME"',
                        'if [ ! -e "$marker" ]; then touch "$marker"; echo "first attempt fails"; exit 1; fi',
                        'docker exec "$BAKERY_BUILDER_HOST" sh -c "echo local $BAKERY_TARGET_NAME '
                        '$BAKERY_TARGET_TYPE $BAKERY_BUILDER $BAKERY_BAKE_ID >> /prov.log"',
                    ],
                    "environment": {"MARKERS": str(directory / "markers")},
                },
                "timeout": 120,
            },
            {
                "name": "secret",
                "no_log": True,
                "shell": {
                    "inline": ['echo "secret ${TOKEN#s3}" >> /prov.log'],
                    "environment": {"TOKEN": "s3cret"},
                },
                "only": ["a"],
            },
            {"role": "logrole", "vars": {"greeting": "pssst-value"}, "no_log": True, "only": ["a"]},
        ],
        "targets": [
            {
                "name": "a",
                "docker": {"repository": repo, "tags": ["a"]},
                "provisioners": [{"name": "own", "shell": {"inline": ["echo own a >> /prov.log"]}}],
            },
            {"name": "b", "docker": {"repository": repo, "tags": ["b"]}, "vars": {"greeting": "bonjour"}},
        ],
    }


def bake(directory: Path, bake_definition: dict, *args: str, timeout: int = 1200):
    """Bake *bake_definition*, written to ``bake.json`` in *directory*, with the roles in ``roles/`` there."""
    path = directory / "bake.json"
    path.write_text(json.dumps({"bake": bake_definition}))
    # run from elsewhere: the definition's paths are relative to its own directory, not the working one
    workdir = directory / "run"
    workdir.mkdir(exist_ok=True)
    return run_playbook(
        BAKE_PLAYBOOK,
        workdir,
        args=["-e", "@%s" % path, *args],
        env={"ANSIBLE_ROLES_PATH": str(directory / "roles")},
        timeout=timeout,
    )


def log(image: str) -> list[str]:
    out = docker_client().containers.run(image, ["cat", "/prov.log"], remove=True)
    return out.decode().splitlines()


def changed(run) -> dict[str, int]:
    return {host: stats["changed"] for host, stats in run.stats.items() if host in ("bakery-a", "bakery-b")}


def test_provisioners_run_where_selected_in_order_and_rebuild_only_what_changed(
    bake_base, tmp_path, docker_leftovers
):
    repo = "bakery-test/prov-%s" % uuid.uuid4().hex[:8]
    write_files(tmp_path)
    (tmp_path / "markers").mkdir()
    spec = definition(tmp_path, bake_base["cache_dir"], repo)
    try:
        first = bake(tmp_path, spec)
        assert first.rc == 0, first.explain()
        bake_id = first.task_result("Plan the bake")["plan"]["bake_id"]
        assert log("%s:a" % repo) == [
            "role hello a",
            "inline hi",
            "script only-a 0-only-a.sh",
            "local a docker bakery-a-builder %s" % bake_id,
            "secret cret",
            "role pssst-value a",
            "own a",
        ]
        # the secret environment reached the script, and nothing printed it
        assert "s3cret" not in first.stdout + first.stderr
        assert "pssst-value" not in first.stdout + first.stderr
        assert log("%s:b" % repo) == [
            "role bonjour b",
            "inline hi",
            "tool from tree",
            "local b docker bakery-b-builder %s" % bake_id,
        ]
        # the local entry failed once on each target (the marker), and its retry succeeded
        assert sorted(path.name for path in (tmp_path / "markers").iterdir()) == ["a", "b"]
        retried = [
            result["msg"]
            for result in first.task_results("Say that the provisioner failed and runs again")
            if not result.get("skipped")
        ]
        assert len(retried) == 2 and all("from-controller (local" in msg for msg in retried), retried
        # the uploaded tree kept its modes; the scripts left the image
        listing = docker_client().containers.run(
            "%s:b" % repo, ["sh", "-c", "stat -c %a /opt/tree/bin/tool; ls /tmp"], remove=True
        )
        assert listing.decode().split() == ["755"]

        second = bake(tmp_path, spec)
        assert second.rc == 0, second.explain()
        assert changed(second) == {"bakery-a": 0, "bakery-b": 0}, second.stats
        assert "bakery-a-builder" not in second.stats and "bakery-b-builder" not in second.stats

        # one byte more in the script only a runs: --check names it, then only a is built again
        script = tmp_path / "scripts" / "only-a.sh"
        script.write_text(script.read_text() + "\n")
        check = bake(tmp_path, spec, "--check")
        assert check.rc == 0, check.explain()
        summary = "\n".join(check.task_result("Artifact summary")["msg"])
        assert "would build: provisioners[2]:shell:only-a" in summary, summary
        image_b = docker_client().images.get("%s:b" % repo).id
        third = bake(tmp_path, spec, "-vvv")
        assert third.rc == 0, third.explain()
        assert "bakery-a-builder" in third.stats and "bakery-b-builder" not in third.stats
        # the builder's modules ran pipelined (their code on stdin, one call each), and the target host's bakery
        # modules in Ansible's worker (the step cache's commit after each provisioner too, delegated to it from the
        # builder): nothing was uploaded to either, as the local provisioner's modules on localhost were
        uploads = re.findall(r"^<([^>]+)> PUT \S+ TO \S+/AnsiballZ_(\w+)\.py$", third.stdout, re.MULTILINE)
        assert ("localhost", "command") in uploads, third.stdout[-3000:]
        assert [(host, module) for host, module in uploads if host != "localhost"] == []
        assert docker_client().images.get("%s:b" % repo).id == image_b

        # a failing script on b: the failure names the provisioner and shows the script's last lines
        spec["provisioners"].append(
            {"name": "broken", "shell": {"script": "scripts/broken.sh"}, "only": ["b"]}
        )
        # and one on a that takes longer than its timeout
        spec["provisioners"].append(
            {"name": "slow", "shell": {"inline": ["sleep 60"]}, "only": ["a"], "timeout": 3}
        )
        # the error provisioners run on each failed builder: one shows the log, one fetches it from b
        spec["error_provisioners"] = [
            {"name": "show-log", "shell": {"inline": ["tail -n 2 /prov.log"]}},
            {
                "name": "collect",
                "file": {"src": "/prov.log", "dest": "failed/prov.log", "direction": "download"},
                "only": ["b"],
            },
        ]
        fourth = bake(tmp_path, spec)
        assert fourth.rc != 0
        failure = fourth.task_result("Fail for the targets that failed")["msg"]
        assert "2 target(s) failed" in failure, failure
        assert "target a failed in provision on builder bakery-a-builder, provisioner slow (shell" in failure
        assert "Timed out after 3 second(s)" in failure, failure
        assert "target b failed in provision on builder bakery-b-builder" in failure, failure
        assert "provisioner broken (shell broken.sh)" in failure, failure
        assert "preparing" in failure and "step two went wrong" in failure, failure
        assert "never" not in failure, failure
        assert (
            "error provisioner show-log (shell bake.error_provisioners[0]) ran, last output:\n"
            "    tool from tree\n    local b docker bakery-b-builder" in failure
        ), failure
        collected = tmp_path / "run" / "output" / "downloads" / "b" / "failed" / "prov.log"
        assert "downloaded /prov.log to %s" % collected in failure, failure
        assert collected.read_text().splitlines()[0] == "role bonjour b"
        assert not (tmp_path / "run" / "output" / "downloads" / "a").exists()
        assert docker_client().images.get("%s:b" % repo).id == image_b
    finally:
        remove_repositories(repo)
