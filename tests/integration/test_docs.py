"""Every module, plugin and role of the collection is documented: ansible-doc renders each one.

The lists come from the tree (plugins/<type>/ and roles/), so a new module, filter, callback or role is
covered without touching this file.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess

import pytest
import yaml
from conftest import REPO, ansible_env

NAMESPACE = "bakery.images"
# plugin directories and the ansible-doc type of what they hold
PLUGIN_TYPES = {"modules": "module", "callback": "callback", "lookup": "lookup", "inventory": "inventory"}
# attributes every module documents (DESIGN.md: check mode, diff mode, idempotency)
ATTRIBUTES = ("check_mode", "diff_mode", "idempotent")


def plugins() -> list[tuple[str, str]]:
    found = []
    for directory, kind in PLUGIN_TYPES.items():
        for path in sorted((REPO / "plugins" / directory).glob("*.py")):
            if not path.name.startswith("_"):
                found.append((kind, path.stem))
    # filter and test plugins are documented one per function, in <name>.yml beside the plugin file
    for directory, kind in (("filter", "filter"), ("test", "test")):
        for path in sorted((REPO / "plugins" / directory).glob("*.py")):
            for name in plugin_functions(path):
                found.append((kind, name))
    return found


def plugin_functions(path) -> list[str]:
    """Names a filter/test plugin file provides (read from its filters()/tests() mapping)."""
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name in ("filters", "tests"):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Dict):
                    names += [key.value for key in inner.keys if isinstance(key, ast.Constant)]
    return names


def roles() -> list[str]:
    return sorted(path.name for path in (REPO / "roles").iterdir() if (path / "tasks").is_dir())


def ansible_doc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-doc", *args], env=ansible_env(), capture_output=True, text=True, timeout=300, check=False
    )


@functools.cache
def rendered(kind: str) -> tuple[subprocess.CompletedProcess, dict]:
    """ansible-doc's text and JSON output for every plugin (or role) of *kind*: two calls per kind."""
    names = [n for k, n in plugins() if k == kind] if kind != "role" else roles()
    fqcns = ["%s.%s" % (NAMESPACE, name) for name in names]
    text = ansible_doc("-t", kind, *fqcns)
    data = ansible_doc("-t", kind, "--json", *fqcns)
    return text, json.loads(data.stdout) if data.returncode == 0 else {}


def doc_of(kind: str, fqcn: str) -> tuple[subprocess.CompletedProcess, dict]:
    """*fqcn*'s rendering; when the call for all of *kind* failed, its own call says whose docs broke."""
    text, everything = rendered(kind)
    if text.returncode == 0 and fqcn in everything:
        return text, everything[fqcn]
    text = ansible_doc("-t", kind, fqcn)
    assert text.returncode == 0, text.stderr
    data = ansible_doc("-t", kind, "--json", fqcn)
    assert data.returncode == 0, data.stderr
    return text, json.loads(data.stdout)[fqcn]


def test_the_tree_has_modules_and_roles():
    kinds = {kind for kind, _name in plugins()}
    assert "module" in kinds and len(roles()) >= 3


@pytest.mark.parametrize("kind, name", plugins(), ids=lambda v: v)
def test_plugin_docs_render(kind, name):
    fqcn = "%s.%s" % (NAMESPACE, name)
    text, data = doc_of(kind, fqcn)
    assert re.search(r"> %s \S*%s\b" % (kind.upper(), re.escape(fqcn)), text.stdout), text.stdout[:500]
    doc = data["doc"]
    assert doc.get("short_description") and doc.get("description"), "%s: no description" % fqcn
    assert doc.get("author"), "%s: no author" % fqcn
    if kind in ("module", "filter", "test", "lookup"):
        assert data.get("examples"), "%s: no EXAMPLES" % fqcn
        assert data.get("return"), "%s: no RETURN" % fqcn
    for option, spec in (doc.get("options") or {}).items():
        assert spec.get("description"), "%s: option %s has no description" % (fqcn, option)
    if kind == "module":
        attributes = doc.get("attributes") or {}
        missing = [a for a in ATTRIBUTES if a not in attributes]
        assert not missing, "%s: attributes %s are not documented" % (fqcn, ", ".join(missing))
        for attribute in ATTRIBUTES:
            assert attributes[attribute].get("support") in ("full", "partial", "none", "N/A")
            assert attributes[attribute].get("description"), "%s: attribute %s" % (fqcn, attribute)
        examples = yaml.safe_load(data["examples"])
        assert isinstance(examples, list) and examples, "%s: EXAMPLES are not a list of tasks" % fqcn


@pytest.mark.parametrize("role", roles())
def test_role_argument_specs_render(role):
    spec_file = REPO / "roles" / role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), "role %s has no meta/argument_specs.yml" % role
    fqcn = "%s.%s" % (NAMESPACE, role)
    text, data = doc_of("role", fqcn)
    assert re.search(r"> ROLE: \S*%s\b" % re.escape(fqcn), text.stdout), text.stdout[:500]
    assert "main" in data["entry_points"], data
    specs = yaml.safe_load(spec_file.read_text())["argument_specs"]
    for entry, spec in specs.items():
        assert spec.get("short_description"), "%s entry point %s: no short_description" % (fqcn, entry)
        assert spec.get("description"), "%s entry point %s: no description" % (fqcn, entry)
        task_file = REPO / "roles" / role / "tasks" / ("%s.yml" % entry)
        assert task_file.is_file(), "%s: entry point %s has no tasks/%s.yml" % (fqcn, entry, entry)
