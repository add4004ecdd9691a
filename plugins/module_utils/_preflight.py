# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight of a bake: what each selected target needs of the build host, checked before anything is made.

The plan play runs it (module ``bake_preflight``) on the planned targets. Every problem of every target is
collected, then reported at once, each naming the target, the option that asks for the thing, what is wrong and
how to fix it. The checks, by target type (:data:`CHECKS`; cloud checks are added there per type):

* **tools**: the commands and files the target's modules run on the build host (``qemu-img``, ``bwrap``,
  ``mmdebstrap`` when the base rootfs is not in the cache, ...), each with the Debian package that ships it
  (:func:`packages`), searched as the module that runs it searches;
* **engine**: the Docker engine of a docker target (its ``docker_host``, else ``DOCKER_HOST``, else the local
  socket) answers, within a short timeout;
* **disk_space**: what a disk target's build will likely write (per copy of the disk, work files and outputs:
  the base's content plus room for the provisioning, see :data:`PROVISIONING_ROOM`) fits in the free space of
  the output and cache directories, summed per file system; short of the upper bound (every copy as large as
  ``disk_size``) is said, not refused;
* **catalog**: a vagrant target's catalog does not already list its version for its provider with another box
  (vagrant_box would refuse to list the new box after the disk and the box are built);
* **mirror**: the base's mirror answers (its ``dists/<suite>/InRelease``) for a target whose build downloads from
  it: mmdebstrap for a base not in the cache, apt-get update before the first provisioner (unless
  ``bake.package_lists: keep``);
* **architecture**: a foreign ``bake.base.architecture`` (or a docker target's ``platform`` on a local engine)
  can run on this host, natively or through a binfmt_misc handler.

What is needed only to build (not to find an existing artifact) does not fail a target whose artifact is found:
such a problem makes the preflight look the artifact up (qemu and vagrant targets, by their sidecars, as their
``find`` does), and drops the problem when it is found. The look-up runs only then, so a host that has
everything pays nothing for it.

All I/O goes through a :class:`Host`, so the unit tests inject a fake ``which``, disk usage, engine ping.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

# _qemu_disk, _qemu_vm and _vagrant are imported where a qemu or vagrant target needs them: this module runs in
# Ansible's main process, where they were 0.1 s of every bake's start
from ansible_collections.bakery.images.plugins.module_utils import (
    _plan,
    _qemu_arch,
    _signature,
)
from ansible_collections.bakery.images.plugins.module_utils._files import read_sidecar
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError

# Commands (and files) bakery runs on the build host -> the Debian package that ships them (the Makefile's APT_BAKE
# installs them all): the disk and VM modules' own tables (added by packages()), and what else the checks name.
OWN_PACKAGES: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "bwrap": "bubblewrap",
    "grub-bios-setup": "grub-pc-bin",
    "arch-test": "arch-test",
    # files
    "GRUB for i386-pc": "grub-pc-bin",
    "GRUB for x86_64-efi": "grub-efi-amd64-bin",
    "OVMF (UEFI firmware)": "ovmf",
    "AAVMF (arm64 UEFI firmware)": "qemu-efi-aarch64",
    "Vagrant's insecure public key": "vagrant",
    # binfmt_misc handlers for foreign architectures
    "binfmt": "qemu-user-static",
}


@functools.cache
def packages() -> dict[str, str]:
    """Every command and file the checks name -> its Debian package (built on first use: the disk and VM modules'
    tables need their imports)."""
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk, _qemu_vm

    return {
        **_qemu_disk.TOOLS,
        **{name: text.replace("Debian package ", "") for name, text in _qemu_vm.PACKAGES.items()},
        **OWN_PACKAGES,
    }


# what modules search besides PATH (_qemu_disk.which, _rootfs.find_mmdebstrap)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# seconds every external call (an engine ping, arch-test) may take
DEFAULT_TIMEOUT = 5.0
# the target types whose checks are _preflight_cloud's (their clouds' credentials, regions, sources, buckets)
CLOUD_TYPES = ("ami", "gce", "openstack", "digitalocean")
# secret texts shorter than this are not scrubbed from the messages (see secret_values)
MIN_SECRET = 4
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
GIB = 1024**3

# Debian architectures a host runs without emulation, by its own (i386 on amd64 needs the kernel's 32-bit
# support, which Debian's kernels have); arch-test answers exactly when it is installed
NATIVE = {
    "amd64": ("amd64", "i386"),
    "arm64": ("arm64", "armhf", "armel"),
    "i386": ("i386",),
    "armhf": ("armhf", "armel"),
    "ppc64el": ("ppc64el",),
    "s390x": ("s390x",),
    "riscv64": ("riscv64",),
}
# the binfmt_misc entry Debian's qemu-user-static registers for an architecture
BINFMT = {
    "amd64": "qemu-x86_64",
    "i386": "qemu-i386",
    "arm64": "qemu-aarch64",
    "armhf": "qemu-arm",
    "armel": "qemu-arm",
    "ppc64el": "qemu-ppc64le",
    "s390x": "qemu-s390x",
    "riscv64": "qemu-riscv64",
    "mips64el": "qemu-mips64el",
}
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
# where Debian's qemu-user-static keeps the entries it registers (systemd-binfmt's format)
BINFMT_CONF_DIR = "/usr/lib/binfmt.d"
# Docker platform (os/arch[/variant]) -> Debian architecture
PLATFORMS = {
    "amd64": "amd64",
    "386": "i386",
    "arm64": "arm64",
    "arm64/v8": "arm64",
    "arm/v7": "armhf",
    "arm/v6": "armel",
    "arm/v5": "armel",
    "arm": "armhf",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


# --------------------------------------------------------------------------- the build host


def _space(path: str) -> tuple[int, int]:
    """(device, free bytes) of the file system that holds *path* (an existing directory)."""
    return os.stat(path).st_dev, shutil.disk_usage(path).free


def _held(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return min(st.st_size, st.st_blocks * 512)


def ping_engine(docker_host: str | None, timeout: float) -> str | None:
    """None when the Docker engine at *docker_host* (None: the default socket) answers, else why not."""
    from ansible_collections.bakery.images.plugins.module_utils import _docker

    try:
        client = _docker.connect(docker_host, max(1, int(round(timeout))))
    except BakeryError as exc:
        return exc.msg
    client.close()
    return None


def fetch_url(url: str, timeout: float, env: Mapping[str, str]) -> str | None:
    """None when *url* answers (a HEAD request; a file:// URL: the file exists), else why not. Proxies come from
    the environment (``http_proxy``, ``https_proxy``, ``no_proxy``), as for apt and mmdebstrap."""
    import urllib.error
    import urllib.request

    if url.startswith("file://"):
        return None if os.path.exists(url[len("file://") :]) else "not found"
    proxies = {
        scheme: env.get("%s_proxy" % scheme) or env.get("%s_PROXY" % scheme.upper())
        for scheme in ("http", "https")
    }
    handler = urllib.request.ProxyHandler({scheme: value for scheme, value in proxies.items() if value})
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "bakery.images preflight"})
    try:
        with urllib.request.build_opener(handler).open(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return "not found" if exc.code == 404 else "HTTP %d %s" % (exc.code, exc.reason)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def host_architecture() -> str:
    from ansible_collections.bakery.images.plugins.module_utils import _rootfs

    return _rootfs.host_architecture()


@dataclass
class Host:
    """The build host, as the checks see it. Every field is replaceable (the unit tests give fakes)."""

    # (command, search path) -> its path, or None
    which: Callable[[str, str], str | None] = lambda command, path: shutil.which(command, path=path)
    exists: Callable[[str], bool] = os.path.exists
    glob: Callable[[str], list] = glob.glob
    # an existing directory -> (device, free bytes)
    space: Callable[[str], tuple[int, int]] = _space
    # a file -> the bytes it holds on disk (sparse files count what is allocated), None when it does not exist
    file_size: Callable[[str], int | None] = _held
    # (docker_host or None, timeout) -> None when the engine answers, else why not
    ping: Callable[[str | None, float], str | None] = ping_engine
    host_arch: Callable[[], str] = host_architecture
    # (URL, timeout) -> None when the URL answers, else why not (a 404 as "not found")
    fetch: Callable[[str, float], str | None] = None  # type: ignore[assignment]
    # (Debian architecture, timeout) -> whether binaries of it run here; None: cannot tell
    arch_runs: Callable[[str, float], bool | None] = None  # type: ignore[assignment]
    # a planned target -> whether its artifact exists (True/False), None: not known
    found: Callable[[Mapping[str, Any]], bool | None] = None  # type: ignore[assignment]
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.arch_runs is None:
            self.arch_runs = lambda arch, timeout: arch_runs(arch, timeout, self)
        if self.found is None:
            self.found = artifact_found
        if self.fetch is None:
            self.fetch = lambda url, timeout: fetch_url(url, timeout, self.env)

    def search_path(self, system: bool) -> str:
        path = self.env.get("PATH") or ""
        if system:
            return os.pathsep.join([path, SYSTEM_PATH]) if path else SYSTEM_PATH
        return path or os.defpath


def arch_runs(arch: str, timeout: float, host: Host) -> bool | None:
    """Whether binaries of Debian architecture *arch* run on this host: natively or through binfmt_misc.

    ``arch-test`` (Debian's package of that name, which mmdebstrap uses too) answers exactly; without it, the
    host's own architectures (:data:`NATIVE`) and the registered binfmt_misc handlers (:data:`BINFMT`)."""
    tool = host.which("arch-test", host.search_path(True))
    if tool:
        try:
            proc = subprocess.run(
                [tool, arch],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if proc.returncode in (0, 1):
                return proc.returncode == 0
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        native = host.host_arch()
    except BakeryError:
        return None
    if arch in NATIVE.get(native, (native,)):
        return True
    entry = BINFMT.get(arch)
    if entry is None:
        return None
    try:
        with open(os.path.join(BINFMT_DIR, entry), encoding="utf-8") as handle:
            return handle.readline().strip() == "enabled"
    except OSError:
        return False


# --------------------------------------------------------------------------- findings


@dataclass
class Finding:
    """One check of one target: passed (``ok``) or a problem, with the option that asks for it."""

    target: str
    kind: str
    check: str
    option: str
    ok: bool
    msg: str
    # needed only to build: a found artifact does not need it
    build_only: bool = True

    def line(self) -> str:
        return "target %s (%s), %s: %s" % (self.target, self.kind, self.option, self.msg)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "option": self.option, "ok": self.ok, "msg": self.msg}


@dataclass(frozen=True)
class Need:
    """A command (on a search path) or one of some files the target's modules use on the build host."""

    name: str
    option: str
    why: str
    command: str | None = None
    files: tuple[str, ...] = ()
    # searched on PATH and the usual system directories (as _qemu_disk and _rootfs do), else on PATH alone
    system_path: bool = False
    build_only: bool = True
    package: str | None = None

    @property
    def debian_package(self) -> str:
        return self.package or packages().get(self.name, self.name)


def _command(name: str, option: str, why: str, system_path: bool = False, build_only: bool = True) -> Need:
    return Need(name, option, why, command=name, system_path=system_path, build_only=build_only)


@dataclass
class Context:
    """What the checks of one preflight share: the host, every planned target by name, the engines' answers."""

    host: Host
    targets: dict[str, Mapping[str, Any]]
    engines: dict[str | None, str | None] = field(default_factory=dict)
    arches: dict[str, bool | None] = field(default_factory=dict)
    # (mirror, suite) -> None when it answers, else why not
    mirrors: dict[tuple[str, str], str | None] = field(default_factory=dict)
    package_lists: str = "refresh"
    # a target's name -> whether its artifact exists (looked up once, only when a check asks)
    found: Callable[[str], bool | None] = lambda name: None
    # target name -> its cloud checks (_preflight_cloud.Check), all made at once before the per-target checks
    cloud: dict[str, list[Any]] = field(default_factory=dict)


def _options(target: Mapping[str, Any]) -> Mapping[str, Any]:
    return target.get("options") or {}


def _rootfs_to_build(target: Mapping[str, Any], host: Host) -> str | None:
    """The path of the target's rootfs tarball when it is not in the cache yet (mmdebstrap will build it)."""
    rootfs = target.get("rootfs") or {}
    path = rootfs.get("path")
    if path and not host.exists(path):
        return path
    return None


def _mmdebstrap(target: Mapping[str, Any], host: Host) -> list[Need]:
    path = _rootfs_to_build(target, host)
    if not path:
        return []
    return [
        _command(
            "mmdebstrap",
            "bake.base",
            "to build the root filesystem %s (not in the cache)" % os.path.basename(path),
            system_path=True,
        )
    ]


def docker_needs(target: Mapping[str, Any], ctx: Context) -> list[Need]:
    """A docker target needs nothing local beyond its engine, and mmdebstrap for a base rootfs to build."""
    return _mmdebstrap(target, ctx.host)


def qemu_needs(target: Mapping[str, Any], ctx: Context) -> list[Need]:
    """What qemu_image, qemu_vm and the chroot builder run for this target (see their ``which`` calls)."""
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk, _qemu_vm

    options = _options(target)
    provision = options.get("provision") or "chroot"
    formats = list(options.get("formats") or ["qcow2"])
    how = "qemu.provision=%s" % provision
    needs: list[Need] = []
    from_rootfs = not options.get("base_image")
    # an architecture qemu disks are not made for is refused by the disk module; its needs here are amd64's
    arch = _qemu_arch.ARCHES.get(target.get("architecture") or "", _qemu_arch.AMD64)
    if options.get("vagrant") and from_rootfs:
        # qemu_image's find already resolves the key: needed even when the disk is found
        if options.get("vagrant_key"):
            key = str(options["vagrant_key"])
            needs.append(
                Need(
                    key,
                    "qemu.vagrant_key",
                    "Vagrant's public key",
                    files=(key,),
                    build_only=False,
                    package="",
                )
            )
        else:
            needs.append(
                Need(
                    "Vagrant's insecure public key",
                    "qemu.vagrant=true",
                    "the key of user vagrant in the disk",
                    files=_qemu_disk.VAGRANT_KEY_GLOBS,
                    build_only=False,
                )
            )
    needs += _mmdebstrap(target, ctx.host)
    needs.append(
        _command(
            "qemu-img", "qemu.formats=%s" % ",".join(formats), "to write the disk outputs", system_path=True
        )
    )
    if from_rootfs:
        why = "to make the disk from the root filesystem"
        for name in ("sfdisk", "mkfs.ext4", "mkfs.vfat", "mmd", "mcopy", "grub-mkimage", "tar"):
            needs.append(_command(name, how, why, system_path=True))
    # arm64 disks take GRUB from their own tree (grub-efi-arm64-bin in it) and boot with UEFI only: no BIOS
    if from_rootfs and arch.bios:
        for directory, label in (
            (_qemu_disk.GRUB_PC_DIR, "i386-pc"),
            (_qemu_disk.GRUB_EFI_DIR, "x86_64-efi"),
        ):
            needs.append(
                Need("GRUB for %s" % label, how, why, files=(os.path.join(directory, "kernel.img"),))
            )
        needs.append(
            Need(
                "grub-bios-setup",
                how,
                why,
                command="grub-bios-setup",
                files=(os.path.join(_qemu_disk.GRUB_PC_DIR, "grub-bios-setup"),),
            )
        )
    if provision == "chroot":
        needs.append(_command("bwrap", how, "to isolate the chroot builder from the build host"))
    elif provision == "vm":
        why = "to run the builder VM"
        needs += [_command(name, how, why) for name in (arch.qemu_binary, "ssh", "ssh-keygen")]
        if options.get("base_image"):
            why = "to make the builder VM's cloud-init seed"
            needs += [_command(name, "qemu.base_image", why) for name in ("mkfs.vfat", "mcopy")]
        if (options.get("vm") or {}).get("firmware") == "uefi" and arch.firmware_only is None:
            needs.append(
                Need(
                    "OVMF (UEFI firmware)",
                    "qemu.vm.firmware=uefi",
                    "to boot the builder VM with UEFI",
                    files=tuple(code for code, _vars in _qemu_vm.OVMF_PAIRS),
                )
            )
    if arch is _qemu_arch.ARM64 and (provision == "vm" or _boots_for_checks(target)):
        # arm64 VMs (the builder, the disk booted for its checks) run emulated, with UEFI only
        option = how if provision == "vm" else "verify"
        why = "to boot the arm64 disk (%s)" % ("the builder VM" if provision == "vm" else "for its checks")
        if provision != "vm":
            needs.append(_command(arch.qemu_binary, option, why))
        needs.append(
            Need(
                "AAVMF (arm64 UEFI firmware)",
                option,
                why,
                files=tuple(code for code, _vars in arch.firmware_pairs),
            )
        )
    return needs


def _boots_for_checks(target: Mapping[str, Any]) -> bool:
    """Whether the bake boots the target's disk for its checks (a verify entry that is not local)."""
    return any(entry.get("kind") != "local" for entry in target.get("verify") or [])


def _source(target: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
    name = (target.get("source") or {}).get("target") or _options(target).get("source")
    return ctx.targets.get(name) or {}


def _box_converts(target: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    """Whether vagrant_box converts the source disk (virtualbox, or a disk that is no standalone qcow2)."""
    options = _options(source)
    primary = (list(options.get("formats") or ["qcow2"]) or ["qcow2"])[0]
    provider = _options(target).get("provider") or "libvirt"
    return provider != "libvirt" or primary != "qcow2" or bool(options.get("backing"))


def catalog_path(target: Mapping[str, Any]) -> str | None:
    """A vagrant target's catalog file, as role bakery.images.vagrant's vars name it; None: no catalog."""
    options = _options(target)
    name = options.get("box_name") or target.get("bake_name") or target["name"]
    given = options.get("catalog")
    path = "%s.json" % str(name).replace("/", "-") if given is None else str(given)
    if not path:
        return None
    return path if os.path.isabs(path) else os.path.join(target.get("output_dir") or "output", path)


def check_catalog(target: Mapping[str, Any], ctx: Context) -> list[Finding]:
    """A catalog that already lists the target's version for its provider with another box: the bake would build
    the disk and the box, then fail to list it (vagrant_box refuses to give a published version new content)."""
    path = catalog_path(target)
    if path is None:
        return []
    from ansible_collections.bakery.images.plugins.module_utils import _vagrant

    options = _options(target)
    version = str(options.get("version") or "1.0.0")
    provider = options.get("provider") or "libvirt"
    box_name = str(options.get("box_name") or target.get("bake_name") or target["name"])
    option = "vagrant.version=%s" % version

    def finding(ok: bool, msg: str) -> list[Finding]:
        return [Finding(target["name"], "vagrant", "catalog", option, ok, msg, build_only=False)]

    try:
        catalog = _vagrant.read_catalog(path)
    except BakeryError as exc:
        return finding(False, "%s; repair the file or remove it" % exc.msg)
    if catalog is None:
        return finding(True, "catalog %s does not exist yet" % path)
    checksum = None
    try:
        architecture = _vagrant.vagrant_architecture(target.get("architecture"))
    except BakeryError as exc:
        return finding(False, exc.msg)
    if (
        _vagrant.catalog_entry(catalog, version, provider, architecture) is not None
        and ctx.found(target["name"]) is True
    ):
        checksum = (read_sidecar(box_path(target)) or {}).get("sha256")
    cat = _vagrant.CatalogOptions(path, box_name, version, None, None)
    try:
        _vagrant.check_catalog_conflict(
            catalog, path, cat, provider, checksum, bool(target.get("force")), architecture
        )
    except BakeryError as exc:
        return finding(False, exc.msg)
    return finding(
        True, "catalog %s can list version %s for %s (%s)" % (path, version, provider, architecture)
    )


def vagrant_needs(target: Mapping[str, Any], ctx: Context) -> list[Need]:
    source = _source(target, ctx)
    needs = []
    if _options(target).get("verify_up") and target.get("verify"):
        # also for a box found unchanged: its checks still boot it (vagrant_machine searches PATH alone)
        why = "to boot the box for its checks"
        needs += [
            Need(
                "vagrant",
                "vagrant.verify_up=true",
                why,
                command="vagrant",
                build_only=False,
                package="vagrant",
            ),
            Need(
                "virsh",
                "vagrant.verify_up=true",
                why,
                command="virsh",
                build_only=False,
                package="libvirt-clients",
            ),
        ]
    if not _box_converts(target, source):
        return needs
    provider = _options(target).get("provider") or "libvirt"
    option = (
        "vagrant.provider=virtualbox" if provider != "libvirt" else "vagrant.source=%s" % source.get("name")
    )
    # vagrant_box's find_tool searches PATH alone
    return [_command("qemu-img", option, "to convert the source disk for the box"), *needs]


NEEDS: dict[str, Callable[[Mapping[str, Any], Context], list[Need]]] = {
    "docker": docker_needs,
    "qemu": qemu_needs,
    "vagrant": vagrant_needs,
}


def _unique(needs: Sequence[Need]) -> list[Need]:
    seen: set[tuple] = set()
    out = []
    for need in needs:
        key = (need.name, need.command, need.files, need.system_path)
        if key not in seen:
            seen.add(key)
            out.append(need)
    return out


def _install(package: str) -> str:
    return "install the Debian package %s (apt-get install %s)" % (package, package)


def check_tools(target: Mapping[str, Any], ctx: Context) -> list[Finding]:
    """Every command and file the target's modules need: one problem per missing one, one summary if all are."""
    host = ctx.host
    needs = NEEDS.get(target["type"])
    if needs is None:
        return []
    found: list[str] = []
    findings: list[Finding] = []
    for need in _unique(needs(target, ctx)):
        where = None
        for pattern in need.files:
            matches = sorted(host.glob(pattern)) if any(c in pattern for c in "*?[") else []
            if matches or host.exists(pattern):
                where = matches[-1] if matches else pattern
                break
        if where is None and need.command:
            where = host.which(need.command, host.search_path(need.system_path))
        if where:
            found.append(need.name)
            continue
        if need.package == "":  # a file the definition names
            msg = "%s does not exist; give the path of an existing file" % need.name
        else:
            what = "%s is not installed on the build host" % need.name
            if need.command:
                what += " (not on %s)" % ("PATH or in " + SYSTEM_PATH if need.system_path else "PATH")
            elif need.files:
                what += " (looked for %s)" % ", ".join(need.files)
            msg = "%s, needed %s; %s" % (what, need.why, _install(need.debian_package))
        findings.append(
            Finding(
                target["name"], target["type"], "tools", need.option, False, msg, build_only=need.build_only
            )
        )
    if found:
        findings.insert(
            0,
            Finding(
                target["name"], target["type"], "tools", target["type"], True, "found: %s" % ", ".join(found)
            ),
        )
    return findings


def docker_host_of(target: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The engine a docker target's modules talk to: its docker_host, else DOCKER_HOST, else the default socket."""
    return _options(target).get("docker_host") or env.get("DOCKER_HOST") or None


def _engine_option(target: Mapping[str, Any], env: Mapping[str, str]) -> str:
    given = _options(target).get("docker_host")
    if given:
        return "docker.docker_host=%s" % given
    if env.get("DOCKER_HOST"):
        return "docker.docker_host (unset: DOCKER_HOST=%s)" % env["DOCKER_HOST"]
    return "docker.docker_host (unset: the default socket %s)" % DEFAULT_SOCKET


def check_engine(target: Mapping[str, Any], ctx: Context) -> list[Finding]:
    if target["type"] != "docker":
        return []
    docker_host = docker_host_of(target, ctx.host.env)
    option = _engine_option(target, ctx.host.env)
    error = ctx.engines.get(docker_host)
    shown = docker_host or DEFAULT_SOCKET
    if error is None:
        return [
            Finding(
                target["name"], "docker", "engine", option, True, "the Docker engine at %s answers" % shown
            )
        ]
    # _docker.connect's message names the engine and asks whether dockerd runs: keep only its reason
    reason = error.replace(
        "cannot reach the Docker engine at %s: " % (docker_host or "the default socket"), ""
    )
    reason = reason.replace(" (is dockerd running and is this user allowed to use it?)", "")
    msg = (
        "the Docker engine at %s does not answer (asked with a %g s timeout): %s; start dockerd there "
        "(scripts/dockerd start) or let this user use it, or set docker_host (or DOCKER_HOST) to an engine that "
        "runs" % (shown, ctx.host.timeout, reason)
    )
    return [Finding(target["name"], "docker", "engine", option, False, msg, build_only=False)]


def mirror_of(target: Mapping[str, Any], package_lists: str, host: Host) -> tuple[str, str] | None:
    """(mirror, suite) a build of the target downloads from: mmdebstrap for a base not in the cache, and apt-get
    update before the first provisioner (package_lists ``refresh``); None when it downloads nothing from it (a
    base image's disk has its own sources)."""
    from ansible_collections.bakery.images.plugins.module_utils import _rootfs

    if target["type"] not in ("docker", "qemu") or _options(target).get("base_image"):
        return None
    rootfs = target.get("rootfs") or {}
    if not rootfs.get("path") or (package_lists == "keep" and not _rootfs_to_build(target, host)):
        return None
    try:
        parsed = _rootfs.parse_options(dict(rootfs.get("options") or {}, path=rootfs["path"]))
    except BakeryError:
        return None  # the plan checked the base: not expected
    return parsed.mirror, parsed.suite


def release_url(mirror: str, suite: str) -> str:
    return "%s/dists/%s/InRelease" % (mirror.rstrip("/"), suite)


def check_mirror(target: Mapping[str, Any], ctx: Context) -> list[Finding]:
    where = mirror_of(target, ctx.package_lists, ctx.host)
    if where is None:
        return []
    mirror, suite = where
    option = "bake.base.mirror=%s" % mirror
    error = ctx.mirrors.get(where)
    if error is None:
        msg = "the mirror answers (%s)" % release_url(mirror, suite)
        return [Finding(target["name"], target["type"], "mirror", option, True, msg)]
    why = "to build the root filesystem" if _rootfs_to_build(target, ctx.host) else "for apt-get update"
    if error == "not found":
        msg = (
            "the mirror has no suite %s (%s not found), needed %s; give a mirror that carries it, or another "
            "suite" % (suite, release_url(mirror, suite), why)
        )
    else:
        msg = (
            "the mirror does not answer within %g s (%s: %s), needed %s; give a mirror this host reaches (or set "
            "http_proxy)%s"
            % (
                ctx.host.timeout,
                release_url(mirror, suite),
                error,
                why,
                ""
                if _rootfs_to_build(target, ctx.host)
                else ", or bake.package_lists: keep to use the cached lists",
            )
        )
    return [Finding(target["name"], target["type"], "mirror", option, False, msg)]


def _engine_is_local(docker_host: str | None) -> bool:
    return not docker_host or docker_host.startswith("unix://")


def _architectures(target: Mapping[str, Any], ctx: Context) -> list[tuple[str, str, str]]:
    """(architecture, option, what runs it) the target's build runs on this host."""
    out = []
    rootfs = target.get("rootfs") or {}
    arch = (rootfs.get("options") or {}).get("architecture")
    local_engine = target["type"] != "docker" or _engine_is_local(docker_host_of(target, ctx.host.env))
    # mmdebstrap runs the base's maintainer scripts; a chroot builder and a local build container its programs
    if arch and (_rootfs_to_build(target, ctx.host) or local_engine):
        out.append((str(arch), "bake.base.architecture=%s" % arch, "the root filesystem's programs"))
    platform = _options(target).get("platform") if target["type"] == "docker" else None
    if platform and local_engine:
        parts = str(platform).split("/", 1)
        debian = PLATFORMS.get(parts[1] if len(parts) == 2 else parts[0])
        if debian:
            out.append((debian, "docker.platform=%s" % platform, "the image's programs"))
    return out


def check_architecture(target: Mapping[str, Any], ctx: Context) -> list[Finding]:
    findings = []
    for arch, option, what in _architectures(target, ctx):
        if arch not in ctx.arches:
            ctx.arches[arch] = ctx.host.arch_runs(arch, ctx.host.timeout)
        runs = ctx.arches[arch]
        if runs is False:
            msg = (
                "this host cannot run %s binaries (%s): not natively, and no binfmt_misc handler is registered "
                "for it; %s, or bake on a %s host" % (arch, what, binfmt_remedy(arch), arch)
            )
            findings.append(Finding(target["name"], target["type"], "architecture", option, False, msg))
        else:
            msg = "%s binaries run here" % arch if runs else "cannot tell whether %s binaries run here" % arch
            findings.append(Finding(target["name"], target["type"], "architecture", option, True, msg))
    return findings


def binfmt_remedy(arch: str) -> str:
    """What makes this host run *arch* binaries through qemu-user: the package that has the emulator, mounting
    binfmt_misc (containers and minimal hosts leave it unmounted, and then nothing registers handlers), or the
    registration of the handler."""
    entry = BINFMT.get(arch)
    if entry is None or not os.path.isfile(os.path.join(BINFMT_CONF_DIR, entry + ".conf")):
        return "%s (it ships the emulators and their binfmt_misc entries)" % _install("qemu-user-static")
    if not os.path.exists(os.path.join(BINFMT_DIR, "register")):
        return (
            "binfmt_misc is not mounted: as root, scripts/binfmt %s of a bakery checkout (make bake runs it) "
            "mounts it and registers the handler, or mount -t binfmt_misc binfmt_misc %s and systemctl restart "
            "systemd-binfmt" % (arch, BINFMT_DIR)
        )
    return (
        "register the handler of %s.conf: as root, scripts/binfmt %s of a bakery checkout (make bake runs it), "
        "or systemctl restart systemd-binfmt" % (os.path.join(BINFMT_CONF_DIR, entry), arch)
    )


def check_cloud(target: Mapping[str, Any], ctx: Context) -> list[Finding]:
    """The cloud checks of an ami or gce target (credentials, regions or zone, source image, bucket; see
    _preflight_cloud), made for all targets at once by :func:`preflight`. Finding an image needs them too."""
    return [
        Finding(target["name"], target["type"], c.check, c.option, c.ok, c.msg, build_only=False)
        for c in ctx.cloud.get(target["name"], [])
    ]


# per target type, the checks of one target (the disk space is checked across targets: see check_disk_space)
CHECKS: dict[str, list[Callable[[Mapping[str, Any], Context], list[Finding]]]] = {
    "docker": [check_engine, check_tools, check_mirror, check_architecture],
    "qemu": [check_tools, check_mirror, check_architecture],
    "vagrant": [check_tools, check_catalog],
    "ami": [check_cloud],
    "gce": [check_cloud],
    "openstack": [check_cloud],
    "digitalocean": [check_cloud],
}


# --------------------------------------------------------------------------- disk space


def _size(value: Any) -> int:
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk

    return _qemu_disk.round_up(_qemu_disk.parse_size(value or "4G"))


# The disk-space estimate. A disk made from the base holds about what the root filesystem holds, plus what the
# provisioning adds; every work file and output is sparse or compressed, so it holds that much, not disk_size.
# What provisioning adds cannot be known before it runs: PROVISIONING_ROOM is the allowance (a role that installs
# a language runtime and an application). A base not built yet counts as UNBUILT_BASE (Debian's minbase with
# python3 unpacks to about 400 MB, a base with a kernel and GRUB to about 500 MB); a built one counts what its
# tarball holds (the plan caches the base as an uncompressed .tar: its size is its content's).
PROVISIONING_ROOM = 1 * GIB
UNBUILT_BASE = 1 * GIB


def _content(target: Mapping[str, Any], ctx: Context) -> int:
    """About how many bytes the target's disk will hold once provisioned (at most its disk_size)."""
    options = _options(target)
    disk = _size(options.get("disk_size"))
    base = options.get("base_image")
    if base:
        held = ctx.host.file_size(str(base))
        base_bytes = UNBUILT_BASE if held is None else held
    else:
        path = (target.get("rootfs") or {}).get("path") or ""
        held = ctx.host.file_size(path) if path else None
        base_bytes = UNBUILT_BASE if held is None else held
    return min(disk, base_bytes + PROVISIONING_ROOM)


def _copies(target: Mapping[str, Any], ctx: Context) -> list[tuple[str, int, str]]:
    """(directory, copies of the disk's content, what) a build of the target writes."""
    options = _options(target)
    if target["type"] == "qemu":
        from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk

        formats = list(options.get("formats") or ["qcow2"])
        output = target.get("output_dir") or "output"
        cache = os.path.dirname(_qemu_disk.workdir_for(target))
        provision = options.get("provision") or "chroot"
        if provision == "chroot":
            others = [fmt for fmt in formats if fmt != "raw"]
            return [
                (output, 1 + len(others), "the raw work disk and the %s output(s)" % ",".join(formats)),
                (cache, 1, "the unpacked root filesystem"),
            ]
        copies = [(output, len(formats), "the %s output(s)" % ",".join(formats))]
        if provision == "vm":
            if options.get("base_image"):
                copies.append((cache, 1, "the builder VM's overlay disk"))
            else:
                copies.append((cache, 2, "the raw work disk and the builder VM's disk"))
        return copies
    if target["type"] == "vagrant":
        copies = 2 if _box_converts(target, _source(target, ctx)) else 1
        what = "the box and the converted disk" if copies == 2 else "the box"
        return [(os.path.dirname(box_path(target)), copies, what)]
    return []


def disk_writes(target: Mapping[str, Any], ctx: Context) -> list[tuple[str, int, int, str]]:
    """(directory, bytes it will likely write, bytes it writes at most, what) of a build of the target: each copy
    of the disk holds about :func:`_content`, and at most the whole ``disk_size`` (a provisioning that fills
    the disk)."""
    disk_target = _source(target, ctx) if target["type"] == "vagrant" else target
    if not disk_target:
        return []
    content = _content(disk_target, ctx)
    most = _size(_options(disk_target).get("disk_size"))
    return [(directory, n * content, n * most, what) for directory, n, what in _copies(target, ctx)]


def box_path(target: Mapping[str, Any]) -> str:
    """Where a vagrant target's box goes (as role bakery.images.vagrant's vars say)."""
    options = _options(target)
    name = options.get("box_name") or target.get("bake_name") or target["name"]
    output = options.get("output") or "%s-%s-%s.box" % (
        str(name).replace("/", "-"),
        options.get("version") or "1.0.0",
        options.get("provider") or "libvirt",
    )
    return output if os.path.isabs(output) else os.path.join(target.get("output_dir") or "output", output)


def _existing(path: str, host: Host) -> str:
    """*path*, or its nearest ancestor that exists (the output directory is made by the bake)."""
    path = os.path.abspath(path)
    while not host.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def gib(size: float) -> str:
    """A size for people: GiB, or TiB from 1024 GiB on."""
    if size >= 1024 * GIB:
        return "%.1f TiB" % (size / (1024 * GIB))
    return "%.1f GiB" % (size / GIB)


def _size_option(target: Mapping[str, Any], ctx: Context) -> str:
    if target["type"] == "vagrant":
        source = _source(target, ctx)
        return "vagrant.source=%s (qemu.disk_size=%s)" % (
            source.get("name"),
            _options(source).get("disk_size") or "4G",
        )
    return "qemu.disk_size=%s" % (_options(target).get("disk_size") or "4G")


def check_disk_space(targets: Sequence[Mapping[str, Any]], ctx: Context, found: Callable[[str], bool | None]):
    """Findings of every disk target: what its build will likely write (:func:`disk_writes`), summed per file
    system over the targets still to build, against the free space there. Short of that is a problem; short of
    the upper bound (every copy as large as disk_size) is said, not refused.

    Only when a file system is short does this ask *found(name)* which targets are already made (they write
    nothing), and check again without them."""
    host = ctx.host
    writes: dict[int, list[tuple[Mapping[str, Any], str, int, int, str]]] = {}
    free: dict[int, int] = {}
    shown: dict[int, str] = {}
    findings: list[Finding] = []
    for target in targets:
        try:
            planned = disk_writes(target, ctx)
        except BakeryError as exc:
            findings.append(
                Finding(
                    target["name"], target["type"], "disk_space", _size_option(target, ctx), False, exc.msg
                )
            )
            continue
        for directory, likely, most, what in planned:
            existing = _existing(directory, host)
            try:
                device, available = host.space(existing)
            except OSError as exc:
                findings.append(
                    Finding(
                        target["name"],
                        target["type"],
                        "disk_space",
                        _size_option(target, ctx),
                        False,
                        "cannot read the free space of %s: %s" % (existing, exc),
                    )
                )
                continue
            free[device] = available
            shown.setdefault(device, existing)
            writes.setdefault(device, []).append((target, os.path.abspath(directory), likely, most, what))

    reported: set[str] = set()
    for device, entries in writes.items():
        if sum(entry[2] for entry in entries) > free[device]:
            made = {entry[0]["name"] for entry in entries if found(entry[0]["name"]) is True}
            for name in sorted(made - reported):
                reported.add(name)
                target = ctx.targets[name]
                msg = "nothing to write: the artifact is found"
                findings.append(
                    Finding(name, target["type"], "disk_space", _size_option(target, ctx), True, msg)
                )
            entries = [entry for entry in entries if entry[0]["name"] not in made]
        total = sum(entry[2] for entry in entries)
        total_most = sum(entry[3] for entry in entries)
        by_target: dict[str, list[tuple[Mapping[str, Any], str, int, int, str]]] = {}
        for entry in entries:
            by_target.setdefault(entry[0]["name"], []).append(entry)
        for name, own in by_target.items():
            target = own[0][0]
            where = " and ".join(
                "%s in %s (%s)" % (gib(likely), directory, what) for _t, directory, likely, _m, what in own
            )
            others = sorted(set(by_target) - {name})
            ok = total <= free[device]
            msg = "a build writes about %s: %s; the file system of %s has %s free" % (
                gib(sum(entry[2] for entry in own)),
                where,
                shown[device],
                gib(free[device]),
            )
            if others:
                msg += " (%s needed there with target(s) %s)" % (gib(total), ", ".join(others))
            if not ok:
                msg += "; free space there, or set the bake's output_dir or cache_dir on a larger file system"
            elif total_most > free[device]:
                msg += (
                    "; enough unless the provisioning fills the disk (%s if every copy is as large as disk_size)"
                    % gib(total_most)
                )
            findings.append(Finding(name, target["type"], "disk_space", _size_option(target, ctx), ok, msg))
    return findings


# --------------------------------------------------------------------------- whether an artifact exists


def artifact_found(target: Mapping[str, Any]) -> bool | None:
    """Whether the target's artifact with its fingerprint exists, as its role's ``find`` step says; None when
    that cannot be told cheaply (docker targets: the engine decides; a base_image without its checksum would be
    read whole)."""
    if target.get("force"):
        return False
    options = _options(target)
    try:
        if target["type"] == "qemu":
            from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk

            outputs = _qemu_disk.outputs_for(target)
            if not all(os.path.isfile(out["path"]) for out in outputs):
                return False
            if options.get("base_image") and not options.get("base_image_checksum"):
                return None
            params = {
                "outputs": outputs,
                "rootfs": None if options.get("base_image") else (target.get("rootfs") or {}).get("path"),
                "image": options.get("base_image") or None,
                "image_checksum": options.get("base_image_checksum") or None,
                "backing": options.get("backing"),
                "disk_size": options.get("disk_size"),
                "kernel_cmdline": options.get("kernel_cmdline"),
                "dhcp": options.get("dhcp"),
                "hostname": options.get("hostname") or None,
                "vagrant": options.get("vagrant"),
                "vagrant_key": options.get("vagrant_key") or None,
                "inputs": dict(target.get("inputs") or {}, provision=options.get("provision")),
                # the plan completed it (bake.hygiene, defaults); a disk copied as it is has none
                "hygiene": options.get("hygiene") if options.get("provision") != "none" else None,
            }
            return bool(_qemu_disk.lookup(_qemu_disk.parse_options(params))["found"])
        if target["type"] == "vagrant":
            from ansible_collections.bakery.images.plugins.module_utils import _vagrant

            path = box_path(target)
            if not os.path.isfile(path):
                return False
            params = {
                "action": "find",
                "path": path,
                "provider": options.get("provider"),
                "inputs": target.get("inputs") or {},
                "compression": options.get("compression", 6),
                "memory": options.get("memory"),
                "cpus": options.get("cpus"),
                "vagrantfile": options.get("vagrantfile") or None,
                "box_name": options.get("box_name") or target.get("bake_name"),
                "version": options.get("version"),
            }
            return bool(_vagrant.make_box(params)["found"])
    except (BakeryError, OSError, ValueError, KeyError):
        return None
    return None


# --------------------------------------------------------------------------- the preflight


def ask_all(items: Sequence[Any], ask: Callable[[Any], str | None], timeout: float) -> dict[Any, str | None]:
    """*ask* every item at once (an engine ping, a mirror's Release file); an item that has not answered after
    the timeout (plus a second) did not answer."""
    answers: dict[Any, str | None] = {}

    def one(item: Any) -> None:
        try:
            answers[item] = ask(item)
        except Exception as exc:  # noqa: BLE001 - any failure of the question is the answer
            answers[item] = "%s: %s" % (type(exc).__name__, exc)

    threads = [threading.Thread(target=one, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {item: answers.get(item, "no answer within %g s" % timeout) for item in items}


def preflight(
    targets: Sequence[Mapping[str, Any]],
    host: Host | None = None,
    package_lists: str = "refresh",
    cloud: Any = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the build host for every target of the plan; every problem, not the first.

    *cloud* (a ``_preflight_cloud.Cloud``: credential variables, fakes) serves the checks of cloud targets, whose
    options must hold the real values of their secret options; without it, one is made with the credential
    *variables* (the roles' ``ami_access_key``, ...) when a target needs it. Returns ``targets`` (name, type, ``preflight``: a
    list of checks with ``check``, ``option``, ``ok``, ``msg``), ``problems`` (one line per problem, naming target
    and option) and ``duration``."""
    started = time.monotonic()
    host = host or Host()
    ctx = Context(host=host, targets={t["name"]: t for t in targets})
    ctx.package_lists = package_lists
    engines = list(dict.fromkeys(docker_host_of(t, host.env) for t in targets if t["type"] == "docker"))
    mirrors = list(dict.fromkeys(m for m in (mirror_of(t, package_lists, host) for t in targets) if m))
    # one wait for both: every engine and every mirror is asked at once
    answers = ask_all(
        [("engine", item) for item in engines] + [("mirror", item) for item in mirrors],
        lambda item: (
            host.ping(item[1], host.timeout)
            if item[0] == "engine"
            else host.fetch(release_url(*item[1]), host.timeout)
        ),
        host.timeout,
    )
    ctx.engines = {item: answer for (kind, item), answer in answers.items() if kind == "engine"}
    ctx.mirrors = {item: answer for (kind, item), answer in answers.items() if kind == "mirror"}
    clouds = [t for t in targets if t["type"] in CLOUD_TYPES]
    if clouds:
        # imported here: _preflight_cloud imports _aws and _gcp, and with them boto3 and google-auth (0.26 s in the
        # bake_preflight action's import, in Ansible's main process), which only bakes with cloud targets need
        from ansible_collections.bakery.images.plugins.module_utils import _preflight_cloud

        cloud = cloud or _preflight_cloud.Cloud(variables=variables or {}, env=host.env, timeout=host.timeout)
        ctx.cloud = _preflight_cloud.check_targets(clouds, cloud)

    looked_up: dict[str, bool | None] = {}

    def found(name: str) -> bool | None:
        if name not in looked_up:
            looked_up[name] = host.found(ctx.targets[name])
        return looked_up[name]

    ctx.found = found

    per_target: dict[str, list[Finding]] = {t["name"]: [] for t in targets}
    for target in targets:
        for check in CHECKS.get(target["type"], []):
            per_target[target["name"]] += check(target, ctx)
    for finding in check_disk_space([t for t in targets if t["type"] in ("qemu", "vagrant")], ctx, found):
        per_target[finding.target].append(finding)
    # what only a build needs does not fail a target whose artifact exists
    for name, findings in per_target.items():
        if any(not f.ok and f.build_only for f in findings) and found(name) is True:
            for finding in findings:
                if not finding.ok and finding.build_only:
                    finding.ok = True
                    finding.msg = "not needed, the artifact is found (else: %s)" % finding.msg
    problems = [f.line() for t in targets for f in per_target[t["name"]] if not f.ok]
    return {
        "targets": [
            {
                "name": t["name"],
                "type": t["type"],
                "artifact_found": looked_up.get(t["name"]),
                "preflight": [f.as_dict() for f in per_target[t["name"]]],
            }
            for t in targets
        ],
        "problems": problems,
        "duration": round(time.monotonic() - started, 3),
    }


def sign_problem(sign: Any) -> str | None:
    """Why the bake's ``sign`` key cannot sign here (no gpg, no such secret key, a name of several keys)."""
    if not isinstance(sign, Mapping) or not sign.get("key"):
        return None
    try:
        _signature.key_fingerprint(str(sign["key"]), sign.get("gnupg_home") or None)
    except BakeryError as exc:
        return "bake.sign: %s" % exc.msg
    return None


def message(result: Mapping[str, Any]) -> str:
    """The preflight's message: every problem on a line of its own, or how many checks passed."""
    problems = result["problems"]
    if problems:
        return (
            "preflight: %d problem(s) on the build host; nothing was created (skip the preflight with "
            "-e bake_preflight=false):\n- %s" % (len(problems), "\n- ".join(problems))
        )
    checks = sum(len(t["preflight"]) for t in result["targets"])
    return "preflight: %d check(s) of %d target(s) passed in %.2f s" % (
        checks,
        len(result["targets"]),
        result["duration"],
    )


def summary(result: Mapping[str, Any]) -> list[str]:
    """One line per check of every target (shown in --check)."""
    return [
        "%s (%s) %s %s: %s" % (t["name"], t["type"], c["check"], "ok" if c["ok"] else "PROBLEM", c["msg"])
        for t in result["targets"]
        for c in t["preflight"]
    ] or ["no checks (no target needs anything of the build host)"]


def run(
    targets: Any,
    timeout: Any = DEFAULT_TIMEOUT,
    host: Host | None = None,
    bake: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
    cloud: Any = None,
    package_lists: Any = None,
) -> dict[str, Any]:
    """The result of the ``bake_preflight`` action: ``failed`` with every problem in ``msg``, or the checks.

    The plan masks the targets' secret options: *bake* (the definition) gives their real values, and *variables*
    the credentials of the roles' variables (``ami_access_key``, ...). No secret value is in the result.
    *package_lists*: the bake's (``bake.package_lists``, ``refresh`` by default)."""
    if not isinstance(targets, list):
        raise BakeryError(
            "targets must be the list of planned targets (plan.targets of bakery.images.bake_plan)"
        )
    for index, target in enumerate(targets):
        if not isinstance(target, Mapping) or not target.get("name") or not target.get("type"):
            raise BakeryError(
                "targets[%d] is not a planned target (name, type, options): %r" % (index, target)
            )
    try:
        seconds = float(timeout if timeout not in (None, "") else DEFAULT_TIMEOUT)
    except (TypeError, ValueError):
        raise BakeryError("timeout must be a number of seconds, not %r" % (timeout,)) from None
    if package_lists is None:
        package_lists = (bake or {}).get("package_lists") or "refresh"
    if package_lists not in ("refresh", "keep"):
        raise BakeryError(
            "package_lists must be refresh or keep (bake.package_lists), not %r" % (package_lists,)
        )
    host = host or Host(timeout=seconds)
    secrets = [_plan.target_secrets(bake, t) for t in targets] if bake else [{} for t in targets]
    real = [dict(t, options=_plan.with_secrets(_options(t), s)) if s else t for t, s in zip(targets, secrets)]
    result = preflight(real, host, package_lists, cloud, variables)
    signing = sign_problem((bake or {}).get("sign"))
    if signing:
        result = dict(result, problems=list(result["problems"]) + [signing])
    result = dict(
        result, changed=False, failed=bool(result["problems"]), msg=message(result), summary=summary(result)
    )
    return scrub(result, secret_values(variables or {}, secrets))


# --------------------------------------------------------------------------- secrets


def secret_values(variables: Mapping[str, Any], secrets: Sequence[Any]) -> list[str]:
    """Every secret text the preflight was given: the credential variables and the targets' secret options."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif value not in (None, "") and not isinstance(value, bool):
            text = str(value)
            # a text of a few characters would be replaced all over the messages; no message holds one anyway
            if text != NO_LOG_MASK and len(text) >= MIN_SECRET:
                found.append(text)

    walk(dict(variables))
    walk(list(secrets))
    # longest first: a secret that holds another is replaced whole
    return sorted(set(found), key=len, reverse=True)


def scrub(value: Any, secrets: Sequence[str]) -> Any:
    """*value* with every secret text in its strings replaced by the no_log mask."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, NO_LOG_MASK)
        return value
    if isinstance(value, Mapping):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secrets) for item in value]
    return value
