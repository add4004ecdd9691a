# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Base root filesystems: a Debian or Ubuntu tarball built by mmdebstrap, skipped when unchanged.

The tarball's fingerprint covers what decides its content (suite, mirror, variant, packages,
components, architecture, keyring content, extra apt sources, tarball format).  The
``<path>.bakery.json`` sidecar records it; a tarball whose sidecar carries the same fingerprint
(and whose size, optionally sha256, still matches) is not built again.

The build writes to a temporary name beside *path* that keeps the tarball extension (mmdebstrap
picks the compressor from it) and is renamed onto *path* only when mmdebstrap succeeded; on any
failure, timeout or interruption the partial output is removed.

The package lists mmdebstrap fetched (which it removes from the tree at the end of its build) are kept beside the
tarball, ``<path>.apt-lists.tar``: a builder made from the tarball starts with them, so that its refresh before
the first provisioner fetches only what changed on the mirror since.  They are no input of the fingerprint, and a
tarball without them (built before they were kept) is used as it is.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from ansible_collections.bakery.images.plugins.module_utils._files import (
    atomic_output,
    file_lock,
    read_sidecar,
    write_sidecar,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    changed_inputs,
    digest_file,
    digest_tree,
    digest_value,
    fingerprint,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps

VARIANTS = (
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
)
MODES = ("auto", "sudo", "root", "unshare", "fakeroot", "fakechroot", "chrootless")

# file name ending -> tarball format (what mmdebstrap infers from the name)
EXTENSIONS = {
    ".tar": "tar",
    ".tar.gz": "tar.gz",
    ".tgz": "tar.gz",
    ".tar.xz": "tar.xz",
    ".tar.zst": "tar.zst",
}
# tarball format -> (compressor program, Debian package that ships it)
COMPRESSORS = {"tar.gz": ("gzip", "gzip"), "tar.xz": ("xz", "xz-utils"), "tar.zst": ("zstd", "zstd")}

DEBIAN_MIRROR = "http://deb.debian.org/debian"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
UBUNTU_PORTS_MIRROR = "http://ports.ubuntu.com/ubuntu-ports"
UBUNTU_PRIMARY_ARCHES = frozenset({"amd64", "i386"})
UBUNTU_SUITES = frozenset(
    {
        "trusty",
        "xenial",
        "bionic",
        "focal",
        "groovy",
        "hirsute",
        "impish",
        "jammy",
        "kinetic",
        "lunar",
        "mantic",
        "noble",
        "oracular",
        "plucky",
        "questing",
    }
)

INPUT_NAMES = (
    "suite",
    "mirror",
    "variant",
    "packages",
    "components",
    "architecture",
    "keyring",
    "extra_sources",
    "format",
)

# The package lists beside the tarball (see the module's docstring), and the customize hook that writes them: the
# lists directory's files but the lock (not partial/, auxfiles/), as root's, in name order.  The hook runs on the host
# (as fake root under unshare); when it cannot write them it leaves the file empty, and the build goes on: a
# rootfs without lists is what one built before they were kept.
APT_LISTS_SUFFIX = ".apt-lists.tar"
APT_LISTS_DIR = "var/lib/apt/lists"

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDERR_TAIL = 20
KILL_GRACE = 30.0

_SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
# a Debian package name, optionally :arch, optionally =version or /release (apt syntax)
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:_-]+)?$")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_MIRROR_RE = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s\"']+$")
_SOURCE_RE = re.compile(r"^deb(-src)?\s+\S")


@dataclass
class RootfsOptions:
    """The module's options, validated and with defaults resolved."""

    path: str
    suite: str
    mirror: str
    architecture: str
    variant: str = "minbase"
    packages: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=lambda: ["main"])
    keyring: list[str] = field(default_factory=list)
    extra_sources: list[str] = field(default_factory=list)
    mode: str = "auto"
    force: bool = False
    verify: bool = False
    timeout: int = 1800

    @property
    def format(self) -> str:
        return tarball_format(self.path)

    @property
    def extension(self) -> str:
        return tarball_extension(self.path)


# --------------------------------------------------------------------------- validation


def tarball_extension(path: str) -> str:
    """The supported tarball ending of *path* (``.tar.zst``), or raise BakeryError."""
    name = os.path.basename(path)
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    raise BakeryError(
        "rootfs: unsupported tarball name {!r}: path must end with one of {}".format(
            name, ", ".join(sorted(EXTENSIONS))
        )
    )


def tarball_format(path: str) -> str:
    return EXTENSIONS[tarball_extension(path)]


def is_ubuntu_suite(suite: str) -> bool:
    """True for known Ubuntu code names, also with a pocket suffix (``noble-updates``)."""
    return suite.split("-", 1)[0].lower() in UBUNTU_SUITES


def default_mirror(suite: str, architecture: str) -> str:
    if is_ubuntu_suite(suite):
        return UBUNTU_MIRROR if architecture in UBUNTU_PRIMARY_ARCHES else UBUNTU_PORTS_MIRROR
    return DEBIAN_MIRROR


def host_architecture() -> str:
    """The build host's Debian architecture (``dpkg --print-architecture``)."""
    try:
        proc = subprocess.run(
            ["dpkg", "--print-architecture"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BakeryError(
            f"rootfs: cannot find the host architecture (dpkg --print-architecture: {exc}); set architecture"
        ) from exc
    arch = proc.stdout.strip()
    if proc.returncode != 0 or not arch:
        raise BakeryError(
            "rootfs: cannot find the host architecture (dpkg --print-architecture failed: "
            f"{proc.stderr.strip() or f'rc={proc.returncode}'}); set architecture"
        )
    return arch


def _unique(items: Sequence[str]) -> list[str]:
    """*items* without repeats, first occurrence kept."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def normalize_packages(packages: Sequence[str]) -> list[str]:
    """Sorted, without repeats and blanks: the order in which packages are given does not matter."""
    return sorted({pkg.strip() for pkg in packages if pkg and pkg.strip()})


def _check_output_dir(path: str) -> None:
    """The directory of *path*, or its nearest existing ancestor, must be a writable directory."""
    if os.path.isdir(path):
        raise BakeryError(f"rootfs: path {path} is a directory; give the tarball's file name")
    directory = os.path.dirname(path)
    probe = directory
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise BakeryError(f"rootfs: cannot create output directory {directory}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BakeryError(f"rootfs: output directory {probe} is not writable")


def _check_keyring(paths: Sequence[str]) -> list[str]:
    files: list[str] = []
    dirs: list[str] = []
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        if '"' in path:
            raise BakeryError(
                f"rootfs: keyring path {raw!r} must not contain double quotes (apt cannot use it)"
            )
        if os.path.isdir(path):
            dirs.append(path)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise BakeryError(f"rootfs: keyring {raw} does not exist")
    if len(files) > 1 or len(dirs) > 1:
        raise BakeryError(
            "rootfs: keyring takes at most one file and one directory (apt trusts one of each); "
            "put the keys in one directory, or use [signed-by=...] in extra_sources"
        )
    return _unique(files + dirs)


def parse_options(params: Mapping[str, Any], architecture: str | None = None) -> RootfsOptions:
    """Validate the module parameters and resolve their defaults; nothing is run or created.

    *architecture* is the host's architecture, looked up with dpkg when needed and not given.
    """
    raw_path = params.get("path")
    if not raw_path:
        raise BakeryError("rootfs: path is required")
    path = os.path.abspath(os.path.expanduser(str(raw_path)))
    tarball_extension(path)

    suite = str(params.get("suite") or "").strip()
    if not suite:
        raise BakeryError("rootfs: suite must not be empty (e.g. bookworm, trixie, noble)")
    if not _SUITE_RE.match(suite):
        raise BakeryError(
            f"rootfs: invalid suite {suite!r}: use letters, digits and . _ + ~ - only (e.g. bookworm)"
        )

    packages = normalize_packages(params.get("packages") or [])
    bad = [pkg for pkg in packages if not _PACKAGE_RE.match(pkg)]
    if bad:
        raise BakeryError(
            "rootfs: invalid package name(s): {} (Debian package names use a-z 0-9 + - . and may end "
            "in :arch, =version or /release)".format(", ".join(repr(pkg) for pkg in bad))
        )

    components = _unique([str(c).strip() for c in (params.get("components") or ["main"]) if str(c).strip()])
    if not components:
        raise BakeryError("rootfs: components must not be empty (e.g. [main])")
    bad = [c for c in components if not _COMPONENT_RE.match(c)]
    if bad:
        raise BakeryError("rootfs: invalid component(s): {}".format(", ".join(repr(c) for c in bad)))

    arch = str(params.get("architecture") or "").strip() or architecture or host_architecture()
    if not _ARCH_RE.match(arch):
        raise BakeryError(f"rootfs: invalid architecture {arch!r} (e.g. amd64, arm64)")

    mirror = str(params.get("mirror") or "").strip() or default_mirror(suite, arch)
    if not _MIRROR_RE.match(mirror):
        raise BakeryError(f"rootfs: invalid mirror {mirror!r}: give a URL such as {DEBIAN_MIRROR}")
    mirror = mirror.rstrip("/")

    sources = []
    for entry in params.get("extra_sources") or []:
        line = " ".join(str(entry).split())
        if "\n" in str(entry).strip() or not _SOURCE_RE.match(line):
            raise BakeryError(
                f"rootfs: invalid extra_sources entry {entry!r}: give one apt source line such as "
                "'deb http://deb.debian.org/debian bookworm-updates main'"
            )
        sources.append(line)

    variant = str(params.get("variant") or "minbase")
    if variant not in VARIANTS:
        raise BakeryError(
            "rootfs: unknown variant {!r}; choose one of {}".format(variant, ", ".join(VARIANTS))
        )
    mode = str(params.get("mode") or "auto")
    if mode not in MODES:
        raise BakeryError("rootfs: unknown mode {!r}; choose one of {}".format(mode, ", ".join(MODES)))
    timeout = int(params["timeout"]) if params.get("timeout") is not None else 1800
    if timeout <= 0:
        raise BakeryError("rootfs: timeout must be a positive number of seconds")

    _check_output_dir(path)
    keyring = _check_keyring(params.get("keyring") or [])

    return RootfsOptions(
        path=path,
        suite=suite,
        mirror=mirror,
        architecture=arch,
        variant=variant,
        packages=packages,
        components=components,
        keyring=keyring,
        extra_sources=_unique(sources),
        mode=mode,
        force=bool(params.get("force")),
        verify=bool(params.get("verify")),
        timeout=timeout,
    )


# --------------------------------------------------------------------------- fingerprint


def keyring_digest(path: str) -> str:
    """sha256 of a keyring file's content, or of a keyring directory's files (names and content)."""
    if os.path.isdir(path):
        return digest_tree(path)
    return digest_file(path)


def describe(opts: RootfsOptions) -> dict[str, Any]:
    """The readable values behind the inputs (kept in the sidecar, shown in diffs)."""
    return {
        "suite": opts.suite,
        "mirror": opts.mirror,
        "variant": opts.variant,
        "packages": list(opts.packages),
        "components": list(opts.components),
        "architecture": opts.architecture,
        "keyring": sorted(keyring_digest(path) for path in opts.keyring),
        "extra_sources": list(opts.extra_sources),
        "format": opts.format,
    }


def compute_inputs(opts: RootfsOptions) -> dict[str, str]:
    """Named input digests; ``fingerprint(compute_inputs(opts))`` is the tarball's fingerprint."""
    values = describe(opts)
    return {name: digest_value(values[name]) for name in INPUT_NAMES}


# --------------------------------------------------------------------------- command


# The kernel's initramfs, made once.  Debian makes it when the kernel is configured and again when
# initramfs-tools' trigger runs (packages configured after it add initramfs hooks): each time minutes under
# qemu-user (an arm64 rootfs with linux-image-cloud-arm64 here: 168 s each of the 511 s mmdebstrap took), and
# seconds natively.  While mmdebstrap installs, update-initramfs is diverted to a no-op; the customize hook
# puts initramfs-tools' own back and makes every kernel's initramfs once (update-initramfs -c -k all, what the
# kernel's postinst does).  The hooks run chroot: the modes where mmdebstrap's hooks may (as root, or in a user
# namespace); the others build as before.
UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
INITRAMFS_ONCE_MODES = ("auto", "root", "unshare", "sudo")
INITRAMFS_DIVERT_HOOK = (
    f'chroot "$1" dpkg-divert --quiet --local --rename --divert {UPDATE_INITRAMFS}.bakery'
    f" --add {UPDATE_INITRAMFS}"
    f' && printf "#!/bin/sh\\nexit 0\\n" > "$1{UPDATE_INITRAMFS}" && chmod 0755 "$1{UPDATE_INITRAMFS}"'
)
INITRAMFS_ONCE_HOOK = (
    f'rm -f "$1{UPDATE_INITRAMFS}"'
    f' && chroot "$1" dpkg-divert --quiet --local --rename --remove {UPDATE_INITRAMFS}'
    f' && if [ -e "$1{UPDATE_INITRAMFS}" ]; then chroot "$1" update-initramfs -c -k all; fi'
)


# Under qemu-user most of that initramfs build is process starts: initramfs-tools' copy_file runs readlink,
# realpath and mkdir for every file it copies (an arm64 cloud kernel's: 1,335 readlink, 1,334 realpath, 275 mkdir
# of the ~3,800 programs mkinitramfs starts), each 15-30 ms of CPU under emulation.  On an amd64 host with Debian's
# busybox-static (statically linked: no loader, no library, so nothing of the host's can get into the initramfs), the
# customize hook puts, for the initramfs build only, small scripts run natively by that busybox in their place; they
# answer the calls whose answer is certain to be GNU's and hand any other to the real program:
#   readlink -f NAME   NAME absolute and existing (not under /proc or /dev): busybox's readlink -f if that exists;
#   realpath -ms NAME  NAME absolute: NAME made canonical by its text alone, as GNU's -m -s (no file is looked at);
#   realpath -s NAME   NAME absolute, existing, without . or .. components: NAME with its repeated slashes removed;
#   mkdir -p DIR...    every DIR an existing directory: nothing to do.
# (busybox's own realpath has no options, and its readlink -f differs from GNU's for missing names.)  Then the real
# programs go back, their directory gets back its time, and nothing of it stays in the tree.  arm64 cloud kernel:
# update-initramfs took 160 s of CPU without them, 60 s with them, and made the same files; the whole arm64 disk
# rootfs 380 s (351 s CPU) instead of 272 s (263 s CPU), the same tarball but for the initrd's times and SSH keys.
INITRAMFS_HELPER_DIR = "/tmp/bakery-initramfs"
INITRAMFS_SHADOWED = ("readlink", "realpath", "mkdir")
# where Debian's busybox-static (and busybox) put the program
HOST_BUSYBOX = ("/usr/bin/busybox", "/bin/busybox")
# the Debian architectures an x86-64 host runs without emulation
X86_64_NATIVE = frozenset({"amd64", "i386", "x32"})
_ELF_X86_64 = 62
_PT_INTERP = 3

_SHADOW_SCRIPTS = {
    "readlink": r"""# bakery: readlink -f of an existing absolute name by busybox, when what it says exists; else the real one
if [ $# = 2 ] && [ "$1" = -f ]; then
    case "$2" in
    /proc/* | /dev/* | //*) ;;
    /*)
        if [ -e "$2" ] && r=$({dir}/busybox readlink -f "$2" && echo .) && [ -e "${r%?.}" ]; then
            printf '%s' "${r%.}"
            exit 0
        fi
        ;;
    esac
fi
exec -a readlink {dir}/readlink "$@"
""",
    "realpath": r"""# bakery: realpath -ms / -s of an absolute name, as GNU realpath; anything else: the real realpath
if [ $# = 2 ]; then
    case "$1:$2" in
    -ms:/* | -sm:/*) fast=1 ;;
    -s:/*)
        case "$2/" in
        */./* | */../*) ;;
        *) [ -e "$2" ] && fast=1 ;;
        esac
        ;;
    esac
fi
[ -n "$fast" ] || exec -a realpath {dir}/realpath "$@"
out=
IFS=/
set -f
for c in $2; do
    case "$c" in
    '' | .) ;;
    ..) out="${out%/*}" ;;
    *) out="$out/$c" ;;
    esac
done
printf '%s\n' "${out:-/}"
""",
    "mkdir": r"""# bakery: mkdir -p of directories that all exist does nothing, as GNU mkdir; anything else: the real mkdir
if [ $# -ge 2 ] && [ "$1" = -p ]; then
    all=1
    shift
    for d in "$@"; do
        case "$d" in -*) all= ;; esac
        [ -d "$d" ] || all=
    done
    [ -n "$all" ] && exit 0
    set -- -p "$@"
fi
exec -a mkdir {dir}/mkdir "$@"
""",
}


def shadow_script(tool: str, directory: str = INITRAMFS_HELPER_DIR) -> str:
    """The script that stands in for /usr/bin/*tool* while the initramfs is made (run by busybox's sh)."""
    return f"#!{directory}/busybox sh\n" + _SHADOW_SCRIPTS[tool].replace("{dir}", directory)


def _static_x86_64(path: str) -> bool:
    """Whether *path* is an x86-64 ELF executable that needs no program interpreter (statically linked)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return False
            (machine,) = struct.unpack_from("<H", header, 18)
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            if machine != _ELF_X86_64 or phentsize < 4 or not phnum:
                return False
            handle.seek(phoff)
            table = handle.read(phentsize * phnum)
    except OSError:
        return False
    if len(table) < phentsize * phnum:
        return False
    types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
    return _PT_INTERP not in types


def initramfs_busybox(
    opts: RootfsOptions, candidates: Sequence[str] = HOST_BUSYBOX, machine: str | None = None
) -> str | None:
    """The host's statically linked x86-64 busybox when *opts* makes an initramfs under emulation on an x86-64
    host (a foreign architecture, a kernel, a mode whose hooks chroot); else None: the initramfs is made as
    before."""
    machine = machine or os.uname().machine
    if machine != "x86_64" or opts.architecture in X86_64_NATIVE:
        return None
    if not (installs_a_kernel(opts.packages) and opts.mode in INITRAMFS_ONCE_MODES):
        return None
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK) and _static_x86_64(path):
            return os.path.realpath(path)
    return None


def initramfs_once_hook(busybox: str | None = None) -> str:
    """The customize hook that makes the initramfs once; with *busybox* (the host's static one), readlink,
    realpath and mkdir are shadowed by the scripts above while it is made, and put back after."""
    if not busybox:
        return INITRAMFS_ONCE_HOOK
    d = INITRAMFS_HELPER_DIR
    tools = " ".join(INITRAMFS_SHADOWED)
    lines = [
        f'rm -f "$1{UPDATE_INITRAMFS}"'
        f' && chroot "$1" dpkg-divert --quiet --local --rename --remove {UPDATE_INITRAMFS} || exit',
        f'[ -e "$1{UPDATE_INITRAMFS}" ] || exit 0',
        'usr_bin=$(stat -c %y "$1/usr/bin") && tmp=$(stat -c %y "$1/tmp") || exit',
        f'mkdir "$1{d}" && cp {shlex.quote(busybox)} "$1{d}/busybox" || exit',
        "rc=0",
    ]
    for tool in INITRAMFS_SHADOWED:
        lines.append(f'cat > "$1{d}/{tool}.sh" <<' + "'BAKERY_EOF' || rc=1")
        lines.append(shadow_script(tool, d).rstrip("\n"))
        lines.append("BAKERY_EOF")
    lines += [
        f'[ $rc = 0 ] && chmod 0755 "$1{d}"/*.sh || rc=1',
        f"[ $rc = 0 ] && for t in {tools}; do",
        # GNU's own program only (not a symlink, not another implementation such as uutils'): the scripts answer as
        # GNU's would; where it is elsewhere (/bin/mkdir before merged /usr), it is left alone
        '\t[ -f "$1/usr/bin/$t" ] && [ ! -L "$1/usr/bin/$t" ] && grep -q "GNU coreutils" "$1/usr/bin/$t" || continue',
        f'\tmv "$1/usr/bin/$t" "$1{d}/$t" && mv "$1{d}/$t.sh" "$1/usr/bin/$t" || {{ rc=1; break; }}',
        "done",
        '[ $rc = 0 ] && { chroot "$1" update-initramfs -c -k all || rc=$?; }',
        f"for t in {tools}; do",
        f'\tif [ -e "$1{d}/$t" ]; then mv -f "$1{d}/$t" "$1/usr/bin/$t" || rc=1; fi',
        "done",
        f'rm -rf "$1{d}" && touch -d "$usr_bin" "$1/usr/bin" && touch -d "$tmp" "$1/tmp" || rc=1',
        "exit $rc",
    ]
    return "\n".join(lines)


def installs_a_kernel(packages: list[str]) -> bool:
    """Whether *packages* (apt syntax) name a Debian kernel or initramfs-tools."""
    names = [re.split(r"[:=/]", package, maxsplit=1)[0] for package in packages]
    return any(name.startswith("linux-image-") or name == "initramfs-tools" for name in names)


def apt_lists_path(path: str) -> str:
    """Where the package lists of the rootfs tarball *path* are kept."""
    return path + APT_LISTS_SUFFIX


def apt_lists_hook(output: str) -> str:
    """The customize hook that writes the package lists into the tar file *output* (see :data:`APT_LISTS_SUFFIX`)."""
    out = shlex.quote(output)
    # one line: mmdebstrap's log shows a hook's command
    return (
        f'cd "$1/{APT_LISTS_DIR}" 2>/dev/null || exit 0; '
        "find . -mindepth 1 -maxdepth 1 -type f ! -name lock -printf '%P\\0' | LC_ALL=C sort -z"
        f" | tar --null --no-recursion --numeric-owner --owner=0 --group=0 -cf {out} -T -"
        f" || (: > {out}) 2>/dev/null; exit 0"
    )


def build_command(
    opts: RootfsOptions,
    target: str,
    mmdebstrap: str = "mmdebstrap",
    busybox: str | None = None,
    lists: str | None = None,
) -> list[str]:
    """The mmdebstrap argv that builds *opts* into *target* (whose name keeps the tarball ending); *busybox*:
    the host's static busybox that speeds up the initramfs build (``initramfs_busybox``), None: none; *lists*:
    the file that gets the package lists (``apt_lists_hook``), None: they are not kept."""
    argv = [
        mmdebstrap,
        f"--variant={opts.variant}",
        f"--mode={opts.mode}",
        "--format=tar",
        f"--architectures={opts.architecture}",
        "--components={}".format(",".join(opts.components)),
    ]
    if opts.packages:
        argv.append("--include={}".format(",".join(opts.packages)))
    for path in opts.keyring:
        argv.append(f"--keyring={path}")
    if installs_a_kernel(opts.packages) and opts.mode in INITRAMFS_ONCE_MODES:
        argv += [
            f"--essential-hook={INITRAMFS_DIVERT_HOOK}",
            f"--customize-hook={initramfs_once_hook(busybox)}",
        ]
    if lists:
        # customize hooks run before mmdebstrap's cleanup removes the lists
        argv.append(f"--customize-hook={apt_lists_hook(lists)}")
    argv += [opts.suite, target, opts.mirror]
    argv += opts.extra_sources
    return argv


def find_mmdebstrap(search_path: str | None = None) -> str:
    """The mmdebstrap executable on *search_path* (default: PATH and the usual system directories)."""
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), SYSTEM_PATH])
    found = shutil.which("mmdebstrap", path=search_path)
    if not found:
        raise BakeryError(
            "rootfs: mmdebstrap is not installed on the build host; install the Debian package "
            "'mmdebstrap' (apt-get install mmdebstrap)"
        )
    return found


def check_compressor(fmt: str) -> None:
    if fmt in COMPRESSORS:
        program, package = COMPRESSORS[fmt]
        if not shutil.which(program):
            raise BakeryError(
                f"rootfs: a .{fmt} tarball needs {program}, which is not installed; "
                f"install the Debian package {package!r}"
            )


def mmdebstrap_version(mmdebstrap: str) -> str:
    try:
        proc = subprocess.run(
            [mmdebstrap, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "mmdebstrap (unknown version)"
    text = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return text[0].strip() if text else "mmdebstrap (unknown version)"


# --------------------------------------------------------------------------- errors

_RELEASE_MISSING_RE = re.compile(r"The repository '(\S+) (\S+) Release' does not have a Release file")
_NOT_SIGNED_RE = re.compile(r"The repository '(\S+) (\S+) (?:In)?Release' is not signed")
_FETCH_RE = re.compile(r"^E: Failed to fetch (\S+)\s+(.*)$", re.MULTILINE)
_NO_PACKAGE_RE = re.compile(r"E: Unable to locate package (\S+)")
_NO_CANDIDATE_RE = re.compile(r"E: Package '([^']+)' has no installation candidate")
_NO_PUBKEY_RE = re.compile(r"NO_PUBKEY ([0-9A-F]+)")
_GENERIC_ERRORS = (
    "E: mmdebstrap failed to run",
    "E: apt-get update",
    "E: setup failed: E: apt-get",
    "E: Some index files failed to download",
    "E: run_download() failed",
    "E: run_install() failed",
)


def _network_reason(detail: str) -> str:
    text = detail.strip()
    lowered = text.lower()
    resolve = re.search(r"Could not resolve '([^']+)'", text) or re.search(
        r"Temporary failure resolving '([^']+)'", text
    )
    if resolve:
        return f"cannot resolve host {resolve.group(1)}"
    if "connection refused" in lowered:
        return "connection refused"
    if "timed out" in lowered:
        return "connection timed out"
    if "network is unreachable" in lowered or "no route to host" in lowered:
        return "network unreachable"
    return text


def _source_for(url: str, opts: RootfsOptions) -> str:
    """The configured source (mirror or extra source URI) that *url* belongs to."""
    for source in [opts.mirror] + [_source_uri(line) for line in opts.extra_sources]:
        if source and url.startswith(source.rstrip("/")):
            return source
    return url


def _source_uri(line: str) -> str:
    """The URI of a one-line apt source (``deb [opts] URI suite comp...``)."""
    rest = re.sub(r"^deb(-src)?\s+(\[[^\]]*\]\s+)?", "", line)
    return rest.split()[0].rstrip("/") if rest.split() else ""


def explain_failure(log: str, opts: RootfsOptions, returncode: int) -> str:
    """A short message naming what went wrong, read from mmdebstrap's (and apt's) output."""
    missing = _RELEASE_MISSING_RE.search(log)
    if missing:
        uri, suite = missing.group(1).rstrip("/"), missing.group(2)
        if suite == opts.suite and uri == opts.mirror:
            return f"rootfs: suite {suite!r} not found on mirror {uri} (Release file missing)"
        return f"rootfs: apt source '{uri} {suite}' not found (Release file missing)"

    fetch = _FETCH_RE.search(log)
    if fetch:
        url, detail = fetch.group(1), fetch.group(2)
        source = _source_for(url, opts)
        reason = _network_reason(detail)
        if re.match(r"\s*\d{3}\s", detail):
            return "rootfs: download from mirror {} failed: {} ({})".format(
                source, " ".join(detail.split()), url
            )
        return f"rootfs: mirror {source} unreachable: {reason}"

    if _NOT_SIGNED_RE.search(log) or "NO_PUBKEY" in log:
        signed = _NOT_SIGNED_RE.search(log)
        where = f"{signed.group(1)} {signed.group(2)}" if signed else f"{opts.mirror} {opts.suite}"
        keys = _NO_PUBKEY_RE.findall(log)
        hint = (
            "install the Debian package 'ubuntu-keyring' or set keyring"
            if is_ubuntu_suite(opts.suite)
            else "set keyring to the archive's keyring"
        )
        return "rootfs: cannot verify the signature of {}{}; {}".format(
            where,
            " (missing key {})".format(", ".join(_unique(keys))) if keys else "",
            hint,
        )

    not_found = _unique(_NO_PACKAGE_RE.findall(log) + _NO_CANDIDATE_RE.findall(log))
    if not_found:
        return "rootfs: package(s) not found in {} on {}: {}".format(
            opts.suite, opts.mirror, ", ".join(not_found)
        )

    if "Unmet dependencies" in log or "unmet dependencies" in log:
        detail = [line.strip() for line in log.splitlines() if "Depends:" in line or "Conflicts:" in line]
        return "rootfs: package dependencies cannot be satisfied%s" % (
            ": " + "; ".join(detail[:3]) if detail else ""
        )

    errors = [line.strip() for line in log.splitlines() if line.startswith("E: ")]
    specific = [line for line in errors if not line.startswith(_GENERIC_ERRORS)]
    chosen = (specific or errors or [""])[0]
    chosen = chosen[3:] if chosen.startswith("E: ") else chosen
    if len(chosen) > 300:
        chosen = chosen[:297] + "..."
    if chosen:
        return f"rootfs: mmdebstrap failed (rc={returncode}): {chosen}"
    return f"rootfs: mmdebstrap failed (rc={returncode}); see stderr_lines"


def tail_lines(text: str, count: int = STDERR_TAIL) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


# --------------------------------------------------------------------------- running mmdebstrap


def _stop(proc: subprocess.Popen, grace: float = KILL_GRACE) -> str:
    """Stop mmdebstrap's whole process group: TERM (it unmounts and removes its tempdir), then KILL."""
    output = ""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            output += proc.communicate(timeout=wait)[0] or ""
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # whatever mmdebstrap left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return output


def run_mmdebstrap(argv: list[str], opts: RootfsOptions) -> str:
    """Run *argv*; return its output (stderr, where mmdebstrap reports) or raise BakeryError."""
    env = dict(os.environ)
    # apt's messages are parsed: keep them in English
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", LANGUAGE="")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise BakeryError(f"rootfs: cannot run {argv[0]}: {exc}", command=argv) from exc
    try:
        output = proc.communicate(timeout=opts.timeout)[0]
    except subprocess.TimeoutExpired as exc:
        output = _stop(proc)
        raise BakeryError(
            f"rootfs: mmdebstrap timed out after {opts.timeout} s building {opts.path} (raise timeout?)",
            stderr_lines=tail_lines(output),
            command=argv,
        ) from exc
    except BaseException:
        _stop(proc)
        raise
    if proc.returncode != 0:
        raise BakeryError(
            explain_failure(output, opts, proc.returncode),
            stderr_lines=tail_lines(output),
            command=argv,
            rc=proc.returncode,
        )
    return output


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)


@contextlib.contextmanager
def _partial_beside(path: str) -> Iterator[str]:
    """A temporary file beside *path*, named as the janitor knows leftovers of atomic writes
    (``.<name>.<random>.partial``) and held open meanwhile (a janitor leaves open files alone); gone afterwards
    unless the block renamed it."""
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=os.path.dirname(path)
    )
    try:
        yield tmp
    finally:
        os.close(fd)
        _remove(tmp)


# --------------------------------------------------------------------------- seeding a builder


def apt_lists_members(archive: tarfile.TarFile) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """The members of a package lists file (``apt_lists_path``) a builder may be seeded with, and their names in the
    lists directory: plain files directly in it, never ``lock``; links, directories and names with a ``/`` (one that
    climbs out of the directory, say) are left out."""
    for member in archive:
        name = member.name[2:] if member.name.startswith("./") else member.name
        if member.isreg() and name and "/" not in name and name not in (".", "..", "lock"):
            yield name, member


def _has_apt_lists(lists: str) -> bool:
    """Whether *lists* is a package lists file with something in it: the hook leaves an empty one when it could not
    write them, and a rootfs built before they were kept has none."""
    return os.path.isfile(lists) and os.path.getsize(lists) > 0


def seed_apt_lists(lists: str, root: str) -> dict[str, Any] | None:
    """Put the package lists kept beside a rootfs tarball (*lists*, ``apt_lists_path``) into the tree *root*
    unpacked from it, so that the builder's refresh before the first provisioner fetches only what changed on
    the mirror since the rootfs was built.  Only plain files directly in the lists directory (never ``lock``,
    ``apt_lists_members``), with their times (apt asks the mirror whether its files changed since them).

    None when there are none to seed (a rootfs built before they were kept, an empty file); else ``path``, the
    number of ``files`` written and, when the file could not be read whole, the ``error`` (the refresh then fetches
    what is missing: a seed is never needed)."""
    if not _has_apt_lists(lists):
        return None
    directory = os.path.join(root, APT_LISTS_DIR)
    # the tree's own directory, never a link out of it
    if not os.path.isdir(directory) or os.path.realpath(directory) != os.path.join(
        os.path.realpath(root), APT_LISTS_DIR
    ):
        return None
    result: dict[str, Any] = {"path": lists, "files": 0}
    try:
        with tarfile.open(lists, "r:") as archive:
            for name, member in apt_lists_members(archive):
                source = archive.extractfile(member)
                if source is None:
                    continue
                target = os.path.join(directory, name)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1024 * 1024)
                    os.fchmod(handle.fileno(), 0o644)
                    if os.geteuid() == 0:
                        os.fchown(handle.fileno(), 0, 0)
                os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
                result["files"] += 1
    except (OSError, tarfile.TarError, EOFError) as exc:
        result["error"] = str(exc)
    return result


def _as_kept(name: str, member: tarfile.TarInfo) -> bool:
    """Whether *member* of a package lists file is as the hook writes them: a plain file by its plain name, root's,
    mode 0644, nothing in pax headers (an extended attribute, say)."""
    return (
        member.name == name
        and member.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
        and member.uid == member.gid == 0
        and member.mode & 0o7777 == 0o644
        and not member.pax_headers
    )


@contextlib.contextmanager
def apt_lists_archive(lists: str) -> Iterator[tuple[dict[str, Any] | None, IO[bytes] | None]]:
    """The package lists kept beside a rootfs tarball (*lists*, ``apt_lists_path``) as a tar to unpack into a
    builder's lists directory (a build container: Docker's put_archive), with what ``seed_apt_lists`` puts into a
    tree: the same files (``apt_lists_members``) by their plain names, root's, mode 0644, with their times.  That is
    the file itself when it holds nothing else (as the hook writes it), else a copy of those files in a temporary
    file.

    Yields the result and the archive, open at its start: None and None when there are none (no file, an empty
    one); ``path`` and the number of ``files`` in it; or, when the file could not be read whole, ``files`` 0, the
    ``error`` and no archive (a half file would seed a half list, and the refresh fetches them all without one)."""
    if not _has_apt_lists(lists):
        yield None, None
        return
    with contextlib.ExitStack() as stack:
        data: IO[bytes] | None
        try:
            archive = stack.enter_context(tarfile.open(lists, "r:"))
            # every header read: a file cut short fails here, before anything is sent
            members = list(apt_lists_members(archive))
            if len(members) == len(archive.getmembers()) and all(_as_kept(n, m) for n, m in members):
                data = stack.enter_context(open(lists, "rb"))
            else:
                data = stack.enter_context(tempfile.TemporaryFile())
                with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as packed:
                    for name, member in members:
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = member.size, member.mtime, 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = "root"
                        packed.addfile(info, archive.extractfile(member))
                data.seek(0)
            result: dict[str, Any] = {"path": lists, "files": len(members)}
        except (OSError, tarfile.TarError, EOFError) as exc:
            data, result = None, {"path": lists, "files": 0, "error": str(exc)}
        yield result, data


# --------------------------------------------------------------------------- the bake


def up_to_date(opts: RootfsOptions, fp: str, sidecar: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the tarball at opts.path is the one *fp* describes, and if not, why."""
    if sidecar is None:
        if os.path.exists(opts.path):
            return False, "tarball has no sidecar"
        return False, "tarball does not exist"
    if sidecar.get("fingerprint") != fp:
        return False, "inputs changed"
    try:
        size = os.path.getsize(opts.path)
    except OSError:
        return False, "tarball does not exist"
    if sidecar.get("size") != size:
        return False, "tarball size differs from its sidecar"
    if opts.verify and sidecar.get("sha256") != digest_file(opts.path):
        return False, "tarball sha256 differs from its sidecar"
    return True, "up to date"


def _previous_inputs(sidecar: dict[str, Any] | None) -> dict[str, str] | None:
    if not sidecar or not isinstance(sidecar.get("inputs"), dict):
        return None
    return {str(key): str(value) for key, value in sidecar["inputs"].items()}


def bake_rootfs(params: Mapping[str, Any], check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
    """Build the tarball unless an identical one exists; the module's whole result."""
    started = time.monotonic()
    opts = parse_options(params)
    inputs = compute_inputs(opts)
    fp = fingerprint(inputs)
    sidecar = read_sidecar(opts.path)
    previous = _previous_inputs(sidecar)
    changed_names = changed_inputs(previous, inputs)
    current, reason = up_to_date(opts, fp, sidecar)

    result: dict[str, Any] = {
        "path": opts.path,
        "fingerprint": fp,
        "inputs": inputs,
        "changed_inputs": [] if current else changed_names,
        "command": build_command(
            opts, opts.path, busybox=initramfs_busybox(opts), lists=apt_lists_path(opts.path)
        ),
        "sha256": (sidecar or {}).get("sha256") if current else None,
        "size": (sidecar or {}).get("size") if current else None,
    }
    if diff:
        before = (sidecar or {}).get("options") or (previous or {})
        result["diff"] = {
            "before_header": f"{opts.path} (existing)",
            "after_header": f"{opts.path} (wanted)",
            "before": before if sidecar else {},
            "after": describe(opts),
        }

    if current and not opts.force:
        result.update(changed=False, msg=f"rootfs {opts.path} is up to date")
        return _finish(result, started)

    why = _why(reason, changed_names, opts.force and current)
    if check_mode:
        result.update(changed=True, msg=f"would build rootfs: {why}")
        return _finish(result, started)

    mmdebstrap = find_mmdebstrap()
    check_compressor(opts.format)
    with file_lock(opts.path):
        # another target may have built it while this one waited for the lock
        sidecar = read_sidecar(opts.path)
        current, reason = up_to_date(opts, fp, sidecar)
        if current and not opts.force:
            result.update(
                changed=False,
                changed_inputs=[],
                sha256=sidecar.get("sha256") if sidecar else None,
                size=sidecar.get("size") if sidecar else None,
                msg=f"rootfs {opts.path} is up to date (built by another task)",
            )
            return _finish(result, started)
        built = _build(opts, mmdebstrap, fp, inputs)
    result.update(built)
    result.update(changed=True, msg=f"built rootfs: {why}")
    return _finish(result, started)


def _why(reason: str, changed_names: list[str], forced: bool) -> str:
    if forced:
        return "force=true"
    if reason == "inputs changed":
        return "inputs changed: {}".format(", ".join(changed_names))
    return reason


def _build(opts: RootfsOptions, mmdebstrap: str, fp: str, inputs: dict[str, str]) -> dict[str, Any]:
    builder = mmdebstrap_version(mmdebstrap)
    lists = apt_lists_path(opts.path)
    with Steps() as steps:
        with atomic_output(opts.path) as tmp, _partial_beside(lists) as lists_tmp:
            # mmdebstrap picks the compressor from the name: keep the tarball's ending
            target = tmp + opts.extension
            steps.add_undo(f"remove partial tarball {target}", lambda: _remove(target))
            argv = build_command(opts, target, mmdebstrap, busybox=initramfs_busybox(opts), lists=lists_tmp)
            steps.run("mmdebstrap", lambda: run_mmdebstrap(argv, opts))
            if not os.path.isfile(target) or os.path.getsize(target) == 0:
                raise BakeryError(
                    f"rootfs: mmdebstrap succeeded but wrote no tarball to {target}", command=argv
                )
            os.replace(target, tmp)
            sha256 = digest_file(tmp)
            size = os.path.getsize(tmp)
            # the old tarball's lists go with it; the new ones (none when the hook could not write them) come
            # with the new tarball, before its sidecar marks it final
            _remove(lists)
            if os.path.isfile(lists_tmp) and os.path.getsize(lists_tmp) > 0:
                os.chmod(lists_tmp, 0o644)
                os.replace(lists_tmp, lists)
        write_sidecar(
            opts.path,
            {
                "fingerprint": fp,
                "inputs": inputs,
                "options": describe(opts),
                "sha256": sha256,
                "size": size,
                "suite": opts.suite,
                "architecture": opts.architecture,
                "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "builder": builder,
            },
        )
    return {"sha256": sha256, "size": size, "command": argv}


def _finish(result: dict[str, Any], started: float) -> dict[str, Any]:
    result["duration"] = round(time.monotonic() - started, 3)
    return result


def module_action(module: Any) -> dict[str, Any]:
    """Entry point for ``_module.run``."""
    return bake_rootfs(module.params, check_mode=module.check_mode, diff=module._diff)
