"""SBOM documents of a dpkg database: content, official schemas, determinism, readers, writing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from ansible_collections.bakery.images.plugins.module_utils import _dpkg_db, _sbom, _sbom_record
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

STATUS = """\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u9
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
Maintainer: Debian Adduser Developers <adduser@packages.debian.org>
Description: add and remove users and groups

Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl (3.0.15-1~deb12u1)
Version: 3.0.15-1~deb12u1+b1
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Maintainer: Nobody <nobody@example.org>
"""

MACHINE_READABLE = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: %s

Files: *
Copyright: someone
License: %s
 The license text.

Files: debian/*
License: %s

License: ignored-standalone
 A standalone license paragraph names no files.
"""

INPUTS = {"role:bakery.images.example_web": "a" * 64, "vars": "b" * 64, "source": "c" * 64}


def make_tree(root) -> None:
    dpkg = root / "var/lib/dpkg"
    (dpkg / "info").mkdir(parents=True)
    (dpkg / "status").write_text(STATUS)
    (dpkg / "info/libc6:amd64.md5sums").write_text(
        "d41d8cd98f00b204e9800998ecf8427e  lib/x86_64-linux-gnu/libc.so.6\n"
    )
    (dpkg / "info/adduser.md5sums").write_text("0123456789abcdef0123456789abcdef  usr/sbin/adduser\n")
    doc = root / "usr/share/doc"
    (doc / "libc6").mkdir(parents=True)
    (doc / "libc6/copyright").write_text(MACHINE_READABLE % ("glibc", "LGPL-2.1+", "GPL-2+"))
    (doc / "adduser").mkdir()
    (doc / "adduser/copyright").write_text(
        "This is Debian's adduser. It is under the GPL, version 2 or later.\n"
    )
    # a package's doc directory that is a link to another's (absolute, as the image sees it)
    (doc / "openssl").mkdir()
    (doc / "openssl/copyright").write_text(
        MACHINE_READABLE % ("openssl", "Apache-2.0", "GPL-2+ with OpenSSL exception")
    )
    os.symlink("/usr/share/doc/openssl", doc / "libssl3")


def packages_of(reader) -> dict:
    return {p.name: p for p in _dpkg_db.read_packages(reader)}


SUBJECT = _sbom.Subject(
    name="example-web",
    kind="docker",
    fingerprint="f" * 64,
    bake_id="20261204t101500-a1b2c3",
    digest="sha256:" + "d" * 64,
)


def test_the_installed_packages_with_what_dpkg_knows_of_them(tmp_path):
    make_tree(tmp_path)
    found = packages_of(_dpkg_db.TreeReader(str(tmp_path)))
    assert sorted(found) == ["adduser", "libc6", "libssl3"]  # config-files only: not installed
    libc = found["libc6"]
    assert (libc.version, libc.architecture, libc.source, libc.source_version) == (
        "2.36-9+deb12u9",
        "amd64",
        "glibc",
        "2.36-9+deb12u9",
    )
    assert libc.licenses == ["GPL-2+", "LGPL-2.1+"]
    assert libc.md5sums_sha256 is not None
    ssl = found["libssl3"]
    assert (ssl.source, ssl.source_version) == ("openssl", "3.0.15-1~deb12u1")
    assert ssl.licenses == ["Apache-2.0", "GPL-2+ with OpenSSL exception"]
    assert ssl.md5sums_sha256 is None
    # not machine-readable: no license claimed
    assert found["adduser"].licenses == []
    assert found["adduser"].source == "adduser"


def test_links_never_leave_the_root(tmp_path):
    root = tmp_path / "root"
    make_tree(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "copyright").write_text(MACHINE_READABLE % ("x", "MIT", "MIT"))
    doc = root / "usr/share/doc"
    os.unlink(doc / "libssl3")
    os.symlink("../../../../outside", doc / "libssl3")
    assert packages_of(_dpkg_db.TreeReader(str(root)))["libssl3"].licenses == []


def test_a_tar_of_the_tree_reads_as_the_tree(tmp_path):
    make_tree(tmp_path / "root")
    reader = _dpkg_db.TarReader()
    for path in _dpkg_db.DATABASE_PATHS:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            tar.add(str(tmp_path / "root") + path, arcname=os.path.basename(path))
        reader.add(os.path.dirname(path), data.getvalue(), _dpkg_db.wanted_member)
    assert _dpkg_db.read_packages(reader) == _dpkg_db.read_packages(
        _dpkg_db.TreeReader(str(tmp_path / "root"))
    )


def test_no_database_is_an_error(tmp_path):
    with pytest.raises(_sbom.SbomError, match="no dpkg database"):
        _dpkg_db.read_packages(_dpkg_db.TreeReader(str(tmp_path)))


@pytest.mark.parametrize(
    ("names", "expression"),
    [
        (["GPL-2+"], "GPL-2.0-or-later"),
        (["GPL-2"], "GPL-2.0-only"),
        (["LGPL-2.1+", "Expat"], "LGPL-2.1-or-later AND MIT"),
        (["Apache-2.0 or GPL-2+"], "(Apache-2.0 OR GPL-2.0-or-later)"),
        (["BSD-3-clause"], "BSD-3-Clause"),
        (["GPL-2+ with OpenSSL exception"], "LicenseRef-GPL-2-with-OpenSSL-exception"),
        (["public-domain"], "LicenseRef-public-domain"),
        ([], None),
    ],
)
def test_debian_license_names_as_spdx_expressions(names, expression):
    assert _sbom.spdx_license(names)[0] == expression


def documents(tmp_path, subject=SUBJECT) -> dict:
    make_tree(tmp_path)
    return _sbom.documents(subject, _dpkg_db.read_packages(_dpkg_db.TreeReader(str(tmp_path))), INPUTS)


def test_cyclonedx_document_is_valid_against_the_official_schema(tmp_path):
    text = documents(tmp_path)["cyclonedx"]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    debs = {c["purl"]: c for c in bom["components"] if c.get("purl", "").startswith("pkg:deb/")}
    assert sorted(debs) == [
        "pkg:deb/debian/adduser@3.134?arch=all",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64",
        "pkg:deb/debian/libssl3@3.0.15-1~deb12u1%2Bb1?arch=amd64",
    ]
    libc = debs["pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64"]
    assert libc["supplier"]["name"] == "GNU Libc Maintainers"
    assert libc["licenses"] == [{"expression": "GPL-2.0-or-later AND LGPL-2.1-or-later"}]
    inputs = {c["name"]: c["hashes"][0]["content"] for c in bom["components"] if "hashes" in c}
    assert inputs == INPUTS
    assert bom["metadata"]["timestamp"].startswith("2026-12-04T10:15:00")
    assert bom["metadata"]["component"]["hashes"][0]["content"] == "d" * 64


def test_spdx_document_is_valid_spdx_2_3(tmp_path):
    text = documents(tmp_path)["spdx"]
    path = tmp_path / "doc.spdx.json"
    path.write_text(text)
    document = json_parser.parse_from_file(str(path))
    assert validate_full_spdx_document(document, "SPDX-2.3") == []
    data = json.loads(text)
    assert data["spdxVersion"] == "SPDX-2.3"
    assert data["creationInfo"]["created"] == "2026-12-04T10:15:00Z"
    by_name = {p["name"]: p for p in data["packages"]}
    assert by_name["libssl3"]["licenseDeclared"] == "Apache-2.0 AND LicenseRef-GPL-2-with-OpenSSL-exception"
    assert by_name["libssl3"]["sourceInfo"] == "built package from: openssl 3.0.15-1~deb12u1"
    assert (
        by_name["libc6"]["supplier"] == "Organization: GNU Libc Maintainers (debian-glibc@lists.debian.org)"
    )
    assert by_name["adduser"]["licenseDeclared"] == "NOASSERTION"
    refs = [r["referenceLocator"] for r in by_name["adduser"]["externalRefs"]]
    assert refs == ["pkg:deb/debian/adduser@3.134?arch=all"]
    assert by_name["vars"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "b" * 64}]
    contained = {
        r["relatedSpdxElement"] for r in data["relationships"] if r["relationshipType"] == "CONTAINS"
    }
    assert {by_name[n]["SPDXID"] for n in ("adduser", "libc6", "libssl3")} == contained


def test_the_same_inputs_give_the_same_bytes_and_another_fingerprint_another_serial(tmp_path):
    first = documents(tmp_path / "a")
    assert documents(tmp_path / "b") == first
    other = documents(tmp_path / "c", _sbom.Subject(name="example-web", kind="docker", fingerprint="e" * 64))
    assert json.loads(other["cyclonedx"])["serialNumber"] != json.loads(first["cyclonedx"])["serialNumber"]
    spdx = json.loads(other["spdx"])
    assert spdx["documentNamespace"] != json.loads(first["spdx"])["documentNamespace"]
    # without the bake that made it: the epoch, never the clock
    assert spdx["creationInfo"]["created"] == "1970-01-01T00:00:00Z"


def test_the_cyclonedx_document_made_in_a_child_is_the_one_made_here(tmp_path, monkeypatch):
    make_tree(tmp_path)
    packages = _dpkg_db.read_packages(_dpkg_db.TreeReader(str(tmp_path)))
    here = {
        "spdx": _sbom.spdx_document(SUBJECT, packages, INPUTS),
        "cyclonedx": _sbom.cyclonedx_document(SUBJECT, packages, INPUTS),
    }
    parent = os.getpid()
    made_in = []
    real = _sbom.cyclonedx_document

    def cyclonedx_document(*args):
        made_in.append(os.getpid())  # the child's own list: only this process's calls are seen here
        return real(*args)

    monkeypatch.setattr(_sbom, "cyclonedx_document", cyclonedx_document)
    # this process as an Ansible worker is, with one thread: a thread another test abandoned (test_preflight's
    # given-up checks end theirs later) would keep the child from being forked
    monkeypatch.setattr(_sbom.threading, "active_count", lambda: 1)
    assert _sbom.documents(SUBJECT, packages, INPUTS) == here
    assert made_in == []  # made in the child

    # a child that fails: the document is made here, the same
    def failing_in_the_child(*args):
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        made_in.append(os.getpid())
        return real(*args)

    monkeypatch.setattr(_sbom, "cyclonedx_document", failing_in_the_child)
    assert _sbom.documents(SUBJECT, packages, INPUTS) == here
    assert made_in == [parent]


def test_no_child_is_forked_beside_another_thread(monkeypatch):
    ran = []
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert _sbom._beside(lambda: ran.append(1) or "text")() is None
    finally:
        stop.set()
        other.join()
    assert ran == []
    # with this thread alone (not counting one another test abandoned), the child is forked
    monkeypatch.setattr(_sbom.threading, "active_count", lambda: 1)
    assert _sbom._beside(lambda: "text")() == "text"


def test_a_document_read_back_gives_the_same_documents(tmp_path):
    made = documents(tmp_path)
    packages, inputs = _sbom.from_cyclonedx(made["cyclonedx"])
    assert inputs == INPUTS
    assert _sbom.documents(SUBJECT, packages, inputs) == made
    with pytest.raises(_sbom.SbomError):
        _sbom.from_cyclonedx('{"bomFormat": "CycloneDX", "components": []}')


def params(tmp_path, **extra) -> dict:
    return dict(
        {
            "spdx_path": str(tmp_path / "out/a.spdx.json"),
            "cyclonedx_path": str(tmp_path / "out/a.cdx.json"),
            "root": None,
            "image": None,
            "docker_host": None,
            "source_document": None,
            "name": "example-web",
            "type": "qemu",
            "fingerprint": "f" * 64,
            "bake_id": "20261204t101500-a1b2c3",
            "digest": None,
            "inputs": INPUTS,
            "namespace": "debian",
        },
        **extra,
    )


def test_run_writes_once_and_then_changes_nothing(tmp_path):
    make_tree(tmp_path / "root")
    args = params(tmp_path, root=str(tmp_path / "root"))
    checked = _sbom.run(args, check_mode=True)
    assert checked["changed"] and not (tmp_path / "out").exists()
    first = _sbom.run(args, check_mode=False)
    assert first["changed"] and first["packages"] == 3
    stamp = os.stat(args["spdx_path"]).st_mtime_ns
    second = _sbom.run(args, check_mode=False)
    assert not second["changed"]
    assert (
        second["documents"]
        == first["documents"]
        == _sbom.existing({"spdx": args["spdx_path"], "cyclonedx": args["cyclonedx_path"]})
    )
    assert os.stat(args["spdx_path"]).st_mtime_ns == stamp
    # nothing to read: the documents there are reported as they are
    assert _sbom.run(params(tmp_path), check_mode=False) == dict(
        changed=False, documents=first["documents"], packages=0, msg="2 SBOM documents found"
    )


def test_documents_that_record_the_artifact_are_kept_without_reading_it_again(tmp_path, monkeypatch):
    """An unchanged bake: the documents at the paths record this artifact (its digest, inputs, ...), so its package
    database is not read again; another digest, other inputs or a document written for another artifact are read
    and written again."""
    make_tree(tmp_path / "root")
    args = params(
        tmp_path,
        root=str(tmp_path / "root"),
        digest="sha256:" + "d" * 64,
        source_date_epoch=1700000000,
        architecture="arm64",
    )
    first = _sbom.run(args, check_mode=False)
    assert first["changed"] and first["packages"] == 3
    paths = {"spdx": args["spdx_path"], "cyclonedx": args["cyclonedx_path"]}
    key = _sbom_record.subject_key(args)
    assert json.loads((tmp_path / "out/a.cdx.json").read_text())["metadata"]["component"]["properties"] == [
        {"name": "bakery:architecture", "value": "arm64"},
        {"name": "bakery:fingerprint", "value": "f" * 64},
        {"name": "bakery:subject", "value": key},
        {"name": "bakery:type", "value": "qemu"},
    ]
    # the creation time is the bake's epoch, not the bake id's time
    spdx = json.loads((tmp_path / "out/a.spdx.json").read_text())
    assert spdx["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    (artifact,) = [p for p in spdx["packages"] if p["name"] == "example-web"]
    assert artifact["comment"].endswith("; architecture arm64; subject %s" % key)

    def no_reading(*_args, **_kwargs):
        raise AssertionError("the package database was read again")

    monkeypatch.setattr(_sbom, "read_packages", no_reading)
    kept = _sbom.run(args, check_mode=False)
    assert kept == _sbom_record.unchanged_result(_sbom_record.recorded(paths, key))
    assert kept["documents"] == first["documents"] and kept["packages"] == 3 and not kept["changed"]
    for other in (
        dict(args, digest="sha256:" + "e" * 64),
        dict(args, inputs=dict(INPUTS, vars="0" * 64)),
        dict(args, source_date_epoch=1700000001),
        dict(args, architecture="amd64"),
    ):
        assert _sbom_record.recorded(paths, _sbom_record.subject_key(other)) is None
        with pytest.raises(AssertionError, match="read again"):
            _sbom.run(other, check_mode=True)
    monkeypatch.undo()
    # a document replaced by one of another artifact: read and written again
    (tmp_path / "out/a.spdx.json").write_text('{"packages": []}')
    assert _sbom.run(args, check_mode=False)["changed"]
    assert _sbom.run(args, check_mode=False) == kept
    # no digest, no record: an instance's image is read every time
    assert _sbom_record.subject_key(dict(args, digest=None)) is None
    assert _sbom_record.recorded(paths, None) is None


def test_run_derives_an_artifact_from_its_source_document(tmp_path):
    make_tree(tmp_path / "root")
    source = _sbom.run(params(tmp_path, root=str(tmp_path / "root")), check_mode=False)
    box = params(
        tmp_path / "box",
        type="vagrant",
        fingerprint="9" * 64,
        source_document=source["documents"]["cyclonedx"]["path"],
        inputs={"options": "1" * 64},
    )
    made = _sbom.run(box, check_mode=False)
    assert made["changed"] and made["packages"] == 3
    bom = json.loads((tmp_path / "box/out/a.cdx.json").read_text())
    inputs = {c["name"] for c in bom["components"] if "hashes" in c}
    assert inputs == set(INPUTS) | {"options"}
    with pytest.raises(BakeryError, match="cannot be read"):
        _sbom.run(params(tmp_path, source_document=str(tmp_path / "missing.json")), check_mode=False)


def test_links_resolve_inside_the_root_and_a_loop_resolves_to_nothing():
    links = {"usr/share/doc/a": "/usr/share/doc/b", "usr/share/doc/b": "../../../../../c", "x": "y", "y": "x"}
    assert _dpkg_db.resolve("/usr/share/doc/a/copyright", links.get) == "c/copyright"
    assert _dpkg_db.resolve("x/copyright", links.get) is None


def test_an_artifact_without_dpkg_gets_documents_of_its_inputs_and_a_warning(tmp_path):
    (tmp_path / "root").mkdir()
    made = _sbom.run(params(tmp_path, root=str(tmp_path / "root")), check_mode=False)
    assert made["packages"] == 0 and made["changed"]
    assert made["warnings"] == [
        "no dpkg database (/var/lib/dpkg/status) in the artifact: its SBOMs list no package"
    ]
    bom = json.loads((tmp_path / "out/a.cdx.json").read_text())
    assert {c["name"] for c in bom["components"]} == set(INPUTS)
    with pytest.raises(BakeryError, match="not a directory"):
        _sbom.run(params(tmp_path, root=str(tmp_path / "missing")), check_mode=False)


def test_packages_collected_on_an_instance_make_the_same_documents_as_its_tree(tmp_path):
    """A cloud image of an instance: the packages are read there (collect, nothing written, no SBOM library
    needed) and the controller writes the documents from them - the same documents as from the tree itself."""
    make_tree(tmp_path / "root")
    collected = _sbom.run({"collect": True, "root": str(tmp_path / "root")}, check_mode=True)
    assert collected["changed"] is False and collected["packages"] == 3
    assert json.loads(json.dumps(collected["installed"])) == collected["installed"]  # plain data
    from_tree = _sbom.run(params(tmp_path / "tree", root=str(tmp_path / "root")), check_mode=False)
    from_instance = _sbom.run(
        params(tmp_path / "instance", installed=list(reversed(collected["installed"]))), check_mode=False
    )
    assert from_instance["packages"] == 3
    for kind in ("spdx", "cyclonedx"):
        assert from_instance["documents"][kind]["sha256"] == from_tree["documents"][kind]["sha256"]
    assert not list(tmp_path.glob("root/**/*.json"))
    # no database there: no package, said so; a record that is not one of ours is refused
    (tmp_path / "empty").mkdir()
    empty = _sbom.run({"collect": True, "root": str(tmp_path / "empty")}, check_mode=False)
    assert empty["installed"] == [] and "no dpkg database" in empty["warnings"][0]
    with pytest.raises(BakeryError, match="unknown fields: size"):
        _sbom.run(params(tmp_path, installed=[{"name": "bash", "size": 3}]), check_mode=False)
    with pytest.raises(BakeryError, match="needs a name"):
        _sbom.run(params(tmp_path, installed=[{"version": "1"}]), check_mode=False)


# ---------------------------------------------------------------- a disk copied from a base image


def make_disk(tmp_path, tree, fmt="qcow2", table="gpt", part_type="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"):
    """A disk image made like one bakery did not make: a partition table (GPT or MBR; none: the file system on
    the whole disk) with a small first partition and then the root, an ext4 file system made from *tree* (mkfs
    -d: no mount), in *fmt*."""
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "40M"], check=True)
    offset = 0
    if table:
        offset = 8 * 1024 * 1024
        layout = "label: %s\n" % table
        if table == "gpt":
            layout += "start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
            layout += "start=16384, type=%s\n" % part_type
        else:
            layout += "start=2048, size=8192, type=ef\nstart=16384, type=%s\n" % part_type
        subprocess.run(
            ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", str(raw)],
            input=layout,
            text=True,
            check=True,
        )
    if tree is not None:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "offset=%d" % offset, "-d", str(tree), str(raw), "24M"],
            check=True,
            capture_output=True,
        )
    if fmt == "raw":
        return raw
    disk = tmp_path / ("disk." + fmt)
    subprocess.run(["qemu-img", "convert", "-O", fmt, str(raw), str(disk)], check=True)
    raw.unlink()
    return disk


@pytest.mark.parametrize(
    "fmt, table, part_type",
    [
        ("qcow2", "gpt", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),  # root (x86-64)
        ("raw", "gpt", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),  # Linux data
        ("vmdk", "dos", "83"),
        ("raw", None, None),  # a file system on the whole disk
    ],
)
def test_a_disk_gives_the_documents_of_its_tree(tmp_path, fmt, table, part_type):
    """The packages of a disk image's root file system, read with debugfs (no mount), are those of the tree it
    was made from: the same documents, byte for byte (the link of a doc directory resolved inside the disk)."""
    make_tree(tmp_path / "root")
    disk = make_disk(tmp_path, tmp_path / "root", fmt, table, part_type)
    from_tree = _sbom.run(params(tmp_path / "tree", root=str(tmp_path / "root")), check_mode=False)
    from_disk = _sbom.run(params(tmp_path / "disk", disk=str(disk)), check_mode=False)
    assert from_disk["packages"] == 3 and from_disk["changed"]
    for kind in ("spdx", "cyclonedx"):
        assert from_disk["documents"][kind]["sha256"] == from_tree["documents"][kind]["sha256"]
    # no temporary raw copy is left beside the disk
    assert sorted(p.name for p in disk.parent.iterdir() if p.name.startswith(".")) == []
    again = _sbom.run(params(tmp_path / "disk", disk=str(disk)), check_mode=False)
    assert not again["changed"]


def test_a_disk_that_cannot_be_read_fails_unless_skipped(tmp_path):
    """A disk without an ext4 root, or without a dpkg database, fails with a message naming what it has; with
    when_unreadable: skip, no documents are written and those an earlier disk left are removed."""
    blank = make_disk(tmp_path, None, "qcow2")
    with pytest.raises(BakeryError) as failed:
        _sbom.run(params(tmp_path, disk=str(blank)), check_mode=False)
    assert "found no ext2/3/4 root file system on the disk (its partitions: partition 1 (" in failed.value.msg
    assert "partition 2 (root (x86-64)) at 8388608" in failed.value.msg
    assert "sbom_unreadable: skip" in failed.value.msg
    assert not (tmp_path / "out").exists()
    (tmp_path / "no-dpkg/etc").mkdir(parents=True)
    (tmp_path / "no-dpkg-disk").mkdir()
    no_dpkg = make_disk(tmp_path / "no-dpkg-disk", tmp_path / "no-dpkg", "raw", None)
    with pytest.raises(BakeryError, match=r"no dpkg database \(/var/lib/dpkg/status\)"):
        _sbom.run(params(tmp_path, disk=str(no_dpkg)), check_mode=False)
    # an earlier disk's documents are there: skipping removes them (check mode: would)
    make_tree(tmp_path / "root")
    _sbom.run(params(tmp_path, root=str(tmp_path / "root")), check_mode=False)
    skip = params(tmp_path, disk=str(blank), when_unreadable="skip")
    checked = _sbom.run(skip, check_mode=True)
    assert checked["changed"] and (tmp_path / "out/a.cdx.json").exists()
    skipped = _sbom.run(skip, check_mode=False)
    assert skipped["changed"] and skipped["documents"] == {} and skipped["packages"] == 0
    assert "found no ext2/3/4 root file system" in skipped["warnings"][0]
    assert sorted(os.listdir(tmp_path / "out")) == []
    assert not _sbom.run(skip, check_mode=False)["changed"]
    with pytest.raises(BakeryError, match="is not a file"):
        _sbom.run(params(tmp_path, disk=str(tmp_path / "missing.qcow2")), check_mode=False)
