# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Vagrant boxes made from a disk image, and the versioned catalog that lists them.

A box is a tarball (optionally gzip-compressed) of ``metadata.json``, a ``Vagrantfile`` with the box's
defaults and the provider's disk:

- libvirt (vagrant-libvirt's box format, version 1): ``box.img``, a standalone qcow2, and
  ``{"provider": "libvirt", "format": "qcow2", "virtual_size": <GiB>}``;
- virtualbox: ``box.ovf``, an OVF 1.0 descriptor, and ``box-disk001.vmdk``, a streamOptimized VMDK.

The catalog is Vagrant's box metadata format (what ``vagrant box add <url of the catalog>`` reads):
``{"name", "description", "versions": [{"version", "providers": [{"name", "url", "checksum_type",
"checksum"}]}]}``. Adding a box to it keeps the other versions and providers; an entry that would change
the checksum of a published version is refused unless forced, because Vagrant caches boxes by version.

Boxes are byte-for-byte reproducible (fixed member times, owners and gzip header), so a box rebuilt from
the same disk with the same options has the same checksum, and its catalog entry stays valid.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from xml.sax.saxutils import escape, quoteattr

from ansible_collections.bakery.images.plugins.module_utils import _libvirt
from ansible_collections.bakery.images.plugins.module_utils._files import (
    atomic_output,
    check_raw_disk,
    file_lock,
    read_sidecar,
    write_json_atomic,
    write_sidecar,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    changed_inputs,
    digest_file,
    digest_value,
    fingerprint,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    FAILED,
    REMOVED,
    errors_of,
    record,
)

PROVIDERS = ("libvirt", "virtualbox")
ACTIONS = ("build", "find", "clean")
# The layout of the boxes this module writes; part of every fingerprint, bumped when the layout changes
# (3: metadata.json names the box's architecture).
BOX_LAYOUT = 3
# Vagrant's names of the Debian architectures (Vagrant 2.4 names a host's as Ruby's target_cpu, with x86_64 as
# amd64 and aarch64 as arm64): a box's metadata.json and its catalog entry carry them.
VAGRANT_ARCHITECTURES = {
    "amd64": "amd64",
    "i386": "i386",
    "arm64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
# the architecture of a catalog entry that names none: the only one boxes had before Vagrant 2.4
UNNAMED_ARCHITECTURE = "amd64"
# Members get this time (2000-01-01 UTC), owner root and fixed modes: equal inputs give equal boxes.
MEMBER_MTIME = 946684800
GIB = 1024**3
_CHUNK = 1024 * 1024
_QCOW2_MAGIC = b"QFI\xfb"
# Versions as Vagrant (RubyGems' Gem::Version) accepts them: 1, 1.2, 1.2.3, 2024.05.01, 1.0.0.rc1
_VERSION = re.compile(r"^[0-9]+(\.[0-9A-Za-z]+)*$")
_BOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# VirtualBox's MAC prefix; the rest comes from the fingerprint, so the MAC is stable per box
_VBOX_OUI = "080027"
VMDK_NAME = "box-disk001.vmdk"


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CatalogOptions:
    path: str
    box_name: str
    version: str
    description: str | None
    base_url: str | None


@dataclass(frozen=True)
class BoxOptions:
    action: str
    path: str
    provider: str
    source: str | None
    source_sha256: str | None
    compression: int
    memory: int
    cpus: int
    vagrantfile: str | None
    inputs: dict[str, str] = field(default_factory=dict)
    force: bool = False
    bake_id: str | None = None
    catalog: CatalogOptions | None = None
    qemu_img: str = "qemu-img"
    box_name: str | None = None
    version: str | None = None
    architecture: str = UNNAMED_ARCHITECTURE


def vagrant_architecture(debian: Any) -> str:
    """Vagrant's name of a Debian architecture (``amd64``, ``arm64``, ``arm`` for armhf ...); None: amd64."""
    if debian in (None, ""):
        return UNNAMED_ARCHITECTURE
    name = VAGRANT_ARCHITECTURES.get(str(debian))
    if name is None:
        raise BakeryError(
            "architecture %r is not a Debian architecture Vagrant boxes are made for: use one of %s"
            % (debian, ", ".join(VAGRANT_ARCHITECTURES))
        )
    return name


def check_version(version: Any) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise BakeryError(
            "box version %r is not a version Vagrant accepts: use numbers separated by dots, such as "
            "'1.0.0' or '2024.6.1'" % (version,)
        )
    return version


def check_box_name(name: Any) -> str:
    if not isinstance(name, str) or not _BOX_NAME.match(name):
        raise BakeryError(
            "box name %r is not valid: use 'organisation/name' or 'name' with letters, digits, '.', '-' "
            "and '_', for example 'bakery/example-web'" % (name,)
        )
    return name


def _sha256_or_none(value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not re.match(r"^[0-9a-f]{64}$", text):
        raise BakeryError("%s %r is not a sha256 (64 hexadecimal digits)" % (what, value))
    return text


def parse_options(params: Mapping[str, Any]) -> BoxOptions:
    action = params.get("action") or "build"
    if action not in ACTIONS:
        raise BakeryError("action %r is not one of %s" % (action, ", ".join(ACTIONS)))
    path = os.path.abspath(str(params["path"]))
    provider = params.get("provider") or "libvirt"
    if provider not in PROVIDERS:
        raise BakeryError("provider %r is not supported: choose one of %s" % (provider, ", ".join(PROVIDERS)))
    compression = int(params.get("compression", 6))
    if not 0 <= compression <= 9:
        raise BakeryError("compression %d is not a gzip level: use 0 (plain tar) to 9" % compression)
    memory = int(params.get("memory") or 1024)
    cpus = int(params.get("cpus") or 1)
    if memory < 64 or cpus < 1:
        raise BakeryError("memory must be at least 64 (MiB) and cpus at least 1")
    source = params.get("source")
    source = os.path.abspath(str(source)) if source else None
    inputs = {str(key): str(value) for key, value in (params.get("inputs") or {}).items()}
    if action == "build" and not source:
        raise BakeryError("vagrant_box: action=build needs source (the disk image to box)")
    if action == "find" and not source and not inputs:
        raise BakeryError("vagrant_box: action=find needs inputs (from a bake plan) or source")
    box_name = check_box_name(params["box_name"]) if params.get("box_name") else None
    version = check_version(str(params["version"])) if params.get("version") else None
    catalog = None
    if params.get("catalog"):
        if not params.get("box_name") or not params.get("version"):
            raise BakeryError("vagrant_box: a catalog needs box_name and version")
        catalog = CatalogOptions(
            path=os.path.abspath(str(params["catalog"])),
            box_name=check_box_name(params["box_name"]),
            version=check_version(str(params["version"])),
            description=params.get("description"),
            base_url=(params.get("base_url") or None),
        )
    return BoxOptions(
        action=action,
        path=path,
        provider=provider,
        source=source,
        source_sha256=_sha256_or_none(params.get("source_sha256"), "source_sha256"),
        compression=compression,
        memory=memory,
        cpus=cpus,
        vagrantfile=params.get("vagrantfile") or None,
        inputs=inputs,
        force=bool(params.get("force")),
        bake_id=params.get("bake_id") or None,
        catalog=catalog,
        qemu_img=params.get("qemu_img") or "qemu-img",
        box_name=box_name,
        version=version,
        architecture=vagrant_architecture(params.get("architecture")),
    )


def box_options_digest(opts: BoxOptions) -> str:
    """What, besides the disk, decides the box's bytes."""
    return digest_value(
        {
            "layout": BOX_LAYOUT,
            "provider": opts.provider,
            "architecture": opts.architecture,
            "compression": opts.compression,
            "memory": opts.memory,
            "cpus": opts.cpus,
            "vagrantfile": opts.vagrantfile,
        }
    )


def compute_inputs(opts: BoxOptions) -> dict[str, str]:
    """The box's fingerprint inputs: the plan's (which identify the source disk), else the disk's sha256."""
    inputs = dict(opts.inputs)
    if not inputs:
        if opts.source_sha256:
            inputs["source"] = opts.source_sha256
        elif opts.source and os.path.isfile(opts.source):
            inputs["source"] = digest_file(opts.source)
        else:
            raise BakeryError("vagrant_box: source disk %s does not exist" % opts.source)
    inputs["box"] = box_options_digest(opts)
    return inputs


# --------------------------------------------------------------------------- the source disk


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int
    standalone: bool  # usable as it is (no backing file)


def read_qcow2_header(data: bytes) -> DiskInfo | None:
    """The qcow2 header's facts, or None when *data* does not start a qcow2 image."""
    if len(data) < 32 or data[:4] != _QCOW2_MAGIC:
        return None
    _magic, _version, backing_offset, _backing_size, _cluster_bits, size = struct.unpack(
        ">4sIQIIQ", data[:32]
    )
    standalone = backing_offset == 0
    if standalone and _version >= 3 and len(data) >= 80:
        incompatible = struct.unpack(">Q", data[72:80])[0]
        standalone = not incompatible & 0x4  # an external data file
    return DiskInfo("qcow2", size, standalone)


def find_tool(name: str, package: str) -> str:
    found = shutil.which(name) if os.sep not in name else (name if os.access(name, os.X_OK) else None)
    if not found:
        raise BakeryError("%s is not installed on the build host (Debian package %s)" % (name, package))
    return found


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BakeryError(
            "%s failed: %s" % (what, detail[-1] if detail else "exit status %d" % proc.returncode),
            command=argv,
            rc=proc.returncode,
            stderr_lines=detail[-20:],
        )
    return proc.stdout


def disk_info(source: str, qemu_img: str) -> DiskInfo:
    """Format and virtual size of the source disk; qcow2 is read directly, the rest asks qemu-img."""
    if not os.path.isfile(source):
        raise BakeryError("vagrant_box: source disk %s does not exist" % source)
    with open(source, "rb") as handle:
        header = handle.read(104)
    info = read_qcow2_header(header)
    if info is not None:
        return info
    tool = find_tool(qemu_img, "qemu-utils")
    out = _run([tool, "info", "--output=json", source], "qemu-img info of %s" % source)
    data = json.loads(out)
    if data.get("format") == "raw":  # qemu-img calls anything it does not recognise raw
        check_raw_disk(source, "vagrant_box: source disk")
    return DiskInfo(str(data.get("format")), int(data["virtual-size"]), False)


def virtual_size_gib(size: int) -> int:
    """vagrant-libvirt's ``virtual_size``: whole GiB, rounded up."""
    return max(1, math.ceil(size / GIB))


# --------------------------------------------------------------------------- box content


def box_metadata(provider: str, info: DiskInfo, architecture: str = UNNAMED_ARCHITECTURE) -> dict[str, Any]:
    """The box's metadata.json: its provider and architecture (which Vagrant 2.4 reads; 2.3 ignores it), and
    what vagrant-libvirt needs of the disk."""
    if provider == "libvirt":
        return {
            "provider": "libvirt",
            "architecture": architecture,
            "format": "qcow2",
            "virtual_size": virtual_size_gib(info.virtual_size),
        }
    return {"provider": "virtualbox", "architecture": architecture}


def base_mac(fp: str) -> str:
    return (_VBOX_OUI + fp[:6]).upper()


def default_vagrantfile(opts: BoxOptions, fp: str) -> str:
    """The box's own Vagrantfile: defaults that a project's Vagrantfile overrides (Vagrant merges them)."""
    lines = [
        "# Defaults of this box, made by bakery.images.vagrant_box. A project's Vagrantfile overrides them.",
        'Vagrant.configure("2") do |config|',
        "  # the box has no guest additions, NFS or rsync set up: enable a synced folder in your Vagrantfile",
        '  config.vm.synced_folder ".", "/vagrant", disabled: true',
    ]
    if opts.provider == "libvirt":
        lines += [
            "  config.vm.provider :libvirt do |libvirt|",
            '    # libvirt.driver is vagrant-libvirt\'s default (kvm); set "qemu" where there is no KVM',
            "    libvirt.memory = %d" % opts.memory,
            "    libvirt.cpus = %d" % opts.cpus,
            '    libvirt.disk_bus = "virtio"',
            '    libvirt.nic_model_type = "virtio"',
            "    # a virtio RNG: the guest's first-boot key generation does not wait for entropy",
            '    libvirt.random :model => "random"',
            "  end",
        ]
    else:
        lines += [
            '  config.vm.base_mac = "%s"' % base_mac(fp),
            "  config.vm.provider :virtualbox do |vb|",
            "    vb.memory = %d" % opts.memory,
            "    vb.cpus = %d" % opts.cpus,
            "  end",
        ]
    lines.append("end")
    return "\n".join(lines) + "\n"


def ovf_descriptor(name: str, vmdk_size: int, capacity: int, memory: int, cpus: int, mac: str) -> str:
    """An OVF 1.0 descriptor for VirtualBox: one SATA disk (the streamOptimized VMDK) and one NAT NIC."""
    ident = quoteattr(name)
    items = [
        (3, "%d virtual CPU" % cpus, "<rasd:VirtualQuantity>%d</rasd:VirtualQuantity>" % cpus, 1),
        (
            4,
            "%d MB of memory" % memory,
            "<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>"
            "<rasd:VirtualQuantity>%d</rasd:VirtualQuantity>" % memory,
            2,
        ),
        (
            20,
            "sataController0",
            "<rasd:Address>0</rasd:Address><rasd:ResourceSubType>AHCI</rasd:ResourceSubType>",
            3,
        ),
        (
            17,
            "disk1",
            "<rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>/disk/vmdisk1</rasd:HostResource>"
            "<rasd:Parent>3</rasd:Parent>",
            4,
        ),
        (
            10,
            "Ethernet adapter on 'NAT'",
            "<rasd:Address>%s</rasd:Address><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>"
            "<rasd:Connection>NAT</rasd:Connection><rasd:ResourceSubType>E1000</rasd:ResourceSubType>" % mac,
            5,
        ),
    ]
    hardware = "\n".join(
        "      <Item>\n        <rasd:Caption>%s</rasd:Caption>\n        <rasd:InstanceID>%d</rasd:InstanceID>\n"
        "        <rasd:ResourceType>%d</rasd:ResourceType>\n        %s\n      </Item>"
        % (escape(caption), instance, kind, extra)
        for kind, caption, extra, instance in items
    )
    return """<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" \
xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" \
xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" \
xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="%(vmdk)s" ovf:size="%(vmdk_size)d"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="%(capacity)d" ovf:diskId="vmdisk1" ovf:fileRef="file1" \
ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id=%(ident)s>
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="101">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux26_64</Description>
      <vbox:OSType ovf:required="false">Linux26_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>%(name)s</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
%(hardware)s
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
""" % {
        "vmdk": VMDK_NAME,
        "vmdk_size": vmdk_size,
        "capacity": capacity,
        "ident": ident,
        "name": escape(name),
        "hardware": hardware,
    }


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it, so the box is read only once."""

    def __init__(self, target: BinaryIO) -> None:
        super().__init__()
        self._target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._target.write(view)
        self.sha.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MEMBER_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_box(target: str, members: list[tuple[str, bytes | str]], compression: int) -> tuple[str, int]:
    """Write the box tarball; *members* are (name, bytes) or (name, path of a file). Returns sha256, size."""
    with open(target, "wb") as raw:
        writer = _HashingWriter(raw)
        gz = (
            gzip.GzipFile(filename="", mode="wb", compresslevel=compression, fileobj=writer, mtime=0)  # type: ignore[arg-type]
            if compression
            else None
        )
        stream: Any = gz if gz is not None else writer
        with tarfile.open(
            fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT, bufsize=_CHUNK, copybufsize=_CHUNK
        ) as tar:
            for name, content in members:
                if isinstance(content, bytes):
                    tar.addfile(_member(name, len(content)), io.BytesIO(content))
                else:
                    with open(content, "rb") as handle:
                        tar.addfile(_member(name, os.fstat(handle.fileno()).st_size), handle)
        if gz is not None:
            gz.close()
    return writer.sha.hexdigest(), writer.size


# --------------------------------------------------------------------------- the catalog


def _version_key(version: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version.split("."))


def box_url(opts: BoxOptions) -> str:
    base = opts.catalog.base_url if opts.catalog else None
    if base:
        return base.rstrip("/") + "/" + os.path.basename(opts.path)
    return Path(opts.path).as_uri()


def read_catalog(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BakeryError("catalog %s is not readable JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("versions", []), list):
        raise BakeryError("catalog %s is not a Vagrant box catalog (no versions list)" % path)
    return data


def entry_architecture(item: Mapping[str, Any]) -> str:
    """The architecture of a catalog's provider entry (one that names none is amd64: made before Vagrant 2.4)."""
    return str(item.get("architecture") or UNNAMED_ARCHITECTURE)


def catalog_entry(
    catalog: Mapping[str, Any] | None, version: str, provider: str, architecture: str = UNNAMED_ARCHITECTURE
) -> dict[str, Any] | None:
    """The entry of (version, provider, architecture): a version may list a provider once per architecture."""
    for entry in (catalog or {}).get("versions") or []:
        if str(entry.get("version")) == version:
            for item in entry.get("providers") or []:
                if item.get("name") == provider and entry_architecture(item) == architecture:
                    return item
    return None


def mark_default_architectures(providers: list[dict[str, Any]]) -> None:
    """Flag one entry per provider ``default_architecture`` (what Vagrant 2.4 takes when none is the host's):
    amd64 where it is listed, else the first architecture by name. Entries are sorted by provider, the default
    last: Vagrant 2.3, which knows no architectures, keeps the last entry of a provider's name."""
    chosen: dict[str, dict[str, Any]] = {}
    for item in sorted(providers, key=lambda p: (str(p.get("name")), entry_architecture(p))):
        name = str(item.get("name"))
        if name not in chosen or entry_architecture(item) == UNNAMED_ARCHITECTURE:
            chosen[name] = item
    for item in providers:
        item["default_architecture"] = item is chosen[str(item.get("name"))]
    providers.sort(key=lambda p: (str(p.get("name")), p["default_architecture"], entry_architecture(p)))


def check_catalog_conflict(
    catalog: Mapping[str, Any] | None,
    where: str,
    cat: CatalogOptions,
    provider: str,
    checksum: str | None,
    force: bool,
    architecture: str = UNNAMED_ARCHITECTURE,
) -> None:
    """Refuse to give a published version of the box new content, unless forced. *checksum* None: a box still to
    be built (the preflight), whose checksum cannot be known and will not be the listed one."""
    if catalog and catalog.get("name") not in (None, cat.box_name):
        raise BakeryError(
            "catalog %s lists box %r, not %r: give each box its own catalog"
            % (where, catalog.get("name"), cat.box_name)
        )
    entry = catalog_entry(catalog, cat.version, provider, architecture)
    if entry is None or force:
        return
    if (
        checksum is None
        or str(entry.get("checksum", "")).lower() != checksum
        or entry.get("checksum_type") != "sha256"
    ):
        raise BakeryError(
            "catalog %s already lists version %s of %s for %s (%s) with another checksum (%s %s, %s): Vagrant "
            "caches boxes by version, so give the new box a new version, or set force to replace it"
            % (
                where,
                cat.version,
                cat.box_name,
                provider,
                architecture,
                entry.get("checksum_type"),
                entry.get("checksum"),
                "the new box has sha256 %s" % checksum
                if checksum
                else "the box this bake would build is another: no box with these inputs exists",
            ),
            catalog=where,
            version=cat.version,
        )


def add_to_catalog(
    catalog: Mapping[str, Any] | None,
    cat: CatalogOptions,
    provider: str,
    url: str,
    checksum: str,
    where: str = "",
    force: bool = False,
    architecture: str = UNNAMED_ARCHITECTURE,
) -> tuple[dict[str, Any], str]:
    """The catalog with this box as (version, provider, architecture); returns it and what changed ('' for
    nothing)."""
    check_catalog_conflict(catalog, where or cat.path, cat, provider, checksum, force, architecture)
    new = json.loads(json.dumps(dict(catalog or {})))
    new["name"] = cat.box_name
    if cat.description is not None:
        new["description"] = cat.description
    versions: list[dict[str, Any]] = new.setdefault("versions", [])
    provided = {
        "name": provider,
        "architecture": architecture,
        "url": url,
        "checksum_type": "sha256",
        "checksum": checksum,
    }
    what = "%s (%s)" % (provider, architecture)
    version = next((v for v in versions if str(v.get("version")) == cat.version), None)
    if version is None:
        version = {"version": cat.version, "providers": [provided]}
        versions.append(version)
        change = "added version %s" % cat.version
    else:
        providers = version.setdefault("providers", [])
        item = next(
            (p for p in providers if p.get("name") == provider and entry_architecture(p) == architecture),
            None,
        )
        if item is None:
            providers.append(provided)
            change = "added provider %s to version %s" % (what, cat.version)
        elif {key: item.get(key) for key in provided} == provided:
            change = ""
        else:
            replaced = item.get("checksum") != checksum
            moved = item.get("url") != url
            item.update(provided)
            change = (
                "replaced %s of version %s"
                if replaced
                else "updated the URL of %s in version %s"
                if moved
                else "named the architecture of %s in version %s"
            ) % (what, cat.version)
    mark_default_architectures(version["providers"])
    versions.sort(key=lambda v: _version_key(str(v.get("version"))))
    if not change and new != catalog:
        change = "updated the catalog's name, description or default architectures"
    return new, change


def update_catalog(opts: BoxOptions, checksum: str, check_mode: bool) -> dict[str, Any]:
    """Add the box to the catalog file, replacing it atomically; the module's ``catalog`` result."""
    cat = opts.catalog
    if cat is None:
        raise BakeryError("vagrant_box: no catalog to update")
    url = box_url(opts)
    with file_lock(cat.path):
        current = read_catalog(cat.path)
        new, change = add_to_catalog(
            current, cat, opts.provider, url, checksum, cat.path, opts.force, opts.architecture
        )
        if change and not check_mode:
            write_json_atomic(cat.path, new)
    return {
        "path": cat.path,
        "name": cat.box_name,
        "version": cat.version,
        "url": url,
        "changed": bool(change),
        "change": change,
    }


# --------------------------------------------------------------------------- the box


def up_to_date(opts: BoxOptions, fp: str, sidecar: Mapping[str, Any] | None) -> tuple[bool, str]:
    if sidecar is None:
        return False, "box has no sidecar" if os.path.exists(opts.path) else "box does not exist"
    if sidecar.get("fingerprint") != fp:
        return False, "inputs changed"
    try:
        size = os.path.getsize(opts.path)
    except OSError:
        return False, "box does not exist"
    if sidecar.get("size") != size:
        return False, "box size differs from its sidecar"
    if opts.source_sha256 and sidecar.get("source_sha256") not in (None, opts.source_sha256):
        return False, "source disk changed"
    return True, "up to date"


def _partial_paths(path: str) -> list[str]:
    """Temporary files and directories that a build of *path* leaves when it is killed."""
    pattern = os.path.join(os.path.dirname(path), ".%s.*.partial" % glob.escape(os.path.basename(path)))
    return sorted(glob.glob(pattern))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _disk_member(opts: BoxOptions, info: DiskInfo, workdir: str, steps: Steps) -> tuple[str, str]:
    """(member name, file) of the box's disk, converted in *workdir* when the source is not usable as is."""
    if opts.source is None:
        raise BakeryError("vagrant_box: a box needs a source disk")
    if opts.provider == "libvirt":
        if info.format == "qcow2" and info.standalone:
            return "box.img", opts.source
        out = os.path.join(workdir, "box.img")
        tool = find_tool(opts.qemu_img, "qemu-utils")
        argv = [tool, "convert", "-O", "qcow2", opts.source, out]
        steps.run("qemu-img convert to qcow2", lambda: _run(argv, "qemu-img convert of %s" % opts.source))
        return "box.img", out
    out = os.path.join(workdir, VMDK_NAME)
    tool = find_tool(opts.qemu_img, "qemu-utils")
    argv = [tool, "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", opts.source, out]
    steps.run("qemu-img convert to VMDK", lambda: _run(argv, "qemu-img convert of %s" % opts.source))
    return VMDK_NAME, out


def _build(opts: BoxOptions, fp: str, inputs: dict[str, str]) -> dict[str, Any]:
    if opts.source is None:
        raise BakeryError("vagrant_box: a box needs a source disk")
    info = disk_info(opts.source, opts.qemu_img)
    source_sha256 = opts.source_sha256 or inputs.get("source")
    metadata = box_metadata(opts.provider, info, opts.architecture)
    vagrantfile = opts.vagrantfile if opts.vagrantfile is not None else default_vagrantfile(opts, fp)
    with Steps() as steps:
        with atomic_output(opts.path) as tmp:
            workdir = tempfile.mkdtemp(
                prefix=".%s." % os.path.basename(opts.path), suffix=".partial", dir=os.path.dirname(opts.path)
            )
            steps.add_undo("remove %s" % workdir, lambda: _remove(workdir), always=True)
            name, disk = _disk_member(opts, info, workdir, steps)
            members: list[tuple[str, bytes | str]] = [
                ("metadata.json", (json.dumps(metadata, sort_keys=True, indent=2) + "\n").encode()),
                ("Vagrantfile", vagrantfile.encode()),
            ]
            if opts.provider == "virtualbox":
                label = os.path.basename(opts.path)
                label = label[: -len(".box")] if label.endswith(".box") else label
                ovf = ovf_descriptor(
                    label, os.path.getsize(disk), info.virtual_size, opts.memory, opts.cpus, base_mac(fp)
                )
                members.append(("box.ovf", ovf.encode()))
            members.append((name, disk))
            sha256, size = steps.run("write box", lambda: write_box(tmp, members, opts.compression))
            if opts.catalog is not None:
                # a conflict leaves the published box as it was: the new one is still a temporary file
                with file_lock(opts.catalog.path):
                    check_catalog_conflict(
                        read_catalog(opts.catalog.path),
                        opts.catalog.path,
                        opts.catalog,
                        opts.provider,
                        sha256,
                        opts.force,
                        opts.architecture,
                    )
        write_sidecar(
            opts.path,
            {
                "fingerprint": fp,
                "inputs": inputs,
                "sha256": sha256,
                "size": size,
                "provider": opts.provider,
                "metadata": metadata,
                "virtual_size": info.virtual_size,
                "source": opts.source,
                "source_format": info.format,
                "source_sha256": source_sha256,
                "bake_id": opts.bake_id,
                "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
    return {"sha256": sha256, "size": size, "metadata": metadata, "virtual_size": info.virtual_size}


def _why(reason: str, names: list[str], forced: bool) -> str:
    if forced:
        return "force=true"
    if reason == "inputs changed":
        return "inputs changed: %s" % ", ".join(names)
    return reason


def _clean(opts: BoxOptions, check_mode: bool) -> dict[str, Any]:
    with file_lock(opts.path):
        leftovers = _partial_paths(opts.path)
        if not check_mode:
            for path in leftovers:
                _remove(path)
    return {
        "changed": bool(leftovers),
        "removed": leftovers,
        "path": opts.path,
        "msg": "removed %d temporary file(s) of %s" % (len(leftovers), opts.path)
        if leftovers
        else "no temporary files of %s" % opts.path,
    }


def make_box(params: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Find, build or clean up a box (and its catalog entry); the module's whole result."""
    started = time.monotonic()
    opts = parse_options(params)
    if opts.action == "clean":
        return _finish(_clean(opts, check_mode), started)

    inputs = compute_inputs(opts)
    fp = fingerprint(inputs)
    sidecar = read_sidecar(opts.path)
    previous = sidecar.get("inputs") if sidecar and isinstance(sidecar.get("inputs"), dict) else None
    names = changed_inputs(previous, inputs)
    current, reason = up_to_date(opts, fp, sidecar)
    found = current and not opts.force
    result: dict[str, Any] = {
        "path": opts.path,
        "provider": opts.provider,
        "box_name": opts.box_name,
        "version": opts.version,
        "fingerprint": fp,
        "inputs": inputs,
        "found": found,
        "built": False,
        "changed_inputs": [] if current else names,
        "sha256": sidecar.get("sha256") if current and sidecar else None,
        "size": sidecar.get("size") if current and sidecar else None,
        "metadata": sidecar.get("metadata") if current and sidecar else None,
        "bake_id": sidecar.get("bake_id") if current and sidecar else None,
        "catalog": None,
    }
    if opts.action == "find":
        why = _why(reason, names, opts.force and current)
        result.update(
            changed=False, msg="box %s is up to date" % opts.path if found else "would build: %s" % why
        )
        return _finish(result, started)

    changed = False
    if found:
        msg = "box %s is up to date" % opts.path
    else:
        why = _why(reason, names, opts.force and current)
        if check_mode:
            result.update(changed=True, msg="would build box %s: %s" % (opts.path, why))
            return _finish(result, started)
        with file_lock(opts.path):
            # a parallel task may have built the same box while this one waited for the lock
            sidecar = read_sidecar(opts.path)
            current, reason = up_to_date(opts, fp, sidecar)
            if current and not opts.force and sidecar:
                result.update(
                    found=True,
                    changed_inputs=[],
                    sha256=sidecar.get("sha256"),
                    size=sidecar.get("size"),
                    metadata=sidecar.get("metadata"),
                    bake_id=sidecar.get("bake_id"),
                )
                msg = "box %s is up to date (built by another task)" % opts.path
            else:
                result.update(_build(opts, fp, inputs), built=True, bake_id=opts.bake_id)
                changed = True
                msg = "built box %s: %s" % (opts.path, why)
    if opts.catalog is not None and result["sha256"]:
        result["catalog"] = update_catalog(opts, result["sha256"], check_mode)
        if result["catalog"]["changed"]:
            changed = True
            msg += "; catalog %s: %s" % (opts.catalog.path, result["catalog"]["change"])
    result.update(changed=changed, msg=msg)
    return _finish(result, started)


def _finish(result: dict[str, Any], started: float) -> dict[str, Any]:
    result["duration"] = round(time.monotonic() - started, 3)
    return result


def module_action(module: Any) -> dict[str, Any]:
    """Entry point for ``_module.run``."""
    return make_box(module.params, check_mode=module.check_mode)


# --------------------------------------------------------------------------- a box booted for its checks

MACHINE_ACTIONS = ("up", "destroy")
# vagrant-libvirt keeps only these characters of a domain name (set_name_of_domain.rb)
_DOMAIN_NAME = re.compile(r"^[-A-Za-z0-9_.]+$")
# the ssh-config keys that become the connection itself, not ssh options
_SSH_CONNECTION_KEYS = ("host", "hostname", "port", "user", "identityfile")
# for ansible_ssh_common_args, whatever vagrant says: the guest's host key is new on every boot
_SSH_ALWAYS = (
    ("UserKnownHostsFile", "/dev/null"),
    ("StrictHostKeyChecking", "no"),
    ("IdentitiesOnly", "yes"),
)
_OUTPUT_TAIL = 30


@dataclass(frozen=True)
class MachineOptions:
    action: str
    project: str
    box: str
    vagrant_home: str
    domain_name: str
    vagrantfile_lines: list[str] = field(default_factory=list)
    uri: str = _libvirt.URI
    up_timeout: int = 900
    destroy_timeout: int = 300
    vagrant: str = "vagrant"


def ruby_string(text: str) -> str:
    """A single-quoted Ruby string literal of *text*: no interpolation (``#{}``), only ``\\\\`` and ``\\'``
    are escapes."""
    return "'%s'" % text.replace("\\", "\\\\").replace("'", "\\'")


def check_domain_name(name: Any) -> str:
    """A domain name for the machine: vagrant-libvirt's default_prefix plus the machine name ``default``."""
    if not isinstance(name, str) or not _DOMAIN_NAME.match(name) or not name.endswith(_libvirt.MACHINE):
        raise BakeryError(
            "vagrant_machine: domain_name %r must end with %r (vagrant's machine) and hold only letters, digits, "
            "'-', '_' and '.'" % (name, _libvirt.MACHINE)
        )
    if len(name) == len(_libvirt.MACHINE):
        raise BakeryError("vagrant_machine: domain_name needs a prefix before %r" % _libvirt.MACHINE)
    return name


def verify_vagrantfile(box: str, domain_name: str, lines: list[str], uri: str = _libvirt.URI) -> str:
    """The Vagrantfile that boots *box* for its checks: the box's defaults, what a host without KVM needs, the
    libvirt domain named *domain_name*, and the user's *lines* last (they override the rest)."""
    prefix = domain_name[: -len(_libvirt.MACHINE)]
    text = [
        "# Made by bakery.images.vagrant_machine: the box booted for its checks (verify_up).",
        'Vagrant.configure("2") do |config|',
        "  config.vm.box = %s" % ruby_string(box),
        "  config.vm.box_check_update = false",
        "  config.vm.synced_folder '.', '/vagrant', disabled: true",
        "  # the base box convention: Vagrant's insecure key logs in, and stays (nothing is written into the guest)",
        "  config.ssh.insert_key = false",
        "  config.vm.boot_timeout = 600",
        "  config.vm.provider :libvirt do |libvirt|",
        "    libvirt.uri = %s" % ruby_string(uri),
        "    # TCG: no KVM needed (a host with KVM may set libvirt.driver = 'kvm' in verify_vagrantfile)",
        "    libvirt.driver = 'qemu'",
        "    libvirt.cpus = 1",
        "    libvirt.graphics_type = 'none'",
        "    # the domain is %s" % domain_name,
        "    libvirt.default_prefix = %s" % ruby_string(prefix),
        "    libvirt.management_network_name = 'default'",
        "    libvirt.management_network_address = '192.168.122.0/24'",
        "    # vagrant destroy would otherwise undefine the network (also one that was there before)",
        "    libvirt.management_network_keep = true",
        "  end",
    ]
    if lines:
        text.append("  # verify_vagrantfile")
        text += ["  %s" % line for line in lines]
    text.append("end")
    return "\n".join(text) + "\n"


def parse_ssh_config(text: str) -> dict[str, Any]:
    """The connection in ``vagrant ssh-config``'s output: host, port, user, private key and the other options as
    ssh arguments (``-o Key=value``), with host key checking off."""
    values: dict[str, str] = {}
    keys: list[str] = []
    args: list[str] = []
    seen = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, value = (line.split(None, 1) + [""])[:2]
        value = value.strip()
        if value[:1] == '"' and value[-1:] == '"' and len(value) > 1:
            value = value[1:-1]
        lower = key.lower()
        if lower == "host":
            if values:
                break  # the first machine only
            continue
        if lower == "identityfile":
            keys.append(value)
        elif lower in _SSH_CONNECTION_KEYS:
            values[lower] = value
        else:
            seen.add(lower)
            args.append("-o")
            args.append("%s=%s" % (key, value))
    if not values.get("hostname") or not keys:
        raise BakeryError("vagrant ssh-config named no host or no key: %s" % text.strip()[-500:])
    for key, value in _SSH_ALWAYS:
        if key.lower() not in seen:
            args += ["-o", "%s=%s" % (key, value)]
    for extra in keys[1:]:
        args += ["-o", "IdentityFile=%s" % extra]
    return {
        "host": values["hostname"],
        "port": int(values.get("port") or 22),
        "user": values.get("user") or "vagrant",
        "private_key": keys[0],
        "ssh_args": args,
    }


def parse_machine_options(params: Mapping[str, Any]) -> MachineOptions:
    action = params.get("action") or "up"
    if action not in MACHINE_ACTIONS:
        raise BakeryError("vagrant_machine: unknown action %r" % action)
    for key in ("project", "box", "vagrant_home", "domain_name"):
        if not params.get(key):
            raise BakeryError("vagrant_machine: %s is required" % key)
    return MachineOptions(
        action=action,
        project=os.path.abspath(str(params["project"])),
        box=str(params["box"]),
        vagrant_home=os.path.abspath(str(params["vagrant_home"])),
        domain_name=check_domain_name(params["domain_name"]),
        vagrantfile_lines=[str(line) for line in params.get("vagrantfile_lines") or []],
        uri=str(params.get("uri") or _libvirt.URI),
        up_timeout=int(params.get("up_timeout") or 900),
        destroy_timeout=int(params.get("destroy_timeout") or 300),
        vagrant=str(params.get("vagrant") or "vagrant"),
    )


def vagrant_environment(opts: MachineOptions) -> dict[str, str]:
    return dict(
        os.environ,
        VAGRANT_HOME=opts.vagrant_home,
        VAGRANT_CWD=opts.project,
        VAGRANT_DEFAULT_PROVIDER="libvirt",
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_NO_COLOR="1",
        LIBVIRT_DEFAULT_URI=opts.uri,
    )


def _vagrant(opts: MachineOptions, args: list[str], timeout: int) -> tuple[int, str]:
    """Run vagrant in the project (its own process group, killed whole on timeout): (rc, output)."""
    tool = find_tool(opts.vagrant, "vagrant")
    proc = subprocess.Popen(  # noqa: S603 - argv, no shell
        [tool, *args],
        cwd=opts.project,
        env=vagrant_environment(opts),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
        return -1, (out or "") + "\n(vagrant %s did not finish within %d s)" % (args[0], timeout)
    return proc.returncode, out or ""


def _tail(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-_OUTPUT_TAIL:]


def machine_up(opts: MachineOptions, check_mode: bool) -> dict[str, Any]:
    """Write the project's Vagrantfile and ``vagrant up`` the box; the connection for the checks. A machine that
    does not come up is destroyed (and libvirt swept) before the error is raised."""
    vagrantfile = os.path.join(opts.project, "Vagrantfile")
    result: dict[str, Any] = {
        "project": opts.project,
        "vagrantfile": vagrantfile,
        "domain": opts.domain_name,
        "box": opts.box,
    }
    if check_mode:
        find_tool(opts.vagrant, "vagrant")
        return dict(result, changed=True, msg="would boot box %s as domain %s" % (opts.box, opts.domain_name))
    os.makedirs(opts.project, mode=0o700, exist_ok=True)
    with atomic_output(vagrantfile) as partial:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(verify_vagrantfile(opts.box, opts.domain_name, opts.vagrantfile_lines, opts.uri))
    rc, out = _vagrant(opts, ["up", "--provider=libvirt"], opts.up_timeout)
    if rc != 0:
        undone = _destroy(opts, False)
        raise BakeryError(
            "vagrant up of box %s failed: %s" % (opts.box, (_tail(out) or ["exit status %d" % rc])[-1]),
            output_lines=_tail(out),
            removed=undone["removed"],
        )
    rc, config = _vagrant(opts, ["ssh-config"], 120)
    if rc != 0:
        undone = _destroy(opts, False)
        raise BakeryError(
            "vagrant ssh-config failed: %s" % ((_tail(config) or ["exit status %d" % rc])[-1]),
            output_lines=_tail(config),
            removed=undone["removed"],
        )
    ssh = parse_ssh_config(config)
    result.update(
        changed=True,
        ssh=ssh,
        builder={
            "connection": "ssh",
            "host": ssh["host"],
            "port": ssh["port"],
            "user": ssh["user"],
            "private_key": ssh["private_key"],
            "ssh_common_args": " ".join(shlex.quote(arg) for arg in ssh["ssh_args"]),
        },
        output_lines=_tail(out),
        msg="box %s runs as domain %s (%s@%s:%d)"
        % (opts.box, opts.domain_name, ssh["user"], ssh["host"], ssh["port"]),
    )
    return result


def _destroy(opts: MachineOptions, check_mode: bool) -> dict[str, Any]:
    """``vagrant destroy -f`` in the project (when it has a Vagrantfile), then libvirt swept of the domain, its
    disk and the box's uploaded image: what was (or would be) removed, and what failed."""
    removed: list[dict[str, Any]] = []
    problems: list[str] = []
    running = _libvirt.available() and opts.domain_name in _libvirt.domains(opts.uri)
    vagrantfile = os.path.join(opts.project, "Vagrantfile")
    if running and os.path.isfile(vagrantfile) and not check_mode:
        rc, out = _vagrant(opts, ["destroy", "-f"], opts.destroy_timeout)
        if rc != 0:
            problems.append("vagrant destroy: %s" % ((_tail(out) or ["exit status %d" % rc])[-1]))
        elif opts.domain_name not in _libvirt.domains(opts.uri):
            entry = record("libvirt", "domain", opts.domain_name, location=opts.uri)
            entry.update(state=REMOVED, by="vagrant destroy")
            removed.append(entry)
    swept = _libvirt.sweep(
        None, check_mode, domain_names=[opts.domain_name], box_names=[opts.box], uri=opts.uri
    )
    removed += swept
    problems += errors_of(swept)
    return {"removed": removed, "problems": problems}


def machine_destroy(opts: MachineOptions, check_mode: bool) -> dict[str, Any]:
    done = _destroy(opts, check_mode)
    names = [
        "%s %s" % (entry["kind"], entry["name"]) for entry in done["removed"] if entry["state"] != FAILED
    ]
    result = {
        "changed": bool(names),
        "removed": done["removed"],
        "project": opts.project,
        "domain": opts.domain_name,
        "box": opts.box,
    }
    if done["problems"]:
        raise BakeryError(
            "vagrant_machine could not remove everything of box %s: %s"
            % (opts.box, "; ".join(done["problems"])),
            **result,
        )
    verb = "would remove" if check_mode else "removed"
    result["msg"] = "%s %s" % (verb, ", ".join(names)) if names else "nothing left of box %s" % opts.box
    return result


def machine_action(module: Any) -> dict[str, Any]:
    """Entry point of the vagrant_machine module for ``_module.run``."""
    opts = parse_machine_options(module.params)
    if opts.action == "up":
        return machine_up(opts, module.check_mode)
    return machine_destroy(opts, module.check_mode)
