"""QEMU disk target, end to end: the default bake's disk boots under TCG with UEFI and serves nginx.

The session's one bake of the default definition (``conftest.default_bake``: the ``disk`` target and the box
made from it), into a temporary output directory, with the shared test cache for the rootfs. The guest boots
that image with ``snapshot=on``, so the artifact is never written. Never KVM. The same image's BIOS boot is
in test_vagrant (vagrant-libvirt boots the box made from it with SeaBIOS), which also logs in as vagrant.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import LOCAL, REPO, loops_and_mounts, run_playbook

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
OVMF = "/usr/share/ovmf/OVMF.fd"
BOOT_TIMEOUT = 900
PAGE = "nginx on Debian"


def default_bake(cache_dir: Path) -> dict:
    with open(REPO / "playbooks" / "vars" / "default_bake.yml", encoding="utf-8") as handle:
        bake = yaml.safe_load(handle)["bake"]
    bake["cache_dir"] = str(cache_dir)
    return bake


def bake(tmp: Path, definition: dict, *args: str):
    path = tmp / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    return run_playbook(BAKE_PLAYBOOK, tmp, args=["-e", "@%s" % path, "-e", "bake_only=disk", *args])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def baked(default_bake):
    """The session's one bake of the default definition (disk and box, see conftest.default_bake)."""
    return default_bake


class Guest:
    """A TCG guest booting the disk (snapshot=on) with nginx and SSH forwarded to 127.0.0.1."""

    def __init__(self, disk: Path, firmware: str, log: Path) -> None:
        self.http, self.ssh = free_port(), free_port()
        self.log = log
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=tcg" if firmware == "uefi" else "pc,accel=tcg",
            "-m",
            "768",
            "-smp",
            "1",
            "-nographic",
            # entropy for the first boot's SSH host keys
            "-device",
            "virtio-rng-pci",
            "-no-reboot",
            "-drive",
            "file=%s,if=virtio,format=qcow2,snapshot=on" % disk,
            "-nic",
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:%d-:80,hostfwd=tcp:127.0.0.1:%d-:22"
            % (self.http, self.ssh),
            "-serial",
            "file:%s" % log,
            "-monitor",
            "none",
        ]
        if firmware == "uefi":
            argv += ["-bios", OVMF]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def page(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "qemu exited (%s): %s\n%s"
                    % (self.proc.returncode, self.proc.stderr.read(), self.console()[-3000:])
                )
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/" % self.http, timeout=5) as response:
                    return response.read().decode()
            except OSError:
                time.sleep(3)
        raise AssertionError(
            "no answer from nginx in %d s; console:\n%s" % (BOOT_TIMEOUT, self.console()[-3000:])
        )

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        assert self.proc.poll() is not None


@pytest.fixture()
def uefi_guest(baked):
    """The disk booted with UEFI (OVMF), for one test: it stops before the next test boots its own VM. Its
    BIOS boot is test_vagrant's: vagrant-libvirt boots the box made from this disk with SeaBIOS, logs in as
    vagrant with the insecure key and checks nginx and sudo."""
    guest = Guest(baked["tmp"] / "output" / "example-web.qcow2", "uefi", baked["tmp"] / "console-uefi.log")
    try:
        yield guest
    finally:
        guest.stop()


def test_default_bake_makes_the_disk_and_its_manifest_entry(baked):
    out = baked["tmp"] / "output"
    disk = out / "example-web.qcow2"
    sidecar = json.loads((out / "example-web.qcow2.bakery.json").read_text())
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * 1024**3
    assert info["actual-size"] < 1024**3  # sparse
    manifest = json.loads((out / "bake-manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["target"] == "disk"]
    assert entry["type"] == "qemu" and entry["path"] == str(disk) and entry["format"] == "qcow2"
    assert entry["fingerprint"] == sidecar["fingerprint"] and entry["sha256"] == sidecar["sha256"]
    assert entry["outputs"] == [
        {"format": "qcow2", "path": str(disk), "size": disk.stat().st_size, "sha256": sidecar["sha256"]}
    ]
    assert entry["bake_id"] and entry["build_seconds"] > 0
    # the chroot work directory is gone, and nothing temporary is left beside the output
    assert not list((Path(baked["definition"]["cache_dir"]) / "qemu").glob("*-disk"))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_second_bake_changes_nothing(baked):
    out = baked["tmp"] / "output"
    manifest = (out / "bake-manifest.json").read_text()
    mtime = (out / "example-web.qcow2").stat().st_mtime_ns
    second = bake(baked["tmp"], baked["definition"])
    assert second.rc == 0, second.stdout[-4000:]
    assert second.stats["bakery-disk"]["changed"] == 0, second.stats
    assert "bakery-disk-builder" not in second.stats
    assert (out / "example-web.qcow2").stat().st_mtime_ns == mtime
    assert (out / "bake-manifest.json").read_text() == manifest


def test_disk_boots_with_uefi_and_nginx_answers(uefi_guest):
    guest = uefi_guest
    assert guest.page(time.monotonic() + BOOT_TIMEOUT).strip() == PAGE
    console = guest.console()
    assert "Linux version" in console  # the serial console is ttyS0
    # every machine made from the image gets its own SSH host key, made at first boot
    keys = until(lambda: ssh_keyscan(guest.ssh), time.monotonic() + 300)
    assert "ssh-ed25519" in keys


def until(probe, deadline: float):
    """*probe()*'s first truthy answer before *deadline*, else its last answer."""
    while True:
        answer = probe()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(5)


def ssh_keyscan(port: int) -> str:
    return subprocess.run(
        ["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout


IMAGE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: copy
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        image_checksum: "sha256:{{ checksum }}"
        disk_size: 96M
        outputs: "{{ outputs }}"
    - name: again
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        image_checksum: "{{ checksum }}"
        disk_size: 96M
        outputs: "{{ outputs }}"
    - name: overlay
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        backing: true
        disk_size: 128M
        outputs: [{path: "{{ dir }}/overlay.qcow2"}]
    - name: mismatch
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        image_checksum: "{{ '0' * 64 }}"
        outputs: [{path: "{{ dir }}/bad.qcow2"}]
      ignore_errors: true
"""


def test_existing_image_copied_to_every_format_grown_and_checked(tmp_path):
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 1M", str(src)], check=True, capture_output=True)
    checksum = subprocess.run(
        ["sha256sum", str(src)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    outputs = [{"path": str(tmp_path / ("copy." + fmt))} for fmt in ("qcow2", "raw", "vmdk", "vdi", "vhdx")]
    run = run_playbook(
        IMAGE_PLAY,
        tmp_path,
        extra_vars={"dir": str(tmp_path), "checksum": checksum, "outputs": outputs},
        args=LOCAL,
    )
    assert run.rc == 0, run.stdout[-4000:]
    copy, again = run.task_result("copy"), run.task_result("again")
    assert copy["changed"] and not again["changed"] and again["found"]
    for fmt in ("qcow2", "raw", "vmdk", "vdi", "vhdx"):
        path = tmp_path / ("copy." + fmt)
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
            ).stdout
        )
        assert info["format"] == fmt and info["virtual-size"] == 96 * 1024**2, info
        sidecar = json.loads((tmp_path / ("copy.%s.bakery.json" % fmt)).read_text())
        assert sidecar["format"] == fmt and sidecar["fingerprint"] == copy["fingerprint"]
        if fmt == "vmdk":
            assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    # the data survived the trip through every format
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "vhdx", str(src), str(tmp_path / "copy.vhdx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Images are identical" in compare.stdout or "size" in compare.stdout
    overlay = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(tmp_path / "overlay.qcow2")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert overlay["backing-filename"] == str(src) and overlay["virtual-size"] == 128 * 1024**2
    mismatch = run.task_result("mismatch")
    assert mismatch["failed"] and "checksum mismatch" in mismatch["msg"] and checksum in mismatch["msg"]
    assert not (tmp_path / "bad.qcow2").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


STAMP_ROLE = """\
- name: Read what runs as PID 1 (systemd in a booted VM; a chroot has no /proc)
  ansible.builtin.command: cat /proc/1/comm
  register: stamp_init
  changed_when: false
- name: Leave a stamp
  ansible.builtin.copy:
    content: "{{ stamp_init.stdout }}\\n"
    dest: /etc/bakery-stamp
    mode: "0644"
"""


def debugfs(disk: Path, request: str) -> subprocess.CompletedProcess:
    """Read the root file system of a raw disk made by qemu_image, at its offset, without mounting it."""
    return subprocess.run(
        ["debugfs", "-R", request, "%s?offset=%d" % (disk, 66 * 1024**2)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_vm_provisioning_boots_the_disk_and_provisions_it_over_ssh(cache_dir, tmp_path):
    role = tmp_path / "roles" / "stamp" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(STAMP_ROLE)
    definition = {
        "name": "vmbake",
        "cache_dir": str(cache_dir),
        "base": default_bake(cache_dir)["base"],
        "provisioners": [{"role": "stamp"}],
        "targets": [
            {
                "name": "vmdisk",
                "qemu": {
                    "provision": "vm",
                    "formats": ["raw"],
                    "disk_size": "2G",
                    "vm": {"accelerator": "tcg", "memory": 768, "cpus": 1, "boot_timeout": BOOT_TIMEOUT},
                },
            }
        ],
    }
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    run = run_playbook(
        BAKE_PLAYBOOK,
        tmp_path,
        args=["-e", "@%s" % path],
        env={"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")},
        timeout=2400,
    )
    assert run.rc == 0, run.stdout[-6000:]
    assert run.stats["bakery-vmdisk-builder"]["failures"] == 0
    disk = tmp_path / "output" / "vmbake.raw"
    assert debugfs(disk, "cat /etc/bakery-stamp").stdout == "systemd\n"
    # the builder's key and the host keys made at its first boot are not in the image
    assert "authorized_keys" not in debugfs(disk, "ls -l /root/.ssh").stdout
    assert "ssh_host_" not in debugfs(disk, "ls -l /etc/ssh").stdout
    bake_id = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"][0]["bake_id"]
    left = subprocess.run(["pgrep", "-f", "bakery-%s" % bake_id], capture_output=True, text=True, check=False)
    assert left.stdout == "", "qemu left running: %s" % left.stdout
    assert not list((cache_dir / "qemu").glob("%s-*" % bake_id))


def test_no_loop_device_or_mount_left(baked):
    assert loops_and_mounts(*baked["watched"]) == baked["before"] == (set(), set())
