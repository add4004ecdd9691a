# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whole tree of a disk's ext2/3/4 root file system, copied into a directory without a mount or a loop device.

A ``provision: vm`` builder ran on its disk: the journal, mount counts, block placement and times of that file
system differ from one bake to the next. Its tree, copied out here, is made into a disk again by the same
reproducible assembly a chroot tree goes through (``_qemu_disk.make_raw_disk``).

``debugfs`` (e2fsprogs) reads the file system at its offset in a raw disk, opened read-only:

* ``rdump`` copies the regular files, directories and symbolic links with their content, permission bits, owner,
  access and modification times;
* ``ls -p`` of every directory, by inode number (names need no quoting), gives every name's inode and type:
  what ``rdump`` leaves out is added from it - the set-user-ID, set-group-ID and sticky bits, the owners of
  symbolic links, hard links (``rdump`` writes each name as a file of its own; they
  are linked again), device nodes, FIFOs and sockets (made with their device numbers and times from ``stat``);
* ``ea_list`` and ``ea_get -f`` give every inode's extended attributes (file capabilities such as
  ``security.capability``, SELinux labels, ``user.*``) and POSIX ACLs (``system.posix_acl_*``, which ``ea_get``
  hands out in the format ``setxattr`` takes); they are set after the owner, whose change would drop a file
  capability.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

ROOT_INODE = 2
# an ext2/3/4 superblock starts 1024 bytes into the file system; its UUID is 104 bytes into it
_SUPERBLOCK = 1024
_UUID_AT = 104
# inline data lives in this attribute: it is the file's content, not an attribute of it
SKIPPED_ATTRIBUTES = ("system.data",)
_EA_NAME_RE = re.compile(r"^  (\S.*?) \((\d+)\)(?: = .*)?$")
_DEVICE_RE = re.compile(r"^Device major/minor number: (\d+):(\d+) ", re.MULTILINE)
_MODE_RE = re.compile(r"Mode:\s+([0-7]+)")
_OWNER_RE = re.compile(r"^User:\s+(\d+)\s+Group:\s+(\d+)", re.MULTILINE)
_TIME_RE = re.compile(r"^\s*(atime|mtime): 0x([0-9a-fA-F]+)", re.MULTILINE)
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class TreeError(BakeryError):
    """The tree could not be copied out of the disk."""


@dataclass(frozen=True)
class Entry:
    """A name in the file system: its path (relative to the root), inode, mode and owner."""

    path: str
    inode: int
    mode: int
    uid: int
    gid: int


@dataclass
class Copied:
    """What :func:`copy_tree` copied."""

    entries: int = 0
    hard_links: int = 0
    special: int = 0
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {
            "entries": self.entries,
            "hard_links": self.hard_links,
            "special_files": self.special,
            "extended_attributes": sum(len(names) for names in self.attributes.values()),
        }


def debugfs(fs: str, commands: Iterable[str], timeout: int) -> str:
    """Run debugfs's *commands* on *fs* (``disk?offset=N``, read-only); its output (each command's echoed
    after ``debugfs: ``), or TreeError with what it printed on stderr (it exits 0 whatever its commands did)."""
    tool = shutil.which("debugfs") or shutil.which("debugfs", path=_SYSTEM_PATH)
    if tool is None:
        raise TreeError("debugfs is not installed; install the Debian package 'e2fsprogs'")
    script = "".join(command + "\n" for command in commands)
    try:
        proc = subprocess.run(
            [tool, "-f", "-", fs],
            input=script,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=timeout,
            check=False,
            env=dict(os.environ, LC_ALL="C", LANG="C"),
        )
    except subprocess.TimeoutExpired:
        raise TreeError("debugfs on %s took longer than %d s" % (fs, timeout)) from None
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise TreeError(
            "debugfs on %s failed%s: %s"
            % (fs, " (exit %d)" % proc.returncode if proc.returncode else "", "; ".join(errors[-5:]))
        )
    return proc.stdout


def by_command(output: str) -> dict[str, list[str]]:
    """debugfs's output split by the command it echoed (``debugfs: <command>``): its lines, by command."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.split("\n"):
        if line.startswith("debugfs: "):
            current = found.setdefault(line[len("debugfs: ") :], [])
        elif current is not None and line:
            current.append(line)
    return found


def parse_listing(lines: Iterable[str], directory: str) -> list[Entry]:
    """The entries of ``ls -p`` lines (``/inode/mode/uid/gid/name/size/``) of *directory* but ``.`` and ``..``."""
    entries = []
    for line in lines:
        if not (line.startswith("/") and line.endswith("/")):
            raise TreeError("debugfs listed %r in %s; a name with a line break?" % (line, directory or "/"))
        head = line[1:].split("/", 4)
        if len(head) < 5:
            raise TreeError("debugfs listed %r in %s" % (line, directory or "/"))
        inode, mode, uid, gid, rest = head
        name = rest.rsplit("/", 2)[0]
        if name in (".", "..") or int(inode) == 0:
            continue
        entries.append(
            Entry(
                path=name if not directory else directory + "/" + name,
                inode=int(inode),
                mode=int(mode, 8),
                uid=int(uid),
                gid=int(gid),
            )
        )
    return entries


def list_tree(fs: str, timeout: int) -> list[Entry]:
    """Every name below the root of *fs*, directory by directory (one debugfs run per depth), sorted by path."""
    entries: list[Entry] = []
    level = {ROOT_INODE: ""}
    seen = {ROOT_INODE}
    while level:
        listed = by_command(debugfs(fs, ["ls -p <%d>" % inode for inode in sorted(level)], timeout))
        following: dict[int, str] = {}
        for inode, directory in sorted(level.items()):
            for entry in parse_listing(listed.get("ls -p <%d>" % inode, []), directory):
                entries.append(entry)
                if stat.S_ISDIR(entry.mode) and entry.inode not in seen:
                    seen.add(entry.inode)
                    following[entry.inode] = entry.path
        level = following
    return sorted(entries, key=lambda entry: entry.path)


def parse_attribute_names(lines: Iterable[str]) -> list[str]:
    """The attribute names ``ea_list`` printed (``  name (length) = value``), but :data:`SKIPPED_ATTRIBUTES`."""
    names = []
    for line in lines:
        match = _EA_NAME_RE.match(line)
        if match and match.group(1) not in SKIPPED_ATTRIBUTES:
            names.append(match.group(1))
    return names


def read_attributes(
    fs: str, inodes: Iterable[int], scratch: str, timeout: int
) -> dict[int, dict[str, bytes]]:
    """The extended attributes of *inodes* that have any, by inode and name (values as ``getxattr`` gives them)."""
    wanted = sorted(set(inodes))
    listed = by_command(debugfs(fs, ["ea_list <%d>" % inode for inode in wanted], timeout))
    names = {inode: parse_attribute_names(listed.get("ea_list <%d>" % inode, [])) for inode in wanted}
    requests = [(inode, name) for inode in wanted for name in names[inode]]
    for inode, name in requests:
        if '"' in name:
            raise TreeError("inode %d has an extended attribute whose name has a quote: %r" % (inode, name))
    if not requests:
        return {}
    files = {request: os.path.join(scratch, "attribute-%d" % index) for index, request in enumerate(requests)}
    debugfs(fs, ['ea_get -f %s <%d> "%s"' % (files[(i, n)], i, n) for i, n in requests], timeout)
    values: dict[int, dict[str, bytes]] = {}
    for (inode, name), path in files.items():
        if not os.path.isfile(path):
            raise TreeError("debugfs did not read attribute %s of inode %d" % (name, inode))
        with open(path, "rb") as handle:
            values.setdefault(inode, {})[name] = handle.read()
    return values


def parse_stat(text: str) -> tuple[int, int, int]:
    """The device number (0 but for a device), access and modification times that ``stat`` printed."""
    device = _DEVICE_RE.search(text)
    times = {kind: int(value, 16) for kind, value in _TIME_RE.findall(text)}
    if "atime" not in times or "mtime" not in times:
        raise TreeError("debugfs printed no times: %s" % text[:300])
    rdev = os.makedev(int(device.group(1)), int(device.group(2))) if device else 0
    return rdev, times["atime"], times["mtime"]


def root_uuid(raw: str, offset: int) -> str:
    """The UUID of the ext2/3/4 file system at *offset* of *raw* (lower case, with dashes)."""
    with open(raw, "rb") as handle:
        handle.seek(offset + _SUPERBLOCK + _UUID_AT)
        value = handle.read(16).hex()
    if len(value) != 32:
        raise TreeError("%s has no file system superblock at %d" % (raw, offset))
    return "-".join((value[:8], value[8:12], value[12:16], value[16:20], value[20:]))


def copy_tree(raw: str, offset: int, dest: str, timeout: int = 1800) -> Copied:
    """Copy the tree of the ext2/3/4 file system at *offset* of the raw disk *raw* into the empty directory
    *dest* (module docstring): content, modes, owners, access and modification times, symbolic links, hard
    links, device nodes, FIFOs, sockets, extended attributes and ACLs. Run as root (owners, device nodes)."""
    if not os.path.isdir(dest) or os.listdir(dest):
        raise TreeError("%s must be an empty directory" % dest)
    if '"' in dest:
        raise TreeError("%s has a quote in its path" % dest)
    fs = "%s?offset=%d" % (raw, offset)
    debugfs(fs, ['rdump / "%s"' % dest], timeout)
    entries = list_tree(fs, timeout)
    copied = Copied(entries=len(entries))
    by_inode: dict[int, list[Entry]] = {}
    for entry in entries:
        by_inode.setdefault(entry.inode, []).append(entry)
    # what rdump does not make (special files) or does not date (links, and the directories written into
    # below): their times (and devices) from stat
    dated = {ROOT_INODE: Entry("", ROOT_INODE, 0, 0, 0)}
    dated.update((inode, named[0]) for inode, named in by_inode.items() if not stat.S_ISREG(named[0].mode))
    stats = by_command(debugfs(fs, ["stat <%d>" % inode for inode in sorted(dated)], timeout))
    found = {inode: parse_stat("\n".join(stats.get("stat <%d>" % inode, []))) for inode in dated}
    for inode, entry in sorted(dated.items()):
        if inode == ROOT_INODE or stat.S_ISDIR(entry.mode) or stat.S_ISLNK(entry.mode):
            continue
        path = os.path.join(dest, entry.path)
        os.mknod(path, stat.S_IFMT(entry.mode) | 0o600, found[inode][0])
        os.chown(path, entry.uid, entry.gid)
        os.chmod(path, stat.S_IMODE(entry.mode))
        copied.special += 1
    for named in by_inode.values():
        if len(named) < 2 or stat.S_ISDIR(named[0].mode):
            continue
        first = os.path.join(dest, named[0].path)
        for other in named[1:]:
            path = os.path.join(dest, other.path)
            if os.path.lexists(path):
                os.unlink(path)
            os.link(first, path, follow_symlinks=False)
            copied.hard_links += 1
    # rdump keeps only the permission bits (no set-user-ID, set-group-ID or sticky bit) and leaves links to
    # root: every name gets its owner, then its whole mode (a change of owner drops the set-ID bits)
    for entry in entries:
        path = os.path.join(dest, entry.path)
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        if not stat.S_ISLNK(entry.mode):
            os.chmod(path, stat.S_IMODE(entry.mode))
    with tempfile.TemporaryDirectory(prefix="bakery-attributes-") as scratch:
        attributes = read_attributes(fs, [ROOT_INODE, *by_inode], scratch, timeout)
    for inode, values in sorted(attributes.items()):
        relative = "" if inode == ROOT_INODE else by_inode[inode][0].path
        path = os.path.join(dest, relative) if relative else dest
        for name, value in sorted(values.items()):
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                raise TreeError("cannot set attribute %s of /%s: %s" % (name, relative, exc)) from None
        copied.attributes["/" + relative] = sorted(values)
    root_stat = "\n".join(stats.get("stat <%d>" % ROOT_INODE, []))
    mode, owner = _MODE_RE.search(root_stat), _OWNER_RE.search(root_stat)
    if not mode or not owner:
        raise TreeError("debugfs printed no mode and owner of the root: %s" % root_stat[:300])
    os.chown(dest, int(owner.group(1)), int(owner.group(2)))
    os.chmod(dest, int(mode.group(1), 8))
    # the deepest first: setting a directory's times does not change its parent's
    for inode, entry in sorted(dated.items(), key=lambda item: item[1].path.count("/"), reverse=True):
        path = os.path.join(dest, entry.path) if entry.path else dest
        os.utime(path, found[inode][1:], follow_symlinks=False)
    return copied


def replace_identifier(root: str, relative: str, old: str, new: str) -> bool:
    """Replace the identifier *old* (any case) by *new* in the tree's regular file *relative* (its owner, mode
    and times kept); whether it held *old*."""
    path = os.path.join(root, relative)
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    before = os.lstat(path)  # before reading it moves the access time
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        text = handle.read()
    changed = re.sub(re.escape(old), new, text, flags=re.IGNORECASE)
    if changed == text:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return False
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return True


def retarget(root: str, old_uuid: str, new_uuid: str, files: Mapping[str, str]) -> list[str]:
    """The tree's *files* (relative path: what it is) that named the root file system by *old_uuid* name it by
    *new_uuid*; the relative paths changed."""
    if old_uuid.lower() == new_uuid.lower():
        return []
    return [relative for relative in sorted(files) if replace_identifier(root, relative, old_uuid, new_uuid)]
