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
import shutil
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

PROVIDERS = ("libvirt", "virtualbox")
ACTIONS = ("build", "find", "clean")
# The layout of the boxes this module writes; part of every fingerprint, bumped when the layout changes.
BOX_LAYOUT = 2
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
    )


def box_options_digest(opts: BoxOptions) -> str:
    """What, besides the disk, decides the box's bytes."""
    return digest_value(
        {
            "layout": BOX_LAYOUT,
            "provider": opts.provider,
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


def box_metadata(provider: str, info: DiskInfo) -> dict[str, Any]:
    if provider == "libvirt":
        return {"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_size_gib(info.virtual_size)}
    return {"provider": "virtualbox"}


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


def catalog_entry(catalog: Mapping[str, Any] | None, version: str, provider: str) -> dict[str, Any] | None:
    for entry in (catalog or {}).get("versions") or []:
        if str(entry.get("version")) == version:
            for item in entry.get("providers") or []:
                if item.get("name") == provider:
                    return item
    return None


def check_catalog_conflict(
    catalog: Mapping[str, Any] | None,
    where: str,
    cat: CatalogOptions,
    provider: str,
    checksum: str | None,
    force: bool,
) -> None:
    """Refuse to give a published version of the box new content, unless forced. *checksum* None: a box still to
    be built (the preflight), whose checksum cannot be known and will not be the listed one."""
    if catalog and catalog.get("name") not in (None, cat.box_name):
        raise BakeryError(
            "catalog %s lists box %r, not %r: give each box its own catalog"
            % (where, catalog.get("name"), cat.box_name)
        )
    entry = catalog_entry(catalog, cat.version, provider)
    if entry is None or force:
        return
    if (
        checksum is None
        or str(entry.get("checksum", "")).lower() != checksum
        or entry.get("checksum_type") != "sha256"
    ):
        raise BakeryError(
            "catalog %s already lists version %s of %s for %s with another checksum (%s %s, %s): Vagrant caches "
            "boxes by version, so give the new box a new version, or set force to replace it"
            % (
                where,
                cat.version,
                cat.box_name,
                provider,
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
) -> tuple[dict[str, Any], str]:
    """The catalog with this box as (version, provider); returns it and what changed ('' for nothing)."""
    check_catalog_conflict(catalog, where or cat.path, cat, provider, checksum, force)
    new = json.loads(json.dumps(dict(catalog or {})))
    new["name"] = cat.box_name
    if cat.description is not None:
        new["description"] = cat.description
    versions: list[dict[str, Any]] = new.setdefault("versions", [])
    provided = {"name": provider, "url": url, "checksum_type": "sha256", "checksum": checksum}
    version = next((v for v in versions if str(v.get("version")) == cat.version), None)
    if version is None:
        versions.append({"version": cat.version, "providers": [provided]})
        change = "added version %s" % cat.version
    else:
        providers = version.setdefault("providers", [])
        item = next((p for p in providers if p.get("name") == provider), None)
        if item is None:
            providers.append(provided)
            providers.sort(key=lambda p: str(p.get("name")))
            change = "added provider %s to version %s" % (provider, cat.version)
        elif {key: item.get(key) for key in provided} == provided:
            change = ""
        else:
            replaced = item.get("checksum") != checksum
            item.update(provided)
            change = ("replaced %s of version %s" if replaced else "updated the URL of %s in version %s") % (
                provider,
                cat.version,
            )
    versions.sort(key=lambda v: _version_key(str(v.get("version"))))
    if not change and new != catalog:
        change = "updated the catalog's name or description"
    return new, change


def update_catalog(opts: BoxOptions, checksum: str, check_mode: bool) -> dict[str, Any]:
    """Add the box to the catalog file, replacing it atomically; the module's ``catalog`` result."""
    cat = opts.catalog
    if cat is None:
        raise BakeryError("vagrant_box: no catalog to update")
    url = box_url(opts)
    with file_lock(cat.path):
        current = read_catalog(cat.path)
        new, change = add_to_catalog(current, cat, opts.provider, url, checksum, cat.path, opts.force)
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
    metadata = box_metadata(opts.provider, info)
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
