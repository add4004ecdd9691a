"""arm64 qemu disks and VMs without a boot: the plan's packages and refusals, the disk's layout and GRUB config,
the EFI image check, qemu's command line, the preflight's needs."""

from __future__ import annotations

import copy
import dataclasses
import os
import struct

import pytest

from ansible_collections.bakery.images.plugins.module_utils import (
    _plan,
    _preflight,
    _qemu_arch,
    _qemu_disk,
    _qemu_vm,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

SYSTEM = ["linux-image-cloud-amd64", "initramfs-tools", "openssh-server"]
BAKE = {
    "name": "web",
    "output_dir": "out",
    "base": {"suite": "bookworm", "architecture": "arm64", "packages": ["python3"]},
    "provisioners": [{"shell": {"inline": ["true"]}}],
    "targets": [
        {"name": "img", "docker": {"repository": "bakery/web"}},
        {"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2"], "system_packages": SYSTEM}},
    ],
}


def plan(bake):
    return _plan.make_plan(
        bake,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: "digest",
        cwd="/work",
        bake_id="b1",
    )["targets"]


def test_an_arm64_disk_target_gets_the_arm64_kernel_and_grub_in_its_own_rootfs():
    img, disk = plan(BAKE)
    assert disk["architecture"] == "arm64"
    assert disk["rootfs"]["options"]["packages"] == [
        "python3",
        "linux-image-cloud-arm64",
        "initramfs-tools",
        "openssh-server",
        "grub-efi-arm64-bin",
    ]
    assert disk["rootfs"]["path"] != img["rootfs"]["path"]
    # amd64 keeps its packages (and so its rootfs and fingerprints)
    amd64 = copy.deepcopy(BAKE)
    amd64["base"]["architecture"] = "amd64"
    assert plan(amd64)[1]["rootfs"]["options"]["packages"] == ["python3", *SYSTEM]


def test_a_base_with_the_disks_packages_is_one_rootfs_for_both_targets():
    bake = copy.deepcopy(BAKE)
    bake["base"]["packages"] = ["python3", "linux-image-cloud-arm64", "grub-efi-arm64-bin"]
    bake["targets"][1]["qemu"]["system_packages"] = []
    img, disk = plan(bake)
    assert disk["rootfs"]["path"] == img["rootfs"]["path"]
    assert disk["inputs"]["source"] == img["inputs"]["source"]
    # without GRUB in the base, the disk needs a rootfs of its own: its GRUB comes from its tree
    bake["base"]["packages"] = ["python3", "linux-image-cloud-arm64"]
    img, disk = plan(bake)
    assert disk["rootfs"]["options"]["packages"] == [
        "python3",
        "linux-image-cloud-arm64",
        "grub-efi-arm64-bin",
    ]


def test_bios_firmware_for_an_arm64_disk_is_refused_in_the_plan():
    bake = copy.deepcopy(BAKE)
    bake["targets"][1]["qemu"]["vm"] = {"firmware": "bios"}
    with pytest.raises(BakeryError) as exc:
        plan(bake)
    assert exc.value.msg == (
        "bake.targets[1].qemu: vm.firmware bios: arm64 disks boot with UEFI only (GRUB arm64-efi): leave firmware "
        "out, or set uefi"
    )
    bake["targets"][1]["qemu"]["vm"] = {"firmware": "uefi"}
    assert plan(bake)[1]["architecture"] == "arm64"


def test_arm64_layout_has_the_arm64_root_type_and_no_serial_commands_in_grub():
    layout = _qemu_disk.make_layout(4 << 30, "f" * 64, _qemu_arch.ARM64.root_type)
    script = layout.sfdisk_script()
    assert "type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE" in script and _qemu_disk.GPT_ESP in script
    assert _qemu_disk.GPT_LINUX_ROOT_X86_64 not in script
    cfg = _qemu_disk.grub_cfg(layout, "/vmlinuz", "/initrd.img", "", _qemu_arch.ARM64)
    assert "console=ttyAMA0,115200n8" in cfg and "serial --unit" not in cfg and "ttyS0" not in cfg


def test_an_arm64_disk_is_its_own_fingerprint_and_amd64_keeps_its_own(tmp_path):
    def opts(**extra):
        params = {
            "outputs": [{"path": str(tmp_path / "d.qcow2")}],
            "rootfs": str(tmp_path),
            "inputs": {"s": "1"},
        }
        return _qemu_disk.parse_options(dict(params, **extra))

    assert "architecture" not in _qemu_disk.describe(opts())
    assert _qemu_disk.describe(opts(architecture="arm64"))["architecture"] == "arm64"
    assert _qemu_disk.compute_inputs(opts(architecture="arm64")) != _qemu_disk.compute_inputs(opts())
    with pytest.raises(BakeryError, match="amd64 and arm64; not for architecture 'ia64'"):
        opts(architecture="ia64")


def test_a_tree_without_grub_for_arm64_names_the_package(tmp_path):
    with pytest.raises(BakeryError, match="install the Debian package 'grub-efi-arm64-bin' in it"):
        _qemu_arch.grub_dir(_qemu_arch.ARM64, str(tmp_path))
    modules = tmp_path / "usr" / "lib" / "grub" / "arm64-efi"
    modules.mkdir(parents=True)
    (modules / "kernel.img").write_bytes(b"")
    assert _qemu_arch.grub_dir(_qemu_arch.ARM64, str(tmp_path)) == str(modules)


def pe_image(machine):
    header = bytearray(0x80)
    header[:2] = b"MZ"
    struct.pack_into("<I", header, 0x3C, 0x40)
    header[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<H", header, 0x44, machine)
    return bytes(header)


def test_the_efi_image_must_be_for_the_disks_architecture(tmp_path):
    efi = tmp_path / "BOOTAA64.EFI"
    efi.write_bytes(pe_image(0xAA64))
    _qemu_arch.check_efi_image(_qemu_arch.ARM64, str(efi))
    with pytest.raises(BakeryError, match="PE machine 0xaa64, not amd64's 0x8664"):
        _qemu_arch.check_efi_image(_qemu_arch.AMD64, str(efi))
    with pytest.raises(BakeryError, match="no MZ header"):
        _qemu_arch.pe_machine(b"\0" * 128)


def test_an_arm64_vm_runs_qemu_system_aarch64_virt_with_aavmf_under_tcg(tmp_path):
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(_qemu_vm.QCOW2_MAGIC + b"\0" * 508)
    opts = _qemu_vm.parse_options(
        {"disk": str(disk), "architecture": "arm64", "workdir": str(tmp_path / "vm")}
    )
    assert (opts.qemu_binary, opts.machine, opts.firmware, opts.accelerators) == (
        "qemu-system-aarch64",
        "virt",
        "uefi",
        ["tcg"],
    )
    assert opts.boot_timeout == 900 and opts.cpu == "max,pauth-impdef=on"
    argv = _qemu_vm.qemu_command(opts, 2222, "overlay.qcow2", "qcow2", uefi_code="/c.fd")
    assert argv[:5] == ["qemu-system-aarch64", "-name", opts.name, "-machine", "virt"]
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/c.fd" in argv and "kvm" not in argv
    with pytest.raises(BakeryError, match="qemu_vm: firmware bios: arm64 disks boot with UEFI only"):
        _qemu_vm.parse_options({"disk": str(disk), "architecture": "arm64", "firmware": "bios"})
    # given options win over the architecture's defaults; amd64's stay what they were
    given = _qemu_vm.parse_options(
        {"disk": str(disk), "architecture": "arm64", "cpu": "cortex-a57", "boot_timeout": 5}
    )
    assert (given.cpu, given.boot_timeout) == ("cortex-a57", 5)
    amd64 = _qemu_vm.parse_options({"disk": str(disk)})
    assert (amd64.qemu_binary, amd64.machine, amd64.firmware, amd64.boot_timeout) == (
        "qemu-system-x86_64",
        "q35",
        "bios",
        300,
    )
    assert amd64.accelerators == (["kvm", "tcg"] if _qemu_arch.host() == "amd64" else ["tcg"])


def test_aavmf_missing_names_its_package(tmp_path):
    nowhere = dataclasses.replace(
        _qemu_arch.ARM64, firmware_pairs=((str(tmp_path / "c.fd"), str(tmp_path / "v.fd")),)
    )
    with pytest.raises(BakeryError, match="needs AAVMF.*install the Debian package qemu-efi-aarch64"):
        _qemu_vm.uefi_firmware(None, None, nowhere)
    # Debian's qemu-efi-aarch64 where it is installed (this host: make bake installs it)
    if all(os.path.isfile(path) for path in _qemu_arch.ARM64.firmware_pairs[0]):
        assert _qemu_vm.uefi_firmware(None, None, _qemu_arch.ARM64) == _qemu_arch.ARM64.firmware_pairs[0]


class Host:
    """Every command and file there but those named."""

    def __init__(self, missing=(), missing_files=()):
        self.missing, self.missing_files, self.searched = set(missing), tuple(missing_files), []

    def host(self):
        return _preflight.Host(
            which=lambda command, path: None if command in self.missing else "/usr/bin/" + command,
            exists=lambda path: not path.startswith(self.missing_files) and not path.startswith("/work/out"),
            glob=lambda pattern: [pattern],
            space=lambda path: (1, 500 << 30),
            file_size=lambda path: None,
            fetch=lambda url, timeout: None,
            ping=lambda docker_host, timeout: None,
            host_arch=lambda: "amd64",
            arch_runs=lambda arch, timeout: True,
            found=lambda target: False,
            env={"PATH": "/usr/bin:/bin"},
            timeout=5.0,
        )


def test_preflight_names_qemu_system_arm_and_aavmf_for_an_arm64_vm_and_no_host_grub():
    bake = copy.deepcopy(BAKE)
    bake["targets"][1]["qemu"]["provision"] = "vm"
    missing = {"qemu-system-aarch64", "grub-bios-setup"}
    files = ("/usr/share/AAVMF", "/usr/share/edk2", _qemu_disk.GRUB_PC_DIR, _qemu_disk.GRUB_EFI_DIR)
    result = _preflight.run(plan(bake), host=Host(missing, files).host())
    problems = [p for p in result["problems"] if p.startswith("target disk")]
    assert len(problems) == 2, problems
    assert "qemu-system-aarch64 is not installed" in problems[0]
    assert "install the Debian package qemu-system-arm" in problems[0]
    assert "AAVMF (arm64 UEFI firmware) is not installed" in problems[1]
    assert "install the Debian package qemu-efi-aarch64" in problems[1]
    # a chroot bake whose disk is booted for its checks needs them too; one that boots nothing needs neither
    bake["targets"][1]["qemu"]["provision"] = "chroot"
    bake["verify"] = [{"shell": {"inline": ["curl -s localhost"]}, "only": ["disk"]}]
    booted = _preflight.run(plan(bake), host=Host(missing, files).host())["problems"]
    assert [p.split(":")[0] for p in booted] == ["target disk (qemu), verify"] * 2
    del bake["verify"]
    assert _preflight.run(plan(bake), host=Host(missing, files).host())["problems"] == []
