"""The bytecode cache of collection code: the same code objects as Ansible's loader compiles, read from the cache
when the source is the one cached, compiled again when it is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.plugin_utils import _bytecode

# run in a process of its own: install() changes Ansible's collection loader for the whole process. It imports
# ns.coll's module_utils m through Ansible's collection finder, as a bake imports bakery's, and says which files
# Python compiled and what the module gives.
IMPORT = textwrap.dedent(
    """
    import builtins, json, sys
    compiled = []
    real_compile = builtins.compile
    def counting_compile(source, filename, *args, **kwargs):
        compiled.append(str(filename))
        return real_compile(source, filename, *args, **kwargs)
    builtins.compile = counting_compile
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
    _AnsibleCollectionFinder(paths=[sys.argv[1]])._install()
    from ansible_collections.bakery.images.plugins.plugin_utils import _bytecode
    installed = _bytecode.install()
    from ansible_collections.ns.coll.plugins.module_utils import m
    print(json.dumps({"installed": installed, "again": _bytecode.install(), "value": m.value(),
                      "file": m.__file__, "compiled": [name for name in compiled if name.endswith("m.py")]}))
    """
)


def collection(tmp_path: Path, body: str) -> Path:
    root = tmp_path / "collections"
    utils = root / "ansible_collections" / "ns" / "coll" / "plugins" / "module_utils"
    utils.mkdir(parents=True, exist_ok=True)
    (utils / "m.py").write_text(body)
    return root


def run(root: Path, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), BAKERY_BYTECODE_CACHE=cache)
    out = subprocess.run(
        [sys.executable, "-c", IMPORT, str(root)], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_second_run_reads_the_code_it_compiled_and_a_changed_file_is_compiled_again(tmp_path):
    root = collection(tmp_path, "def value():\n    return 'first'\n")
    cache = tmp_path / "cache"
    first = run(root, str(cache))
    assert first["installed"] and first["again"]
    assert first["value"] == "first"
    assert first["compiled"] == [first["file"]]
    assert len(list(cache.iterdir())) == 1

    second = run(root, str(cache))
    assert second["value"] == "first"
    assert second["compiled"] == []  # from the cache
    assert second["file"] == first["file"]

    (Path(first["file"])).write_text("def value():\n    return 'changed'\n")
    third = run(root, str(cache))
    assert third["value"] == "changed"
    assert third["compiled"] == [first["file"]]
    assert len(list(cache.iterdir())) == 1  # the entry of the file was replaced, not added to


def test_an_empty_cache_variable_leaves_ansible_compiling(tmp_path):
    root = collection(tmp_path, "def value():\n    return 'plain'\n")
    for _run in range(2):
        result = run(root, "")
        assert not result["installed"]
        assert result["value"] == "plain"
        assert result["compiled"] == [result["file"]]


def test_the_cached_code_is_the_code_compile_gives(tmp_path):
    source = "from __future__ import annotations\nX: int = 1\ndef f(a, /, b=2, *, c):\n    return a + b + c\n"
    fresh = compile(source, "/x/m.py", "exec", flags=0, dont_inherit=True)
    first = _bytecode.compile_cached(str(tmp_path), "/x/m.py", source)
    cached = _bytecode.load(str(tmp_path), "/x/m.py", source)
    assert cached is not None
    for code in (first, cached):
        assert code.co_filename == "/x/m.py"
        assert code == fresh  # code objects compare by their bytecode, constants (nested code too) and names
        namespace: dict = {}
        exec(code, namespace)
        assert namespace["f"](1, c=3) == 6


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:40], id="truncated"),
        pytest.param(lambda data: data[:32] + b"\x00" * (len(data) - 32), id="garbage"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_a_damaged_entry_is_compiled_again(tmp_path, damage):
    _bytecode.compile_cached(str(tmp_path), "/x/m.py", "VALUE = 1\n")
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(damage(entry.read_bytes()))
    assert _bytecode.load(str(tmp_path), "/x/m.py", "VALUE = 1\n") is None
    namespace: dict = {}
    exec(_bytecode.compile_cached(str(tmp_path), "/x/m.py", "VALUE = 1\n"), namespace)
    assert namespace["VALUE"] == 1
    assert _bytecode.load(str(tmp_path), "/x/m.py", "VALUE = 1\n") is not None


def test_another_file_with_the_same_source_is_not_its_entry(tmp_path):
    _bytecode.compile_cached(str(tmp_path), "/x/a.py", "VALUE = 1\n")
    assert _bytecode.load(str(tmp_path), "/x/b.py", "VALUE = 1\n") is None
    assert _bytecode.load(str(tmp_path), "/x/a.py", "VALUE = 2\n") is None


def test_an_unwritable_cache_still_compiles(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    namespace: dict = {}
    exec(_bytecode.compile_cached(str(blocked / "cache"), "/x/m.py", "VALUE = 3\n"), namespace)
    assert namespace["VALUE"] == 3


def test_the_cache_is_under_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(_bytecode.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _bytecode.cache_dir() == str(
        tmp_path / "bakery" / "ansible-bytecode" / sys.implementation.cache_tag
    )
    monkeypatch.setenv(_bytecode.ENV, "")
    assert _bytecode.cache_dir() is None
    monkeypatch.setenv(_bytecode.ENV, str(tmp_path / "elsewhere"))
    assert _bytecode.cache_dir() == str(tmp_path / "elsewhere")
