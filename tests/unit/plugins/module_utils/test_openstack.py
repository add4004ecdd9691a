"""The openstack target's pure parts: what Glance would refuse, the properties sent, the fingerprint's inputs, the
janitor's scopes and secrets from a bake definition, the manifest entry. The calls to Glance are tested against a
real Glance in tests/integration/test_openstack.py."""

from __future__ import annotations

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _janitor, _manifest, _openstack, _plan
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


@pytest.mark.parametrize(
    "params, message",
    [
        ({"disk_format": "vmdk"}, "disk_format must be one of qcow2, raw"),
        ({"visibility": "everyone"}, "visibility must be one of"),
        ({"members": ["p2"], "visibility": "private"}, "set visibility: shared"),
        ({"members": ["p2"]}, "set visibility: shared"),
        ({"min_ram": -1}, "min_ram must be at least 0"),
        ({"chunk_size_mb": 0}, "chunk_size_mb must be at least 1"),
        ({"name": "x" * 256}, "image name must be 1 to 255 characters"),
        ({"tags": [""]}, "must be 1 to 255 characters"),
        ({"properties": {"os_hash_value": "x"}}, "property 'os_hash_value' is Glance's or bakery's own"),
        ({"properties": {"bakery_temporary": "false"}}, "property 'bakery_temporary'"),
    ],
)
def test_check_params_refuses_what_glance_would(params, message):
    with pytest.raises(BakeryError, match=message):
        _openstack.check_params(params)


def test_properties_are_strings_with_the_named_ones():
    props = _openstack.properties_of(
        {
            "properties": {"team": "web", "cores": 2, "secure": True},
            "hw_qemu_guest_agent": True,
            "os_version": 12,
        }
    )
    assert props == {
        "team": "web",
        "cores": "2",
        "secure": "true",
        "hw_qemu_guest_agent": "yes",
        "os_version": "12",
    }
    assert _openstack.properties_of({"hw_qemu_guest_agent": False}) == {"hw_qemu_guest_agent": "no"}


def test_the_fingerprint_changes_with_the_disk_and_each_image_option():
    base = {"name": "web", "disk_format": "qcow2", "inputs": {"source_target": "abc"}}
    first = _openstack.image_inputs(base, "0" * 64)
    assert first["source_target"] == "abc" and first["disk"] == "0" * 64
    assert _openstack.image_inputs(base, "1" * 64)["options"] == first["options"]
    for change in ({"visibility": "public"}, {"min_ram": 512}, {"tags": ["x"]}, {"hw_disk_bus": "scsi"}):
        assert _openstack.image_inputs(dict(base, **change), "0" * 64)["options"] != first["options"], change
    # the connection is no input: the same image through another endpoint is the same image
    assert _openstack.image_inputs(dict(base, image_endpoint="http://x"), "0" * 64) == first


def test_plan_check_needs_a_source_and_dictionaries_for_secrets():
    with pytest.raises(BakeryError, match="set source to its name"):
        _plan.check_openstack({"name": "web"}, "bake.targets[0].openstack")
    with pytest.raises(BakeryError, match="headers must be a dictionary"):
        _plan.check_openstack({"name": "web", "source": "disk", "headers": "x"}, "here")
    with pytest.raises(BakeryError, match="interface must be public, internal or admin"):
        _plan.check_openstack({"name": "web", "source": "disk", "interface": "private"}, "here")
    _plan.check_openstack({"name": "web", "source": "disk", "visibility": "shared", "members": ["p"]}, "here")


def test_janitor_scopes_and_secrets_from_a_bake():
    bake = {
        "targets": [
            {"name": "disk", "qemu": {}},
            {"name": "a", "openstack": {"source": "disk", "name": "a", "cloud": "one", "timeout": 5}},
            {"name": "b", "openstack": {"source": "disk", "name": "b", "cloud": "one"}},
            {
                "name": "c",
                "openstack": {
                    "source": "disk",
                    "name": "c",
                    "auth_type": "none",
                    "image_endpoint": "http://127.0.0.1:9292",
                    "headers": {"X-Auth-Token": "token-1234", "X-Roles": "admin"},
                },
            },
        ]
    }
    scopes = _janitor.scopes({"bake": bake}, "/tmp")["openstack"]
    assert [scope.get("cloud") or scope.get("image_endpoint") for scope in scopes] == [
        "one",
        "http://127.0.0.1:9292",
    ]
    assert "name" not in scopes[0] and "source" not in scopes[0]
    assert _janitor.bake_secrets(bake) == {"token-1234", "admin"}
    assert _janitor.scopes({"openstack": {"timeout": 300, "retries": 5}}, "/tmp")["openstack"] == []
    assert "OpenStack cloud one" == _janitor.describe_scope("openstack", scopes[0])


def test_manifest_entry():
    result = {
        "built": True,
        "fingerprint": "f" * 64,
        "image": {
            "id": "i-1",
            "name": "web",
            "size": 10,
            "os_hash_algo": "sha512",
            "os_hash_value": "a" * 128,
            "properties": {"bakery_bake_id": "b1"},
        },
    }
    target = {"name": "glance", "bake_id": "b2", "options": {"name": "web"}}
    entry = _manifest.openstack_artifact(result, target, 100.0, 112.34)
    assert (entry["type"], entry["status"], entry["id"], entry["bake_id"]) == (
        "openstack",
        "built",
        "i-1",
        "b1",
    )
    assert entry["build_seconds"] == 12.3
    would = _manifest.openstack_artifact(
        {"changed": True, "changed_inputs": ["source_target"]}, target, None, 1.0
    )
    assert (would["status"], would["id"], would["name"]) == ("would build", None, "web")


class ScriptedGlance(_openstack.Glance):
    """A Glance whose image answers the statuses given, one per look, and records the calls made."""

    def __init__(self, statuses: list[str]) -> None:
        super().__init__(conn=None)
        self.statuses = statuses
        self.calls: list[str] = []

    def get(self, image_id):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.calls.append("GET %s" % status)
        image = {"id": image_id, "status": status.split("+")[0], "protected": False}
        if status.endswith("+lock"):  # the import was asked for, its task has not begun
            image["os_glance_import_task"] = "task-1"
        return image

    def request(self, method, path, what, missing_ok=False, retry=True, **kwargs):
        self.calls.append("%s %s" % (method, path))


def test_delete_waits_for_a_running_import_to_end(monkeypatch):
    """Deleting during an import would leave the data the import still writes in the store: the delete waits."""
    monkeypatch.setattr(_openstack.time, "sleep", lambda seconds: None)
    glance = ScriptedGlance(["uploading+lock", "importing", "importing", "active"])
    glance.delete("i-1")
    assert glance.calls == [
        "GET uploading+lock",
        "GET importing",
        "GET importing",
        "GET active",
        "DELETE /images/i-1",
    ]


def test_delete_of_an_import_that_never_ends_is_bounded(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(_openstack.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr(_openstack.time, "monotonic", lambda: clock[0])
    glance = ScriptedGlance(["importing"])
    glance.delete("i-2", settle=5)
    assert glance.calls[-1] == "DELETE /images/i-2"
    assert clock[0] == pytest.approx(5.0)


def test_an_image_is_ready_once_its_import_dropped_its_lock(monkeypatch):
    """Glance's import task writes the whole image back after making it active, then drops its lock: a
    visibility set in between would be undone, so the upload waits for the lock to go."""
    monkeypatch.setattr(_openstack.time, "sleep", lambda seconds: None)
    glance = ScriptedGlance(["importing+lock", "active+lock", "active+lock", "active"])
    images = _openstack.Images(glance, {"name": "web"})
    image = images.wait_active("i-3")
    assert image["status"] == "active" and "os_glance_import_task" not in image
    assert glance.calls == ["GET importing+lock", "GET active+lock", "GET active+lock", "GET active"]


def test_an_import_that_never_drops_its_lock_times_out(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(_openstack.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr(_openstack.time, "monotonic", lambda: clock[0])
    images = _openstack.Images(ScriptedGlance(["active+lock"]), {"name": "web", "timeout": 10})
    with pytest.raises(BakeryError, match="still active, its import not ended after the timeout"):
        images.wait_active("i-4")


def test_an_active_image_with_a_failed_store_is_still_taken_once_its_import_ended(monkeypatch):
    """An import that need not succeed in every store leaves the image active with a failed store named: as
    before the wait for the lock, that image is taken (once the import ended), not reported as failed."""
    monkeypatch.setattr(_openstack.time, "sleep", lambda seconds: None)

    class FailedStore(ScriptedGlance):
        def get(self, image_id):
            image = super().get(image_id)
            image["os_glance_failed_import"] = "fast"
            return image

    glance = FailedStore(["active+lock", "active"])
    image = _openstack.Images(glance, {"name": "web"}).wait_active("i-5")
    assert image["status"] == "active" and glance.calls == ["GET active+lock", "GET active"]
