# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bytecode cache for the Python of Ansible collections, as Python keeps one (``__pycache__``) for other code.

Ansible imports a collection's plugins and module_utils through its own import loader, which compiles each file
from source on every run and never writes bytecode. In a bake that is about 0.8 s of compiling on this project's
2-core machines, for the same unchanged files every time: bakery's own plugins and module utilities (the plan, the
preflight, the Docker and layer code, tens of thousands of lines) and community.docker's. Ansible's main process
compiles what it imports, and each worker it forks compiles again what the worker imports (an in-process module,
a filter), since a forked worker's imports are gone when it exits.

:func:`install` wraps the loader's ``get_code``: a file's code object is kept in a cache directory (one entry per
source file path, so the cache never grows past the number of files), keyed by the SHA-256 of the Python
version's bytecode magic, the file name and the file's exact source. A changed file, another Python or a damaged
entry is compiled again from the source, as before, and the entry is replaced atomically (concurrent bakes write
whole files or nothing). Nothing but the compile step changes: the source is read, the module executed and its
``__file__`` set by Ansible as before. ``BAKERY_BYTECODE_CACHE`` names another directory for it, and an empty value
turns it off. ``PYTHONDONTWRITEBYTECODE`` does not: it is about ``.pyc`` files beside the sources, which this cache
never writes (and CI images often set it for that reason alone).

Written here because nothing else does it: ansible-core has no option for it, and Python's own cache
(importlib's ``SourceLoader``) is not the loader Ansible's collection finder uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import sys
import tempfile
from types import CodeType
from typing import Any

ENV = "BAKERY_BYTECODE_CACHE"
_MARK = "_bakery_bytecode_cache"


def cache_root() -> str:
    """``bakery`` under ``$XDG_CACHE_HOME`` (``~/.cache``): where the callback's caches of Ansible's work are kept
    (this one, and the module payloads of :mod:`_ansiballz`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bakery")


def write_atomically(path: str, data: bytes) -> None:
    """Write *data* to *path* through a temporary file beside it: a reader sees the old file or the whole new one.
    Here rather than module_utils' ``_files.atomic_output``: this module is imported before the bytecode cache is
    installed, and importing that one (with what it imports) would compile it from source on every run."""
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cache_dir() -> str | None:
    """Where the code objects are kept: ``$BAKERY_BYTECODE_CACHE``, else ``ansible-bytecode`` under
    :func:`cache_root`; None when that variable is set empty (no cache)."""
    if ENV in os.environ:
        return os.environ[ENV] or None
    return os.path.join(cache_root(), "ansible-bytecode", sys.implementation.cache_tag or "python")


def _key(filename: str, source: str | bytes) -> bytes:
    data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    digest.update(filename.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(data)
    return digest.digest()


def _entry(directory: str, filename: str) -> str:
    return os.path.join(
        directory, hashlib.sha256(filename.encode("utf-8", "surrogateescape")).hexdigest()[:40] + ".code"
    )


def load(directory: str, filename: str, source: str | bytes) -> CodeType | None:
    """The kept code object of *filename* with exactly this *source*, or None (none kept, or another one)."""
    key = _key(filename, source)
    try:
        with open(_entry(directory, filename), "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if data[: len(key)] != key:
        return None
    try:
        code = marshal.loads(data[len(key) :])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None


def store(directory: str, filename: str, source: str | bytes, code: CodeType) -> None:
    """Keep *code*, compiled from *source*, as the entry of *filename* (atomically; a failure keeps nothing)."""
    with contextlib.suppress(OSError, ValueError):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_atomically(_entry(directory, filename), _key(filename, source) + marshal.dumps(code))


def compile_cached(directory: str, filename: str, source: str | bytes) -> CodeType:
    """The code of *source* as Ansible's loader compiles it (``exec`` mode, no inherited future flags), from the
    cache when it holds this source, else compiled and kept."""
    code = load(directory, filename, source)
    if code is None:
        code = compile(source=source, filename=filename, mode="exec", flags=0, dont_inherit=True)
        store(directory, filename, source, code)
    return code


def install() -> bool:
    """Make Ansible's collection loader of this process (and of the workers it forks later) take code objects from
    the cache; once. False when the cache is off or this ansible-core's loader is not the one expected (then
    nothing changes)."""
    directory = cache_dir()
    if directory is None:
        return False
    try:
        from ansible.utils.collection_loader._collection_finder import (
            _AnsibleCollectionPkgLoaderBase as loader,
        )
    except ImportError:
        return False
    original = getattr(loader, "get_code", None)
    if original is None or getattr(original, _MARK, False):
        return original is not None
    if not (hasattr(loader, "get_filename") and hasattr(loader, "get_source")):
        return False

    def get_code(self: Any, fullname: str) -> CodeType | None:
        if getattr(self, "_compiled_code", None):
            return self._compiled_code
        try:
            filename = self.get_filename(fullname) or "<string>"
            source = self.get_source(fullname)
        except Exception:  # noqa: BLE001 - Ansible's own get_code says what is wrong
            return original(self, fullname)
        if source is None:
            return original(self, fullname)
        self._compiled_code = compile_cached(directory, filename, source)
        return self._compiled_code

    setattr(get_code, _MARK, True)
    get_code.__doc__ = original.__doc__
    loader.get_code = get_code
    return True
