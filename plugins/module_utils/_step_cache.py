# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-step cache of builders: its settings, why a builder starts where it does, which entries go when it
is full, and its entries for root-filesystem builders (qemu targets with ``provision: chroot``).

A chroot builder's state after provisioner *i* is its tree, kept as a zstd tarball named by the chain key
(``<cache_dir>/rootfs-steps/<key>.tar.zst``) with the archive conventions of the base rootfs (numeric owners,
xattrs, ACLs and capabilities, hard links, device nodes as they are; members ``./...``). It is written under a
temporary name, synced, then sealed: ``<key>.tar.zst.seal`` records its key, size and sha256 (synced and renamed
into place) before the tarball is renamed onto its name. An entry whose seal is missing, unreadable or does not
match the file (a killed bake's) is never used; prune removes it. The seal's modification time is the entry's
last use (least recently used entries go first when the cache is beyond its size).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._files import (
    PARTIAL,
    PARTIAL_QUIET_SECONDS,
    atomic_output,
    open_paths,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import digest_file

# where a bake's cache directory keeps the root-filesystem builders' steps
ROOTFS_STEPS = "rootfs-steps"
ENTRY_SUFFIX = ".tar.zst"
SEAL_SUFFIX = ".seal"
# how the tree is archived: as the base rootfs is (mmdebstrap's tar), plus what a provisioner may set (ACLs)
TAR_OPTIONS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sort=name"]
ZSTD = "zstd -T0 -3 -q"


def step_cache_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The per-step cache settings of the plan (``step_cache``): used or not, its size limit, its directory."""
    cache = params.get("step_cache") or {}
    return {
        "enabled": bool(cache.get("enabled")) and not params.get("force"),
        "max_size": int(cache.get("max_size") or 0),
        "dir": cache.get("dir") or None,
        # the provisioners before the first one that acts outside the builder (a download, a local command)
        "max_resume": int(
            cache["max_resume"]
            if cache.get("max_resume") is not None
            else len(params.get("step_keys") or [1]) - 1
        ),
    }


def resume_reason(resume: int, steps: int, enabled: bool, forced: bool, max_resume: int | None = None) -> str:
    """Why the builder starts where it does, for the summary and --check."""
    if forced:
        return "forced: the step cache is bypassed"
    if not enabled:
        return "the step cache is off (bake.step_cache: false)"
    if steps == 0:
        return "no provisioners"
    if resume == 0 and max_resume == 0:
        return "provisioner 1 acts outside the builder and runs in every bake"
    if resume == 0:
        return "no cached state after provisioner 1 (changed, or it did not complete before)"
    if resume == steps:
        return "every provisioner's state is cached"
    if resume == max_resume:
        return (
            "provisioners 1-%d are cached; provisioner %d acts outside the builder and runs in every bake"
            % (
                resume,
                resume + 1,
            )
        )
    return (
        "provisioners 1-%d are cached; provisioner %d has no cached state (changed, or it did not complete before)"
        % (
            resume,
            resume + 1,
        )
    )


def step_states(resume: int, steps: int, enabled: bool) -> list[str]:
    """Each provisioner's state in the cache as the builder starts: ``hit`` (taken from the cache, the provisioner
    does not run), ``miss`` (it runs, and its state is kept), ``bypassed`` (the cache is off or forced)."""
    if not enabled:
        return ["bypassed"] * steps
    return ["hit"] * resume + ["miss"] * (steps - resume)


def eviction_order(entries: list[dict[str, Any]], max_size: int, keep: Iterable[str] = ()) -> list[str]:
    """Which entries go so that the rest fit in *max_size* bytes: least recently used first, and of those
    used together the deepest first (its parent may be another step image); never those in *keep*."""
    kept = set(keep)
    total = sum(entry["size"] for entry in entries)
    out = []
    for entry in sorted(entries, key=lambda entry: (entry["used"], -entry["position"])):
        if total <= max_size:
            break
        if entry["id"] in kept:
            continue
        out.append(entry["id"])
        total -= entry["size"]
    return out


# ---------------------------------------------------------------- root-filesystem builders' entries


def rootfs_steps_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, ROOTFS_STEPS)


def entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, key + ENTRY_SUFFIX)


def seal_path(path: str) -> str:
    return path + SEAL_SUFFIX


def read_seal(path: str, suffix: str = ENTRY_SUFFIX) -> dict[str, Any] | None:
    """The seal of the entry *path* when it is valid: readable, for this key, and recording the file's size (the
    sha256 is checked where the entry is used, :func:`verified`). None otherwise, or when there is no file."""
    try:
        with open(seal_path(path), encoding="utf-8") as handle:
            seal = json.load(handle)
        size = os.stat(path).st_size
    except (OSError, ValueError):
        return None
    if not isinstance(seal, dict) or not os.path.isfile(path):
        return None
    key = os.path.basename(path)[: -len(suffix)]
    if seal.get("key") != key or seal.get("size") != size or not isinstance(seal.get("sha256"), str):
        return None
    return seal


def verified(path: str, seal: Mapping[str, Any]) -> bool:
    """Whether the entry's content is what its seal records (sha256)."""
    try:
        return digest_file(path) == seal.get("sha256")
    except OSError:
        return False


def touch(path: str, now: float | None = None) -> None:
    """Record a use of the entry (its seal's modification time)."""
    try:
        os.utime(seal_path(path), None if now is None else (now, now))
    except OSError:
        pass


def find_rootfs_step(directory: str | None, keys: list[str]) -> tuple[int, str | None, dict[str, Any] | None]:
    """The deepest step (1..len(keys)-1) whose key has a sealed entry with the content its seal records: its
    position, path and seal; (0, None, None) if none."""
    if not directory:
        return 0, None, None
    for position in range(len(keys) - 1, 0, -1):
        path = entry_path(directory, keys[position])
        seal = read_seal(path)
        if seal is not None and verified(path, seal):
            return position, path, seal
    return 0, None, None


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_seal(path: str, seal: Mapping[str, Any]) -> None:
    """Write the entry's seal: a temporary file, synced, renamed onto ``<path>.seal``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=".%s." % os.path.basename(seal_path(path)), suffix=".partial", dir=directory
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(seal), handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, seal_path(path))
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def archive_command(tar: str, root: str, target: str) -> list[str]:
    """The tar argv that archives the tree *root* into the zstd tarball *target*."""
    return [
        tar,
        "--create",
        "--file=%s" % target,
        "--use-compress-program=%s" % ZSTD,
        *TAR_OPTIONS,
        "-C",
        root,
        ".",
    ]


def seal_entry(
    path: str, tmp: str, key: str, position: int, target: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Sync the written entry *tmp* and seal it for *path* (the caller renames it onto *path* next), with what
    *extra* adds to the seal (a VM layer's parent)."""
    fsync_path(tmp)
    seal = {
        "key": key,
        "position": position,
        "target": target,
        "size": os.path.getsize(tmp),
        "sha256": digest_file(tmp),
        "created": round(time.time(), 3),
        **(extra or {}),
    }
    # a stale file of that name (an unsealed entry) must not pass for the new one between seal and rename
    if os.path.lexists(path):
        os.unlink(path)
    write_seal(path, seal)
    return seal


def save_rootfs_step(
    directory: str, key: str, position: int, target: str, write: Any
) -> tuple[str, dict[str, Any], bool]:
    """Keep an entry for *key*: *write(tmp)* archives the tree into the temporary file, which is synced, sealed
    and renamed onto ``<key>.tar.zst``. A valid entry of that key is kept as it is (and touched). Returns the
    entry's path, its seal and whether it was written."""
    os.makedirs(directory, exist_ok=True)
    path = entry_path(directory, key)
    existing = read_seal(path)
    if existing is not None:
        touch(path)
        return path, existing, False
    with atomic_output(path) as tmp:
        write(tmp)
        seal = seal_entry(path, tmp, key, position, target)
    fsync_path(directory)
    return path, seal, True


def rootfs_entries(directory: str | None, suffix: str = ENTRY_SUFFIX) -> list[dict[str, Any]]:
    """The sealed entries of *directory*: id (the path), key, position, size (the file's) and last use."""
    if not directory or not os.path.isdir(directory):
        return []
    entries = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(suffix) or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        seal = read_seal(path, suffix)
        if seal is None:
            continue
        try:
            used = os.stat(seal_path(path)).st_mtime
        except OSError:
            continue
        entries.append(
            {
                "id": path,
                "key": seal["key"],
                "position": int(seal.get("position") or 0),
                "size": int(seal["size"]),
                "used": used,
            }
        )
    return entries


def unsealed(directory: str | None, now: float | None = None, suffix: str = ENTRY_SUFFIX) -> list[str]:
    """What no bake will use in *directory*: tarballs without a valid seal, seals without their tarball, and the
    leftovers of interrupted writes that no process has open and that were quiet for a while."""
    if not directory or not os.path.isdir(directory):
        return []
    now = time.time() if now is None else now
    busy: set[str] | None = None
    found = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if PARTIAL.match(name):
            if busy is None:
                busy = open_paths()
            try:
                quiet = now - os.lstat(path).st_mtime >= PARTIAL_QUIET_SECONDS
            except OSError:
                continue
            if quiet and os.path.realpath(path) not in busy:
                found.append(path)
        elif name.endswith(suffix) and read_seal(path, suffix) is None:
            found.append(path)
        elif name.endswith(suffix + SEAL_SUFFIX) and read_seal(path[: -len(SEAL_SUFFIX)], suffix) is None:
            found.append(path)
    return found


def remove_entry(path: str) -> None:
    """Remove an entry: its seal first (it is no longer valid), then the tarball."""
    for name in (seal_path(path), path):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def evict_rootfs_steps(
    directory: str | None,
    max_size: int,
    keep: Iterable[str] = (),
    check_mode: bool = False,
    suffix: str = ENTRY_SUFFIX,
) -> list[str]:
    """Remove sealed entries beyond *max_size* bytes (least recently used first). Returns the paths removed."""
    removed = eviction_order(rootfs_entries(directory, suffix), max_size, keep)
    if not check_mode:
        for path in removed:
            remove_entry(path)
    return removed


def prune_rootfs_steps(
    directory: str | None, max_size: int, check_mode: bool = False, suffix: str = ENTRY_SUFFIX
) -> dict[str, Any]:
    """Remove what no bake will use (unsealed entries, stray seals, old partial writes), then the sealed entries
    beyond *max_size* (0: all of them)."""
    broken = unsealed(directory, suffix=suffix)
    if not check_mode:
        for path in broken:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    evicted = evict_rootfs_steps(directory, max_size, check_mode=check_mode, suffix=suffix)
    return {"unsealed": broken, "evicted": evicted}
