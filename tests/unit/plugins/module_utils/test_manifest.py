"""The manifest is deterministic: a bake that changes nothing writes the same manifest."""

from __future__ import annotations

import json

from ansible_collections.bakery.images.plugins.module_utils import _manifest

PLAN = {"name": "web", "bake_id": "run2", "manifest": "/o/bake-manifest.json", "skipped_targets": []}
TARGET = {"name": "img", "bake_id": "run2", "options": {"repository": "bakery/web"}}
IMAGE = {
    "id": "sha256:abc",
    "tags": ["bakery/web:latest"],
    "size": 1000,
    "labels": {"org.bakery.bake-id": "run1"},
}


def artifact(built):
    result = {
        "built": built,
        "image": IMAGE,
        "fingerprint": "f1",
        "changed_inputs": ["vars"] if built else [],
    }
    return _manifest.docker_artifact(result, TARGET, 100.0, 160.0)


def test_built_artifact_records_its_build_time():
    entry = artifact(True)
    assert entry["status"] == "built" and entry["build_seconds"] == 60.0
    assert entry["bake_id"] == "run1"  # the label of the image that was made


def test_unchanged_rebake_rewrites_the_same_manifest():
    first = _manifest.manifest(PLAN, [{"target": "img", "type": "docker", "artifact": artifact(True)}])
    second = _manifest.manifest(
        PLAN, [{"target": "img", "type": "docker", "artifact": artifact(False)}], first
    )
    assert second == first


def test_targets_not_baked_this_time_stay_in_the_manifest():
    previous = {"artifacts": [{"target": "old", "fingerprint": "x"}]}
    result = _manifest.manifest(
        PLAN, [{"target": "img", "type": "docker", "artifact": artifact(True)}], previous
    )
    assert [a["target"] for a in result["artifacts"]] == ["img", "old"]


def test_summary_and_failures_are_readable():
    results = [
        {"target": "img", "type": "docker", "artifact": artifact(True)},
        {
            "target": "bad",
            "type": "docker",
            "failure": {
                "phase": "provision",
                "builder": "b",
                "task": "Install",
                "msg": "E: no",
                "output": ["x"],
            },
        },
    ]
    lines = _manifest.summary(PLAN, results)
    assert lines[0] == "bake web (run2): 1 built, 1 failed"
    assert "built in 60.0 s" in lines[1] and "bakery/web:latest" in lines[1]
    assert "FAILED in provision: E: no" in lines[2]
    assert lines[-1] == "manifest: /o/bake-manifest.json"
    text = _manifest.failures(PLAN, results)
    assert "target bad failed in provision on builder b, task 'Install': E: no" in text
    assert "last output:\n    x" in text
    results[1]["failure"].update(task="Restart nginx", handler=True)
    text = _manifest.failures(PLAN, results)
    assert "target bad failed in provision on builder b, handler 'Restart nginx': E: no" in text
    results[1]["failure"]["msg"] = ""
    assert "FAILED in provision: (no message)" in _manifest.summary(PLAN, results)[2]


def test_targets_cancelled_by_fail_fast_are_named_apart_from_the_failed_one():
    results = [
        {"target": "bad", "type": "docker", "failure": {"phase": "provision", "msg": "E: no"}},
        {
            "target": "good",
            "type": "docker",
            "failure": {"phase": "capture", "cancelled": True, "msg": "not captured: fail_fast is set"},
        },
    ]
    lines = _manifest.summary(PLAN, results)
    assert lines[0] == "bake web (run2): 1 failed, 1 cancelled"
    assert "cancelled: not captured: fail_fast is set" in lines[2]
    text = _manifest.failures(PLAN, results)
    assert text.startswith("bake web: 1 target(s) failed")
    assert "target bad failed in provision: E: no" in text
    assert "not captured because fail_fast is set: good" in text


def test_kept_builders_say_how_to_reach_them_and_how_to_remove_them():
    docker = _manifest.builder_access(
        {"connection": "community.docker.docker_api", "host": "bakery-1-web", "docker_host": "tcp://h:2375"}
    )
    assert docker["command"] == "DOCKER_HOST=tcp://h:2375 docker exec -it bakery-1-web /bin/sh"
    chroot = _manifest.builder_access({"connection": "community.general.chroot", "host": "/c/q 1"})
    assert chroot == {"kind": "chroot directory", "host": "/c/q 1", "command": "chroot '/c/q 1' /bin/sh"}
    isolated = _manifest.builder_access(
        {"connection": "community.general.chroot", "host": "/c/q/root", "chroot_exe": "/c/q/enter"}
    )
    assert isolated["command"] == "/c/q/enter /c/q/root /bin/sh"
    ssh = _manifest.builder_access(
        {
            "connection": "ssh",
            "host": "127.0.0.1",
            "port": 40022,
            "user": "root",
            "private_key": "/w/id_ed25519",
            "ssh_common_args": "-o StrictHostKeyChecking=no",
        }
    )
    assert ssh["command"] == "ssh -i /w/id_ed25519 -p 40022 -o StrictHostKeyChecking=no root@127.0.0.1"

    plan = {"name": "web", "bake_id": "b1", "on_error": "keep"}
    results = [
        {
            "target": "web",
            "failure": {"phase": "provision", "msg": "boom", "builder": "bakery-web-builder"},
            "kept": docker,
        }
    ]
    text = _manifest.failures(plan, results, ["/defs/my bake.yml"])
    assert "on_error=keep: the failed builders were kept" in text
    assert "reach it with:\n    DOCKER_HOST=tcp://h:2375 docker exec -it bakery-1-web /bin/sh" in text
    assert "ansible-playbook bakery.images.janitor -e '@/defs/my bake.yml' -e janitor_bake_id=b1" in text


def test_abort_leaves_everything_and_names_the_janitor_while_cleanup_does_not():
    results = [{"target": "web", "failure": {"phase": "launch", "msg": "boom"}}]
    aborted = _manifest.failures({"name": "web", "bake_id": "b2", "on_error": "abort"}, results)
    assert "(on_error=abort: temporary resources were left)" in aborted
    assert aborted.endswith("ansible-playbook bakery.images.janitor -e janitor_bake_id=b2")
    cleaned = _manifest.failures({"name": "web", "bake_id": "b2"}, results)
    assert "(temporary resources were cleaned up)" in cleaned and "janitor" not in cleaned


def test_failed_targets_leaves_out_the_ones_fail_fast_cancelled_and_the_ones_without_failure():
    hosts = [
        {"bakery_target": {"name": "image"}, "bake_failure": {"phase": "provision", "msg": "boom"}},
        {"bakery_target": {"name": "disk"}, "bake_failure": {"phase": "capture", "cancelled": True}},
        {"bakery_target": {"name": "box"}},
        {"bakery_target": {"name": "ami"}, "bake_failure": {"phase": "launch", "cancelled": False}},
    ]
    assert _manifest.failed_targets(hosts) == ["image", "ami"]
    assert _manifest.failed_targets([]) == []


def test_failure_output_takes_the_failed_item_of_a_loop_and_the_summary_names_the_provisioner():
    loop = {
        "msg": "One or more items failed",
        "results": [
            {"failed": False, "stdout_lines": ["fine"]},
            {
                "failed": True,
                "msg": "non-zero return code",
                "stdout_lines": ["a", "b"],
                "stderr_lines": ["boom"],
            },
        ],
    }
    assert _manifest.failure_output(loop) == {"msg": "non-zero return code", "output": ["a", "b", "boom"]}
    plain = {"msg": "failed", "stdout_lines": [str(n) for n in range(30)]}
    assert _manifest.failure_output(plain)["output"] == [str(n) for n in range(10, 30)]
    assert _manifest.failure_output({}) == {"msg": None, "output": []}
    plan = {"name": "web", "bake_id": "b1"}
    failure = {"phase": "provision", "provisioner": "setup (shell setup.sh)", "task": "Run", "msg": "rc 3"}
    text = _manifest.failures(plan, [{"target": "a", "failure": failure}])
    assert "target a failed in provision, provisioner setup (shell setup.sh), task 'Run': rc 3" in text


HYGIENE = [
    {
        "name": "ssh_host_keys",
        "status": "passed",
        "ok": True,
        "count": 0,
        "findings": [],
        "detail": "",
        "fix": "",
    },
    {
        "name": "core_dumps",
        "status": "failed",
        "ok": False,
        "count": 1,
        "findings": ["/core"],
        "detail": "",
        "fix": "x",
    },
]


def test_a_disk_records_its_hygiene_results_and_a_target_that_failed_them_is_listed():
    target = {"name": "disk", "bake_id": "run2", "options": {}}
    made = {
        "changed": True,
        "found": False,
        "outputs": [{"format": "raw", "path": "/o/d.raw"}],
        "fingerprint": "f",
    }
    entry = _manifest.qemu_artifact(dict(made, hygiene=HYGIENE[:1]), target, 100.0, 160.0)
    assert entry["hygiene"] == HYGIENE[:1]
    assert "hygiene" not in _manifest.qemu_artifact(made, target, 100.0, 160.0)
    results = [
        {"target": "disk", "type": "qemu", "artifact": entry},
        {
            "target": "bad",
            "type": "qemu",
            "failure": {"phase": "capture", "msg": "hygiene: ...", "hygiene": HYGIENE},
        },
        {"target": "other", "type": "qemu", "failure": {"phase": "capture", "msg": "no", "hygiene": None}},
    ]
    manifest = _manifest.manifest(PLAN, results)
    assert manifest["artifacts"][0]["hygiene"] == HYGIENE[:1]
    assert manifest["hygiene_failures"] == [
        {"target": "bad", "type": "qemu", "failed": ["core_dumps"], "hygiene": HYGIENE}
    ]
    assert "hygiene_failures" not in _manifest.manifest(PLAN, results[:1] + results[2:])


def test_an_artifact_whose_same_checks_passed_before_is_known_by_its_id_and_fingerprint():
    target = {"name": "web", "verify_digest": "d1"}
    passed = {
        "artifacts": [
            {
                "target": "web",
                "id": "sha256:1",
                "fingerprint": "f1",
                "verify": {"status": "passed", "digest": "d1"},
            }
        ]
    }
    assert _manifest.verified_before(passed, target) == {"id": "sha256:1", "fingerprint": "f1"}
    assert _manifest.verified_before(json.dumps(passed), target) == {"id": "sha256:1", "fingerprint": "f1"}
    # other checks, a failed check, no checks now, no manifest: not verified before
    assert _manifest.verified_before(passed, dict(target, verify_digest="d2")) is None
    assert _manifest.verified_before(passed, dict(target, verify_digest=None)) is None
    failed = json.loads(json.dumps(passed))
    failed["artifacts"][0]["verify"]["status"] = "failed"
    assert _manifest.verified_before(failed, target) is None
    assert _manifest.verified_before(None, target) is None and _manifest.verified_before("{", target) is None


def test_the_summary_says_what_became_of_the_checks():
    checks = [{"label": "serves (shell bake.verify[0])"}, {"label": "marker (shell bake.verify[1])"}]
    plan = dict(PLAN, targets=[{"name": "img", "verify": checks, "verified": None}])
    found = artifact(False)
    line = _manifest.summary(plan, [{"target": "img", "type": "docker", "artifact": found}])[1]
    assert line.endswith("unchanged (fingerprint f1), would run 2 checks")  # check mode: nothing ran
    checked = dict(found, verify={"status": "passed", "checked": "now"})
    assert _manifest.summary(plan, [{"target": "img", "type": "docker", "artifact": checked}])[1].endswith(
        ", checks passed"
    )
    plan["targets"][0]["verified"] = {"id": "sha256:abc", "fingerprint": "f1"}
    assert _manifest.summary(plan, [{"target": "img", "type": "docker", "artifact": found}])[1].endswith(
        ", checks passed before"
    )
    # another image (same fingerprint, another id) would be checked
    plan["targets"][0]["verified"] = {"id": "sha256:def", "fingerprint": "f1"}
    assert (
        "would run 2 checks"
        in _manifest.summary(plan, [{"target": "img", "type": "docker", "artifact": found}])[1]
    )
    assert _manifest.verify_note({"verify": checks[:1]}, {"status": "would build"}) == ", would run 1 check"


def test_an_instance_baked_image_records_its_hygiene_results_and_keeps_them_while_unchanged():
    target = {"name": "ami", "bake_id": "run1", "options": {"name": "web", "region": "eu-west-1"}}
    image = {"image_id": "ami-1", "name": "web", "size_gib": 8, "tags": {"bakery-bake-id": "run1"}}
    made = {"built": True, "image": image, "images": {"eu-west-1": "ami-1"}, "fingerprint": "f1"}
    built = _manifest.ami_artifact(dict(made, hygiene=HYGIENE[:1]), target, 100.0, 160.0)
    assert built["hygiene"] == HYGIENE[:1]
    first = _manifest.manifest(PLAN, [{"target": "ami", "type": "ami", "artifact": built}])
    assert first["artifacts"][0]["hygiene"] == HYGIENE[:1]

    # found by fingerprint in a later run: no checks ran, the results of the bake that made it stay
    found = _manifest.ami_artifact(dict(made, built=False), dict(target, bake_id="run2"), 200.0, 210.0)
    assert found["status"] == "unchanged" and "hygiene" not in found
    second = _manifest.manifest(PLAN, [{"target": "ami", "type": "ami", "artifact": found}], first)
    assert second == first
    # a new image (another fingerprint) has only its own
    other = dict(found, fingerprint="f2", status="built")
    third = _manifest.manifest(PLAN, [{"target": "ami", "type": "ami", "artifact": other}], first)
    assert "hygiene" not in third["artifacts"][0]

    gce_target = {"name": "gce", "bake_id": "run1", "options": {"project": "p"}}
    gce_made = {"built": True, "image": {"name": "web-run1", "id": "1"}, "fingerprint": "g1"}
    assert _manifest.gce_artifact(dict(gce_made, hygiene=HYGIENE), gce_target, 1.0, 2.0)["hygiene"] == HYGIENE
    assert "hygiene" not in _manifest.gce_artifact(gce_made, gce_target, 1.0, 2.0)


def test_sha256sums_list_the_file_outputs_and_sboms_relative_to_the_manifest():
    sbom = {
        "spdx": {"path": "/srv/out/b-disk.spdx.json", "sha256": "1" * 64},
        "cyclonedx": {"path": "/srv/out/b-disk.cdx.json", "sha256": "2" * 64},
    }
    made = {
        "artifacts": [
            {
                "target": "disk",
                "type": "qemu",
                "outputs": [
                    {"format": "qcow2", "path": "/srv/out/b.qcow2", "sha256": "3" * 64},
                    {"format": "raw", "path": "/elsewhere/b.raw", "sha256": "4" * 64},
                ],
                "sbom": sbom,
                "provenance": {"path": "/srv/out/b-disk.intoto.json", "sha256": "7" * 64},
            },
            {"target": "box", "type": "vagrant", "path": "/srv/out/b.box", "sha256": "5" * 64},
            # an image has no file, only its SBOMs; an entry without a sha256 is left out
            {
                "target": "img",
                "type": "docker",
                "id": "sha256:" + "6" * 64,
                "sbom": {"spdx": {"path": "/srv/out/x"}},
            },
        ]
    }
    assert _manifest.sha256sums(made, "/srv/out") == (
        "%s  /elsewhere/b.raw\n%s  b-disk.cdx.json\n%s  b-disk.intoto.json\n%s  b-disk.spdx.json\n%s  b.box\n"
        "%s  b.qcow2\n" % ("4" * 64, "2" * 64, "7" * 64, "1" * 64, "5" * 64, "3" * 64)
    )
    assert _manifest.sha256sums({"artifacts": []}, "/srv/out") == ""


def test_sbom_documents_go_to_the_output_directory_and_labels_name_them():
    target = {"name": "docker", "bake_name": "example-web", "output_dir": "/srv/out"}
    assert _manifest.sbom_documents(target) == {
        "spdx": "/srv/out/example-web-docker.spdx.json",
        "cyclonedx": "/srv/out/example-web-docker.cdx.json",
        "provenance": "/srv/out/example-web-docker.intoto.json",
        "labels": {
            "org.bakery.sbom.spdx": "example-web-docker.spdx.json",
            "org.bakery.sbom.cyclonedx": "example-web-docker.cdx.json",
            "org.bakery.provenance": "example-web-docker.intoto.json",
        },
    }


def test_an_entry_names_the_architecture_an_image_records_else_the_plans():
    planned = dict(TARGET, architecture="amd64")
    result = {"built": True, "image": dict(IMAGE, architecture="arm64"), "fingerprint": "f1"}
    assert _manifest.docker_artifact(result, planned, 100.0, 160.0)["architecture"] == "arm64"
    result["image"] = IMAGE
    assert _manifest.docker_artifact(result, planned, 100.0, 160.0)["architecture"] == "amd64"
    assert _manifest.docker_artifact(result, TARGET, 100.0, 160.0)["architecture"] is None


def test_an_images_architecture_gets_debians_name_from_the_platform_table():
    from ansible_collections.bakery.images.plugins.module_utils._docker import debian_architecture

    assert debian_architecture({"Architecture": "amd64"}) == "amd64"
    assert debian_architecture({"Architecture": "arm64", "Variant": "v8"}) == "arm64"
    assert debian_architecture({"Architecture": "386"}) == "i386"
    assert debian_architecture({"Architecture": "ppc64le"}) == "ppc64el"
    assert debian_architecture({"Architecture": "arm"}) == "armhf"
    assert debian_architecture({"Architecture": "arm", "Variant": "v5"}) == "armel"
    assert debian_architecture({"Architecture": "mips64le"}) == "mips64le"


def test_each_summary_line_names_the_architecture_of_its_target():
    plan = dict(PLAN, targets=[{"name": "arm", "architecture": "arm64"}, {"name": "img"}])
    results = [
        {"target": "img", "type": "docker", "artifact": dict(IMAGE, status="built", architecture="amd64")},
        # a failed target has no artifact: the plan's architecture
        {"target": "arm", "type": "qemu", "failure": {"phase": "provision", "msg": "E: no"}},
        {"target": "other", "type": "docker", "artifact": dict(IMAGE, status="built")},
    ]
    lines = _manifest.summary(plan, results)
    assert lines[1].split()[:4] == ["img", "docker", "amd64", "bakery/web:latest"]
    assert lines[2].split()[:3] == ["arm", "qemu", "arm64"]
    assert lines[3].split()[:3] == ["other", "docker", "-"], "unknown, never guessed"


def test_the_summary_has_a_line_for_each_multi_architecture_image():
    index = {
        "target": "img",
        "tags": ["r/web:v1"],
        "digest": "sha256:0123456789abcdef",
        "manifests": [
            {"digest": "sha256:aa", "platform": "linux/amd64"},
            {"digest": "sha256:bb", "platform": "linux/arm64"},
        ],
    }
    plan = dict(PLAN, targets=[{"name": "img-amd64"}, {"name": "img-arm64"}])
    results = [
        {"target": "img-amd64", "type": "docker", "artifact": dict(IMAGE, status="built", index=index)},
        {"target": "img-arm64", "type": "docker", "artifact": dict(IMAGE, status="built")},
    ]
    lines = _manifest.summary(plan, results)
    assert lines[3] == "index of img: r/web:v1  0123456789ab  linux/amd64, linux/arm64"
    assert lines[4] == "manifest: /o/bake-manifest.json"
