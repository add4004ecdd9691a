"""Every kind of provisioner on every kind of builder: one bake with a Docker target (``docker``), a disk
provisioned in the isolated root filesystem (``rootfs``) and a disk provisioned in a TCG VM (``vm``).

Each provisioner appends a line to ``/prov.log`` in the builder, so each output tells which provisioners ran
there and in which order: a role, a playbook of the user's (one play for every builder, one for ``hosts:
docker`` only, a template beside it), inline commands, a script for the Docker target alone, commands run as a
user the role made, an uploaded tree, a Puppet manifest with a module, a fact and hiera data (in the chroot,
which gets puppet-agent from Debian first),
commands on the controller, a reboot of the VM (``expect_disconnect``) and the target's own provisioners,
with per-target ``vars``. ``/prov.log`` is also downloaded into the output directory and listed in the
manifest. Then a second run changes nothing, and one byte more in the Docker target's script rebuilds that
target alone. The disks are read with debugfs, never mounted.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from conftest import BAKE_BASE, docker_client, remove_repositories
from test_provisioners import bake as bake_in
from test_qemu import debugfs

ROLE = """
- name: Make the user the shell provisioner runs as
  ansible.builtin.user:
    name: baker
    shell: /bin/sh
- name: Log that the role ran, with its variable
  ansible.builtin.shell: echo "role {{ greeting }} {{ bakery_target_name }} {{ bakery_builder_type }}" >> /prov.log
  changed_when: true
"""

PLAYBOOK = """
- name: Every builder
  hosts: all
  gather_facts: false
  tasks:
    - name: Log the playbook
      ansible.builtin.shell: echo "playbook {{ colour }} {{ bakery_target_name }}" >> /prov.log
      changed_when: true
    - name: A template beside the playbook
      ansible.builtin.template:
        src: note.j2
        dest: /etc/playbook-note
        mode: "0644"
- name: Docker builders only
  hosts: docker
  gather_facts: false
  tasks:
    - name: Log the docker-only play
      ansible.builtin.shell: echo "playbook docker-only" >> /prov.log
      changed_when: true
"""

MANIFEST = """
include motd_line
exec { 'log puppet':
  command => "/bin/sh -c 'echo puppet ${facts['bakery_role']} ${lookup('colour')} >> /prov.log'",
}
package { 'tree': ensure => installed }
file { '/etc/puppet-was-here':
  content => "yes\\n",
  require => Package['tree'],
}
"""


def write_files(directory: Path) -> None:
    role = directory / "roles" / "logrole" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(ROLE)
    site = directory / "site"
    (site / "templates").mkdir(parents=True)
    (site / "site.yml").write_text(PLAYBOOK)
    (site / "templates" / "note.j2").write_text("note for {{ bakery_target_name }}\n")
    scripts = directory / "scripts"
    scripts.mkdir()
    (scripts / "docker-only.sh").write_text('echo "script docker-only" >> /prov.log\n')
    tree = directory / "tree" / "bin" / "tool"
    tree.parent.mkdir(parents=True)
    tree.write_text("#!/bin/sh\necho tool\n")
    tree.chmod(0o755)
    puppet = directory / "puppet"
    (puppet / "modules" / "motd_line" / "manifests").mkdir(parents=True)
    (puppet / "modules" / "motd_line" / "manifests" / "init.pp").write_text(
        "class motd_line { file { '/etc/motd-puppet': content => \"from a module\\n\" } }\n"
    )
    (puppet / "site.pp").write_text(MANIFEST)
    (puppet / "hiera" / "data").mkdir(parents=True)
    (puppet / "hiera" / "hiera.yaml").write_text(
        "---\nversion: 5\ndefaults:\n  datadir: data\n  data_hash: yaml_data\nhierarchy:\n"
        "  - name: common\n    path: common.yaml\n"
    )
    (puppet / "hiera" / "data" / "common.yaml").write_text("---\ncolour: purple\n")


def definition(directory: Path, cache_dir: str, repo: str) -> dict:
    return {
        "name": "kinds",
        "cache_dir": cache_dir,
        "output_dir": str(directory / "out"),
        "base": dict(BAKE_BASE),
        "provisioners": [
            {"role": "logrole", "vars": {"greeting": "hello"}},
            {"name": "site", "playbook": "site/site.yml", "vars": {"colour": "blue"}},
            {
                "name": "inline",
                "shell": {
                    "inline": ['echo "inline $GREETING" >> /prov.log'],
                    # RUN: this run's own fingerprints (an engine may hold an image of an earlier run's)
                    "environment": {"GREETING": "hi", "RUN": uuid.uuid4().hex},
                },
            },
            {"name": "docker-only", "shell": {"script": "scripts/docker-only.sh"}, "only": ["docker"]},
            {
                "name": "as-baker",
                "shell": {"inline": ['echo "user $(id -un)" > /var/tmp/shell-user'], "user": "baker"},
            },
            {"name": "who", "shell": {"inline": ['echo "as $(cat /var/tmp/shell-user)" >> /prov.log']}},
            {"name": "tree", "file": {"src": "tree", "dest": "/opt"}},
            {
                "name": "puppet",
                "puppet": {
                    "manifest": "puppet/site.pp",
                    "module_paths": ["puppet/modules"],
                    "hiera_config": "puppet/hiera/hiera.yaml",
                    "facts": {"bakery_role": "web"},
                },
                # one target is enough (the puppet-agent install is the slowest step of the bake)
                "only": ["rootfs"],
            },
            {
                "name": "controller",
                "local": {
                    "inline": ['echo "local $BAKERY_TARGET_NAME $BAKERY_TARGET_TYPE" >> "$LOCAL_LOG"'],
                    "environment": {"LOCAL_LOG": str(directory / "local.log")},
                },
            },
            {
                "name": "reboot",
                "shell": {
                    "inline": [
                        'echo "boot $(cat /proc/sys/kernel/random/boot_id)" >> /prov.log',
                        "systemctl reboot",
                    ],
                    "expect_disconnect": True,
                },
                "only": ["vm"],
            },
            {
                "name": "after-reboot",
                "shell": {"inline": ['echo "boot $(cat /proc/sys/kernel/random/boot_id)" >> /prov.log']},
                "only": ["vm"],
            },
            {"name": "fetch-log", "file": {"src": "/prov.log", "dest": "prov.log", "direction": "download"}},
        ],
        "targets": [
            {"name": "docker", "docker": {"repository": repo, "tags": ["latest"]}},
            {
                "name": "rootfs",
                "qemu": {
                    "provision": "chroot",
                    "name": "kinds-rootfs",
                    "formats": ["qcow2"],
                    "disk_size": "2G",
                },
                "vars": {"greeting": "bonjour", "colour": "green"},
            },
            {
                "name": "vm",
                "qemu": {
                    "provision": "vm",
                    "name": "kinds-vm",
                    "formats": ["qcow2"],
                    "disk_size": "2G",
                    "vm": {"accelerator": "tcg", "memory": 1024, "cpus": 1, "boot_timeout": 900},
                },
                "provisioners": [{"name": "own", "shell": {"inline": ["echo own vm >> /prov.log"]}}],
            },
        ],
    }


def bake(directory: Path, bake_definition: dict, *args: str):
    return bake_in(directory, bake_definition, *args, timeout=2400)


def disk_file(disk: Path, path: str, scratch: Path) -> str:
    raw = scratch / (disk.stem + ".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True, capture_output=True)
    try:
        out = debugfs(raw, "cat %s" % path)
        return out.stdout if out.stdout or "not found" not in out.stderr else "<absent>"
    finally:
        raw.unlink()


def image_file(image: str, path: str) -> str:
    return docker_client().containers.run(image, ["cat", path], remove=True).decode()


def changed(run) -> dict[str, int]:
    targets = ("bakery-docker", "bakery-rootfs", "bakery-vm")
    return {host: stats["changed"] for host, stats in run.stats.items() if host in targets}


def test_every_kind_runs_where_selected_in_order_on_every_builder(bake_base, tmp_path, docker_leftovers):
    repo = "bakery-test/kinds-%s" % uuid.uuid4().hex[:8]
    write_files(tmp_path)
    spec = definition(tmp_path, bake_base["cache_dir"], repo)
    try:
        first = bake(tmp_path, spec)
        assert first.rc == 0, first.explain()
        manifest = json.loads((tmp_path / "out" / "bake-manifest.json").read_text())
        artifacts = {entry["target"]: entry for entry in manifest["artifacts"]}

        logs = {"docker": image_file("%s:latest" % repo, "/prov.log")}
        for name in ("rootfs", "vm"):
            logs[name] = disk_file(Path(artifacts[name]["path"]), "/prov.log", tmp_path)
        common = ["inline hi", "as user baker"]
        assert logs["docker"].splitlines() == [
            "role hello docker container",
            "playbook blue docker",
            "playbook docker-only",
            *common[:1],
            "script docker-only",
            *common[1:],
        ], logs["docker"]
        assert logs["rootfs"].splitlines() == [
            "role bonjour rootfs rootfs",
            "playbook green rootfs",
            *common,
            "puppet web purple",
        ], logs["rootfs"]
        vm = logs["vm"].splitlines()
        assert vm[:4] == ["role hello vm vm", "playbook blue vm", *common], vm
        assert vm[4].startswith("boot ") and vm[5].startswith("boot ") and vm[4] != vm[5], vm
        assert vm[6:] == ["own vm"], vm

        # the template beside the playbook, the uploaded tree, the puppet module's file, the package it installed
        assert image_file("%s:latest" % repo, "/etc/playbook-note") == "note for docker\n"
        assert image_file("%s:latest" % repo, "/opt/tree/bin/tool") == "#!/bin/sh\necho tool\n"
        rootfs_disk = Path(artifacts["rootfs"]["path"])
        assert disk_file(rootfs_disk, "/etc/playbook-note", tmp_path) == "note for rootfs\n"
        assert disk_file(rootfs_disk, "/etc/motd-puppet", tmp_path) == "from a module\n"
        assert disk_file(rootfs_disk, "/etc/puppet-was-here", tmp_path) == "yes\n"
        assert "\nPackage: tree\nStatus: install ok installed\n" in disk_file(
            rootfs_disk, "/var/lib/dpkg/status", tmp_path
        )
        assert disk_file(Path(artifacts["vm"]["path"]), "/etc/motd-puppet", tmp_path) == "<absent>"

        # commands on the controller, once per target
        assert sorted((tmp_path / "local.log").read_text().splitlines()) == [
            "local docker docker",
            "local rootfs qemu",
            "local vm qemu",
        ]

        # the log, downloaded before the capture, is what the image holds; the manifest lists it
        for name in ("docker", "rootfs", "vm"):
            fetched = tmp_path / "out" / "downloads" / name / "prov.log"
            # the VM's own provisioner runs after the bake's, the download among them
            own = "own vm\n" if name == "vm" else ""
            assert fetched.read_text() + own == logs[name], name
            (download,) = artifacts[name]["downloads"]
            assert download["source"] == "/prov.log" and download["path"] == str(fetched), download
            assert download["type"] == "file" and len(download["sha256"]) == 64, download

        second = bake(tmp_path, spec)
        assert second.rc == 0, second.explain()
        assert changed(second) == {"bakery-docker": 0, "bakery-rootfs": 0, "bakery-vm": 0}, second.stats
        manifest_again = json.loads((tmp_path / "out" / "bake-manifest.json").read_text())
        assert manifest_again == manifest

        # one byte more in the script only the docker target runs: only that target is built again
        script = tmp_path / "scripts" / "docker-only.sh"
        script.write_text(script.read_text() + "\n")
        third = bake(tmp_path, spec)
        assert third.rc == 0, third.explain()
        assert "bakery-docker-builder" in third.stats, third.stats
        assert "bakery-rootfs-builder" not in third.stats and "bakery-vm-builder" not in third.stats
    finally:
        remove_repositories(repo)
