"""The execution environment definition: ansible-builder makes its build context offline, and an EE that
includes bakery.images gets the collection's Python and system packages by introspection."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from conftest import COLLECTIONS, REPO


def builder(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ansible_builder", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_ansible_builder_creates_the_build_context(tmp_path):
    context = tmp_path / "context"
    run = builder(
        "create",
        "-f",
        str(REPO / "execution-environment.yml"),
        "-c",
        str(context),
        "--output-filename",
        "Containerfile",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    containerfile = (context / "Containerfile").read_text()
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    assert 'ARG EE_BASE_IMAGE="%s"' % definition["images"]["base_image"]["name"] in containerfile
    assert "ansible-galaxy collection install" in containerfile and "introspect" in containerfile
    # a Debian base: apt-get drives ansible-builder's package installs, after an update of the lists
    assert 'ARG PKGMGR="/usr/bin/apt-get"' in containerfile
    assert containerfile.index("apt-get update") < containerfile.index("RUN $PKGMGR install $PYPKG -y")
    assert 'APT::Install-Recommends "false"' in containerfile
    # the collection requirements, the Python requirements and bindep.txt go into the context unchanged
    for source, copied in (
        ("requirements.yml", "requirements.yml"),
        ("requirements.txt", "requirements.txt"),
        ("bindep.txt", "bindep.txt"),
    ):
        assert (context / "_build" / copied).read_text() == (REPO / source).read_text()


def test_collection_requirements_cover_galaxy_dependencies():
    requirements = yaml.safe_load((REPO / "requirements.yml").read_text())["collections"]
    names = {entry["name"] for entry in requirements}
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    missing = set(galaxy.get("dependencies") or {}) - names
    assert not missing, "requirements.yml lacks %s" % ", ".join(sorted(missing))
    # and the collection itself
    assert any(galaxy["repository"].rstrip("/") in name for name in names), names


def test_an_ee_with_bakery_gets_its_python_and_system_packages(tmp_path):
    """What ansible-builder's introspection finds in the installed collection (meta/execution-environment.yml)."""
    context = tmp_path / "context"
    assert (
        builder("create", "-f", str(REPO / "execution-environment.yml"), "-c", str(context)).returncode == 0
    )
    script = context / "_build" / "scripts" / "introspect.py"
    run = subprocess.run(
        [sys.executable, str(script), "introspect", str(COLLECTIONS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    found = yaml.safe_load(run.stdout)
    python = [line.split("#")[0].strip() for line in found["python"] if "bakery.images" in line]
    system = [line.split("#")[0].strip() for line in found["system"] if "bakery.images" in line]
    assert "docker>=7.0" in python
    # the SBOM libraries, with the CycloneDX JSON schema validation verify_artifacts uses
    assert "cyclonedx-python-lib[json-validation]>=8.0" in python and "spdx-tools>=0.8" in python, python
    assert not [line for line in python if line.startswith("ansible")], python  # left to ansible_core
    assert "mmdebstrap [platform:dpkg]" in system
    assert "qemu-utils [platform:dpkg]" in system and "grub-efi-amd64-bin [platform:dpkg]" in system


# Other collections' content that the collection uses: module and action names (task keys), connection
# plugins (connection: values, also inside add_host and set_fact), and filters or tests inside templates.
FQCN = re.compile(r"^([a-z0-9_]+)\.([a-z0-9_]+)\.[a-z0-9_]+$")
IMPORTED = re.compile(r"\bansible_collections\.([a-z0-9_]+)\.([a-z0-9_]+)\.plugins\b")
IN_TEMPLATE = re.compile(r"(?:\||\bis\s+not|\bis)\s*([a-z0-9_]+)\.([a-z0-9_]+)\.[a-z0-9_]+")


def collections_used(node, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            match = FQCN.match(str(key))
            if match:
                found.add("%s.%s" % match.groups())
            if key in ("connection", "ansible_connection") and isinstance(value, str) and FQCN.match(value):
                found.add("%s.%s" % FQCN.match(value).groups())
            collections_used(value, found)
    elif isinstance(node, list):
        for item in node:
            collections_used(item, found)
    elif isinstance(node, str):
        found.update("%s.%s" % m for m in IN_TEMPLATE.findall(node))


def test_every_collection_the_content_uses_is_a_dependency():
    """An EE or a Galaxy install brings galaxy.yml's dependencies, and only those: a connection plugin of a
    collection that is not listed fails the bake at the first task that needs it."""
    found: set[str] = set()
    for path in [
        *REPO.glob("roles/*/tasks/*.yml"),
        *REPO.glob("roles/*/handlers/*.yml"),
        *REPO.glob("playbooks/*.yml"),
    ]:
        collections_used(yaml.safe_load(path.read_text()), found)
    for path in REPO.glob("plugins/**/*.py"):  # plugins that import or extend another collection's code
        found.update("%s.%s" % m for m in IMPORTED.findall(path.read_text()))
    found -= {"ansible.builtin", "bakery.images"}
    assert "community.general" in found and "community.docker" in found, found  # the scan sees them
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert found <= set(galaxy.get("dependencies") or {}), "galaxy.yml lacks %s" % sorted(
        found - set(galaxy.get("dependencies") or {})
    )


def make_variable(name: str) -> set[str]:
    """The words of Makefile variable *name* (its := line, continuations and += lines)."""
    words: list[str] = []
    continuing = False
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^%s\s*(?::=|\+=)(.*)$" % re.escape(name), line)
        if match or continuing:
            text = match.group(1) if match else line
            words += text.rstrip("\\").split()
            continuing = text.endswith("\\")
    return {word for word in words if not word.startswith("$(")}


def test_bindep_lists_what_make_bake_installs_but_the_docker_engine():
    """The EE runs bakes as a Debian build host does: the same packages, but no Docker engine (a docker
    target talks to one elsewhere)."""
    bindep = {
        line.split()[0]
        for line in (REPO / "bindep.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    engine = {"docker.io", "iptables", "cgroupfs-mount"}
    apt_bake = make_variable("APT_BAKE")
    assert engine <= apt_bake and "qemu-utils" in apt_bake, apt_bake
    assert bindep == apt_bake - engine
