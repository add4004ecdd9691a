"""A builder gathers only the facts its roles name: Ansible's min subset for a role that reads only those, min and
hardware for a role that sizes itself by the processors and the memory, and that role sees what a full gathering
gives (its values in the image are the container's)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from conftest import BAKE_BASE, docker_client, remove_repositories
from test_provisioners import bake

PLAIN = """\
- name: Record the distribution and the package manager
  ansible.builtin.copy:
    content: "{{ ansible_distribution }} {{ ansible_facts['pkg_mgr'] }}\\n"
    dest: /etc/plain
    mode: "0644"
"""

SIZED = """\
- name: Size the service by the processors and the memory
  ansible.builtin.copy:
    content: "{{ ansible_processor_vcpus }} {{ ansible_facts.memtotal_mb }}\\n"
    dest: /etc/sized
    mode: "0644"
"""


def test_each_builder_gathers_the_facts_its_roles_name(bake_base, tmp_path: Path) -> None:
    repository = "bakery-test/facts-%s" % uuid.uuid4().hex[:8]
    for name, tasks in (("plain", PLAIN), ("sized", SIZED)):
        (tmp_path / "roles" / name / "tasks").mkdir(parents=True)
        # the run's own roles: a step an earlier run kept (the per-step cache) would start the builder after the
        # role, and a builder with no role left to run gathers no facts
        (tmp_path / "roles" / name / "tasks" / "main.yml").write_text(tasks + "# %s\n" % repository)
    definition = {
        "name": "facts",
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        "package_lists": "keep",
        "targets": [
            {
                "name": "plain",
                "docker": {"repository": repository, "tags": ["plain"]},
                "provisioners": [{"role": "plain"}],
            },
            {
                "name": "sized",
                "docker": {"repository": repository, "tags": ["sized"]},
                "provisioners": [{"role": "sized"}],
            },
        ],
    }
    try:
        run = bake(tmp_path, definition)
        assert run.rc == 0, run.explain()
        gathered = {
            host: result["ansible_facts"]["gather_subset"]
            for host, result in run.host_results("Gather facts on the builder").items()
            if not result.get("skipped")  # the witness host
        }
        assert gathered == {"bakery-plain-builder": ["min"], "bakery-sized-builder": ["min", "hardware"]}
        images = {
            entry["target"]: entry["id"]
            for entry in json.loads((tmp_path / "run" / "output" / "bake-manifest.json").read_text())[
                "artifacts"
            ]
        }
        client = docker_client()
        plain = client.containers.run(images["plain"], ["cat", "/etc/plain"], remove=True).decode()
        assert plain == "Debian apt\n"
        # what the role saw is what the container has: its processors, and the host's memory
        vcpus, memtotal = (
            client.containers.run(images["sized"], ["cat", "/etc/sized"], remove=True).decode().split()
        )
        assert int(vcpus) == os.cpu_count()
        with open("/proc/meminfo", encoding="ascii") as handle:
            kib = int(handle.readline().split()[1])
        assert int(memtotal) == kib // 1024
    finally:
        remove_repositories(repository)


def test_a_builder_whose_provisioners_read_no_fact_gathers_none(bake_base, tmp_path: Path) -> None:
    """A shell entry only: the builder gathers no facts; its shell says it has apt, so the package lists are
    refreshed before the provisioner and removed after it, as with facts. (A bake definition cannot name a fact of
    the builder: the plan templates it on the controller.)"""
    repository = "bakery-test/nofacts-%s" % uuid.uuid4().hex[:8]
    # the run's own entry (no step of an earlier run to start from)
    lists = "ls /var/lib/apt/lists | grep -c _Packages > /etc/lists-during || true  # %s" % repository
    definition = {
        "name": "nofacts",
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        "targets": [
            {
                "name": "bare",
                "docker": {"repository": repository, "tags": ["bare"]},
                "provisioners": [{"shell": {"inline": [lists]}}],
            },
        ],
    }
    try:
        run = bake(tmp_path, definition)
        assert run.rc == 0, run.explain()
        assert run.host_results("Gather facts on the builder")["bakery-bare-builder"].get("skipped")
        reached = run.host_results(
            "Reach the builder without gathering facts (no provisioner left reads them)"
        )
        assert reached["bakery-bare-builder"]["stdout"].strip() == "apt", reached
        refreshed = run.host_results("Refresh the package lists before the first provisioner")
        assert not refreshed["bakery-bare-builder"].get("skipped"), refreshed
        (entry,) = json.loads((tmp_path / "run" / "output" / "bake-manifest.json").read_text())["artifacts"]
        during, after = (
            docker_client()
            .containers.run(
                entry["id"],
                ["sh", "-c", "cat /etc/lists-during; ls /var/lib/apt/lists | grep -c _Packages || true"],
                remove=True,
            )
            .decode()
            .split()
        )
        # the lists were there for the provisioner, and left the image after it
        assert int(during) > 0 and int(after) == 0, (during, after)
    finally:
        remove_repositories(repository)
