"""The janitor's selector (TTL parsing, bake id and age), its scopes from a bake definition, and its records."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _files, _janitor, _qemu_vm
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    FAILED,
    REMOVED,
    WOULD_REMOVE,
    Selector,
    act,
    human_duration,
    parse_ttl,
    record,
    to_epoch,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800), ("1w", 604800), ("1h30m", 5400)],
)
def test_ttl_units(text, seconds):
    assert parse_ttl(text) == seconds
    assert parse_ttl(" %s " % text.upper()) == seconds


@pytest.mark.parametrize("text", ["", "6", "6 h", "-1h", "1.5h", "h", "6hours", "6x", "1h-", None, "1d 2h"])
def test_ttl_rejects_anything_else(text):
    with pytest.raises(BakeryError, match="is not a duration"):
        parse_ttl(text)


def test_ttl_without_unit_says_so():
    with pytest.raises(BakeryError, match="needs a unit"):
        parse_ttl("3600")


def test_human_duration_round_trips():
    for text in ("90s", "30m", "6h", "2d", "1w"):
        assert human_duration(parse_ttl(text)) == text
    assert human_duration(5400) == "90m"


def test_no_selector_is_refused():
    with pytest.raises(BakeryError, match="give bake_id, older_than or both"):
        Selector.from_params(None, None)
    with pytest.raises(BakeryError, match="give bake_id, older_than or both"):
        Selector.from_params("", "")


def test_bake_id_is_exact():
    selector = Selector.from_params("20261127t101500-a1b2c3", now=NOW)
    assert selector.matches("20261127t101500-a1b2c3", None)
    assert not selector.matches("20261127t101500-a1b2c", NOW - 10**6)
    assert not selector.matches("20261127t101500-a1b2c3-x", NOW)
    assert not selector.matches(None, NOW)


def test_age_selects_older_only_and_never_the_unknown():
    selector = Selector.from_params(None, "1h", now=NOW)
    assert selector.matches("any", NOW - 3601)
    assert selector.matches(None, NOW - 3600)
    assert not selector.matches("any", NOW - 3599)
    assert not selector.matches("any", None)
    assert not selector.matches("any", "not a time")


def test_both_criteria_must_match():
    selector = Selector.from_params("b1", "1h", now=NOW)
    assert selector.matches("b1", NOW - 7200)
    assert not selector.matches("b2", NOW - 7200)
    assert not selector.matches("b1", NOW - 60)


def test_zero_ttl_selects_everything_of_known_age():
    selector = Selector.from_params(None, "0s", now=NOW)
    assert selector.matches(None, NOW)
    assert not selector.matches(None, None)


@pytest.mark.parametrize(
    "value",
    [
        NOW,
        int(NOW),
        str(int(NOW)),
        datetime.fromtimestamp(NOW, timezone.utc),
        datetime.fromtimestamp(NOW, timezone.utc).replace(tzinfo=None),
        "2027-01-15T08:00:00Z",
        "2027-01-15T08:00:00.000Z",
        "2027-01-15T08:00:00.123456789Z",
        "2027-01-15T00:00:00.000-08:00",
        "2027-01-15T08:00:00.000-00:00",
        "2027-01-15T08:00:00+00:00",
    ],
)
def test_creation_times_of_every_engine(value):
    """Docker (epoch), boto3 (datetime), EC2 CreationDate, GCE creationTimestamp, GCS timeCreated."""
    epoch = to_epoch(value)
    if isinstance(value, str) and "2027" in value:
        assert abs(epoch - datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()) < 1
    else:
        assert epoch == pytest.approx(NOW, abs=1)


def test_record_and_act():
    entry = record("docker", "container", "abc", bake_id="b1", created=NOW)
    assert entry["created"] == "2027-01-15T08:00:00Z"
    assert entry["name"] == "abc" and entry["state"] == WOULD_REMOVE
    removed = []
    assert act(dict(entry), True, lambda: removed.append(1))["state"] == WOULD_REMOVE
    assert removed == []
    assert act(dict(entry), False, lambda: removed.append(1))["state"] == REMOVED
    assert removed == [1]

    def boom():
        raise BakeryError("engine said no")

    gone = act(dict(entry), False, boom)
    assert gone["state"] == FAILED and gone["error"] == "engine said no"

    def missing():
        raise FileNotFoundError(2, "No such file or directory", "/x")

    assert act(dict(entry), False, missing)["error"] == "/x: No such file or directory"


@pytest.mark.parametrize(
    ("name", "bake_id", "expected"),
    [
        ("bakery-20261127t101500-a1b2c3-disk", None, ("20261127t101500-a1b2c3", "disk")),
        ("bakery-20261127t101500-a1b2c3-my-disk", None, ("20261127t101500-a1b2c3", "my-disk")),
        ("bakery-custom-id-disk", "custom-id", ("custom-id", "disk")),
        ("bakery-custom-id-disk", None, (None, None)),
        ("other-vm", None, (None, None)),
    ],
)
def test_vm_names(name, bake_id, expected):
    assert _qemu_vm.split_vm_name(name, bake_id) == expected


BAKE = {
    "name": "web",
    "output_dir": "out",
    "targets": [
        {"name": "docker", "docker": {"repository": "x/web"}},
        {"name": "remote", "docker": {"repository": "x/web", "docker_host": "tcp://10.0.0.5:2376"}},
        {"name": "disk", "qemu": {"formats": ["raw"]}},
        {
            "name": "ami",
            "ami": {
                "region": "eu-west-1",
                "endpoint_url": "http://127.0.0.1:5000",
                "regions": ["us-east-1", {"region": "eu-north-1", "kms_key_id": "alias/x"}],
            },
        },
        {"name": "ami2", "ami": {"region": "us-west-2", "endpoint_url": "http://127.0.0.1:5000"}},
        {
            "name": "gce",
            "gce": {"project": "p1", "zone": "europe-west1-b", "api_endpoint": "http://fake/compute/v1"},
        },
        {
            "name": "gce-import",
            "gce": {"project": "p1", "bucket": "uploads", "api_endpoint": "http://fake/compute/v1"},
        },
    ],
}


def test_scopes_from_a_bake(tmp_path):
    params = {"bake": BAKE, "aws": {"access_key": "AK", "secret_key": "SK"}, "gce": {"retries": 1}}
    where = _janitor.scopes(params, str(tmp_path))
    assert [s["docker_host"] for s in where["docker"]] == [None, "tcp://10.0.0.5:2376"]
    out = os.path.join(str(tmp_path), "out")
    assert where["qemu"] == [{"paths": [out, os.path.join(out, "cache")]}]
    assert len(where["aws"]) == 1
    aws = where["aws"][0]
    assert aws["regions"] == ["eu-west-1", "us-east-1", "eu-north-1", "us-west-2"]
    assert aws["endpoint_url"] == "http://127.0.0.1:5000" and aws["access_key"] == "AK"
    assert len(where["gce"]) == 1
    gce = where["gce"][0]
    assert gce["zones"] == ["europe-west1-b"] and gce["buckets"] == ["uploads"]
    assert gce["api_endpoint"] == "http://fake/compute/v1" and gce["retries"] == 1


def test_scopes_without_a_bake(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    where = _janitor.scopes({"qemu": {"paths": ["rel", "/abs"]}}, str(tmp_path))
    assert where["docker"] == [{"docker_host": None, "timeout": 60}]
    assert where["qemu"] == [{"paths": [str(tmp_path / "rel"), "/abs"]}]
    assert where["aws"] == [] and where["gce"] == []


def test_sweep_refuses_without_selector_and_unscoped_backends(tmp_path):
    with pytest.raises(BakeryError, match="give bake_id, older_than or both"):
        _janitor.sweep({"cwd": str(tmp_path)}, check_mode=True)
    with pytest.raises(BakeryError, match="backend aws has nothing to look at"):
        _janitor.sweep({"cwd": str(tmp_path), "bake_id": "b", "backends": ["aws"]}, check_mode=True)
    with pytest.raises(BakeryError, match="older_than 'soon' is not a duration"):
        _janitor.sweep({"cwd": str(tmp_path), "older_than": "soon"}, check_mode=True)


def test_an_engine_nobody_asked_for_is_skipped(tmp_path, monkeypatch):
    """No Docker engine at the default address: skipped with the reason; asked for explicitly: a failure."""
    monkeypatch.setenv("DOCKER_HOST", "unix://%s" % (tmp_path / "none.sock"))
    params = {"cwd": str(tmp_path), "bake_id": "no-such-bake", "qemu": {"paths": [str(tmp_path)]}}
    result = _janitor.sweep(params, check_mode=True)
    assert result["backends"] == ["docker", "qemu"] and result["resources"] == [] and not result["changed"]
    assert result["not_swept"][0]["backend"] == "docker"
    assert "cannot reach the Docker engine at unix://" in result["not_swept"][0]["reason"]
    with pytest.raises(BakeryError, match="cannot reach the Docker engine") as failure:
        _janitor.sweep(dict(params, backends=["docker"]), check_mode=True)
    assert failure.value.details["resources"] == []


@pytest.mark.parametrize(
    ("name", "partial"),
    [
        (".web.qcow2.k3j_x9.partial", True),
        (".bookworm-abc.tar.dhqrb_7w.partial.tar", True),
        (".box.box.x1.partial.tar.zst", True),
        ("web.qcow2", False),
        ("web.partial", False),
        (".web.qcow2.lock", False),
        (".partial", False),
    ],
)
def test_partial_names(name, partial):
    """What atomic_output leaves, with the ending the rootfs module adds for mmdebstrap."""
    assert bool(_files.PARTIAL.match(name)) is partial


def test_bake_started_from_a_generated_id():
    assert _files.bake_started("20270115t080000-a1b2c3") == NOW
    assert _files.bake_started("my-own-id") is None
    assert _files.bake_started(None) is None


@pytest.mark.parametrize(
    ("directory", "name", "wanted", "expected"),
    [
        (".bakery-tmp", "20270115t080000-a1b2c3-ami.key", None, "20270115t080000-a1b2c3"),
        (".bakery-tmp", "20270115t080000-a1b2c3-ami.key.known_hosts", None, "20270115t080000-a1b2c3"),
        (".bakery-tmp", "notes.txt", None, None),
        (".bakery-tmp", "Custom_Id-ami.key", "Custom_Id", "Custom_Id"),
        (".bakery-ssh", "bakery-20270115t080000-a1b2c3-gce", None, "20270115t080000-a1b2c3"),
        (".bakery-ssh", "bakery-custom-id-gce", "Custom_Id", "Custom_Id"),
        (".bakery-ssh", "bakery-20270115t080000-a1b2c3-gce", "20270115t080000-ffffff", None),
    ],
)
def test_key_files_by_bake(directory, name, wanted, expected):
    assert _files.key_file_bake_id(directory, name, wanted) == expected


def test_partial_files_being_written_are_left_or_waited_for(tmp_path, monkeypatch):
    """Just written and not open: a run by age leaves it, a run by bake id waits until it is quiet and removes
    it (the janitor right after a kill); one that is open stays in any case."""
    monkeypatch.setattr(_files, "PARTIAL_QUIET_SECONDS", 1.0)
    quiet = tmp_path / ".disk.raw.a1.partial"
    held = tmp_path / ".disk.qcow2.b2.partial"
    for path in (quiet, held):
        path.write_bytes(b"half")
    with open(held, "rb"):
        by_age = _files.sweep_partials(Selector.from_params(None, "0s"), False, [str(tmp_path)])
        assert by_age == [] and quiet.exists()
        started = time.monotonic()
        by_id = _files.sweep_partials(Selector.from_params("my-own-id"), False, [str(tmp_path)])
        assert [e["id"] for e in by_id] == [str(quiet)] and by_id[0]["state"] == REMOVED
        assert 0.5 < time.monotonic() - started < 5
        assert not quiet.exists() and held.exists()


def test_an_atomic_output_in_progress_is_never_swept(tmp_path):
    """Another bake's janitor sweeps the shared directory while a writer is still before its first byte (a
    rootfs's mmdebstrap, minutes): the writer holds its partial open, so it is left, however old it looks."""
    with _files.atomic_output(str(tmp_path / "bookworm.tar")) as tmp:
        os.utime(tmp, (time.time() - 3 * 86400, time.time() - 3 * 86400))
        for selector in (Selector.from_params(None, "1h"), Selector.from_params("my-own-id")):
            assert _files.sweep_partials(selector, False, [str(tmp_path)]) == []
        assert os.path.exists(tmp)
        open(tmp, "w").write("tarball")
    assert (tmp_path / "bookworm.tar").read_text() == "tarball"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bookworm.tar"]
