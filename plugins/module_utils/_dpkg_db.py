# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An artifact's dpkg database: every installed package, with its source, maintainer, licenses and md5sums digest.

Read through a :class:`Reader`: a directory tree (:class:`TreeReader`, the provisioned root of a disk), the members
of tar archives (:class:`TarReader`, what the Docker engine gives of an image's files or of a container's export)
or the root file system of a disk image (:class:`DiskReader`, read with debugfs without a mount). None follows a
symbolic link out of the artifact's root. The packages become plain records (:func:`package_record`) that a module
returns and the ``sbom`` module takes back (its ``installed`` source).

Apart from :mod:`_sbom` (which writes the documents and imports the SPDX and CycloneDX libraries, a quarter of a
second) so that a module that only reads a database (the Docker commit, an instance's ``collect``) stays light.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._disk_files import DiskFiles

STATUS = "var/lib/dpkg/status"
INFO_DIR = "var/lib/dpkg/info"
DOC_DIR = "usr/share/doc"
# the paths a reader needs from an artifact (what TarReader is given archives of)
DATABASE_PATHS = ("/" + STATUS, "/" + INFO_DIR, "/" + DOC_DIR)
_DATABASE_TOPS = tuple(path.lstrip("/") for path in DATABASE_PATHS)
COPYRIGHT_FORMAT = "copyright-format/1.0"


class SbomError(Exception):
    """A package database that cannot be read, or a source document that is not bakery's."""


class NoDatabase(SbomError):
    """An artifact without a dpkg database (an image of another distribution, a scratch image)."""


# ---------------------------------------------------------------- readers


def _parts(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part not in ("", ".")]


def resolve(path: str, link: Callable[[str], str | None]) -> str | None:
    """*path* (relative to an artifact's root) with every link on it resolved inside the root, as if the root
    were ``/`` (``..`` stops at it); ``link(relative path)`` gives a link's target, None for a non-link. None if
    links loop."""
    parts = _parts(path)
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        target = link("/".join(resolved + [part]))
        if target is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > 40:
            return None
        if target.startswith("/"):
            resolved = []
        parts = _parts(target) + parts
    return "/".join(resolved)


class Reader:
    """Files of an artifact's root, by their path relative to it, without leaving it."""

    def read(self, path: str) -> bytes | None:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def prefetch(self, paths: list[str]) -> None:
        """A hint: these files will be read next (a reader that reads in batches reads them at once)."""


class TreeReader(Reader):
    """A directory tree on this host (a provisioned root): links resolve inside *root*."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def _link(self, path: str) -> str | None:
        candidate = os.path.join(self.root, path)
        return os.readlink(candidate) if os.path.islink(candidate) else None

    def _inside(self, path: str) -> str | None:
        """*path* with its links resolved as if *root* were ``/``; None if a link loops."""
        resolved = resolve(path, self._link)
        return None if resolved is None else os.path.join(self.root, resolved)

    def read(self, path: str) -> bytes | None:
        real = self._inside(path)
        if real is None or not os.path.isfile(real):
            return None
        with open(real, "rb") as handle:
            return handle.read()

    def listdir(self, path: str) -> list[str]:
        real = self._inside(path)
        if real is None or not os.path.isdir(real):
            return []
        return sorted(os.listdir(real))


class TarReader(Reader):
    """Members of tar archives of an artifact's files (``docker cp``-like archives: member names relative to
    the archived path's parent directory, given as *parent*), or the same paths from an index of such an archive
    (:meth:`add_entry`: a commit that read the container's files from its overlay directories)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.dirs: set[str] = set()

    def add(self, parent: str, archive: bytes, wanted: Any = None) -> None:
        """Take the members of the tar archive *archive*, placed under *parent*; regular files only when
        ``wanted(path)`` says so (all of them without *wanted*)."""
        stream = io.BytesIO(archive)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                path = posixpath.normpath(posixpath.join("/", parent.strip("/"), member.name)).lstrip("/")
                self.add_member(path, member, tar.extractfile, wanted)

    def add_member(
        self,
        path: str,
        member: tarfile.TarInfo,
        extract: Callable[[tarfile.TarInfo], Any],
        wanted: Any = None,
    ) -> None:
        """Take one member, at *path* (relative to the root); ``extract(member)`` gives a regular file's content
        (a file object) when ``wanted(path)`` says so (always without *wanted*)."""

        def read() -> bytes | None:
            handle = extract(member)
            return handle.read() if handle is not None else None

        self.add_entry(
            path,
            directory=member.isdir(),
            target=member.linkname if member.issym() else None,
            read=read if member.isfile() else None,
            wanted=wanted,
        )

    def add_entry(
        self,
        path: str,
        directory: bool = False,
        target: str | None = None,
        read: Callable[[], bytes | None] | None = None,
        wanted: Any = None,
    ) -> None:
        """Take one path (relative to the root) of an index of the archive rather than its member: a directory, a
        symbolic link to *target*, or a regular file whose content ``read()`` gives when ``wanted(path)`` says so
        (always without *wanted*). Anything else (*read* None: a hard link, a device) only makes its parent
        directories known, as its member would."""
        self._add_dirs(path)
        if directory:
            self.dirs.add(path)
        elif target is not None:
            self.links[path] = target
        elif read is not None and (wanted is None or wanted(path)):
            content = read()
            if content is not None:
                self.files[path] = content

    def _add_dirs(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)

    def _resolve(self, path: str) -> str | None:
        return resolve(path, self.links.get)

    def read(self, path: str) -> bytes | None:
        real = self._resolve(path)
        return self.files.get(real) if real is not None else None

    def listdir(self, path: str) -> list[str]:
        real = self._resolve(path)
        if real is None or real not in self.dirs:
            return []
        prefix = real + "/"
        names = {
            name[len(prefix) :].split("/", 1)[0]
            for name in list(self.files) + list(self.links) + list(self.dirs)
            if name.startswith(prefix)
        }
        return sorted(names)


class DiskReader(Reader):
    """The root file system of a disk image (:class:`DiskFiles`, read with debugfs): files are read in batches
    (the status file, then every package's md5sums list and copyright at once); directories are not listed.
    Symbolic links on a path resolve inside the disk's file system."""

    def __init__(self, files: DiskFiles) -> None:
        self.files = files
        self.read_files: dict[str, bytes | None] = {}

    def prefetch(self, paths: list[str]) -> None:
        wanted = ["/" + path.strip("/") for path in paths]
        wanted = [path for path in wanted if path not in self.read_files]
        found = self.files.read_many(wanted)
        for path in wanted:
            self.read_files[path] = found.get(path)

    def read(self, path: str) -> bytes | None:
        key = "/" + path.strip("/")
        if key not in self.read_files:
            self.prefetch([key])
        return self.read_files[key]

    def listdir(self, path: str) -> list[str]:
        return []


def in_database(path: str) -> bool:
    """Whether *path* (relative to the root) is one of :data:`DATABASE_PATHS` or below one."""
    return any(path == top or path.startswith(top + "/") for top in _DATABASE_TOPS)


def records(reader: Reader) -> list[dict[str, Any]] | None:
    """The :func:`package_record` of every installed package *reader* finds; None without a dpkg database."""
    try:
        return [package_record(package) for package in read_packages(reader)]
    except NoDatabase:
        return None


def wanted_member(path: str) -> bool:
    """Whether a file of the package database paths is read: the status file, md5sums lists, copyrights."""
    return (
        path == STATUS
        or (path.startswith(INFO_DIR + "/") and path.endswith(".md5sums"))
        or (path.startswith(DOC_DIR + "/") and path.endswith("/copyright"))
    )


# ---------------------------------------------------------------- the package database


@dataclass
class DebPackage:
    """One installed package as the artifact's dpkg database describes it."""

    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    maintainer: str
    licenses: list[str] = field(default_factory=list)
    md5sums_sha256: str | None = None

    def key(self) -> tuple[str, str]:
        return (self.name, self.architecture)


def paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a deb822 file (dpkg status, machine-readable copyright): field names lowercased,
    continuation lines kept (with their leading space removed)."""
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                found.append(current)
            current, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                current[last] += "\n" + line[1:]
        elif ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            last = name.strip().lower()
            current[last] = value.strip()
    if current:
        found.append(current)
    return found


def copyright_licenses(text: str) -> list[str]:
    """The license short names a machine-readable copyright file (copyright-format 1.0) states in its
    ``Files`` paragraphs, sorted, each once; none for a file in another format."""
    found = paragraphs(text)
    if not found or COPYRIGHT_FORMAT not in found[0].get("format", ""):
        return []
    names: list[str] = []
    for paragraph in found[1:]:
        if "files" in paragraph and paragraph.get("license"):
            name = paragraph["license"].split("\n", 1)[0].strip()
            if name and name not in names:
                names.append(name)
    return sorted(names)


def read_packages(reader: Reader) -> list[DebPackage]:
    """Every installed package of the artifact's dpkg database, sorted by name and architecture."""
    status = reader.read(STATUS)
    if status is None:
        raise NoDatabase("no dpkg database (/%s) in the artifact" % STATUS)
    packages = []
    entries = [
        entry
        for entry in paragraphs(status.decode("utf-8", "replace"))
        if entry.get("package") and entry.get("status", "").split()[-1:] == ["installed"]
    ]
    reader.prefetch(
        [
            path
            for entry in entries
            for path in (
                "%s/%s:%s.md5sums" % (INFO_DIR, entry["package"], entry.get("architecture", "")),
                "%s/%s.md5sums" % (INFO_DIR, entry["package"]),
                "%s/%s/copyright" % (DOC_DIR, entry["package"]),
            )
        ]
    )
    for entry in entries:
        name, arch = entry["package"], entry.get("architecture", "")
        version = entry.get("version", "")
        source, source_version = name, version
        if entry.get("source"):
            match = re.match(r"^(\S+)(?:\s+\((\S+)\))?", entry["source"])
            if match:
                source, source_version = match.group(1), match.group(2) or version
        md5sums = reader.read("%s/%s:%s.md5sums" % (INFO_DIR, name, arch)) or reader.read(
            "%s/%s.md5sums" % (INFO_DIR, name)
        )
        copyright_text = reader.read("%s/%s/copyright" % (DOC_DIR, name))
        packages.append(
            DebPackage(
                name=name,
                version=version,
                architecture=arch,
                source=source,
                source_version=source_version,
                maintainer=entry.get("maintainer", ""),
                licenses=copyright_licenses(copyright_text.decode("utf-8", "replace"))
                if copyright_text
                else [],
                md5sums_sha256=hashlib.sha256(md5sums).hexdigest() if md5sums is not None else None,
            )
        )
    return sorted(packages, key=DebPackage.key)


_RECORD_TEXT = ("name", "version", "architecture", "source", "source_version", "maintainer")


def package_record(package: DebPackage) -> dict[str, Any]:
    """*package* as plain data (what a ``collect`` run returns from an instance)."""
    return {
        "name": package.name,
        "version": package.version,
        "architecture": package.architecture,
        "source": package.source,
        "source_version": package.source_version,
        "maintainer": package.maintainer,
        "licenses": list(package.licenses),
        "md5sums_sha256": package.md5sums_sha256,
    }


def package_from_record(record: Any) -> DebPackage:
    """The package of a :func:`package_record` (read on an instance, passed back); SbomError if it is not one."""
    if not isinstance(record, Mapping) or not record.get("name"):
        raise SbomError("not a package record (it needs a name): %r" % (record,))
    unknown = sorted(set(record) - set(_RECORD_TEXT) - {"licenses", "md5sums_sha256"})
    if unknown:
        raise SbomError("package record %s has unknown fields: %s" % (record["name"], ", ".join(unknown)))
    licenses = record.get("licenses") or []
    if not isinstance(licenses, list):
        raise SbomError("package record %s: licenses is not a list" % record["name"])
    digest = record.get("md5sums_sha256")
    return DebPackage(
        name=str(record["name"]),
        version=str(record.get("version") or ""),
        architecture=str(record.get("architecture") or ""),
        source=str(record.get("source") or record["name"]),
        source_version=str(record.get("source_version") or record.get("version") or ""),
        maintainer=str(record.get("maintainer") or ""),
        licenses=sorted(str(name) for name in licenses),
        md5sums_sha256=str(digest) if digest else None,
    )
