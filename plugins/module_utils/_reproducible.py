# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reproducible artifacts: the epoch of a bake (``SOURCE_DATE_EPOCH``) and what provisioning leaves that varies.

Two bakes of one definition with the same inputs (the same base rootfs, the same provisioner content) give
byte-identical disks and boxes when every time in them is the bake's epoch, every identifier follows from the
fingerprint, and what varies from run to run in the provisioned tree (logs, caches, random seeds) is gone.

The epoch (:func:`source_date_epoch`), first that applies:

1. ``bake.source_date_epoch``, the definition's own;
2. the controller's ``SOURCE_DATE_EPOCH`` environment variable (https://reproducible-builds.org/specs/source-date-epoch/);
3. the snapshot date of a snapshot.debian.org-style base mirror (``.../archive/debian/20240101T000000Z/``): the
   date of what the base is made from;
4. a time derived from the base rootfs's identity (its fingerprint), between 2001 and 2021: stable for one
   base, never in the future; it dates nothing, it is only the same every time.

The first two are inputs of the artifacts' fingerprints (they change their bytes and the user chose them);
the last two are not: they follow from the base's identity, which is an input already.
"""

from __future__ import annotations

import calendar
import errno
import os
import re
import stat
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# the derived epoch: in [EPOCH_FLOOR, EPOCH_FLOOR + EPOCH_SPAN)
EPOCH_FLOOR = 978307200  # 2001-01-01T00:00:00Z
EPOCH_SPAN = 20 * 365 * 86400
# the largest epoch ext4 (with 256-byte inodes), FAT and tar headers all take
EPOCH_MAX = 4102444800  # 2100-01-01T00:00:00Z

SNAPSHOT_RE = re.compile(r"/(\d{8}T\d{6}Z)(?:/|$)")


@dataclass
class Epoch:
    """The bake's epoch, where it comes from, and whether it is an input of the fingerprints."""

    value: int
    source: str  # "bake.source_date_epoch", "SOURCE_DATE_EPOCH", "snapshot mirror" or "base identity"

    @property
    def explicit(self) -> bool:
        return self.source in ("bake.source_date_epoch", "SOURCE_DATE_EPOCH")


def check_epoch(value: Any, what: str) -> int:
    """*value* as an epoch (whole seconds since 1970, an int or its digits), or BakeryError naming *what*."""
    if isinstance(value, bool):
        raise BakeryError("%s must be a number of seconds since 1970-01-01 UTC, not %r" % (what, value))
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 0 <= value < EPOCH_MAX:
        raise BakeryError(
            "%s must be a number of seconds since 1970-01-01 UTC before 2100 (got %r)" % (what, value)
        )
    return value


def snapshot_epoch(mirror: str | None) -> int | None:
    """The date of a snapshot mirror URL (``.../20240101T000000Z/``), or None for a moving mirror."""
    match = SNAPSHOT_RE.search(str(mirror or ""))
    if not match:
        return None
    try:
        return calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return None


def identity_epoch(identity: str) -> int:
    """A time that follows from the base's identity (a hex fingerprint): the same for the same base."""
    try:
        number = int(identity[:16], 16)
    except ValueError:
        raise BakeryError("the base identity %r is not a hex fingerprint" % identity) from None
    return EPOCH_FLOOR + number % EPOCH_SPAN


def source_date_epoch(
    bake_value: Any, environ: Mapping[str, str], mirror: str | None, identity: str | None
) -> Epoch:
    """The bake's epoch: the definition's, else the environment's, else the snapshot's, else the identity's."""
    if bake_value is not None:
        return Epoch(check_epoch(bake_value, "bake.source_date_epoch"), "bake.source_date_epoch")
    from_env = environ.get("SOURCE_DATE_EPOCH")
    if from_env not in (None, ""):
        return Epoch(check_epoch(from_env, "the SOURCE_DATE_EPOCH environment variable"), "SOURCE_DATE_EPOCH")
    snapshot = snapshot_epoch(mirror)
    if snapshot is not None:
        return Epoch(snapshot, "snapshot mirror")
    if identity:
        return Epoch(identity_epoch(identity), "base identity")
    # no base (a target with its own image): nothing to derive it from, a fixed one
    return Epoch(EPOCH_FLOOR, "fixed")


def mirror_warning(mirror: str | None) -> str | None:
    """What ``--check`` says when the base's mirror moves (its packages change): None for a snapshot mirror."""
    if not mirror or snapshot_epoch(mirror) is not None:
        return None
    return (
        "the base mirror %s is not a snapshot mirror: the packages it serves change, so a later bake of this "
        "definition will not reproduce these artifacts bit for bit; use a snapshot.debian.org-style mirror "
        "(http://snapshot.debian.org/archive/debian/<YYYYMMDDTHHMMSSZ>/) to make them reproducible" % mirror
    )


# --------------------------------------------------------------------------- what provisioning leaves

# Paths (relative to the root, globs allowed) that differ from one provisioning run to the next and that no
# role makes on purpose: removed from a provisioned tree before it is captured, with the reason each.
VARYING_PATHS: tuple[tuple[str, str], ...] = (
    ("var/log/apt/*", "apt's history and term logs: the times and durations of the run"),
    ("var/log/dpkg.log", "dpkg's log: the time of every action"),
    ("var/log/alternatives.log", "update-alternatives' log: the times of the run"),
    ("var/log/bootstrap.log", "the bootstrap's log"),
    (
        "var/log/journal/*",
        "a journal written while provisioning (machine and boot ids, times); not on a live system",
    ),
    ("var/cache/apt/*.bin", "apt's binary caches: rebuilt on the first apt run, with times inside"),
    ("var/cache/apt/archives/*.deb", "downloaded packages: installed already"),
    ("var/cache/apt/archives/partial/*", "downloads that did not finish"),
    ("var/cache/debconf/*-old", "debconf's backups of its databases"),
    ("var/lib/dpkg/*-old", "dpkg's backups of its status and available files"),
    ("etc/passwd-", "the account tools' backup of the file before their last change"),
    ("etc/group-", "the account tools' backup of the file before their last change"),
    ("etc/shadow-", "the account tools' backup of the file before their last change"),
    ("etc/gshadow-", "the account tools' backup of the file before their last change"),
    ("etc/subuid-", "the account tools' backup of the file before their last change"),
    ("etc/subgid-", "the account tools' backup of the file before their last change"),
    ("var/cache/ldconfig/aux-cache", "ldconfig's cache of file times (the tree's ld.so.cache stays)"),
    ("var/lib/systemd/random-seed", "a random seed: every machine must get its own"),
    ("var/lib/systemd/credential.secret", "a random secret: every machine must get its own"),
    ("var/lib/urandom/random-seed", "a random seed: every machine must get its own"),
    ("var/lib/dbus/machine-id", "the builder's machine id (the image's is made at first boot)"),
    ("etc/ssh/ssh_host_*", "the builder's SSH host keys (every machine makes its own at first boot)"),
    ("root/.wget-hsts", "wget's HSTS cache: the times of the run"),
    ("root/.cache/pip", "pip's download cache"),
    ("tmp/*", "temporary files of the provisioning run (systemd empties /tmp at boot); not on a live system"),
)
# what a running system (a builder VM) still uses: left alone there
LIVE_KEPT = ("var/log/journal/*", "tmp/*")

# Login records a booted builder (``provision: vm``) writes: its boots, shutdown and SSH logins, with their
# times. The base has them empty (systemd-tmpfiles makes them at boot): emptied, kept with their owner and mode.
LOGIN_RECORDS: tuple[tuple[str, str], ...] = (
    ("var/log/wtmp", "the builder VM's boots, shutdown and logins, with their times"),
    ("var/log/btmp", "the builder VM's failed logins, with their times"),
    ("var/log/lastlog", "the time of each user's last login into the builder VM"),
)


def empty_login_records(root: str) -> list[str]:
    """Empty the :data:`LOGIN_RECORDS` of the tree *root* that are regular files with something in them (never
    through a link); the relative paths emptied, sorted."""
    emptied = []
    for relative, _reason in LOGIN_RECORDS:
        path = os.path.join(root, relative)
        parent = os.path.realpath(os.path.dirname(path))
        if parent != os.path.realpath(os.path.join(root, os.path.dirname(relative))) or os.path.islink(path):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            os.close(fd)
            emptied.append(relative)
    return sorted(emptied)


def normalise_tree(root: str, live: bool = False, check_mode: bool = False) -> list[str]:
    """Remove :data:`VARYING_PATHS` from the provisioned tree *root* (but :data:`LIVE_KEPT` when *live*: *root*
    is the running system); the relative paths removed (or, in check mode, that would be), sorted.

    Never follows a link out of the tree: a matching link is removed itself, and a path below a link is left.
    """
    import glob
    import shutil

    removed: list[str] = []
    real_root = os.path.realpath(root)
    for pattern, _reason in VARYING_PATHS:
        if live and pattern in LIVE_KEPT:
            continue
        for path in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
            parent = os.path.realpath(os.path.dirname(path))
            if parent != real_root and not parent.startswith(real_root + os.sep):
                continue
            if check_mode:
                removed.append(os.path.relpath(path, root))
                continue
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(os.path.relpath(path, root))
    return sorted(removed)


def clamp_times(root: str, epoch: int) -> int:
    """Every entry of *root* (the root itself too): access time the epoch, modification time at most the epoch
    (links themselves, never what they point at); the number of entries. Directories last, after what is in
    them, so that nothing changes their times again.

    A Python bytecode file that was valid for its source stays valid (:func:`_follow_source_time`): it records
    the source's modification time, which the clamp changes. ``os.walk`` bottom-up reaches ``__pycache__``
    before the directory of its sources, so each source still has its own time when its bytecode is read."""
    count = 0
    for directory, dirs, files in os.walk(root, topdown=False):
        cache = os.path.basename(directory) == "__pycache__"
        for name in files + dirs:
            path = os.path.join(directory, name)
            if cache and name.endswith(".pyc"):
                _follow_source_time(path, epoch)
            _clamp(path, epoch)
            count += 1
    _clamp(root, epoch)
    return count + 1


# A timestamp-based .pyc (PEP 552 flags 0) holds, after its 4-byte magic number and flags, the modification time
# and the size of its source (little-endian, 32 bits each); Python ignores it when they differ from the source's.
# Debian compiles them when a package is installed, so they record the package's times: clamping the sources
# would leave every one of them stale in the image (Python would compile the module again at each import, and
# write the file again where it can). Hash-based ones (flags 1 and 3, what SOURCE_DATE_EPOCH makes py_compile
# write) do not depend on times. Written here, not by a library: no library rewrites this header in place.
_PYC_HEADER = struct.Struct("<4sIII")


def pyc_source(pyc: str) -> str | None:
    """The source of a bytecode file ``<dir>/__pycache__/<module>.<tag>[.opt-N].pyc`` (a path, ``/`` separated
    or not): ``<dir>/<module>.py``; None for any other path."""
    head, name = os.path.split(pyc)
    directory, cache = os.path.split(head)
    if cache != "__pycache__" or not name.endswith(".pyc") or "." not in name[: -len(".pyc")]:
        return None
    return os.path.join(directory, name.split(".", 1)[0] + ".py")


def pyc_header_at_epoch(header: bytes, source_mtime: int, source_size: int, epoch: int) -> bytes | None:
    """The bytes of a bytecode file (all of it, or its first bytes: at least its 16-byte header) with *epoch*
    recorded as its source's time, when they are timestamp-based bytecode valid for a source of *source_mtime*
    and *source_size* and the clamp changes that time; else None (leave the file as it is)."""
    if len(header) < _PYC_HEADER.size or source_mtime <= epoch:
        return None
    magic, flags, recorded, size = _PYC_HEADER.unpack_from(header)
    if flags != 0 or recorded != source_mtime & 0xFFFFFFFF or size != source_size & 0xFFFFFFFF:
        return None
    return _PYC_HEADER.pack(magic, flags, epoch & 0xFFFFFFFF, size) + header[_PYC_HEADER.size :]


def _follow_source_time(pyc: str, epoch: int) -> None:
    """When *pyc* is valid for its source (:func:`pyc_source`) and that source's time is later than *epoch*,
    record the epoch as the source's time (what the clamp makes it)."""
    source = pyc_source(pyc)
    try:
        st_pyc = os.lstat(pyc)
        st_source = os.lstat(source) if source else None
    except OSError:
        return
    if st_source is None or not (stat.S_ISREG(st_pyc.st_mode) and stat.S_ISREG(st_source.st_mode)):
        return
    try:
        with open(pyc, "r+b") as handle:
            fixed = pyc_header_at_epoch(
                handle.read(_PYC_HEADER.size), int(st_source.st_mtime), st_source.st_size, epoch
            )
            if fixed is None:
                return
            handle.seek(0)
            handle.write(fixed)
    except OSError:
        return
    # the file's own times as they were; the clamp that follows treats it as any other file
    os.utime(pyc, ns=(st_pyc.st_atime_ns, st_pyc.st_mtime_ns), follow_symlinks=False)


def _clamp(path: str, epoch: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    mtime = min(int(st.st_mtime), epoch)
    try:
        os.utime(path, (epoch, mtime), follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.ENOENT and not stat.S_ISSOCK(st.st_mode):
            raise


def environment(epoch: int) -> dict[str, str]:
    """What provisioning commands get so that the tools which honour it (shadow's useradd and chage, Python's
    compileall, many build tools) write the bake's epoch instead of the time."""
    return {"SOURCE_DATE_EPOCH": str(epoch)}
