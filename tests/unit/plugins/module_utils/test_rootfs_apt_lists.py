"""The package lists kept beside a rootfs tarball: the customize hook that writes them, the build that keeps them
(atomically, outside the fingerprint), and the builders seeded with them (a chroot tree, a builder VM's tree)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk, _rootfs
from ansible_collections.bakery.images.plugins.module_utils._files import PARTIAL, read_sidecar
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import chain_keys

LISTS = "var/lib/apt/lists"
RELEASE = "deb.debian.org_debian_dists_bookworm_InRelease"
PACKAGES = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
# a time of the mirror's (apt asks it whether its files changed since their times)
MIRROR_TIME = 1_700_000_000


def lists_tree(root: Path) -> Path:
    """A tree's lists directory as mmdebstrap leaves it before its cleanup: the lists, the lock, partial/ and
    auxfiles/ (with a file each)."""
    lists = root / LISTS
    (lists / "partial").mkdir(parents=True)
    (lists / "auxfiles").mkdir()
    (lists / "lock").write_text("")
    (lists / "partial" / "half.part").write_text("being downloaded")
    (lists / "auxfiles" / "key.asc").write_text("a key")
    (lists / RELEASE).write_text("Origin: Debian\n")
    (lists / PACKAGES).write_text("Package: bash\n")
    for name in (RELEASE, PACKAGES):
        os.utime(lists / name, (MIRROR_TIME, MIRROR_TIME))
    return lists


def leftovers(directory: Path) -> list[str]:
    """Files in *directory* other than the lock file that serialises builds."""
    return sorted(name for name in os.listdir(directory) if not name.endswith(".lock"))


def options(tmp_path: Path, **params) -> _rootfs.RootfsOptions:
    params.setdefault("path", str(tmp_path / "out" / "rootfs.tar"))
    params.setdefault("suite", "bookworm")
    params.setdefault("architecture", "amd64")
    return _rootfs.parse_options(params)


def hooks(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[1] for arg in argv if arg.startswith("--customize-hook=")]


# --------------------------------------------------------------------------- the command and its hook


def test_the_command_keeps_the_lists_only_when_asked(tmp_path: Path) -> None:
    opts = options(tmp_path, packages=["python3"])
    plain = _rootfs.build_command(opts, "/out/t.tar")
    assert not hooks(plain)
    kept = _rootfs.build_command(opts, "/out/t.tar", lists="/out/.l.partial")
    assert hooks(kept) == [_rootfs.apt_lists_hook("/out/.l.partial")]
    # the hook is an option: suite, target and mirror stay the last arguments
    assert kept[-3:] == plain[-3:] == ["bookworm", "/out/t.tar", opts.mirror]
    assert _rootfs.apt_lists_path("/c/rootfs/bookworm-abc.tar") == "/c/rootfs/bookworm-abc.tar.apt-lists.tar"


def test_the_lists_hook_comes_after_the_initramfs_hook(tmp_path: Path) -> None:
    opts = options(tmp_path, packages=["linux-image-cloud-amd64"], mode="unshare")
    argv = _rootfs.build_command(opts, "/out/t.tar", lists="/out/lists")
    assert hooks(argv) == [_rootfs.initramfs_once_hook(None), _rootfs.apt_lists_hook("/out/lists")]


def run_hook(hook: str, root: Path) -> subprocess.CompletedProcess:
    # as mmdebstrap runs a customize hook: under sh, the tree's directory as $1
    return subprocess.run(["sh", "-c", hook, "exec", str(root)], capture_output=True, text=True, check=False)


def test_the_hook_packs_the_lists_but_the_lock_partial_and_subdirectories(tmp_path: Path) -> None:
    lists_tree(tmp_path / "root")
    out = tmp_path / "out dir" / "it's.tar"  # quoted for the shell
    out.parent.mkdir()
    out.write_bytes(b"")
    assert run_hook(_rootfs.apt_lists_hook(str(out)), tmp_path / "root").returncode == 0
    with tarfile.open(out) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == [RELEASE, PACKAGES]
    assert all(m.isreg() and m.uid == 0 and m.gid == 0 and m.mtime == MIRROR_TIME for m in members)


@pytest.mark.parametrize("tree", ["no lists directory", "unwritable output"])
def test_the_hook_never_fails_the_build(tmp_path: Path, tree: str) -> None:
    root = tmp_path / "root"
    out = tmp_path / "lists.tar"
    out.write_bytes(b"")
    if tree == "no lists directory":
        root.mkdir()
    else:
        lists_tree(root)
        out = tmp_path / "no such directory" / "lists.tar"
    done = run_hook(_rootfs.apt_lists_hook(str(out)), root)
    assert done.returncode == 0, done.stderr
    assert not out.exists() or out.stat().st_size == 0, "nothing, or an empty file: no lists"


# --------------------------------------------------------------------------- the build keeps them

FAKE_MMDEBSTRAP = """\
#!{python}
import io, os, subprocess, sys, tarfile
if sys.argv[1:] == ["--version"]:
    print("mmdebstrap 9.9-fake")
    sys.exit(0)
target = [a for a in sys.argv[1:] if not a.startswith("-")][1]
# the customize hooks, on the tree FAKE_ROOT, as mmdebstrap runs them
for arg in sys.argv[1:]:
    if arg.startswith("--customize-hook=") and os.environ.get("FAKE_ROOT"):
        subprocess.run(["sh", "-c", arg.split("=", 1)[1], "exec", os.environ["FAKE_ROOT"]], check=True)
if os.environ.get("FAKE_FAIL"):
    sys.exit(25)
with tarfile.open(target, "w") as tar:
    info = tarfile.TarInfo("./usr/bin/python3")
    tar.addfile(info, io.BytesIO(b""))
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in mmdebstrap first on PATH that runs the customize hooks on the tree it returns."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "mmdebstrap"
    script.write_text(FAKE_MMDEBSTRAP.replace("{python}", sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "{}{}{}".format(bindir, os.pathsep, os.environ.get("PATH", "")))
    root = tmp_path / "tree"
    lists_tree(root)
    monkeypatch.setenv("FAKE_ROOT", str(root))
    return root


def bake(tmp_path: Path, **params) -> dict:
    params.setdefault("path", str(tmp_path / "out" / "rootfs.tar"))
    params.setdefault("suite", "bookworm")
    params.setdefault("architecture", "amd64")
    return _rootfs.bake_rootfs(params)


def test_the_build_keeps_the_lists_beside_the_tarball(tmp_path: Path, fake: Path) -> None:
    out = tmp_path / "out"
    result = bake(tmp_path)
    assert result["changed"]
    assert leftovers(out) == [
        "rootfs.tar",
        "rootfs.tar.apt-lists.tar",
        "rootfs.tar.bakery.json",
    ]
    with tarfile.open(out / "rootfs.tar.apt-lists.tar") as archive:
        assert archive.getnames() == [RELEASE, PACKAGES]
    assert (out / "rootfs.tar.apt-lists.tar").stat().st_mode & 0o777 == 0o644
    # mmdebstrap wrote them under a temporary name beside them, as it wrote the tarball
    (hook,) = hooks(result["command"])
    assert "-cf %s/.rootfs.tar.apt-lists.tar." % out in hook and ".partial -T -" in hook
    # no input of the fingerprint: a build without them has the same
    assert result["fingerprint"] == read_sidecar(str(out / "rootfs.tar"))["fingerprint"]
    assert "apt_lists" not in result["inputs"]


def test_a_rebuild_replaces_the_lists_and_one_without_them_removes_the_old(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    bake(tmp_path)
    (fake / LISTS / PACKAGES).write_text("Package: bash\nPackage: dash\n")
    bake(tmp_path, force=True)
    with tarfile.open(out / "rootfs.tar.apt-lists.tar") as archive:
        assert archive.extractfile(PACKAGES).read() == b"Package: bash\nPackage: dash\n"
    # a tree without lists (the hook wrote nothing): the tarball has none
    shutil.rmtree(fake / LISTS)
    bake(tmp_path, force=True)
    assert leftovers(out) == ["rootfs.tar", "rootfs.tar.bakery.json"]


def test_a_failed_build_keeps_the_old_lists_and_leaves_no_partial_file(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    bake(tmp_path)
    before = (out / "rootfs.tar.apt-lists.tar").read_bytes()
    (fake / LISTS / PACKAGES).write_text("newer\n")
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(_rootfs.BakeryError):
        bake(tmp_path, force=True)
    assert (out / "rootfs.tar.apt-lists.tar").read_bytes() == before
    assert leftovers(out) == [
        "rootfs.tar",
        "rootfs.tar.apt-lists.tar",
        "rootfs.tar.bakery.json",
    ]


def test_the_lists_are_written_under_a_name_the_janitor_knows(tmp_path: Path) -> None:
    target = tmp_path / "rootfs.tar.apt-lists.tar"
    with _rootfs._partial_beside(str(target)) as partial:
        assert os.path.dirname(partial) == str(tmp_path)
        assert PARTIAL.match(os.path.basename(partial))
    assert not os.path.exists(partial)


def test_a_tarball_built_before_the_lists_were_kept_is_up_to_date(tmp_path: Path, fake: Path) -> None:
    out = tmp_path / "out"
    bake(tmp_path)
    os.unlink(out / "rootfs.tar.apt-lists.tar")
    again = bake(tmp_path)
    assert not again["changed"]
    assert not (out / "rootfs.tar.apt-lists.tar").exists()


# --------------------------------------------------------------------------- the seed


def kept_lists(tmp_path: Path) -> Path:
    """The lists file of a tarball, with what no seed takes: the lock, a subdirectory's file, a link, a name that
    climbs out."""
    path = tmp_path / "rootfs.tar.apt-lists.tar"
    source = lists_tree(tmp_path / "source")
    with tarfile.open(path, "w") as archive:
        for name in (RELEASE, PACKAGES, "lock", "auxfiles/key.asc"):
            archive.add(source / name, arcname="./" + name if name == RELEASE else name)
        link = tarfile.TarInfo("evil")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
        climb = tarfile.TarInfo("../../../etc/evil")
        climb.size = 4
        archive.addfile(climb, io.BytesIO(b"evil"))
    return path


def tree(root: Path) -> Path:
    lists = root / LISTS
    (lists / "partial").mkdir(parents=True)
    (lists / "lock").write_text("")
    return lists


def test_a_tree_is_seeded_with_the_lists_and_their_times(tmp_path: Path) -> None:
    lists = tree(tmp_path / "root")
    seeded = _rootfs.seed_apt_lists(str(kept_lists(tmp_path)), str(tmp_path / "root"))
    assert seeded == {"path": str(tmp_path / "rootfs.tar.apt-lists.tar"), "files": 2}
    assert sorted(os.listdir(lists)) == sorted([RELEASE, PACKAGES, "lock", "partial"])
    assert (lists / PACKAGES).read_text() == "Package: bash\n"
    assert (lists / RELEASE).stat().st_mtime == MIRROR_TIME
    assert (lists / PACKAGES).stat().st_mode & 0o7777 == 0o644
    assert not (tmp_path / "etc").exists() and not (tmp_path / "root" / "etc").exists()


def test_no_seed_without_lists_or_into_a_link(tmp_path: Path) -> None:
    tree(tmp_path / "root")
    assert _rootfs.seed_apt_lists(str(tmp_path / "none.tar"), str(tmp_path / "root")) is None
    lists = kept_lists(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "linked" / "var" / "lib" / "apt").mkdir(parents=True)
    (tmp_path / "linked" / LISTS).symlink_to(outside)
    assert _rootfs.seed_apt_lists(str(lists), str(tmp_path / "linked")) is None
    assert not os.listdir(outside)


def test_a_broken_lists_file_seeds_what_it_can_and_never_fails(tmp_path: Path) -> None:
    tree(tmp_path / "root")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(kept_lists(tmp_path).read_bytes()[:1536])
    seeded = _rootfs.seed_apt_lists(str(broken), str(tmp_path / "root"))
    assert seeded is not None and "error" in seeded


# --------------------------------------------------------------------------- the builders


def base_tarball(tmp_path: Path) -> Path:
    """A rootfs tarball whose tree the chroot builder can enter (the host's dash and its libraries), with its
    lists beside it."""
    base_tree = tmp_path / "base"
    dash = os.path.realpath("/bin/dash")
    ldd = subprocess.run(["ldd", dash], capture_output=True, text=True, check=True).stdout.splitlines()
    libs = [line.split()[-2] if "=>" in line else line.split()[0] for line in ldd if "/" in line]
    for path in [dash, *[lib for lib in libs if lib.startswith("/")]]:
        target = base_tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (base_tree / "bin").mkdir(exist_ok=True)
    if not (base_tree / "bin" / "sh").exists():
        os.symlink(dash, base_tree / "bin" / "sh")
    for name in ("proc", "sys", "dev", "tmp", "etc", "usr/sbin"):
        (base_tree / name).mkdir(parents=True, exist_ok=True)
    tree(base_tree)
    base = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(base), "-C", str(base_tree), "."], check=True)
    shutil.move(str(kept_lists(tmp_path)), _rootfs.apt_lists_path(str(base)))
    return base


def test_the_chroot_tree_is_seeded_when_it_starts_from_the_rootfs(tmp_path: Path) -> None:
    base = base_tarball(tmp_path)
    keys = chain_keys({"target": "disk"}, ["one"])
    cache = {"enabled": True, "max_size": 1 << 30, "dir": str(tmp_path / "cache"), "max_resume": 1}
    params = {"rootfs": str(base), "step_keys": keys, "step_cache": cache, "bake_id": "b1", "apt_lists": True}
    try:
        first = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w1")), False)
        assert first["apt_lists"] == {"path": _rootfs.apt_lists_path(str(base)), "files": 2}
        lists = tmp_path / "w1" / "root" / LISTS
        assert sorted(os.listdir(lists)) == sorted([RELEASE, PACKAGES, "lock", "partial"])
        # the bake keeps the lists (package_lists: keep): no seed
        kept = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w2"), apt_lists=False), False)
        assert "apt_lists" not in kept
        assert sorted(os.listdir(tmp_path / "w2" / "root" / LISTS)) == ["lock", "partial"]
        # a tree from a cached step has the lists its bake refreshed (and removed none of): no seed
        for name in (RELEASE, PACKAGES):
            (lists / name).unlink()
        (lists / "refreshed").write_text("the step's own\n")
        _qemu_disk.step_save_action(dict(params, workdir=str(tmp_path / "w1"), step=1, target="disk"), False)
        resumed = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w3")), False)
        assert resumed["step_cache"]["resume"] == 1 and "apt_lists" not in resumed
        assert sorted(os.listdir(tmp_path / "w3" / "root" / LISTS)) == ["lock", "partial", "refreshed"]
    finally:
        for workdir in ("w1", "w2", "w3"):
            if (tmp_path / workdir).exists():
                _qemu_disk.remove_workdir(str(tmp_path / workdir))


def test_a_builder_disk_seeds_only_from_a_rootfs_and_outside_the_fingerprint(tmp_path: Path) -> None:
    params = {"rootfs": str(tmp_path / "r.tar"), "outputs": [{"path": str(tmp_path / "d.qcow2")}]}
    plain = _qemu_disk.parse_options(params)
    seeded = _qemu_disk.parse_options(dict(params, apt_lists=True))
    assert not plain.apt_lists and seeded.apt_lists
    assert _qemu_disk.describe(plain) == _qemu_disk.describe(seeded)
    assert _qemu_disk.compute_inputs(plain, resolve_source=False) == _qemu_disk.compute_inputs(
        seeded, resolve_source=False
    )
    # an image (a base_image of the user's) gets no seed
    image = _qemu_disk.parse_options(
        {"image": str(tmp_path / "i.qcow2"), "outputs": params["outputs"], "apt_lists": True}
    )
    assert not image.apt_lists
