"""Module payloads kept from one run to the next: a run after an unchanged one assembles nothing, and a run after a
change to a module or to a module utility it imports (or could import) runs the changed code."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import json
import marshal
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from ansible_collections.bakery.images.plugins.plugin_utils import _ansiballz

REPO = Path(__file__).resolve().parents[4]

MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ns.coll.plugins.module_utils.greeting import GREETING


def main():
    module = AnsibleModule(argument_spec={})
    module.exit_json(changed=False, greeting=GREETING)


if __name__ == "__main__":
    main()
"""

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ns.coll.hello:
      register: hello
    - ansible.builtin.ping:
    - local_hello:
      register: local
    - ansible.builtin.debug:
        msg: "GREETING={{ hello.greeting }} LOCAL={{ local.greeting }}"
"""


def project(tmp_path: Path) -> Path:
    coll = tmp_path / "collections" / "ansible_collections" / "ns" / "coll"
    (coll / "plugins" / "modules").mkdir(parents=True)
    (coll / "plugins" / "module_utils").mkdir(parents=True)
    (coll / "galaxy.yml").write_text("namespace: ns\nname: coll\nversion: 1.0.0\n")
    (coll / "plugins" / "modules" / "hello.py").write_text(MODULE)
    (coll / "plugins" / "module_utils" / "greeting.py").write_text("GREETING = 'first'\n")
    # a module of the playbook's own (library/): never kept
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "local_hello.py").write_text(
        MODULE.replace(
            "ansible_collections.ns.coll.plugins.module_utils.greeting", "ansible.module_utils.six"
        )
        .replace("import GREETING", "import PY3")
        .replace("greeting=GREETING", "greeting='local'")
    )
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    return coll


def bake(tmp_path: Path, cache: Path) -> dict:
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([str(tmp_path / "collections"), str(REPO / ".collections")]),
        ANSIBLE_CALLBACKS_ENABLED="bakery.images.bake_progress",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_DEBUG="1",
        BAKERY_ANSIBALLZ_CACHE=str(cache),
    )
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "site.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    deprecations = re.findall(r"\[DEPRECATION WARNING\]:[^\n]*", out.stdout + out.stderr)
    assembled = re.findall(r"ANSIBALLZ: Creating module", out.stdout + out.stderr)
    used = re.findall(r"ANSIBALLZ: using cached module: \S+/([^/\s]+)", out.stdout + out.stderr)
    # the debug line as any stdout callback or result format prints it (JSON, YAML)
    greeting = re.search(r'GREETING=([^"\s]+) LOCAL=([^"\s]+)', out.stdout)
    assert greeting, out.stdout[-2000:]
    kept = sorted(os.listdir(_kept(cache))) if _kept(cache).is_dir() else []
    return {
        "assembled": len(assembled),
        "used": sorted(set(used)),
        "greeting": greeting.group(1),
        "local": greeting.group(2),
        "kept": kept,
        "deprecations": deprecations,
    }


def _kept(cache: Path) -> Path:
    (entry,) = list(cache.iterdir()) or [cache / "none"]
    return entry


def test_an_unchanged_run_assembles_no_module_and_a_changed_utility_is_assembled_again(tmp_path):
    coll = project(tmp_path)
    cache = tmp_path / "cache"

    first = bake(tmp_path, cache)
    assert first["greeting"] == "first" and first["local"] == "local"
    assert first["assembled"] == 3
    # the collection's module and ansible-core's; not the playbook's own library module
    assert first["kept"] == [
        "ansible.modules.ping-ZIP_DEFLATED-none.kept",
        "ansible_collections.ns.coll.plugins.modules.hello-ZIP_DEFLATED-none.kept",
    ]

    second = bake(tmp_path, cache)
    assert second["greeting"] == "first"
    assert second["assembled"] == 1  # the library module only
    assert "ansible_collections.ns.coll.plugins.modules.hello-ZIP_DEFLATED-none" in second["used"]

    # the module utility the module imports changes (same size: the time tells)
    greeting = coll / "plugins" / "module_utils" / "greeting.py"
    greeting.write_text("GREETING = 'again'\n")
    os.utime(greeting, ns=(greeting.stat().st_atime_ns, greeting.stat().st_mtime_ns + 1_000_000_000))
    third = bake(tmp_path, cache)
    assert third["greeting"] == "again"
    assert third["assembled"] == 2  # the changed module and the library module

    # a file added beside the module utilities (a module could import it): assembled again, then kept again
    (coll / "plugins" / "module_utils" / "other.py").write_text("OTHER = 1\n")
    fourth = bake(tmp_path, cache)
    assert fourth["greeting"] == "again" and fourth["assembled"] == 2
    assert bake(tmp_path, cache)["assembled"] == 1

    # the module itself changes
    module = coll / "plugins" / "modules" / "hello.py"
    module.write_text(MODULE.replace("greeting=GREETING", "greeting=GREETING + '-changed'"))
    assert bake(tmp_path, cache)["greeting"] == "again-changed"


def test_a_payload_whose_files_are_not_the_files_on_disk_is_not_kept(tmp_path):
    coll = project(tmp_path)
    cache = tmp_path / "cache"
    bake(tmp_path, cache)
    (kept,) = [path for path in _kept(cache).iterdir() if path.name.startswith("ansible_collections.ns.coll")]
    signature, payload = _ansiballz._read_kept(str(kept))
    assert str(coll / "plugins" / "module_utils") in signature["trees"]
    assert str(coll / "plugins" / "modules" / "hello.py") in signature["paths"]

    # Ansible's entry of this payload, in a run cache of its own, against a collection whose module changed since
    run = tmp_path / "run"
    run.mkdir()
    (run / kept.name.removesuffix(_ansiballz.KEPT)).write_bytes(payload)
    (coll / "plugins" / "modules" / "hello.py").write_text(MODULE + "\n# changed\n")
    elsewhere = tmp_path / "elsewhere"
    code = (
        "import json, sys\n"
        "from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder\n"
        "_AnsibleCollectionFinder(paths=[sys.argv[1]])._install()\n"
        "from ansible_collections.bakery.images.plugins.plugin_utils import _ansiballz\n"
        "print(json.dumps(_ansiballz.keep(sys.argv[2], sys.argv[3])))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "collections"), str(elsewhere), str(run)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    assert not elsewhere.exists()


def test_a_damaged_or_stale_kept_payload_is_not_restored(tmp_path):
    kept, run = tmp_path / "kept", tmp_path / "run"
    kept.mkdir()
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    signature = {
        "format": _ansiballz.FORMAT,
        "paths": [str(source)],
        "trees": [],
        "state": _ansiballz.state([str(source)], []),
    }
    (kept / "good.kept").write_bytes(json.dumps(signature).encode() + b"\npayload")
    # kept by a bakery that wrote another format, or none
    (kept / "older.kept").write_bytes(json.dumps(dict(signature, format=1)).encode() + b"\npayload")
    signature_without_format = {name: value for name, value in signature.items() if name != "format"}
    (kept / "first.kept").write_bytes(json.dumps(signature_without_format).encode() + b"\npayload")
    (kept / "damaged.kept").write_bytes(b"{not json\npayload")
    (kept / "gone.kept").write_bytes(
        json.dumps(dict(signature, paths=[str(tmp_path / "missing.py")])).encode() + b"\npayload"
    )
    assert _ansiballz.restore(str(kept), str(run)) == ["good"]
    assert (run / "good").read_bytes() == b"payload"

    source.write_text("x = 2\n")
    (run / "good").unlink()
    assert _ansiballz.restore(str(kept), str(run)) == []


def test_the_cache_is_per_ansible_core_version(monkeypatch, tmp_path):
    from ansible.release import __version__

    monkeypatch.delenv(_ansiballz.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _ansiballz.cache_dir() == str(
        tmp_path / "bakery" / "ansiballz" / ("%s-%s" % (__version__, sys.implementation.cache_tag))
    )
    monkeypatch.setenv(_ansiballz.ENV, "")
    assert _ansiballz.cache_dir() is None
    assert _ansiballz.restore() == [] and _ansiballz.keep() == []


def _payload(kept: Path) -> dict[str, bytes]:
    _signature, entry = _ansiballz._read_kept(str(kept))
    cached = pickle.loads(entry)  # noqa: S301 - written by the test's own run
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(cached.zip_data))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_kept_payloads_carry_bytecode_and_deprecations_keep_their_attribution(tmp_path):
    coll = project(tmp_path)
    # a module deprecating something itself: Ansible names the module and its collection by the frame's file name
    (coll / "plugins" / "modules" / "hello.py").write_text(
        MODULE.replace(
            "import GREETING", "import GREETING\nfrom ansible.module_utils.common.warnings import deprecate"
        ).replace(
            "    module.exit_json", "    deprecate('hello is old', version='3.0.0')\n    module.exit_json"
        )
    )
    cache = tmp_path / "cache"
    first = bake(tmp_path, cache)
    (kept,) = [path for path in _kept(cache).iterdir() if path.name.startswith("ansible_collections.ns.coll")]
    members = _payload(kept)
    utility = "ansible_collections/ns/coll/plugins/module_utils/greeting.py"
    code = marshal.loads(members[utility + "c"][16:])
    assert code == compile(members[utility], utility, "exec", dont_inherit=True)
    assert "ansible/module_utils/common/text/formatters.pyc" in members
    # sources that deprecate keep their source only: the frames of their code are named by the payload's path
    assert "ansible/module_utils/basic.py" in members and "ansible/module_utils/basic.pyc" not in members
    assert not [
        name for name in members if name.endswith(".pyc") and b"deprecat" in members[name[:-1]].lower()
    ]
    assert first["deprecations"] == [
        "[DEPRECATION WARNING]: hello is old. This feature will be removed from module 'hello' in collection "
        "'ns.coll' version 3.0.0."
    ], first

    second = bake(tmp_path, cache)
    assert "ansible_collections.ns.coll.plugins.modules.hello-ZIP_DEFLATED-none" in second["used"]
    assert second["greeting"] == "first"
    assert second["deprecations"] == first["deprecations"]


def test_a_payload_kept_without_bytecode_by_an_older_bakery_is_kept_again_with_it(tmp_path):
    project(tmp_path)
    cache = tmp_path / "cache"
    bake(tmp_path, cache)
    name = "ansible_collections.ns.coll.plugins.modules.hello-ZIP_DEFLATED-none"
    kept = _kept(cache) / (name + _ansiballz.KEPT)
    signature, entry = _ansiballz._read_kept(str(kept))
    assert signature["format"] == _ansiballz.FORMAT
    # the payload as the first bakery kept it: no bytecode, and a signature without a format (valid otherwise)
    cached = pickle.loads(entry)  # noqa: S301 - written by the test's own run
    plain = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(base64.b64decode(cached.zip_data))) as source,
        zipfile.ZipFile(plain, "w") as target,
    ):
        for info in source.infolist():
            if not info.filename.endswith(".pyc"):
                target.writestr(info, source.read(info))
    del signature["format"]
    kept.write_bytes(
        json.dumps(signature).encode()
        + b"\n"
        + pickle.dumps(dataclasses.replace(cached, zip_data=base64.b64encode(plain.getvalue())))
    )
    assert not [member for member in _payload(kept) if member.endswith(".pyc")]

    second = bake(tmp_path, cache)
    assert name not in second["used"], second  # not restored: Ansible assembled it
    assert _ansiballz._read_kept(str(kept))[0]["format"] == _ansiballz.FORMAT
    assert [member for member in _payload(kept) if member.endswith(".pyc")]
    assert name in bake(tmp_path, cache)["used"]


def test_with_bytecode_compiles_what_zipimport_would_and_leaves_the_rest(tmp_path):
    files = {
        "plain.py": b"VALUE = 40 + 2\n",
        "warns.py": b"def old():\n    Deprecate = 1\n    return Deprecate\n",
        "broken.py": b"def (:\n",
        "own.py": b"X = 1\n",
        "own.pyc": b"not ours",
        "data.txt": b"plain.py",
    }
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with zipfile.ZipFile(io.BytesIO(_ansiballz.with_bytecode(raw.getvalue()))) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
        assert {info.filename: info.compress_type for info in archive.infolist()}[
            "plain.pyc"
        ] == zipfile.ZIP_DEFLATED
    assert sorted(members) == sorted([*files, "plain.pyc"])
    assert all(members[name] == data for name, data in files.items())
    assert _ansiballz._bytecode_of("plain.pyc", members["plain.pyc"], members)
    assert not _ansiballz._bytecode_of("own.pyc", members["own.pyc"], members)
    assert not _ansiballz._bytecode_of(
        "plain.pyc", members["plain.pyc"], dict(members, **{"plain.py": b"VALUE = 1\n"})
    )

    # zipimport takes the bytecode (its code names the member, a source compiled there names the archive's path)
    payload = tmp_path / "payload.zip"
    payload.write_bytes(_ansiballz.with_bytecode(raw.getvalue()))
    sys.path.insert(0, str(payload))
    try:
        plain, warns = importlib.import_module("plain"), importlib.import_module("warns")
        assert plain.VALUE == 42 and warns.old() == 1
        assert plain.__spec__.loader.get_code("plain").co_filename == "plain.py"
        assert warns.__spec__.loader.get_code("warns").co_filename == str(payload / "warns.py")
    finally:
        sys.path.remove(str(payload))
        for name in ("plain", "warns"):
            sys.modules.pop(name, None)
