"""A disk's root file system copied into a directory with debugfs (no mount): a tree with every kind of thing a
root file system holds goes into an ext4 file system (mkfs.ext4 -d, at an offset in a raw disk) and comes out the
same. Runs as root (owners, device nodes, capabilities), as the bake does."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import subprocess

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _disk_tree, _qemu_disk, _reproducible
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

MIB = 1024 * 1024
OFFSET = 2 * MIB
UUID = "0c0ffee0-1234-4abc-8def-0123456789ab"
# file capability cap_net_raw+ep (VFS_CAP_REVISION_2), as setcap writes it on /usr/bin/ping
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as setxattr takes it (version 2; tag, permissions, id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


# user::rwx user:1000:rwx group::r-x mask::rwx other::r-x (ids of the owner entries: undefined)
ACCESS_ACL = acl(
    (1, 7, 0xFFFFFFFF), (2, 7, 1000), (4, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)
)
# default: group:50:r-x added
DEFAULT_ACL = acl(
    (1, 7, 0xFFFFFFFF), (4, 5, 0xFFFFFFFF), (8, 5, 50), (0x10, 5, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)
)


def make_tree(root) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "dev").mkdir()
    (root / "srv/shared").mkdir(parents=True)
    (root / "home/user").mkdir(parents=True)
    (root / "usr/bin/perl").write_bytes(b"#!perl\n" * 100)
    os.link(root / "usr/bin/perl", root / "usr/bin/perl5.36.0")
    ping = root / "usr/bin/ping"
    ping.write_bytes(os.urandom(5000))
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAPABILITY)
    su = root / "usr/bin/su"
    su.write_bytes(b"su")
    os.chmod(su, 0o4755)
    wall = root / "usr/bin/wall"
    wall.write_bytes(b"wall")
    os.chown(wall, 0, 5)
    os.chmod(wall, 0o2755)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "etc/fstab").write_text("UUID=%s / ext4 rw 0 1\n" % UUID.upper())
    (root / 'etc/with space "quoted"').write_text("odd name\n")
    os.setxattr(root / "etc/fstab", "user.origin", b"bakery\x00\xff")
    os.symlink("../usr/bin/perl", root / "etc/perl-link")
    os.symlink("/" + "x" * 200, root / "etc/long-link")  # not a fast link: its target is in a block
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.chown(root / "dev/sda", 0, 6)
    os.mkfifo(root / "dev/initctl", 0o600)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "dev/log"))
    listener.close()
    os.chmod(root / "dev/log", 0o666)
    (root / "home/user/.profile").write_text("# profile\n")
    os.chown(root / "home/user/.profile", 1000, 1000)
    os.chown(root / "home/user", 1000, 1000)
    os.chmod(root / "home/user", 0o700)
    os.lchown(root / "etc/perl-link", 1000, 1000)
    os.setxattr(root / "srv/shared", "system.posix_acl_access", ACCESS_ACL)
    os.setxattr(root / "srv/shared", "system.posix_acl_default", DEFAULT_ACL)
    os.chmod(root / "srv/shared", 0o775)
    # times from deep to shallow, as they would be after a bake: a directory's changes come before its own time
    when = 1_100_000_000
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            when += 1
            os.utime(os.path.join(directory, name), (when + 500, when), follow_symlinks=False)


def describe(root) -> dict[str, tuple]:
    """Everything copy_tree keeps of every name below *root* (the root itself and lost+found left out)."""
    found = {}
    inodes: dict[int, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative == "lost+found":
                continue
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            attributes = {}
            if not stat.S_ISLNK(st.st_mode):
                attributes = {key: os.getxattr(path, key) for key in sorted(os.listxattr(path))}
            # hard links: the first name of the inode
            linked = inodes.setdefault(st.st_ino, relative) if not stat.S_ISDIR(st.st_mode) else relative
            found[relative] = (
                stat.S_IFMT(st.st_mode),
                oct(stat.S_IMODE(st.st_mode)),
                st.st_uid,
                st.st_gid,
                int(st.st_mtime),
                st.st_rdev,
                content,
                attributes,
                linked,
            )
    return found


@pytest.fixture
def disk(tmp_path):
    """A raw disk whose ext4 file system, 2 MiB into it, is made from make_tree's tree; and that tree."""
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(40 * MIB)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-U", UUID, "-E", "offset=%d" % OFFSET, "-d", str(tree), str(raw), "32M"],
        check=True,
        capture_output=True,
    )
    return raw, tree


def test_the_copied_tree_is_the_tree_the_file_system_was_made_from(disk, tmp_path):
    raw, tree = disk
    out = tmp_path / "out"
    out.mkdir()
    copied = _disk_tree.copy_tree(str(raw), OFFSET, str(out))
    assert describe(out) == describe(tree)
    assert (out / "lost+found").is_dir()
    # what rdump alone would not have kept
    assert copied.hard_links == 1 and copied.special == 4
    assert copied.attributes == {
        "/etc/fstab": ["user.origin"],
        "/srv/shared": ["system.posix_acl_access", "system.posix_acl_default"],
        "/usr/bin/ping": ["security.capability"],
    }
    assert os.getxattr(out / "usr/bin/ping", "security.capability") == CAPABILITY
    assert os.lstat(out / "usr/bin/su").st_mode & stat.S_ISUID
    assert copied.summary() == {
        "entries": len(describe(tree)) + 1,
        "hard_links": 1,
        "special_files": 4,
        "extended_attributes": 4,
    }


def test_a_copied_tree_makes_the_same_file_system_again(disk, tmp_path):
    """Made with mke2fs -d from the copy, as a disk's root file system is made (its offset, fake time, clamped
    times and identifiers), the file system is the bytes made so from the tree itself: nothing was lost or
    changed on the way."""
    raw, tree = disk
    out = tmp_path / "out"
    out.mkdir()
    _disk_tree.copy_tree(str(raw), OFFSET, str(out))
    (out / "lost+found").rmdir()  # the one mke2fs made; it makes its own again
    epoch = 1_300_000_000
    made = []
    for source in (tree, out):
        # the root directory is the new file system's own; the times clamped as a disk's are (reading the tree
        # to make the first file system moved its access times)
        os.chmod(source, 0o755)
        _reproducible.clamp_times(str(source), epoch)
        image = tmp_path / ("%s.img" % source.name)
        with open(image, "wb") as handle:
            handle.truncate(_qemu_disk.ROOT_START + 32 * MIB)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", UUID, "-E"]
            + ["offset=%d,root_owner=0:0,hash_seed=%s" % (_qemu_disk.ROOT_START, UUID), "-d", str(source)]
            + [str(image), str(32 * MIB // 4096)],
            check=True,
            capture_output=True,
            env=dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch)),
        )
        _qemu_disk.set_change_times(str(image), epoch, 60)
        with open(image, "rb") as handle:
            made.append(hashlib.sha256(handle.read()).hexdigest())
    assert made[0] == made[1]


def test_the_root_uuid_is_read_from_the_superblock(disk):
    raw, _tree = disk
    assert _disk_tree.root_uuid(str(raw), OFFSET) == UUID
    with pytest.raises(_disk_tree.TreeError, match="no file system superblock"):
        _disk_tree.root_uuid(str(raw), 40 * MIB)


def test_only_an_empty_directory_takes_the_tree(disk, tmp_path):
    raw, _tree = disk
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    with pytest.raises(_disk_tree.TreeError, match="must be an empty directory"):
        _disk_tree.copy_tree(str(raw), OFFSET, str(full))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(_disk_tree.TreeError, match="debugfs on .* failed"):
        _disk_tree.copy_tree(str(raw), OFFSET + MIB, str(empty))


def test_listings_and_attribute_names_are_parsed():
    lines = [
        "/2/040755/0/0/.//",
        "/2/040755/0/0/..//",
        "/12/100644/0/0/a name with / slash?/17/",
        "/13/120777/1000/1000/link/6/",
        "/0/000000/0/0/deleted/0/",
    ]
    entries = _disk_tree.parse_listing(lines[:2] + lines[3:], "etc")
    assert entries == [_disk_tree.Entry("etc/link", 13, 0o120777, 1000, 1000)]
    with pytest.raises(_disk_tree.TreeError, match="line break"):
        _disk_tree.parse_listing(["a name", "/5/100644/0/0/x/1/"], "")
    assert _disk_tree.parse_attribute_names(
        [
            "Extended attributes:",
            "  security.capability (20) = 01 00 00 02",
            "  system.data (0)",
            '  user.note (5) = "hello"',
        ]
    ) == ["security.capability", "user.note"]


def test_the_root_file_system_is_retargeted_where_the_tree_names_it(tmp_path):
    old, new = "0c0ffee0-1234-4abc-8def-0123456789ab", "11111111-2222-4333-8444-555555555555"
    (tmp_path / "etc").mkdir()
    (tmp_path / "boot/grub").mkdir(parents=True)
    fstab = tmp_path / "etc/fstab"
    fstab.write_text("UUID=%s / ext4 rw 0 1\nUUID=%s /srv ext4 rw 0 2\n" % (old.upper(), "ab" * 16))
    os.chmod(fstab, 0o600)
    os.utime(fstab, (1000, 2000))
    (tmp_path / "boot/grub/grub.cfg").symlink_to("/etc/fstab")  # a link: never written through
    files = {"etc/fstab": "", "boot/grub/grub.cfg": "", "etc/missing": ""}
    assert _disk_tree.retarget(str(tmp_path), old, new, files) == ["etc/fstab"]
    st = os.stat(fstab)
    assert (stat.S_IMODE(st.st_mode), st.st_atime, st.st_mtime) == (0o600, 1000, 2000)
    assert fstab.read_text() == "UUID=%s / ext4 rw 0 1\nUUID=%s /srv ext4 rw 0 2\n" % (new, "ab" * 16)
    assert _disk_tree.retarget(str(tmp_path), new, new, files) == []


def test_reassemble_needs_an_image_it_can_make_again(tmp_path):
    outputs = [{"path": str(tmp_path / "d.qcow2")}]
    image = str(tmp_path / "builder.qcow2")
    assert _qemu_disk.parse_options({"outputs": outputs, "image": image, "reassemble": True}).reassemble
    with pytest.raises(BakeryError, match="reassemble makes a disk again from image's tree"):
        _qemu_disk.parse_options({"outputs": outputs, "rootfs": image, "reassemble": True})
    with pytest.raises(BakeryError, match="give image, not backing"):
        _qemu_disk.parse_options({"outputs": outputs, "image": image, "reassemble": True, "backing": True})
    with pytest.raises(BakeryError, match="too small"):
        _qemu_disk.parse_options({"outputs": outputs, "image": image, "reassemble": True, "disk_size": "64M"})
