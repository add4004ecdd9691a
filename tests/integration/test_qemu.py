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
from conftest import REPO, run_playbook

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
OVMF = "/usr/share/ovmf/OVMF.fd"
BOOT_TIMEOUT = 420
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
    keys = subprocess.run(
        ["ssh-keyscan", "-p", str(guest.ssh), "-t", "ed25519", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "ssh-ed25519" in keys


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


def test_no_loop_device_or_mount_left(baked):
    assert loops_and_mounts() == baked["before"]
