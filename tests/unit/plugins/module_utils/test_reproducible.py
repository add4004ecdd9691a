"""The epoch of a bake, what provisioning leaves that varies, and the disk pieces that make a rebuild identical."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_plan import BAKE, plan

from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk, _reproducible
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import digest_value
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

IDENTITY = "3f" * 32
SNAPSHOT = "http://snapshot.debian.org/archive/debian/20240102T030405Z/"


def test_the_epoch_is_the_definitions_then_the_environments_then_the_snapshots_then_the_bases():
    env = {"SOURCE_DATE_EPOCH": "1600000000"}
    assert _reproducible.source_date_epoch(1500000000, env, SNAPSHOT, IDENTITY) == _reproducible.Epoch(
        1500000000, "bake.source_date_epoch"
    )
    assert _reproducible.source_date_epoch(None, env, SNAPSHOT, IDENTITY) == _reproducible.Epoch(
        1600000000, "SOURCE_DATE_EPOCH"
    )
    # 2024-01-02T03:04:05Z
    assert _reproducible.source_date_epoch(None, {}, SNAPSHOT, IDENTITY) == _reproducible.Epoch(
        1704164645, "snapshot mirror"
    )
    derived = _reproducible.source_date_epoch(
        None, {"SOURCE_DATE_EPOCH": ""}, "http://deb.debian.org/debian", IDENTITY
    )
    assert derived.source == "base identity" and not derived.explicit
    assert _reproducible.source_date_epoch(1, env, None, IDENTITY).explicit
    assert _reproducible.source_date_epoch(None, env, None, IDENTITY).explicit


def test_the_derived_epoch_is_stable_per_base_differs_between_bases_and_is_never_in_the_future():
    epochs = {_reproducible.identity_epoch(("%02x" % n) * 32) for n in range(64)}
    assert len(epochs) == 64
    assert _reproducible.identity_epoch(IDENTITY) == _reproducible.identity_epoch(IDENTITY)
    assert all(978307200 <= epoch < 1609459200 for epoch in epochs)  # 2001 to 2021


@pytest.mark.parametrize("value", [-1, "soon", True, 4102444800, 1.5, "12a"])
def test_a_bad_epoch_is_refused_naming_where_it_came_from(value):
    with pytest.raises(BakeryError, match="bake.source_date_epoch"):
        _reproducible.source_date_epoch(value, {}, None, IDENTITY)
    with pytest.raises(BakeryError, match="SOURCE_DATE_EPOCH environment variable"):
        _reproducible.source_date_epoch(None, {"SOURCE_DATE_EPOCH": str(value)}, None, IDENTITY)


def test_only_a_moving_mirror_gets_a_warning():
    assert _reproducible.mirror_warning(SNAPSHOT) is None
    assert _reproducible.mirror_warning(None) is None
    warning = _reproducible.mirror_warning("http://deb.debian.org/debian")
    assert (
        "deb.debian.org" in warning
        and "not a snapshot mirror" in warning
        and "snapshot.debian.org" in warning
    )


def test_every_target_of_the_plan_has_the_bakes_epoch_an_input_only_when_the_user_chose_it():
    derived = plan()
    epochs = {target["source_date_epoch"] for target in derived["targets"]}
    assert len(epochs) == 1 and derived["reproducibility"]["source"] == "base identity"
    assert derived["reproducibility"]["warning"] and "deb.debian.org" in derived["reproducibility"]["mirror"]
    img = derived["targets"][0]
    assert "source_date_epoch" not in img["inputs"]
    # the same base, the same epoch
    assert plan()["targets"][0]["source_date_epoch"] == img["source_date_epoch"]
    chosen = plan(dict(BAKE, source_date_epoch=1700000000))
    assert {target["source_date_epoch"] for target in chosen["targets"]} == {1700000000}
    assert chosen["targets"][0]["inputs"]["source_date_epoch"] == digest_value(
        {"source_date_epoch": 1700000000}
    )
    assert chosen["targets"][0]["step_keys"][0] != img["step_keys"][0]
    # a target that is not provisioned keeps its inputs as they were (none: the module digests its source)
    assert chosen["targets"][1]["inputs"] == {}
    from_env = plan(environ={"SOURCE_DATE_EPOCH": "1700000001"})
    assert from_env["targets"][0]["inputs"]["source_date_epoch"] == digest_value(
        {"source_date_epoch": 1700000001}
    )
    snapshot = plan(dict(BAKE, base=dict(BAKE["base"], mirror=SNAPSHOT)))
    assert snapshot["reproducibility"] == {
        "source_date_epoch": 1704164645,
        "source": "snapshot mirror",
        "explicit": False,
        "mirror": SNAPSHOT.rstrip("/"),
        "warning": None,
    }
    with pytest.raises(BakeryError, match="bake.source_date_epoch"):
        plan(dict(BAKE, source_date_epoch="yesterday"))


def make(root, relative, content="x"):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


def test_what_varies_between_runs_goes_and_what_roles_made_stays(tmp_path):
    root = str(tmp_path / "root")
    for relative in (
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/dpkg.log",
        "var/lib/dpkg/status-old",
        "var/cache/ldconfig/aux-cache",
        "var/lib/systemd/random-seed",
        "var/log/journal/abc/system.journal",
        "tmp/scratch",
    ):
        make(root, relative)
    kept = [
        "var/lib/dpkg/status",
        "var/log/nginx/access.log",
        "etc/ld.so.cache",
        "var/tmp/kept",
        "etc/app.conf",
    ]
    for relative in kept:
        make(root, relative)
    # a link out of the tree is removed itself, never followed
    outside = make(str(tmp_path), "outside/dpkg.log")
    behind_link = make(str(tmp_path), "outside/config.dat-old")
    os.makedirs(os.path.join(root, "var/cache"), exist_ok=True)
    os.symlink(os.path.dirname(outside), os.path.join(root, "var/cache/debconf"))
    os.symlink(outside, os.path.join(root, "var/log/alternatives.log"))

    live = _reproducible.normalise_tree(root, live=True, check_mode=True)
    assert "tmp/scratch" not in live and "var/log/journal/abc" not in live and "var/log/dpkg.log" in live
    assert os.path.exists(os.path.join(root, "var/log/dpkg.log"))  # check mode removes nothing

    removed = _reproducible.normalise_tree(root)
    assert removed == sorted(
        [
            "tmp/scratch",
            "var/cache/ldconfig/aux-cache",
            "var/lib/dpkg/status-old",
            "var/lib/systemd/random-seed",
            "var/log/alternatives.log",
            "var/log/apt/history.log",
            "var/log/apt/term.log",
            "var/log/dpkg.log",
            "var/log/journal/abc",
        ]
    )
    assert all(os.path.exists(os.path.join(root, relative)) for relative in kept)
    assert os.path.exists(outside) and os.path.exists(behind_link)
    assert _reproducible.normalise_tree(root) == []
    # every entry names its reason
    assert all(reason for _pattern, reason in _reproducible.VARYING_PATHS)


def test_a_builder_vms_login_records_are_emptied_with_their_owner_and_mode(tmp_path):
    log = tmp_path / "var/log"
    log.mkdir(parents=True)
    (log / "wtmp").write_bytes(b"\x02\x00boot reboot 6.1.0" * 20)
    os.chown(log / "wtmp", 0, 43)
    os.chmod(log / "wtmp", 0o664)
    (log / "btmp").write_bytes(b"")  # empty, as the base has it: left as it is
    os.utime(log / "btmp", (1000, 1000))
    outside = tmp_path / "host-lastlog"
    outside.write_bytes(b"not the tree's")
    (log / "lastlog").symlink_to(outside)  # a link: never followed
    assert _reproducible.empty_login_records(str(tmp_path)) == ["var/log/wtmp"]
    st = os.lstat(log / "wtmp")
    assert (st.st_size, st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (0, 0, 43, "0o664")
    assert os.lstat(log / "btmp").st_mtime == 1000
    assert outside.read_bytes() == b"not the tree's"
    assert _reproducible.empty_login_records(str(tmp_path / "none")) == []


def test_times_are_clamped_to_the_epoch_links_themselves_not_their_targets(tmp_path):
    root = tmp_path / "root"
    old = make(str(root), "etc/old")
    new = make(str(root), "etc/new")
    os.utime(old, (100, 100))
    os.symlink("/etc/host-file", str(root / "etc/link"))
    epoch = 1000
    assert _reproducible.clamp_times(str(root), epoch) == 5  # root, etc, old, new, link
    assert os.lstat(old).st_mtime == 100 and os.lstat(old).st_atime == epoch
    assert os.lstat(new).st_mtime == epoch
    assert os.lstat(root / "etc/link").st_mtime == epoch
    assert os.lstat(root / "etc").st_mtime == epoch and os.lstat(root).st_mtime == epoch


DUMPE2FS = """\
Inode count:              24576
First inode:              11
Inodes per group:         8192
Group 0: (Blocks 0-32767) csum 0x1234 [ITABLE_ZEROED]
  Free inodes: 20-30, 35-8192
Group 1: (Blocks 32768-65535) csum 0x1234 [INODE_UNINIT]
  Free inodes: 8193-16384
Group 2: (Blocks 65536-98303) csum 0x1234
  Free inodes: 16384-16390, 16392-24576
"""


def test_the_inodes_whose_change_times_are_set_are_those_in_use_but_the_reserved_ones():
    assert _qemu_disk.used_inodes(DUMPE2FS) == [2, *range(11, 20), *range(31, 35), 16391]
    # the largest ext4 (2^32 inodes) takes no memory for its free ones
    huge = "Inode count:  4294967295\nFirst inode: 11\n  Free inodes: 14-4294967295\n"
    assert _qemu_disk.used_inodes(huge) == [2, 11, 12, 13]
    with pytest.raises(BakeryError, match="no inode count"):
        _qemu_disk.used_inodes("dumpe2fs: bad magic")


def test_the_fat_serial_is_written_in_the_boot_sector_and_its_backup(tmp_path):
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(16 * 512))
    _qemu_disk.set_fat_serial(str(disk), 1024, "A1B2C3D4")
    data = disk.read_bytes()
    for sector in (2, 8):
        assert data[sector * 512 + 0x43 : sector * 512 + 0x47] == bytes.fromhex("D4C3B2A1")
    assert data.count(b"\0") == len(data) - 8


def vmdk(descriptor: bytes) -> bytes:
    header = bytearray(512)
    header[:4] = b"KDMV"
    header[28:36] = (1).to_bytes(8, "little")  # the descriptor at sector 1
    header[36:44] = (2).to_bytes(8, "little")  # of 2 sectors
    return bytes(header) + descriptor + bytes(1024 - len(descriptor)) + b"grains"


def test_a_vmdk_descriptor_gets_a_derived_cid_and_its_final_name(tmp_path):
    made = []
    for cid, tmp in (("1fb4e03d", ".tmp-abc.vmdk"), ("ce97238", ".tmp-xyz-longer-name.vmdk")):
        path = tmp_path / tmp
        path.write_bytes(
            vmdk(
                b'# Disk DescriptorFile\nversion=1\nCID=%s\nparentCID=ffffffff\ncreateType="streamOptimized"\n\n'
                b'RW 409600 SPARSE "%s"\n' % (cid.encode(), tmp.encode())
            )
        )
        assert _qemu_disk.fix_vmdk_descriptor(str(path), "disk.vmdk", "ab" * 32)
        made.append(path.read_bytes())
    assert made[0] == made[1]
    text = made[0][512:1536].rstrip(b"\0").decode()
    assert 'RW 409600 SPARSE "disk.vmdk"' in text and "parentCID=ffffffff" in text
    (cid,) = [line for line in text.splitlines() if line.startswith("CID=")]
    assert len(cid) == 12 and cid != "CID=1fb4e03d"
    assert made[0].endswith(b"grains")
    assert _qemu_disk.fix_vmdk_descriptor(str(path), "other.vmdk", "cd" * 32)
    assert path.read_bytes() != made[0]
    qcow2 = tmp_path / "disk.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + bytes(600))
    assert not _qemu_disk.fix_vmdk_descriptor(str(qcow2), "disk.qcow2", "ab" * 32)


def python_uses_its_bytecode(lib, module: str) -> bool:
    """Whether Python itself takes *module*'s bytecode file under *lib* as valid (``-v`` names the file it loads
    code from, or says the bytecode is stale); it writes none."""
    proc = subprocess.run(
        [sys.executable, "-v", "-c", "import %s" % module],
        env=dict(os.environ, PYTHONPATH=str(lib), PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        check=True,
    )
    return (
        "code object from '%s'" % importlib.util.cache_from_source(str(lib / (module + ".py"))) in proc.stderr
    )


def test_bytecode_valid_for_its_source_stays_valid_when_the_source_time_is_clamped(tmp_path):
    lib = tmp_path / "root" / "usr" / "lib" / "python3"
    lib.mkdir(parents=True)
    for name in ("fresh", "stale", "hashed", "older"):
        (lib / ("%s.py" % name)).write_text("VALUE = %r\n" % name)
        os.utime(lib / ("%s.py" % name), (2_000_000_000, 2_000_000_000))
    timestamp = py_compile.PycInvalidationMode.TIMESTAMP
    for name in ("fresh", "stale"):
        py_compile.compile(str(lib / ("%s.py" % name)), invalidation_mode=timestamp, doraise=True)
    py_compile.compile(
        str(lib / "hashed.py"), invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH, doraise=True
    )
    # a source older than the epoch keeps its time, and its bytecode its header
    os.utime(lib / "older.py", (500, 500))
    py_compile.compile(str(lib / "older.py"), invalidation_mode=timestamp, doraise=True)
    # bytecode already stale (its source changed since) stays stale: it is not made to look valid
    (lib / "stale.py").write_text("VALUE = 'changed since'\n")
    os.utime(lib / "stale.py", (2_000_000_001, 2_000_000_001))
    cached = {name: Path(importlib.util.cache_from_source(str(lib / ("%s.py" % name)))) for name in
              ("fresh", "stale", "hashed", "older")}  # fmt: skip
    before = {name: path.read_bytes() for name, path in cached.items()}
    os.utime(cached["fresh"], (1_900_000_000, 1_900_000_000))
    assert python_uses_its_bytecode(lib, "fresh") and not python_uses_its_bytecode(lib, "stale")

    epoch = 1_000_000_000
    _reproducible.clamp_times(str(tmp_path / "root"), epoch)
    assert os.lstat(lib / "fresh.py").st_mtime == epoch
    # clamped as any other file (before Python reads it and its access time changes)
    assert os.lstat(cached["fresh"]).st_mtime == epoch and os.lstat(cached["fresh"]).st_atime == epoch
    assert python_uses_its_bytecode(lib, "fresh"), "the clamp left fresh's bytecode stale"
    assert cached["fresh"].read_bytes()[16:] == before["fresh"][16:]
    assert python_uses_its_bytecode(lib, "hashed") and python_uses_its_bytecode(lib, "older")
    assert not python_uses_its_bytecode(lib, "stale")
    for name in ("stale", "hashed", "older"):
        assert cached[name].read_bytes() == before[name], name
    # the same tree again: nothing more to do
    assert _reproducible.clamp_times(str(tmp_path / "root"), epoch) and cached["fresh"].read_bytes()[:16] == (
        before["fresh"][:8] + struct.pack("<II", epoch, len("VALUE = 'fresh'\n"))
    )
