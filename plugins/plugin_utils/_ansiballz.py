# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible's payloads of modules (AnsiballZ), kept from one run to the next.

Before Ansible runs a Python module on a host it assembles the module's payload: it parses the module and every
module utility the module imports, transitively (``recursive_finder``), and zips them. It keeps the payload for the
rest of the run, in ``ansiballz_cache`` under the run's own temporary directory (``C.DEFAULT_LOCAL_TMP``), which goes
when the run ends: every run assembles every module it uses again. In a bake that provisions a build container it
is the largest part of the host's own work per task: py-spy put 3.1 s of a 25 s forced Docker bake in it (the eight
modules of bakery.images.example_web and the bake's own tasks, 0.2-0.5 s each, one after the other), and a bake in
a builder VM pays the same on the host.

Here the payloads a run assembled are kept in a cache directory when it ends (:func:`keep`), and put where Ansible
looks for them when the next run starts (:func:`restore`), so that it assembles only what changed. A kept payload is
used only when nothing it could hold has changed:

- it is kept per ansible-core version and Python (the payload's format and the pickle of Ansible's entry);
- it is kept only when every file in it is, byte for byte, the file on disk it came from at the end of the run (the
  module, and the module utilities of ansible-core or of a collection); else it is not kept;
- it is used only while every file under the module's own file and the module-utility directories it drew from (all
  of ``ansible/module_utils``, all of a collection's ``plugins/module_utils``) has the size and modification time it
  had when the payload was kept: a changed, added or removed file there, or another installation of a collection
  found first, leaves the payload unused, and Ansible assembles it again.

A kept payload also carries the bytecode of its Python files (:func:`with_bytecode`): the target's Python imports
the payload from the zip, and compiles every file in it from source on every run of the module (zipimport writes no
bytecode), 0.1-0.2 s of a module's run in a build container and far more in a TCG builder VM. Only for files that
cannot be the frame ansible-core's deprecation messages are attributed by (see :func:`with_bytecode`); a target
whose Python is another version than the controller's ignores the bytecode and compiles as before.

Modules outside ansible-core and collections (a role's ``library``) are never kept. Anything unexpected (another
layout of Ansible's cache, a file that cannot be read) keeps or restores nothing: Ansible assembles the payload as
it always does. The cache is ``ansiballz`` beside the bytecode cache (:mod:`_bytecode`), one entry per module, and
``BAKERY_ANSIBALLZ_CACHE`` names another directory; an empty value turns it off.

Written here because ansible-core keeps its payloads for one run only and has no option to keep them longer.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import io
import json
import marshal
import os
import pickle
import sys
import zipfile
from collections.abc import Iterable

from ansible_collections.bakery.images.plugins.plugin_utils import _bytecode

ENV = "BAKERY_ANSIBALLZ_CACHE"
KEPT = ".kept"
# what a kept payload holds besides Ansible's own entry, written into its signature: a payload kept by a bakery that
# wrote another (or none: the first ones had no bytecode) is not valid, so the next run keeps it again as this one
# writes it, instead of using an old payload for ever while its sources stay unchanged
FORMAT = 2
# how Ansible's payloads begin the packages ``ansible`` and ``ansible.module_utils`` (namespace packages)
_STUB = b"from pkgutil import extend_path"


def cache_dir() -> str | None:
    """``$BAKERY_ANSIBALLZ_CACHE``, else ``bakery/ansiballz/<ansible-core version>-<python>`` under
    ``$XDG_CACHE_HOME`` (``~/.cache``, :func:`_bytecode.cache_root`); None when the variable is set empty."""
    if ENV in os.environ:
        base = os.environ[ENV]
        if not base:
            return None
    else:
        base = os.path.join(_bytecode.cache_root(), "ansiballz")
    try:
        from ansible.release import __version__
    except ImportError:
        return None
    return os.path.join(base, "%s-%s" % (__version__, sys.implementation.cache_tag or "python"))


def run_cache() -> str | None:
    """Ansible's cache of assembled payloads of this run (it is made when the first payload is)."""
    try:
        from ansible import constants as C

        return os.path.join(C.DEFAULT_LOCAL_TMP, "ansiballz_cache")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - another ansible-core: nothing is kept or restored
        return None


def _ansible_root() -> str:
    import ansible

    return os.path.dirname(os.path.dirname(os.path.abspath(ansible.__file__)))


def _collection_roots() -> list[str]:
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    return [os.path.abspath(path) for path in AnsibleCollectionConfig.collection_paths or []]


class _Sources:
    """Where a payload's files come from: ``ansible/...`` from ansible-core's installation, ``ansible_collections/
    ns/coll/...`` from the first collection path that has the collection (the one Ansible's loader uses)."""

    def __init__(self) -> None:
        self.ansible = _ansible_root()
        self.collections = _collection_roots()
        self._found: dict[tuple[str, str], str | None] = {}

    def collection(self, namespace: str, name: str) -> str | None:
        key = (namespace, name)
        if key not in self._found:
            self._found[key] = next(
                (
                    os.path.join(root, "ansible_collections", namespace, name)
                    for root in self.collections
                    if os.path.isdir(os.path.join(root, "ansible_collections", namespace, name))
                ),
                None,
            )
        return self._found[key]

    def path(self, member: str) -> str | None:
        """The file on disk of the payload's member *member*; None when there is none (a package's
        ``__init__.py`` that Ansible writes itself)."""
        parts = member.split("/")
        if parts[0] == "ansible":
            return os.path.join(self.ansible, *parts)
        if parts[0] == "ansible_collections" and len(parts) > 3:
            root = self.collection(parts[1], parts[2])
            return os.path.join(root, *parts[3:]) if root else None
        return None

    def trees(self, members: Iterable[str]) -> list[str]:
        """The module-utility directories the members were drawn from."""
        found = set()
        for member in members:
            parts = member.split("/")
            if parts[:2] == ["ansible", "module_utils"]:
                found.add(os.path.join(self.ansible, "ansible", "module_utils"))
            elif parts[0] == "ansible_collections" and parts[3:5] == ["plugins", "module_utils"]:
                root = self.collection(parts[1], parts[2])
                if root:
                    found.add(os.path.join(root, "plugins", "module_utils"))
        return sorted(found)


def _file_state(path: str, stat: os.stat_result) -> bytes:
    return b"%s\0%d\0%d\n" % (path.encode("utf-8", "surrogateescape"), stat.st_size, stat.st_mtime_ns)


def _tree_state(tree: str) -> bytes:
    digest = hashlib.sha256(b"tree %s\n" % tree.encode("utf-8", "surrogateescape"))
    for directory, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(_file_state(path, os.lstat(path)))
    return digest.digest()


def state(paths: Iterable[str], trees: Iterable[str], memo: dict[str, bytes] | None = None) -> str:
    """The size and modification time of the files *paths* and of every file under the directories *trees*
    (*memo*: the trees' states already read in this pass)."""
    memo = {} if memo is None else memo
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(_file_state(path, os.stat(path)))
    for tree in sorted(trees):
        if tree not in memo:
            memo[tree] = _tree_state(tree)
        digest.update(memo[tree])
    return digest.hexdigest()


# PEP 552: a bytecode file checked against its source's hash, not its time; "unchecked": the target's Python does
# not read the source to check it (the payload holds both, written together)
_UNCHECKED_HASH = (0b01).to_bytes(4, "little")
# a file whose source has this (any case) keeps its source only: see with_bytecode
_ATTRIBUTED = b"deprecat"


def bytecode(source: bytes, member: str) -> bytes | None:
    """The bytecode file of the payload's Python file *member* (its *source*), for this Python; None when it does
    not compile (the target compiles it, and says why)."""
    try:
        code = compile(source, member, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return (
        importlib.util.MAGIC_NUMBER
        + _UNCHECKED_HASH
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )


def with_bytecode(zip_data: bytes) -> bytes:
    """The payload *zip_data* (the zip Ansible sends) with ``<file>.pyc`` beside each of its Python files, which
    the target's zipimport loads instead of compiling the source (a Python of another version refuses its magic
    number and compiles the source, as without it).

    Not for a file whose source mentions deprecation (``deprecat``, any case): ansible-core attributes a deprecation
    message to the plugin or collection of the first frame that called it by that frame's file name, which zipimport
    gives as the path of the payload on the target; compiled here, the name is the member's (``ansible/...``), and
    messages of ansible-core's own code would lose their attribution. No other frame's file name matters to a
    module; a traceback names the member. The bytecode is compiled as the target compiles the source unless its
    Python runs optimized (``-O``), where the source's assertions stay."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_data)) as source, zipfile.ZipFile(out, "w") as target:
        names = set(source.namelist())
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data)
            name = info.filename
            if not name.endswith(".py") or name + "c" in names or _ATTRIBUTED in data.lower():
                continue
            compiled = bytecode(data, name)
            if compiled is not None:
                target.writestr(
                    zipfile.ZipInfo(name + "c", date_time=info.date_time), compiled, info.compress_type
                )
    return out.getvalue()


def _with_bytecode_entry(payload: bytes) -> bytes:
    """Ansible's entry *payload* (a pickled ``_CachedModule``) with :func:`with_bytecode` in its zip; as it is when
    that cannot be done."""
    try:
        cached = pickle.loads(payload)  # noqa: S301 - Ansible's own entry, written by this run
        zip_data = with_bytecode(base64.b64decode(cached.zip_data))
        return pickle.dumps(dataclasses.replace(cached, zip_data=base64.b64encode(zip_data)))
    except Exception:  # noqa: BLE001 - the payload without bytecode is the one Ansible made
        return payload


def _bytecode_of(member: str, data: bytes, members: dict[str, bytes]) -> bool:
    """Whether *member* (*data*) is the bytecode :func:`with_bytecode` wrote for a Python file of the payload, and
    of its source as it is in the payload."""
    source = members.get(member[:-1])
    return (
        member.endswith(".pyc")
        and source is not None
        and data[:8] == importlib.util.MAGIC_NUMBER + _UNCHECKED_HASH
        and data[8:16] == importlib.util.source_hash(source)
    )


def _members(entry: str) -> dict[str, bytes]:
    """The files of the payload in Ansible's cache entry *entry* (a pickled ``_CachedModule``)."""
    with open(entry, "rb") as handle:
        cached = pickle.load(handle)  # noqa: S301 - Ansible's own entry, written by this run
    data = base64.b64decode(cached.zip_data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def describe(entry: str, sources: _Sources, memo: dict[str, bytes] | None = None) -> dict | None:
    """What keeps the payload of *entry* valid (see the module's docstring), or None when it must not be kept: a
    file in it is not the file on disk it came from, or comes from outside ansible-core and the collections."""
    members = _members(entry)
    paths = []
    for member, data in members.items():
        if _bytecode_of(member, data, members):
            continue  # its source is checked as its own member
        path = sources.path(member)
        same = False
        if path is not None and os.path.isfile(path):
            with open(path, "rb") as handle:
                same = handle.read() == data
        if not same:
            if member.endswith("__init__.py") and (not data.strip() or data.startswith(_STUB)):
                continue  # a package that Ansible writes into the payload itself (empty, or a namespace)
            return None
        # the module itself: its own file; module utilities are covered by their directories below
        if "/module_utils/" not in member:
            paths.append(path)
    trees = sources.trees(members)
    return {"format": FORMAT, "paths": sorted(paths), "trees": trees, "state": state(paths, trees, memo)}


def _valid(signature: dict, memo: dict[str, bytes] | None = None) -> bool:
    try:
        if signature.get("format") != FORMAT:
            return False
        return state(signature["paths"], signature["trees"], memo) == signature["state"]
    except (OSError, KeyError, TypeError):
        return False


def _read_kept(path: str) -> tuple[dict, bytes]:
    """A kept payload: its signature (a JSON line), then Ansible's entry as it was in the run's cache. One file, so
    that bakes keeping the same module at once never pair one's signature with the other's payload."""
    with open(path, "rb") as handle:
        data = handle.read()
    line, _newline, entry = data.partition(b"\n")
    signature = json.loads(line)
    if not isinstance(signature, dict):
        raise ValueError("not a signature")
    return signature, entry


def restore(kept: str | None = None, run: str | None = None) -> list[str]:
    """Put every kept payload that is still valid into this run's cache; the names of those put there."""
    kept = kept if kept is not None else cache_dir()
    run = run if run is not None else run_cache()
    if not kept or not run or not os.path.isdir(kept):
        return []
    restored = []
    memo: dict[str, bytes] = {}
    for name in sorted(os.listdir(kept)):
        if not name.endswith(KEPT) or name.startswith("."):
            continue
        entry = name[: -len(KEPT)]
        try:
            signature, payload = _read_kept(os.path.join(kept, name))
            if not _valid(signature, memo) or os.path.exists(os.path.join(run, entry)):
                continue
            os.makedirs(run, exist_ok=True)
            _bytecode.write_atomically(os.path.join(run, entry), payload)
            restored.append(entry)
        except (OSError, ValueError):
            continue
    return restored


def keep(kept: str | None = None, run: str | None = None) -> list[str]:
    """Keep the payloads this run assembled that are not kept yet (or kept for other files); their names."""
    kept = kept if kept is not None else cache_dir()
    run = run if run is not None else run_cache()
    if not kept or not run or not os.path.isdir(run):
        return []
    sources = None
    written = []
    memo: dict[str, bytes] = {}
    for entry in sorted(os.listdir(run)):
        if entry.endswith((".lock", "-part")) or entry.startswith("."):
            continue
        path = os.path.join(kept, entry + KEPT)
        try:
            if _valid(_read_kept(path)[0], memo):
                continue  # kept already, and still valid
        except (OSError, ValueError):
            pass
        try:
            sources = sources or _Sources()
            signature = describe(os.path.join(run, entry), sources, memo)
            if signature is None:
                continue
            with open(os.path.join(run, entry), "rb") as handle:
                payload = _with_bytecode_entry(handle.read())
            os.makedirs(kept, mode=0o700, exist_ok=True)
            _bytecode.write_atomically(path, json.dumps(signature).encode() + b"\n" + payload)
            written.append(entry)
        except Exception:  # noqa: BLE001 - a cache: what cannot be kept is assembled again next run
            continue
    return written
