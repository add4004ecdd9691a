"""The per-step cache of root-filesystem builders: sealed entries, the deepest valid one, eviction and prune."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk, _standin, _step_cache
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import chain_keys

KEYS = ["k0", "k1", "k2", "k3"]


def save(directory, key, position, data: bytes = b"tree"):
    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(data + key.encode())

    return _step_cache.save_rootfs_step(str(directory), key, position, "disk", write)


def test_a_saved_entry_is_sealed_with_its_size_and_sha256(tmp_path):
    path, seal, written = save(tmp_path, "k1", 1)
    assert written and path == str(tmp_path / "k1.tar.zst")
    data = (tmp_path / "k1.tar.zst").read_bytes()
    on_disk = json.loads((tmp_path / "k1.tar.zst.seal").read_text())
    assert on_disk == seal
    assert seal["size"] == len(data) and seal["sha256"] == hashlib.sha256(data).hexdigest()
    assert (seal["key"], seal["position"], seal["target"]) == ("k1", 1, "disk")
    assert sorted(os.listdir(tmp_path)) == ["k1.tar.zst", "k1.tar.zst.seal"], "no temporary file is left"
    # a second save of the key keeps the entry
    assert save(tmp_path, "k1", 1, b"other")[2] is False
    assert (tmp_path / "k1.tar.zst").read_bytes() == data


def test_the_deepest_sealed_entry_is_chosen(tmp_path):
    save(tmp_path, "k1", 1)
    save(tmp_path, "k2", 2)
    position, path, seal = _step_cache.find_rootfs_step(str(tmp_path), KEYS)
    assert position == 2 and path == str(tmp_path / "k2.tar.zst") and seal["key"] == "k2"
    # keys beyond max_resume are not looked at (the caller cuts the list)
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS[:2])[0] == 1
    assert _step_cache.find_rootfs_step(None, KEYS) == (0, None, None)


def test_a_changed_earlier_step_invalidates_every_later_entry(tmp_path):
    keys = chain_keys({"target": "disk"}, ["one", "two", "three"])
    for position, key in enumerate(keys[1:], start=1):
        save(tmp_path, key, position)
    assert _step_cache.find_rootfs_step(str(tmp_path), keys)[0] == 3
    assert (
        _step_cache.find_rootfs_step(str(tmp_path), chain_keys({"target": "disk"}, ["one", "two", "3"]))[0]
        == 2
    )
    assert _step_cache.find_rootfs_step(
        str(tmp_path), chain_keys({"target": "disk"}, ["1", "two", "three"])
    ) == (
        0,
        None,
        None,
    )


def test_an_unsealed_entry_is_refused(tmp_path):
    save(tmp_path, "k1", 1)
    # a killed bake's tarball: written, never sealed
    (tmp_path / "k3.tar.zst").write_bytes(b"half a tree")
    assert _step_cache.read_seal(str(tmp_path / "k3.tar.zst")) is None
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS)[0] == 1
    # a seal that does not match its file: another size, another key, other content of the same size
    save(tmp_path, "k2", 2)
    entry = tmp_path / "k2.tar.zst"
    entry.write_bytes(entry.read_bytes() + b"!")
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS)[0] == 1
    entry.write_bytes(entry.read_bytes()[:-2] + b"?")
    assert _step_cache.read_seal(str(entry)) is not None, "same size"
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS)[0] == 1, "the sha256 differs"
    seal = json.loads((tmp_path / "k1.tar.zst.seal").read_text())
    (tmp_path / "k2.tar.zst.seal").write_text(json.dumps(dict(seal, key="k2")))
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS)[0] == 1
    (tmp_path / "k1.tar.zst.seal").write_text("{not json")
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS)[0] == 0


def test_a_failed_write_leaves_no_entry(tmp_path):
    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"part")
        raise OSError("killed")

    with pytest.raises(OSError):
        _step_cache.save_rootfs_step(str(tmp_path), "k1", 1, "disk", write)
    assert os.listdir(tmp_path) == []


def test_eviction_goes_least_recently_used_first_by_file_size(tmp_path):
    for position, key in enumerate(("k1", "k2", "k3"), start=1):
        save(tmp_path, key, position, b"x" * 100)
    now = time.time()
    _step_cache.touch(str(tmp_path / "k1.tar.zst"), now - 30)
    _step_cache.touch(str(tmp_path / "k2.tar.zst"), now - 10)
    _step_cache.touch(str(tmp_path / "k3.tar.zst"), now - 20)
    entries = {entry["key"]: entry for entry in _step_cache.rootfs_entries(str(tmp_path))}
    assert entries["k1"]["size"] == 102 and entries["k2"]["position"] == 2
    assert _step_cache.evict_rootfs_steps(str(tmp_path), 500, check_mode=True) == []
    removed = _step_cache.evict_rootfs_steps(str(tmp_path), 150, keep={str(tmp_path / "k1.tar.zst")})
    assert removed == [str(tmp_path / "k3.tar.zst"), str(tmp_path / "k2.tar.zst")]
    assert sorted(os.listdir(tmp_path)) == ["k1.tar.zst", "k1.tar.zst.seal"]
    # a use makes an entry the most recent
    save(tmp_path, "k2", 2, b"x" * 100)
    _step_cache.touch(str(tmp_path / "k2.tar.zst"), now - 40)
    _step_cache.touch(str(tmp_path / "k1.tar.zst"), now)
    assert _step_cache.evict_rootfs_steps(str(tmp_path), 150) == [str(tmp_path / "k2.tar.zst")]


def test_prune_removes_what_no_bake_uses_and_empties_the_cache(tmp_path):
    save(tmp_path, "k1", 1)
    (tmp_path / "k2.tar.zst").write_bytes(b"unsealed")
    (tmp_path / "k3.tar.zst.seal").write_text(json.dumps({"key": "k3", "size": 1, "sha256": "0"}))
    old = tmp_path / ".k4.tar.zst.abc123.partial"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".k5.tar.zst.def456.partial"
    fresh.write_bytes(b"being written")
    dry = _step_cache.prune_rootfs_steps(str(tmp_path), 1 << 30, check_mode=True)
    assert len(os.listdir(tmp_path)) == 6, "check mode removes nothing"
    pruned = _step_cache.prune_rootfs_steps(str(tmp_path), 1 << 30)
    assert pruned == dry
    assert sorted(pruned["unsealed"]) == sorted(
        str(tmp_path / name) for name in ("k2.tar.zst", "k3.tar.zst.seal", ".k4.tar.zst.abc123.partial")
    )
    assert pruned["evicted"] == []
    assert sorted(os.listdir(tmp_path)) == [".k5.tar.zst.def456.partial", "k1.tar.zst", "k1.tar.zst.seal"]
    assert _step_cache.prune_rootfs_steps(str(tmp_path), 0)["evicted"] == [str(tmp_path / "k1.tar.zst")]
    assert os.listdir(tmp_path) == [".k5.tar.zst.def456.partial"]


def test_the_archive_keeps_owners_links_and_xattrs(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "a").write_text("a\n")
    os.link(root / "etc" / "a", root / "etc" / "hard")
    os.symlink("a", root / "etc" / "soft")
    os.chown(root / "etc" / "a", 1234, 4321)
    os.setxattr(root / "etc" / "a", "user.bakery", b"kept")
    target = tmp_path / "out.tar.zst"
    subprocess.run(_step_cache.archive_command("tar", str(root), str(target)), check=True)
    assert target.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    back = tmp_path / "back"
    extract(target, back)
    info = os.stat(back / "etc" / "a")
    assert (info.st_uid, info.st_gid, info.st_nlink) == (1234, 4321, 2)
    assert os.stat(back / "etc" / "hard").st_ino == info.st_ino
    assert os.readlink(back / "etc" / "soft") == "a"
    assert os.getxattr(back / "etc" / "a", "user.bakery") == b"kept"
    names = subprocess.run(
        ["tar", "-tf", str(target)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names[:2] == ["./", "./etc/"], "members ./..., sorted, as the base rootfs has them"


def test_a_chroot_tree_resumes_from_its_kept_step_without_the_builders_additions(tmp_path):
    """unpack, step_save, unpack again: the second tree starts from the kept step; the entry has the tree as the
    provisioner left it, without the stand-in commands, resolv.conf and policy-rc.d of the builder."""
    base_tree = tmp_path / "base"
    # /bin/sh (the host's dash and its libraries): the builder's enter script checks that the sandbox starts
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
    (base_tree / "etc" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    base = tmp_path / "base.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(base), "-C", str(base_tree), "."], check=True)
    keys = chain_keys({"target": "disk"}, ["one", "two"])
    cache = {"enabled": True, "max_size": 1 << 30, "dir": str(tmp_path / "cache"), "max_resume": 2}
    params = {"rootfs": str(base), "step_keys": keys, "step_cache": cache, "bake_id": "b1"}

    first = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w1")), False)
    assert first["step_cache"]["resume"] == 0 and first["step_cache"]["steps"] == ["miss", "miss"]
    root = tmp_path / "w1" / "root"
    assert (root / "usr" / "sbin" / "policy-rc.d").exists()
    (root / "etc" / "one").write_text("provisioner one\n")
    kept = _qemu_disk.step_save_action(
        dict(params, workdir=str(tmp_path / "w1"), step=1, target="disk"), False
    )
    assert kept["changed"] and kept["image"] == str(
        tmp_path / "cache" / "rootfs-steps" / ("%s.tar.zst" % keys[1])
    )
    # the builder is as it was: ready for the next provisioner
    assert (root / "usr" / "sbin" / "policy-rc.d").exists()
    names = subprocess.run(
        ["tar", "-tf", kept["image"]], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "./etc/one" in names and "./usr/sbin/policy-rc.d" not in names
    stand_ins = {"./" + path.lstrip("/") for path, _content, _mode, _link in _standin.files()}
    assert stand_ins and not stand_ins & set(names), "the stand-in commands are no part of the step"
    assert all((root / name).exists() or (root / name).is_symlink() for name in stand_ins), (
        "and back for the next"
    )
    again = _qemu_disk.step_save_action(dict(params, workdir=str(tmp_path / "w1"), step=1), False)
    assert not again["changed"]

    check = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w2")), True)
    assert check["step_cache"]["resume"] == 1 and not (tmp_path / "w2").exists(), "check mode unpacks nothing"
    assert "provisioner 2 has no cached state" in check["step_cache"]["reason"]
    second = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w2")), False)
    assert second["step_cache"]["steps"] == ["hit", "miss"] and second["step_cache"]["image"] == kept["image"]
    tree = tmp_path / "w2" / "root"
    assert (tree / "etc" / "one").read_text() == "provisioner one\n"
    assert _qemu_disk.restore_chroot(str(tree))
    assert (tree / "etc" / "resolv.conf").read_text() == "nameserver 192.0.2.1\n"
    assert not (tree / "usr" / "sbin" / "policy-rc.d").exists()

    # bake_force and step_cache: false bypass the cache
    forced = _qemu_disk.unpack_action(dict(params, workdir=str(tmp_path / "w3"), force=True), True)
    assert forced["step_cache"]["steps"] == ["bypassed", "bypassed"]
    off = _qemu_disk.unpack_action(
        dict(params, workdir=str(tmp_path / "w3"), step_cache=dict(cache, enabled=False)), True
    )
    assert off["step_cache"]["resume"] == 0 and off["step_cache"]["reason"].startswith(
        "the step cache is off"
    )
    for workdir in ("w1", "w2"):
        _qemu_disk.remove_workdir(str(tmp_path / workdir))


# ---------------------------------------------------------------- layers


def extract(tarball, into) -> None:
    into.mkdir()
    subprocess.run(_step_cache.extract_command("tar", str(tarball), str(into)), check=True)


def manifest(root) -> dict:
    """Everything a disk made from the tree could differ in: each path's type, mode, owner, size, modification
    time, content or link target, extended attributes, and which paths share an inode."""
    found, inodes = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in [".", *dirs, *files] if directory == str(root) else [*dirs, *files]:
            path = os.path.normpath(os.path.join(directory, name))
            info = os.lstat(path)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                what = "link " + os.readlink(path)
            elif os.path.isfile(path):
                what = hashlib.sha256(open(path, "rb").read()).hexdigest()
                inodes.setdefault(info.st_ino, []).append(relative)
            else:
                what = "dir"
            xattrs = {} if os.path.islink(path) else {a: os.getxattr(path, a) for a in os.listxattr(path)}
            found[relative] = (
                what,
                info.st_mode,
                info.st_uid,
                info.st_gid,
                info.st_size,
                info.st_mtime_ns,
                xattrs,
            )
    return {"paths": found, "links": sorted(sorted(group) for group in inodes.values() if len(group) > 1)}


def layered_tree(tmp_path) -> tuple:
    """A tree, its whole archive and snapshot, then what a provisioner does to it: the tree after, and the seal
    fields and archive of its layer."""
    root = tmp_path / "tree"
    for name in ("etc/app", "etc/gone", "var/lib/x", "usr/share/doc", "swap", "opt"):
        (root / name).mkdir(parents=True)
    (root / "opt" / "untouched").write_text("the same\n")
    (root / "srv" / "in").mkdir(parents=True)
    (root / "srv" / "in" / "place").write_text("written in place: its directory does not change\n")
    (root / "etc" / "app" / "conf").write_text("one\n")
    (root / "etc" / "app" / "same").write_text("unchanged\n")
    (root / "etc" / "gone" / "file").write_text("removed with its directory\n")
    (root / "etc" / "removed").write_text("removed\n")
    (root / "etc" / "linked").write_text("a hard link\n")
    os.link(root / "etc" / "linked", root / "var" / "lib" / "x" / "linked")
    (root / "swap" / "was-a-file").write_text("becomes a directory\n")
    (root / "swap" / "was-a-dir").mkdir()
    (root / "swap" / "was-a-dir" / "inside").write_text("goes\n")
    os.symlink("conf", root / "etc" / "app" / "link")
    os.setxattr(root / "usr" / "share" / "doc", "user.bakery", b"dropped")
    os.setxattr(root / "etc" / "app" / "conf", "user.bakery", b"dropped")
    os.chown(root / "var" / "lib" / "x", 1000, 1000)
    whole = tmp_path / "whole.tar.zst"
    subprocess.run(_step_cache.archive_command("tar", str(root), str(whole)), check=True)
    before = _step_cache.tree_snapshot(str(root))
    time.sleep(0.01)

    # the provisioner: in place and replaced, added and removed, links, types, owners, modes, attributes
    with open(root / "srv" / "in" / "place", "a") as handle:
        handle.write("more\n")
    with open(root / "etc" / "app" / "conf", "a") as handle:
        handle.write("two\n")
    os.removexattr(root / "etc" / "app" / "conf", "user.bakery")
    os.removexattr(root / "usr" / "share" / "doc", "user.bakery")
    shutil.rmtree(root / "etc" / "gone")
    os.unlink(root / "etc" / "removed")
    with open(root / "var" / "lib" / "x" / "linked", "a") as handle:
        handle.write("changed through the other name\n")
    os.link(root / "etc" / "app" / "same", root / "etc" / "same-again")
    os.unlink(root / "swap" / "was-a-file")
    (root / "swap" / "was-a-file").mkdir()
    (root / "swap" / "was-a-file" / "new").write_text("new\n")
    shutil.rmtree(root / "swap" / "was-a-dir")
    os.symlink("/etc", root / "swap" / "was-a-dir")
    os.chmod(root / "etc" / "app", 0o750)
    os.chown(root / "var" / "lib" / "x", 0, 0)
    os.unlink(root / "etc" / "app" / "link")
    os.symlink("same", root / "etc" / "app" / "link")
    (root / "new" / "deep").mkdir(parents=True)
    (root / "new" / "deep" / "file").write_text("new\n")
    os.utime(root / "etc" / "same-again", ns=(1, 1_000_000_000))

    after = _step_cache.tree_snapshot(str(root))
    members, deleted, directories = _step_cache.tree_changes(before, after)
    listing = tmp_path / "members"
    listing.write_bytes(b"".join(name.encode() + b"\0" for name in members))
    layer = tmp_path / "layer.tar.zst"
    subprocess.run(_step_cache.archive_command("tar", str(root), str(layer), str(listing)), check=True)
    return root, whole, layer, {"deleted": deleted, "directories": directories}, members


def test_a_layer_over_the_whole_tree_makes_the_tree_a_whole_archive_makes(tmp_path):
    root, whole, layer, seal, members = layered_tree(tmp_path)
    assert "./opt/untouched" not in members and "./opt" not in members, (
        "only what changed, and what is above it"
    )
    assert {"./etc/app/conf", "./var/lib/x/linked", "./etc/linked", "./new/deep/file", "."} <= set(members)
    assert seal["deleted"] == ["./etc/gone", "./etc/removed", "./swap/was-a-dir", "./swap/was-a-file"]

    # the reference: the tree after the provisioner, archived whole and unpacked
    reference = tmp_path / "reference.tar.zst"
    subprocess.run(_step_cache.archive_command("tar", str(root), str(reference)), check=True)
    extract(reference, tmp_path / "fresh")
    # the layered way: the tree before, unpacked, and the layer applied
    extract(whole, tmp_path / "layered")
    _qemu_disk.apply_layer(str(tmp_path / "layered"), str(layer), seal)

    fresh, layered = manifest(tmp_path / "fresh"), manifest(tmp_path / "layered")
    assert layered["paths"] == fresh["paths"], sorted(
        set(layered["paths"].items()) ^ set(fresh["paths"].items())
    )
    assert (
        layered["links"]
        == fresh["links"]
        == [["etc/app/same", "etc/same-again"], ["etc/linked", "var/lib/x/linked"]]
    )
    assert os.path.getsize(layer) < os.path.getsize(whole)


def test_a_layer_never_removes_through_a_link(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("host\n")
    os.symlink(str(tmp_path / "outside"), tmp_path / "root" / "etc")
    with pytest.raises(_qemu_disk.BakeryError, match="no directory of the tree"):
        _qemu_disk.apply_layer(
            str(tmp_path / "root"), str(tmp_path / "none"), {"deleted": ["./etc/precious"]}
        )
    with pytest.raises(_qemu_disk.BakeryError, match="no path in the tree"):
        _qemu_disk.apply_layer(str(tmp_path / "root"), str(tmp_path / "none"), {"deleted": ["./../outside"]})
    assert (tmp_path / "outside" / "precious").exists()


def layer_save(directory, key, position, parent, data=b"layer"):
    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(data + key.encode())
        parent_seal = _step_cache.read_seal(_step_cache.entry_path(str(directory), parent))
        return {
            "parent": parent,
            "parent_sha256": parent_seal["sha256"],
            "depth": 1,
            "deleted": [],
            "directories": [],
        }

    return _step_cache.save_rootfs_step(str(directory), key, position, "disk", write, layer=True)


def test_a_layer_is_used_only_over_the_very_entry_it_was_written_on(tmp_path):
    save(tmp_path, "k1", 1)
    layer_save(tmp_path, "k2", 2, "k1")
    position, chain = _step_cache.find_rootfs_chain(str(tmp_path), KEYS)
    assert position == 2 and [path for path, _seal in chain] == [
        str(tmp_path / "k1.tar.zst"),
        str(tmp_path / "k2.layer.tar.zst"),
    ]
    assert _step_cache.find_rootfs_step(str(tmp_path), KEYS)[1] == str(tmp_path / "k2.layer.tar.zst")
    # the parent kept again with another content (evicted, then another bake's): the layer is no longer used
    _step_cache.remove_entry(str(tmp_path / "k1.tar.zst"))
    save(tmp_path, "k1", 1, b"other tree")
    assert _step_cache.find_rootfs_chain(str(tmp_path), KEYS)[0] == 1
    assert _step_cache.broken_entries(str(tmp_path)) == [str(tmp_path / "k2.layer.tar.zst")]
    assert _step_cache.prune_rootfs_steps(str(tmp_path), 1 << 30)["unsealed"] == [
        str(tmp_path / "k2.layer.tar.zst")
    ]
    assert sorted(os.listdir(tmp_path)) == ["k1.tar.zst", "k1.tar.zst.seal"]
    # a layer is named apart: where a bakery that knows no layers looks, there is no entry of its key
    layer_save(tmp_path, "k2", 2, "k1")
    assert _step_cache.read_seal(str(tmp_path / "k2.tar.zst")) is None
    assert _step_cache.read_seal(str(tmp_path / "k2.layer.tar.zst"))["parent"] == "k1"
    assert _step_cache.save_rootfs_step(str(tmp_path), "k2", 2, "disk", lambda tmp: None)[2] is False
    _step_cache.remove_entry(str(tmp_path / "k2.layer.tar.zst"))
    # what a kept layer stands on is not evicted; a layer whose parent is evicted goes with it
    layer_save(tmp_path, "k2", 2, "k1")
    _step_cache.touch(str(tmp_path / "k1.tar.zst"), time.time() - 100)
    assert _step_cache.evict_rootfs_steps(str(tmp_path), 10, keep={str(tmp_path / "k2.layer.tar.zst")}) == []
    removed = _step_cache.evict_rootfs_steps(str(tmp_path), 10)
    assert (
        removed == [str(tmp_path / "k1.tar.zst"), str(tmp_path / "k2.layer.tar.zst")]
        and os.listdir(tmp_path) == []
    )


def deepen(directory, levels: int) -> None:
    """Make *levels* nested directories ``d`` below the deepest ``d`` of *directory* (through file descriptors: the
    path may grow longer than the system takes)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        while True:
            try:
                child = os.open("d", os.O_RDONLY, dir_fd=fd)
            except FileNotFoundError:
                break
            os.close(fd)
            fd = child
        for _level in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_a_tree_deeper_than_pythons_recursion_or_the_systems_paths_is_read_or_kept_whole(tmp_path):
    work = tmp_path / "work"
    root = work / "root"
    (root / "deep").mkdir(parents=True)
    (work / _qemu_disk.TEMPORARY_MARKER).write_text("bake\n")
    # 1,500 levels: more than Python's recursion limit, short enough for the system's paths
    deepen(root / "deep", 1500)
    assert len(_step_cache.tree_snapshot(str(root / "deep"))) == 1501
    # 1,000 more: its paths are longer than the system takes (tar still archives such a tree)
    deepen(root / "deep", 1000)
    with pytest.raises(OSError):
        _step_cache.tree_snapshot(str(root))
    _qemu_disk.write_tree_snapshot(str(work), str(root), {"key": "k1", "position": 1, "sha256": "x"})
    assert _qemu_disk.read_tree_snapshot(str(work)) == {"top": None, "paths": {}}, (
        "the next step is kept whole"
    )

    # a layer that removes it goes as deep as it does (shutil.rmtree recurses), and so does removing the work
    # directory
    (tmp_path / "nothing").mkdir()
    (tmp_path / "members").write_bytes(b".\0")
    layer = tmp_path / "layer.tar.zst"
    subprocess.run(
        _step_cache.archive_command("tar", str(tmp_path / "nothing"), str(layer), str(tmp_path / "members")),
        check=True,
    )
    _qemu_disk.apply_layer(str(root), str(layer), {"deleted": ["./deep"], "directories": ["."]})
    assert os.listdir(root) == []
    (root / "deep").mkdir()
    deepen(root / "deep", 2500)
    assert _qemu_disk.remove_workdir(str(work)) and not work.exists()


@pytest.mark.parametrize("fails", [False, True], ids=["made", "failed"])
def test_a_disk_build_removes_its_work_directory_however_deep_the_tree_in_it(tmp_path, monkeypatch, fails):
    """A disk reassembled from an image's tree has that tree in the build's ``.bakery-qemu-*`` directory: it goes
    when the build ends, made or failed, even deeper than Python's recursion (shutil.rmtree would leave it)."""
    out = tmp_path / "out"

    def from_image_tree(opts, fp, work, details):
        (tmp_path / "work").symlink_to(work)
        os.mkdir(os.path.join(work, "tree"))
        deepen(os.path.join(work, "tree"), 1500)
        if fails:
            raise _qemu_disk.BakeryError("the disk could not be made")
        source = os.path.join(work, "disk.raw")
        with open(source, "wb") as handle:
            handle.truncate(1 << 20)
        return source, "raw"

    monkeypatch.setattr(_qemu_disk, "check_tools", lambda **kwargs: None)
    monkeypatch.setattr(_qemu_disk, "_disk_from_image_tree", from_image_tree)
    opts = _qemu_disk.DiskOptions(
        outputs=[_qemu_disk.Output(path=str(out / "disk.raw"), format="raw")],
        disk_size=1 << 20,
        image=str(tmp_path / "image.qcow2"),
        reassemble=True,
    )
    if fails:
        with pytest.raises(_qemu_disk.BakeryError, match="could not be made"):
            _qemu_disk.build(opts, "f" * 64, {})
    else:
        assert _qemu_disk.build(opts, "f" * 64, {})["path"] == str(out / "disk.raw")
    assert (tmp_path / "work").is_symlink(), "the build made its work directory"
    assert not (tmp_path / "work").exists(), "the work directory is left"
    assert sorted(os.listdir(out)) == ([] if fails else ["disk.raw", "disk.raw.bakery.json"])
