# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An evaluated Packer template mapped to a bake definition, with a report of what was mapped.

Every source (builder), provisioner, post-processor and data source becomes one report item: ``mapped``,
``partly mapped`` (with each dropped option and why) or ``not mapped`` (why, and what to do instead).
Options bakery does not need (how Packer connects to its builder, where it puts temporary files) are listed
as ``not needed`` and do not make an item partly mapped. The definition is plain data; :mod:`_packer_yaml`
writes it with the comments collected here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._packer import Template
from ansible_collections.bakery.images.plugins.module_utils._packer_hcl import DataRef, Unknown
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

MAPPED, PARTLY, NOT_MAPPED = "mapped", "partly mapped", "not mapped"
PROPOSED_BASE = {"suite": "bookworm", "packages": ["python3", "python3-apt"]}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_BUILD_FIELD = re.compile(r"\{\{-?\s*\.[A-Za-z_]+[^}]*\}\}")
_DURATION = re.compile(r"([0-9.]+)(h|ms|m|s|us|ns)")

# options of every builder that say how Packer reaches and leaves its builder: bakery does that itself
CONNECTION = (
    "communicator",
    "ssh_username",
    "pause_before_connecting",
    "shutdown_command",
    "shutdown_timeout",
    "headless",
    "ssh_password",
    "ssh_timeout",
    "ssh_wait_timeout",
    "ssh_private_key_file",
    "ssh_keypair_name",
    "ssh_agent_auth",
    "ssh_pty",
    "ssh_handshake_attempts",
    "ssh_port",
    "ssh_host",
    "ssh_clear_authorized_keys",
    "ssh_file_transfer_method",
    "ssh_bastion_host",
    "temporary_key_pair_type",
    "temporary_key_pair_name",
    "winrm_username",
    "winrm_password",
    "winrm_timeout",
    "output_directory",
    "skip_compaction",
    "vnc_bind_address",
    "vnc_port_min",
    "vnc_port_max",
    "vnc_use_password",
    "net_device",
    "disk_interface",
    "boot_wait",
    "host_port_min",
    "host_port_max",
    "ssh_host_port_min",
    "ssh_host_port_max",
)
CONNECTION_WHY = "how Packer reaches and stops its builder; bakery connects to its builders itself"
ISO_KEYS = (
    "iso_url",
    "iso_urls",
    "iso_checksum",
    "iso_target_path",
    "iso_target_extension",
    "boot_command",
    "boot_key_interval",
    "http_directory",
    "http_content",
    "http_port_min",
    "http_port_max",
    "http_bind_address",
    "floppy_files",
    "floppy_dirs",
    "floppy_content",
    "cd_files",
    "cd_content",
    "cd_label",
    "guest_os_type",
)
# Packer's openstack builder: what describes the Nova server it provisions (no counterpart in bakery)
OPENSTACK_INSTANCE_KEYS = (
    "source_image",
    "source_image_name",
    "source_image_filter",
    "external_source_image_url",
    "external_source_image_format",
    "external_source_image_properties",
    "flavor",
    "networks",
    "ports",
    "floating_ip",
    "floating_ip_network",
    "instance_floating_ip_net",
    "reuse_ips",
    "security_groups",
    "availability_zone",
    "config_drive",
    "user_data",
    "user_data_file",
    "instance_name",
    "instance_metadata",
    "use_blockstorage_volume",
    "volume_name",
    "volume_type",
    "volume_size",
    "volume_availability_zone",
    "rackconnect_wait",
    "force_delete",
    "network_discovery_cidrs",
    "ssh_interface",
    "ssh_ip_version",
    "skip_create_image",
    "openstack_provider",
    "use_floating_ip",
)
# Packer's digitalocean builder: the droplet options the digitalocean target has no counterpart of
DIGITALOCEAN_INSTANCE_KEYS = (
    "private_networking",
    "monitoring",
    "droplet_agent",
    "ipv6",
    "vpc_uuid",
    "connect_with_private_ip",
    "ssh_key_id",
    "user_data",
    "user_data_file",
    "state_timeout",
    "http_retry_max",
    "http_retry_wait_max",
    "http_retry_wait_min",
)
ISO_INSTEAD = (
    "bakery makes the disk from a Debian root filesystem (bake.base, built with mmdebstrap): no installer, "
    "no boot_command, no preseed/kickstart/autoinstall. The definition proposes that base; put what the "
    "installer's answers configured into provisioners"
)


class Item:
    """One report line: a source, provisioner, post-processor or data source and what became of it."""

    def __init__(self, kind: str, name: str, where: str) -> None:
        self.kind, self.name, self.where = kind, name, where
        self.to: list[str] = []
        self.dropped: list[dict[str, str]] = []
        self.not_needed: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.not_mapped: str | None = None
        self.instead: str | None = None

    def drop(self, option: str, why: str) -> None:
        self.dropped.append({"option": option, "why": why})

    def skip(self, option: str, why: str) -> None:
        self.not_needed.append({"option": option, "why": why})

    def refuse(self, why: str, instead: str) -> None:
        self.not_mapped, self.instead = why, instead

    def status(self) -> str:
        if self.not_mapped:
            return NOT_MAPPED
        return PARTLY if self.dropped else MAPPED

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "where": self.where,
            "status": self.status(),
        }
        if self.to:
            out["to"] = list(self.to)
        if self.not_mapped:
            out["why"] = self.not_mapped
            out["instead"] = self.instead
        if self.dropped:
            out["dropped"] = self.dropped
        if self.not_needed:
            out["not_needed"] = self.not_needed
        if self.notes:
            out["notes"] = self.notes
        return out


def seconds(value: Any) -> int | None:
    """A Go duration (``1m30s``, ``10s``, ``500ms``) or a number of seconds, rounded up to whole seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(-(-value // 1))
    text = str(value).strip()
    if re.match(r"^[0-9]+$", text):
        return int(text)
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            raise BakeryError("%r is not a duration" % value)
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "ns": 1e-9}[unit]
        position = match.end()
    if position != len(text) or not text:
        raise BakeryError("%r is not a duration" % value)
    return int(-(-total // 1))


def clean_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-_")
    return (name or "packer")[:40].rstrip("-_") or "packer"


def _unknown_in(value: Any) -> Unknown | DataRef | None:
    if isinstance(value, (Unknown, DataRef)):
        return value
    if isinstance(value, list):
        for item in value:
            found = _unknown_in(item)
            if found is not None:
                return found
    if isinstance(value, Mapping):
        for item in value.values():
            found = _unknown_in(item)
            if found is not None:
                return found
    return None


def _build_fields(value: Any) -> list[str]:
    if isinstance(value, str):
        return _BUILD_FIELD.findall(value)
    if isinstance(value, list):
        return [field for item in value for field in _build_fields(item)]
    if isinstance(value, Mapping):
        return [field for item in value.values() for field in _build_fields(item)]
    return []


class Mapper:
    """Maps one evaluated template; :meth:`run` returns the definition, its comments, files and report."""

    def __init__(
        self, template: Template, name: str | None, only: list[str], except_: list[str], output_dir: str
    ):
        self.template = template
        self.only, self.except_ = only, except_
        self.output_dir = output_dir
        self.items: list[Item] = []
        self.unknown: list[dict[str, str]] = []
        self.warnings: list[str] = list(template.warnings)
        self.comments: dict[tuple, str] = {}
        self.files: dict[str, str] = {}
        self.targets: list[dict[str, Any]] = []  # {"name", "type", "ref", "build", "options", "provisioned"}
        self.provisioners: list[dict[str, Any]] = []
        self.error_provisioners: list[dict[str, Any]] = []
        self.needs_base = False
        self.name = clean_name(name or self._default_name())

    def _default_name(self) -> str:
        named = [build["name"] for build in self.template.builds if build.get("name")]
        if len(named) == 1 and len(self.template.builds) == 1:
            return str(named[0])
        base = os.path.basename(self.template.path.rstrip("/"))
        for suffix in (".pkr.hcl", ".pkr.json", ".json"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base

    # ------------------------------------------------------------ helpers

    def rel(self, path: str) -> str:
        """A controller path as the definition writes it: relative to the output directory (where the
        definition is), as Packer resolved it (against the directory packer build runs in)."""
        full = os.path.normpath(os.path.join(self.template.cwd, os.path.expanduser(path)))
        relative = os.path.relpath(full, self.output_dir)
        # beside the template (the default output directory is there): relative, else absolute
        return full if relative.startswith("../../..") else relative

    def full(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.template.cwd, os.path.expanduser(path)))

    def known(self, item: Item, option: str, value: Any) -> bool:
        """Whether *value* is known now; an unknown one is reported and dropped."""
        found = _unknown_in(value)
        if found is None:
            return True
        if isinstance(found, DataRef):
            why = "refers to data source data.%s.%s, which the importer maps only as an AMI filter" % (
                found.kind,
                found.name,
            )
            text = repr(found)
        else:
            why, text = found.why, found.text
        item.drop(option, "%s: %s" % (text, why))
        self.unknown.append({"where": item.where, "option": option, "value": text, "why": why})
        return False

    def known_map(self, item: Item, option: str, value: Any) -> dict[str, str]:
        """A map of texts (tags, labels) without its unknown entries, each reported."""
        return {
            str(key): str(entry)
            for key, entry in (value or {}).items()
            if self.known(item, "%s.%s" % (option, key), entry)
        }

    def build_fields(self, item: Item, option: str, value: Any) -> None:
        for field in _build_fields(value):
            item.drop(
                option, "%s is filled in by Packer during the build; bakery keeps it as written" % field
            )
            self.unknown.append(
                {
                    "where": item.where,
                    "option": option,
                    "value": field,
                    "why": "filled in by Packer during the build",
                }
            )

    def selected(self, ref: str, build: Mapping[str, Any]) -> bool:
        names = [ref, ref.split(".", 1)[1]]
        if build.get("name"):
            names.append("%s.%s" % (build["name"], ref))
        if self.only and not any(fnmatch.fnmatch(n, p) for n in names for p in self.only):
            return False
        return not any(fnmatch.fnmatch(n, p) for n in names for p in self.except_)

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        template = self.template
        for name, variable in template.variables.items():
            if variable.get("unset") and variable.get("used"):
                raise BakeryError("variable %s has no value" % name)
        for build_index, build in enumerate(template.builds):
            for target in build["targets"]:
                ref = "%s.%s" % (target["type"], target["name"])
                target["ref"] = ref
                target["build_index"] = build_index
        self._name_targets()
        for build in template.builds:
            for target in build["targets"]:
                if target.get("target_name"):
                    self._source(build, target)
        data_used: set = set()
        for target in self.targets:
            data_used.update(target.get("data", []))
        for build in template.builds:
            self._provisioners(build, build["provisioners"], "provisioner", self.provisioners)
            self._provisioners(
                build, build["error_cleanup"], "error-cleanup-provisioner", self.error_provisioners
            )
            self._post_processors(build)
        for entry in template.data:
            item = Item("data source", "%s.%s" % (entry["type"], entry["name"]), entry["where"])
            if (entry["type"], entry["name"]) in data_used:
                item.to.append("source_ami_filter of the ami targets that use it")
            elif entry["type"] == "amazon-ami":
                item.refuse(
                    "no source uses its id as source_ami",
                    "give the ami target a source_ami_filter with the same filters",
                )
            else:
                item.refuse(
                    "bakery reads no data sources; the importer evaluates their attributes to nothing",
                    "put the value in a variable, or look it up with a task before the bake",
                )
            self.items.append(item)
        if not self.targets:
            raise BakeryError(
                "nothing to import: no source of the template %s"
                % ("is selected by only/except" if self.only or self.except_ else "can become a bake target")
            )
        return self._result()

    def _name_targets(self) -> None:
        """Each (build, source) pair becomes a target; its name is the source's (bakery's rules), made unique."""
        pairs = [
            (build, target)
            for build in self.template.builds
            for target in build["targets"]
            if self.selected(target["ref"], build)
        ]
        skipped = [
            target["ref"]
            for build in self.template.builds
            for target in build["targets"]
            if not self.selected(target["ref"], build)
        ]
        if skipped:
            self.warnings.append("left out by only/except: %s" % ", ".join(skipped))
        taken: set[str] = set()
        counts: dict[str, int] = {}
        for _build, target in pairs:
            counts[clean_name(target["name"])] = counts.get(clean_name(target["name"]), 0) + 1
        for build, target in pairs:
            name = clean_name(target["name"])
            if counts[name] > 1:
                name = clean_name("%s-%s" % (name, target["type"]))
                if name in taken and build.get("name"):
                    name = clean_name("%s-%s" % (build["name"], name))
            base, number = name, 2
            while name in taken:
                name = clean_name("%s-%d" % (base[:36], number))
                number += 1
            taken.add(name)
            target["target_name"] = name
        for ref in self.template.unused:
            item = Item("source", ref, "%s (no build uses it)" % os.path.basename(self.template.path))
            item.refuse("no build block lists it in sources", "add it to a build, or leave it out")
            self.items.append(item)

    # ------------------------------------------------------------ sources

    def _source(self, build: Mapping[str, Any], target: dict[str, Any]) -> None:
        kind = target["type"]
        item = Item("source", target["ref"], target["where"])
        config = dict(target["config"])
        for key in list(config):
            if key.startswith("__"):
                config.pop(key)
        handler = {
            "docker": self._docker,
            "qemu": self._qemu,
            "virtualbox-iso": self._hypervisor_iso,
            "vmware-iso": self._hypervisor_iso,
            "hyperv-iso": self._hypervisor_iso,
            "amazon-ebs": self._amazon_ebs,
            "googlecompute": self._googlecompute,
            "openstack": self._openstack,
            "digitalocean": self._digitalocean,
        }.get(kind)
        entry: dict[str, Any] = {"name": target["target_name"], "ref": target["ref"], "item": item}
        if handler is None:
            item.refuse(
                "bakery has no %s builder" % kind,
                "bakery targets: docker, qemu (disks in qcow2, raw, vmdk, vdi, vhdx), vagrant, ami, gce, "
                "openstack, digitalocean",
            )
            self.items.append(item)
            return
        result = handler(config, item, entry)
        self.items.append(item)
        if result is None:
            return
        then = entry.pop("then", None)
        entry.update(result)
        item.to.append("targets: %s (%s)" % (entry["name"], entry["type"]))
        self.targets.append(entry)
        target["mapped"] = entry
        if then:
            # the image the source made in Packer, made here from the proposed qemu target's disk
            self._add_target(then, item)

    def _leftover(self, config: dict, item: Item, why: str = "bakery has no such option") -> None:
        for key, value in config.items():
            if key in CONNECTION:
                item.skip(key, CONNECTION_WHY)
            elif value not in (None, "", [], {}):
                item.drop(key, why)

    def _docker(self, config: dict, item: Item, entry: dict) -> dict | None:
        options: dict[str, Any] = {}
        image = config.pop("image", None)
        if self.known(item, "image", image) and image:
            options["base_image"] = image
        commit = config.pop("commit", None)
        export_path = config.pop("export_path", None)
        discard = config.pop("discard", None)
        if not commit and export_path:
            item.drop(
                "export_path",
                "bakery commits the container into an image; write a tarball after the bake with "
                "community.docker.docker_image_export",
            )
        if discard:
            item.drop("discard", "bakery always keeps the image it bakes")
        changes = config.pop("changes", None) or []
        if self.known(item, "changes", changes):
            docker_changes, labels = self._changes(changes, item)
            if docker_changes:
                options["changes"] = docker_changes
            if labels:
                options["labels"] = labels
        platform = config.pop("platform", None)
        if platform:
            options["platform"] = platform
        pull = config.pop("pull", None)
        item.skip(
            "pull",
            "bakery starts from the image in the local engine (docker pull it first when it is not there)"
            if pull in (None, True)
            else "bakery starts from the image in the local engine",
        )
        for key in ("author", "message"):
            if config.pop(key, None):
                item.drop(key, "commit metadata: set a label in changes (LABEL) instead")
        for key in (
            "privileged",
            "cap_add",
            "cap_drop",
            "volumes",
            "tmpfs",
            "device",
            "run_command",
            "runtime",
        ):
            if config.pop(key, None) not in (None, False, [], {}):
                item.drop(
                    key,
                    "the build container runs unprivileged, with bakery's own command and no host mounts: a "
                    "builder must not reach the build host",
                )
        for key in (
            "login",
            "login_username",
            "login_password",
            "login_server",
            "ecr_login",
            "aws_access_key",
            "aws_secret_key",
            "aws_token",
            "aws_profile",
        ):
            if config.pop(key, None) not in (None, False, ""):
                item.skip(key, "credentials to pull the base image: bakery does not pull it")
        for key in ("container_dir", "fix_upload_owner", "exec_user", "windows_container", "systemd"):
            if key in config:
                config.pop(key)
                item.skip(key, "how Packer runs commands in its container; bakery connects with docker_api")
        self._leftover(config, item)
        options["repository"] = "%s/%s" % (self.name, entry["name"])
        self.comments_for_docker = True
        entry["comment"] = (
            'source "docker" "%s": the container bake of bakery; Packer leaves a committed image untagged, bakery '
            "names it (repository, tags)" % entry["ref"].split(".", 1)[1]
        )
        if "base_image" not in options:
            self.needs_base = True
        return {"type": "docker", "options": options, "provisioned": True}

    def _changes(self, changes: list, item: Item) -> tuple[dict, dict]:
        out: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for change in changes:
            text = str(change).strip()
            instruction, _space, rest = text.partition(" ")
            instruction, rest = instruction.upper(), rest.strip()
            if instruction in ("CMD", "ENTRYPOINT"):
                if rest.startswith("["):
                    try:
                        value = json.loads(rest)
                    except ValueError:
                        item.drop("changes", "%r: not a JSON array" % text)
                        continue
                else:
                    value = ["/bin/sh", "-c", rest]
                out[instruction.lower()] = [str(v) for v in value]
            elif instruction == "ENV":
                env = out.setdefault("env", {})
                if "=" in rest.split(" ", 1)[0]:
                    for pair in shlex.split(rest):
                        key, _equals, value = pair.partition("=")
                        env[key] = value
                else:
                    key, _space, value = rest.partition(" ")
                    env[key] = value.strip()
            elif instruction == "EXPOSE":
                out.setdefault("expose", []).extend(rest.split())
            elif instruction in ("USER", "WORKDIR", "STOPSIGNAL"):
                out[instruction.lower()] = rest
            elif instruction == "VOLUME":
                volumes = json.loads(rest) if rest.startswith("[") else rest.split()
                out.setdefault("volumes", []).extend(str(v) for v in volumes)
            elif instruction == "LABEL":
                for pair in shlex.split(rest):
                    key, _equals, value = pair.partition("=")
                    labels[key] = value
            else:
                item.drop(
                    "changes",
                    "%s: bakery's changes are cmd, entrypoint, env, expose, user, workdir, volumes, "
                    "stopsignal and labels" % instruction,
                )
        return out, labels

    def _qemu(self, config: dict, item: Item, entry: dict) -> dict | None:
        options: dict[str, Any] = {}
        disk_image = bool(config.pop("disk_image", False))
        iso_url = config.pop("iso_url", None)
        iso_urls = config.pop("iso_urls", None)
        checksum = config.pop("iso_checksum", None)
        if disk_image:
            options["provision"] = "vm"
            url = iso_url or (iso_urls or [None])[0]
            if self.known(item, "iso_url", url) and url:
                if re.match(r"^[a-z]+://", str(url)) and not str(url).startswith("file://"):
                    item.drop(
                        "iso_url",
                        "bakery starts from a local disk image: download %s and set base_image to its path"
                        % url,
                    )
                    options["base_image"] = os.path.basename(str(url).split("?", maxsplit=1)[0])
                else:
                    options["base_image"] = self.full(
                        str(url)[len("file://") :] if str(url).startswith("file://") else str(url)
                    )
            if checksum and str(checksum).lower() != "none":
                kind, _colon, digest = str(checksum).partition(":")
                if digest and kind.lower() == "sha256":
                    options["base_image_checksum"] = digest
                elif not digest and re.match(r"^[0-9a-fA-F]{64}$", kind):
                    options["base_image_checksum"] = kind
                else:
                    item.drop("iso_checksum", "bakery checks a base image by its sha256 only")
            entry["comment"] = (
                'source "qemu" "%s": disk_image = true, so the disk starts from base_image and is '
                "provisioned in a VM" % entry["ref"].split(".", 1)[1]
            )
        else:
            for key in ISO_KEYS:
                config.pop(key, None)
            item.refuse(
                "an ISO install (boot_command, http_directory, an installer's answer file) is not made by bakery",
                ISO_INSTEAD + "; target %s is that proposal" % entry["name"],
            )
            self.needs_base = True
            entry["comment"] = (
                'PROPOSED for source "qemu" "%s" (an ISO install in Packer): the disk is made from bake.base'
                % entry["ref"].split(".", 1)[1]
            )
        fmt = config.pop("format", None)
        options["formats"] = [fmt if fmt in ("qcow2", "raw") else "qcow2"]
        if fmt not in (None, "qcow2", "raw"):
            item.drop("format", "qemu's formats are qcow2 and raw")
        size = config.pop("disk_size", None)
        if size not in (None, ""):
            options["disk_size"] = "%sM" % size if re.match(r"^[0-9]+$", str(size)) else str(size)
        vm: dict[str, Any] = {}
        for key, option in (("accelerator", "accelerator"), ("memory", "memory"), ("cpus", "cpus")):
            value = config.pop(key, None)
            if value not in (None, ""):
                if disk_image:
                    vm[option] = int(value) if option != "accelerator" else value
                else:
                    item.skip(key, "the ISO installer's VM; bakery's disk is provisioned in a chroot")
        firmware = config.pop("firmware", None) or config.pop("efi_firmware_code", None)
        if config.pop("efi_boot", None) or firmware:
            if disk_image:
                vm["firmware"] = "uefi"
            else:
                item.skip("efi_boot", "bakery's disks boot with BIOS and UEFI")
        qemuargs = config.pop("qemuargs", None)
        if qemuargs:
            if disk_image:
                vm["qemu_args"] = [str(arg) for args in qemuargs for arg in args]
            else:
                item.skip("qemuargs", "arguments of the ISO installer's VM")
        user = config.pop("ssh_username", None)
        if user and disk_image:
            vm["user"] = user
        elif user:
            item.skip("ssh_username", CONNECTION_WHY)
        if vm:
            options["vm"] = vm
        vm_name = config.pop("vm_name", None)
        if vm_name:
            stem = re.sub(r"\.(qcow2|raw|img)$", "", str(vm_name))
            if re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$", stem):
                options["name"] = stem
            else:
                item.drop("vm_name", "not a file name bakery accepts")
        if config.pop("use_backing_file", None):
            if disk_image:
                options["backing"] = True
            else:
                item.drop("use_backing_file", "an ISO install has no base disk")
        if config.pop("disk_compression", None):
            options["compress"] = True
        for key in (
            "machine_type",
            "cdrom_interface",
            "display",
            "disk_cache",
            "disk_discard",
            "disk_detect_zeroes",
            "vtpm",
            "qemu_binary",
            "qmp_enable",
            "cpu_model",
            "sockets",
            "cores",
            "threads",
        ):
            if key in config:
                config.pop(key)
                item.skip(key, "settings of Packer's builder VM; bakery's builder VM is its own")
        self._leftover(config, item)
        return {"type": "qemu", "options": options, "provisioned": True}

    def _hypervisor_iso(self, config: dict, item: Item, entry: dict) -> dict | None:
        kind = entry["ref"].split(".", 1)[0]
        fmt = {"virtualbox-iso": "vdi", "vmware-iso": "vmdk", "hyperv-iso": "vhdx"}[kind]
        options: dict[str, Any] = {"formats": [fmt]}
        size = config.pop("disk_size", None)
        if size not in (None, ""):
            options["disk_size"] = "%sM" % size if re.match(r"^[0-9]+$", str(size)) else str(size)
        present = [key for key in ISO_KEYS if config.pop(key, None) not in (None, "", [])]
        item.drop(
            ", ".join(present) or "iso_url",
            "an ISO install is not made by bakery: " + ISO_INSTEAD,
        )
        entry["vm"] = {key: config.pop(key) for key in ("memory", "cpus") if config.get(key) is not None}
        for key in ("memory", "cpus"):
            if key in entry["vm"]:
                item.skip(
                    key, "the builder VM's; a Vagrant box made from this disk takes them as its defaults"
                )
        guest = config.pop("guest_additions_mode", None)
        if guest not in (None, "disable"):
            item.drop(
                "guest_additions_mode",
                "bakery installs no guest additions: install them with a provisioner (or leave them out)",
            )
        for key in (
            "guest_additions_path",
            "guest_additions_url",
            "guest_additions_sha256",
            "vboxmanage",
            "vboxmanage_post",
            "vmx_data",
            "vmx_data_post",
            "tools_upload_flavor",
            "generation",
            "enable_secure_boot",
            "switch_name",
            "hard_drive_interface",
            "iso_interface",
            "version",
            "vm_name",
            "format",
            "keep_registered",
            "skip_export",
            "gfx_controller",
            "gfx_vram_size",
        ):
            if config.get(key) not in (None, "", [], {}, False):
                item.drop(key, "a %s setting; bakery makes a %s disk with QEMU tools" % (kind, fmt))
            config.pop(key, None)
        self._leftover(config, item)
        self.needs_base = True
        entry["comment"] = (
            'source "%s" "%s" (an ISO install in %s): a %s disk made by bakery from bake.base'
            % (kind, entry["ref"].split(".", 1)[1], kind.split("-")[0], fmt)
        )
        entry["hypervisor"] = kind
        return {"type": "qemu", "options": options, "provisioned": True}

    def _amazon_ebs(self, config: dict, item: Item, entry: dict) -> dict | None:
        options: dict[str, Any] = {}
        simple = (
            ("region", "region"),
            ("ami_name", "name"),
            ("ami_description", "description"),
            ("instance_type", "instance_type"),
            ("subnet_id", "subnet_id"),
            ("vpc_id", "vpc_id"),
            ("iam_instance_profile", "iam_instance_profile"),
            ("user_data", "user_data"),
            ("ssh_username", "ssh_user"),
            ("ssh_interface", "ssh_interface"),
            ("profile", "profile"),
            ("force_deregister", "force_deregister"),
            ("deprecate_at", "deprecate_at"),
            ("ena_support", "ena_support"),
            ("boot_mode", "boot_mode"),
            ("source_ami", "source_ami"),
            ("custom_endpoint_ec2", "endpoint_url"),
        )
        for key, option in simple:
            value = config.pop(key, None)
            if value in (None, ""):
                continue
            if isinstance(value, DataRef) and key == "source_ami":
                data = self._ami_data(value, item)
                if data is not None:
                    options["source_ami_filter"] = data
                    entry.setdefault("data", []).append((value.kind, value.name))
                continue
            if self.known(item, key, value):
                options[option] = value
        if "ssh_timeout" in config:
            value = seconds(config.pop("ssh_timeout"))
            options["ssh_timeout"] = value
        user_data_file = config.pop("user_data_file", None)
        if user_data_file:
            try:
                with open(self.full(user_data_file), encoding="utf-8") as handle:
                    options["user_data"] = handle.read()
                item.notes.append("user_data_file %s is read into user_data" % user_data_file)
            except OSError:
                item.drop("user_data_file", "%s cannot be read" % self.full(user_data_file))
        source_filter = config.pop("source_ami_filter", None)
        if source_filter:
            block = source_filter[0] if isinstance(source_filter, list) else source_filter
            if self.known(item, "source_ami_filter", block):
                options["source_ami_filter"] = self._filter(block)
        if config.pop("spot_price", None) not in (None, "", "0"):
            options["spot"] = True
        regions = config.pop("ami_regions", None) or []
        kms = config.pop("region_kms_key_ids", None) or {}
        if regions:
            options["regions"] = [
                {"region": region, "kms_key_id": kms[region]} if region in kms else region
                for region in regions
            ]
        permissions = {}
        for key, option in (
            ("ami_users", "user_ids"),
            ("ami_groups", "group_names"),
            ("ami_org_arns", "organization_arns"),
            ("ami_ou_arns", "organizational_unit_arns"),
        ):
            value = config.pop(key, None)
            if value:
                permissions[option] = list(value)
        if permissions:
            options["launch_permissions"] = permissions
        for key, option in (("tags", "tags"), ("run_tags", "run_tags")):
            value = self.known_map(item, key, config.pop(key, None))
            if value:
                options[option] = value
        for key in ("snapshot_tags", "run_volume_tags", "snapshot_users", "snapshot_groups"):
            if config.pop(key, None):
                item.drop(key, "bakery tags and shares the image; its snapshots follow the image")
        if config.pop("encrypt_boot", None):
            options["root_volume_encrypted"] = True
        kms_key = config.pop("kms_key_id", None)
        if kms_key:
            options["root_volume_kms_key_id"] = kms_key
        cidrs = config.pop("temporary_security_group_source_cidrs", None)
        if cidrs:
            options["ssh_cidrs"] = list(cidrs)
        devices = (config.pop("launch_block_device_mappings", None) or []) + []
        for index, device in enumerate(devices):
            device = {k: v for k, v in device.items() if not k.startswith("__")}
            if index == 0:
                if device.get("device_name"):
                    options["root_device_name"] = device["device_name"]
                if device.get("volume_size"):
                    options["root_volume_size"] = int(device["volume_size"])
                if device.get("volume_type"):
                    options["root_volume_type"] = device["volume_type"]
                if device.get("encrypted"):
                    options["root_volume_encrypted"] = True
                if device.get("kms_key_id"):
                    options["root_volume_kms_key_id"] = device["kms_key_id"]
                extra = [
                    k
                    for k in device
                    if k
                    not in (
                        "device_name",
                        "volume_size",
                        "volume_type",
                        "encrypted",
                        "kms_key_id",
                        "delete_on_termination",
                    )
                ]
                if extra:
                    item.drop(
                        "launch_block_device_mappings[0]",
                        "bakery sets the root volume's size, type and "
                        "encryption only (not %s)" % ", ".join(extra),
                    )
            else:
                item.drop(
                    "launch_block_device_mappings[%d]" % index,
                    "bakery's builder has its root volume only; add volumes with a provisioner if the image needs them",
                )
        if config.pop("ami_block_device_mappings", None):
            item.drop("ami_block_device_mappings", "the image has the builder's root volume only")
        metadata = config.pop("metadata_options", None)
        if metadata:
            block = metadata[0] if isinstance(metadata, list) else metadata
            if block.get("http_tokens") == "optional":
                options["imds_v2"] = False
        for key in (
            "access_key",
            "secret_key",
            "token",
            "shared_credentials_file",
            "assume_role",
            "mfa_code",
            "skip_credential_validation",
            "skip_metadata_api_check",
        ):
            if config.pop(key, None) not in (None, "", [], False):
                item.skip(
                    key,
                    "credentials: bakery takes them from the environment, a profile or the ami role's "
                    "ami_access_key/ami_secret_key (the importer writes no secret)",
                )
        for key in (
            "associate_public_ip_address",
            "security_group_id",
            "security_group_ids",
            "security_group_filter",
            "subnet_filter",
            "vpc_filter",
            "availability_zone",
            "skip_region_validation",
            "skip_save_build_region",
            "shutdown_behavior",
            "disable_stop_instance",
            "sriov_support",
            "imds_support",
            "tenancy",
            "placement",
            "enable_t2_unlimited",
            "enable_unlimited_credits",
            "ebs_optimized",
            "aws_polling",
            "session_manager_port",
            "temporary_iam_instance_profile_policy_document",
            "fleet_tags",
            "spot_instance_types",
            "spot_tags",
            "spot_price_auto_product",
            "ssh_keypair_name",
            "decode_authorization_messages",
        ):
            if config.get(key) not in (None, "", [], {}, False):
                if key in CONNECTION:
                    item.skip(key, CONNECTION_WHY)
                else:
                    item.drop(key, "the ami target has no such option")
            config.pop(key, None)
        self._leftover(config, item)
        for required in ("region", "name"):
            if required not in options:
                item.drop(required, "the template gives none (the ami target needs %s)" % required)
                options[required] = "FIXME" if required == "region" else "%s-%s" % (self.name, entry["name"])
        sources = [key for key in ("source_ami", "source_ami_filter") if key in options]
        if not sources:
            item.drop("source_ami", "the template gives no source AMI bakery can use")
        entry["comment"] = 'source "amazon-ebs" "%s": an instance bake' % entry["ref"].split(".", 1)[1]
        return {"type": "ami", "options": options, "provisioned": True}

    def _filter(self, block: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        filters = dict(block.get("filters") or {})
        if filters:
            out["filters"] = {str(k): v for k, v in filters.items()}
        if block.get("owners"):
            out["owners"] = [str(owner) for owner in block["owners"]]
        if block.get("most_recent"):
            out["most_recent"] = True
        return out

    def _ami_data(self, ref: DataRef, item: Item) -> dict | None:
        if ref.kind != "amazon-ami" or ref.attribute != "id":
            self.known(item, "source_ami", ref)
            return None
        for entry in self.template.data:
            if entry["type"] == ref.kind and entry["name"] == ref.name:
                config = {k: v for k, v in entry["config"].items() if not k.startswith("__")}
                item.notes.append(
                    "source_ami = %r becomes source_ami_filter (the data source's filters)" % ref
                )
                return self._filter(config)
        return None

    def _googlecompute(self, config: dict, item: Item, entry: dict) -> dict | None:
        options: dict[str, Any] = {}
        simple = (
            ("project_id", "project"),
            ("zone", "zone"),
            ("image_name", "name"),
            ("image_family", "family"),
            ("image_description", "description"),
            ("source_image", "source_image"),
            ("source_image_family", "source_image_family"),
            ("machine_type", "machine_type"),
            ("disk_type", "disk_type"),
            ("network", "network"),
            ("subnetwork", "subnetwork"),
            ("service_account_email", "service_account_email"),
            ("ssh_username", "ssh_user"),
        )
        for key, option in simple:
            value = config.pop(key, None)
            if value not in (None, "") and self.known(item, key, value):
                options[option] = value
        projects = config.pop("source_image_project_id", None)
        if projects:
            projects = [projects] if isinstance(projects, str) else list(projects)
            options["source_image_project"] = projects[0]
            if len(projects) > 1:
                item.drop("source_image_project_id", "bakery looks in one project (%s)" % projects[0])
        size = config.pop("disk_size", None)
        if size:
            options["disk_size_gb"] = int(size)
        for key, option in (("image_labels", "labels"),):
            value = config.pop(key, None)
            if value:
                options[option] = {str(k): str(v) for k, v in value.items()}
        for key, option in (
            ("image_guest_os_features", "guest_os_features"),
            ("image_storage_locations", "storage_locations"),
            ("image_licenses", "licenses"),
            ("scopes", "scopes"),
        ):
            value = config.pop(key, None)
            if value:
                options[option] = list(value)
        if config.pop("omit_external_ip", None):
            options["external_ip"] = False
        for key in ("account_file", "credentials_file"):
            value = config.pop(key, None)
            if value:
                options["service_account_file"] = self.full(value)
        if config.pop("credentials_json", None):
            item.skip(
                "credentials_json", "a secret: give service_account_file or the environment's credentials"
            )
        for key in (
            "labels",
            "tags",
            "metadata",
            "metadata_files",
            "preemptible",
            "use_internal_ip",
            "on_host_maintenance",
            "accelerator_type",
            "accelerator_count",
            "min_cpu_platform",
            "enable_secure_boot",
            "enable_vtpm",
            "enable_integrity_monitoring",
            "startup_script_file",
            "state_timeout",
            "use_os_login",
            "image_encryption_key",
            "skip_create_image",
            "region",
            "network_project_id",
            "wrap_startup_script",
            "instance_name",
            "disk_name",
            "image_architecture",
        ):
            if config.get(key) not in (None, "", [], {}, False):
                item.drop(key, "the gce target has no such option")
            config.pop(key, None)
        self._leftover(config, item)
        if "name" in options:
            options["unique_name"] = False
            item.notes.append("unique_name: false keeps image_name exactly as Packer names it")
        for required in ("project", "name", "zone"):
            if required not in options:
                item.drop(required, "the template gives none (the gce target needs %s)" % required)
                options[required] = "FIXME" if required != "name" else "%s-%s" % (self.name, entry["name"])
        entry["comment"] = 'source "googlecompute" "%s": an instance bake' % entry["ref"].split(".", 1)[1]
        return {"type": "gce", "options": options, "provisioned": True}

    # ------------------------------------------------------------ provisioners

    def _instance_bake(
        self, kind: str, options: dict, config: dict, item: Item, entry: dict, keys: tuple, server: str
    ) -> dict:
        """A cloud instance bake bakery does not make (a Nova server, a droplet): refused, with a proposal in its
        place: a qemu target ``<source>-disk`` provisioned from bake.base, and the cloud target ``<source>`` with
        the image *options* that uploads its disk (added after the disk, ``entry["then"]``). Returns the disk's
        target."""
        image = entry["name"]
        entry["name"] = self._unique(image + "-disk")
        options = {"source": entry["name"], **options}
        options.setdefault("name", "%s-%s" % (self.name, image))
        entry["then"] = {
            "name": image,
            "type": kind,
            "options": options,
            "provisioned": False,
            "comment": "the image of source %s: the disk of target %s uploaded"
            % (entry["ref"], entry["name"]),
        }
        present = [key for key in keys if config.pop(key, None) not in (None, "", [], {})]
        item.refuse(
            "an instance bake on %s (%s) is not made by bakery"
            % (server, ", ".join(present) or "source image"),
            "bakery provisions a qemu disk made from a Debian root filesystem (bake.base, built with mmdebstrap) "
            "and uploads it: targets %s (the proposal, provisioned) and %s (its upload, with the image options of "
            "the source)" % (entry["name"], image),
        )
        self.needs_base = True
        entry["comment"] = (
            'PROPOSED for source "%s" "%s" (an instance bake in Packer): the disk is made from bake.base'
            % (kind, entry["ref"].split(".", 1)[1])
        )
        self._leftover(config, item)
        return {"type": "qemu", "options": {"formats": ["qcow2"]}, "provisioned": True}

    def _openstack(self, config: dict, item: Item, entry: dict) -> dict | None:
        options: dict[str, Any] = {}
        for key, option in (
            ("image_name", "name"),
            ("image_visibility", "visibility"),
            ("image_min_disk", "min_disk"),
            ("cloud", "cloud"),
            ("region", "region_name"),
            ("cacert", "ca_cert"),
        ):
            value = config.pop(key, None)
            if value not in (None, "") and self.known(item, key, value):
                options[option] = int(value) if option == "min_disk" else value
        for key, option in (("image_members", "members"), ("image_tags", "tags")):
            value = config.pop(key, None)
            if value:
                options[option] = [str(v) for v in value]
        if options.get("members") and "visibility" not in options:
            options["visibility"] = "shared"
            item.notes.append("visibility: shared, as Glance needs it for image_members")
        disk_format = config.pop("image_disk_format", None)
        if disk_format in ("qcow2", "raw"):
            options["disk_format"] = disk_format
        elif disk_format:
            item.drop("image_disk_format", "bakery uploads qcow2 or raw")
        # imported here: openstacksdk (which _openstack imports) is slow to import, and few templates need it
        from ansible_collections.bakery.images.plugins.module_utils._openstack import NAMED_PROPERTIES

        metadata = config.pop("metadata", None) or {}
        properties = {}
        for key, value in metadata.items():
            if key in NAMED_PROPERTIES and key != "hw_qemu_guest_agent":
                options[key] = str(value)
            elif key == "hw_qemu_guest_agent":
                options[key] = str(value).lower() in ("yes", "true", "1")
            else:
                properties[str(key)] = str(value)
        if properties:
            options["properties"] = properties
        if config.pop("insecure", None):
            options["validate_certs"] = False
        endpoint = config.pop("endpoint_type", None)
        if endpoint:
            interface = str(endpoint).lower().replace("url", "")
            if interface in ("public", "internal", "admin"):
                options["interface"] = interface
            else:
                item.drop("endpoint_type", "one of public, internal, admin")
        auth: dict[str, str] = {}
        for key, names in (
            ("identity_endpoint", ("auth_url",)),
            ("username", ("username",)),
            ("user_id", ("user_id",)),
            ("tenant_name", ("project_name",)),
            ("tenant_id", ("project_id",)),
            ("domain_name", ("user_domain_name", "project_domain_name")),
            ("domain_id", ("user_domain_id", "project_domain_id")),
            ("application_credential_id", ("application_credential_id",)),
            ("application_credential_name", ("application_credential_name",)),
        ):
            value = config.pop(key, None)
            if value not in (None, "") and self.known(item, key, value):
                auth.update({name: str(value) for name in names})
        if auth and "cloud" not in options:
            options["auth"] = auth
            if "application_credential_id" in auth or "application_credential_name" in auth:
                options["auth_type"] = "v3applicationcredential"
        elif auth:
            item.drop(", ".join(sorted(auth)), "cloud names the clouds.yaml entry that holds them")
        for key in ("password", "token", "application_credential_secret"):
            if config.pop(key, None):
                item.skip(
                    key,
                    "credentials: in clouds.yaml or OS_PASSWORD/OS_TOKEN (the importer writes no secret)",
                )
        for key in ("cert", "key"):
            if config.pop(key, None):
                item.drop(key, "a client certificate goes into the clouds.yaml entry (cert, key)")
        if config.pop("image_auto_accept_members", None):
            item.drop("image_auto_accept_members", "each member accepts the shared image in its own project")
        return self._instance_bake(
            "openstack", options, config, item, entry, OPENSTACK_INSTANCE_KEYS, "a Nova server"
        )

    def _digitalocean(self, config: dict, item: Item, entry: dict) -> dict | None:
        """Packer's digitalocean builder is an instance bake, as bakery's digitalocean target with base_image makes
        it: a droplet of the base image, provisioned over SSH, snapshotted, the snapshot transferred."""
        options: dict[str, Any] = {}
        for key, option in (
            ("snapshot_name", "name"),
            ("image", "base_image"),
            ("region", "region"),
            ("size", "size"),
            ("ssh_username", "ssh_user"),
            ("api_url", "api_url"),
        ):
            value = config.pop(key, None)
            if value not in (None, "") and self.known(item, key, value):
                options[option] = str(value)
        for key, option in (("snapshot_regions", "regions"), ("tags", "tags")):
            value = config.pop(key, None)
            if value:
                options[option] = [str(v) for v in value]
        if options.get("regions") and options.get("region"):
            options["regions"] = [r for r in options["regions"] if r != options["region"]]
        timeout = seconds(config.pop("snapshot_timeout", None))
        if timeout:
            options["timeout"] = timeout
        if config.pop("api_token", None):
            item.skip("api_token", "credentials: DIGITALOCEAN_TOKEN (the importer writes no secret)")
        if config.pop("droplet_name", None):
            item.drop(
                "droplet_name", "bakery names the droplet bakery-<bake id>-<target> (the janitor finds it so)"
            )
        for key in DIGITALOCEAN_INSTANCE_KEYS:
            if config.get(key) not in (None, "", [], {}, False):
                item.drop(key, "the digitalocean target has no such option")
            config.pop(key, None)
        self._leftover(config, item)
        for required, why in (("base_image", "image"), ("region", "region"), ("size", "size")):
            if required not in options:
                item.drop(why, "the template gives none (the digitalocean target needs %s)" % required)
                options[required] = "FIXME"
        options.setdefault("name", "%s-%s" % (self.name, entry["name"]))
        entry["comment"] = 'source "digitalocean" "%s": an instance bake' % entry["ref"].split(".", 1)[1]
        return {"type": "digitalocean", "options": options, "provisioned": True}

    def _build_targets(self, build: Mapping[str, Any]) -> list[tuple[str, dict]]:
        """(Packer's name TYPE.NAME, mapped target) for each mapped target of *build*."""
        return [(t["ref"], t["mapped"]) for t in build["targets"] if t.get("mapped")]

    def _chosen(self, step: Mapping[str, Any], build: Mapping[str, Any]) -> list[dict]:
        chosen = []
        for ref, target in self._build_targets(build):
            names = {ref, ref.split(".", 1)[1]}
            if build.get("name"):
                names.add("%s.%s" % (build["name"], ref))
            if step["only"] and not names & set(step["only"]):
                continue
            if names & set(step["except"]):
                continue
            chosen.append(target)
        return chosen

    def _filtered_out(self, step: Mapping[str, Any], build: Mapping[str, Any]) -> bool:
        """Whether every source the step would run on is left out by the importer's only/except."""
        if not (self.only or self.except_):
            return False
        refs = [t["ref"] for t in build["targets"]]
        wanted = [
            ref
            for ref in refs
            if (not step["only"] or ref in step["only"] or ref.split(".", 1)[1] in step["only"])
            and ref not in step["except"]
        ]
        return bool(wanted) and not any(self.selected(ref, build) for ref in wanted)

    def _selection(self, entry: dict, chosen: list[dict]) -> None:
        provisioned = [t["name"] for t in self.targets if t.get("provisioned")]
        names = [t["name"] for t in chosen]
        if set(names) == set(provisioned):
            return
        left_out = [name for name in provisioned if name not in names]
        if len(left_out) < len(names):
            entry["except"] = left_out
        else:
            entry["only"] = names

    def _provisioners(self, build: Mapping[str, Any], steps: list, kind: str, into: list) -> None:
        for step in steps:
            label = "%s%s" % (step["type"], " (%s)" % step["name"] if step.get("name") else "")
            item = Item(kind, label, step["where"])
            if self._filtered_out(step, build):
                continue
            self.items.append(item)
            chosen = [t for t in self._chosen(step, build) if t.get("provisioned")]
            if not chosen:
                item.refuse("it runs on no source that became a target", "nothing to do")
                continue
            config = {k: v for k, v in step["config"].items() if not k.startswith("__")}
            common = self._common(config, item)
            handler = {
                "shell": self._shell,
                "file": self._file,
                "ansible": self._ansible,
                "ansible-local": self._ansible,
                "shell-local": self._shell_local,
                "puppet-masterless": self._puppet,
                "breakpoint": self._breakpoint,
            }.get(step["type"])
            if handler is None:
                why = (
                    "bakery builds Linux images"
                    if step["type"].startswith(("powershell", "windows"))
                    else "bakery has no %s provisioner" % step["type"]
                )
                item.refuse(why, "a role or playbook entry that does the same, or shell commands")
                continue
            entries = handler(config, item, step, chosen)
            if not entries:
                continue
            for entry in entries:
                if step.get("name"):
                    entry.setdefault("name", step["name"])
                entry.update(common)
                self._selection(entry, chosen)
                position = len(into)
                key = "provisioners" if kind == "provisioner" else "error_provisioners"
                self.comments[("bake", key, position)] = step["where"] + (
                    "; " + entry.pop("_comment") if entry.get("_comment") else ""
                )
                into.append(entry)
                item.to.append("%s[%d]" % (key, position))

    def _common(self, config: dict, item: Item) -> dict:
        out: dict[str, Any] = {}
        for key, option in (("pause_before", "pause_before"), ("timeout", "timeout")):
            value = config.pop(key, None)
            if value not in (None, "", 0, "0s"):
                out[option] = seconds(value)
        retries = config.pop("max_retries", None)
        if retries not in (None, "", 0, "0"):
            out["retries"] = int(retries)
        if config.pop("override", None):
            item.drop("override", "per-source overrides: give the target its own provisioners instead")
        return out

    def _environment(self, config: dict, item: Item) -> dict[str, str]:
        env: dict[str, str] = {}
        for pair in config.pop("environment_vars", None) or []:
            key, sep, value = str(pair).partition("=")
            if not sep:
                item.drop("environment_vars", "%r is not NAME=value" % pair)
                continue
            env[key] = value
        for key, value in (config.pop("env", None) or {}).items():
            env[str(key)] = "" if value is None else str(value)
        return env

    def _interpreter(
        self, command: str | None, item: Item, option: str = "execute_command"
    ) -> tuple[list | None, bool]:
        """(interpreter, become) from an execute_command; None keeps bakery's default."""
        if not command:
            return None, False
        text = str(command)
        become = bool(re.search(r"\bsudo\b", text))
        match = re.search(
            r"((?:/[\w./-]+/)?(?:ba|da|z|k)?sh|python3?|/[\w./-]+)((?:\s+-[-\w]+)*)\s+['\"]?\{\{\s*\.Path\s*\}\}",
            text,
        )
        if match:
            return [match.group(1)] + match.group(2).split(), become
        if re.search(r"\{\{\s*\.Vars\s*\}\}\s*['\"]?\{\{\s*\.Path\s*\}\}", text):
            return [], become
        item.drop(option, "bakery runs a script as `interpreter path`; %r is not of that form" % text)
        return None, become

    def _shebang(self, path: str) -> list[str]:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                first = handle.readline()
        except OSError:
            return ["/bin/sh"]
        if first.startswith("#!"):
            words = first[2:].split()
            if words and words[0] == "/usr/bin/env" and len(words) > 1:
                return words[1:]
            return words or ["/bin/sh"]
        return ["/bin/sh"]

    def _shell(self, config: dict, item: Item, step: Mapping, chosen: list) -> list[dict]:
        options: dict[str, Any] = {}
        env = self._environment(config, item)
        inline = config.pop("inline", None)
        script = config.pop("script", None)
        scripts = config.pop("scripts", None) or []
        interpreter, become = self._interpreter(config.pop("execute_command", None), item)
        shebang = config.pop("inline_shebang", None)
        for key in ("expect_disconnect",):
            if config.get(key):
                options[key] = True
            config.pop(key, None)
        codes = config.pop("valid_exit_codes", None)
        if codes:
            options["valid_exit_codes"] = [int(code) for code in codes]
        for key in (
            "remote_folder",
            "remote_file",
            "remote_path",
            "skip_clean",
            "start_retry_timeout",
            "use_env_var_file",
            "binary",
        ):
            if key in config:
                config.pop(key)
                item.skip(key, "where and how Packer uploads the script; bakery does that itself")
        if config.pop("pause_after", None):
            item.drop("pause_after", "add a sleep to the commands, or pause_before to the next entry")
        self._leftover(config, item)
        if env:
            options["environment"] = env
        if become:
            options["become"] = True
        entries = []
        if inline is not None:
            inline = [inline] if isinstance(inline, str) else inline
            if self.known(item, "inline", inline):
                self.build_fields(item, "inline", inline)
                shell = dict(options, inline=[str(line) for line in inline])
                if shebang:
                    shell["interpreter"] = str(shebang).split()
                elif interpreter:
                    shell["interpreter"] = interpreter
                self._packer_env(item, "\n".join(shell["inline"]))
                entries.append({"shell": shell})
        paths = ([script] if script else []) + list(scripts)
        groups: list[tuple[list[str], list[str]]] = []
        for path in paths:
            if not self.known(item, "scripts", path):
                continue
            full = self.full(str(path))
            if not os.path.isfile(full):
                item.drop("scripts", "%s does not exist (looked for %s)" % (path, full))
                continue
            with open(full, encoding="utf-8", errors="replace") as handle:
                self._packer_env(item, handle.read())
            words = interpreter if interpreter else self._shebang(full)
            if groups and groups[-1][0] == words:
                groups[-1][1].append(self.rel(str(path)))
            else:
                groups.append((words, [self.rel(str(path))]))
        for words, group in groups:
            shell = dict(options)
            if len(group) == 1:
                shell["script"] = group[0]
            else:
                shell["scripts"] = group
            if words:
                shell["interpreter"] = words
            entries.append(
                {
                    "shell": shell,
                    "_comment": "run with %s, as Packer ran %s"
                    % (" ".join(words), "them" if len(group) > 1 else "it")
                    if words and not interpreter
                    else None,
                }
            )
        for entry in entries:
            if entry.get("_comment") is None:
                entry.pop("_comment", None)
        if not entries:
            item.refuse(
                "its commands or scripts cannot be used as they are (see dropped)",
                "rewrite them: bakery gives roles bakery_target_name and bakery_builder_type",
            )
        return entries

    def _packer_env(self, item: Item, text: str) -> None:
        for name in (
            "PACKER_BUILDER_TYPE",
            "PACKER_BUILD_NAME",
            "PACKER_HTTP_ADDR",
            "PACKER_HTTP_IP",
            "PACKER_HTTP_PORT",
        ):
            if name in text:
                item.drop(
                    name,
                    "Packer sets %s for its commands, bakery does not: use the Ansible variables "
                    "bakery_target_name and bakery_builder_type in roles, or give it in environment" % name,
                )

    def _file(self, config: dict, item: Item, step: Mapping, chosen: list) -> list[dict]:
        direction = config.pop("direction", None) or "upload"
        dest = config.pop("destination", None)
        sources = config.pop("sources", None) or []
        source = config.pop("source", None)
        content = config.pop("content", None)
        if config.pop("generated", None):
            item.drop(
                "generated", "bakery checks every upload exists before the bake: make the file before it"
            )
        self._leftover(config, item)
        if not self.known(item, "destination", dest) or not dest:
            item.refuse("no destination", "give the entry a destination")
            return []
        entries = []
        if direction == "download":
            local = os.path.normpath(str(dest))
            relative = (
                os.path.basename(local.rstrip("/"))
                if os.path.isabs(local) or local.startswith("..")
                else local
            )
            item.notes.append(
                "downloads go to <output_dir>/downloads/<target>/%s (Packer wrote %s)" % (relative, dest)
            )
            return [{"file": {"src": str(source), "dest": relative, "direction": "download"}}]
        if not str(dest).startswith("/"):
            item.refuse(
                "destination %r is relative: Packer puts it in the remote user's working directory, bakery needs an "
                "absolute path in the builder" % dest,
                "write the absolute path Packer's user had (its home directory)",
            )
            return []
        if content is not None:
            if not self.known(item, "content", content):
                return []
            name = "files/%s-%s" % (len(self.files) + 1, os.path.basename(str(dest).rstrip("/")) or "content")
            self.files[name] = str(content)
            item.notes.append("content is written to %s" % name)
            entries.append(
                {"file": {"src": name, "dest": str(dest)}, "_comment": "content written by the importer"}
            )
        for path in ([source] if source else []) + list(sources):
            if not self.known(item, "source", path):
                continue
            full = self.full(str(path))
            if not os.path.exists(full):
                item.drop("source", "%s does not exist (looked for %s)" % (path, full))
                continue
            src = self.rel(str(path)) + ("/" if str(path).endswith("/") else "")
            target_dest = str(dest)
            if len(sources) > 1 or (
                str(dest).endswith("/") and not str(path).endswith("/") and os.path.isfile(full)
            ):
                target_dest = os.path.join(str(dest), os.path.basename(str(path).rstrip("/")))
            entries.append({"file": {"src": src, "dest": target_dest}})
        return entries

    def _playbook_hosts(self, path: str, item: Item, extra: list[str]) -> None:
        try:
            import yaml  # noqa: PLC0415 - only to read the plays' hosts

            with open(path, encoding="utf-8") as handle:
                plays = yaml.safe_load(handle) or []
        except Exception:  # noqa: BLE001 - the plan reads the playbook too, and says what is wrong
            return
        known = (
            {"all", "*", "default", "bakery_builders"}
            | {t["name"] for t in self.targets}
            | {"docker", "qemu", "vagrant", "ami", "gce"}
            | set(extra)
        )
        for play in plays if isinstance(plays, list) else []:
            if not isinstance(play, Mapping) or "hosts" not in play:
                continue
            hosts = play["hosts"]
            patterns = hosts if isinstance(hosts, list) else re.split(r"[,:]", str(hosts))
            bad = [p.strip() for p in patterns if p and p.strip() and p.strip().lstrip("!&") not in known]
            if bad:
                item.drop(
                    "playbook_file",
                    "play %r has hosts %s: bakery's builder is in the groups all, default, bakery_builders, the "
                    "target's name and its type; change hosts to all"
                    % (play.get("name", ""), ", ".join(bad)),
                )

    def _ansible(self, config: dict, item: Item, step: Mapping, chosen: list) -> list[dict]:
        local = step["type"] == "ansible-local"
        files = config.pop("playbook_files", None) or []
        single = config.pop("playbook_file", None)
        paths = ([single] if single else []) + list(files)
        playbook: dict[str, Any] = {}
        variables: dict[str, Any] = {}
        extra: list[str] = []
        args = [str(arg) for arg in config.pop("extra_arguments", None) or []]
        index = 0
        while index < len(args):
            arg = args[index]
            value = args[index + 1] if index + 1 < len(args) else None
            name, sep, inline_value = arg.partition("=")
            if sep and name in ("--extra-vars", "--tags", "--skip-tags"):
                arg, value, index = name, inline_value, index - 1
            if arg in ("-e", "--extra-vars") and value is not None:
                if value.startswith("@"):
                    extra += [arg, "@" + self.rel(value[1:])]
                elif value.strip().startswith("{"):
                    try:
                        variables.update(json.loads(value))
                    except ValueError:
                        extra += [arg, value]
                else:
                    for pair in shlex.split(value):
                        key, _equals, val = pair.partition("=")
                        variables[key] = val
                index += 2
            elif arg in ("-t", "--tags") and value is not None:
                playbook["tags"] = [t.strip() for t in value.split(",") if t.strip()]
                index += 2
            elif arg == "--skip-tags" and value is not None:
                playbook["skip_tags"] = [t.strip() for t in value.split(",") if t.strip()]
                index += 2
            else:
                extra.append(arg)
                index += 1
        if extra:
            playbook["extra_arguments"] = extra
        groups = list(config.pop("groups", None) or []) + list(config.pop("inventory_groups", None) or [])
        if isinstance(config.get("inventory_groups"), str):
            groups += str(config.pop("inventory_groups")).split(",")
        ansible_env = config.pop("ansible_env_vars", None)
        if ansible_env:
            item.drop(
                "ansible_env_vars",
                "set these in an ansible.cfg beside the playbook (bakery runs it from its directory)",
            )
        for key in (
            "galaxy_file",
            "galaxy_command",
            "galaxy_force_install",
            "galaxy_roles_path",
            "galaxy_collections_path",
        ):
            if config.pop(key, None):
                item.drop(
                    key,
                    "no Galaxy during a bake: install the roles and collections before it (roles/ and "
                    "collections/ beside the playbook)",
                )
        for key in (
            "roles_path",
            "role_paths",
            "collections_path",
            "playbook_dir",
            "playbook_paths",
            "group_vars",
            "host_vars",
        ):
            if config.pop(key, None):
                item.drop(
                    key,
                    "bakery runs the playbook from its own directory: put roles/, group_vars/ and "
                    "host_vars/ beside it",
                )
        for key in (
            "user",
            "use_proxy",
            "use_sftp",
            "sftp_command",
            "ansible_ssh_extra_args",
            "local_port",
            "host_alias",
            "keep_inventory_file",
            "inventory_directory",
            "inventory_file",
            "inventory_file_template",
            "skip_version_check",
            "command",
            "staging_directory",
            "clean_staging_directory",
            "empty_groups",
            "ssh_host_key_file",
            "ssh_authorized_key_file",
            "limit",
            "max_retries",
        ):
            if key in config:
                config.pop(key)
                item.skip(
                    key,
                    "how Packer runs ansible and reaches the builder; bakery uses the builder's own "
                    "connection, with no proxy and no generated inventory",
                )
        self._leftover(config, item)
        if not paths:
            item.refuse("no playbook_file", "a role or playbook entry")
            return []
        entries = []
        for path in paths:
            full = self.full(str(path))
            if not os.path.isfile(full):
                item.drop("playbook_file", "%s does not exist (looked for %s)" % (path, full))
                continue
            if local:
                self._playbook_hosts_local(full, item)
            else:
                self._playbook_hosts(full, item, groups)
            entry: dict[str, Any] = {"playbook": dict(playbook, file=self.rel(str(path)))}
            if len(entry["playbook"]) == 1:
                entry["playbook"] = entry["playbook"]["file"]
            if variables:
                entry["vars"] = dict(variables)
            if local:
                entry["_comment"] = (
                    "ansible-local ran this playbook inside the builder; bakery runs it from the controller against "
                    "the builder (no Ansible needed in the image)"
                )
            entries.append(entry)
        if local:
            item.notes.append(
                "ansible-local: the playbook runs from the controller, over the builder's connection"
            )
        if not entries:
            item.refuse("its playbook is missing", "fix playbook_file")
        return entries

    def _playbook_hosts_local(self, path: str, item: Item) -> None:
        """ansible-local's inventory is 127.0.0.1: plays for localhost would not find the builder in bakery."""
        try:
            import yaml  # noqa: PLC0415

            with open(path, encoding="utf-8") as handle:
                plays = yaml.safe_load(handle) or []
        except Exception:  # noqa: BLE001
            return
        for play in plays if isinstance(plays, list) else []:
            if isinstance(play, Mapping) and str(play.get("hosts", "")).strip() in ("localhost", "127.0.0.1"):
                item.drop(
                    "playbook_file",
                    "a play has hosts %s (ansible-local's inventory); bakery's builder is "
                    "not localhost: change hosts to all" % play["hosts"],
                )
            if isinstance(play, Mapping) and play.get("connection") == "local":
                item.drop(
                    "playbook_file",
                    "a play sets connection: local; remove it, bakery connects to the builder",
                )

    def _shell_local(self, config: dict, item: Item, step: Mapping, chosen: list) -> list[dict]:
        options: dict[str, Any] = {}
        env = self._environment(config, item)
        if env:
            options["environment"] = env
        command = config.pop("command", None)
        inline = config.pop("inline", None)
        if command:
            inline = [command]
        script = config.pop("script", None)
        scripts = config.pop("scripts", None) or []
        execute = config.pop("execute_command", None)
        shebang = config.pop("inline_shebang", None)
        codes = config.pop("valid_exit_codes", None)
        if codes:
            options["valid_exit_codes"] = [int(code) for code in codes]
        if config.pop("only_on", None):
            item.drop("only_on", "bakery's controller runs Linux")
        for key in ("use_linux_pathing", "tempfile_extension"):
            if key in config:
                config.pop(key)
                item.skip(key, "for Windows hosts")
        if execute:
            text = " ".join(execute) if isinstance(execute, list) else str(execute)
            if not re.match(
                r"^(/bin/sh|/bin/bash|sh|bash)\s+-c\s+\{\{\s*\.Vars\s*\}\}\s+\{\{\s*\.Script\s*\}\}$", text
            ):
                item.drop(
                    "execute_command", "bakery runs the commands with its interpreter and the script's path"
                )
        self._leftover(config, item)
        entries = []
        if inline and self.known(item, "inline", inline):
            entry = dict(
                options, inline=[str(line) for line in ([inline] if isinstance(inline, str) else inline)]
            )
            if shebang:
                entry["interpreter"] = str(shebang).split()
            self.build_fields(item, "inline", entry["inline"])
            entries.append({"local": entry})
        for path in ([script] if script else []) + list(scripts):
            full = self.full(str(path))
            if not os.path.isfile(full):
                item.drop("script", "%s does not exist (looked for %s)" % (path, full))
                continue
            entries.append(
                {"local": dict(options, script=self.rel(str(path)), interpreter=self._shebang(full))}
            )
        if not entries:
            item.refuse(
                "its commands or scripts cannot be used as they are (see dropped)",
                "rewrite them: local commands get BAKERY_TARGET_NAME, BAKERY_TARGET_TYPE and BAKERY_BUILDER",
            )
        for entry in entries:
            entry["_comment"] = (
                "shell-local: on the controller, once per target (BAKERY_TARGET_NAME says which)"
            )
        return entries

    def _puppet(self, config: dict, item: Item, step: Mapping, chosen: list) -> list[dict]:
        manifest = config.pop("manifest_file", None)
        if not manifest:
            item.refuse("no manifest_file", "give it a manifest")
            return []
        puppet: dict[str, Any] = {"manifest": self.rel(str(manifest))}
        modules = config.pop("module_paths", None)
        if modules:
            puppet["module_paths"] = [self.rel(str(path)) for path in modules]
        hiera = config.pop("hiera_config_path", None)
        if hiera:
            puppet["hiera_config"] = self.rel(str(hiera))
        facts = config.pop("facter", None)
        if facts:
            puppet["facts"] = {str(k): str(v) for k, v in facts.items()}
        extra = config.pop("extra_arguments", None)
        if extra:
            puppet["extra_arguments"] = [str(arg) for arg in extra]
        if config.pop("ignore_exit_codes", None):
            puppet["valid_exit_codes"] = [0, 2, 4, 6]
        if config.pop("manifest_dir", None):
            item.drop("manifest_dir", "upload it with a file entry before, or make its manifests a module")
        for key in (
            "execute_command",
            "prevent_sudo",
            "staging_directory",
            "working_directory",
            "guest_os_type",
            "puppet_bin_dir",
            "clean_staging_directory",
        ):
            if key in config:
                config.pop(key)
                item.skip(key, "how Packer runs puppet; bakery runs puppet apply as root in the builder")
        self._leftover(config, item)
        return [{"puppet": puppet}]

    def _breakpoint(self, config: dict, item: Item, step: Mapping, chosen: list) -> list[dict]:
        if config.get("disable"):
            item.refuse("a disabled breakpoint does nothing", "nothing to do")
        else:
            item.refuse(
                "bakery does not stop a bake halfway for you to look at the builder",
                "on_error: keep (-e bakery_on_error=keep) keeps a failed builder and prints how to open a shell in "
                "it; ansible-playbook --step asks before each task",
            )
        return []

    # ------------------------------------------------------------ post-processors

    def _post_processors(self, build: Mapping[str, Any]) -> None:
        for chain in build["post_processors"]:
            # the artifact each step gets, per target of the build: ("docker", target), ("disk", ...), ...
            artifacts = {ref: (t["type"], t) for ref, t in self._build_targets(build)}
            for step in chain:
                label = step["type"] + (" (%s)" % step["name"] if step.get("name") else "")
                item = Item("post-processor", label, step["where"])
                if self._filtered_out(step, build):
                    continue
                self.items.append(item)
                config = {k: v for k, v in step["config"].items() if not k.startswith("__")}
                keep = config.pop("keep_input_artifact", None)
                if keep is not None:
                    item.skip("keep_input_artifact", "bakery keeps every target's artifact")
                chosen = [t["ref"] for t in self._chosen(step, build) if t["ref"] in artifacts]
                if not chosen:
                    item.refuse("it runs on no source that became a target", "nothing to do")
                    continue
                handler = getattr(self, "_pp_" + step["type"].replace("-", "_"), None)
                if handler is None:
                    why = (
                        "artifice: bakery's artifacts are what its targets make"
                        if step["type"] == "artifice"
                        else "bakery has no %s post-processor" % step["type"]
                    )
                    item.refuse(why, "a play after the bake that reads <output_dir>/bake-manifest.json")
                    continue
                before = len(item.to)
                for ref in chosen:
                    kind, target = artifacts[ref]
                    result = handler(dict(config), item, kind, target)
                    if result is not None:
                        artifacts[ref] = result
                if item.not_mapped and len(item.to) > before:
                    # some artifacts were taken: what was refused for the others is a dropped part
                    item.drop("(some sources)", "%s; instead: %s" % (item.not_mapped, item.instead))
                    item.not_mapped = item.instead = None
                if (
                    len(item.to) == before
                    and not item.not_mapped
                    and step["type"] not in ("manifest", "checksum")
                ):
                    item.refuse("it works on artifacts this chain does not give it", "see the other items")

    def _pp_docker_tag(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if kind != "docker":
            item.refuse("docker-tag tags Docker images", "nothing to do")
            return None
        options = target["options"]
        repository = config.pop("repository", None)
        tags = config.pop("tags", None) or config.pop("tag", None) or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        config.pop("force", None)
        if not self.known(item, "repository", repository) or not self.known(item, "tags", tags):
            return (kind, target)
        if target.get("tagged") and options["repository"] != repository:
            item.drop(
                "repository",
                "a docker target has one repository (%s); tag the image again after the bake"
                % options["repository"],
            )
        else:
            options["repository"] = repository
            options["tags"] = (
                sorted(set(options.get("tags", [])) | set(tags), key=(options.get("tags", []) + tags).index)
                if tags
                else ["latest"]
            )
            target["tagged"] = True
            self.comments[("target", target["name"], "repository")] = "from post-processor docker-tag"
        item.to.append("targets: %s (docker) repository, tags" % target["name"])
        self._leftover(config, item)
        return (kind, target)

    def _pp_docker_push(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if kind != "docker":
            item.refuse("docker-push pushes Docker images", "nothing to do")
            return None
        options = target["options"]
        options["push"] = True
        if config.pop("login", None) or config.get("login_username"):
            username = config.pop("login_username", None)
            config.pop("login_password", None)
            registry = {"password": "{{ lookup('env', 'BAKERY_REGISTRY_PASSWORD') }}"}
            if username:
                registry = {"username": username, **registry}
            options["registry"] = registry
            item.notes.append(
                "the registry password is read from BAKERY_REGISTRY_PASSWORD when the bake runs; the "
                "importer writes no secret"
            )
        server = config.pop("login_server", None)
        if server and not str(options["repository"]).startswith(
            str(server).rsplit("://", maxsplit=1)[-1].rstrip("/")
        ):
            item.drop(
                "login_server",
                "bakery pushes to the registry the repository names (%s)" % options["repository"],
            )
        if config.pop("ecr_login", None):
            item.drop("ecr_login", "log in to ECR before the bake (the engine's credentials are used)")
        for key in ("aws_access_key", "aws_secret_key", "aws_token", "aws_profile"):
            config.pop(key, None)
        self._leftover(config, item)
        item.to.append("targets: %s (docker) push" % target["name"])
        return (kind, target)

    def _pp_docker_import(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if kind != "docker":
            item.refuse("docker-import imports a container export", "nothing to do")
            return None
        repository = config.pop("repository", None)
        tag = config.pop("tag", None)
        if repository and self.known(item, "repository", repository):
            target["options"]["repository"] = repository
            target["options"]["tags"] = [tag] if tag else ["latest"]
            target["tagged"] = True
        for key in ("changes",):
            value = config.pop(key, None)
            if value:
                changes, labels = self._changes(value, item)
                target["options"].setdefault("changes", {}).update(changes)
                if labels:
                    target["options"].setdefault("labels", {}).update(labels)
        config.pop("platform", None)
        self._leftover(config, item)
        item.notes.append("bakery commits the container into the image: no export and import")
        item.to.append("targets: %s (docker) repository, tags" % target["name"])
        return (kind, target)

    def _pp_docker_save(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        item.refuse(
            "bakery writes no image tarball",
            "community.docker.docker_image_export after the bake (the image is %s)"
            % target["options"].get("repository"),
        )
        return (kind, target)

    def _disk_source(self, item: Item, kind: str, target: dict, what: str) -> bool:
        if kind != "qemu":
            item.refuse(
                "%s needs a disk; the artifact here is a %s target's" % (what, kind),
                "make the box or image from a qemu target",
            )
            return False
        return True

    def _add_target(self, target: dict, item: Item) -> None:
        self.targets.append(target)
        item.to.append("targets: %s (%s)" % (target["name"], target["type"]))

    def _unique(self, name: str) -> str:
        # the sources' names too: a source mapped later keeps its own
        taken = {t["name"] for t in self.targets} | {
            t["target_name"]
            for build in self.template.builds
            for t in build["targets"]
            if t.get("target_name")
        }
        base, number, out = clean_name(name), 2, clean_name(name)
        while out in taken:
            out = clean_name("%s-%d" % (base[:36], number))
            number += 1
        return out

    def _pp_vagrant(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if not self._disk_source(item, kind, target, "vagrant"):
            return None
        hypervisor = target.get("hypervisor")
        if hypervisor in ("vmware-iso", "hyperv-iso"):
            item.refuse(
                "bakery makes libvirt and virtualbox boxes, not %s ones" % hypervisor.split("-")[0],
                "a vagrant target with provider libvirt or virtualbox from the disk",
            )
            return None
        options: dict[str, Any] = {
            "source": target["name"],
            "provider": "virtualbox" if hypervisor == "virtualbox-iso" else "libvirt",
            "box_name": "%s/%s" % (self.name, target["name"]),
        }
        if target["options"].get("base_image"):
            item.notes.append(
                "the base image must already follow Vagrant's conventions (user vagrant, its key)"
            )
        else:
            target["options"]["vagrant"] = True
            self.comments[("target", target["name"], "vagrant")] = (
                "for the box: user vagrant, passwordless sudo and Vagrant's insecure key (the installer made them "
                "in Packer)"
            )
        vm = target.get("vm") or {}
        for key in ("memory", "cpus"):
            if key in vm:
                options[key] = int(vm[key])
        level = config.pop("compression_level", None)
        if level is not None:
            options["compression"] = int(level)
        output = config.pop("output", None)
        if output and "{{" not in str(output):
            options["output"] = str(output)
        elif output:
            item.skip("output", "bakery names the box file <box name>-<version>-<provider>.box")
        template = config.pop("vagrantfile_template", None)
        if template:
            try:
                with open(self.full(str(template)), encoding="utf-8") as handle:
                    options["vagrantfile"] = handle.read()
            except OSError:
                item.drop("vagrantfile_template", "%s cannot be read" % template)
        if config.pop("include", None):
            item.drop("include", "bakery's box holds the disk, metadata.json and the Vagrantfile")
        config.pop("provider_override", None)
        config.pop("vagrantfile_template_generated", None)
        self._leftover(config, item)
        box = {
            "name": self._unique(target["name"] + "-box"),
            "type": "vagrant",
            "options": options,
            "provisioned": False,
            "comment": "post-processor vagrant: a box made from the disk of target %s" % target["name"],
        }
        self._add_target(box, item)
        return ("vagrant", box)

    def _pp_vagrant_cloud(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if kind != "vagrant":
            item.refuse("vagrant-cloud uploads a box", "a vagrant post-processor before it")
            return None
        options = target["options"]
        tag = config.pop("box_tag", None)
        if tag and self.known(item, "box_tag", tag):
            options["box_name"] = tag
        version = config.pop("version", None)
        if version and self.known(item, "version", version):
            options["version"] = str(version)
        description = config.pop("version_description", None)
        if description:
            options["description"] = str(description)
        config.pop("access_token", None)
        item.drop(
            "upload",
            "bakery writes the box and its catalog (base_url) but uploads nothing to HCP Vagrant Box Registry: "
            "upload the box file after the bake (vagrant cloud publish)",
        )
        for key in (
            "no_release",
            "vagrant_cloud_url",
            "insecure_skip_tls_verify",
            "keep_input_artifact",
            "box_download_url",
            "no_direct_upload",
            "architecture",
            "default_architecture",
        ):
            config.pop(key, None)
        self._leftover(config, item)
        item.to.append("targets: %s (vagrant) box_name, version" % target["name"])
        return (kind, target)

    def _pp_amazon_import(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if not self._disk_source(item, kind, target, "amazon-import"):
            return None
        options: dict[str, Any] = {"source": target["name"]}
        for key, option in (
            ("region", "region"),
            ("ami_name", "name"),
            ("ami_description", "description"),
            ("boot_mode", "boot_mode"),
        ):
            value = config.pop(key, None)
            if value and self.known(item, key, value):
                options[option] = value
        tags = config.pop("tags", None)
        if tags:
            options["tags"] = {str(k): str(v) for k, v in tags.items()}
        permissions = {}
        for key, option in (
            ("ami_users", "user_ids"),
            ("ami_groups", "group_names"),
            ("ami_org_arns", "organization_arns"),
            ("ami_ou_arns", "organizational_unit_arns"),
        ):
            value = config.pop(key, None)
            if value:
                permissions[option] = list(value)
        if permissions:
            options["launch_permissions"] = permissions
        for key in (
            "s3_bucket_name",
            "s3_key_name",
            "role_name",
            "skip_clean",
            "format",
            "import_type",
            "s3_encryption",
            "s3_encryption_key",
            "license_type",
            "platform",
        ):
            if key in config:
                config.pop(key)
                item.skip(
                    key, "bakery uploads the disk with the EBS direct APIs: no S3 bucket, no vmimport role"
                )
        for key in ("access_key", "secret_key", "token", "profile"):
            if config.pop(key, None):
                item.skip(
                    key, "credentials: from the environment or a profile (the importer writes no secret)"
                )
        if config.pop("ami_encrypt", None):
            item.drop("ami_encrypt", "an uploaded AMI is encrypted with the account's EBS default")
        self._leftover(config, item)
        if "name" not in options:
            options["name"] = "%s-%s" % (self.name, target["name"])
        if "region" not in options:
            options["region"] = "FIXME"
            item.drop("region", "the template gives none")
        ami = {
            "name": self._unique(target["name"] + "-ami"),
            "type": "ami",
            "options": options,
            "provisioned": False,
            "comment": "post-processor amazon-import: the disk of target %s uploaded as an AMI"
            % target["name"],
        }
        self._add_target(ami, item)
        return ("ami", ami)

    def _pp_googlecompute_import(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if not self._disk_source(item, kind, target, "googlecompute-import"):
            return None
        options: dict[str, Any] = {"source": target["name"]}
        for key, option in (
            ("project_id", "project"),
            ("bucket", "bucket"),
            ("image_name", "name"),
            ("image_family", "family"),
            ("image_description", "description"),
            ("gcs_object_name", "object_name"),
        ):
            value = config.pop(key, None)
            if value and self.known(item, key, value):
                options[option] = value
        labels = config.pop("image_labels", None)
        if labels:
            options["labels"] = {str(k): str(v) for k, v in labels.items()}
        for key, option in (
            ("image_guest_os_features", "guest_os_features"),
            ("image_storage_locations", "storage_locations"),
        ):
            value = config.pop(key, None)
            if value:
                options[option] = list(value)
        if config.pop("skip_clean", None):
            options["keep_object"] = True
        account = config.pop("account_file", None) or config.pop("credentials_file", None)
        if account:
            options["service_account_file"] = self.full(str(account))
        self._leftover(config, item)
        if "name" in options:
            options["unique_name"] = False
        gce = {
            "name": self._unique(target["name"] + "-gce"),
            "type": "gce",
            "options": options,
            "provisioned": False,
            "comment": "post-processor googlecompute-import: the disk of target %s imported" % target["name"],
        }
        self._add_target(gce, item)
        return ("gce", gce)

    def _pp_digitalocean_import(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        if not self._disk_source(item, kind, target, "digitalocean-import"):
            return None
        options: dict[str, Any] = {"source": target["name"]}
        for key, option in (
            ("image_name", "name"),
            ("image_description", "description"),
            ("image_distribution", "distribution"),
            ("spaces_region", "spaces_region"),
            ("space_name", "spaces_bucket"),
        ):
            value = config.pop(key, None)
            if value not in (None, "") and self.known(item, key, value):
                options[option] = value
        # imported here: pydo (which _digitalocean imports) takes a quarter second, and few templates need it
        from ansible_collections.bakery.images.plugins.module_utils._digitalocean import DISTRIBUTIONS

        if options.get("distribution") not in (None, *DISTRIBUTIONS):
            item.drop(
                "image_distribution", "not one of DigitalOcean's distributions (%s)" % options["distribution"]
            )
            options["distribution"] = "Unknown"
        regions = [str(r) for r in config.pop("image_regions", None) or []]
        if regions:
            options["region"] = regions[0]
            if regions[1:]:
                options["regions"] = regions[1:]
        else:
            options["region"] = "FIXME"
            item.drop("image_regions", "the template gives none")
        tags = config.pop("image_tags", None)
        if tags:
            options["tags"] = [str(t) for t in tags]
        timeout = seconds(config.pop("timeout", None))
        if timeout:
            options["timeout"] = timeout
        disk = (target.get("options") or {}).get("formats") or ["qcow2"]
        options["disk_format"] = "raw" if disk[0] == "raw" else "qcow2"
        if config.pop("space_object_name", None):
            item.skip(
                "space_object_name", "bakery names the upload bakery/<bake id>/... and deletes it after"
            )
        if "skip_clean" in config:
            config.pop("skip_clean")
            item.skip("skip_clean", "bakery deletes the upload once the image is imported")
        for key in ("api_token", "spaces_key", "spaces_secret"):
            if config.pop(key, None):
                item.skip(
                    key,
                    "credentials: DIGITALOCEAN_TOKEN, SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY (the "
                    "importer writes no secret)",
                )
        self._leftover(config, item)
        if "name" not in options:
            options["name"] = "%s-%s" % (self.name, target["name"])
        image = {
            "name": self._unique(target["name"] + "-digitalocean"),
            "type": "digitalocean",
            "options": options,
            "provisioned": False,
            "comment": "post-processor digitalocean-import: the disk of target %s imported as a custom image"
            % target["name"],
        }
        self._add_target(image, item)
        return ("digitalocean", image)

    def _pp_manifest(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        output = config.pop("output", None)
        if output not in (None, "packer-manifest.json"):
            item.drop("output", "bakery writes <output_dir>/bake-manifest.json")
        for key in ("strip_path", "strip_time"):
            config.pop(key, None)
        if config.pop("custom_data", None):
            item.drop("custom_data", "the manifest holds what bakery records (add a label or tags for more)")
        self._leftover(config, item)
        if not item.to:
            item.to.append("bake-manifest.json (always written)")
        return (kind, target)

    def _pp_checksum(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        types = config.pop("checksum_types", None) or ["md5"]
        other = [t for t in types if t != "sha256"]
        if other and not any(d["option"] == "checksum_types" for d in item.dropped):
            item.drop("checksum_types", "bakery records sha256 only (not %s)" % ", ".join(other))
        if config.pop("output", None) and not any(d["option"] == "output" for d in item.dropped):
            item.drop("output", "the sha256 is in bake-manifest.json and the <file>.bakery.json sidecar")
        self._leftover(config, item)
        if not item.to:
            item.to.append("sha256 in bake-manifest.json (always)")
        return (kind, target)

    def _pp_compress(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        level = config.pop("compression_level", None)
        config.pop("output", None)
        config.pop("format", None)
        if kind == "qemu" and "qcow2" in target["options"].get("formats", []):
            target["options"]["compress"] = True
            item.to.append("targets: %s (qemu) compress" % target["name"])
            item.notes.append("a compressed qcow2 instead of an archive of the disk")
        elif kind == "vagrant":
            if level is not None:
                target["options"]["compression"] = int(level)
            item.to.append("targets: %s (vagrant) compression" % target["name"])
        else:
            item.refuse(
                "bakery compresses qcow2 disks and boxes only", "compress the artifact after the bake"
            )
            return None
        self._leftover(config, item)
        return (kind, target)

    def _pp_shell_local(self, config: dict, item: Item, kind: str, target: dict) -> tuple | None:
        item.refuse(
            "it runs after the artifact exists; bakery's local entries run before capture",
            "a play after the bake that reads <output_dir>/bake-manifest.json",
        )
        return None

    # ------------------------------------------------------------ the result

    def _result(self) -> dict[str, Any]:
        bake: dict[str, Any] = {"name": self.name, "output_dir": "output"}
        self.comments[("bake", "name")] = (
            "imported from %s by bakery.images.packer_import"
            % os.path.basename(self.template.path.rstrip("/"))
        )
        if self.needs_base:
            bake["base"] = dict(PROPOSED_BASE, packages=list(PROPOSED_BASE["packages"]))
            self.comments[("bake", "base")] = (
                "PROPOSED: the root filesystem the targets without a base image start from (bakery builds it "
                "with mmdebstrap) instead of Packer's ISO install or base image"
            )
            self.warnings.append("bake.base is a proposal: a Debian bookworm root filesystem with python3")
        for entry in self.provisioners + self.error_provisioners:
            for kind in ("shell", "local", "file", "puppet"):
                if isinstance(entry.get(kind), dict):
                    entry[kind] = _ordered(entry[kind], OPTION_ORDER)
            if "name" in entry:
                name = entry.pop("name")
                entry.update({"name": name, **{key: entry.pop(key) for key in list(entry)}})
            for key in ("only", "except", "pause_before", "retries", "timeout", "no_log"):
                if key in entry:
                    entry[key] = entry.pop(key)
        if self.provisioners:
            bake["provisioners"] = self.provisioners
        if self.error_provisioners:
            bake["error_provisioners"] = self.error_provisioners
        targets = []
        for position, target in enumerate(self.targets):
            entry = {"name": target["name"], target["type"]: _ordered(target["options"], OPTION_ORDER)}
            if target.get("comment"):
                self.comments[("bake", "targets", position)] = target["comment"]
            for key, comment in list(self.comments.items()):
                if key[:2] == ("target", target["name"]):
                    self.comments[("bake", "targets", position, target["type"]) + key[2:]] = comment
                    del self.comments[key]
            targets.append(entry)
        bake["targets"] = targets
        definition = {"bake": bake}
        secrets = self.template.sensitive_values()
        definition = _protect(definition, secrets, self)
        for key in ("provisioners", "error_provisioners"):
            for entry in definition["bake"].get(key, []):
                if "lookup('env', 'PKR_VAR_" in json.dumps(entry):
                    entry["no_log"] = True
        items = [item.as_dict() for item in self.items]
        counts = {
            status: sum(1 for item in items if item["status"] == status)
            for status in (MAPPED, PARTLY, NOT_MAPPED)
        }
        report = {
            "template": self.template.path,
            "format": self.template.kind,
            "bake": self.name,
            "fully_mapped": counts[PARTLY] == 0
            and counts[NOT_MAPPED] == 0
            and not self.needs_base_proposal(),
            "counts": counts,
            "items": items,
            "unknown": self.unknown,
            "variables": {
                name: ("(sensitive)" if variable.get("sensitive") else variable.get("value"))
                for name, variable in sorted(self.template.variables.items())
                if not name.startswith("local.")
            },
            "warnings": self.warnings,
        }
        return {"definition": definition, "comments": self.comments, "files": self.files, "report": report}

    def needs_base_proposal(self) -> bool:
        return self.needs_base and any(
            t["type"] == "qemu" and not t["options"].get("base_image") for t in self.targets
        )


# how the definition lists a target's or an entry's options: the identifying ones first
OPTION_ORDER = (
    "source",
    "repository",
    "tags",
    "push",
    "registry",
    "base_image",
    "base_image_checksum",
    "provision",
    "region",
    "project",
    "zone",
    "name",
    "unique_name",
    "family",
    "description",
    "provider",
    "box_name",
    "version",
    "inline",
    "script",
    "scripts",
    "interpreter",
    "environment",
    "become",
    "user",
    "expect_disconnect",
    "valid_exit_codes",
    "src",
    "dest",
    "direction",
    "manifest",
    "module_paths",
    "hiera_config",
    "facts",
)


def _ordered(options: Mapping[str, Any], order: tuple) -> dict[str, Any]:
    first = [key for key in order if key in options]
    return {key: options[key] for key in first + [key for key in options if key not in first]}


_JINJA = re.compile(r"\{\{|\{%|\{#")


def _protect(value: Any, secrets: Mapping[str, str], mapper: Mapper, path: tuple = ()) -> Any:
    """Every text as Ansible will read it: Jinja markers kept literal ({% raw %}), and a sensitive variable's
    value replaced by a lookup of the environment variable Packer would read it from (PKR_VAR_<name>)."""
    if isinstance(value, Mapping):
        return {key: _protect(item, secrets, mapper, path + (key,)) for key, item in value.items()}
    if isinstance(value, list):
        return [_protect(item, secrets, mapper, path + (index,)) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value == "{{ lookup('env', 'BAKERY_REGISTRY_PASSWORD') }}":
        return value
    pieces: list[tuple[str, bool]] = [(value, False)]
    for name, secret in sorted(secrets.items(), key=lambda pair: -len(pair[1])):
        env = "PKR_VAR_" + name.replace("local.", "")
        out = []
        for text, done in pieces:
            if done or secret not in text:
                out.append((text, done))
                continue
            parts = text.split(secret)
            for index, part in enumerate(parts):
                if index:
                    out.append(("{{ lookup('env', '%s') }}" % env, True))
                    mapper.warnings.append(
                        "the value of sensitive variable %s is not written: the bake reads it from %s (at %s)"
                        % (name, env, ".".join(str(p) for p in path))
                    )
                if part:
                    out.append((part, False))
        pieces = out
    text = ""
    for piece, done in pieces:
        text += piece if done or not _JINJA.search(piece) else "{% raw %}" + piece + "{% endraw %}"
    return text


def map_template(
    template: Template,
    name: str | None = None,
    only: list[str] | None = None,
    except_: list[str] | None = None,
    output_dir: str = ".",
) -> dict[str, Any]:
    """The bake definition of *template* (a dict), comments by path, files to write and the report."""
    return Mapper(template, name, list(only or []), list(except_ or []), os.path.abspath(output_dir)).run()


def default_output_dir(path: str, name: str) -> str:
    """A new directory beside the template: ``<template's directory>/<bake name>-bakery``."""
    path = os.path.abspath(path).rstrip("/")
    return os.path.join(os.path.dirname(path), "%s-bakery" % name)


def import_template(
    path: str,
    var_files: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
    only: list[str] | None = None,
    except_: list[str] | None = None,
    output_dir: str | None = None,
    name: str | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    now: Any = None,
    new_uuid: Any = None,
    check_mode: bool = False,
) -> dict[str, Any]:
    """Read, evaluate and map the template, then write the definition, its files and the report into
    *output_dir* (unless *check_mode*). Everything is computed before anything is written."""
    from ansible_collections.bakery.images.plugins.module_utils import _packer, _packer_yaml  # noqa: PLC0415

    template = _packer.load(path, var_files, values, env, cwd, now, new_uuid)
    if name is None:
        probe = Mapper(template, None, [], [], ".")
        bake_name = probe.name
    else:
        bake_name = clean_name(name)
    directory = os.path.abspath(output_dir or default_output_dir(template.path, bake_name))
    mapped = map_template(template, bake_name, only, except_, directory)
    report = mapped["report"]
    header = [
        "Bake definition imported from the Packer template",
        template.path,
        "by bakery.images.packer_import: %d mapped, %d partly mapped, %d not mapped (see %s.report.md)."
        % (
            report["counts"]["mapped"],
            report["counts"]["partly mapped"],
            report["counts"]["not mapped"],
            bake_name,
        ),
        "Bake it: ansible-playbook bakery.images.bake -e @%s.yml (--check first)" % bake_name,
    ]
    files = {"%s.yml" % bake_name: _packer_yaml.to_yaml(mapped["definition"], mapped["comments"], header)}
    files.update(mapped["files"])
    files["%s.report.md" % bake_name] = _packer_yaml.report_markdown(report)
    files["%s.report.json" % bake_name] = json.dumps(report, indent=2, sort_keys=False, default=repr) + "\n"
    changed = _packer_yaml.plan_writes(directory, files)
    definition_path = os.path.join(directory, "%s.yml" % bake_name)
    before = _packer_yaml.read_text(definition_path)
    diff = {
        "before": before or "",
        "after": files["%s.yml" % bake_name],
        "before_header": definition_path if before is not None else "(absent)",
        "after_header": definition_path,
    }
    if changed and not check_mode:
        _packer_yaml.write_files(directory, files, changed)
    return {
        "changed": bool(changed),
        "output_dir": directory,
        "definition": os.path.join(directory, "%s.yml" % bake_name),
        "files": sorted(os.path.join(directory, file) for file in files),
        "written": sorted(os.path.join(directory, file) for file in changed) if not check_mode else [],
        "report": report,
        "report_lines": _packer_yaml.report_lines(report),
        "fully_mapped": report["fully_mapped"],
        "bake": mapped["definition"]["bake"],
        "diff": diff,
    }
