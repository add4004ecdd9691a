"""The default role baked for arm64 on this amd64 host: one emulated rootfs, a docker target and a qemu disk.

One bake (cloud stream: the most slack): the default definition with ``base.architecture: arm64``; the base has
the disk's packages (the arm64 kernel, GRUB for arm64-efi) and the disk ``system_packages: []``, so that both
targets share the one rootfs mmdebstrap builds under qemu-user (the costly part). Both are provisioned by
bakery.images.example_web under emulation (a container, a chroot). The bake's verify boots the disk under
``qemu-system-aarch64 -machine virt`` (TCG) with AAVMF and checks over SSH (the forwarded port) that it is an
aarch64 machine serving the role's page; the structural tests read the disk without booting it, and the docker
image serves the page from an emulated container.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, remove_repositories, run_playbook
from test_docker import serves

from ansible_collections.bakery.images.plugins.module_utils import _qemu_arch

# about 7 minutes alone (the emulated rootfs with its kernel, 4 of them): make test runs it at the end of the cloud
# stream (scripts/integration), where the other streams leave a core free; make integration-emulated runs it too
pytestmark = pytest.mark.arm64

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
PAGE = "nginx on Debian"
ESP_START = 2 * 1024 * 1024
GPT_ARM64_ROOT = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def qemu_system_packages() -> list[str]:
    spec = yaml.safe_load((REPO / "roles" / "qemu" / "meta" / "argument_specs.yml").read_text())
    for role in spec["argument_specs"].values():
        options = role.get("options", {}).get("bakery_target", {}).get("options", {})
        found = options.get("options", {}).get("options", {}).get("system_packages")
        if found:
            return list(found["default"])
    raise AssertionError("no system_packages default in roles/qemu/meta/argument_specs.yml")


def task_seconds(run, *names: str) -> float:
    """Wall time of the tasks named *names* (role tasks as ``role : name``, or a role's prefix ``role :``)."""
    total = 0.0
    for play in (run.data or {}).get("plays", []):
        for task in play.get("tasks", []):
            name = task["task"]["name"]
            if any(name == n or name.endswith(" : " + n) or name.startswith(n) for n in names):
                duration = task["task"].get("duration") or {}
                if duration.get("start") and duration.get("end"):
                    total += _seconds(duration["end"]) - _seconds(duration["start"])
    return round(total, 1)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


@pytest.fixture(scope="module")
def arm64_bake(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    default = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    system = _qemu_arch.rootfs_packages("arm64", qemu_system_packages(), [])
    base = dict(default["base"], architecture="arm64")
    base["packages"] = list(base["packages"]) + system + ["curl"]
    (docker,) = [dict(t["docker"]) for t in default["targets"] if "docker" in t]
    repository = "bakery-test/arm64-%s" % uuid.uuid4().hex[:8]
    docker.update(repository=repository, tags=["arm64"])
    tmp = tmp_path_factory.mktemp("arm64-bake")
    definition = {
        "name": "example-web-arm64",
        "output_dir": str(tmp / "output"),
        "cache_dir": str(cache_dir),
        "base": base,
        "provisioners": default["provisioners"],
        "targets": [
            {"name": "docker", "docker": docker},
            {"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2"], "system_packages": []}},
        ],
        # booted under qemu-system-aarch64 (TCG) with AAVMF, checked over SSH through the forwarded port
        "verify": [
            {
                "shell": {
                    "inline": [
                        'test "$(uname -m)" = aarch64',
                        "test -d /sys/firmware/efi",
                        "systemctl is-active nginx",
                        "curl -sf http://localhost/ | grep -qx '%s'" % PAGE,
                    ]
                },
                "only": ["disk"],
            }
        ],
    }
    (tmp / "bake.json").write_text(json.dumps({"bake": definition}))
    started = time.monotonic()
    run = run_playbook(BAKE_PLAYBOOK, tmp, args=["-e", "@%s" % (tmp / "bake.json")], timeout=3600)
    seconds = time.monotonic() - started
    try:
        assert run.rc == 0, run.explain(6000)
        timings = {
            "total": round(seconds, 1),
            "rootfs": task_seconds(
                run, "Build the base root filesystem", "Build the target's root filesystem"
            ),
            "provisioning (both targets, side by side)": task_seconds(run, "bakery.images.example_web :"),
            "disk assembly": task_seconds(run, "Make the disk and its outputs from the provisioned tree"),
            "boot for verify": task_seconds(run, "Boot the disk for its checks"),
        }
        print("arm64 bake timings (s): %s" % json.dumps(timings))
        yield {"run": run, "output": tmp / "output", "repository": repository, "tmp": tmp, "timings": timings}
    finally:
        remove_repositories(repository)


def test_the_arm64_bake_shares_one_rootfs_and_records_the_architecture(arm64_bake):
    manifest = json.loads((arm64_bake["output"] / "bake-manifest.json").read_text())
    entries = {a["target"]: a for a in manifest["artifacts"]}
    assert entries["disk"]["architecture"] == entries["docker"]["architecture"] == "arm64"
    plan = arm64_bake["run"].task_result("Plan the bake")["plan"]
    rootfs = {t["name"]: t["rootfs"]["path"] for t in plan["targets"]}
    assert rootfs["disk"] == rootfs["docker"]
    sidecar = json.loads((arm64_bake["output"] / "example-web-arm64.qcow2.bakery.json").read_text())
    assert sidecar["architecture"] == "arm64" and sidecar["options"]["architecture"] == "arm64"
    assert sidecar["fingerprint"] == entries["disk"]["fingerprint"]


def test_the_arm64_disk_is_gpt_with_an_esp_holding_bootaa64_and_no_bios_boot(arm64_bake, tmp_path):
    raw = tmp_path / "disk.raw"
    qcow2 = arm64_bake["output"] / "example-web-arm64.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == "gpt"
    types = [part["type"] for part in table["partitions"]]
    assert types[1:] == [GPT_ESP, GPT_ARM64_ROOT], types
    assert table["partitions"][1]["start"] * 512 == ESP_START
    esp = "%s@@%d" % (raw, ESP_START)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = subprocess.run(
        ["mdir", "-b", "-i", esp, "::/EFI/BOOT"], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert listing == ["::/EFI/BOOT/BOOTAA64.EFI"], listing
    efi = tmp_path / "BOOTAA64.EFI"
    subprocess.run(["mcopy", "-i", esp, "::/EFI/BOOT/BOOTAA64.EFI", str(efi)], env=env, check=True)
    data = efi.read_bytes()
    (offset,) = struct.unpack_from("<I", data, 0x3C)
    assert data[offset : offset + 4] == b"PE\0\0"
    assert struct.unpack_from("<H", data, offset + 4)[0] == 0xAA64
    # UEFI only: no GRUB boot code in the protective MBR (an amd64 disk has GRUB's boot.img there)
    with open(raw, "rb") as disk:
        assert disk.read(440) == bytes(440)
    # the root file system holds the arm64 kernel and GRUB's arm64-efi modules, and boots on ttyAMA0
    cfg = subprocess.run(
        [
            "debugfs",
            "-R",
            "cat /boot/grub/grub.cfg",
            "%s?offset=%d" % (raw, table["partitions"][2]["start"] * 512),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "console=ttyAMA0" in cfg.stdout, cfg.stderr


def test_the_arm64_disk_booted_under_qemu_system_aarch64_serves_the_page(arm64_bake):
    """The bake's verify booted the disk under qemu-system-aarch64 (TCG, AAVMF) and its checks passed over SSH: an
    aarch64 machine booted with UEFI, nginx active, the role's page on port 80."""
    run = arm64_bake["run"]
    booted = run.task_result("Boot the disk for its checks")
    command = booted["command"]
    assert command[0] == "qemu-system-aarch64" and command[command.index("-machine") + 1] == "virt"
    assert booted["accelerator"] == "tcg" and "kvm" not in command
    pflash = [arg for arg in command if arg.startswith("if=pflash")]
    assert any("AAVMF_CODE.fd" in arg and "readonly=on" in arg for arg in pflash), pflash
    assert run.stats["bakery-disk-verify"]["failures"] == 0
    manifest = json.loads((arm64_bake["output"] / "bake-manifest.json").read_text())
    (disk,) = [a for a in manifest["artifacts"] if a["target"] == "disk"]
    assert disk["verify"]["status"] == "passed" and disk["verify"]["checked"] == "now", disk.get("verify")
    print("arm64 boot to SSH (s): %s" % json.dumps(booted["timings"]))


def test_the_arm64_image_serves_the_page_from_an_emulated_container(arm64_bake):
    image = "%s:arm64" % arm64_bake["repository"]
    inspected = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "arm64")
    assert serves(image).strip() == PAGE
