"""Test before publish: a docker image's checks (``verify``) run against a container of the committed image, and
only an image that passed them is tagged and pushed (to a local registry here).

One bake, three runs. The first check fails: the bake fails in verify with the check's output, and nothing is
published: no tag of the repository, nothing in the registry, the manifest entry says failed with no tags. Then
the check is fixed: the image is found (not made again), checked, tagged and pushed. The same bake once more:
the image is found, its checks passed before with the same digest, so it is published without checking it again.
"""

from __future__ import annotations

import json
import uuid

import docker
import pytest
from conftest import BAKE_BASE, REPO, docker_client, remove_repositories, run_playbook
from provenance_checks import check_statement

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
PASSWORD = "verify-Registry-Passw0rd-2c9d"


def bake(tmp_path, spec, bake_id):
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": spec}))
    return run_playbook(BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path, "-e", "bake_id=%s" % bake_id])


def verifiers(client, bake_id):
    return client.api.containers(all=True, filters={"label": "org.bakery.bake-id=%s" % bake_id})


def test_only_an_image_that_passed_its_checks_is_tagged_and_pushed(bake_base, tmp_path, docker_leftovers):
    from registry import start_registry

    url, stop = start_registry(tmp_path / "registry", user="pusher", password=PASSWORD)
    repo = "%s/bakery-test/verified-%s" % (url, uuid.uuid4().hex[:8])
    client = docker_client()
    spec = {
        "name": "verified",
        "output_dir": str(tmp_path / "output"),
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        "package_lists": "keep",
        "provisioners": [
            # RUN: this test's own fingerprint (the engine may hold an image of an earlier run's)
            {"shell": {"inline": ["echo ready > /srv/state"], "environment": {"RUN": uuid.uuid4().hex}}},
        ],
        "verify": [
            {"name": "state", "shell": {"inline": ['echo checking; test "$(cat /srv/state)" = running']}},
        ],
        "targets": [
            {
                "name": "web",
                "docker": {
                    "repository": repo,
                    "tags": ["latest", "v1"],
                    "push": True,
                    "registry": {"username": "pusher", "password": PASSWORD},
                },
            }
        ],
    }
    try:
        first_id = "verify-%s" % uuid.uuid4().hex[:8]
        first = bake(tmp_path, spec, first_id)
        assert first.rc != 0, first.stdout[-3000:]
        report = first.task_result("Write the bake manifest")
        assert report["failed_targets"] == ["web"]
        assert "target web failed in verify" in report["failures"], report["failures"]
        assert "check state (shell bake.verify[0]) failed" in report["failures"]
        assert "last output:\n    checking" in report["failures"]
        # nothing published: no tag, nothing in the registry; the image is kept, untagged, for the next run
        assert client.api.images(name=repo) == []
        with pytest.raises(docker.errors.APIError):
            client.api.inspect_distribution(
                "%s:v1" % repo, auth_config={"username": "pusher", "password": PASSWORD}
            )
        manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
        entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
        assert entry["tags"] == [] and entry["verify"]["status"] == "failed"
        assert any("checking" in line for line in entry["verify"]["output"])
        image_id = entry["id"]
        assert client.api.inspect_image(image_id)["RepoTags"] == []
        assert verifiers(client, first_id) == []
        # an image that failed its checks has no provenance
        assert "provenance" not in entry and not (tmp_path / "output" / "verified-web.intoto.json").exists()

        # the check fixed: found, checked, published; the image is the same one
        spec["verify"][0]["shell"]["inline"] = ['echo checking; test "$(cat /srv/state)" = ready']
        second_id = "verify-%s" % uuid.uuid4().hex[:8]
        second = bake(tmp_path, spec, second_id)
        assert second.rc == 0, second.explain()
        assert "bakery-web-builder" not in second.stats  # not made again
        manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
        entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
        assert entry["id"] == image_id
        assert entry["verify"]["status"] == "passed" and entry["verify"]["checked"] == "now"
        assert sorted(entry["tags"]) == ["%s:latest" % repo, "%s:v1" % repo]
        assert client.api.inspect_image("%s:v1" % repo)["Id"] == image_id
        remote = client.api.inspect_distribution(
            "%s:v1" % repo, auth_config={"username": "pusher", "password": PASSWORD}
        )
        assert "%s@%s" % (repo, remote["Descriptor"]["digest"]) in entry["repo_digests"]
        assert verifiers(client, second_id) == []
        # its provenance, written once it was pushed, names the pushed digest beside the image id
        statement = check_statement(entry)
        assert {(s["name"], s["digest"]["sha256"]) for s in statement["subject"]} == {
            (repo, image_id.split(":")[1]),
            (repo, remote["Descriptor"]["digest"].split(":")[1]),
        }
        assert PASSWORD not in json.dumps(statement)

        # the same bake again: checked before with the same checks, published without a verifier
        third_id = "verify-%s" % uuid.uuid4().hex[:8]
        third = bake(tmp_path, spec, third_id)
        assert third.rc == 0, third.explain()
        assert "bakery-web-verify" not in third.stats
        manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
        entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
        assert entry["verify"]["checked"] == "before" and entry["id"] == image_id
        assert third.stats["bakery-web"]["changed"] == 0, third.stats
        assert PASSWORD not in first.stdout + second.stdout + third.stdout
    finally:
        stop()
        remove_repositories(repo)
