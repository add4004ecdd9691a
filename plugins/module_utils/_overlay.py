# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A running build container's file system read from the engine's overlay2 directories instead of its export.

The final commit (``_docker.reproducible_image``) needs the index of the container's files (:func:`_layer.index_tar`
of ``docker export``) to compute its layer against the base image's. The export streams the whole file system
(200 MB for the default base) through the API and Python's tarfile, and every file is hashed: most of the commit.
Yet only the paths the container's own overlay layers hold can differ from the base image's: on a local overlay2
engine, ``inspect_container``'s ``GraphDriver.Data`` names them (``UpperDir``, and in ``LowerDir`` those above the
base image's own directories: a step image's layers), and ``MergedDir`` is the mounted view the export walks while
the container runs. So the index here is the base image's with those paths read again from ``MergedDir``: the same
entries as the export's, without reading the rest.

What this relies on, of Docker 20.10's overlay2 driver, its archive package and Linux's overlayfs:

* the export is ``pkg/archive``'s walk of the merged view: depth first, the names of a directory sorted bytewise;
  each entry from ``lstat``; a non-directory with more than one link whose inode came before is a hard link to the
  first path of that inode; sockets are left out; the only extended attribute is ``security.capability`` (a
  version 3 one written as version 2, 20 bytes); modification times truncated to the second;
* in a layer directory, a whiteout is a character device 0/0 named like the path it deletes, and a directory
  with ``trusted.overlay.opaque=y`` hides all below it in the layers under it; a non-directory hides all below its
  path. Without the ``index`` feature a copy-up breaks a hard link: a path the layers do not hold shows the lower
  file. Without ``redirect_dir`` (refused here when a directory has ``trusted.overlay.redirect``) a directory's
  contents come from its own path in each layer;
* the container's ``-init`` layer holds the engine's own paths (:data:`_layer.ENGINE_PATHS`) and their parent
  ``etc``, whose attributes (its time: when the engine created the container) it sets in the merged view: that
  is read again too, and so is every path of a base hard link group one path of which the layers hold.

Anything else (another storage driver, a remote or rootless engine, user namespace remapping, a container that
is not running, directories this process cannot see or read, overlay features above) makes :func:`overlay_of`
say why not, and the commit reads the export as before; so does any error while reading (:class:`Unusable`,
``OSError``).
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import os
import posixpath
import re
import stat
import sys
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from ansible_collections.bakery.images.plugins.module_utils import _dpkg_db
from ansible_collections.bakery.images.plugins.module_utils._layer import Entry, engine_path, hard_link

# ``export`` makes the commit read the container's export even where its overlay directories could be read (tests)
READ_FROM_ENV = "BAKERY_COMMIT_READ_FROM"

OPAQUE_XATTR = "trusted.overlay.opaque"
REDIRECT_XATTR = "trusted.overlay.redirect"
CAPABILITY_XATTR = "security.capability"
# the key tarfile gives the engine's pax header of a file capability under (index_tar keeps SCHILY.xattr.*)
CAPABILITY_KEY = "SCHILY.xattr." + CAPABILITY_XATTR
# pkg/archive writes a version 3 file capability (it names a root uid) as version 2, of this many bytes
_CAPABILITY_V2_SIZE = 20
_CHUNK = 1 << 20
# overlay features under which a layer directory no longer holds every path of the merged view that differs from
# the layers below it (index: a copied-up hard link shows the upper file under its other names too), and their
# module parameters (the defaults; a mount shows only the options that differ from them)
_FEATURES = ("index", "redirect_dir", "metacopy", "nfs_export")
_PARAMETERS = "/sys/module/overlay/parameters"


class Unusable(Exception):
    """The overlay directories cannot be trusted to give what the export would (the commit reads the export)."""


@dataclass(frozen=True)
class Overlay:
    """The overlay2 directories of a running container that matter for its layer over its base image."""

    merged: str  # the mounted merged view (MergedDir)
    layers: tuple[str, ...]  # the container's own layer directories: UpperDir, then a step image's, top first
    init: str  # the engine's init layer (its -init directory)


def _mounts(path: str = "/proc/self/mountinfo") -> dict[str, tuple[str, str]]:
    """The mounts this process sees: mount point -> (file system type, super options)."""
    found = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            before, _sep, after = line.partition(" - ")
            fields, rest = before.split(), after.split()
            if len(fields) < 5 or len(rest) < 3:
                continue
            # mountinfo writes a space, tab, newline or backslash in a mount point as an octal escape
            point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[4])
            found[point] = (rest[0], rest[2])
    return found


def _defaults(directory: str = _PARAMETERS) -> dict[str, bool] | None:
    """Whether each of :data:`_FEATURES` is on by default (this kernel's overlay module); None if unknown."""
    found = {}
    for name in _FEATURES:
        try:
            with open(os.path.join(directory, name), encoding="ascii") as handle:
                found[name] = handle.read().strip() == "Y"
        except OSError:
            return None
    return found


def mount_problem(options: str, defaults: Mapping[str, bool] | None) -> str | None:
    """Why an overlay mount with the super *options* cannot be read here (None if it can): :data:`_FEATURES`
    that are on (given, else the module's *defaults*), or user extended attributes (a rootless engine's)."""
    given = {}
    for option in options.split(","):
        name, _sep, value = option.partition("=")
        given[name] = value
    if "userxattr" in given:
        return "the overlay uses user.overlay.* attributes (userxattr)"
    for name in _FEATURES:
        if name in given:
            on = given[name] not in ("off", "nofollow", "follow")
        elif defaults is None:
            return "the overlay module's defaults are unknown (%s)" % _PARAMETERS
        else:
            on = defaults[name]
        if on:
            return "the overlay has %s on" % name
    return None


def _dirs(data: Mapping[str, Any], key: str) -> list[str]:
    return [path for path in str(data.get(key) or "").split(":") if path]


def overlay_of(
    container: Mapping[str, Any],
    base_image: Mapping[str, Any],
    info: Mapping[str, Any],
    mounts: Mapping[str, tuple[str, str]] | None = None,
    defaults: Mapping[str, bool] | None = None,
) -> tuple[Overlay | None, str]:
    """The overlay directories of *container* (``inspect_container``) above *base_image* (``inspect_image``) on
    the engine of *info* (``docker info``), if this process can read them as the export would; else None and
    why. *mounts* (:func:`_mounts`) and *defaults* (:func:`_defaults`) are this host's unless given."""
    driver = container.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    base_driver = base_image.get("GraphDriver") or {}
    if driver.get("Name") != "overlay2" or base_driver.get("Name") != "overlay2":
        return None, "the storage driver is %s, not overlay2" % (driver.get("Name") or "unknown")
    options = " ".join(info.get("SecurityOptions") or [])
    if "name=userns" in options or "name=rootless" in options:
        return None, "the engine remaps user ids (userns) or is rootless"
    if not (container.get("State") or {}).get("Running"):
        return None, "the container is not running (its merged view is not mounted)"
    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        return None, "this process does not decode file names as UTF-8, as tarfile does"
    merged, upper = str(data.get("MergedDir") or ""), str(data.get("UpperDir") or "")
    lowers = _dirs(data, "LowerDir")
    base_data = base_driver.get("Data") or {}
    base_dirs = _dirs(base_data, "UpperDir") + _dirs(base_data, "LowerDir")
    if not merged or not upper or not lowers or not lowers[0].endswith("-init/diff") or not base_dirs:
        return None, "the engine does not name the container's overlay directories"
    below_init = lowers[1:]
    if below_init[len(below_init) - len(base_dirs) :] != base_dirs:
        return None, "the container's lower layers do not end with the base image's"
    own = (upper, *below_init[: len(below_init) - len(base_dirs)])
    for path in (merged, *own, lowers[0]):
        if not os.path.isdir(path) or not os.access(path, os.R_OK | os.X_OK):
            return None, "cannot read %s (a remote engine, or another mount namespace)" % path
    mounts = _mounts() if mounts is None else mounts
    fstype, super_options = mounts.get(merged, ("", ""))
    if fstype != "overlay":
        return None, "%s is not an overlay mount here" % merged
    mounted_upper = ""
    for option in super_options.split(","):
        if option.startswith("upperdir="):
            mounted_upper = option[len("upperdir=") :]
    if not mounted_upper or not (upper == mounted_upper or upper.endswith("/" + mounted_upper)):
        return None, "%s is not the mount of %s" % (merged, upper)
    problem = mount_problem(super_options, _defaults() if defaults is None else defaults)
    if problem:
        return None, problem
    return Overlay(merged=merged, layers=own, init=lowers[0]), ""


@dataclass
class Candidates:
    """What the layer directories say may differ from the base image."""

    paths: set[str] = field(default_factory=set)  # every path a layer holds (whiteouts too)
    whiteouts: set[str] = field(default_factory=set)  # the paths a layer deletes
    opaque: set[str] = field(default_factory=set)  # directories that hide the layers below them
    hiding: set[str] = field(default_factory=set)  # paths under which the base's paths may be hidden


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def scan_layers(layers: Iterable[str]) -> Candidates:
    """The paths the layer directories *layers* hold, but the engine's own ones (:func:`_layer.engine_path`).

    A whiteout, an opaque directory and a non-directory each hide the paths below them in the layers under them.
    Unusable when a directory is redirected (``redirect_dir``) or marked in a way this does not know."""
    found = Candidates()
    for layer in layers:
        pending = [(layer, "")]
        while pending:
            directory, prefix = pending.pop()
            with os.scandir(directory) as entries:
                for item in entries:
                    name = prefix + item.name
                    if engine_path(name):
                        continue
                    found.paths.add(name)
                    if item.is_dir(follow_symlinks=False):
                        attributes = os.listxattr(item.path, follow_symlinks=False)
                        if REDIRECT_XATTR in attributes:
                            raise Unusable("%s is a redirected directory (redirect_dir)" % item.path)
                        if OPAQUE_XATTR in attributes:
                            value = os.getxattr(item.path, OPAQUE_XATTR, follow_symlinks=False)
                            if value != b"y":
                                raise Unusable("%s has %s=%r" % (item.path, OPAQUE_XATTR, value))
                            found.opaque.add(name)
                            found.hiding.add(name)
                        pending.append((item.path, name + "/"))
                        continue
                    found.hiding.add(name)
                    if not item.is_file(follow_symlinks=False) and not item.is_symlink():
                        if _is_whiteout(item.stat(follow_symlinks=False)):
                            found.whiteouts.add(name)
    return found


def _order(name: str) -> list[bytes]:
    """The export's order: depth first, a directory's names sorted bytewise (Go's filepath.Walk)."""
    return name.encode("utf-8", "surrogateescape").split(b"/")


def candidates(base: Mapping[str, Entry], found: Candidates, init: Iterable[str] = ()) -> set[str]:
    """The paths to read again from the merged view: those the layers hold, the *init* layer's, the base's below
    a path that may hide them, and every path of a base hard link group one of which is read again (a copy-up
    breaks the group: the others show the lower file, now first of its inode)."""
    wanted = set(found.paths) | set(init)
    tops = sorted(name for name in found.hiding if name in base and base[name].is_dir)
    if tops:
        names = sorted(base)
        for top in tops:
            start = bisect.bisect_left(names, top + "/")
            end = bisect.bisect_left(names, top + "0")  # "0" follows "/"
            wanted.update(names[start:end])
    groups: dict[str, list[str]] = {}
    for name, entry in base.items():
        if entry.link:
            groups.setdefault(entry.link, [entry.link]).append(name)
    for members in groups.values():
        if any(name in wanted for name in members):
            wanted.update(members)
    return wanted


def capability(path: str) -> tuple[tuple[str, str], ...]:
    """The extended attributes the export has of *path*: its file capability, as pkg/archive writes it and
    tarfile reads it back (utf-8, surrogateescape); none when it has none or it cannot be read (as the engine)."""
    try:
        value = os.getxattr(path, CAPABILITY_XATTR, follow_symlinks=False)
    except OSError:
        return ()
    if len(value) > 3 and value[3] == 3:
        value = value[:3] + b"\x02" + value[4:_CAPABILITY_V2_SIZE]
    return ((CAPABILITY_KEY, value.decode("utf-8", "surrogateescape")),)


_KINDS = (
    (stat.S_ISDIR, tarfile.DIRTYPE),
    (stat.S_ISREG, tarfile.REGTYPE),
    (stat.S_ISLNK, tarfile.SYMTYPE),
    (stat.S_ISCHR, tarfile.CHRTYPE),
    (stat.S_ISBLK, tarfile.BLKTYPE),
    (stat.S_ISFIFO, tarfile.FIFOTYPE),
)


def _kind(mode: int) -> bytes | None:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None  # a socket: the export leaves it out


class MergedTree:
    """The merged view of a running container's overlay: its index (:meth:`index`), the contents of its files
    (:meth:`open`) and its package database (:meth:`packages`)."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self.read_paths = 0  # how many paths the last index read again
        # what a regular file was when it was hashed: a file that changed since fails its reading (Unusable)
        self._hashed: dict[str, tuple[int, int, int, int]] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.overlay.merged, name)

    def index(self, base: Mapping[str, Entry]) -> dict[str, Entry]:
        """What :func:`_layer.index_tar` gives for the container's export, from *base* (the base image's index)
        and the paths :func:`candidates` names read again from the merged view."""
        found = scan_layers(self.overlay.layers)
        init = scan_layers([self.overlay.init]).paths
        wanted = candidates(base, found, init)
        self.read_paths = len(wanted)
        read: dict[str, Entry] = {}
        no_children: set[str] = set()  # gone, or not directories
        first_of: dict[int, str] = {}  # inode -> its first path (non-directories with more than one link)
        for name in sorted(wanted, key=_order):
            if posixpath.dirname(name) in no_children:
                no_children.add(name)
                continue
            path = self._path(name)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                no_children.add(name)
                continue
            kind = _kind(st.st_mode)
            if kind is None:
                no_children.add(name)
                continue
            if kind != tarfile.DIRTYPE:
                no_children.add(name)
                if st.st_nlink > 1:
                    first = first_of.setdefault(st.st_ino, name)
                    if first != name:
                        read[name] = hard_link(
                            read[first],
                            name,
                            st.st_mode & 0o7777,
                            st.st_uid,
                            st.st_gid,
                            capability(path),
                            st.st_mtime_ns // 1_000_000_000,
                        )
                        continue
            read[name] = Entry(
                name=name,
                kind=kind,
                mode=st.st_mode & 0o7777,
                uid=st.st_uid,
                gid=st.st_gid,
                size=st.st_size if kind == tarfile.REGTYPE else 0,
                linkname=os.readlink(path) if kind == tarfile.SYMTYPE else "",
                device=(os.major(st.st_rdev), os.minor(st.st_rdev))
                if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE)
                else (0, 0),
                xattrs=capability(path),
                digest=self._digest(name, st) if kind == tarfile.REGTYPE else "",
                mtime=st.st_mtime_ns // 1_000_000_000,
            )
        names = [name for name in base if name not in wanted] + list(read)
        return {name: read[name] if name in read else base[name] for name in sorted(names, key=_order)}

    def _open(self, name: str) -> IO[bytes]:
        """The regular file *name*, never a link's target nor a FIFO (which an open would wait on), should a file
        have become one since it was indexed."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self._path(name), flags)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Unusable("%s is not a regular file" % name)
        return os.fdopen(fd, "rb")

    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _digest(self, name: str, st: os.stat_result) -> str:
        hashed, size = hashlib.sha256(), 0
        with self._open(name) as handle:
            if self._identity(os.fstat(handle.fileno())) != self._identity(st):
                raise Unusable("%s changed while it was read" % name)
            chunk = handle.read(_CHUNK)
            while chunk:
                hashed.update(chunk)
                size += len(chunk)
                chunk = handle.read(_CHUNK)
        if size != st.st_size:
            raise Unusable("%s changed while it was read" % name)
        self._hashed[name] = self._identity(st)
        return hashed.hexdigest()

    def open(self, name: str) -> IO[bytes]:
        """The content of the regular file *name*; Unusable if :meth:`index` hashed it and it changed since (the
        others are the base image's files, which the layer does not hold)."""
        handle = self._open(name)
        if name in self._hashed and self._hashed[name] != self._identity(os.fstat(handle.fileno())):
            handle.close()
            raise Unusable("%s changed since it was indexed" % name)
        return handle

    def _read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def packages(self, kept: Mapping[str, Entry]) -> list[dict[str, Any]] | None:
        """The package records (:func:`_dpkg_db.records`) of the image whose files are *kept*, read as
        ``_docker.image_packages`` reads them from the export: the same members (a hard link's content is its
        first path's, which is read under that path only; nor is a later path of a symbolic link followed, a hard
        link member there), the contents from the merged view."""
        reader = _dpkg_db.TarReader()
        for name, entry in kept.items():
            if _dpkg_db.in_database(name):
                reader.add_entry(
                    name,
                    directory=entry.is_dir,
                    target=entry.linkname if entry.kind == tarfile.SYMTYPE and not entry.link else None,
                    read=(lambda name=name: self._read(name))
                    if entry.kind == tarfile.REGTYPE and not entry.link
                    else None,
                    wanted=_dpkg_db.wanted_member,
                )
        return _dpkg_db.records(reader)


def reading_error(exc: BaseException) -> bool:
    """Whether *exc* is a reason to read the export instead (the overlay directories failed us); not a full disk
    (writing the layer), which the export would fill more."""
    return isinstance(exc, Unusable) or (
        isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    )
