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

An entry after provisioner *i* > 1 is a layer (``<key>.layer.tar.zst``) when the tree stood on the sealed entry
of step *i*-1 (the work directory's ``tree-snapshot.json`` says which, with the ``lstat`` of every path then): the
tarball holds only what the provisioner changed (a path whose ``lstat`` differs: its content, metadata, links or
type), with the directories above each changed or removed path (their times), and its seal lists what it removed
(``deleted``),
its parent's key and sha256 (``parent``, ``parent_sha256``) and its depth. The state after step *i* is the first
full entry below it, unpacked, with each layer above it applied in order: its deletions, then its tarball. A layer
is used only with its whole chain, each entry sealed and holding what its child's seal recorded; one over an
evicted or changed parent is never used, and prune removes it. A provisioner that writes one file keeps a layer of
a few KiB instead of the whole tree again (the default bake's tree: 2.3 s and 143 MB per step).
"""

from __future__ import annotations

import json
import os
import stat
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
# a layer's name (``<key>.layer.tar.zst``): a bakery that knows no layers finds no entry there, instead of taking
# the layer for a whole tree
LAYER_MARK = ".layer"
SEAL_SUFFIX = ".seal"
# how the tree is archived: as the base rootfs is (mmdebstrap's tar), plus what a provisioner may set (ACLs)
TAR_OPTIONS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sort=name"]
ZSTD = "zstd -T0 -3 -q"
# how many layers an entry may stand on: a deeper step is kept whole, so that resuming applies at most this many
LAYER_MAX_DEPTH = 8
# in a chroot work directory: which entry the tree stands on, and the lstat of each of its paths then
SNAPSHOT = "tree-snapshot.json"


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


def entry_path(directory: str, key: str, layer: bool = False) -> str:
    return os.path.join(directory, key + (LAYER_MARK if layer else "") + ENTRY_SUFFIX)


def find_entry(directory: str, key: str) -> tuple[str, dict[str, Any]] | None:
    """The sealed entry of *key* in *directory*, whole or a layer: its path and seal (its content unchecked)."""
    for layer in (False, True):
        path = entry_path(directory, key, layer)
        seal = read_seal(path)
        if seal is not None:
            return path, seal
    return None


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
    if suffix == ENTRY_SUFFIX and key.endswith(LAYER_MARK):
        key = key[: -len(LAYER_MARK)]
        if not isinstance(seal.get("parent"), str):
            return None
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
    """The deepest step (1..len(keys)-1) whose entry and the entries it stands on are sound
    (:func:`find_rootfs_chain`): its position, path and seal; (0, None, None) if none."""
    position, chain = find_rootfs_chain(directory, keys)
    if not chain:
        return 0, None, None
    return position, chain[-1][0], chain[-1][1]


def find_rootfs_chain(directory: str | None, keys: list[str]) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """The deepest step (1..len(keys)-1) whose entry is sound with every entry below it: each sealed for
    ``keys[i]`` at position *i* with the content its seal records, a layer's parent the entry of ``keys[i-1]``
    with the sha256 the layer's seal recorded, down to a whole entry. Its position and the chain's paths and seals,
    the whole entry first; (0, []) if none."""
    if not directory:
        return 0, []
    for position in range(len(keys) - 1, 0, -1):
        chain = _rootfs_chain(directory, keys, position)
        if chain:
            return position, chain
    return 0, []


def _rootfs_chain(directory: str, keys: list[str], position: int) -> list[tuple[str, dict[str, Any]]]:
    chain: list[tuple[str, dict[str, Any]]] = []
    parent_sha: str | None = None
    for at in range(position, 0, -1):
        found = find_entry(directory, keys[at])
        if found is None:
            return []
        path, seal = found
        if int(seal.get("position") or 0) != at:
            return []
        if parent_sha is not None and seal.get("sha256") != parent_sha:
            return []  # the entry below changed since its child was written over it
        if not verified(path, seal):
            return []
        chain.insert(0, (path, seal))
        if not seal.get("parent"):
            return chain
        parent_sha = seal.get("parent_sha256")
        if at == 1 or seal["parent"] != keys[at - 1] or not isinstance(parent_sha, str):
            return []
    return []


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


def archive_command(tar: str, root: str, target: str, members_file: str | None = None) -> list[str]:
    """The tar argv that archives the tree *root* into the zstd tarball *target*; with *members_file*, only the
    members it lists (NUL-separated, relative to *root*, in its order), none below them (a layer)."""
    options = (
        TAR_OPTIONS if members_file is None else [option for option in TAR_OPTIONS if option != "--sort=name"]
    )
    what = (
        ["."]
        if members_file is None
        else ["--no-recursion", "--null", "--verbatim-files-from", "--files-from=%s" % members_file]
    )
    return [
        tar,
        "--create",
        "--file=%s" % target,
        "--use-compress-program=%s" % ZSTD,
        *options,
        "-C",
        root,
        *what,
    ]


def extract_command(tar: str, tarball: str, root: str) -> list[str]:
    """The tar argv that unpacks an entry (or a base rootfs tarball) into *root*, as it was archived."""
    return [tar, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-xpf", tarball, "-C", root]


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
    directory: str, key: str, position: int, target: str, write: Any, layer: bool = False
) -> tuple[str, dict[str, Any], bool]:
    """Keep an entry for *key*: *write(tmp)* archives the tree into the temporary file (and returns what the seal
    records beyond key, position, size and sha256, or None), which is synced, sealed and renamed onto
    ``<key>.tar.zst`` (``<key>.layer.tar.zst`` with *layer*). A valid entry of that key is kept as it is (and
    touched). Returns the entry's path, its seal and whether it was written."""
    os.makedirs(directory, exist_ok=True)
    found = find_entry(directory, key)
    if found is not None:
        touch(found[0])
        return found[0], found[1], False
    path = entry_path(directory, key, layer)
    with atomic_output(path) as tmp:
        # what *write* returns goes into the seal (a layer's parent, depth and deletions)
        extra = write(tmp)
        seal = seal_entry(path, tmp, key, position, target, extra)
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


def broken_entries(directory: str | None, suffix: str = ENTRY_SUFFIX) -> list[str]:
    """Sealed entries over a parent (``parent`` in their seal) that has no valid seal or another content than
    recorded (``parent_sha256``): they are never used. Found over and over until none is left (an entry over a
    broken one is broken too)."""
    if not directory or not os.path.isdir(directory):
        return []
    entries = {entry["key"]: entry for entry in rootfs_entries(directory, suffix)}
    seals = {key: read_seal(entry["id"], suffix) or {} for key, entry in entries.items()}
    broken: list[str] = []
    changed = True
    while changed:
        changed = False
        for key, seal in seals.items():
            if entries[key]["id"] in broken or not seal.get("parent"):
                continue
            parent = seals.get(seal["parent"])
            if (
                parent is None
                or entries[seal["parent"]]["id"] in broken
                or parent.get("sha256") != seal.get("parent_sha256")
            ):
                broken.append(entries[key]["id"])
                changed = True
    return sorted(broken)


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
    """Remove sealed entries beyond *max_size* bytes (least recently used first; never those in *keep*, nor the
    entries a kept layer stands on), and the layers that stood on them. Returns the paths removed."""
    entries = rootfs_entries(directory, suffix)
    kept = set(keep)
    if suffix == ENTRY_SUFFIX and directory:
        # what a kept layer stands on is kept with it
        for path in list(kept):
            seal = read_seal(path, suffix)
            while seal and seal.get("parent"):
                found = find_entry(directory, seal["parent"])
                if found is None or found[0] in kept:
                    break
                kept.add(found[0])
                seal = found[1]
    removed = eviction_order(entries, max_size, kept)
    if not check_mode:
        for path in removed:
            remove_entry(path)
        if removed and suffix == ENTRY_SUFFIX:
            orphans = broken_entries(directory, suffix)
            for path in orphans:
                remove_entry(path)
            removed = removed + orphans
    return removed


def prune_rootfs_steps(
    directory: str | None, max_size: int, check_mode: bool = False, suffix: str = ENTRY_SUFFIX
) -> dict[str, Any]:
    """Remove what no bake will use (unsealed entries, stray seals, old partial writes, layers over a broken
    parent), then the sealed entries beyond *max_size* (0: all of them)."""
    broken = unsealed(directory, suffix=suffix)
    orphans = broken_entries(directory, suffix) if suffix == ENTRY_SUFFIX else []
    if not check_mode:
        for path in broken:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for path in orphans:
            remove_entry(path)
    broken = sorted(set(broken) | set(orphans))
    evicted = evict_rootfs_steps(directory, max_size, check_mode=check_mode, suffix=suffix)
    return {"unsealed": broken, "evicted": evicted}


# ---------------------------------------------------------------- layers of root-filesystem builders


def tree_snapshot(root: str) -> dict[str, list[int]]:
    """The ``lstat`` of every path of the tree *root* (symbolic links not followed), by its tar member name
    (``.``, ``./etc``, ...): type and mode, owner, size, modification and change times, inode and link count.
    A change time moves with any change of content, metadata, extended attributes or links, and a program
    cannot set it."""
    found: dict[str, list[int]] = {}

    def add(name: str, info: os.stat_result) -> None:
        found[name] = [
            info.st_mode,
            info.st_uid,
            info.st_gid,
            info.st_size,
            info.st_mtime_ns,
            info.st_ctime_ns,
            info.st_ino,
            info.st_nlink,
        ]

    add(".", os.lstat(root))
    # a stack, not recursion: a tree may be deeper than Python's recursion limit (a path too long for the system
    # raises OSError, and the caller keeps the step whole)
    pending = [(root, ".")]
    while pending:
        path, name = pending.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                child = name + "/" + entry.name
                info = entry.stat(follow_symlinks=False)
                add(child, info)
                if stat.S_ISDIR(info.st_mode):
                    pending.append((entry.path, child))
    return found


def tree_changes(
    before: Mapping[str, list[int]], after: Mapping[str, list[int]]
) -> tuple[list[str], list[str], list[str]]:
    """What a layer from the tree *before* to the tree *after* (two :func:`tree_snapshot`) holds: the members to
    archive (each changed or new path, and every directory above a changed or removed one: unpacking changes their
    times, the archive sets them back), what to remove before unpacking it (each removed path, and each whose type
    changed; not those below a removed directory), and the members that are directories (their extended
    attributes are cleared before the archive sets them, as a file's are when tar replaces it)."""
    changed = {name for name, info in after.items() if before.get(name) != info}
    retyped = {
        name
        for name in changed
        if name in before and stat.S_IFMT(before[name][0]) != stat.S_IFMT(after[name][0])
    }
    gone = {name for name in before if name not in after} | retyped
    members = set(changed)
    for name in changed | gone:
        parent = name
        while parent != ".":
            parent = parent.rsplit("/", 1)[0]
            if parent in members:
                break
            if parent in after:
                members.add(parent)
    deleted = [name for name in sorted(gone) if not any(above in gone for above in _above(name))]
    directories = sorted(name for name in members if stat.S_ISDIR(after[name][0]))
    return sorted(members), deleted, directories


def _above(name: str) -> list[str]:
    """The directories above the member *name* (``./a/b/c``: ``./a``, ``./a/b``), not ``.``."""
    parts = name.split("/")
    return ["/".join(parts[:end]) for end in range(2, len(parts))]
