"""A build container's file system read from its overlay directories (_overlay): which paths the layer directories
make candidates (whiteouts, opaque directories, what a non-directory hides, base hard link groups), the index of a
merged view against the index of its tar, the package records, and when the export is read instead.

The layer directories are made here as the engine's are (whiteouts are character devices 0/0, opaque directories
have ``trusted.overlay.opaque=y``): the tests need root, as the engine does. The merged view is a plain
directory tree and its "export" a tar of it made by tarfile (the same order for these ASCII names, a later path of
any non-directory inode a hard link to its first, sockets left out); tests/integration/test_overlay_commit.py checks
the real engine.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _layer, _overlay
from ansible_collections.bakery.images.plugins.module_utils._docker import VARYING_PATHS, image_packages

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* attributes need root")

OLD = 1_600_000_000_250_000_000  # nanoseconds: a base file's time (not a whole second)
NEW = 1_800_000_000_750_000_000

STATUS = """Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4
Maintainer: Base <b@x>

Package: gone
Status: install ok installed
Architecture: all
Version: 1
Maintainer: Gone <g@x>
"""
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
License: GPL-2
"""


def build(root: Path, spec: list[tuple], mtime: int = OLD) -> Path:
    """A directory tree: (name, kind[, data]) with kind file, dir, symlink, hardlink (data: the first path, never
    followed), fifo, socket, chardev (data: its device numbers), whiteout (a character device 0/0) or opaque (a
    directory with trusted.overlay.opaque=y)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, kind, *rest in spec:
        data = rest[0] if rest else ""
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "file":
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
        elif kind in ("dir", "opaque"):
            path.mkdir(exist_ok=True)
            if kind == "opaque":
                os.setxattr(path, _overlay.OPAQUE_XATTR, b"y")
        elif kind == "symlink":
            path.symlink_to(data)
        elif kind == "hardlink":
            os.link(root / data, path, follow_symlinks=False)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(path))
        elif kind == "whiteout":
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        elif kind == "chardev":
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*data))
        else:
            raise AssertionError(kind)
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
    return root


class _Export(tarfile.TarFile):
    """tarfile's archive of a tree, with the export's hard links: a symbolic link, FIFO or device whose inode came
    before is a hard link to its first path too (tarfile links regular files only)."""

    def gettarinfo(self, name=None, arcname=None, fileobj=None):
        info = super().gettarinfo(name, arcname, fileobj)  # None for a socket
        if info is None or info.type not in (tarfile.SYMTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE):
            return info
        st = os.lstat(name)
        if st.st_nlink > 1:
            first = self.inodes.setdefault((st.st_ino, st.st_dev), info.name)
            if first != info.name:
                info.type, info.linkname = tarfile.LNKTYPE, first
        return info


def tar_of(root: Path) -> bytes:
    out = io.BytesIO()
    with _Export.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(str(root), arcname=".")
    return out.getvalue()


def index_of(data: bytes) -> dict[str, _layer.Entry]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        return _layer.index_tar(archive)


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> _layer.Entry:
    return _layer.Entry(name=name, kind=kind, mode=0o755, uid=0, gid=0, link=link)


BASE = [
    ("etc", "dir"),
    ("etc/keep", "file", "keep"),
    ("etc/issue", "file", "Debian\n"),
    ("etc/old", "file", "old"),
    ("opt", "dir"),
    ("opt/tree/a", "file", "a"),
    ("opt/tree/deep/b", "file", "b"),
    ("srv/replaced/x", "file", "x"),
    ("srv/replaced/y", "file", "y"),
    ("srv/was-dir/z", "file", "z"),
    ("usr/bin/perl", "file", "perl"),
    ("usr/bin/perl5", "hardlink", "usr/bin/perl"),
    ("usr/bin/other", "file", "other"),
    ("usr/bin/other2", "hardlink", "usr/bin/other"),
    ("usr/share/doc/base-files/copyright", "file", COPYRIGHT),
    ("usr/share/doc/gone/copyright", "file", COPYRIGHT),
    ("var/lib/dpkg/status", "file", STATUS),
    ("var/lib/dpkg/info/base-files.md5sums", "file", "abc  etc/issue\n"),
    ("var/lib/dpkg/info/gone.md5sums", "file", "def  opt/tree/a\n"),
]

# the container's changes, as its merged view shows them and as its upper directory holds them
MERGED = [
    ("etc", "dir"),
    ("etc/keep", "file", "keep"),
    ("etc/issue", "file", "Debian, changed\n"),
    ("etc/new", "file", "new"),
    ("etc/new-link", "hardlink", "etc/new"),
    ("etc/symlink", "symlink", "issue"),
    ("etc/fifo", "fifo"),
    ("etc/socket", "socket"),
    ("opt", "dir"),
    ("srv/replaced/w", "file", "w"),
    ("srv/was-dir", "file", "now a file"),
    ("usr/bin/perl", "file", "perl"),
    ("usr/bin/perl5", "file", "perl"),  # its copy-up broke the hard link to usr/bin/perl
    ("usr/bin/other", "file", "other"),
    ("usr/bin/other2", "hardlink", "usr/bin/other"),
    ("usr/share/doc/base-files/copyright", "file", COPYRIGHT),
    ("var/lib/dpkg/status", "file", STATUS.split("\n\n", maxsplit=1)[0] + "\n"),
    ("var/lib/dpkg/info/base-files.md5sums", "file", "abc  etc/issue\n"),
    ("var/log/apt/history.log", "file", "varies"),
]
UPPER = [
    ("etc", "dir"),
    ("etc/issue", "file", "Debian, changed\n"),
    ("etc/old", "whiteout"),
    ("etc/new", "file", "new"),
    ("etc/new-link", "hardlink", "etc/new"),
    ("etc/symlink", "symlink", "issue"),
    ("etc/fifo", "fifo"),
    ("etc/socket", "socket"),
    ("opt", "dir"),
    ("opt/tree", "whiteout"),
    ("srv", "dir"),
    ("srv/replaced", "opaque"),
    ("srv/replaced/w", "file", "w"),
    ("srv/was-dir", "file", "now a file"),
    ("usr/bin/perl5", "file", "perl"),
    ("usr/share/doc/gone", "whiteout"),
    ("var/lib/dpkg/status", "file", STATUS.split("\n\n", maxsplit=1)[0] + "\n"),
    ("var/lib/dpkg/info/gone.md5sums", "whiteout"),
    ("var/log/apt/history.log", "file", "varies"),
    # the engine's own paths are never candidates
    ("dev/console", "file"),
    (".dockerenv", "file"),
]


@pytest.fixture()
def trees(tmp_path: Path) -> dict[str, Path]:
    merged = build(tmp_path / "merged", MERGED)
    # a changed file's new time, not a whole second
    for name in ("etc/issue", "etc/new", "srv/was-dir"):
        os.utime(merged / name, ns=(NEW, NEW))
    return {
        "base": build(tmp_path / "base", BASE),
        "merged": merged,
        "upper": build(tmp_path / "upper", UPPER),
        "init": build(
            tmp_path / "init", [("etc/hostname", "file"), ("dev/console", "file"), ("proc", "dir")]
        ),
    }


def test_the_layer_directories_name_their_paths_whiteouts_and_opaque_directories(trees):
    found = _overlay.scan_layers([str(trees["upper"])])
    assert found.whiteouts == {"etc/old", "opt/tree", "usr/share/doc/gone", "var/lib/dpkg/info/gone.md5sums"}
    assert found.opaque == {"srv/replaced"}
    assert "srv/replaced/w" in found.paths and "etc/socket" in found.paths
    assert not any(_layer.engine_path(name) for name in found.paths)
    # whiteouts, opaque directories and non-directories may hide base paths below them; other directories not
    assert {"opt/tree", "srv/replaced", "srv/was-dir", "etc/new"} <= found.hiding
    assert not {"etc", "srv", "usr/bin"} & found.hiding


def test_a_redirected_or_unknown_marked_directory_is_not_read(tmp_path):
    redirected = build(tmp_path / "redirected", [("a", "dir")])
    os.setxattr(redirected / "a", _overlay.REDIRECT_XATTR, b"/b")
    with pytest.raises(_overlay.Unusable, match="redirect"):
        _overlay.scan_layers([str(redirected)])
    marked = build(tmp_path / "marked", [("a", "dir")])
    os.setxattr(marked / "a", _overlay.OPAQUE_XATTR, b"x")  # xwhiteouts: not an opaque directory
    with pytest.raises(_overlay.Unusable, match="opaque"):
        _overlay.scan_layers([str(marked)])


def test_base_paths_below_a_hiding_path_and_hard_link_groups_are_candidates():
    base = {
        name: entry(name, tarfile.DIRTYPE if kind == "dir" else tarfile.REGTYPE, link)
        for name, kind, link in [
            ("a", "dir", ""),
            ("a/b", "file", ""),
            ("a/c", "dir", ""),
            ("a/c/d", "file", ""),
            ("a-sibling", "file", ""),  # sorts between "a/" and "a0": never taken for a's
            ("ab", "dir", ""),
            ("ab/x", "file", ""),
            ("f", "file", ""),
            ("g", "file", "f"),
            ("h", "file", "f"),
            ("i", "file", ""),
            ("j", "file", "i"),
        ]
    }
    found = _overlay.Candidates(paths={"a", "g", "new"}, whiteouts={"a"}, hiding={"a", "g", "new"})
    wanted = _overlay.candidates(base, found, init=["etc"])
    # below the whiteout a; the group of g (its first f, and h); the init layer's etc; nothing of i's group
    assert wanted == {"a", "a/b", "a/c", "a/c/d", "f", "g", "h", "new", "etc"}
    # a non-directory over a base file hides nothing below it
    assert _overlay.candidates(base, _overlay.Candidates(paths={"i"}, hiding={"i"})) == {"i", "j"}


def as_exported(tree: _overlay.MergedTree, base: dict, final: dict, data: bytes, patterns=()) -> tuple:
    """What a commit of *final* (the index of *tree*) over *base* makes reading *tree*: the entries the image keeps,
    the whiteouts, the layer and the package records; the layer and the records checked to be those it makes
    reading the export *data* (a tar of the merged view)."""
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    members = {_layer.member_name(member.name): member for member in archive.getmembers()}
    kept = _layer.image_entries(base, final, patterns)
    paths, whiteouts = _layer.changes(base, final, patterns, kept)

    def layer(content) -> bytes:
        out = io.BytesIO()
        _layer.write_layer(out, final, paths, whiteouts, content, 1_700_000_000)
        return out.getvalue()

    written = layer(tree.open)
    assert written == layer(lambda name: archive.extractfile(members[name]))
    records = tree.packages(kept)
    assert records == image_packages(kept, members, archive.extractfile)
    return kept, whiteouts, written, records


def test_the_merged_index_is_the_index_of_its_tar(trees):
    base = index_of(tar_of(trees["base"]))
    expected = index_of(tar_of(trees["merged"]))
    overlay = _overlay.Overlay(
        merged=str(trees["merged"]), layers=(str(trees["upper"]),), init=str(trees["init"])
    )
    tree = _overlay.MergedTree(overlay)
    final = tree.index(base)
    assert final == expected
    assert list(final) == list(expected)  # the export's order
    # what the example covers
    assert final["etc/new-link"].link == "etc/new" and final["usr/bin/other2"].link == "usr/bin/other"
    assert final["usr/bin/perl5"].link == "" and base["usr/bin/perl5"].link == "usr/bin/perl"
    assert final["etc/issue"].mtime == NEW // 1_000_000_000
    assert "etc/socket" not in final and "etc/old" not in final and "opt/tree/deep/b" not in final
    assert "srv/replaced/x" not in final and "srv/was-dir/z" not in final
    # the base's files outside the layer are not read again
    assert "etc/keep" not in _overlay.candidates(base, _overlay.scan_layers([str(trees["upper"])]))

    # the layer and the package records are those of the tar
    kept, whiteouts, _written, records = as_exported(
        tree, base, final, tar_of(trees["merged"]), VARYING_PATHS
    )
    assert "var/log/apt/history.log" not in kept and "etc/old" in whiteouts
    assert [(record["name"], record["licenses"]) for record in records] == [("base-files", ["GPL-2"])]


# inodes of every kind with two names (GNU ln links a symbolic link itself), new in the container: as the export has
# them, the first path is what it is and the next a hard link to it; a package's documentation directory is the
# second name of a symbolic link
LINKED_BASE = [
    ("etc", "dir"),
    ("etc/issue", "file", "Debian\n"),
    ("usr/share/doc/base-files/copyright", "file", COPYRIGHT),
    ("var/lib/dpkg/status", "file", STATUS),
]
LINKED = [
    ("opt", "dir"),
    ("opt/fifo", "fifo"),
    ("opt/fifo-hard", "hardlink", "opt/fifo"),
    ("opt/file", "file", "x"),
    ("opt/null", "chardev", (1, 3)),
    ("opt/null-hard", "hardlink", "opt/null"),
    ("opt/regular", "file", "regular"),
    ("opt/regular-hard", "hardlink", "opt/regular"),
    ("opt/symlink", "symlink", "file"),
    ("opt/symlink-hard", "hardlink", "opt/symlink"),
    ("usr/share/doc/a-doc", "symlink", "base-files"),
    ("usr/share/doc/gone", "hardlink", "usr/share/doc/a-doc"),
]


def test_hard_linked_symlinks_fifos_and_devices_are_what_the_export_has(tmp_path):
    base = index_of(tar_of(build(tmp_path / "base", LINKED_BASE)))
    data = tar_of(build(tmp_path / "merged", LINKED_BASE + LINKED))
    expected = index_of(data)
    overlay = _overlay.Overlay(
        merged=str(tmp_path / "merged"),
        layers=(str(build(tmp_path / "upper", LINKED)),),
        init=str(build(tmp_path / "init", [("etc/hostname", "file")])),
    )
    tree = _overlay.MergedTree(overlay)
    final = tree.index(base)
    assert final == expected and list(final) == list(expected)
    for first in ("opt/symlink", "opt/fifo", "opt/null"):
        assert final[first + "-hard"] == dataclasses.replace(final[first], name=first + "-hard", link=first)
    assert (final["opt/symlink-hard"].kind, final["opt/symlink-hard"].linkname) == (tarfile.SYMTYPE, "file")
    assert final["opt/fifo-hard"].kind == tarfile.FIFOTYPE and final["opt/fifo-hard"].digest == ""
    assert (final["opt/null-hard"].kind, final["opt/null-hard"].device) == (tarfile.CHRTYPE, (1, 3))
    regular = final["opt/regular-hard"]
    assert (regular.kind, regular.link, regular.digest) == (
        tarfile.REGTYPE,
        "opt/regular",
        final["opt/regular"].digest,
    )

    # the layer and the package records are the export's: the FIFO is never opened (the merged view's open would
    # refuse it); the documentation directory that is a hard link is not followed, as the export's member is not
    _kept, _whiteouts, written, records = as_exported(tree, base, final, data)
    with tarfile.open(fileobj=io.BytesIO(written), mode="r:") as got:
        assert [(m.name, m.type, m.linkname) for m in got.getmembers() if m.name.endswith("-hard")] == [
            ("opt/fifo-hard", tarfile.LNKTYPE, "opt/fifo"),
            ("opt/null-hard", tarfile.LNKTYPE, "opt/null"),
            ("opt/regular-hard", tarfile.LNKTYPE, "opt/regular"),
            ("opt/symlink-hard", tarfile.LNKTYPE, "opt/symlink"),
        ]
    assert [(record["name"], record["licenses"]) for record in records] == [
        ("base-files", ["GPL-2"]),
        ("gone", []),
    ]


def test_a_file_that_changed_since_it_was_indexed_is_not_written(trees):
    base = index_of(tar_of(trees["base"]))
    overlay = _overlay.Overlay(
        merged=str(trees["merged"]), layers=(str(trees["upper"]),), init=str(trees["init"])
    )
    tree = _overlay.MergedTree(overlay)
    tree.index(base)
    (trees["merged"] / "etc" / "new").write_text("written later")
    with pytest.raises(_overlay.Unusable, match="changed"):
        tree.open("etc/new")
    # nor what is not a regular file (a FIFO's open would wait for a writer; a link is not followed)
    with pytest.raises(_overlay.Unusable, match="not a regular file"):
        tree.open("etc/fifo")
    with pytest.raises(OSError):
        tree.open("etc/symlink")
    assert _overlay.reading_error(_overlay.Unusable("x")) and _overlay.reading_error(OSError(5, "EIO"))
    assert not _overlay.reading_error(OSError(28, "ENOSPC"))


def test_a_file_capability_is_what_the_engine_exports(tmp_path):
    path = tmp_path / "cap"
    path.write_text("x")
    assert _overlay.capability(str(path)) == ()
    v2 = bytes.fromhex("0100000200200000000000000000000000000000")
    os.setxattr(path, _overlay.CAPABILITY_XATTR, v2)
    assert _overlay.capability(str(path)) == ((_overlay.CAPABILITY_KEY, v2.decode("latin-1")),)
    # a version 3 capability (with a root uid) is exported as version 2, 20 bytes
    os.setxattr(
        path, _overlay.CAPABILITY_XATTR, bytes.fromhex("01000003") + v2[4:] + (1000).to_bytes(4, "little")
    )
    assert _overlay.capability(str(path)) == ((_overlay.CAPABILITY_KEY, v2.decode("latin-1")),)


def test_the_mount_options_that_make_layer_directories_incomplete():
    defaults = {"index": False, "redirect_dir": False, "metacopy": False, "nfs_export": False}
    options = "rw,lowerdir=l/A:l/B,upperdir=/x/diff,workdir=/x/work"
    assert _overlay.mount_problem(options, defaults) is None
    assert "index" in _overlay.mount_problem(options + ",index=on", defaults)
    assert _overlay.mount_problem(options + ",redirect_dir=follow", defaults) is None
    assert "redirect_dir" in _overlay.mount_problem(options, dict(defaults, redirect_dir=True))
    assert _overlay.mount_problem(options + ",redirect_dir=off", dict(defaults, redirect_dir=True)) is None
    assert "userxattr" in _overlay.mount_problem(options + ",userxattr", defaults)
    assert "unknown" in _overlay.mount_problem(options, None)


def test_the_export_is_read_unless_the_overlay_can_be_read_as_it(tmp_path):
    dirs = {name: tmp_path / name for name in ("merged", "diff", "c-init/diff", "step/diff", "b1", "b2")}
    for path in dirs.values():
        path.mkdir(parents=True)
    container = {
        "State": {"Running": True},
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "MergedDir": str(dirs["merged"]),
                "UpperDir": str(dirs["diff"]),
                "LowerDir": ":".join(str(dirs[name]) for name in ("c-init/diff", "step/diff", "b1", "b2")),
            },
        },
    }
    base = {
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {"UpperDir": str(dirs["b1"]), "LowerDir": str(dirs["b2"])},
        }
    }
    info = {"SecurityOptions": ["name=seccomp,profile=default"]}
    mounts = {str(dirs["merged"]): ("overlay", "rw,lowerdir=l/A,upperdir=%s,workdir=w" % dirs["diff"])}
    defaults = {"index": False, "redirect_dir": False, "metacopy": False, "nfs_export": False}

    def why(**given) -> str:
        """Why the export is read when the arguments *given* replace the good ones."""
        arguments = dict(container=container, base_image=base, info=info, mounts=mounts, defaults=defaults)
        return _overlay.overlay_of(**dict(arguments, **given))[1]

    overlay, reason = _overlay.overlay_of(container, base, info, mounts, defaults)
    assert reason == ""
    assert overlay == _overlay.Overlay(
        merged=str(dirs["merged"]),
        layers=(str(dirs["diff"]), str(dirs["step/diff"])),
        init=str(dirs["c-init/diff"]),
    )
    # the upper directory named relatively, as the engine mounts a container of many layers
    relative = {str(dirs["merged"]): ("overlay", "lowerdir=l/A,upperdir=diff,workdir=work")}
    assert why(mounts=relative) == ""

    def changed(**data) -> dict:
        return dict(
            container,
            GraphDriver=dict(container["GraphDriver"], Data=dict(container["GraphDriver"]["Data"], **data)),
        )

    assert "overlay2" in why(container=dict(container, GraphDriver={"Name": "btrfs", "Data": {}}))
    assert "userns" in why(info={"SecurityOptions": ["name=seccomp", "name=userns"]})
    assert "rootless" in why(info={"SecurityOptions": ["name=rootless"]})
    assert "not running" in why(container=dict(container, State={"Running": False}))
    assert "base image" in why(
        base_image={"GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(tmp_path / "other")}}}
    )
    assert "cannot read" in why(container=changed(UpperDir=str(tmp_path / "remote/diff")))
    assert "not an overlay mount" in why(mounts={})
    other = {str(dirs["merged"]): ("overlay", "lowerdir=l/A,upperdir=/elsewhere/diff,workdir=w")}
    assert "not the mount" in why(mounts=other)
    assert "index" in why(defaults=dict(defaults, index=True))


def test_mountinfo_mount_points_are_unescaped(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "49 45 0:40 / /var/lib/docker/overlay2/a\\040b/merged rw,relatime shared:2 - overlay overlay "
        "rw,lowerdir=l/A,upperdir=/d/diff,workdir=/d/work\n"
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
    )
    assert _overlay._mounts(str(mountinfo)) == {
        "/var/lib/docker/overlay2/a b/merged": (
            "overlay",
            "rw,lowerdir=l/A,upperdir=/d/diff,workdir=/d/work",
        ),
        "/": ("ext4", "rw"),
    }
