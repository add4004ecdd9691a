"""Normalised image layers (issue 15): a layer is a function of the two file systems' contents only."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import struct
import tarfile

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _layer
from ansible_collections.bakery.images.plugins.module_utils._docker import (
    VARYING_PATHS,
    image_packages,
    sweep_layer_workdirs,
)

EPOCH = 1_700_000_000
OLD = 1_600_000_000  # a package file's time, before the epoch
NOW = 1_800_000_000  # when provisioning wrote it


def fs_tar(entries: list[tuple], shuffle: int | None = None) -> bytes:
    """An exported file system: (name, kind, content, link target or device numbers, mtime[, extra TarInfo
    fields]); kind file, dir, symlink, hardlink (to the member named), fifo or chardev."""
    if shuffle is not None:
        entries = list(entries)
        random.Random(shuffle).shuffle(entries)
        # hard links after their targets, as an export has them
        entries.sort(key=lambda entry: entry[1] == "hardlink")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data, mtime, *extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = mtime, "root", "root"
            info.pax_headers = {"atime": "%d.5" % mtime, "ctime": "%d.25" % mtime}
            for key, value in (extra[0] if extra else {}).items():
                if key == "xattrs":
                    info.pax_headers.update(value)
                else:
                    setattr(info, key, value)
            payload = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, info.mode if extra and "mode" in extra[0] else 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chardev":
                info.type, (info.devmajor, info.devminor) = tarfile.CHRTYPE, data
            else:
                payload = data if isinstance(data, bytes) else data.encode()
                info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return out.getvalue()


def index(data: bytes) -> dict[str, _layer.Entry]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        return _layer.index_tar(archive)


def layer(base: bytes, final: bytes, epoch: int = EPOCH, patterns=()) -> bytes:
    """The layer over *base* of *final*, as bytes (its digest checked against them)."""
    base_entries, final_entries = index(base), index(final)
    paths, whiteouts = _layer.changes(base_entries, final_entries, patterns)
    archive = tarfile.open(fileobj=io.BytesIO(final), mode="r:")
    members = {_layer.member_name(member.name): member for member in archive.getmembers()}
    out = io.BytesIO()
    digest, size = _layer.write_layer(
        out, final_entries, paths, whiteouts, lambda name: archive.extractfile(members[name]), epoch
    )
    assert digest == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest() and size == len(out.getvalue())
    return out.getvalue()


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return {member.name: member for member in archive.getmembers()}


BASE = [
    ("bin", "dir", None, OLD),
    ("bin/sh", "file", "shell", OLD),
    ("etc", "dir", None, OLD),
    ("etc/hosts", "file", "127.0.0.1 base", OLD),
    ("etc/os-release", "file", "debian", OLD),
    ("etc/old", "dir", None, OLD),
    ("etc/old/a", "file", "a", OLD),
    ("etc/old/b", "file", "b", OLD),
    ("etc/gone", "file", "gone", OLD),
    ("usr", "dir", None, OLD),
    ("usr/bin", "dir", None, OLD),
    ("usr/bin/tool", "file", "tool", OLD),
    ("var", "dir", None, OLD),
    ("var/log", "dir", None, OLD),
    ("var/log/dpkg.log", "file", "base install", OLD),
    ("var/log/alternatives.log", "file", "base alternatives", OLD),
]


def provisioned(mtime: int) -> list[tuple]:
    """The base after provisioning that wrote at *mtime*."""
    kept = [entry for entry in BASE if not entry[0].startswith("etc/old") and entry[0] != "etc/gone"]
    changed = {
        "etc": ("etc", "dir", None, mtime),
        "etc/hosts": ("etc/hosts", "file", "127.0.0.1 the engine's", mtime),
        "var/log": ("var/log", "dir", None, mtime),
        "var/log/dpkg.log": ("var/log/dpkg.log", "file", "base install\nnginx at %d" % mtime, mtime),
    }
    return [changed.get(entry[0], entry) for entry in kept] + [
        (".dockerenv", "file", "", mtime),
        ("etc/nginx", "dir", None, mtime),
        ("etc/nginx/nginx.conf", "file", "daemon off;", mtime),
        ("etc/nginx/link", "symlink", "nginx.conf", mtime),
        ("usr/bin/tool2", "hardlink", "usr/bin/tool", OLD),
        ("usr/sbin", "dir", None, mtime),
        ("usr/sbin/nginx", "file", "nginx binary", OLD, {"mode": 0o4755, "uid": 0, "gid": 33}),
        ("usr/sbin/nginx2", "hardlink", "usr/sbin/nginx", OLD),
        ("var/cache", "dir", None, mtime),
        ("var/cache/apt", "dir", None, mtime),
        ("var/cache/apt/pkgcache.bin", "file", "cache %d" % mtime, mtime),
        ("var/lib", "dir", None, mtime),
        ("var/lib/dpkg", "dir", None, mtime),
        ("var/lib/dpkg/status", "file", "Package: nginx", mtime),
        ("var/lib/dpkg/status-old", "file", "Package: none %d" % mtime, mtime),
    ]


def test_the_same_file_system_written_at_other_times_and_in_another_order_gives_the_same_layer():
    base = fs_tar(BASE)
    first = layer(base, fs_tar(provisioned(NOW)), patterns=VARYING_PATHS)
    again = layer(base, fs_tar(provisioned(NOW + 3600), shuffle=1), patterns=VARYING_PATHS)
    assert first == again
    # another epoch is another layer
    assert layer(base, fs_tar(provisioned(NOW)), epoch=EPOCH + 1, patterns=VARYING_PATHS) != first


def test_the_layer_holds_what_changed_with_its_parents_sorted_and_normalised():
    got = members(layer(fs_tar(BASE), fs_tar(provisioned(NOW)), patterns=VARYING_PATHS))
    names = list(got)
    assert names == sorted(names, key=lambda name: name.split("/"))
    # unchanged paths (bin/sh, the base's tool) are not in it; the engine's own (.dockerenv, etc/hosts) never
    assert "bin/sh" not in got and "usr/bin/tool" not in got and "etc/os-release" not in got
    assert ".dockerenv" not in got and "etc/hosts" not in got
    assert {"etc/nginx/nginx.conf", "etc/nginx/link", "usr/sbin/nginx", "var/lib/dpkg/status"} <= set(got)
    assert {"usr", "usr/sbin", "usr/bin", "var/lib", "etc"} <= set(got), "parents before their children"
    assert got["etc/nginx/link"].issym() and got["etc/nginx/link"].linkname == "nginx.conf"
    nginx = got["usr/sbin/nginx"]
    assert nginx.mode == 0o4755 and nginx.gid == 33 and nginx.mtime == OLD, "an older time stays"
    assert got["etc/nginx/nginx.conf"].mtime == EPOCH and got["etc"].mtime == EPOCH, "a newer one is clamped"
    for member in got.values():
        assert member.uname == "" and member.gname == ""
        assert not {"atime", "ctime", "mtime"} & set(member.pax_headers), member.pax_headers


def test_hard_links_stay_links_within_the_layer_and_become_files_to_a_base_file():
    got = members(layer(fs_tar(BASE), fs_tar(provisioned(NOW))))
    assert got["usr/sbin/nginx"].isfile() and got["usr/sbin/nginx2"].islnk()
    assert got["usr/sbin/nginx2"].linkname == "usr/sbin/nginx"
    # its target is the base's, not in the layer: a file of its own with the content
    tool2 = got["usr/bin/tool2"]
    assert tool2.isfile() and tool2.size == len("tool")


# one inode of each kind with two names, as the engine exports them: its first path as what it is, the next a hard
# link to it (GNU ln links a symbolic link itself; a FIFO and a device can have more names too)
LINKED = [
    ("opt", "dir", None, NOW),
    ("opt/file", "file", "x", NOW),
    ("opt/fifo", "fifo", None, NOW, {"mode": 0o600, "uid": 7}),
    ("opt/fifo-hard", "hardlink", "opt/fifo", NOW, {"mode": 0o600, "uid": 7}),
    ("opt/null", "chardev", (1, 3), NOW, {"mode": 0o666}),
    ("opt/null-hard", "hardlink", "opt/null", NOW, {"mode": 0o666, "devmajor": 1, "devminor": 3}),
    ("opt/regular", "file", "content", NOW, {"mode": 0o755}),
    ("opt/regular-hard", "hardlink", "opt/regular", NOW, {"mode": 0o755}),
    ("opt/symlink", "symlink", "file", NOW, {"mode": 0o777}),
    # tarfile's default mode, not the engine's: the group's is its first path's
    ("opt/symlink-hard", "hardlink", "opt/symlink", NOW),
]


def test_every_name_of_a_hard_linked_symlink_fifo_or_device_is_what_its_first_path_is():
    found = index(fs_tar(BASE + LINKED))
    for first in ("opt/symlink", "opt/fifo", "opt/null"):
        assert found[first + "-hard"] == dataclasses.replace(found[first], name=first + "-hard", link=first)
    symlink, fifo, null = found["opt/symlink-hard"], found["opt/fifo-hard"], found["opt/null-hard"]
    assert (symlink.kind, symlink.linkname, symlink.mode, symlink.digest) == (
        tarfile.SYMTYPE,
        "file",
        0o777,
        "",
    )
    assert (fifo.kind, fifo.mode, fifo.uid, fifo.size, fifo.digest) == (tarfile.FIFOTYPE, 0o600, 7, 0, "")
    assert (null.kind, null.device) == (tarfile.CHRTYPE, (1, 3))
    # a regular file's group as before: a file with its first path's content
    regular = found["opt/regular-hard"]
    assert (regular.kind, regular.link, regular.size) == (tarfile.REGTYPE, "opt/regular", len("content"))
    assert regular.digest == found["opt/regular"].digest == hashlib.sha256(b"content").hexdigest()
    assert _layer.load_index(_layer.dump_index(found)) == found


def test_a_hard_link_to_a_directory_is_an_error():
    with pytest.raises(ValueError, match="directory"):
        index(fs_tar([("a", "dir", None, OLD), ("b", "hardlink", "a", OLD)]))


def test_the_layer_has_a_hard_linked_symlink_fifo_or_device_as_the_export_has_it_and_reads_no_content_of_it():
    final = fs_tar(BASE + LINKED)
    final_entries = index(final)
    paths, whiteouts = _layer.changes(index(fs_tar(BASE)), final_entries)
    asked = []

    def content(name):
        asked.append(name)
        return archive.extractfile(name)

    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(final), mode="r:") as archive:
        _layer.write_layer(out, final_entries, paths, whiteouts, content, EPOCH)
    assert asked == ["opt/file", "opt/regular"]
    got = members(out.getvalue())
    assert got["opt/symlink"].issym() and got["opt/symlink"].linkname == "file"
    assert got["opt/fifo"].isfifo() and (got["opt/fifo"].mode, got["opt/fifo"].uid) == (0o600, 7)
    assert got["opt/null"].ischr() and (got["opt/null"].devmajor, got["opt/null"].devminor) == (1, 3)
    assert got["opt/regular"].isfile() and got["opt/regular"].size == len("content")
    for first in ("opt/symlink", "opt/fifo", "opt/null", "opt/regular"):
        later = got[first + "-hard"]
        assert later.islnk() and later.linkname == first and later.size == 0, first
        assert later.mode == got[first].mode and later.mtime == EPOCH


def test_a_new_name_of_a_base_symlink_or_fifo_is_one_of_its_own_in_the_layer():
    base = BASE + [
        ("opt", "dir", None, OLD),
        ("opt/fifo", "fifo", None, OLD),
        ("opt/symlink", "symlink", "file", OLD, {"mode": 0o777}),
    ]
    final = base + [
        ("opt/fifo-hard", "hardlink", "opt/fifo", OLD),
        ("opt/symlink-hard", "hardlink", "opt/symlink", OLD, {"mode": 0o777}),
    ]
    got = members(layer(fs_tar(base), fs_tar(final)))
    # the base's first paths are as they were: not in the layer, and so nothing to link to
    assert set(got) == {"opt", "opt/fifo-hard", "opt/symlink-hard"}
    assert got["opt/fifo-hard"].isfifo() and got["opt/fifo-hard"].mtime == OLD
    assert got["opt/symlink-hard"].issym() and got["opt/symlink-hard"].linkname == "file"


def test_what_went_is_whited_out_once_at_its_top():
    got = members(layer(fs_tar(BASE), fs_tar(provisioned(NOW))))
    assert {name for name in got if "/.wh." in name} == {"etc/.wh.old", "etc/.wh.gone"}
    assert got["etc/.wh.old"].isfile() and got["etc/.wh.old"].size == 0


def test_paths_that_vary_between_runs_are_left_out_or_whited_out():
    got = members(layer(fs_tar(BASE), fs_tar(provisioned(NOW)), patterns=VARYING_PATHS))
    # changed from the base's: the base's goes too; new: not there
    assert "var/log/.wh.dpkg.log" in got and "var/log/dpkg.log" not in got
    assert "var/cache/apt/pkgcache.bin" not in got and "var/lib/dpkg/status-old" not in got
    # unchanged: the base's stays
    assert "var/log/.wh.alternatives.log" not in got and "var/log/alternatives.log" not in got
    assert "var/lib/dpkg/status" in got


def test_a_directory_that_became_a_file_hides_the_base_directory_without_whiteouts():
    final = [entry for entry in BASE if not entry[0].startswith("etc/old")] + [
        ("etc/old", "file", "now a file", NOW)
    ]
    got = members(layer(fs_tar(BASE), fs_tar(final)))
    assert got["etc/old"].isfile() and not [name for name in got if ".wh." in name]


def test_a_mode_owner_or_xattr_change_is_a_change_and_a_time_alone_is_not():
    touched = [(name, kind, data, NOW) for name, kind, data, _mtime in BASE]
    assert members(layer(fs_tar(BASE), fs_tar(touched))) == {}
    capability = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    final = [
        entry if entry[0] != "bin/sh" else ("bin/sh", "file", "shell", OLD, {"xattrs": capability})
        for entry in BASE
    ]
    got = members(layer(fs_tar(BASE), fs_tar(final)))
    assert set(got) == {"bin", "bin/sh"}
    assert got["bin/sh"].pax_headers == capability and got["bin"].mtime == OLD
    chowned = [
        entry if entry[0] != "bin/sh" else ("bin/sh", "file", "shell", OLD, {"uid": 1000}) for entry in BASE
    ]
    assert set(members(layer(fs_tar(BASE), fs_tar(chowned)))) == {"bin", "bin/sh"}


def test_the_epoch_without_one_is_the_newest_file_of_the_base_not_a_directory():
    entries = index(fs_tar([*BASE, ("etc/newer", "dir", None, NOW), ("tmp", "dir", None, NOW + 1)]))
    assert _layer.newest_mtime(entries) == OLD
    assert _layer.newest_mtime({}) == 0


def test_member_names_are_relative_without_dot_or_trailing_slash():
    assert _layer.member_name("./etc/nginx/") == "etc/nginx"
    assert _layer.member_name("/etc") == "etc"
    assert _layer.member_name("./") == ""


def test_a_hard_link_to_nothing_before_it_is_an_error():
    with pytest.raises(ValueError, match="hard link"):
        index(fs_tar([("a", "hardlink", "b", OLD)]))


def test_the_image_archive_names_every_layer_and_carries_only_the_new_one():
    config = json.dumps(
        {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]}}
    )
    out = io.BytesIO()
    image_id = _layer.image_archive(
        out,
        config.encode(),
        ["sha256:" + "a" * 64, "sha256:" + "b" * 64],
        ("sha256:" + "b" * 64, io.BytesIO(b"x" * 1024)),
    )
    assert image_id == "sha256:" + hashlib.sha256(config.encode()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:") as archive:
        names = archive.getnames()
        manifest = json.loads(archive.extractfile("manifest.json").read())
        assert archive.extractfile("%s.json" % image_id[7:]).read() == config.encode()
        assert archive.extractfile("%s/layer.tar" % ("b" * 64)).read() == b"x" * 1024
    assert manifest == [
        {
            "Config": "%s.json" % image_id[7:],
            "RepoTags": None,
            "Layers": ["%s/layer.tar" % ("a" * 64), "%s/layer.tar" % ("b" * 64)],
        }
    ]
    assert "%s/layer.tar" % ("a" * 64) not in names


def test_the_work_directories_of_killed_commits_go_and_running_ones_stay(tmp_path):
    dead = tmp_path / ".bakery-layer-999999999-abc"  # beyond any pid
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "container.tar").write_bytes(b"x")
    running = tmp_path / (".bakery-layer-%d-def" % os.getpid())
    running.mkdir()
    other = tmp_path / "bakery-layer-1-ghi"
    other.mkdir()
    assert sweep_layer_workdirs(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and running.exists() and other.exists()


def test_an_index_kept_by_image_id_is_the_index_read_and_spares_the_next_export(tmp_path, monkeypatch):
    from ansible_collections.bakery.images.plugins.module_utils import _docker

    read = index(fs_tar(provisioned(NOW) + [("etc/xattr", "file", "x", OLD, {"xattrs": {"user.a": "b"}})]))
    assert _layer.load_index(_layer.dump_index(read)) == read
    with pytest.raises(ValueError):
        _layer.load_index(b'{"version": %d, "entries": [["only a name"]]}' % _layer.INDEX_VERSION)
    # an index of version 1 has the later paths of a hard-linked symbolic link, FIFO or device as regular files
    older = dict(json.loads(_layer.dump_index(read)), version=1)
    with pytest.raises(ValueError, match="version"):
        _layer.load_index(json.dumps(older).encode())

    exports = []

    def export(client, image, bake_id):
        exports.append(image)
        return read

    monkeypatch.setattr(_docker, "_export_index", export)
    monkeypatch.setattr(_docker, "INDEX_CACHE_KEEP", 2)
    cache = tmp_path / "index"
    assert _docker.base_index(None, "sha256:aa", "b", str(cache)) == (read, "export")
    assert _docker.base_index(None, "sha256:aa", "b", str(cache)) == (read, "kept")
    assert exports == ["sha256:aa"]
    (cache / "aa.json.gz").write_bytes(b"not gzip")  # damaged: read again, and kept again
    assert _docker.base_index(None, "sha256:aa", "b", str(cache)) == (read, "export")
    with gzip.open(cache / "aa.json.gz", "wb") as handle:  # kept by an older version: read again
        handle.write(json.dumps(older).encode())
    assert _docker.base_index(None, "sha256:aa", "b", str(cache)) == (read, "export")
    assert _docker.base_index(None, "sha256:aa", "b", str(cache)) == (read, "kept")
    for image in ("sha256:bb", "sha256:cc"):
        os.utime(cache / "aa.json.gz", (1, 1))  # the least recently used
        _docker.base_index(None, image, "b", str(cache))
    assert sorted(os.listdir(cache)) == ["bb.json.gz", "cc.json.gz"]
    assert _docker.base_index(None, "sha256:dd", "b", None) == (read, "export")  # no cache: nothing kept
    assert exports == ["sha256:aa", "sha256:aa", "sha256:aa", "sha256:bb", "sha256:cc", "sha256:dd"]


def pyc(source_mtime: int, source_size: int, code: bytes = b"code") -> bytes:
    """Timestamp-based bytecode (PEP 552 flags 0) recording its source's time and size."""
    return b"\xa7\r\r\n" + struct.pack("<III", 0, source_mtime, source_size) + code


def test_bytecode_of_a_source_the_layer_clamps_records_the_epoch_and_stays_valid():
    source = "VALUE = 1\n"
    lib = "usr/local/lib/python3.11/dist-packages"
    base = BASE + [
        ("usr/lib", "dir", None, OLD),
        ("usr/lib/base.py", "file", source, OLD),
    ]
    final = base + [
        ("usr/local", "dir", None, NOW),
        ("usr/local/lib", "dir", None, NOW),
        ("usr/local/lib/python3.11", "dir", None, NOW),
        (lib, "dir", None, NOW),
        (lib + "/mod.py", "file", source, NOW),
        (lib + "/stale.py", "file", source, NOW),
        (lib + "/__pycache__", "dir", None, NOW),
        (lib + "/__pycache__/mod.cpython-311.pyc", "file", pyc(NOW, len(source)), NOW),
        (lib + "/__pycache__/mod.cpython-311.opt-1.pyc", "file", pyc(NOW, len(source), b"opt"), NOW),
        # compiled before its source changed: stale, and left so
        (lib + "/__pycache__/stale.cpython-311.pyc", "file", pyc(NOW - 60, len(source)), NOW),
        ("usr/lib/__pycache__", "dir", None, NOW),
        # bytecode of a base file the layer leaves alone: the source keeps its time, the bytecode its header
        ("usr/lib/__pycache__/base.cpython-311.pyc", "file", pyc(OLD, len(source)), NOW),
    ]
    written = layer(fs_tar(base), fs_tar(final))
    with tarfile.open(fileobj=io.BytesIO(written), mode="r:") as archive:
        content = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        times = {m.name: m.mtime for m in archive.getmembers()}
    assert times[lib + "/mod.py"] == EPOCH and "usr/lib/base.py" not in times
    assert content[lib + "/__pycache__/mod.cpython-311.pyc"] == pyc(EPOCH, len(source))
    assert content[lib + "/__pycache__/mod.cpython-311.opt-1.pyc"] == pyc(EPOCH, len(source), b"opt")
    assert content[lib + "/__pycache__/stale.cpython-311.pyc"] == pyc(NOW - 60, len(source))
    assert content["usr/lib/__pycache__/base.cpython-311.pyc"] == pyc(OLD, len(source))
    # the same file system in another order: the same layer
    assert layer(fs_tar(base), fs_tar(final, shuffle=2)) == written


COPYRIGHT = (
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
    "Files: *\nCopyright: someone\nLicense: BSD-2-clause\n"
)
STATUS = (
    "Package: nginx\nStatus: install ok installed\nVersion: 1.22\nArchitecture: amd64\nMaintainer: Deb <d@x>\n\n"
    "Package: nginx-common\nStatus: install ok installed\nVersion: 1.22\nArchitecture: all\nSource: nginx\n\n"
    "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n"
)
DATABASE = [
    ("var/lib/dpkg/info", "dir", None, NOW),
    ("var/lib/dpkg/info/nginx.md5sums", "file", "abc  usr/sbin/nginx\n", NOW),
    ("usr/share", "dir", None, NOW),
    ("usr/share/doc", "dir", None, NOW),
    ("usr/share/doc/nginx", "dir", None, NOW),
    ("usr/share/doc/nginx/copyright", "file", COPYRIGHT, NOW),
    ("usr/share/doc/nginx-common", "symlink", "nginx", NOW),
    ("etc/copyright", "file", COPYRIGHT, NOW),
]


def with_database() -> list[tuple]:
    """The provisioned file system with a dpkg database: a status file, an md5sums list, copyright files."""
    others = [entry for entry in provisioned(NOW) if entry[0] != "var/lib/dpkg/status"]
    return others + [("var/lib/dpkg/status", "file", STATUS, NOW)] + DATABASE


def export_packages(final: bytes, patterns=()) -> list[dict] | None:
    base_entries, final_entries = index(fs_tar(BASE)), index(final)
    kept = _layer.image_entries(base_entries, final_entries, patterns)
    with tarfile.open(fileobj=io.BytesIO(final), mode="r:") as archive:
        found = {_layer.member_name(member.name): member for member in archive.getmembers()}
        return image_packages(kept, found, archive.extractfile)


def test_the_image_packages_are_read_from_the_export_as_the_image_has_them():
    records = export_packages(fs_tar(with_database()))
    assert [(r["name"], r["architecture"], r["source"]) for r in records] == [
        ("nginx", "amd64", "nginx"),
        ("nginx-common", "all", "nginx"),
    ]
    nginx, common = records
    # the copyright behind nginx-common's link to nginx's documentation directory
    assert nginx["licenses"] == common["licenses"] == ["BSD-2-clause"]
    assert nginx["md5sums_sha256"] == hashlib.sha256(b"abc  usr/sbin/nginx\n").hexdigest()
    assert common["md5sums_sha256"] is None
    assert nginx["maintainer"] == "Deb <d@x>"
    # what the layer leaves out (a path that varies) the image lacks: so do the packages read from the export
    records = export_packages(fs_tar(with_database()), patterns=("usr/share/doc/nginx",))
    assert [r["licenses"] for r in records] == [[], []]


def test_an_export_without_a_dpkg_database_has_no_packages():
    without = [entry for entry in provisioned(NOW) if not entry[0].startswith("var/lib/dpkg")]
    assert export_packages(fs_tar(without)) is None
