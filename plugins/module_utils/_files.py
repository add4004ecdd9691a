# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File outputs: atomic writes, ``.bakery.json`` sidecars and a lock for shared outputs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

SIDECAR_SUFFIX = ".bakery.json"
SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sidecar_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


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
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".partial", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if not path.endswith(SIDECAR_SUFFIX) and os.path.lexists(sidecar_path(path)):
            os.unlink(sidecar_path(path))
        os.replace(tmp, path)
    finally:
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
    try:
        for path in paths:
            directory = os.path.dirname(os.path.abspath(path)) or "."
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=".%s." % os.path.basename(path), suffix=".partial", dir=directory
            )
            os.close(fd)
            tmps.append(tmp)
        yield tmps
        for path, tmp in zip(paths, tmps):
            os.chmod(tmp, mode)
            if os.path.lexists(sidecar_path(path)):
                os.unlink(sidecar_path(path))
            os.replace(tmp, path)
    finally:
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
