# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files of a disk image's root file system, read without a mount and without a loop device.

A disk image bakery did not make (a qemu target's ``base_image`` copied with ``provision: none``) is read with
the tools a bake needs anyway: ``qemu-img convert`` gives a raw copy of a disk in another format (qcow2, vmdk,
...; a raw disk is read where it is), the GPT (or an MBR, or no partition table at all) says where its
partitions start, and ``debugfs`` (e2fsprogs) dumps files out of the ext2/3/4 file system at the root
partition's offset (its ``file?offset=N`` syntax). Nothing is mounted and the disk is opened read-only.

The root partition is the first partition whose type is a root partition of the Discoverable Partitions
Specification (any architecture), then the first Linux file system data partition, then the first MBR Linux
partition, then the whole disk; of those, the first that holds an ext2/3/4 file system (its superblock's magic).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# GPT partition type GUIDs: the Discoverable Partitions Specification's root partitions, then Linux data
ROOT_TYPES = {
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "root (x86-64)",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "root (arm64)",
    "44479540-F297-41B2-9AF7-D131D5F0458A": "root (x86)",
    "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3": "root (arm)",
    "72EC70A6-CF74-40E6-BD49-4BDA08E8F224": "root (riscv64)",
    "993D8D3D-F80E-4225-855A-9DAF8ED7EA97": "root (ppc64le)",
    "5EEAD9A9-FE09-4A1E-A1D7-520D00531306": "root (s390x)",
}
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
_MBR_LINUX = 0x83
_GPT_SIGNATURE = b"EFI PART"
# an ext2/3/4 superblock starts 1024 bytes into the file system; its magic is 56 bytes into it
_EXT_MAGIC_AT = 1024 + 56
_EXT_MAGIC = 0xEF53
_SECTOR_SIZES = (512, 4096)


class DiskError(BakeryError):
    """A disk whose root file system cannot be read: no ext2/3/4 file system, a tool that failed."""


@dataclass(frozen=True)
class Partition:
    """A partition of a disk: where it starts and how long it is, in bytes, and its type (GPT GUID or MBR id)."""

    number: int
    start: int
    size: int
    type: str

    def describe(self) -> str:
        kind = ROOT_TYPES.get(self.type) or ("linux data" if self.type == LINUX_DATA else self.type)
        return "partition %d (%s) at %d" % (self.number, kind, self.start)


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def gpt_partitions(handle) -> list[Partition] | None:
    """The partitions of the GPT of an open raw disk (the primary header, 512- or 4096-byte sectors); None
    without a GPT."""
    for sector in _SECTOR_SIZES:
        handle.seek(sector)
        header = handle.read(92)
        if len(header) < 92 or header[:8] != _GPT_SIGNATURE:
            continue
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if not 128 <= entry_size <= 4096 or count > 16384:
            continue
        handle.seek(entries_lba * sector)
        table = handle.read(count * entry_size)
        found = []
        for index in range(len(table) // entry_size):
            entry = table[index * entry_size : (index + 1) * entry_size]
            kind = _guid(entry[:16])
            first, last = struct.unpack_from("<QQ", entry, 32)
            if kind == "00000000-0000-0000-0000-000000000000" or last < first:
                continue
            found.append(Partition(index + 1, first * sector, (last - first + 1) * sector, kind))
        return found
    return None


def mbr_partitions(handle) -> list[Partition]:
    """The primary partitions of an MBR (none without its boot signature; a GPT's protective MBR has one of type
    0xee, never a Linux one)."""
    handle.seek(0)
    sector = handle.read(512)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return []
    found = []
    for index in range(4):
        entry = sector[446 + 16 * index : 446 + 16 * (index + 1)]
        kind = entry[4]
        start, count = struct.unpack_from("<II", entry, 8)
        if kind and count:
            found.append(Partition(index + 1, start * 512, count * 512, "0x%02x" % kind))
    return found


def is_ext(handle, offset: int) -> bool:
    """Whether an ext2/3/4 file system starts at *offset* of the open disk."""
    handle.seek(offset + _EXT_MAGIC_AT)
    magic = handle.read(2)
    return len(magic) == 2 and struct.unpack("<H", magic)[0] == _EXT_MAGIC


def root_offset(raw: str) -> int:
    """Where the root file system of the raw disk *raw* starts (module docstring); DiskError naming what the disk
    has if none is ext2/3/4."""
    with open(raw, "rb") as handle:
        gpt = gpt_partitions(handle)
        parts = gpt if gpt is not None else mbr_partitions(handle)
        candidates = [p for p in parts if p.type in ROOT_TYPES]
        candidates += [p for p in parts if p.type == LINUX_DATA]
        candidates += [p for p in parts if p.type == "0x%02x" % _MBR_LINUX]
        offsets = [p.start for p in candidates] + ([0] if not parts else [])
        for offset in offsets:
            if is_ext(handle, offset):
                return offset
    layout = (
        "its partitions: %s" % "; ".join(p.describe() for p in parts)
        if parts
        else "it has no partition table"
    )
    raise DiskError(
        "found no ext2/3/4 root file system on the disk (%s): bakery reads a disk's packages from an ext4 root "
        "partition (GPT root or Linux data type, MBR type 0x83, or a file system on the whole disk)" % layout
    )


def image_format(disk: str, timeout: int = 120) -> str:
    """The format of a disk image as qemu-img detects it (V(raw) for a file it does not recognize)."""
    out = _run(["qemu-img", "info", "--output=json", disk], "qemu-img info", timeout)
    return str(json.loads(out.decode("utf-8")).get("format") or "raw")


def _run(argv: list[str], what: str, timeout: int) -> bytes:
    tool = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin")
    if tool is None:
        raise DiskError("%s is not installed (it reads a disk's files without a mount)" % argv[0])
    try:
        done = subprocess.run([tool] + argv[1:], capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DiskError("%s took longer than %d s" % (what, timeout)) from None
    if done.returncode != 0:
        raise DiskError(
            "%s failed (exit %d): %s"
            % (what, done.returncode, done.stderr.decode("utf-8", "replace").strip())
        )
    return done.stdout


class DiskFiles:
    """The files of a disk image's root file system, read with debugfs. Use as a context manager: a disk in
    another format than raw is converted into a temporary raw copy beside the disk, removed on exit."""

    def __init__(self, disk: str, timeout: int = 600) -> None:
        self.disk = disk
        self.timeout = timeout
        self.raw = disk
        self.offset = 0
        self._scratch: str | None = None

    def __enter__(self) -> DiskFiles:
        if not os.path.isfile(self.disk):
            raise DiskError("disk %s is not a file" % self.disk)
        try:
            if image_format(self.disk, self.timeout) != "raw":
                self._scratch = tempfile.mkdtemp(
                    prefix=".bakery-disk-", dir=os.path.dirname(self.disk) or "."
                )
                self.raw = os.path.join(self._scratch, "disk.raw")
                _run(
                    ["qemu-img", "convert", "-O", "raw", self.disk, self.raw],
                    "qemu-img convert of %s" % self.disk,
                    self.timeout,
                )
            self.offset = root_offset(self.raw)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def read_many(self, paths: Iterable[str]) -> dict[str, bytes]:
        """The regular files of *paths* (absolute in the disk's root) that exist, by path; one debugfs run.
        Directories on a path that are symbolic links are followed inside the file system."""
        wanted = sorted({"/" + path.strip("/") for path in paths})
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        with tempfile.TemporaryDirectory(prefix="bakery-debugfs-") as out:
            script = os.path.join(out, "commands")
            with open(script, "w", encoding="utf-8") as handle:
                for index, path in enumerate(wanted):
                    if '"' in path or "\n" in path:
                        continue  # no such name in a package database
                    handle.write('dump "%s" "%s"\n' % (path, os.path.join(out, str(index))))
            _run(
                ["debugfs", "-f", script, "%s?offset=%d" % (self.raw, self.offset)],
                "debugfs on %s" % self.disk,
                self.timeout,
            )
            for index, path in enumerate(wanted):
                dumped = os.path.join(out, str(index))
                if os.path.isfile(dumped):
                    with open(dumped, "rb") as handle:
                        found[path] = handle.read()
        return found
