# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File outputs: atomic writes, ``.bakery.json`` sidecars and a lock for shared outputs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

SIDECAR_SUFFIX = ".bakery.json"


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
    """Exclusive lock on ``path + '.lock'``: parallel targets that need one output build it once."""
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)) or ".", exist_ok=True)
    with open(lock_path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
