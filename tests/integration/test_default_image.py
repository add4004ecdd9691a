"""The default bake's Docker image (issue 15), in the cloud stream (the VM stream bakes the default disk and box).

The default definition (``playbooks/vars/default_bake.yml``) with ``-e bake_only=docker``, its image under a
repository of this test's own (other streams and Molecule bake bakery/example-web on the same engine), baked
into one output directory and then again, forced (``bake_force=true``), into another from the same cache: the
image's SBOMs list exactly what dpkg-query lists in a container of it, its provenance statement names it, and the
forced bake makes an image with the same layer digests.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import yaml
from conftest import REPO, docker_client, remove_repositories, remove_untagged, run_playbook
from provenance_checks import check_statement
from sbom_checks import DPKG_FORMAT, check_documents, installed

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"


def bake(tmp: Path, definition: dict, *args: str):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "bake.json").write_text(json.dumps({"bake": definition}))
    started = time.monotonic()
    run = run_playbook(
        BAKE_PLAYBOOK, tmp, args=["-e", "@%s" % (tmp / "bake.json"), "-e", "bake_only=docker", *args]
    )
    print("bake %s took %.1f s" % (" ".join(args) or "(first)", time.monotonic() - started))
    assert run.rc == 0, run.explain()
    (entry,) = json.loads((tmp / "output" / "bake-manifest.json").read_text())["artifacts"]
    return run, entry


def test_the_default_image_is_documented_and_a_forced_bake_makes_the_same_layers(
    cache_dir, tmp_path, docker_leftovers
):
    definition = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    definition["cache_dir"] = str(cache_dir)
    repository = "bakery-test/default-%s" % uuid.uuid4().hex[:8]
    (target,) = [t for t in definition["targets"] if "docker" in t]
    target["docker"]["repository"] = repository
    made: list[str] = []
    client = docker_client()
    try:
        first_run, first = bake(tmp_path / "first", definition)
        assert first_run.stats["bakery-docker"]["changed"] > 0, first_run.stats
        made.append(first["id"])
        assert first["target"] == "docker" and first["tags"] == ["%s:latest" % repository]

        # its SBOMs list exactly what dpkg-query lists in a container of it (the base's and the role's packages, no
        # kernel), with the role as a provisioning input; its provenance statement names the image
        listed = client.containers.run(first["id"], ["dpkg-query", "-W", "-f", DPKG_FORMAT], remove=True)
        packages = installed(listed.decode())
        names = {package[0] for package in packages}
        assert {"nginx", "python3"} <= names and not [n for n in names if n.startswith("linux-image")], names
        documents = check_documents(first, packages)
        assert "role:bakery.images.example_web" in {c["name"] for c in documents["cyclonedx"]["components"]}
        statement = check_statement(first)
        assert [s["digest"]["sha256"] for s in statement["subject"]] == [first["id"].split(":", 1)[1]]

        # the same definition again, forced, into another output directory from the same cache: made again
        # (another image, another bake id, no step of the cache used) with the same layers, the base's and one
        # provisioned layer (the image's configuration records its bake id: another image id)
        layers = client.api.inspect_image(first["id"])["RootFS"]["Layers"]
        run, again = bake(tmp_path / "again", definition, "-e", "bake_force=true")
        made.append(again["id"])
        assert run.stats["bakery-docker"]["changed"] > 0, run.stats
        assert again["bake_id"] != first["bake_id"] and again["id"] != first["id"]
        assert again["step_cache"]["steps"] == ["bypassed"], again["step_cache"]
        assert client.api.inspect_image(again["id"])["RootFS"]["Layers"] == layers
        assert len(layers) == 2, layers
    finally:
        remove_repositories(repository)
        remove_untagged(made)  # the first image lost its tag to the forced bake's
