"""The manifest is deterministic: a bake that changes nothing writes the same manifest."""

from __future__ import annotations

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
