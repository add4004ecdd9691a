# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What differs between the architectures of qemu disks and VMs: GRUB platform and EFI boot file, root
partition type, console, the packages a bootable rootfs needs, the qemu binary, machine and firmware.

amd64 disks boot with BIOS and UEFI (GRUB i386-pc and x86_64-efi from the host's packages) under
``qemu-system-x86_64 -machine q35``. arm64 disks boot with UEFI only: Debian ships ``grub-efi-arm64-bin``
for arm64 alone, so the disk's own tree holds it (the qemu target's rootfs adds it) and the host's
``grub-mkimage`` builds ``EFI/BOOT/BOOTAA64.EFI`` from the tree's modules; they boot under
``qemu-system-aarch64 -machine virt -cpu max`` (TCG on this kind of host) with AAVMF, the UEFI firmware of
Debian's ``qemu-efi-aarch64``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

DEFAULT = "amd64"


@dataclass(frozen=True)
class Arch:
    """One architecture's disk and VM particulars (Debian's name for it in ``name``)."""

    name: str
    # the GRUB platform of its EFI image, and where that image goes on the ESP
    efi_platform: str
    efi_boot_file: str
    # the PE/COFF machine of that image (the firmware refuses another)
    pe_machine: int
    # GPT type of the root partition (the Discoverable Partitions Specification's, for this architecture)
    root_type: str
    # whether the disk also boots with BIOS (GRUB i386-pc in the BIOS boot partition)
    bios: bool
    # the kernel's serial console
    console: str
    # GRUB's EFI modules: on the host (absolute), or inside the disk's tree (relative to its root)
    grub_dir: str
    grub_in_tree: bool
    grub_package: str
    # the kernel the qemu target's default system_packages name, and the one this architecture takes instead
    kernel_package: str
    # qemu-system binary (and its Debian package), machine, firmware code and variables (and their package)
    qemu_binary: str
    qemu_package: str
    machine: str
    firmware_pairs: tuple[tuple[str, str], ...]
    firmware_package: str
    firmware_name: str
    # only this firmware boots it (None: bios or uefi)
    firmware_only: str | None
    # seconds a boot may take when the VM options give none (emulated machines are slower)
    boot_timeout: int
    # -cpu: the fastest model TCG emulates that the Debian kernel runs on
    cpu: str


AMD64 = Arch(
    name="amd64",
    efi_platform="x86_64-efi",
    efi_boot_file="BOOTX64.EFI",
    pe_machine=0x8664,
    root_type="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    bios=True,
    console="ttyS0",
    grub_dir="/usr/lib/grub/x86_64-efi",
    grub_in_tree=False,
    grub_package="grub-efi-amd64-bin",
    kernel_package="linux-image-cloud-amd64",
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machine="q35",
    firmware_pairs=(
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ),
    firmware_package="ovmf",
    firmware_name="OVMF",
    firmware_only=None,
    boot_timeout=300,
    cpu="max",
)

ARM64 = Arch(
    name="arm64",
    efi_platform="arm64-efi",
    efi_boot_file="BOOTAA64.EFI",
    pe_machine=0xAA64,
    root_type="B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    bios=False,
    console="ttyAMA0",
    grub_dir="usr/lib/grub/arm64-efi",
    grub_in_tree=True,
    grub_package="grub-efi-arm64-bin",
    # the cloud kernel, as amd64's: what VMs and arm64 clouds need, with far fewer modules than linux-image-arm64,
    # whose initramfs (MODULES=most) was still being made under qemu-user after 15 minutes on the test host
    kernel_package="linux-image-cloud-arm64",
    qemu_binary="qemu-system-aarch64",
    qemu_package="qemu-system-arm",
    machine="virt",
    # Debian's qemu-efi-aarch64 (the code, and the variables template each VM gets a copy of), then Fedora's
    firmware_pairs=(
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
    ),
    firmware_package="qemu-efi-aarch64",
    firmware_name="AAVMF",
    firmware_only="uefi",
    boot_timeout=900,
    # pointer authentication with QEMU's own (cheap) algorithm: the architected one costs TCG much time
    cpu="max,pauth-impdef=on",
)

ARCHES = {arch.name: arch for arch in (AMD64, ARM64)}


def get(name: str | None) -> Arch:
    """The architecture named *name* (Debian's name; None: amd64), or an error naming those qemu disks have."""
    arch = ARCHES.get(name or DEFAULT)
    if arch is None:
        raise BakeryError(
            "qemu disks and VMs are made for %s; not for architecture %r"
            % (" and ".join(sorted(ARCHES)), name)
        )
    return arch


def grub_dir(arch: Arch, root: str) -> str:
    """The directory of GRUB's EFI modules for *arch*: the host's, or the one in the disk's tree *root*;
    an error naming the package when it is missing."""
    directory = os.path.join(root, arch.grub_dir) if arch.grub_in_tree else arch.grub_dir
    if not os.path.isfile(os.path.join(directory, "kernel.img")):
        if arch.grub_in_tree:
            raise BakeryError(
                "the %s rootfs has no GRUB for %s (%s missing in it): install the Debian package %r in it "
                "(the qemu target's rootfs adds it)"
                % (arch.name, arch.efi_platform, "/" + arch.grub_dir, arch.grub_package)
            )
        raise BakeryError(
            "GRUB for %s is not installed on the build host (%s missing); install the Debian package %r"
            % (arch.efi_platform, directory, arch.grub_package)
        )
    return directory


def rootfs_packages(
    arch_name: str | None, system_packages: Sequence[str], present: Sequence[str]
) -> list[str]:
    """The qemu target's *system_packages* for a rootfs of *arch_name*: amd64's kernel becomes this
    architecture's, and GRUB's EFI modules are added where the disk takes them from its tree (unless *present*,
    the packages the rootfs has anyway, has them)."""
    arch = ARCHES.get(arch_name or DEFAULT)
    if arch is None or arch is AMD64:
        return list(system_packages)
    out = [arch.kernel_package if name == AMD64.kernel_package else name for name in system_packages]
    if arch.grub_in_tree and arch.grub_package not in out and arch.grub_package not in present:
        out.append(arch.grub_package)
    return out


def host() -> str:
    """The Debian architecture of this host (its kernel's machine)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def check_firmware(arch_name: str | None, firmware: str | None) -> None:
    """A firmware *arch_name*'s machines cannot boot is refused."""
    arch = ARCHES.get(arch_name or DEFAULT)
    if arch and arch.firmware_only and firmware not in (None, arch.firmware_only):
        raise BakeryError(
            "firmware %s: %s disks boot with %s only (GRUB %s): leave firmware out, or set %s"
            % (firmware, arch.name, arch.firmware_only.upper(), arch.efi_platform, arch.firmware_only)
        )


def pe_machine(data: bytes) -> int:
    """The machine field of a PE/COFF image's header (an EFI application), from its first bytes."""
    if data[:2] != b"MZ" or len(data) < 0x40:
        raise BakeryError("not a PE/COFF image (no MZ header)")
    (offset,) = struct.unpack_from("<I", data, 0x3C)
    if data[offset : offset + 4] != b"PE\0\0":
        raise BakeryError("not a PE/COFF image (no PE signature at %#x)" % offset)
    (machine,) = struct.unpack_from("<H", data, offset + 4)
    return int(machine)


def check_efi_image(arch: Arch, path: str) -> None:
    """The EFI image grub-mkimage made is one *arch*'s firmware runs (its PE machine)."""
    with open(path, "rb") as handle:
        machine = pe_machine(handle.read(4096))
    if machine != arch.pe_machine:
        raise BakeryError(
            "grub-mkimage made %s for PE machine %#x, not %s's %#x"
            % (path, machine, arch.name, arch.pe_machine)
        )
