# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Content fingerprints: what decides an artifact, hashed so that equal inputs give equal digests.

A fingerprint is a sha256 over a mapping of named input digests (``inputs``).  Keeping the
inputs apart, rather than hashing everything at once, lets a bake say *which* input changed
when an artifact has to be rebuilt.  Everything here hashes content only: never mtimes,
owners or the order of keys in a mapping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable

FINGERPRINT_LABEL = "org.bakery.fingerprint"
INPUTS_LABEL = "org.bakery.inputs"
BAKE_ID_LABEL = "bakery-bake-id"
TEMPORARY_LABEL = "bakery-temporary"
_CHUNK = 1024 * 1024


def canonical_json(value: Any) -> str:
    """Serialise *value* so that equal data always gives the same text (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def digest_value(value: Any) -> str:
    """sha256 of the canonical JSON of *value*."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def chain_keys(root: Any, digests: list[str]) -> list[str]:
    """The per-step cache keys of a builder: key 0 the state after its start (*root*: what decides it), key
    *i* the state after step *i*, the digest of key *i-1* and step *i*'s own digest. A changed step changes
    its key and every later one; equal first steps give equal first keys."""
    keys = [digest_value({"root": root})]
    for position, step in enumerate(digests, start=1):
        keys.append(digest_value({"previous": keys[-1], "step": position, "digest": step}))
    return keys


def digest_file(path: str) -> str:
    """sha256 of a file's content, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def _walk(root: str) -> Iterable[str]:
    """Relative paths below *root*, depth first, in a stable (sorted) order."""
    for current, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = os.path.relpath(current, root)
        for name in sorted(dirs + files):
            yield os.path.normpath(os.path.join(rel_dir, name))


def digest_tree(root: str, ignore: Callable[[str], bool] | None = None, modes: bool = False) -> str:
    """sha256 over a directory tree: relative paths, file types, executable bits and contents.

    With *modes*, every file's and directory's permission bits instead of the executable bit (a tree that is
    uploaded as it is: its modes are part of what the builder gets).

    *ignore* receives each relative path (with ``/`` separators) and returns True to leave it out.
    Directories that are ignored are still walked into (ignore files inside them individually).
    """
    if os.path.isfile(root):
        return digest_value({"file": digest_file(root)})
    if not os.path.isdir(root):
        raise FileNotFoundError(root)
    sha = hashlib.sha256()
    for rel in _walk(root):
        posix = rel.replace(os.sep, "/")
        if posix.startswith("__pycache__") or "/__pycache__" in posix or posix.endswith(".pyc"):
            continue
        if ignore is not None and ignore(posix):
            continue
        full = os.path.join(root, rel)
        info = os.lstat(full)
        if stat.S_ISLNK(info.st_mode):
            entry = "L %s -> %s" % (posix, os.readlink(full))
        elif stat.S_ISDIR(info.st_mode):
            entry = "D %s" % posix
            if modes:
                entry += " %o" % stat.S_IMODE(info.st_mode)
        elif stat.S_ISREG(info.st_mode):
            bits = "%o" % stat.S_IMODE(info.st_mode) if modes else "x" if info.st_mode & 0o111 else "-"
            entry = "F %s %s %s" % (posix, bits, digest_file(full))
        else:
            continue
        sha.update(entry.encode("utf-8", "surrogateescape"))
        sha.update(b"\n")
    return sha.hexdigest()


def fingerprint(inputs: Mapping[str, str]) -> str:
    """The fingerprint of an artifact: sha256 over its named input digests."""
    return digest_value(dict(inputs))


def changed_inputs(previous: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """Names of the inputs that differ between two input maps (added, removed or changed)."""
    if not previous:
        return sorted(current)
    names = set(previous) | set(current)
    return sorted(name for name in names if previous.get(name) != current.get(name))


def parse_inputs(text: str | None) -> dict[str, str]:
    """Read an inputs map stored as JSON (an image label, a sidecar field); {} when absent or bad."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(key): str(val) for key, val in value.items()}


class IgnoreRules:
    """``.dockerignore``-style patterns: ``*``, ``?``, ``**``, ``!`` exceptions, last match wins."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.rules: list[tuple[bool, str]] = []
        for raw in patterns:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = os.path.normpath(line.lstrip("/")).replace(os.sep, "/")
            if line == ".":
                continue
            self.rules.append((negate, line))
        self._compiled = [(negate, self._regex(pattern)) for negate, pattern in self.rules]

    @classmethod
    def from_file(cls, path: str) -> IgnoreRules:
        if not os.path.isfile(path):
            return cls([])
        with open(path, encoding="utf-8", errors="replace") as handle:
            return cls(handle.read().splitlines())

    @staticmethod
    def _regex(pattern: str) -> re.Pattern[str]:
        """Docker's matching: ``*`` and ``?`` stay within one path component, ``**`` spans any."""
        out = []
        i = 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
                continue
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            if char == "*":
                out.append("[^/]*")
            elif char == "?":
                out.append("[^/]")
            elif char == "[":
                end = pattern.find("]", i + 1)
                if end < 0:
                    out.append(re.escape(char))
                else:
                    body = pattern[i + 1 : end].replace("\\", "\\\\")
                    if body.startswith("!") or body.startswith("^"):
                        body = "^" + body[1:]
                    out.append("[%s]" % body)
                    i = end
            else:
                out.append(re.escape(char))
            i += 1
        # a pattern naming a directory also excludes everything below it
        return re.compile("^%s(?:/.*)?$" % "".join(out))

    def __call__(self, path: str) -> bool:
        excluded = False
        for negate, regex in self._compiled:
            if regex.match(path):
                excluded = not negate
        return excluded


def new_bake_id(now: float | None = None) -> str:
    """``<UTC time>-<random>``, lowercase, usable as a Docker label, an EC2 tag and a GCE label."""
    stamp = time.strftime("%Y%m%dt%H%M%S", time.gmtime(now if now is not None else time.time()))
    return "%s-%s" % (stamp, secrets.token_hex(3))
