"""QEMU disk target, end to end: the default bake's disk boots under TCG (BIOS and UEFI) and serves nginx.

One bake of the default definition's ``disk`` target (``-e bake_only=disk``) for the whole module, into a
temporary output directory, with the shared test cache for the rootfs. Both firmwares boot that one image at
the same time (two single-CPU TCG guests on two cores), each with ``snapshot=on`` so the artifact is never
written. Never KVM.
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
from conftest import LOCAL, REPO, run_playbook

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


def loops_and_mounts() -> tuple[str, set[str]]:
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    with open("/proc/mounts", encoding="utf-8") as handle:
        mounts = {" ".join(line.split()[:2]) for line in handle}
    return loops, mounts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def baked(cache_dir, tmp_path_factory):
    before = loops_and_mounts()
    tmp = tmp_path_factory.mktemp("qemu-bake")
    definition = default_bake(cache_dir)
    started = time.monotonic()
    first = bake(tmp, definition)
    seconds = time.monotonic() - started
    assert first.rc == 0, first.stdout[-6000:] + first.stderr[-2000:]
    return {"tmp": tmp, "definition": definition, "first": first, "seconds": seconds, "before": before}


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


@pytest.fixture(scope="module")
def guests(baked):
    disk = baked["tmp"] / "output" / "example-web.qcow2"
    started = {}
    try:
        for firmware in ("bios", "uefi"):
            started[firmware] = Guest(disk, firmware, baked["tmp"] / ("console-%s.log" % firmware))
        yield started
    finally:
        for guest in started.values():
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


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_disk_boots_and_nginx_answers(guests, firmware):
    guest = guests[firmware]
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


def test_vagrant_user_logs_in_with_the_insecure_key_and_sudo(guests, tmp_path):
    """Vagrant's base-box conventions: user vagrant, its insecure key, sudo without a password."""
    guest = guests["bios"]
    guest.page(time.monotonic() + BOOT_TIMEOUT)
    (key,) = Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant")
    private = tmp_path / "vagrant"
    private.write_bytes(key.read_bytes())
    private.chmod(0o600)
    proc = subprocess.run(
        [
            "ssh",
            "-i",
            str(private),
            "-p",
            str(guest.ssh),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAcceptedAlgorithms=+ssh-rsa",
            "vagrant@127.0.0.1",
            "sudo -n id -u",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stderr


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


def test_no_loop_device_or_mount_left(baked):
    assert loops_and_mounts() == baked["before"]
