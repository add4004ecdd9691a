# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File outputs: atomic writes, ``.bakery.json`` sidecars, a lock for shared outputs, and sizes as users write them."""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    TEMPORARY_MARKER,
    Selector,
    act,
    record,
)

SIDECAR_SUFFIX = ".bakery.json"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(value: Any, what: str, example: str = "4G") -> int:
    """Bytes from ``4G``, ``4GiB``, ``512M``, ``1.5G`` or a number of bytes (binary units), positive."""
    wrong = "%s %r is not a size: give bytes or a number with K, M, G or T (e.g. %s)" % (what, value, example)
    if isinstance(value, bool) or value is None:
        raise BakeryError(wrong)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise BakeryError(wrong)
        size = int(float(match.group(1)) * (1024 ** "BKMGT".index(match.group(2).upper() or "B")))
    if size <= 0:
        raise BakeryError("%s must be positive (got %r)" % (what, value))
    return size


# what atomic_output names its temporary file: .<name>.<random>.partial
PARTIAL = re.compile(r"^\..+\.partial(\.[A-Za-z0-9]+)*$")
PARTIAL_QUIET_SECONDS = 10.0
SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sidecar_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


def openssh_public_key(private_key: str | bytes, comment: str = "") -> str:
    """The OpenSSH public key line (``type body [comment]``) of a private key: PEM (EC2 hands out RSA keys as
    PKCS#1 PEM) or OpenSSH (``-----BEGIN OPENSSH PRIVATE KEY-----``, EC2's ed25519 keys), unencrypted."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = private_key.encode("ascii") if isinstance(private_key, str) else private_key
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BakeryError("not an unencrypted PEM or OpenSSH private key: %s" % exc) from None
    line = public.decode("ascii")
    return "%s %s" % (line, comment) if comment else line


def read_sidecar(path: str) -> dict[str, Any] | None:
    """The sidecar of *path*, or None when the artifact or its sidecar is missing or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with open(sidecar_path(path), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def atomic_output(path: str, mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside *path*; rename it onto *path* only if the block succeeds.

    An old sidecar of *path* goes just before the rename: the caller's new sidecar, written last, is what
    marks the new file final (a run killed in between leaves a file that no bake takes as up to date).
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    # the descriptor stays open until the end: a janitor (open_paths) sees the file as being written, however
    # long the writer takes before its first byte (another bake's janitor may sweep the same directory)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".partial", dir=directory)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if not path.endswith(SIDECAR_SUFFIX) and os.path.lexists(sidecar_path(path)):
            os.unlink(sidecar_path(path))
        os.replace(tmp, path)
    finally:
        os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_outputs(paths: list[str], mode: int = 0o644) -> Iterator[list[str]]:
    """Temporary paths beside each of *paths*, renamed onto them only when the whole block succeeds, so
    that a failure in the last of several outputs leaves every old output as it was.

    Before a file is renamed into place its old sidecar goes: a run killed between the renames and the
    caller's new sidecars leaves outputs without a sidecar, which no bake takes as up to date.
    """
    tmps: list[str] = []
    fds: list[int] = []  # open until the end, as in atomic_output
    try:
        for path in paths:
            directory = os.path.dirname(os.path.abspath(path)) or "."
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=".%s." % os.path.basename(path), suffix=".partial", dir=directory
            )
            fds.append(fd)
            tmps.append(tmp)
        yield tmps
        for path, tmp in zip(paths, tmps):
            os.chmod(tmp, mode)
            if os.path.lexists(sidecar_path(path)):
                os.unlink(sidecar_path(path))
            os.replace(tmp, path)
    finally:
        for fd in fds:
            os.close(fd)
        for tmp in tmps:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def write_json_atomic(path: str, data: Any) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")


def write_sidecar(path: str, data: dict[str, Any]) -> None:
    write_json_atomic(sidecar_path(path), data)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Exclusive lock on ``path + '.lock'``: parallel targets that need one output build it once.

    The lock file goes when the lock is released (a failed build leaves nothing beside its output). A
    waiter that wakes up holding the lock of a file removed meanwhile opens the new one and waits again.
    """
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)) or ".", exist_ok=True)
    while True:
        handle = open(lock_path, "a", encoding="utf-8")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        handle.close()


# ext4's "top directory" hint (chattr +T): ioctls of linux/fs.h, written here since no library of the collection's
# dependencies sets an inode flag (it is two ioctl calls)
# (FS_IOC_GETFLAGS and FS_IOC_SETFLAGS: _IOR and _IOW of 'f' 1 and 2, sized as a long; the kernel reads and writes
# an int)
_LONG = struct.calcsize("l")
_FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1
_FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2
_FS_TOPDIR_FL = 0x00020000


def make_tree_directory(path: str, mode: int = 0o755) -> bool:
    """Make the directory *path*, which a whole tree (an unpacked root file system) is about to fill, where ext4 places
    it among block groups of its own; its parent must be a work directory of bakery's own (it gets ext4's top
    directory hint). Returns whether ext4 took the hint (other file systems place the tree as they always do).

    Why: ext4 without a journal skips every inode freed less than a minute (five, while its table is unwritten)
    ago, one by one, each time it allocates one in that group. A tree unpacked beside one removed just before (the
    work directory of the last bake, its builder's tree) lands among those inodes: on such a file system unpacking
    a 14,000-file step took 8-17 s of system time instead of 1.3-1.8 s. A child of a top directory is placed by
    ext4's Orlov allocator, from the hash of its name, in a group with the fewest directories: the directory is
    made under a name of its own, then renamed to *path* (the files below it follow it to its group)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    hinted = False
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = bytearray(_LONG)
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
            value = int.from_bytes(flags[:4], sys.byteorder)
            if not value & _FS_TOPDIR_FL:
                fcntl.ioctl(
                    fd,
                    _FS_IOC_SETFLAGS,
                    (value | _FS_TOPDIR_FL).to_bytes(4, sys.byteorder) + bytes(_LONG - 4),
                )
            hinted = True
        finally:
            os.close(fd)
    except OSError:
        pass  # not ext2/3/4 (ENOTTY, EOPNOTSUPP), or not allowed: the placement is the file system's own
    if not hinted:
        os.mkdir(path, mode)
        return False
    placed = tempfile.mkdtemp(prefix=".tree-", dir=parent)
    try:
        os.chmod(placed, mode)
        os.rename(placed, path)
    except OSError:
        os.rmdir(placed)
        raise
    return True


@contextlib.contextmanager
def unlinked_beside(path: str | None) -> Iterator[None]:
    """Remove the file *path* (None: nothing) in a thread while the body runs; it is gone, or failed to go, when
    the body ends. For a large file nothing reads any more: unlinking it frees its blocks, which takes the kernel
    a while (the default bake's 2 GiB raw disk: 0.3-0.5 s on ext4 with online discard) the body need not wait
    for. A failure is left to whoever removes the directory around it."""
    if path is None:
        yield
        return
    removal = threading.Thread(target=_unlink_quietly, args=(path,), name="unlink %s" % path)
    removal.start()
    try:
        yield
    finally:
        removal.join()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def check_tarball(path: str, what: str = "rootfs") -> None:
    """Fail on what is no tar archive, or a damaged or truncated one, before anything is made from it.

    Every member is read (a plain tar by its headers and size, a compressed one by decompressing it); a
    zstd tarball, which Python cannot read, is only checked for its magic number.
    """
    if not os.path.isfile(path):
        raise BakeryError("%s %s does not exist (or is not a file)" % (what, path))
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == _ZSTD_MAGIC:
        return
    size = os.path.getsize(path)
    compressed = magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zX"
    members = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                members += 1
                if not member.isfile():
                    continue
                if compressed:
                    extracted = tar.extractfile(member)
                    while extracted is not None and extracted.read(1 << 20):
                        pass
                elif member.offset_data + member.size > size:
                    raise EOFError("member %s is cut off" % member.name)
    except tarfile.ReadError as exc:
        if members:
            raise BakeryError("%s %s is a damaged tar archive: %s" % (what, path, _first_line(exc))) from None
        raise BakeryError(
            "%s %s is not a tar archive (plain, or compressed with gzip, bzip2, xz or zstd)" % (what, path)
        ) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BakeryError(
            "%s %s is a damaged or truncated tar archive: %s" % (what, path, _first_line(exc))
        ) from None
    if not members:
        raise BakeryError("%s %s is an empty tar archive" % (what, path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else "unexpected end of data"


def check_raw_disk(path: str, what: str = "disk image") -> None:
    """A raw disk image is whole sectors; a text file or a cut-off download is not."""
    size = os.path.getsize(path)
    if size == 0 or size % SECTOR:
        raise BakeryError(
            "%s %s is not a disk image: it is neither qcow2 nor a raw disk (%d bytes is not a whole number of "
            "512-byte sectors)" % (what, path, size)
        )


# ---------------------------------------------------------------- janitor: leftover partial files


def open_paths() -> set[str]:
    """Every file some process has open (what /proc/*/fd points at)."""
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                found.add(os.readlink(os.path.join(fd_dir, fd)))
            except OSError:
                continue
    return found


def partial_files(paths: Sequence[str], depth: int = 4) -> list[str]:
    """Leftovers of atomic writes in *paths*, up to *depth* levels down: ``.<name>.<random>.partial`` files and
    directories, and such names with an ending added (``.partial.tar``, the rootfs's mmdebstrap output).
    Marked work directories (whole temporary trees of their own) and symbolic links are not entered."""
    found: list[str] = []

    def walk(directory: str, level: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.is_symlink():
                continue
            if PARTIAL.match(entry.name) and (entry.is_file() or entry.is_dir()):
                found.append(entry.path)
            elif entry.is_dir() and level < depth:
                if not os.path.exists(os.path.join(entry.path, TEMPORARY_MARKER)):
                    walk(entry.path, level + 1)

    for root in paths:
        walk(os.path.abspath(root), 1)
    return list(dict.fromkeys(found))


def bake_started(bake_id: str | None) -> float | None:
    """When a bake started, from the time in a generated bake id (``20261127t101500-a1b2c3``)."""
    match = re.match(r"^(\d{8}t\d{6})-", bake_id or "")
    if not match:
        return None
    return float(calendar.timegm(time.strptime(match.group(1), "%Y%m%dt%H%M%S")))


def _last_change(path: str) -> float:
    latest = os.lstat(path).st_mtime
    if os.path.isdir(path):
        for current, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    latest = max(latest, os.lstat(os.path.join(current, name)).st_mtime)
                except OSError:
                    continue
    return latest


def sweep_partials(selector: Selector, check_mode: bool, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Leftovers of interrupted atomic writes. They record no bake id: in the directories of a bake they are
    that bake's, when they changed after it started (the time in its bake id; any time for an id of the
    user's own). One that a process has open, or that changed in the last 10 s, is being written: a run by
    bake id (just after killing that bake, say) waits until such a file has been quiet for 10 s and looks
    again; a run by age leaves it."""
    candidates = partial_files(paths)
    if not candidates:
        return []
    started = bake_started(selector.bake_id)

    def eligible(path: str, busy: set[str]) -> float | None:
        try:
            mtime = _last_change(path)
        except OSError:
            return None
        inside = path.rstrip("/") + "/"
        if path in busy or any(open_path.startswith(inside) for open_path in busy):
            return None
        if started is not None and mtime < started:
            return None
        if mtime > time.time() + 1:
            return None  # a time in the future: someone is setting it, leave it
        return mtime

    busy = open_paths()
    chosen: dict[str, float] = {}
    for path in candidates:
        mtime = eligible(path, busy)
        if mtime is not None:
            chosen[path] = mtime
    young = [p for p, m in chosen.items() if time.time() - m < PARTIAL_QUIET_SECONDS]
    if young and selector.bake_id is not None and not check_mode:
        newest = max(chosen[p] for p in young)
        time.sleep(min(PARTIAL_QUIET_SECONDS, max(0.0, PARTIAL_QUIET_SECONDS - (time.time() - newest))) + 0.1)
        busy = open_paths()
        for path in young:
            mtime = eligible(path, busy)
            if mtime is None or mtime != chosen[path]:
                del chosen[path]
    entries = []
    for path, mtime in chosen.items():
        if time.time() - mtime < PARTIAL_QUIET_SECONDS and not (check_mode and selector.bake_id is not None):
            continue
        if not selector.matches(selector.bake_id, mtime):
            continue
        entry = record(
            "qemu",
            "partial file",
            path,
            name=os.path.basename(path),
            created=mtime,
            location=os.path.dirname(path),
        )
        entries.append(act(entry, check_mode, lambda path=path: _remove_partial(path)))
    return entries


def _remove_partial(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ---------------------------------------------------------------- janitor: builders' private keys

# where the ami and gce roles keep a builder's private key, below the bake's output directory:
# .bakery-tmp/<bake id>-<target>.key (and .key.known_hosts), .bakery-ssh/bakery-<bake id>-<target> (and
# .known_hosts); a generated bake id is recognised by its form, another one only when it is asked for
_GENERATED_ID = r"\d{8}t\d{6}-[0-9a-f]{6}"
KEY_DIRS = {
    ".bakery-tmp": ("", re.compile(r"^(%s)-.+\.key(\.known_hosts)?$" % _GENERATED_ID)),
    ".bakery-ssh": ("bakery-", re.compile(r"^bakery-(%s)-.+$" % _GENERATED_ID)),
}


def key_file_bake_id(directory: str, name: str, wanted: str | None) -> str | None:
    prefix, pattern = KEY_DIRS[directory]
    if wanted is not None:
        safe = re.sub(r"[^a-z0-9-]", "-", wanted.lower()) if prefix else wanted
        return wanted if name.startswith("%s%s-" % (prefix, safe)) else None
    match = pattern.match(name)
    return match.group(1) if match else None


def sweep_key_files(selector: Selector, check_mode: bool, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Private keys (and known_hosts files) of builders whose bake was killed before its cleanup ran."""
    entries = []
    for root in paths:
        for directory in KEY_DIRS:
            where = os.path.join(os.path.abspath(root), directory)
            try:
                names = sorted(os.listdir(where))
            except OSError:
                continue
            for name in names:
                path = os.path.join(where, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                bake_id = key_file_bake_id(directory, name, selector.bake_id)
                mtime = os.stat(path).st_mtime
                if bake_id is None or not selector.matches(bake_id, mtime):
                    continue
                entry = record(
                    "qemu", "key file", path, name=name, bake_id=bake_id, created=mtime, location=where
                )
                entries.append(act(entry, check_mode, lambda path=path: os.unlink(path)))
    return entries
