"""The execution environment definition: ansible-builder makes its build context offline, and an EE that
includes bakery.images gets the collection's Python and system packages by introspection."""

from __future__ import annotations

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
    assert not [line for line in python if line.startswith("ansible")], python  # left to ansible_core
    assert "mmdebstrap" in system
    # a package for each platform family where the names differ
    assert "qemu-utils [platform:dpkg]" in system and "qemu-img [platform:rpm]" in system
