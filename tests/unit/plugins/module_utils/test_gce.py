"""GCE target: names the plan rejects, the example bake, and the oldgnu sparse archive of a disk."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from ansible_collections.bakery.images.plugins.action.bake_plan import validate_target
from ansible_collections.bakery.images.plugins.module_utils import _gcp, _plan, _sparsetar
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

REPO = Path(__file__).resolve().parents[4]
GOOD = {
    "project": "p",
    "zone": "europe-west1-b",
    "name": "web",
    "source_image_family": "debian-12",
    "source_image_project": "debian-cloud",
}


def check(**options):
    _plan.check_target("gce", validate_target("gce", dict(GOOD, **options), "t"), "t")


def test_valid_gce_target_passes():
    check()
    check(source="disk", bucket="b", source_image_family=None, zone=None, family="web-1")


@pytest.mark.parametrize(
    "options, words",
    [
        ({"name": "Web"}, "not a valid Compute Engine name"),
        ({"name": "1web"}, "not a valid Compute Engine name"),
        ({"name": "web-"}, "not a valid Compute Engine name"),
        ({"name": "w" * 41}, "too long"),
        ({"name": "w" * 64, "unique_name": False}, "not a valid Compute Engine name"),
        ({"family": "My_Family"}, "image family"),
        ({"labels": {"Team": "x"}}, "label"),
        ({"source_image": "debian"}, "exactly one of source_image"),
        ({"zone": None}, "needs zone"),
        ({"source": "disk"}, "needs bucket"),
    ],
)
def test_names_and_options_gce_rejects_fail_the_plan(options, words):
    with pytest.raises(BakeryError, match=words):
        check(**options)


def test_example_bake_plans():
    bake = yaml.safe_load((REPO / "playbooks" / "vars" / "gce_example.yml").read_text())["bake"]
    result = _plan.make_plan(
        bake, validate_target=validate_target, role_digest=lambda name: "d", cwd="/work", bake_id="b1"
    )
    (target,) = result["targets"]
    assert target["type"] == "gce" and target["needs_builder"] and target["rootfs"] is None
    assert target["options"]["unique_name"] is True


def test_sparse_archive_of_a_disk(tmp_path):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as handle:
        handle.truncate(5 << 20)
        for index in range(30):  # more extents than the header holds: extension blocks
            handle.seek(index * (160 << 10))
            handle.write(os.urandom(4096))
    data = b"".join(_sparsetar.gzip_stream(_sparsetar.tar_stream(str(disk)), size=4096))
    member = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    assert [m.name for m in member] == ["disk.raw"] and member[0].type == tarfile.GNUTYPE_SPARSE
    assert member[0].size == 1 << 30
    raw = gzip.decompress(data)
    assert raw[257:265] == b"ustar  \0" and len(raw) % 10240 == 0
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "a.tar.gz").write_bytes(data)
    subprocess.run(["tar", "-xSf", str(tmp_path / "a.tar.gz"), "-C", str(out)], check=True)
    extracted = (out / "disk.raw").read_bytes()
    assert extracted[: 5 << 20] == disk.read_bytes() and not extracted[5 << 20 :].strip(b"\0")


def test_base256_sizes_beyond_8_gib():
    header = _sparsetar.header("disk.raw", 10 << 30, [(9 << 30, 512), (10 << 30, 0)])
    info = tarfile.TarInfo.frombuf(header[:512], "utf-8", "surrogateescape")
    assert info.type == tarfile.GNUTYPE_SPARSE
    assert int.from_bytes(header[484:495], "big") == 10 << 30 and header[483] == 0x80


def test_a_target_without_usable_credentials_created_nothing_and_its_cleanup_says_so(tmp_path):
    params = {
        "action": "cleanup",
        "project": "p",
        "zone": "europe-west1-b",
        "bake_id": "b1",
        "target": "web/gce",
        "service_account_file": str(tmp_path / "missing.json"),
    }
    with pytest.raises(BakeryError) as failed:
        _gcp.run(dict(params, action="launch", source_image="debian-12"))
    assert failed.value.details["created"] is False
    result = _gcp.run(dict(params, created=False))
    assert result["changed"] is False and result["created"] is False
    assert result["msg"] == (
        "nothing to clean up: target web/gce of bake b1 created nothing (its calls failed before any could make a "
        "resource); the cleanup could not look either: project p: cannot read service_account_file %s: No such "
        "file or directory" % (tmp_path / "missing.json")
    )
    with pytest.raises(BakeryError, match="cannot read service_account_file"):
        _gcp.run(params)
