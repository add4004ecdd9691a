"""Image hygiene checks in a bake: a chroot-provisioned disk whose role leaves every kind of residue fails
with every check that finds some, naming its paths, before any output or sidecar is written, and the manifest
records the failed checks; skipped by name in the bake definition, the same role's disk is made and its
checks are recorded skipped or passed, in the manifest and in the disk's sidecar, which a later bake that
finds the disk reports again. Needs the default bake's kernel rootfs in the shared cache (fixture kernel_rootfs).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import REPO, run_playbook

BAKE = REPO / "playbooks" / "bake.yml"

# written as a public role is: real commands and modules, no knowledge of bakery
RESIDUE_ROLE = """\
---
- name: Make the SSH host keys, as a role that configures sshd does
  ansible.builtin.command: ssh-keygen -A
  changed_when: true

- name: Give the machine an identity
  ansible.builtin.copy:
    dest: /etc/machine-id
    content: "0123456789abcdef0123456789abcdef\\n"
    mode: "0444"

- name: Make the application's user
  ansible.builtin.user:
    name: alice
    create_home: true
    shell: /bin/bash

- name: Leave root's shell history
  ansible.builtin.copy:
    dest: /root/.bash_history
    content: "mysql -u root -psecret app\\n"
    mode: "0600"

- name: Leave the user's Python history
  ansible.builtin.copy:
    dest: /home/alice/.python_history
    content: "import secrets\\n"
    owner: alice
    mode: "0600"

- name: Download a package without installing it  # noqa: command-instead-of-module
  ansible.builtin.command: apt-get install --download-only --yes hello
  changed_when: true

- name: Give the operators a name for reboot (a link to whatever reboot is here)
  ansible.builtin.shell: ln -sf "$(readlink -f "$(command -v reboot)")" /usr/local/sbin/safe-reboot
  changed_when: true

- name: Crash, and leave the core dump and the crash report
  ansible.builtin.shell: |
    head -c 65536 /dev/urandom > /root/core.4242
    mkdir -p /var/crash
    printf 'ProblemType: Crash\\n' > /var/crash/_usr_bin_app.0.crash
  changed_when: true

- name: Log a lot
  ansible.builtin.shell: mkdir -p /var/log/app && head -c 70M /dev/urandom > /var/log/app/debug.log
  args:
    creates: /var/log/app/debug.log

- name: Make a configuration file everyone may change
  ansible.builtin.copy:
    dest: /etc/app.conf
    content: "debug = true\\n"
    mode: "0666"
"""

# what the role leaves that bakery does not remove itself: the checks that fail, with their findings
FAILING = {
    "shell_history": ["/home/alice/.python_history", "/root/.bash_history"],
    "provisioning_leftovers": ["/usr/local/sbin/safe-reboot"],
    "core_dumps": ["/root/core.4242", "/var/crash/_usr_bin_app.0.crash"],
    # the largest first; the base's own logs (dpkg, apt) follow
    "var_log_size": ["/var/log/app/debug.log (70.0 MiB)"],
    "world_writable": ["/etc/app.conf"],
}
# what bakery makes right itself (host keys and machine-id when it prepares the tree, the apt cache and lists
# after the last provisioner), and the builder key a chroot does not have: these pass
PASSING = ["ssh_host_keys", "machine_id", "builder_key", "apt_lists"]


def definition(tmp_path: Path, cache_dir: Path) -> dict:
    tasks = tmp_path / "roles" / "residue" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(RESIDUE_ROLE)
    base = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]["base"]
    return {
        "name": "dirty",
        "cache_dir": str(cache_dir),
        "base": base,
        "provisioners": [{"role": "residue"}],
        "targets": [{"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2"]}}],
    }


def bake(tmp_path: Path, definition: dict):
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    return run_playbook(
        BAKE, tmp_path, args=["-e", "@%s" % path], env={"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    )


def statuses(results: list[dict]) -> dict[str, str]:
    return {result["name"]: result["status"] for result in results}


def test_residue_fails_every_check_at_once_and_skipped_checks_let_the_disk_be_made(
    kernel_rootfs, cache_dir, tmp_path
):
    bake_def = definition(tmp_path, cache_dir)
    output = tmp_path / "output"
    disk = output / "dirty.qcow2"

    first = bake(tmp_path, bake_def)
    assert first.rc != 0, first.stdout[-4000:]
    failure = first.task_result("Fail for the targets that failed")["msg"]
    assert "target disk failed in capture" in failure, failure
    assert "hygiene: 5 checks failed for disk %s (%s)" % (disk, ", ".join(FAILING)) in failure, failure
    for name, findings in FAILING.items():
        assert "\n  %s: %s" % (name, ", ".join(findings)) in failure, failure
    # no output and no sidecar: the next bake cannot find a disk that failed
    assert sorted(p.name for p in output.iterdir()) == ["bake-manifest.json"]
    manifest = json.loads((output / "bake-manifest.json").read_text())
    assert manifest["artifacts"] == []
    (rejected,) = manifest["hygiene_failures"]
    assert (rejected["target"], rejected["type"], rejected["failed"]) == ("disk", "qemu", list(FAILING))
    checks = {result["name"]: result for result in rejected["hygiene"]}
    assert statuses(rejected["hygiene"]) == {
        **{name: "failed" for name in FAILING},
        **{name: "passed" for name in PASSING},
    }
    for name, findings in FAILING.items():
        shown = checks[name]["findings"]
        assert (shown[:1] if name == "var_log_size" else shown) == findings and checks[name]["fix"], checks[
            name
        ]
    assert checks["var_log_size"]["detail"].startswith("/var/log holds 7"), checks["var_log_size"]
    bake_id = first.task_result("Plan the bake")["plan"]["bake_id"]
    assert not list((cache_dir / "qemu").glob("%s-*" % bake_id)), "the chroot work directory was left"

    # the same role, the failing checks skipped for the whole bake: the disk is made, the results recorded
    bake_def["hygiene"] = {"skip": list(FAILING)}
    second = bake(tmp_path, bake_def)
    assert second.rc == 0, second.explain()
    manifest = json.loads((output / "bake-manifest.json").read_text())
    assert "hygiene_failures" not in manifest
    (entry,) = manifest["artifacts"]
    assert entry["path"] == str(disk) and disk.is_file()
    assert statuses(entry["hygiene"]) == {
        **{name: "skipped" for name in FAILING},
        **{name: "passed" for name in PASSING},
    }
    sidecar = json.loads((output / "dirty.qcow2.bakery.json").read_text())
    assert sidecar["hygiene"] == entry["hygiene"]

    # found by a later bake that changes nothing: the results its build recorded
    third = bake(tmp_path, bake_def)
    assert third.rc == 0, third.explain()
    assert third.stats["bakery-disk"]["changed"] == 0, third.stats
    assert json.loads((output / "bake-manifest.json").read_text()) == manifest
    found = third.task_result("Look for the disk with this fingerprint")
    assert found["found"] and found["hygiene"] == entry["hygiene"]
