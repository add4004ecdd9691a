"""bakery.images.qemu_vm on real VMs under TCG: the watchdog after a SIGKILLed ansible-playbook, a VM kept
after the run (on_error keep) until the janitor stops it, and a boot that times out. Booting to an SSH login,
provisioning over SSH and the clean stop are tested by the qemu target's ``provision: vm`` bake
(test_qemu.py), which does all three with this module.

The test disk is made here without loop devices or mounts: the rootfs that the default bake's disk target
built with bakery.images.rootfs (kernel, systemd, sshd, python3; shared with the other tests), the test's
public key and a DHCP network config added to the unpacked tree, a small initramfs, then ``mkfs.ext4 -d``
into a raw file booted with direct kernel boot.  It is cached in qemu-vm/ of the stream's cache directory (keyed
by the rootfs fingerprint and the preparation below).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import ansible_env, run_playbook

LOCAL = ["-i", "localhost,"]
PLAY_HEADER = """\
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""

NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
# units a throw-away builder does not need; fewer units, faster boots under TCG
MASKED = (
    "getty.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
)
# bump when the preparation below changes, so that the cached disk is made again
PREPARATION = "3"
APPEND = "root=/dev/vda rw console=ttyS0"


def _sh(*argv: str, **kwargs) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, "%s failed: %s" % (" ".join(argv), proc.stderr[-2000:])
    return proc.stdout


def _prepare_tree(tree: Path, public_key: str) -> None:
    """Make the unpacked rootfs bootable for the test: key, network, fstab, fewer units, small initrd."""
    ssh = tree / "root" / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(public_key + "\n")
    (ssh / "authorized_keys").chmod(0o600)
    (tree / "etc/systemd/network/80-dhcp.network").write_text(NETWORK)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    for unit in MASKED:
        link = tree / "etc/systemd/system" / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    (tree / "etc/fstab").write_text("/dev/vda / ext4 rw 0 1\n")
    (tree / "etc/hostname").write_text("bakery-test\n")
    # an initramfs with only what this disk needs boots much faster than Debian's "most" modules
    (tree / "etc/initramfs-tools/conf.d/bakery-test.conf").write_text("MODULES=list\n")
    with open(tree / "etc/initramfs-tools/modules", "a", encoding="ascii") as modules:
        modules.write("virtio_pci\nvirtio_blk\n")
    _sh("chroot", str(tree), "update-initramfs", "-u", "-k", "all")


@pytest.fixture(scope="session")
def test_disk(cache_dir: Path, kernel_rootfs: Path) -> dict:
    """{disk, kernel, initrd, private_key, public_key}: a raw ext4 disk that boots to sshd."""
    base = cache_dir / "qemu-vm"
    # the default bake's disk target's rootfs: a kernel, systemd, sshd and python3
    rootfs = kernel_rootfs
    fingerprint = json.loads(Path(str(rootfs) + ".bakery.json").read_text())["fingerprint"]
    key = hashlib.sha256((fingerprint + PREPARATION).encode()).hexdigest()[:12]
    out = base / ("disk-" + key)
    if not (out / "disk.raw").exists():
        work = base / (".disk-%s-%s" % (key, uuid.uuid4().hex[:6]))
        tree = work / "tree"
        tree.mkdir(parents=True)
        try:
            _sh("tar", "-xf", str(rootfs), "-C", str(tree), "--numeric-owner")
            _sh(
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "bakery-test",
                "-f",
                str(work / "id_ed25519"),
            )
            _prepare_tree(tree, (work / "id_ed25519.pub").read_text().strip())
            kernel = sorted((tree / "boot").glob("vmlinuz-*"))[-1]
            shutil.copyfile(kernel, work / "vmlinuz")
            shutil.copyfile(tree / "boot" / kernel.name.replace("vmlinuz", "initrd.img"), work / "initrd.img")
            _sh("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(work / "disk.raw"), "1G")
            shutil.rmtree(tree)
            if out.exists():
                shutil.rmtree(out)
            work.rename(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "disk": out / "disk.raw",
        "kernel": str(out / "vmlinuz"),
        "initrd": str(out / "initrd.img"),
        "private_key": str(out / "id_ed25519"),
        "public_key": (out / "id_ed25519.pub").read_text().strip(),
    }


def processes_named(name: str) -> list[int]:
    """Processes whose command line names *name* (qemu's -name carries the bake id and target)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if name.encode() in argv:
            found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float) -> float | None:
    """Seconds until *predicate* held, or None if it did not within *timeout*."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def kill_leftovers(name: str) -> None:
    for pid in processes_named(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bake_id() -> str:
    return "test-" + uuid.uuid4().hex[:8]


START_TASK = """\
    - name: start
      bakery.images.qemu_vm:
        disk: "{{ disk }}"
        bake_id: "{{ bake_id }}"
        target: "{{ target | default('web') }}"
        accelerator: tcg
        cpu: qemu64
        kernel: "{{ kernel }}"
        initrd: "{{ initrd | default(omit) }}"
        append: "{{ append }}"
        cloud_init: "{{ cloud_init | default(false) }}"
        private_key: "{{ private_key | default(omit) }}"
        overlay: "{{ overlay | default(true) }}"
        firmware: "{{ firmware | default('bios') }}"
        memory: "{{ memory | default(1024) }}"
        cpus: "{{ cpus | default(2) }}"
        wait_for_ssh: "{{ wait_for_ssh | default(true) }}"
        boot_timeout: "{{ boot_timeout | default(600) }}"
      register: vm
"""

KILLED_PLAYBOOK = (
    PLAY_HEADER
    + """\
  tasks:
"""
    + START_TASK
    + """\
    - name: tell the test
      ansible.builtin.copy:
        dest: "{{ marker }}"
        content: "{{ vm | to_json }}"
    - name: provisioning that takes long
      ansible.builtin.pause:
        minutes: 10
"""
)


def kill_in_directory(directory: Path) -> None:
    """SIGKILL every process whose working directory is *directory*."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") == str(directory):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def test_sigkilled_playbook_leaves_no_qemu(test_disk: dict, tmp_path: Path) -> None:
    """UEFI, an overlay and a cloud-init seed; the VM is not waited for: the watchdog is under test."""
    ident = bake_id()
    name = "bakery-%s-web" % ident
    marker = tmp_path / "vm.json"
    extra = {
        "bake_id": ident,
        "disk": str(test_disk["disk"]),
        "kernel": test_disk["kernel"],
        "initrd": test_disk["initrd"],
        "append": APPEND,
        "cloud_init": True,
        "firmware": "uefi",
        "wait_for_ssh": False,
        "marker": str(marker),
    }
    (tmp_path / "playbook.yml").write_text(KILLED_PLAYBOOK)
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    disk_mtime = test_disk["disk"].stat().st_mtime_ns
    playbook = subprocess.Popen(
        ["ansible-playbook", *LOCAL, "playbook.yml", "-e", "@vars.json"],
        cwd=tmp_path,
        env=ansible_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: marker.exists() or playbook.poll() is not None, 300) is not None
        assert marker.exists(), playbook.communicate()[0][-4000:]
        vm = json.loads(marker.read_text())["vm"]
        workdir = Path(vm["workdir"])
        assert processes_named(name) == [vm["pid"]]
        state = json.loads((workdir / "state.json").read_text())
        assert (state["bake_id"], state["target"], state["pid"]) == (ident, "web", vm["pid"])
        assert state["watch_pid"] == playbook.pid  # the main ansible-playbook, found by the module
        assert state["started_at"]
        assert sorted(p.name for p in workdir.iterdir()) == [
            "efivars.fd",
            "id_ed25519",
            "id_ed25519.pub",
            "overlay.qcow2",
            "qemu.log",
            "qmp.sock",
            "seed.img",
            "serial.log",
            "state.json",
        ]
        assert (workdir / "id_ed25519").stat().st_mode & 0o777 == 0o600

        os.kill(playbook.pid, signal.SIGKILL)  # no cleanup play, no handler, nothing runs after this
        gone = wait_until(lambda: not processes_named(name), 15)
        assert gone is not None, "qemu outlived the killed ansible-playbook"
        assert gone < 5, "the watchdog took %.1f s" % gone
        assert wait_until(lambda: not workdir.exists(), 5) is not None
        assert test_disk["disk"].stat().st_mtime_ns == disk_mtime  # the overlay took the writes
    finally:
        try:
            os.killpg(playbook.pid, signal.SIGKILL)  # the orphaned workers of the killed playbook
        except ProcessLookupError:
            pass
        # a worker in a session of its own escapes killpg (one was left blocked on a pipe after a CI run): every
        # process still working in this test's directory goes too
        kill_in_directory(tmp_path)
        playbook.communicate()
        kill_leftovers(name)


TIMEOUT_PLAYBOOK = (
    PLAY_HEADER
    + """\
  tasks:
"""
    + START_TASK.replace("      register: vm\n", "      register: vm\n      ignore_errors: true\n")
)


def test_boot_timeout_fails_with_the_serial_console_and_leaves_nothing(
    test_disk: dict, tmp_path: Path
) -> None:
    """Without its initramfs the kernel cannot find its virtio root disk: it panics and SSH never answers."""
    ident = bake_id()
    name = "bakery-%s-web" % ident
    extra = {
        "bake_id": ident,
        "disk": str(test_disk["disk"]),
        "kernel": test_disk["kernel"],
        "append": APPEND,
        "memory": 256,
        "cpus": 1,
        "boot_timeout": 20,
    }
    try:
        run = run_playbook(TIMEOUT_PLAYBOOK, tmp_path, extra_vars=extra, args=LOCAL, timeout=300)
        assert run.rc == 0, run.explain()
        result = run.task_result("start")
        assert result["failed"] is True
        msg = result["msg"]
        assert msg.startswith("qemu_vm: no SSH server answered on 127.0.0.1:"), msg
        assert "boot_timeout 20 s" in msg and "the VM was stopped" in msg
        serial = result["serial_tail"]
        assert serial and any(re.match(r"\[\s*\d+\.\d+\]", line) for line in serial), serial
        assert serial[-1] in msg  # the console's last words are in the message users read
        assert processes_named(name) == []
        workdir = Path(os.environ.get("TMPDIR", "/tmp")) / ("bakery-vm-%s-web" % ident)
        assert not workdir.exists()
    finally:
        kill_leftovers(name)


KEPT_PLAYBOOK = (
    PLAY_HEADER
    + """\
  tasks:
"""
    + START_TASK
    + """\
    - name: keep
      bakery.images.qemu_vm:
        action: keep
        workdir: "{{ vm.vm.workdir }}"
    - name: keep again
      bakery.images.qemu_vm:
        action: keep
        workdir: "{{ vm.vm.workdir }}"
"""
)


def test_a_kept_vm_outlives_the_run_until_the_janitor_stops_it(test_disk: dict, tmp_path: Path) -> None:
    """on_error keep's mechanism: the watchdog lets go of a kept VM; the janitor (by bake id) stops it."""
    ident = bake_id()
    name = "bakery-%s-web" % ident
    extra = {
        "bake_id": ident,
        "disk": str(test_disk["disk"]),
        "kernel": test_disk["kernel"],
        "initrd": test_disk["initrd"],
        "append": APPEND,
        "wait_for_ssh": False,
        "memory": 256,
        "cpus": 1,
    }
    try:
        run = run_playbook(KEPT_PLAYBOOK, tmp_path, extra_vars=extra, args=LOCAL)
        assert run.rc == 0, run.explain()
        assert run.task_result("keep")["changed"] and not run.task_result("keep again")["changed"]
        workdir = Path(run.task_result("start")["vm"]["workdir"])
        time.sleep(4)  # the watchdog polls: it would have stopped the VM by now
        assert len(processes_named(name)) == 1, "the kept VM stopped with the run"
        assert workdir.is_dir()

        bake = {"name": "kept", "output_dir": str(tmp_path / "output"), "targets": []}
        (tmp_path / "bake.json").write_text(json.dumps({"bake": bake}))
        janitor = run_playbook(
            Path(__file__).resolve().parents[2] / "playbooks" / "janitor.yml",
            tmp_path,
            args=["-e", "@bake.json", "-e", "janitor_bake_id=%s" % ident],
        )
        assert janitor.rc == 0, janitor.explain()
        assert wait_until(lambda: not processes_named(name), 15) is not None, "the janitor left the VM"
        assert not workdir.exists()
    finally:
        kill_leftovers(name)
