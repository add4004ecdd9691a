# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image layers that are a function of file system contents only (reproducible Docker images).

Docker's commit writes the build container's changes with the times provisioning wrote them, so two bakes of one
definition give layers with different digests. Here a layer is computed from two file systems instead (the base
image's and the provisioned container's, each an exported tar), as a normalised tar: members sorted by path,
parents before children; modification times clamped to the bake's SOURCE_DATE_EPOCH; no access or change times,
no user or group names (numeric ids only); only the extended attributes the engine exports; a whiteout
(``.wh.<name>``) for each topmost path the base has and the container lost. A path that is the same in both
(type, mode, owner, content or link target, device numbers, extended attributes; not the time) is left out, and
so are paths that vary from run to run (:func:`changes`' *varying*) unless the base has them as they are.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from ansible_collections.bakery.images.plugins.module_utils import _reproducible

WHITEOUT_PREFIX = ".wh."
_CHUNK = 1 << 20
# the engine's own paths in every container's file system (its init layer and mount points): never in a layer
ENGINE_PATHS = (
    "dev",
    "proc",
    "sys",
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
)


@dataclass(frozen=True)
class Entry:
    """One path of an exported file system, as a layer would hold it."""

    name: str
    # a tarfile type; a hard link has its group's (the type of its first path ``link``: a regular file shares its
    # content, a symbolic link, FIFO or device is what that path is)
    kind: bytes
    mode: int
    uid: int
    gid: int
    size: int = 0
    linkname: str = ""  # a symbolic link's target
    device: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, str], ...] = ()
    digest: str = ""  # sha256 of a regular file's content
    mtime: int = 0
    link: str = ""  # for a hard link: its group's first path (the member holding a regular file's content)

    def state(self) -> tuple[Any, ...]:
        """What makes two entries the same path content (the time does not)."""
        return (
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.linkname,
            self.device,
            self.xattrs,
            self.digest,
        )

    @property
    def is_dir(self) -> bool:
        return self.kind == tarfile.DIRTYPE


def member_name(name: str) -> str:
    """A tar member's path, relative, without ``./`` or a trailing slash (``""`` is the root)."""
    name = name.strip("/")
    while name.startswith("./"):
        name = name[2:].lstrip("/")
    return "" if name == "." else name


def engine_path(name: str) -> bool:
    return any(name == path or name.startswith(path + "/") for path in ENGINE_PATHS)


def _sort_key(name: str) -> list[str]:
    return name.split("/")


def hard_link(
    first: Entry, name: str, mode: int, uid: int, gid: int, xattrs: tuple[tuple[str, str], ...], mtime: int
) -> Entry:
    """The path *name* of the hard link group whose first path (in the export's order) is *first*, with its own
    *mode* (a regular file's), owner, extended attributes and time. A regular file shares the content of *first*;
    a symbolic link, FIFO or device (GNU ln links a symbolic link itself, not its target) is what *first* is: its
    type, target, device numbers and mode, never content to read. ValueError if *first* is a directory."""
    if first.is_dir:
        raise ValueError("hard link %s to the directory %s" % (name, first.name))
    return Entry(
        name=name,
        kind=first.kind,
        mode=mode if first.kind == tarfile.REGTYPE else first.mode,
        uid=uid,
        gid=gid,
        size=first.size,
        linkname=first.linkname,
        device=first.device,
        xattrs=xattrs,
        digest=first.digest,
        mtime=mtime,
        link=first.link or first.name,
    )


def _xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted((key, value) for key, value in member.pax_headers.items() if key.startswith("SCHILY.xattr."))
    )


def index_tar(archive: tarfile.TarFile) -> dict[str, Entry]:
    """Every path of an exported file system (read in order: a stream works) but the engine's own ones."""
    found: dict[str, Entry] = {}
    for member in archive:
        name = member_name(member.name)
        if not name or engine_path(name):
            continue
        if member.islnk():
            first = found.get(member_name(member.linkname))
            if first is None:
                raise ValueError(
                    "hard link %s to %s, which comes nowhere before it" % (name, member.linkname)
                )
            found[name] = hard_link(
                first, name, member.mode & 0o7777, member.uid, member.gid, _xattrs(member), int(member.mtime)
            )
            continue
        digest, kind = "", member.type
        if member.isfile():
            kind = tarfile.REGTYPE
            hashed = hashlib.sha256()
            data = archive.extractfile(member)
            chunk = data.read(_CHUNK) if data is not None else b""
            while chunk:
                hashed.update(chunk)
                chunk = data.read(_CHUNK) if data is not None else b""
            digest = hashed.hexdigest()
        found[name] = Entry(
            name=name,
            kind=kind,
            mode=member.mode & 0o7777,
            uid=member.uid,
            gid=member.gid,
            size=member.size if kind == tarfile.REGTYPE else 0,
            linkname=member.linkname if member.issym() else "",
            device=(member.devmajor, member.devminor) if member.ischr() or member.isblk() else (0, 0),
            xattrs=_xattrs(member),
            digest=digest,
            mtime=int(member.mtime),
        )
    return found


# 2: a later path of a hard-linked symbolic link, FIFO or device is what its first path is (1: a regular file)
INDEX_VERSION = 2


def dump_index(entries: Mapping[str, Entry]) -> bytes:
    """*entries* (an :func:`index_tar` result) as JSON, to keep the index of an image, whose files never change."""
    rows = [
        [
            entry.name,
            entry.kind.decode("latin-1"),
            entry.mode,
            entry.uid,
            entry.gid,
            entry.size,
            entry.linkname,
            list(entry.device),
            [list(pair) for pair in entry.xattrs],
            entry.digest,
            entry.mtime,
            entry.link,
        ]
        for entry in entries.values()
    ]
    return json.dumps({"version": INDEX_VERSION, "entries": rows}, separators=(",", ":")).encode()


def load_index(data: bytes) -> dict[str, Entry]:
    """The entries :func:`dump_index` wrote; ValueError when *data* is not such a document."""
    try:
        document = json.loads(data)
        if document.get("version") != INDEX_VERSION:
            raise ValueError("index version %r" % document.get("version"))
        found = {}
        for row in document["entries"]:
            name, kind, mode, uid, gid, size, linkname, device, xattrs, digest, mtime, link = row
            found[name] = Entry(
                name=name,
                kind=kind.encode("latin-1"),
                mode=mode,
                uid=uid,
                gid=gid,
                size=size,
                linkname=linkname,
                device=(device[0], device[1]),
                xattrs=tuple((key, value) for key, value in xattrs),
                digest=digest,
                mtime=mtime,
                link=link,
            )
        return found
    except (AttributeError, KeyError, TypeError, IndexError) as exc:
        raise ValueError("not an index: %s" % exc) from exc


def varying(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def image_entries(
    base: Mapping[str, Entry], final: Mapping[str, Entry], patterns: Iterable[str] = ()
) -> dict[str, Entry]:
    """The paths of *final* that the image of a layer over *base* has (:func:`changes`): all but those matching
    one of *patterns* (``fnmatch``, relative, ``*`` crosses ``/``) that differ from the base's, and all below
    them."""
    patterns = tuple(patterns)
    dropped: set[str] = set()
    kept: dict[str, Entry] = {}
    for name in sorted(final, key=_sort_key):
        entry = final[name]
        parent = posixpath.dirname(name)
        # the patterns last: most paths are the base's as they were (py-spy: matching every path of a container
        # first took 0.15 s of each commit)
        if parent in dropped or (
            (name not in base or base[name].state() != entry.state()) and varying(name, patterns)
        ):
            dropped.add(name)
            continue
        kept[name] = entry
    return kept


def changes(
    base: Mapping[str, Entry],
    final: Mapping[str, Entry],
    patterns: Iterable[str] = (),
    kept: Mapping[str, Entry] | None = None,
) -> tuple[list[str], list[str]]:
    """The paths of *final* a layer over *base* holds (changed or new, and their parent directories), and the
    paths it whites out (the topmost ones *base* has and *final* lost), each sorted.

    A path matching one of *patterns* (``fnmatch``, relative, ``*`` crosses ``/``) that differs from the base's
    counts as gone, and so does all below it: the image has none (a whiteout hides the base's). *kept*: what
    :func:`image_entries` gave for the same arguments, when the caller has it already."""
    if kept is None:
        kept = image_entries(base, final, patterns)
    changed = {
        name for name, entry in kept.items() if name not in base or base[name].state() != entry.state()
    }
    whiteouts = set()
    for name in base:
        if name in kept:
            continue
        parent = posixpath.dirname(name)
        # below a lost directory, that directory's whiteout hides it; below a directory that became something
        # else, so does the new entry
        if not parent or (parent in kept and kept[parent].is_dir):
            whiteouts.add(name)
    wanted = set(changed)
    for name in list(changed) + list(whiteouts):
        parent = posixpath.dirname(name)
        while parent and parent not in wanted:
            wanted.add(parent)
            parent = posixpath.dirname(parent)
    return sorted(wanted, key=_sort_key), sorted(whiteouts, key=_sort_key)


class _Digesting(io.RawIOBase):
    """A write-only file that passes what it gets on and keeps its sha256 and size."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.sha256, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.sha256.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.uname = info.gname = ""
    return info


def write_layer(
    out: IO[bytes],
    final: Mapping[str, Entry],
    paths: Iterable[str],
    whiteouts: Iterable[str],
    content: Callable[[str], IO[bytes]],
    epoch: int,
) -> tuple[str, int]:
    """Write the normalised layer tar of *paths* of *final* (*content* opens a regular file's content by its name)
    and the *whiteouts* to *out*; return its digest (``sha256:...``, the diff id) and size.

    The first path of a hard link group the layer holds is what it is (the only one whose content is read, for a
    regular file), the others hard links to it, as the export has them."""
    digesting = _Digesting(out)
    paths = set(paths)
    members = [(name, False) for name in paths] + [(name, True) for name in whiteouts]
    members.sort(key=lambda item: _sort_key(_whiteout_name(item[0]) if item[1] else item[0]))
    first_of: dict[str, str] = {}  # hard link group (its first path in the index) -> its first member written
    with tarfile.open(fileobj=digesting, mode="w|", format=tarfile.PAX_FORMAT) as layer:  # type: ignore[call-overload]
        for name, whiteout in members:
            if whiteout:
                layer.addfile(_info(_whiteout_name(name), tarfile.REGTYPE, 0o644, 0, 0, epoch))
                continue
            entry = final[name]
            info = _info(name, entry.kind, entry.mode, entry.uid, entry.gid, min(entry.mtime, epoch))
            info.pax_headers = dict(entry.xattrs)
            group = entry.link or name
            if group in first_of:
                info.type, info.linkname = tarfile.LNKTYPE, first_of[group]
                layer.addfile(info)
                continue
            first_of[group] = name
            if entry.kind == tarfile.SYMTYPE:
                info.linkname = entry.linkname
            elif entry.kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = entry.device
            if entry.kind != tarfile.REGTYPE:
                layer.addfile(info)
                continue
            info.size = entry.size
            with content(group) as data:
                fixed = _bytecode_at_epoch(final, paths, group, data, epoch)
                layer.addfile(info, data if fixed is None else io.BytesIO(fixed))
    return "sha256:" + digesting.sha256.hexdigest(), digesting.size


def _bytecode_at_epoch(
    final: Mapping[str, Entry], paths: set[str], name: str, data: IO[bytes], epoch: int
) -> bytes | None:
    """The content of *name* to write when it is Python bytecode valid for a source whose time the layer clamps
    (_reproducible.pyc_header_at_epoch: it then records the epoch); None to write *data* as it is. A source the
    layer does not hold keeps the base's time, and its bytecode stays valid as it is."""
    source = _reproducible.pyc_source(name)
    found = final.get(source) if source and source in paths else None
    if found is None or found.kind != tarfile.REGTYPE:
        return None
    content = data.read()
    fixed = _reproducible.pyc_header_at_epoch(content, found.mtime, found.size, epoch)
    if fixed is None:
        data.seek(0)
    return fixed


def _whiteout_name(name: str) -> str:
    parent, base = posixpath.split(name)
    return posixpath.join(parent, WHITEOUT_PREFIX + base)


def image_archive(
    out: IO[bytes], config: bytes, layers: list[str], new_layer: tuple[str, IO[bytes]] | None
) -> str:
    """Write an image archive for ``docker load`` (the engine's save format) to *out*: *config* (JSON, the image
    config; its sha256 is the image id, returned), a manifest naming *layers* (diff ids), and only the layer file
    of *new_layer* (its diff id and content): the engine already has the others (it looks a layer up by its
    chain id before it reads its file)."""
    image_id = hashlib.sha256(config).hexdigest()

    def add(archive: tarfile.TarFile, name: str, data: IO[bytes], size: int, mode: int = 0o644) -> None:
        info = _info(name, tarfile.REGTYPE, mode, 0, 0, 0)
        info.size = size
        archive.addfile(info, data)

    manifest = [
        {
            "Config": "%s.json" % image_id,
            "RepoTags": None,
            "Layers": ["%s/layer.tar" % layer.split(":", 1)[1] for layer in layers],
        }
    ]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
        if new_layer is not None:
            digest, data = new_layer
            data.seek(0, io.SEEK_END)
            size = data.tell()
            data.seek(0)
            directory = _info(digest.split(":", 1)[1], tarfile.DIRTYPE, 0o755, 0, 0, 0)
            archive.addfile(directory)
            add(archive, "%s/layer.tar" % digest.split(":", 1)[1], data, size)
        add(archive, "%s.json" % image_id, io.BytesIO(config), len(config))
        text = json.dumps(manifest, sort_keys=True).encode()
        add(archive, "manifest.json", io.BytesIO(text), len(text))
    return "sha256:" + image_id


def newest_mtime(entries: Mapping[str, Entry]) -> int:
    """The newest modification time of a file system's files (0 if none): a SOURCE_DATE_EPOCH stable for one base.

    Directories do not count: an exported container's ``/etc`` has the time the engine wrote its own files into
    it, when the container was created."""
    return max((entry.mtime for entry in entries.values() if not entry.is_dir), default=0)
