# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU disk images: a bootable GPT disk made from a root filesystem, or an existing disk image reused.

From a root filesystem (a tarball, or a directory such as a provisioned chroot) the disk boots both BIOS
and UEFI firmware, and is made without a loop device or a mount:

* a raw disk file is created sparse, and ``sfdisk`` writes a GPT on it: a BIOS boot partition (GRUB's core
  image goes there and its boot sector into the protective MBR, the writes ``grub-bios-setup`` makes), an
  EFI system partition and the root partition;
* ``mkfs.vfat --offset`` makes the ESP inside the disk file and ``mtools`` copies GRUB's EFI image into it as
  ``\\EFI\\BOOT\\BOOTX64.EFI``;
* ``mkfs.ext4 -E offset=... -d <root>`` makes the root file system, with the tree in it, inside the disk file;
* GRUB is built with ``grub-mkimage`` for both platforms with an embedded configuration that finds the root
  file system by UUID and reads ``/boot/grub/grub.cfg``, which bakery writes itself (serial console,
  kernel and initramfs found in the tree).

An arm64 disk (``architecture: arm64``) boots with UEFI only: its GRUB EFI image, ``\\EFI\\BOOT\\BOOTAA64.EFI``, is
made from the modules of the tree's own ``grub-efi-arm64-bin``, and nothing goes into the BIOS boot partition or
the MBR (see ``_qemu_arch`` for what differs by architecture).

Before the tree goes into the disk it is made into a machine image: fstab by UUID, SSH host keys removed
and generated at first boot, an empty machine-id, DHCP on the first NIC with systemd-networkd and,
optionally, Vagrant's base-box conventions.

The raw disk is then converted into every requested output (qcow2, raw, vmdk, vdi, vhdx), each written under
a temporary name and renamed into place, with a ``.bakery.json`` sidecar that carries the fingerprint. Same
inputs, same fingerprint: an output whose sidecar carries it is found and nothing is rebuilt.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils import (
    _disk_tree,
    _hygiene,
    _isolation,
    _qemu_arch,
    _reproducible,
    _rootfs,
    _standin,
    _step_cache,
)
from ansible_collections.bakery.images.plugins.module_utils._disk_files import DiskFiles
from ansible_collections.bakery.images.plugins.module_utils._files import (
    QCOW2_MAGIC,
    atomic_outputs,
    check_raw_disk,
    check_tarball,
    file_lock,
    make_tree_directory,
    read_sidecar,
    unlinked_beside,
    write_sidecar,
)
from ansible_collections.bakery.images.plugins.module_utils._files import (
    parse_size as parse_any_size,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    changed_inputs,
    digest_file,
    digest_tree,
    digest_value,
    fingerprint,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    TEMPORARY_MARKER,
    Selector,
    act,
    failed,
    record,
)

# output format -> (file name ending, qemu-img convert options)
FORMATS: dict[str, tuple[str, list[str]]] = {
    "qcow2": (".qcow2", []),
    "raw": (".raw", []),
    "vmdk": (".vmdk", ["-o", "subformat=streamOptimized"]),
    "vdi": (".vdi", ["-o", "static=off"]),
    "vhdx": (".vhdx", ["-o", "subformat=dynamic"]),
}
EXTENSION_FORMATS = {
    ".qcow2": "qcow2",
    ".raw": "raw",
    ".img": "raw",
    ".vmdk": "vmdk",
    ".vdi": "vdi",
    ".vhdx": "vhdx",
}
SOURCE_FORMATS = ("qcow2", "raw")
ACTIONS = ("find", "build", "unpack", "remove", "step_save", "prune_steps", "vm_resume", "vm_step_save")

MIB = 1024 * 1024
SECTOR = 512
BLOCK = 4096
# GPT layout: BIOS boot partition, ESP, root; 1 MiB aligned, 1 MiB kept free at the end (backup GPT)
BIOS_START = 1 * MIB
BIOS_SIZE = 1 * MIB
ESP_START = BIOS_START + BIOS_SIZE
ESP_SIZE = 64 * MIB
ROOT_START = ESP_START + ESP_SIZE
TAIL = 1 * MIB
MIN_ROOT = 64 * MIB
# bump when the disk layout or what bakery writes into the tree changes: images are then rebuilt
# (2: reproducible disks: times clamped to the epoch, hash seed, FAT times and what provisioning leaves)
LAYOUT_VERSION = 2

GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

GRUB_PC_DIR = "/usr/lib/grub/i386-pc"
GRUB_EFI_DIR = "/usr/lib/grub/x86_64-efi"
GRUB_COMMON_MODULES = [
    "part_gpt",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "configfile",
    "echo",
    "test",
    "gzio",
    "serial",
    "terminal",
    "boot",
]
GRUB_PC_MODULES = ["biosdisk", *GRUB_COMMON_MODULES]
GRUB_EFI_MODULES = ["fat", "efi_gop", *GRUB_COMMON_MODULES]

# program -> Debian package that ships it
TOOLS = {
    "qemu-img": "qemu-utils",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "grub-mkimage": "grub-common",
    "tar": "tar",
}
GRUB_PLATFORMS = {GRUB_PC_DIR: "grub-pc-bin", GRUB_EFI_DIR: "grub-efi-amd64-bin"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VAGRANT_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/usr/lib/ruby/vendor_ruby/vagrant/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
)
CHROOT_STATE = "chroot.json"
COMMAND_TIMEOUT = 1800

# the largest disk bakery makes: what EBS and Compute Engine take, and far beyond what a sparse file system
# on the build host should be asked for
MAX_DISK_SIZE = 64 << 40
_SHA256_RE = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass
class Output:
    path: str
    format: str
    compress: bool = False


@dataclass
class DiskOptions:
    """The module's options, validated."""

    outputs: list[Output]
    disk_size: int
    rootfs: str | None = None
    image: str | None = None
    image_checksum: str | None = None
    image_format: str | None = None
    backing: bool = False
    # an image made from a rootfs that booted since (a builder VM's): made again from its tree
    reassemble: bool = False
    kernel_cmdline: str = ""
    dhcp: bool = True
    hostname: str | None = None
    vagrant: bool = False
    vagrant_key: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None
    authorized_keys: list[str] = field(default_factory=list)
    force: bool = False
    bake_id: str | None = None
    timeout: int = COMMAND_TIMEOUT
    # the hygiene checks the prepared tree must pass (None: not checked), or the results of checks made
    # elsewhere (in a builder VM) that the sidecars record
    hygiene: _hygiene.Options | None = None
    hygiene_results: list[dict[str, Any]] | None = None
    # the Debian architecture of the rootfs (see _qemu_arch): what the disk boots on
    architecture: str = _qemu_arch.DEFAULT
    # every time in a disk made from a tree (None: one that follows from the fingerprint)
    source_date_epoch: int | None = None
    # a builder VM's disk made from a rootfs tarball gets the package lists kept beside it (_rootfs.seed_apt_lists);
    # no input of the fingerprint: the refresh before the first provisioner runs either way, and the lists leave
    # the tree before the disk of the image is made from it
    apt_lists: bool = False

    @property
    def primary(self) -> Output:
        return self.outputs[0]


# --------------------------------------------------------------------------- validation


def parse_size(value: Any, what: str = "disk_size") -> int:
    """Bytes from ``4G``, ``4GiB``, ``512M``, ``1.5G`` or a number of bytes (binary units), at most 64T."""
    size = parse_any_size(value, what, "4G")
    if size > MAX_DISK_SIZE:
        raise BakeryError(
            "%s %r is too large: at most 64T (the largest EBS volume and Compute Engine disk)" % (what, value)
        )
    return size


def round_up(value: int, unit: int = MIB) -> int:
    return -(-value // unit) * unit


def output_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise BakeryError("unsupported output format %r: choose one of %s" % (fmt, ", ".join(FORMATS)))
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSION_FORMATS:
        raise BakeryError(
            "cannot tell the format of output %s from its name: end it in %s or give format"
            % (path, ", ".join(sorted(EXTENSION_FORMATS)))
        )
    return EXTENSION_FORMATS[ext]


def parse_outputs(raw: Sequence[Mapping[str, Any]]) -> list[Output]:
    if not raw:
        raise BakeryError("qemu_image: outputs must name at least one output file")
    outputs = []
    seen: set[str] = set()
    for entry in raw:
        path = str(entry.get("path") or "")
        if not path:
            raise BakeryError("qemu_image: every output needs a path")
        path = os.path.abspath(os.path.expanduser(path))
        if path in seen:
            raise BakeryError("qemu_image: output %s is listed twice" % path)
        seen.add(path)
        if os.path.isdir(path):
            raise BakeryError("qemu_image: output %s is a directory; give the disk file's name" % path)
        fmt = output_format(path, entry.get("format"))
        compress = bool(entry.get("compress"))
        if compress and fmt != "qcow2":
            raise BakeryError(
                "qemu_image: compress is for qcow2 outputs only (output %s is %s)" % (path, fmt)
            )
        outputs.append(Output(path=path, format=fmt, compress=compress))
    return outputs


def parse_checksum(value: Any) -> str | None:
    if value in (None, ""):
        return None
    match = _SHA256_RE.match(str(value).strip())
    if not match:
        raise BakeryError(
            "image_checksum %r is not a sha256: give 64 hex digits, optionally after 'sha256:'" % value
        )
    return match.group(1).lower()


def parse_options(params: Mapping[str, Any]) -> DiskOptions:
    outputs = parse_outputs(params.get("outputs") or [])
    rootfs = params.get("rootfs") or None
    image = params.get("image") or None
    if bool(rootfs) == bool(image):
        raise BakeryError(
            "qemu_image: give exactly one of rootfs (a tarball or directory) and image (a disk image)"
        )
    if rootfs:
        rootfs = os.path.abspath(os.path.expanduser(str(rootfs)))
    if image:
        image = os.path.abspath(os.path.expanduser(str(image)))
    disk_size = round_up(parse_size(params.get("disk_size") or "4G"))
    if rootfs and disk_size < ROOT_START + MIN_ROOT + TAIL:
        raise BakeryError(
            "disk_size %s is too small: a disk made from a rootfs needs at least %d MiB"
            % (params.get("disk_size"), (ROOT_START + MIN_ROOT + TAIL) // MIB)
        )
    image_format = params.get("image_format") or None
    if image_format and image_format not in SOURCE_FORMATS:
        raise BakeryError(
            "unsupported image_format %r: an existing disk image is qcow2 or raw" % image_format
        )
    backing = bool(params.get("backing"))
    if backing and any(out.format != "qcow2" for out in outputs):
        raise BakeryError("qemu_image: backing=true makes qcow2 overlays; every output must be qcow2")
    if backing and rootfs:
        raise BakeryError("qemu_image: backing is for image, not rootfs")
    reassemble = bool(params.get("reassemble"))
    if reassemble and (not image or backing):
        raise BakeryError(
            "qemu_image: reassemble makes a disk again from image's tree; give image, not backing"
        )
    if reassemble and disk_size < ROOT_START + MIN_ROOT + TAIL:
        raise BakeryError(
            "disk_size %s is too small: a disk made from a tree needs at least %d MiB"
            % (params.get("disk_size"), (ROOT_START + MIN_ROOT + TAIL) // MIB)
        )
    hostname = params.get("hostname") or None
    if hostname and not _HOSTNAME_RE.match(hostname):
        raise BakeryError(
            "hostname %r is not valid: lowercase letters, digits and '-', at most 63" % hostname
        )
    cmdline = " ".join(str(params.get("kernel_cmdline") or "").split())
    vagrant = bool(params.get("vagrant"))
    vagrant_key = params.get("vagrant_key") or None
    if vagrant and rootfs:
        vagrant_key = find_vagrant_key(vagrant_key)
    elif vagrant:
        raise BakeryError(
            "qemu_image: vagrant=true prepares a rootfs; an existing image must already be a base box"
        )
    timeout = int(params.get("timeout") or COMMAND_TIMEOUT)
    hygiene, hygiene_results = parse_hygiene(params.get("hygiene"))
    architecture = _qemu_arch.get(params.get("architecture")).name
    return DiskOptions(
        outputs=outputs,
        disk_size=disk_size,
        rootfs=rootfs,
        image=image,
        image_checksum=parse_checksum(params.get("image_checksum")),
        image_format=image_format,
        backing=backing,
        reassemble=reassemble,
        kernel_cmdline=cmdline,
        dhcp=params.get("dhcp") is not False,
        hostname=hostname,
        vagrant=vagrant,
        vagrant_key=vagrant_key,
        inputs={str(k): str(v) for k, v in (params.get("inputs") or {}).items()},
        fingerprint=params.get("fingerprint") or None,
        authorized_keys=[str(key).strip() for key in params.get("authorized_keys") or [] if str(key).strip()],
        force=bool(params.get("force")),
        bake_id=params.get("bake_id") or None,
        timeout=timeout,
        hygiene=hygiene,
        hygiene_results=hygiene_results,
        source_date_epoch=parse_epoch(params.get("source_date_epoch")),
        architecture=architecture,
        apt_lists=bool(params.get("apt_lists")) and bool(rootfs),
    )


def parse_epoch(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return _reproducible.check_epoch(value, "source_date_epoch")
    except BakeryError as exc:
        raise BakeryError("qemu_image: %s" % exc.msg) from None


def disk_epoch(opts: DiskOptions, fp: str) -> int:
    """The time in a disk made from a tree: the option, else one that follows from the fingerprint."""
    if opts.source_date_epoch is not None:
        return opts.source_date_epoch
    return _reproducible.identity_epoch(fp)


def parse_hygiene(params: Any) -> tuple[_hygiene.Options | None, list[dict[str, Any]] | None]:
    """The ``hygiene`` option: its checks, and the results of checks made elsewhere when it has them."""
    if not params:
        return None, None
    results = params.get("results")
    if results is not None:
        names = [str(result.get("name")) for result in results if isinstance(result, Mapping)]
        if len(names) != len(results) or not set(names) <= set(_hygiene.CHECKS):
            raise BakeryError("hygiene.results must be the hygiene results of bakery.images.image_hygiene")
    recorded = [dict(result) for result in results] if results is not None else None
    return _hygiene.parse_options(params), recorded


def find_vagrant_key(given: str | None) -> str:
    """Vagrant's insecure public key: *given*, or the one Debian's vagrant package installs."""
    if given:
        path = os.path.abspath(os.path.expanduser(given))
        if not os.path.isfile(path):
            raise BakeryError("vagrant_key %s does not exist" % given)
        return path
    for pattern in VAGRANT_KEY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    raise BakeryError(
        "vagrant=true needs Vagrant's insecure public key: install the Debian package 'vagrant' "
        "(it ships keys/vagrant.pub) or give vagrant_key"
    )


# --------------------------------------------------------------------------- fingerprint


def describe(opts: DiskOptions) -> dict[str, Any]:
    """What decides the disk besides the given inputs (readable; kept in the sidecar)."""
    values: dict[str, Any] = {
        "layout": LAYOUT_VERSION,
        "disk_size": opts.disk_size,
        "kernel_cmdline": opts.kernel_cmdline,
        "dhcp": opts.dhcp,
        "hostname": opts.hostname,
        "vagrant": opts.vagrant,
        "vagrant_key": digest_file(opts.vagrant_key) if opts.vagrant_key else None,
        "compress": sorted(out.path for out in opts.outputs if out.compress),
    }
    if opts.image:
        values.update(backing=opts.backing, image_path=opts.image if opts.backing else None)
    if opts.architecture != _qemu_arch.DEFAULT:
        # (amd64 disks keep the fingerprints they had before disks had an architecture)
        values["architecture"] = opts.architecture
    return values


def check_source(opts: DiskOptions) -> None:
    """The source is what it claims to be (a tree, a whole tarball, a disk image) before anything is made."""
    if opts.rootfs:
        if not os.path.isdir(opts.rootfs):
            check_tarball(opts.rootfs, "rootfs")
        return
    image = str(opts.image)
    if not os.path.isfile(image):
        raise BakeryError("image %s does not exist (or is not a file)" % image)
    with open(image, "rb") as handle:
        is_qcow2 = handle.read(4) == QCOW2_MAGIC
    if opts.image_format == "qcow2" and not is_qcow2:
        raise BakeryError("image %s is not a qcow2 image (image_format is qcow2)" % image)
    if not is_qcow2:
        check_raw_disk(image, "image")


def source_digest(opts: DiskOptions) -> str:
    """Identity of the source when the caller gave no inputs: the tarball's, tree's or image's content."""
    source = str(opts.image or opts.rootfs)
    if not os.path.exists(source):
        raise BakeryError("%s %s does not exist" % ("image" if opts.image else "rootfs", source))
    if opts.image:
        return opts.image_checksum or digest_file(opts.image)
    rootfs = str(opts.rootfs)
    if os.path.isdir(rootfs):
        return digest_tree(rootfs)
    sidecar = read_sidecar(rootfs)
    if sidecar and sidecar.get("fingerprint") and sidecar.get("size") == os.path.getsize(rootfs):
        return str(sidecar["fingerprint"])
    return digest_file(rootfs)


def compute_inputs(opts: DiskOptions, resolve_source: bool = True) -> dict[str, str]:
    """Named input digests of the disk: the caller's inputs (or the source's content) plus the disk options."""
    inputs = dict(opts.inputs)
    if opts.fingerprint:
        # a converted builder disk: the inputs and fingerprint are those its launch looked up
        return inputs
    if not inputs and resolve_source:
        inputs["source"] = source_digest(opts)
    elif opts.image and resolve_source:
        # the caller's inputs say how it was provisioned; the image's identity is its content
        if not opts.image_checksum and not os.path.isfile(opts.image):
            raise BakeryError("image %s does not exist (or is not a file)" % opts.image)
        inputs["image"] = opts.image_checksum or digest_file(opts.image)
    inputs["disk"] = digest_value(describe(opts))
    if opts.hygiene:
        # the checks a disk passed are part of what it is: tighter ones check it again
        inputs["hygiene"] = digest_value(opts.hygiene.describe())
    return inputs


def output_state(out: Output, fp: str) -> tuple[bool, dict[str, Any] | None]:
    sidecar = read_sidecar(out.path)
    if not sidecar or sidecar.get("fingerprint") != fp or sidecar.get("format") != out.format:
        return False, sidecar
    try:
        size = os.path.getsize(out.path)
    except OSError:
        return False, sidecar
    return sidecar.get("size") == size, sidecar


def output_result(out: Output, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": out.format,
        "path": out.path,
        "size": sidecar.get("size"),
        "sha256": sidecar.get("sha256"),
    }


# --------------------------------------------------------------------------- commands


def which(program: str) -> str:
    found = shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), SYSTEM_PATH]))
    if not found:
        raise BakeryError(
            "%s is not installed on the build host; install the Debian package %r (apt-get install %s)"
            % (program, TOOLS.get(program, program), TOOLS.get(program, program))
        )
    return found


def check_tools(from_rootfs: bool, arch: _qemu_arch.Arch = _qemu_arch.AMD64) -> None:
    which("qemu-img")
    if not from_rootfs:
        return
    for program in (
        "sfdisk",
        "mkfs.ext4",
        "debugfs",
        "dumpe2fs",
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "grub-mkimage",
        "tar",
    ):
        which(program)
    if arch.grub_in_tree:
        # GRUB's EFI modules come from the tree (checked when it is unpacked); no BIOS boot
        return
    for directory, package in GRUB_PLATFORMS.items():
        if not os.path.isfile(os.path.join(directory, "kernel.img")):
            raise BakeryError(
                "GRUB for %s is not installed on the build host (%s missing); install the Debian package %r"
                % (os.path.basename(directory), directory, package)
            )
    if not os.path.isfile(os.path.join(GRUB_PC_DIR, "grub-bios-setup")) and not shutil.which(
        "grub-bios-setup"
    ):
        raise BakeryError("grub-bios-setup is not installed; install the Debian package 'grub-pc-bin'")


def run(
    argv: list[str],
    what: str,
    timeout: int = COMMAND_TIMEOUT,
    stdin: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """Run *argv*; its output, or BakeryError naming *what* failed with the last lines of output."""
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), SYSTEM_PATH])
    env.update(extra_env or {})
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise BakeryError("%s timed out after %d s" % (what, timeout), command=argv) from exc
    except OSError as exc:
        raise BakeryError("%s: cannot run %s: %s" % (what, argv[0], exc), command=argv) from exc
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = [line for line in output if line.strip()][-15:]
        raise BakeryError(
            "%s failed (rc=%d): %s" % (what, proc.returncode, last[-1] if last else "no output"),
            command=argv,
            rc=proc.returncode,
            stderr_lines=last,
        )
    return proc.stdout


def image_info(path: str) -> dict[str, Any]:
    text = run([which("qemu-img"), "info", "--output=json", path], "qemu-img info %s" % path)
    return json.loads(text)


# --------------------------------------------------------------------------- the tree


def inside(root: str, relative: str) -> str:
    """*relative* under *root*, refusing symlinks on the way (a tree's absolute links point at the host)."""
    parts = [part for part in relative.strip("/").split("/") if part]
    current = root
    for part in parts[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise BakeryError("rootfs: %s is a symlink; bakery does not write through links" % current)
        if not os.path.exists(current):
            os.mkdir(current, 0o755)
    return os.path.join(current, parts[-1])


def write_file(root: str, relative: str, content: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path = inside(root, relative)
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def link(root: str, relative: str, target: str) -> None:
    path = inside(root, relative)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def tree_size(root: str) -> int:
    """Bytes the tree occupies (allocated blocks; hard links counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += max(st.st_blocks * 512, 0) + 256
    return total


def find_kernel(root: str) -> tuple[str, str]:
    """Kernel and initramfs as GRUB sees them from the root file system: the /vmlinuz links, else /boot's newest."""
    if os.path.lexists(os.path.join(root, "vmlinuz")) and os.path.lexists(os.path.join(root, "initrd.img")):
        return "/vmlinuz", "/initrd.img"
    kernels = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))

    def version_key(path: str) -> list[Any]:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", os.path.basename(path))]

    for kernel in sorted(kernels, key=version_key, reverse=True):
        version = os.path.basename(kernel)[len("vmlinuz-") :]
        if os.path.exists(os.path.join(root, "boot", "initrd.img-" + version)):
            return "/boot/vmlinuz-" + version, "/boot/initrd.img-" + version
    raise BakeryError(
        "rootfs %s has no kernel and initramfs (no /vmlinuz, no /boot/vmlinuz-* with its initrd.img): install "
        "a kernel such as linux-image-cloud-amd64 with initramfs-tools in it (the qemu target adds them)"
        % root
    )


@dataclass
class Layout:
    disk_size: int
    root_uuid: str
    esp_id: str
    disk_guid: str
    part_guids: list[str]
    # the root file system's directory hash seed and the salt of the Vagrant user's password: not random
    hash_seed: str = ""
    salt: str = ""
    root_type: str = GPT_LINUX_ROOT_X86_64

    @property
    def root_size(self) -> int:
        return (self.disk_size - ROOT_START - TAIL) // BLOCK * BLOCK

    def sfdisk_script(self) -> str:
        lines = [
            "label: gpt",
            "label-id: %s" % self.disk_guid,
            "unit: sectors",
            "first-lba: 2048",
            'start=%d, size=%d, type=%s, uuid=%s, name="bios"'
            % (BIOS_START // SECTOR, BIOS_SIZE // SECTOR, GPT_BIOS_BOOT, self.part_guids[0]),
            'start=%d, size=%d, type=%s, uuid=%s, name="esp"'
            % (ESP_START // SECTOR, ESP_SIZE // SECTOR, GPT_ESP, self.part_guids[1]),
            'start=%d, size=%d, type=%s, uuid=%s, name="root"'
            % (ROOT_START // SECTOR, self.root_size // SECTOR, self.root_type, self.part_guids[2]),
        ]
        return "\n".join(lines) + "\n"


def make_layout(disk_size: int, fp: str, root_type: str = GPT_LINUX_ROOT_X86_64) -> Layout:
    """Sizes and identifiers; the identifiers follow from the fingerprint, so a rebuild gives the same ones."""

    def ident(name: str) -> str:
        return str(uuid.UUID(digest_value([fp, name])[:32], version=4))

    return Layout(
        disk_size=disk_size,
        root_uuid=ident("root-fs"),
        esp_id=digest_value([fp, "esp"])[:8].upper(),
        disk_guid=ident("disk").upper(),
        part_guids=[ident("part-%d" % n).upper() for n in range(3)],
        hash_seed=ident("hash-seed"),
        salt=digest_value([fp, "salt"])[:16],
        root_type=root_type,
    )


def grub_cfg(
    layout: Layout, kernel: str, initrd: str, cmdline: str, arch: _qemu_arch.Arch = _qemu_arch.AMD64
) -> str:
    args = " ".join(
        part
        for part in (
            "root=UUID=%s ro console=tty0 console=%s,115200n8" % (layout.root_uuid, arch.console),
            cmdline,
        )
        if part
    )
    # a BIOS machine's GRUB writes to the serial port itself; UEFI-only machines' firmware console is the serial one
    serial = (
        ["serial --unit=0 --speed=115200", "terminal_input serial console", "terminal_output serial console"]
        if arch.bios
        else []
    )
    return "\n".join(
        [
            "# written by bakery (bakery.images.qemu_image); the kernel links /vmlinuz and /initrd.img follow upgrades",
            *serial,
            "set timeout=1",
            "set default=0",
            "menuentry 'Debian GNU/Linux' {",
            "    search --no-floppy --fs-uuid --set=root %s" % layout.root_uuid,
            "    linux %s %s" % (kernel, args),
            "    initrd %s" % initrd,
            "}",
            "",
        ]
    )


def early_cfg(layout: Layout) -> str:
    return "search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n" % layout.root_uuid


# Only ed25519 and ECDSA host keys: they take milliseconds, where an RSA key takes minutes in an emulated
# (TCG) guest; sshd is told to use just these, so that it does not look for the missing RSA key.
FIRSTBOOT_KEYS_UNIT = """\
# written by bakery: every machine made from this image gets its own SSH host keys
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/bin/sh -c 'test -e /etc/ssh/ssh_host_ecdsa_key || ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key'

[Install]
WantedBy=multi-user.target ssh.service
"""

DHCP_NETWORK = """\
# written by bakery: DHCP on the first NIC (and any other Ethernet)
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""


FSTAB_HEADER = "# written by bakery: the root file system; the entries after it are the tree's own"


def image_fstab(existing: str, root_uuid: str) -> str:
    """The disk's fstab: its root file system by UUID, then the entries the tree (its roles) had, but for
    another root and Debian's placeholder comment."""
    kept = []
    for line in existing.splitlines():
        fields = line.split()
        # FSTAB_HEADER and the older header both start so
        if line.startswith(("# UNCONFIGURED FSTAB", "# written by bakery")):
            continue
        if fields and not fields[0].startswith("#") and len(fields) >= 2 and fields[1] == "/":
            continue
        kept.append(line)
    while kept and not kept[0].strip():
        kept.pop(0)
    lines = [FSTAB_HEADER, "UUID=%s / ext4 rw,errors=remount-ro 0 1" % root_uuid, *kept]
    return "\n".join(lines) + "\n"


def prepare_tree(root: str, opts: DiskOptions, layout: Layout, epoch: int | None = None) -> dict[str, Any]:
    """Make the tree a machine image: fstab, grub.cfg, first-boot host keys, machine-id, DHCP, Vagrant."""
    kernel, initrd = find_kernel(root)
    write_file(root, "etc/fstab", image_fstab(_tree_text(root, "etc/fstab"), layout.root_uuid))
    arch = _qemu_arch.get(opts.architecture)
    write_file(root, "boot/grub/grub.cfg", grub_cfg(layout, kernel, initrd, opts.kernel_cmdline, arch))
    # no machine shares the image's identity: host keys and machine-id are made at first boot
    for key in glob.glob(os.path.join(root, "etc", "ssh", "ssh_host_*")):
        os.unlink(key)
    if os.path.exists(os.path.join(root, "usr", "sbin", "sshd")):
        write_file(root, "etc/systemd/system/bakery-ssh-hostkeys.service", FIRSTBOOT_KEYS_UNIT)
        write_file(
            root,
            "etc/ssh/sshd_config.d/bakery-host-keys.conf",
            "# written by bakery: the host keys made at first boot\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n",
        )
        for wants in ("multi-user.target.wants", "ssh.service.wants"):
            link(
                root,
                "etc/systemd/system/%s/bakery-ssh-hostkeys.service" % wants,
                "../bakery-ssh-hostkeys.service",
            )
    if os.path.lexists(os.path.join(root, "etc", "machine-id")):
        write_file(root, "etc/machine-id", "", mode=0o444)
    dbus_id = os.path.join(root, "var", "lib", "dbus", "machine-id")
    if os.path.isfile(dbus_id) and not os.path.islink(dbus_id):
        os.unlink(dbus_id)
    name_hostname(root, opts.hostname)
    if opts.dhcp:
        write_file(root, "etc/systemd/network/50-bakery-dhcp.network", DHCP_NETWORK)
        enable_units(root, ["systemd-networkd.service", "systemd-resolved.service"])
    if opts.vagrant:
        make_vagrant_user(root, opts, layout.salt, epoch)
    if opts.authorized_keys:
        write_file(root, "root/.ssh/authorized_keys", "\n".join(opts.authorized_keys) + "\n", mode=0o600)
        os.chmod(inside(root, "root/.ssh/authorized_keys").rsplit("/", 1)[0], 0o700)
    return {"kernel": kernel, "initrd": initrd}


def _tree_text(root: str, relative: str) -> str:
    """The text of the tree's regular file *relative*; empty when it is missing or a link."""
    path = os.path.join(root, relative)
    return _read(path) if os.path.isfile(path) and not os.path.islink(path) else ""


def image_hostname(root: str, hostname: str | None) -> str:
    """The image's hostname: *hostname*; without it, the tree's, unless it has none or the build host's
    (which mmdebstrap copies), then ``debian``."""
    if hostname:
        return hostname
    current = _tree_text(root, "etc/hostname").strip()
    return current if current and current != socket.gethostname() else "debian"


def name_hostname(root: str, hostname: str | None) -> None:
    """/etc/hostname: :func:`image_hostname`; /etc/hosts resolves it, unless the tree has its own."""
    current = _tree_text(root, "etc/hostname").strip()
    hostname = image_hostname(root, hostname)
    if hostname != current:
        write_file(root, "etc/hostname", hostname + "\n")
    if not os.path.lexists(os.path.join(root, "etc", "hosts")):
        write_file(
            root,
            "etc/hosts",
            "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n" % hostname,
        )


def enable_units(root: str, units: list[str]) -> None:
    """``systemctl enable`` the units the tree has (offline: systemctl sees it is in a chroot)."""
    present = [
        unit
        for unit in units
        if any(
            os.path.exists(os.path.join(root, d, unit))
            for d in ("lib/systemd/system", "usr/lib/systemd/system")
        )
    ]
    if present:
        run(
            ["chroot", root, "systemctl", "enable", *present],
            "systemctl enable %s in the rootfs" % " ".join(present),
        )


def make_vagrant_user(root: str, opts: DiskOptions, salt: str = "", epoch: int | None = None) -> None:
    """Vagrant's base-box conventions: user vagrant (password vagrant), passwordless sudo, the insecure key.

    With *salt* (and openssl on the build host) the password's hash has that salt, not a random one, and with
    *epoch* shadow's last password change is that day: a rebuild writes the same /etc/shadow."""
    if not os.path.exists(os.path.join(root, "usr", "bin", "sudo")):
        raise BakeryError("vagrant=true needs sudo in the rootfs; add the package 'sudo'")
    if not os.path.exists(os.path.join(root, "usr", "sbin", "sshd")):
        raise BakeryError("vagrant=true needs an SSH server in the rootfs; add the package 'openssh-server'")
    passwd = _read(os.path.join(root, "etc", "passwd"))
    if not re.search(r"^vagrant:", passwd, re.MULTILINE):
        env = _reproducible.environment(epoch) if epoch is not None else None
        run(
            ["chroot", root, "useradd", "--create-home", "--user-group", "--shell", "/bin/bash", "vagrant"],
            "useradd vagrant in the rootfs",
            extra_env=env,
        )
        openssl = shutil.which("openssl", path=os.pathsep.join([os.environ.get("PATH", ""), SYSTEM_PATH]))
        if salt and openssl:
            hashed = run(
                [openssl, "passwd", "-6", "-salt", salt, "-stdin"], "openssl passwd", stdin="vagrant\n"
            ).strip()
            run(
                ["chroot", root, "chpasswd", "-e"],
                "chpasswd in the rootfs",
                stdin="vagrant:%s\n" % hashed,
                extra_env=env,
            )
        else:
            run(
                ["chroot", root, "chpasswd"],
                "chpasswd in the rootfs",
                stdin="vagrant:vagrant\n",
                extra_env=env,
            )
    entry = next(
        line
        for line in _read(os.path.join(root, "etc", "passwd")).splitlines()
        if line.startswith("vagrant:")
    )
    fields = entry.split(":")
    uid, gid, home = int(fields[2]), int(fields[3]), fields[5].lstrip("/")
    write_file(root, "etc/sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
    ssh_dir = inside(root, home + "/.ssh/x")
    ssh_dir = os.path.dirname(ssh_dir)
    os.chmod(ssh_dir, 0o700)
    os.chown(ssh_dir, uid, gid)
    key = _read(str(opts.vagrant_key)).strip() + "\n"
    write_file(root, home + "/.ssh/authorized_keys", key, mode=0o600, uid=uid, gid=gid)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


# --------------------------------------------------------------------------- the disk


def mkfs_root_options() -> list[str]:
    # GRUB 2.06 cannot read ext4 with metadata_csum_seed (an incompatible feature newer mke2fs enable)
    return ["-O", "^metadata_csum_seed"]


def make_raw_disk(
    raw: str,
    root: str,
    layout: Layout,
    timeout: int,
    epoch: int | None = None,
    arch: _qemu_arch.Arch = _qemu_arch.AMD64,
) -> None:
    """The bootable raw disk in *raw* from the prepared tree *root*; no loop device, no mount.

    With *epoch*, the same tree gives the same bytes: the file systems' own times and every time in the tree
    are the epoch (the tree's modification times clamped to it), and their identifiers follow from *layout*."""
    fake_time = {"E2FSPROGS_FAKE_TIME": str(epoch)} if epoch is not None else None
    # before anything is written: the tree holds GRUB's modules for an architecture the host has none of
    efi_modules = _qemu_arch.grub_dir(arch, root)
    if epoch is not None:
        _reproducible.clamp_times(root, epoch)
    with open(raw, "wb") as handle:
        handle.truncate(layout.disk_size)
    run(
        [which("sfdisk"), "--no-reread", "--no-tell-kernel", "--quiet", raw],
        "sfdisk",
        stdin=layout.sfdisk_script(),
    )
    run(
        [
            which("mkfs.ext4"),
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            str(BLOCK),
            "-L",
            "root",
            "-U",
            layout.root_uuid,
            *mkfs_root_options(),
            "-E",
            "offset=%d,root_owner=0:0%s"
            % (ROOT_START, ",hash_seed=%s" % layout.hash_seed if layout.hash_seed else ""),
            "-d",
            root,
            raw,
            str(layout.root_size // BLOCK),
        ],
        "mkfs.ext4 -d (the rootfs does not fit? raise disk_size)",
        timeout=timeout,
        extra_env=fake_time,
    )
    if epoch is not None:
        set_change_times(raw, epoch, timeout)
    run(
        [
            which("mkfs.vfat"),
            "-F",
            "32",
            # one sector per cluster, as the size (not the disk file's) calls for; hidden sectors = offset
            "-s",
            "1",
            "-S",
            str(SECTOR),
            "-h",
            str(ESP_START // SECTOR),
            "-n",
            "EFI",
            # constant times (and a constant serial, replaced by the layout's below)
            "--invariant",
            "--offset=%d" % (ESP_START // SECTOR),
            raw,
            str(ESP_SIZE // 1024),
        ],
        "mkfs.vfat (ESP)",
    )
    set_fat_serial(raw, ESP_START, layout.esp_id)
    with tempfile.TemporaryDirectory(prefix="bakery-grub-") as work:
        early = os.path.join(work, "early.cfg")
        with open(early, "w", encoding="utf-8") as handle:
            handle.write(early_cfg(layout))
        efi = os.path.join(work, arch.efi_boot_file)
        run(
            [
                which("grub-mkimage"),
                "-O",
                arch.efi_platform,
                "-d",
                efi_modules,
                "-p",
                "/boot/grub",
                "-c",
                early,
                "-o",
                efi,
                *GRUB_EFI_MODULES,
            ],
            "grub-mkimage %s" % arch.efi_platform,
        )
        _qemu_arch.check_efi_image(arch, efi)
        esp = "%s@@%d" % (raw, ESP_START)
        # mtools would refuse a FAT whose size is not a multiple of a track; it dates what it makes with
        # SOURCE_DATE_EPOCH, and mcopy -m keeps the file's own time
        mtools_env = {"MTOOLS_SKIP_CHECK": "1"}
        if epoch is not None:
            mtools_env.update(_reproducible.environment(epoch))
            os.utime(efi, (epoch, epoch))
        run([which("mmd"), "-i", esp, "::/EFI", "::/EFI/BOOT"], "mmd (ESP)", extra_env=mtools_env)
        run(
            [which("mcopy"), "-m", "-i", esp, efi, "::/EFI/BOOT/" + arch.efi_boot_file],
            "mcopy %s (ESP)" % arch.efi_boot_file,
            extra_env=mtools_env,
        )
        if not arch.bios:
            return
        core = os.path.join(work, "core.img")
        run(
            [
                which("grub-mkimage"),
                "-O",
                "i386-pc",
                "-d",
                GRUB_PC_DIR,
                "-p",
                "/boot/grub",
                "-c",
                early,
                "-o",
                core,
                *GRUB_PC_MODULES,
            ],
            "grub-mkimage i386-pc",
        )
        embed_bios_boot(raw, os.path.join(GRUB_PC_DIR, "boot.img"), core)


# FAT32 boot sector: the volume serial (BS_VolID), and the sector of the backup boot sector
FAT32_VOLUME_ID = 0x43
FAT32_BACKUP_SECTOR = 6


def set_fat_serial(raw: str, offset: int, serial: str) -> None:
    """The FAT32 volume serial (8 hex digits) at *offset* of *raw*, in the boot sector and its backup."""
    value = int(serial, 16).to_bytes(4, "little")
    with open(raw, "r+b") as disk:
        for sector in (0, FAT32_BACKUP_SECTOR):
            disk.seek(offset + sector * SECTOR + FAT32_VOLUME_ID)
            disk.write(value)


def used_inodes(dumpe2fs_output: str) -> list[int]:
    """The inodes in use that hold the tree (the root directory and every one from the first non-reserved
    inode on), from ``dumpe2fs``'s output: every inode but the free ranges it lists per group."""
    count = re.search(r"^Inode count:\s+(\d+)", dumpe2fs_output, re.MULTILINE)
    first = re.search(r"^First inode:\s+(\d+)", dumpe2fs_output, re.MULTILINE)
    if not count or not first:
        raise BakeryError("dumpe2fs printed no inode count: %s" % dumpe2fs_output[:200])
    free: list[tuple[int, int]] = []
    for line in re.findall(r"^\s+Free inodes:(.*)$", dumpe2fs_output, re.MULTILINE):
        for part in line.split(","):
            part = part.strip()
            if part:
                bounds = part.split("-", 1)
                free.append((int(bounds[0]), int(bounds[-1])))
    # the gaps between the free ranges (a big file system has billions of inodes, few of them used)
    used: list[int] = []
    start = int(first.group(1))
    following = 1
    for low, high in sorted(free) + [(int(count.group(1)) + 1, int(count.group(1)) + 1)]:
        used.extend(ino for ino in range(following, low) if ino == 2 or ino >= start)
        following = max(following, high + 1)
    return used


def set_change_times(raw: str, epoch: int, timeout: int) -> int:
    """Every inode of the root file system in *raw* gets *epoch* as its change time (``mke2fs -d`` copies the
    tree's, which is when it was written; only the kernel sets it on the host); the number of inodes."""
    fs = "%s?offset=%d" % (raw, ROOT_START)
    env = {"E2FSPROGS_FAKE_TIME": str(epoch)}
    inodes = used_inodes(run([which("dumpe2fs"), fs], "dumpe2fs of the root file system", extra_env=env))
    with tempfile.NamedTemporaryFile(
        "w", prefix="bakery-ctime-", suffix=".debugfs", encoding="utf-8"
    ) as handle:
        handle.write("".join("sif <%d> ctime @%d\n" % (ino, epoch) for ino in inodes))
        handle.flush()
        proc_err = run_debugfs([which("debugfs"), "-w", "-f", handle.name, fs], env, timeout)
    if proc_err:
        raise BakeryError("debugfs could not set the change times: %s" % proc_err[-500:])
    return len(inodes)


def run_debugfs(argv: list[str], env: Mapping[str, str], timeout: int) -> str:
    """Run debugfs (which exits 0 whatever its requests did); what it printed on stderr but its banner."""
    merged = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", **env)
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            env=merged,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BakeryError("debugfs: %s" % exc, command=argv) from exc
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0:
        errors.append("exit %d" % proc.returncode)
    return "\n".join(errors)


# offsets in GRUB's i386-pc boot.img (include/grub/i386/pc/boot.h)
BOOT_BPB_START, BOOT_BPB_END = 0x03, 0x5A
BOOT_KERNEL_SECTOR = 0x5C
BOOT_DRIVE = 0x64
BOOT_DRIVE_CHECK = 0x66
BOOT_NT_MAGIC, BOOT_PART_END = 0x1B8, 0x1FE
# first segment core.img's second sector is loaded at (GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20)
CORE_SEGMENT = 0x820


def embed_bios_boot(raw: str, boot_img: str, core_img: str) -> None:
    """Install GRUB for BIOS in the disk file, as grub-bios-setup does when it embeds core.img.

    grub-bios-setup also opens the host disk that holds its ``-d`` directory, which fails on some hosts (a
    virtio disk, a container's overlay), so bakery does the same few writes itself: boot.img's code goes into
    the protective MBR (its partition table and disk signature kept) and points at the BIOS boot partition;
    core.img goes into that partition with the blocklist of its remaining sectors in its first sector.
    """
    with open(boot_img, "rb") as handle:
        boot = bytearray(handle.read())
    with open(core_img, "rb") as handle:
        core = bytearray(handle.read())
    if len(boot) != SECTOR:
        raise BakeryError("%s is not a 512-byte boot sector" % boot_img)
    sectors = -(-len(core) // SECTOR)
    if sectors * SECTOR > BIOS_SIZE:
        raise BakeryError("GRUB's core image (%d bytes) does not fit the BIOS boot partition" % len(core))
    core += bytes(sectors * SECTOR - len(core))
    first = BIOS_START // SECTOR
    with open(raw, "r+b") as disk:
        mbr = bytearray(disk.read(SECTOR))
        boot[BOOT_BPB_START:BOOT_BPB_END] = mbr[BOOT_BPB_START:BOOT_BPB_END]
        boot[BOOT_NT_MAGIC:BOOT_PART_END] = mbr[BOOT_NT_MAGIC:BOOT_PART_END]
        boot[BOOT_KERNEL_SECTOR : BOOT_KERNEL_SECTOR + 8] = first.to_bytes(8, "little")
        boot[BOOT_PART_END : BOOT_PART_END + 2] = b"\x55\xaa"
        boot[BOOT_DRIVE] = 0xFF  # the drive the BIOS booted from
        boot[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"  # a hard disk: no floppy probe
        # diskboot.img's blocklist (the last 12 bytes of core.img's first sector): the other sectors
        entry = SECTOR - 12
        core[entry : entry + 8] = (first + 1).to_bytes(8, "little")
        core[entry + 8 : entry + 10] = (sectors - 1).to_bytes(2, "little")
        core[entry + 10 : entry + 12] = CORE_SEGMENT.to_bytes(2, "little")
        core[entry - 12 : entry] = bytes(12)  # terminator
        disk.seek(BIOS_START)
        disk.write(core)
        disk.seek(0)
        disk.write(boot)


def convert(
    source: str, source_format: str, out: Output, target: str, timeout: int, backing: str | None = None
) -> None:
    argv = [which("qemu-img"), "convert", "-f", source_format, "-O", out.format]
    if out.compress:
        argv.append("-c")
    argv += FORMATS[out.format][1]
    if backing:
        argv += ["-B", backing, "-F", source_format]
    argv += [source, target]
    run(argv, "qemu-img convert to %s" % out.format, timeout=timeout)


VMDK_MAGIC = b"KDMV"
_VMDK_CID_RE = re.compile(rb"^(parent)?CID=[0-9a-fA-F]+$", re.MULTILINE)
_VMDK_EXTENT_RE = re.compile(rb'^(RW \d+ SPARSE )"[^"\n]*"$', re.MULTILINE)


def fix_vmdk_descriptor(path: str, name: str, fp: str) -> bool:
    """The descriptor of the sparse VMDK *path* without what ``qemu-img convert`` makes up: a content id
    (CID) derived from *fp* instead of a random one, and the extent named *name* (the output's final file name)
    instead of the temporary file it was written to. The descriptor keeps its place and size; False when
    *path* has no embedded descriptor."""
    with open(path, "r+b") as handle:
        header = handle.read(512)
        if header[:4] != VMDK_MAGIC:
            return False
        offset = int.from_bytes(header[28:36], "little") * SECTOR
        size = int.from_bytes(header[36:44], "little") * SECTOR
        if not offset or not size:
            return False
        handle.seek(offset)
        descriptor = handle.read(size)
        text = descriptor.rstrip(b"\0")
        cid = b"CID=%s" % digest_value([fp, "vmdk-cid"])[:8].encode()
        text = _VMDK_CID_RE.sub(lambda m: m.group(0) if m.group(1) else cid, text)
        text = _VMDK_EXTENT_RE.sub(lambda m: m.group(1) + b'"' + name.encode() + b'"', text)
        if len(text) > size:
            raise BakeryError(
                "the VMDK descriptor of %s does not fit its %d bytes with %s" % (path, size, name)
            )
        handle.seek(offset)
        handle.write(text + bytes(size - len(text)))
    return True


def verify_image(opts: DiskOptions) -> tuple[str, int]:
    """Format and virtual size of the source image, after its checksum matched."""
    image = str(opts.image)
    if not os.path.isfile(image):
        raise BakeryError("image %s does not exist" % image)
    if opts.image_checksum:
        actual = digest_file(image)
        if actual != opts.image_checksum:
            raise BakeryError(
                "checksum mismatch for image %s: expected sha256 %s, got %s"
                % (image, opts.image_checksum, actual)
            )
    info = image_info(image)
    fmt = str(info.get("format"))
    if opts.image_format and fmt != opts.image_format:
        raise BakeryError("image %s is %s, not %s as image_format says" % (image, fmt, opts.image_format))
    if fmt not in SOURCE_FORMATS:
        raise BakeryError("image %s is %s; an existing disk image must be qcow2 or raw" % (image, fmt))
    return fmt, int(info.get("virtual-size") or 0)


# --------------------------------------------------------------------------- chroot work directories


def unpack(
    tarball: str,
    workdir: str,
    bake_id: str | None,
    steps: Steps,
    hostname: str | None = None,
    epoch: int | None = None,
    apt_lists: str | None = None,
    layers: Sequence[tuple[str, Mapping[str, Any]]] = (),
    top: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Unpack a rootfs tarball into ``<workdir>/root`` for chroot provisioning; with *apt_lists* (the package
    lists kept beside the rootfs tarball), the tree gets them (``_rootfs.seed_apt_lists``). With *layers* (the
    per-step cache's layers over *tarball*, paths and seals, in order), each is applied after it
    (:func:`apply_layer`). ``<workdir>/tree-snapshot.json`` records the entry the tree stands on (*top*: the seal
    of the last cached entry, None for a rootfs) and each path's ``lstat``, for the layer of the next step.

    The directory is marked temporary (``.bakery-temporary`` holds the bake id) for the cleanup and a
    janitor. While it is provisioned it gets the host's resolv.conf and a policy-rc.d that keeps package
    scripts from starting services; ``build`` puts back what was there before it makes the disk.
    ``<workdir>/enter`` runs a command in the tree isolated from the host (``_isolation``): the builder's
    ``chroot_exe``; the stand-in commands (``_standin``) are in the tree until ``build``.
    """
    if not os.path.isfile(tarball):
        raise BakeryError("rootfs tarball %s does not exist" % tarball)
    if os.path.exists(workdir) and not os.path.exists(os.path.join(workdir, TEMPORARY_MARKER)):
        raise BakeryError(
            "work directory %s exists and is not bakery's; remove it or choose another" % workdir
        )
    if os.path.exists(workdir):
        remove_workdir(workdir)
    os.makedirs(workdir, 0o700)
    steps.add_undo("remove %s" % workdir, lambda: remove_workdir(workdir))
    with open(os.path.join(workdir, TEMPORARY_MARKER), "w", encoding="utf-8") as handle:
        handle.write((bake_id or "") + "\n")
    root = os.path.join(workdir, "root")
    make_tree_directory(root)
    run(
        _step_cache.extract_command(which("tar"), tarball, root),
        "unpacking %s" % tarball,
    )
    for path, seal in layers:
        apply_layer(root, path, seal)
    seeded = _rootfs.seed_apt_lists(apt_lists, root) if apt_lists else None
    write_tree_snapshot(workdir, root, top)
    result = prepare_chroot(workdir, root, hostname, epoch)
    if seeded is not None:
        result["apt_lists"] = seeded
    return result


def apply_layer(root: str, path: str, seal: Mapping[str, Any]) -> None:
    """Apply the per-step cache's layer *path* (with its *seal*) to the tree *root*, which holds the state of the
    layer's parent: remove what the step removed (never through a symbolic link: each directory above must be
    one), clear the extended attributes of the directories it archived (tar sets them, and a directory is not
    replaced as a file is), then unpack it."""
    for name in seal.get("deleted") or []:
        target = _layer_path(root, str(name))
        if os.path.isdir(target) and not os.path.islink(target):
            remove_tree(target)
        elif os.path.lexists(target):
            os.unlink(target)
    for name in seal.get("directories") or []:
        try:
            target = root if name == "." else _layer_path(root, str(name))
        except BakeryError:
            continue  # new in the layer (or under what it replaces): nothing of the parent's to clear
        if os.path.isdir(target) and not os.path.islink(target):
            for attribute in os.listxattr(target, follow_symlinks=False):
                os.removexattr(target, attribute, follow_symlinks=False)
    run(
        _step_cache.extract_command(which("tar"), path, root),
        "unpacking the cached layer %s" % path,
    )


def _layer_path(root: str, name: str) -> str:
    """The path of the tar member *name* (``./a/b``) in *root*, each directory above it a directory, not a link."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise BakeryError("cached layer: %r is no path in the tree" % name)
    current = root
    for part in parts[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current) or not os.path.isdir(current):
            raise BakeryError("cached layer: %s is no directory of the tree (a link?)" % current)
    return os.path.join(current, parts[-1])


def write_tree_snapshot(workdir: str, root: str, top: Mapping[str, Any] | None) -> None:
    """Record which cached entry the tree *root* stands on (*top*: key, position, sha256 and depth; None when it is
    no cached entry's state) and the ``lstat`` of its paths now (``_step_cache.tree_snapshot``)."""
    paths: dict[str, list[int]] = {}
    if top:
        try:
            paths = _step_cache.tree_snapshot(root)
        except OSError:
            top = None  # a tree it cannot read (a path too long): the next step is kept whole
    store_tree_snapshot(workdir, top, paths)


def store_tree_snapshot(workdir: str, top: Mapping[str, Any] | None, paths: Mapping[str, list[int]]) -> None:
    state = {
        "top": {name: top.get(name) for name in ("key", "position", "sha256")}
        | {"depth": int(top.get("depth") or 0)}
        if top
        else None,
        "paths": paths if top else {},
    }
    with open(os.path.join(workdir, _step_cache.SNAPSHOT), "w", encoding="utf-8") as handle:
        # dumps, not dump: json.dump encodes in Python, chunk by chunk (0.35 s for the default tree's 14,000 paths)
        handle.write(json.dumps(state, separators=(",", ":")))


def read_tree_snapshot(workdir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(workdir, _step_cache.SNAPSHOT), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return {"top": None, "paths": {}}
    return (
        state
        if isinstance(state, dict) and isinstance(state.get("paths"), dict)
        else {"top": None, "paths": {}}
    )


def prepare_chroot(
    workdir: str, root: str, hostname: str | None = None, epoch: int | None = None
) -> dict[str, Any]:
    """Make the unpacked tree ready to provision: the host's resolv.conf, a policy-rc.d, the stand-in commands
    (what was there is recorded for :func:`restore_chroot`), and ``<workdir>/enter`` (which exports
    ``SOURCE_DATE_EPOCH`` when *epoch* is given)."""
    state: dict[str, Any] = {}
    for relative, content, mode in (
        (
            "etc/resolv.conf",
            _hygiene.RESOLV_CONF_MARKER
            + "; build puts back the tree's own\n"
            + (_read("/etc/resolv.conf") if os.path.exists("/etc/resolv.conf") else ""),
            0o644,
        ),
        ("usr/sbin/policy-rc.d", "#!/bin/sh\n%s\nexit 101\n" % _hygiene.POLICY_RC_MARKER, 0o755),
    ):
        path = os.path.join(root, relative)
        if os.path.islink(path):
            state[relative] = {"link": os.readlink(path)}
        elif os.path.isfile(path):
            state[relative] = {"content": _read(path), "mode": stat.S_IMODE(os.lstat(path).st_mode)}
        else:
            state[relative] = None
        write_file(root, relative, content, mode=mode)
    with open(os.path.join(workdir, CHROOT_STATE), "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    _standin.install_into_tree(root)
    enter = _isolation.write_enter_script(
        workdir,
        root,
        image_hostname(root, hostname),
        _reproducible.environment(epoch) if epoch is not None else None,
    )
    return {"workdir": workdir, "root": root, "enter": enter}


def restore_chroot(root: str) -> bool:
    """Put back what ``unpack`` replaced for provisioning, when *root* is such a work directory's tree."""
    workdir = os.path.dirname(root.rstrip("/"))
    state_file = os.path.join(workdir, CHROOT_STATE)
    if not (os.path.isfile(state_file) and os.path.isfile(os.path.join(workdir, TEMPORARY_MARKER))):
        return False
    with open(state_file, encoding="utf-8") as handle:
        state = json.load(handle)
    _standin.remove_from_tree(root)
    for relative, before in state.items():
        path = inside(root, relative)
        if os.path.lexists(path):
            os.unlink(path)
        if before is None:
            continue
        if "link" in before:
            os.symlink(before["link"], path)
        else:
            write_file(root, relative, before["content"], mode=int(before["mode"]))
    os.unlink(state_file)
    return True


def mounts_below(path: str) -> list[str]:
    real = os.path.realpath(path).rstrip("/") + "/"
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            points = [line.split()[1].replace("\\040", " ") for line in handle if len(line.split()) > 1]
    except OSError:
        return []
    return [point for point in points if (point.rstrip("/") + "/").startswith(real)]


def remove_workdir(workdir: str) -> bool:
    """Remove a work directory bakery made (it carries ``.bakery-temporary``); never one with a mount in it."""
    if not os.path.lexists(workdir):
        return False
    if not os.path.isfile(os.path.join(workdir, TEMPORARY_MARKER)):
        raise BakeryError(
            "%s is not a bakery work directory (no %s); not removing it" % (workdir, TEMPORARY_MARKER)
        )
    mounted = mounts_below(workdir)
    if mounted:
        raise BakeryError("%s has mounts below it (%s); unmount them first" % (workdir, ", ".join(mounted)))
    remove_tree(workdir)
    return True


def remove_tree(path: str) -> None:
    """Remove the directory *path* with everything below it, on its own file system only. ``rm -rf``, not
    ``shutil.rmtree``: Python 3.11's recurses, and a provisioned tree may be deeper than its recursion limit."""
    run([which("rm"), "-rf", "--one-file-system", "--", path], "removing %s" % path)


def marked_workdirs(paths: Sequence[str], depth: int = 3) -> list[str]:
    """Work directories bakery made (holding ``.bakery-temporary``) in *paths*, up to *depth* levels down:
    chroot work directories (``<cache_dir>/qemu/<bake id>-<target>``) and a build's ``.bakery-qemu-*``."""
    found: list[str] = []

    def walk(directory: str, level: int) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            if os.path.isfile(os.path.join(path, TEMPORARY_MARKER)):
                found.append(path)
            elif level < depth:
                walk(path, level + 1)

    for root in paths:
        root = os.path.abspath(root)
        if os.path.isfile(os.path.join(root, TEMPORARY_MARKER)):
            found.append(root)
        else:
            walk(root, 1)
    return list(dict.fromkeys(found))


def workdir_bake_id(workdir: str) -> str | None:
    try:
        return _read(os.path.join(workdir, TEMPORARY_MARKER)).strip() or None
    except OSError:
        return None


def sweep_workdirs(
    selector: Selector, check_mode: bool, paths: Sequence[str], busy: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Marked work directories the selector selects, removed with :func:`remove_workdir` (as the bake's
    cleanup removes them); their age is the marker's. One a running builder VM still uses is left alone."""
    entries = []
    for workdir in marked_workdirs(paths):
        marker = os.path.join(workdir, TEMPORARY_MARKER)
        try:
            created = os.stat(marker).st_mtime
        except OSError:
            continue
        bake_id = workdir_bake_id(workdir)
        if not selector.matches(bake_id, created):
            continue
        entry = record(
            "qemu",
            "workdir",
            workdir,
            name=os.path.basename(workdir),
            bake_id=bake_id,
            target=_target_of(os.path.basename(workdir), bake_id),
            created=created,
            location=os.path.dirname(workdir),
        )
        users = [d for d in busy if d == workdir or d.startswith(workdir.rstrip("/") + "/")]
        if users and not check_mode:
            entries.append(failed(entry, "a builder VM still runs from %s" % users[0]))
            continue
        entries.append(act(entry, check_mode, lambda workdir=workdir: remove_workdir(workdir)))
    return entries


def _target_of(name: str, bake_id: str | None) -> str | None:
    if bake_id and name.startswith(bake_id + "-"):
        return name[len(bake_id) + 1 :]
    return None


# --------------------------------------------------------------------------- the bake


def lookup(opts: DiskOptions, resolve_source: bool = True) -> dict[str, Any]:
    """Fingerprint and whether every output with it exists."""
    inputs = compute_inputs(opts, resolve_source)
    # a disk converted from a builder VM records the fingerprint its launch looked for
    fp = opts.fingerprint or fingerprint(inputs)
    states = [output_state(out, fp) for out in opts.outputs]
    found = all(state[0] for state in states)
    previous = states[0][1] or {}
    prev_inputs = previous.get("inputs") if isinstance(previous.get("inputs"), dict) else None
    result: dict[str, Any] = {
        "fingerprint": fp,
        "inputs": inputs,
        "found": found,
        "changed_inputs": [] if found else changed_inputs(prev_inputs, inputs),
        "outputs": [
            output_result(out, sidecar) for out, (ok, sidecar) in zip(opts.outputs, states) if ok and sidecar
        ],
    }
    if found:
        primary = states[0][1] or {}
        result.update(
            path=opts.primary.path,
            format=opts.primary.format,
            size=primary.get("size"),
            sha256=primary.get("sha256"),
            virtual_size=primary.get("virtual_size"),
            bake_id=primary.get("bake_id"),
        )
        if primary.get("hygiene") is not None:
            result["hygiene"] = primary["hygiene"]
    return result


def build(opts: DiskOptions, fp: str, inputs: dict[str, str]) -> dict[str, Any]:
    """Make every output from one source disk: the raw disk made from the tree, or an overlay of the image.

    The source lives in a temporary directory beside the primary output (same file system: a raw output
    is the raw disk renamed, not copied) that goes in every case.
    """
    check_tools(from_rootfs=bool(opts.rootfs) or opts.reassemble, arch=_qemu_arch.get(opts.architecture))
    directory = os.path.dirname(opts.primary.path)
    os.makedirs(directory, exist_ok=True)
    details: dict[str, Any] = {}
    with Steps() as steps:
        work = tempfile.mkdtemp(prefix=".bakery-qemu-", dir=directory)
        # remove_tree: a disk reassembled from an image's tree has that tree here, deeper than shutil.rmtree goes
        steps.add_undo("remove %s" % work, lambda: remove_tree(work), always=True)
        with open(os.path.join(work, TEMPORARY_MARKER), "w", encoding="utf-8") as handle:
            handle.write((opts.bake_id or "") + "\n")
        if opts.rootfs:
            source, source_format = _disk_from_rootfs(opts, fp, work, details)
        elif opts.reassemble:
            source, source_format = _disk_from_image_tree(opts, fp, work, details)
        else:
            source, source_format = _disk_from_image(opts, work)
        if opts.hygiene_results is not None:
            check_hygiene(opts, opts.hygiene_results, details)
        # the raw disk is renamed onto a raw output, so that output comes last
        order = sorted(opts.outputs, key=lambda out: out.format == "raw" and source_format == "raw")
        made: dict[str, dict[str, Any]] = {}
        # every output is made under a temporary name first; they are renamed into place together, and only
        # then get their sidecars (which mark them final): a failure in the last leaves the old ones alone
        with atomic_outputs([out.path for out in order]) as tmps:
            for out, tmp in zip(order, tmps):
                if out.format == "raw" and source_format == "raw" and (opts.rootfs or opts.reassemble):
                    os.replace(source, tmp)
                elif opts.backing:
                    _overlay(opts, tmp)
                else:
                    os.unlink(tmp)
                    convert(source, source_format, out, tmp, opts.timeout)
                    if out.format == "vmdk":
                        fix_vmdk_descriptor(tmp, os.path.basename(out.path), fp)
                made[out.path] = {"format": out.format, "path": out.path, "size": os.path.getsize(tmp)}
            # the raw disk made from the tree is read no more (renamed onto a raw output, it is not there): it is
            # unlinked while the outputs are digested, instead of with the work directory after them
            left = source if os.path.dirname(source) == work and os.path.isfile(source) else None
            with unlinked_beside(left):
                for out, tmp in zip(order, tmps):
                    made[out.path]["sha256"] = digest_file(tmp)
        for out in order:
            write_sidecar(
                out.path,
                {
                    "fingerprint": fp,
                    "inputs": inputs,
                    "options": describe(opts),
                    "format": out.format,
                    "sha256": made[out.path]["sha256"],
                    "size": made[out.path]["size"],
                    "virtual_size": opts.disk_size,
                    "backing_file": opts.image if opts.backing else None,
                    "bake_id": opts.bake_id,
                    "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "hygiene": details.get("hygiene"),
                    # what a disk made from a rootfs boots on (an existing image's is not known here)
                    "architecture": opts.architecture if opts.rootfs else None,
                },
            )
    outputs = [made[out.path] for out in opts.outputs]
    primary = outputs[0]
    result = {
        "outputs": outputs,
        "path": primary["path"],
        "format": primary["format"],
        "size": primary["size"],
        "sha256": primary["sha256"],
        "virtual_size": opts.disk_size,
        "bake_id": opts.bake_id,
    }
    result.update(details)
    return result


def _overlay(opts: DiskOptions, target: str, fmt: str | None = None) -> None:
    """A qcow2 file of disk_size whose backing file is the image (absolute path): grown, nothing copied."""
    image = str(opts.image)
    info_format = fmt or str(image_info(image).get("format"))
    run(
        [
            which("qemu-img"),
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            image,
            "-F",
            info_format,
            target,
            str(opts.disk_size),
        ],
        "qemu-img create (overlay of %s)" % image,
    )


def _disk_from_image(opts: DiskOptions, work: str) -> tuple[str, str]:
    """The image, checked and grown to disk_size as a qcow2 overlay in *work* (the outputs flatten it)."""
    fmt, virtual_size = verify_image(opts)
    if virtual_size > opts.disk_size:
        raise BakeryError(
            "disk_size %d MiB is smaller than image %s (%d MiB); disks are grown, never shrunk"
            % (opts.disk_size // MIB, opts.image, virtual_size // MIB)
        )
    overlay = os.path.join(work, "grown.qcow2")
    _overlay(opts, overlay, fmt)
    return overlay, "qcow2"


def _disk_from_rootfs(opts: DiskOptions, fp: str, work: str, details: dict[str, Any]) -> tuple[str, str]:
    rootfs = str(opts.rootfs)
    if os.path.isdir(rootfs):
        root = rootfs
        details["restored_chroot"] = restore_chroot(root)
    elif os.path.isfile(rootfs):
        root = os.path.join(work, "root")
        make_tree_directory(root)
        run(
            [
                which("tar"),
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-xpf",
                rootfs,
                "-C",
                root,
            ],
            "unpacking %s" % rootfs,
            timeout=opts.timeout,
        )
        seeded = _rootfs.seed_apt_lists(_rootfs.apt_lists_path(rootfs), root) if opts.apt_lists else None
        if seeded is not None:
            details["apt_lists"] = seeded
    else:
        raise BakeryError("rootfs %s does not exist" % rootfs)
    arch = _qemu_arch.get(opts.architecture)
    layout = make_layout(opts.disk_size, fp, arch.root_type)
    needed = tree_fits(root, layout, opts.disk_size, "the rootfs")
    epoch = disk_epoch(opts, fp)
    details.update(prepare_tree(root, opts, layout, epoch))
    # what provisioning leaves that differs from one run to the next (logs, caches, seeds) goes
    removed = _reproducible.normalise_tree(root)
    details.update(root_uuid=layout.root_uuid, rootfs_bytes=needed)
    details["reproducible"] = {"source_date_epoch": epoch, "removed": removed}
    if opts.hygiene and opts.hygiene_results is None:
        check_hygiene(opts, _hygiene.check(root, opts.hygiene), details)
    raw = os.path.join(work, "disk.raw")
    make_raw_disk(raw, root, layout, opts.timeout, epoch, arch)
    details["architecture"] = arch.name
    return raw, "raw"


# the tree's files that name the root file system by its UUID (bakery's, and those a role may have written)
ROOT_UUID_FILES = {
    "etc/fstab": "mounts the root file system by UUID",
    "boot/grub/grub.cfg": "finds the root file system by UUID and passes it to the kernel (root=UUID=)",
}


def tree_fits(root: str, layout: Layout, disk_size: int, what: str) -> int:
    """The size of the tree *root* (*what*, in the message), which must fit in the layout's root partition with
    room to spare: ext4 keeps about 5 % for inodes, journal and metadata, and the system needs some to boot and
    log."""
    needed = tree_size(root)
    if needed * 1.1 + 64 * MIB > layout.root_size:
        raise BakeryError(
            "%s (%d MiB) does not fit in disk_size %d MiB (root partition %d MiB); raise disk_size"
            % (what, needed // MIB, disk_size // MIB, layout.root_size // MIB)
        )
    return needed


def _disk_from_image_tree(opts: DiskOptions, fp: str, work: str, details: dict[str, Any]) -> tuple[str, str]:
    """The raw disk made again from the tree of the image's root file system (``reassemble``): copied out of
    the image (``_disk_tree``), its files that named the old root file system retargeted at the new one, the
    varying files of provisioning removed and the builder's login records emptied, and made into a disk as a
    provisioned chroot tree is."""
    verify_image(opts)
    started = time.monotonic()
    root = os.path.join(work, "root")
    make_tree_directory(root)
    with DiskFiles(str(opts.image), opts.timeout) as disk:
        old_uuid = _disk_tree.root_uuid(disk.raw, disk.offset)
        copied = _disk_tree.copy_tree(disk.raw, disk.offset, root, opts.timeout)
    read_seconds = time.monotonic() - started
    arch = _qemu_arch.get(opts.architecture)
    layout = make_layout(opts.disk_size, fp, arch.root_type)
    needed = tree_fits(root, layout, opts.disk_size, "the tree of %s" % opts.image)
    retargeted = _disk_tree.retarget(root, old_uuid, layout.root_uuid, ROOT_UUID_FILES)
    if "boot/grub/grub.cfg" not in retargeted:
        raise BakeryError(
            "the tree of %s has no /boot/grub/grub.cfg that finds its root file system by UUID %s: bakery makes "
            "again only disks it made from a rootfs" % (opts.image, old_uuid)
        )
    epoch = disk_epoch(opts, fp)
    removed = _reproducible.normalise_tree(root)
    emptied = _reproducible.empty_login_records(root)
    details.update(root_uuid=layout.root_uuid, rootfs_bytes=needed)
    details["reproducible"] = {"source_date_epoch": epoch, "removed": removed, "emptied": emptied}
    raw = os.path.join(work, "disk.raw")
    make_raw_disk(raw, root, layout, opts.timeout, epoch, arch)
    details["architecture"] = arch.name
    details["reassembled"] = dict(
        copied.summary(),
        old_root_uuid=old_uuid,
        retargeted=["/" + relative for relative in retargeted],
        read_seconds=round(read_seconds, 3),
        seconds=round(time.monotonic() - started, 3),
    )
    return raw, "raw"


def check_hygiene(opts: DiskOptions, results: list[dict[str, Any]], details: dict[str, Any]) -> None:
    """Record the hygiene results; fail, before any output is made, with every finding when a check failed."""
    details["hygiene"] = results
    if not _hygiene.passed(results):
        raise BakeryError(
            _hygiene.failure_message(results, "disk %s" % opts.primary.path),
            hygiene=results,
        )


def bake_disk(params: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """The module's result for actions find and build."""
    started = time.monotonic()
    action = params.get("action") or "build"
    opts = parse_options(params)
    # a directory tree is provisioned after the lookup in launch; its identity is the caller's inputs
    found = lookup(opts)
    result: dict[str, Any] = dict(found, changed=False)
    if action == "find" or (found["found"] and not opts.force):
        result["msg"] = (
            "disk %s is up to date (fingerprint %s)" % (opts.primary.path, found["fingerprint"][:12])
            if found["found"]
            else "no disk with fingerprint %s: %s" % (found["fingerprint"][:12], _why(found, opts))
        )
        return _finish(result, started)
    why = "force=true" if found["found"] else _why(found, opts)
    if check_mode:
        result.update(changed=True, msg="would build disk %s: %s" % (opts.primary.path, why))
        return _finish(result, started)
    check_source(opts)
    with file_lock(opts.primary.path):
        again = lookup(opts)
        if again["found"] and not opts.force:
            result.update(
                again, changed=False, msg="disk %s is up to date (built by another task)" % opts.primary.path
            )
            return _finish(result, started)
        built = build(opts, found["fingerprint"], found["inputs"])
    result.update(built, found=False, changed=True, msg="built disk %s: %s" % (opts.primary.path, why))
    return _finish(result, started)


def _why(found: Mapping[str, Any], opts: DiskOptions) -> str:
    if not os.path.exists(opts.primary.path):
        return "no output exists yet"
    names = found.get("changed_inputs") or []
    if names:
        return "inputs changed: %s" % ", ".join(names)
    return "an output is missing or differs from its sidecar"


def _finish(result: dict[str, Any], started: float) -> dict[str, Any]:
    result["duration"] = round(time.monotonic() - started, 3)
    return result


def module_action(module: Any) -> dict[str, Any]:
    """Entry point for ``_module.run``."""
    params = module.params
    action = params.get("action") or "build"
    if action == "unpack":
        return unpack_action(params, module.check_mode)
    if action == "remove":
        return remove_action(params, module.check_mode)
    if action == "step_save":
        return step_save_action(params, module.check_mode)
    if action == "prune_steps":
        return prune_steps_action(params, module.check_mode)
    if action in ("vm_resume", "vm_step_save"):
        # here, not at the top: _vm_steps uses _qemu_vm, which uses this module
        from ansible_collections.bakery.images.plugins.module_utils import _vm_steps

        if action == "vm_resume":
            return _vm_steps.resume_action(params, module.check_mode)
        return _vm_steps.save_action(params, module.check_mode)
    return bake_disk(params, check_mode=module.check_mode)


def unpack_action(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Unpack the builder's tree: from the deepest sealed entry of the per-step cache whose chain key it has
    (``step_keys``, ``step_cache``), else from the rootfs tarball. Says where it starts, and why (also in check
    mode, which unpacks nothing)."""
    workdir = params.get("workdir")
    rootfs = params.get("rootfs")
    if not workdir or not rootfs:
        raise BakeryError("qemu_image: action=unpack needs rootfs (a tarball) and workdir")
    workdir = os.path.abspath(str(workdir))
    root = os.path.join(workdir, "root")
    keys = [str(key) for key in params.get("step_keys") or []]
    cache = _step_cache.step_cache_params(params)
    directory = _step_cache.rootfs_steps_dir(cache["dir"]) if cache["dir"] else None
    resume, chain = (
        _step_cache.find_rootfs_chain(directory, keys[: cache["max_resume"] + 1])
        if cache["enabled"] and keys
        else (0, [])
    )
    entry = chain[-1][0] if chain else None
    steps_total = max(len(keys) - 1, 0)
    cached = dict(
        cache,
        keys=keys,
        resume=resume,
        image=entry,
        reason=_step_cache.resume_reason(
            resume, steps_total, cache["enabled"], bool(params.get("force")), cache["max_resume"]
        ),
        steps=_step_cache.step_states(resume, steps_total, cache["enabled"]),
    )
    result: dict[str, Any] = {"workdir": workdir, "root": root}
    if keys:
        result["step_cache"] = cached
    if check_mode:
        return dict(result, changed=True, msg="would unpack %s" % (entry or rootfs))
    tarball = os.path.abspath(str(rootfs))
    if chain:
        for path, _seal in chain:
            _step_cache.touch(path)
        tarball = chain[0][0]
    elif not os.path.isdir(str(rootfs)):
        check_tarball(tarball, "rootfs")
    with Steps() as steps:

        def unpack_from(path: str) -> dict[str, Any]:
            epoch = parse_epoch(params.get("source_date_epoch"))
            # the package lists of the rootfs, when the tree starts from it (a cached step has the lists it
            # refreshed)
            lists = (
                _rootfs.apt_lists_path(os.path.abspath(str(rootfs)))
                if params.get("apt_lists") and path == os.path.abspath(str(rootfs))
                else None
            )
            cached_chain = chain if path != os.path.abspath(str(rootfs)) else []
            return unpack(
                path,
                workdir,
                params.get("bake_id"),
                steps,
                params.get("hostname") or None,
                epoch,
                lists,
                layers=cached_chain[1:],
                top=cached_chain[-1][1] if cached_chain else None,
            )

        try:
            result.update(unpack_from(tarball))
        except BakeryError:
            if not chain or all(os.path.exists(path) for path, _seal in chain):
                raise
            # another bake evicted the entry since it was found: start from the base, as without a cache
            cached.update(
                resume=0,
                image=None,
                reason="the cached step went before the builder was unpacked (evicted by another bake)",
                steps=_step_cache.step_states(0, steps_total, True),
            )
            tarball = os.path.abspath(str(rootfs))
            check_tarball(tarball, "rootfs")
            result.update(unpack_from(tarball))
    where = (
        " at step %d (cached %s%s)"
        % (
            cached["resume"],
            os.path.basename(entry or tarball)[:12],
            ", %d layer(s) over %s" % (len(chain) - 1, os.path.basename(tarball)[:12])
            if len(chain) > 1
            else "",
        )
        if cached["resume"]
        else ""
    )
    result.update(changed=True, msg="unpacked %s into %s%s" % (rootfs if not where else tarball, root, where))
    return result


def step_save_action(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Keep the builder's tree after provisioner ``step`` as the entry ``step_keys[step]`` of the per-step cache
    (unless a sealed one exists), then evict the least recently used entries beyond ``step_cache.max_size``.

    The tree is archived as it is after the provisioner, without what the builder adds for provisioning (the
    stand-in commands, resolv.conf, policy-rc.d: put back for the archive, in again after it)."""
    workdir = params.get("workdir")
    position = int(params.get("step") or 0)
    keys = [str(key) for key in params.get("step_keys") or []]
    cache = _step_cache.step_cache_params(params)
    if not workdir or not 0 < position < len(keys) or not cache["dir"]:
        raise BakeryError(
            "qemu_image: action=step_save needs workdir, step_cache.dir and a step (1-%d) of step_keys"
            % (len(keys) - 1)
        )
    workdir = os.path.abspath(str(workdir))
    root = os.path.join(workdir, "root")
    key = keys[position]
    directory = _step_cache.rootfs_steps_dir(cache["dir"])
    existing = _step_cache.find_entry(directory, key)
    if existing is not None or check_mode or not cache["enabled"]:
        if existing is not None and not check_mode:
            _step_cache.touch(existing[0])
        return dict(
            changed=bool(check_mode and cache["enabled"] and existing is None),
            image=existing[0] if existing is not None else None,
            layer=bool(existing[1].get("parent")) if existing is not None else None,
            key=key,
            msg="step %d is cached" % position if existing is not None else "would keep step %d" % position,
        )
    if not os.path.isfile(os.path.join(workdir, CHROOT_STATE)):
        raise BakeryError(
            "%s is no chroot work directory being provisioned (no %s)" % (workdir, CHROOT_STATE)
        )
    hostname = params.get("hostname") or None
    timeout = int(params.get("timeout") or 1800)

    state = read_tree_snapshot(workdir)
    top = state.get("top") or {}
    parent = (
        _step_cache.find_entry(directory, keys[position - 1])
        if position > 1
        and top.get("key") == keys[position - 1]
        and int(top.get("position") or 0) == position - 1
        else None
    )
    # a layer only over the very entry the tree was unpacked from or kept as, and not too deep a chain
    layered = (
        parent is not None
        and parent[1].get("sha256") == top.get("sha256")
        and int(top.get("depth") or 0) < _step_cache.LAYER_MAX_DEPTH
    )
    snapshot: dict[str, list[int]] = {}

    def write(tmp: str) -> dict[str, Any] | None:
        restore_chroot(root)
        try:
            try:
                snapshot.update(_step_cache.tree_snapshot(root))
            except OSError:
                snapshot.clear()  # a tree it cannot read (a path too long): kept whole, and the next step too
            if not layered or not snapshot:
                run(
                    _step_cache.archive_command(which("tar"), root, tmp),
                    "archiving the tree after step %d" % position,
                    timeout=timeout,
                )
                return None
            members, deleted, directories = _step_cache.tree_changes(state["paths"], snapshot)
            with tempfile.NamedTemporaryFile("wb", prefix="bakery-layer-", suffix=".list") as listing:
                listing.write(b"".join(os.fsencode(name) + b"\0" for name in members))
                listing.flush()
                run(
                    _step_cache.archive_command(which("tar"), root, tmp, listing.name),
                    "archiving what step %d changed" % position,
                    timeout=timeout,
                )
            return {
                "parent": keys[position - 1],
                "parent_sha256": top["sha256"],
                "depth": int(top.get("depth") or 0) + 1,
                "deleted": deleted,
                "directories": directories,
                "members": len(members),
            }
        finally:
            prepare_chroot(workdir, root, hostname, parse_epoch(params.get("source_date_epoch")))

    started = time.monotonic()
    path, seal, written = _step_cache.save_rootfs_step(
        directory, key, position, str(params.get("target") or ""), write, layer=layered
    )
    # the next step's layer stands on this entry only when it holds this very tree
    store_tree_snapshot(workdir, seal if written and snapshot else None, snapshot)
    evicted = (
        _step_cache.evict_rootfs_steps(directory, cache["max_size"], keep={path}) if cache["max_size"] else []
    )
    return dict(
        changed=written,
        image=path,
        key=key,
        size=seal["size"],
        sha256=seal["sha256"],
        evicted=evicted,
        duration=round(time.monotonic() - started, 3),
        layer=bool(seal.get("parent")),
        msg="kept step %d as %s (%s)%s"
        % (
            position,
            path,
            "a layer of %d KiB over step %d" % (seal["size"] // 1024, position - 1)
            if seal.get("parent")
            else "%d MiB" % (seal["size"] // MIB),
            "; evicted %d entr(ies)" % len(evicted) if evicted else "",
        ),
    )


def prune_steps_action(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Empty the root-filesystem builders' per-step cache down to ``step_cache.max_size`` bytes (0: every entry),
    with every entry no bake would use (unsealed)."""
    cache = params.get("step_cache") or {}
    if not cache.get("dir"):
        raise BakeryError("qemu_image: action=prune_steps needs step_cache.dir (the bake's cache directory)")
    from ansible_collections.bakery.images.plugins.module_utils import _vm_steps

    directory = _step_cache.rootfs_steps_dir(str(cache["dir"]))
    pruned = _step_cache.prune_rootfs_steps(directory, int(cache.get("max_size") or 0), check_mode)
    # the VM builders' layers, on their own (each kind gets up to the size)
    vm_directory = _vm_steps.vm_steps_dir(str(cache["dir"]))
    vm_pruned = _vm_steps.prune(vm_directory, int(cache.get("max_size") or 0), check_mode)
    removed = pruned["unsealed"] + pruned["evicted"] + vm_pruned["unsealed"] + vm_pruned["evicted"]
    verb = "would remove" if check_mode else "removed"
    return dict(
        changed=bool(removed),
        removed=removed,
        unsealed=pruned["unsealed"] + vm_pruned["unsealed"],
        evicted=pruned["evicted"] + vm_pruned["evicted"],
        msg="%s %d cached step(s) of root-filesystem builders and %d unsealed file(s) in %s; %s %d cached "
        "layer(s) of VM builders and %d unsealed or broken file(s) in %s"
        % (
            verb,
            len(pruned["evicted"]),
            len(pruned["unsealed"]),
            directory,
            verb,
            len(vm_pruned["evicted"]),
            len(vm_pruned["unsealed"]),
            vm_directory,
        ),
    )


def remove_action(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    workdir = params.get("workdir")
    if not workdir:
        raise BakeryError("qemu_image: action=remove needs workdir")
    workdir = os.path.abspath(str(workdir))
    exists = os.path.lexists(workdir)
    if check_mode or not exists:
        return {"changed": exists, "workdir": workdir}
    removed = remove_workdir(workdir)
    return {"changed": removed, "workdir": workdir, "msg": "removed %s" % workdir}


# --------------------------------------------------------------------------- a bake's qemu target


def outputs_for(target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The output files of a planned qemu target: ``<output_dir>/<name>.<ending>`` per format."""
    options = target.get("options") or {}
    name = options.get("name") or target.get("bake_name") or target["name"]
    directory = target.get("output_dir") or "output"
    formats = list(options.get("formats") or ["qcow2"])
    return [
        {
            "path": os.path.join(directory, name + FORMATS[fmt][0]),
            "format": fmt,
            "compress": bool(options.get("compress")) and fmt == "qcow2",
        }
        for fmt in formats
    ]


def workdir_for(target: Mapping[str, Any]) -> str:
    """The target's temporary work directory, named with the bake id, under the bake's cache directory."""
    rootfs = target.get("rootfs") or {}
    if target.get("cache_dir"):
        base = target["cache_dir"]
    elif rootfs.get("path"):
        base = os.path.dirname(os.path.dirname(rootfs["path"]))
    else:
        base = os.path.join(target.get("output_dir") or "output", "cache")
    return os.path.join(base, "qemu", "%s-%s" % (target["bake_id"], target["name"]))
