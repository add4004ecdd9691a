"""Fingerprints change with content, variables and base; never with mtimes or key order."""

from __future__ import annotations

import os

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _fingerprint as fp


def make_role(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


ROLE = {"tasks/main.yml": "- name: x\n  ansible.builtin.debug:\n", "templates/page.j2": "{{ page }}\n"}


def test_same_content_same_digest_in_different_places(tmp_path):
    a = make_role(tmp_path / "a", ROLE)
    b = make_role(tmp_path / "b", ROLE)
    assert fp.digest_tree(str(a)) == fp.digest_tree(str(b))


def test_digest_ignores_mtimes(tmp_path):
    role = make_role(tmp_path / "r", ROLE)
    before = fp.digest_tree(str(role))
    for path in role.rglob("*"):
        os.utime(path, (1, 1))
    assert fp.digest_tree(str(role)) == before


def test_digest_changes_with_content_names_and_exec_bit(tmp_path):
    role = make_role(tmp_path / "r", ROLE)
    base = fp.digest_tree(str(role))
    (role / "templates/page.j2").write_text("{{ page }}!\n")
    changed_content = fp.digest_tree(str(role))
    assert changed_content != base
    (role / "templates/page.j2").rename(role / "templates/other.j2")
    renamed = fp.digest_tree(str(role))
    assert renamed != changed_content
    os.chmod(role / "templates/other.j2", 0o755)
    assert fp.digest_tree(str(role)) != renamed


def test_digest_skips_bytecode(tmp_path):
    role = make_role(tmp_path / "r", ROLE)
    before = fp.digest_tree(str(role))
    make_role(role, {"tasks/__pycache__/m.cpython-311.pyc": "junk", "tasks/x.pyc": "junk"})
    assert fp.digest_tree(str(role)) == before


def test_value_digest_ignores_key_order():
    assert fp.digest_value({"a": 1, "b": [1, 2]}) == fp.digest_value({"b": [1, 2], "a": 1})
    assert fp.digest_value({"a": 1}) != fp.digest_value({"a": 2})
    assert fp.digest_value([1, 2]) != fp.digest_value([2, 1])


def test_fingerprint_changes_with_each_input():
    inputs = {"source": "s1", "role:web": "r1", "vars": "v1"}
    base = fp.fingerprint(inputs)
    assert fp.fingerprint(dict(reversed(list(inputs.items())))) == base
    for key in inputs:
        assert fp.fingerprint(dict(inputs, **{key: "other"})) != base


def test_changed_inputs_names_what_differs():
    old = {"source": "s", "vars": "v", "role:a": "1"}
    new = {"source": "s", "vars": "w", "role:b": "1"}
    assert fp.changed_inputs(old, new) == ["role:a", "role:b", "vars"]
    assert fp.changed_inputs(None, new) == sorted(new)
    assert fp.changed_inputs(new, new) == []


@pytest.mark.parametrize("text", [None, "", "not json", "[1]"])
def test_parse_inputs_tolerates_garbage(text):
    assert fp.parse_inputs(text) == {}


def test_ignore_rules_like_dockerignore(tmp_path):
    rules = fp.IgnoreRules(["# comment", "*.log", "build", "!build/keep.txt", "**/secret", "/tmp"])
    assert rules("a.log")
    assert not rules("dir/a.log")  # like Docker: patterns are anchored at the context root
    assert rules("build/out.bin")
    assert not rules("build/keep.txt")
    assert rules("deep/down/secret")
    assert rules("tmp/x")
    assert not rules("Dockerfile")
    assert fp.IgnoreRules(["src/*/gen"])("src/a/gen/x.c")
    assert not fp.IgnoreRules(["src/*/gen"])("src/a/b/gen")
    assert fp.IgnoreRules(["file?.txt"])("file1.txt")


def test_dockerignore_changes_the_context_digest_only_for_kept_files(tmp_path):
    ctx = make_role(tmp_path / "ctx", {"Dockerfile": "FROM x\n", "app.py": "print(1)\n", "debug.log": "a"})
    rules = fp.IgnoreRules(["*.log"])
    before = fp.digest_tree(str(ctx), ignore=rules)
    (ctx / "debug.log").write_text("b")
    assert fp.digest_tree(str(ctx), ignore=rules) == before
    (ctx / "app.py").write_text("print(2)\n")
    assert fp.digest_tree(str(ctx), ignore=rules) != before
