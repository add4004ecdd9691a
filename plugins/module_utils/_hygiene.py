# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image hygiene: what must not leave in a disk or cloud image, checked on its root directory.

:func:`check` looks at a tree (an unpacked, provisioned root filesystem on the build host, or ``/`` of a builder
VM before it powers off) without mounting or entering it. Paths are the image's own (``/etc/machine-id``);
symbolic links are never followed out of the tree: the few named files are resolved as in a chroot
(``_standin._inside``), and the one walk of the tree (world-writable files, the size of ``/var/log``) follows
no link at all. Each check has a name (:data:`CHECKS`), can be skipped by it, and gives a result::

    {"name": "ssh_host_keys", "status": "failed", "ok": False, "count": 2,
     "findings": ["/etc/ssh/ssh_host_ed25519_key", ...], "detail": "", "fix": "rm -f /etc/ssh/ssh_host_*; ..."}

``status`` is ``passed``, ``failed`` or ``skipped`` (by name, or not applicable, ``detail`` says why); ``ok``
is false only for ``failed``; ``findings`` holds at most :data:`FINDINGS_SHOWN` paths, ``count`` all of them.

:func:`generalize` removes, before the checks, what makes a builder this one machine and lets the builder in: its
key in ``authorized_keys``, the SSH host keys, the machine id, and (on the live system) cloud-init's state.

The markers of the files bakery puts into a tree only while it is provisioned (:data:`POLICY_RC_MARKER`,
:data:`RESOLV_CONF_MARKER`) live here, where they are recognised; ``_qemu_disk.unpack`` writes them.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils import _files, _standin
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

CHECKS: tuple[str, ...] = (
    "ssh_host_keys",
    "machine_id",
    "builder_key",
    "shell_history",
    "apt_lists",
    "provisioning_leftovers",
    "core_dumps",
    "var_log_size",
    "world_writable",
)
MIB = 1024 * 1024
VAR_LOG_MAX = 64 * MIB
FINDINGS_SHOWN = 20
PACKAGE_LISTS = ("refresh", "keep")

# what bakery writes into a tree only while it is provisioned (_qemu_disk.unpack), recognised by these lines
POLICY_RC_MARKER = "# bakery: no service starts in a chroot"
RESOLV_CONF_MARKER = "# bakery: the build host's resolv.conf while the tree is provisioned"

HISTORY_FILES = (
    ".bash_history",
    ".zsh_history",
    ".histfile",
    ".sh_history",
    ".ash_history",
    ".python_history",
    ".lesshst",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".node_repl_history",
    ".viminfo",
    ".local/share/fish/fish_history",
)
# directories the walk never enters: other file systems in a booted guest, and what is meant to be writable
NOT_WALKED = ("proc", "sys", "dev", "run")
WRITABLE_ANYWHERE = ("tmp", "var/tmp")
_CORE_RE = re.compile(r"^core(\.\d+)?$")

FIXES = {
    "ssh_host_keys": "remove them (rm -f /etc/ssh/ssh_host_*); every machine must make its own at first boot "
    "(bakery's disks do, with a first-boot unit)",
    "machine_id": "empty /etc/machine-id (: > /etc/machine-id) and remove /var/lib/dbus/machine-id (or make it a "
    "link to /etc/machine-id); systemd makes a new id at first boot",
    "builder_key": "remove the builder's key from these authorized_keys files before capture",
    "shell_history": "remove the history files (a role's last task, or unset HISTFILE in its shell scripts)",
    "apt_lists": "run apt-get clean and rm -rf /var/lib/apt/lists/* after installing packages "
    "(bake.package_lists: refresh does it after the last provisioner)",
    "provisioning_leftovers": "these are bakery's build-time files: a failed cleanup or a role that copied them "
    "left them; remove them, and do not copy /etc/resolv.conf or policy-rc.d while provisioning",
    "core_dumps": "remove the core files and find out why the program crashed",
    "var_log_size": "truncate or remove the logs the roles made (or raise hygiene.var_log_max)",
    "world_writable": "chmod o-w these files (only /tmp and /var/tmp are for everyone to write)",
}


@dataclass
class Options:
    """Which checks run and their parameters."""

    skip: frozenset[str] = frozenset()
    var_log_max: int = VAR_LOG_MAX
    builder_key: str | None = None
    package_lists: str = "refresh"

    def describe(self) -> dict[str, Any]:
        """What decides the results of a tree, for the fingerprint (the builder key is a per-bake value)."""
        return {"skip": sorted(self.skip), "var_log_max": self.var_log_max}


def parse_size(value: Any, what: str = "var_log_max") -> int:
    """Bytes from ``64M``, ``64MiB``, ``1.5G`` or a number of bytes (binary units)."""
    return _files.parse_size(value, what, "64M")


def check_names(names: Iterable[Any], what: str = "hygiene.skip") -> frozenset[str]:
    """*names* as a set, every one a known check; an unknown one is refused with the list of known ones."""
    names = [str(name) for name in names or []]
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise BakeryError(
            "%s: unknown check%s %s; the checks are %s"
            % (what, "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(CHECKS))
        )
    return frozenset(names)


def parse_options(params: Mapping[str, Any] | None) -> Options:
    """Options from a module's or a target's ``hygiene`` parameters (missing or None values: the defaults)."""
    params = params or {}
    package_lists = params.get("package_lists") or "refresh"
    if package_lists not in PACKAGE_LISTS:
        raise BakeryError("package_lists %r: choose one of %s" % (package_lists, ", ".join(PACKAGE_LISTS)))
    var_log_max = params.get("var_log_max")
    return Options(
        skip=check_names(params.get("skip") or []),
        var_log_max=VAR_LOG_MAX if var_log_max in (None, "") else parse_size(var_log_max),
        builder_key=str(params.get("builder_key") or "").strip() or None,
        package_lists=package_lists,
    )


# ---------------------------------------------------------------- the tree


def _path(root: str, image_path: str) -> str:
    """The host path of the image's *image_path*, its links resolved as in a chroot (never outside *root*).
    A path ending in ``/`` names a directory, whose own link is followed too; else the last component is not."""
    if image_path.endswith("/"):
        return os.path.dirname(_standin._inside(root, image_path + "x"))
    return _standin._inside(root, image_path)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_file(path: str) -> bool:
    info = _lstat(path)
    return info is not None and stat.S_ISREG(info.st_mode)


def _read(path: str, limit: int = 1 << 20) -> str:
    """The text of a regular file (not a link), at most *limit* bytes; empty when it cannot be read."""
    if not _is_file(path):
        return ""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _names(directory: str) -> list[str]:
    info = _lstat(directory)
    if info is None or not stat.S_ISDIR(info.st_mode):
        return []
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def homes(root: str) -> list[str]:
    """``/root`` and every ``/home/*`` directory of the image (image paths)."""
    found = ["/root"]
    for name in _names(_path(root, "/home/")):
        info = _lstat(_path(root, "/home/" + name + "/"))
        if info is not None and stat.S_ISDIR(info.st_mode):
            found.append("/home/" + name)
    return found


@dataclass
class _Walk:
    """What the one walk of the tree gathers."""

    world_writable: list[str] = field(default_factory=list)
    var_log: list[tuple[int, str]] = field(default_factory=list)


def _walk(root: str, want_writable: bool, want_log: bool) -> _Walk:
    """One walk of the tree, no link followed, not into /proc, /sys, /dev or /run."""
    found = _Walk()
    seen: set[tuple[int, int]] = set()
    real_root = os.path.realpath(root)

    def visit(directory: str, image_dir: str, in_log: bool, writable_ok: bool) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            image_path = image_dir.rstrip("/") + "/" + entry.name
            relative = image_path.lstrip("/")
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if image_dir == "/" and entry.name in NOT_WALKED:
                    continue
                log = in_log or relative == "var/log"
                if not (want_writable or log or relative in ("var",)):
                    continue
                visit(entry.path, image_path, log, writable_ok or relative in WRITABLE_ANYWHERE)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # links, devices, sockets, fifos
            if want_writable and not writable_ok and info.st_mode & stat.S_IWOTH:
                found.world_writable.append(image_path)
            if want_log and in_log:
                key = (info.st_dev, info.st_ino)
                if info.st_nlink > 1:
                    if key in seen:
                        continue
                    seen.add(key)
                found.var_log.append((info.st_blocks * 512, image_path))

    visit(real_root, "/", False, False)
    return found


# ---------------------------------------------------------------- the checks


def _ssh_host_keys(root: str, options: Options) -> tuple[list[str], str]:
    directory = _path(root, "/etc/ssh/")
    return ["/etc/ssh/" + name for name in _names(directory) if name.startswith("ssh_host_")], ""


def _machine_id(root: str, options: Options) -> tuple[list[str], str]:
    findings = []
    path = _path(root, "/etc/machine-id")
    info = _lstat(path)
    if info is not None:
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            findings.append("/etc/machine-id (not a regular file)")
        elif _read(path).strip() not in ("", "uninitialized"):
            findings.append("/etc/machine-id")
    dbus = _path(root, "/var/lib/dbus/machine-id")
    info = _lstat(dbus)
    if info is not None:
        if not stat.S_ISLNK(info.st_mode):
            findings.append("/var/lib/dbus/machine-id")
        elif os.path.normpath(os.path.join("/var/lib/dbus", os.readlink(dbus))) != "/etc/machine-id":
            findings.append("/var/lib/dbus/machine-id (a link to %s)" % os.readlink(dbus))
    return findings, ""


def key_body(key: str) -> str:
    """The base64 body of an OpenSSH public key line (``type body comment``), or the line itself."""
    words = key.split()
    for index, word in enumerate(words[:-1]):
        if word.startswith(("ssh-", "ecdsa-", "sk-")):
            return words[index + 1]
    return words[0] if words else ""


def _builder_key(root: str, options: Options) -> tuple[list[str], str]:
    if not options.builder_key:
        return [], "no builder key given"
    body = key_body(options.builder_key)
    findings = []
    for home in homes(root):
        for name in ("authorized_keys", "authorized_keys2"):
            image_path = home + "/.ssh/" + name
            text = _read(_path(root, image_path))
            if any(body in line.split() for line in text.splitlines()):
                findings.append(image_path)
    return findings, ""


def _shell_history(root: str, options: Options) -> tuple[list[str], str]:
    findings = []
    for home in homes(root):
        for name in HISTORY_FILES:
            image_path = home + "/" + name
            info = _lstat(_path(root, image_path))
            if info is not None and stat.S_ISREG(info.st_mode) and info.st_size > 0:
                findings.append(image_path)
    return findings, ""


def _apt_lists(root: str, options: Options) -> tuple[list[str], str]:
    findings = []
    lists = _path(root, "/var/lib/apt/lists/")
    for directory, dirs, files in os.walk(lists):  # links are not followed
        if directory == lists:
            dirs[:] = [name for name in dirs if name != "partial"]
            files = [name for name in files if name != "lock"]
        relative = os.path.relpath(directory, lists)
        findings += [os.path.normpath("/var/lib/apt/lists/%s/%s" % (relative, name)) for name in files]
    for directory in ("/var/cache/apt/archives", "/var/cache/apt/archives/partial"):
        findings += [
            directory + "/" + name
            for name in _names(_path(root, directory + "/"))
            if name.endswith(".deb") and _is_file(_path(root, directory + "/" + name))
        ]
    findings += [
        "/var/cache/apt/" + name
        for name in _names(_path(root, "/var/cache/apt/"))
        if name.endswith(".bin") and _is_file(_path(root, "/var/cache/apt/" + name))
    ]
    return findings, ""


def _provisioning_leftovers(root: str, options: Options) -> tuple[list[str], str]:
    findings = []
    if POLICY_RC_MARKER in _read(_path(root, "/usr/sbin/policy-rc.d")):
        findings.append("/usr/sbin/policy-rc.d (bakery's, for the build)")
    if RESOLV_CONF_MARKER in _read(_path(root, "/etc/resolv.conf")):
        findings.append("/etc/resolv.conf (the build host's, for the build)")
    for image_path in (_standin.LIB_DIR, _standin.STATE_DIR):
        if _lstat(_path(root, image_path)) is not None:
            findings.append(image_path)
    links = _path(root, _standin.LINK_DIR + "/")
    for name in _names(links):
        path = os.path.join(links, name)
        if os.path.islink(path) and os.readlink(path) == _standin.SCRIPT_PATH:
            findings.append(_standin.LINK_DIR + "/" + name)
    return findings, ""


def _core_dumps(root: str, options: Options) -> tuple[list[str], str]:
    findings = []
    for directory in ("/", "/root", "/tmp"):
        host = _path(root, directory + "/")
        for name in _names(host):
            if _CORE_RE.match(name) and _is_file(os.path.join(host, name)):
                findings.append(directory.rstrip("/") + "/" + name)
    for directory in ("/var/crash", "/var/lib/systemd/coredump"):
        host = _path(root, directory + "/")
        findings += [
            directory + "/" + name for name in _names(host) if not os.path.isdir(os.path.join(host, name))
        ]
    return findings, ""


def _human(size: float) -> str:
    return "%.1f MiB" % (size / MIB)


def _var_log_size(walk: _Walk, options: Options) -> tuple[list[str], str]:
    total = sum(item[0] for item in walk.var_log)
    detail = "/var/log holds %s (limit %s)" % (_human(total), _human(options.var_log_max))
    if total <= options.var_log_max:
        return [], detail
    largest = sorted(walk.var_log, key=lambda item: (-item[0], item[1]))
    return ["%s (%s)" % (path, _human(size)) for size, path in largest if size > 0], detail


def _result(name: str, status: str, findings: list[str] | None = None, detail: str = "") -> dict[str, Any]:
    findings = findings or []
    return {
        "name": name,
        "status": status,
        "ok": status != "failed",
        "count": len(findings),
        "findings": findings[:FINDINGS_SHOWN],
        "detail": detail,
        "fix": FIXES[name] if status == "failed" else "",
    }


_FILE_CHECKS: dict[str, Callable[[str, Options], tuple[list[str], str]]] = {
    "ssh_host_keys": _ssh_host_keys,
    "machine_id": _machine_id,
    "builder_key": _builder_key,
    "shell_history": _shell_history,
    "apt_lists": _apt_lists,
    "provisioning_leftovers": _provisioning_leftovers,
    "core_dumps": _core_dumps,
}


def check(
    root: str, options: Options | Mapping[str, Any] | None = None, fixed: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Every check of :data:`CHECKS` on the tree at *root*, in that order. Findings among *fixed* do not count
    (what :func:`generalize` would remove, in check mode)."""
    fixed = frozenset(fixed)
    if not isinstance(options, Options):
        options = parse_options(options)
    if not os.path.isdir(root):
        raise BakeryError("hygiene: %s is not a directory" % root)
    active = [name for name in CHECKS if name not in options.skip]
    walk = _walk(root, "world_writable" in active, "var_log_size" in active)
    results = []
    for name in CHECKS:
        if name in options.skip:
            results.append(_result(name, "skipped", detail="skipped by name (hygiene.skip)"))
            continue
        if name == "apt_lists" and options.package_lists == "keep":
            results.append(
                _result(name, "skipped", detail="not applicable: the bake keeps the package lists")
            )
            continue
        if name == "var_log_size":
            findings, detail = _var_log_size(walk, options)  # the largest first
        elif name == "world_writable":
            findings, detail = sorted(walk.world_writable), ""
        else:
            findings, detail = _FILE_CHECKS[name](root, options)
            findings = sorted(finding for finding in findings if finding not in fixed)
        results.append(_result(name, "failed" if findings else "passed", findings, detail))
    return results


# ---------------------------------------------------------------- generalize

# where generalize looks for cloud-init in the image (run only on the live system)
CLOUD_INIT = ("/usr/bin/cloud-init", "/usr/local/bin/cloud-init", "/bin/cloud-init")


def _without_key(path: str, body: str, check_mode: bool) -> bool:
    """Remove the lines holding the key *body* from the regular file *path*, in place (its owner, mode and
    inode stay); the file goes when nothing is left. Whether it held the key."""
    if not _is_file(path):
        return False
    with open(path, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    wanted = body.encode("ascii", errors="replace")
    kept = [line for line in lines if wanted not in line.split()]
    if len(kept) == len(lines):
        return False
    if check_mode:
        return True
    rest = b"".join(kept)
    if rest.strip():
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as handle:
            handle.write(rest)
    else:
        os.unlink(path)
    return True


def _empty_machine_id(path: str) -> None:
    """``/etc/machine-id`` emptied in place; a link or other non-directory in its place becomes an empty file."""
    info = _lstat(path)
    if info is not None and stat.S_ISREG(info.st_mode):
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW))
        return
    if info is not None and stat.S_ISDIR(info.st_mode):
        return  # not bakery's to fix: the check names it
    if info is not None:
        os.unlink(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444))


def _cloud_init(root: str) -> str | None:
    """The host path of the image's cloud-init command, or None."""
    for image_path in CLOUD_INIT:
        path = _path(root, image_path)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def generalize(root: str, builder_key: str | None, live: bool, check_mode: bool = False) -> dict[str, Any]:
    """Make the tree at *root* any machine's, before the checks: the builder's key *builder_key* leaves every
    ``authorized_keys`` and ``authorized_keys2`` of ``/root`` and ``/home/*`` (other keys stay; a file left
    without any line goes), the SSH host keys go, ``/etc/machine-id`` is emptied, ``/var/lib/dbus/machine-id``
    goes (a link to ``/etc/machine-id`` stays), and ``cloud-init clean --logs`` runs when the image has
    cloud-init and *live* says *root* is the running system (never a tree's command otherwise). Check mode
    changes nothing and tells what would go.

    Returns the image paths found, by check name (``builder_key``, ``ssh_host_keys``, ``machine_id``: the
    findings of those checks that were fixed), and ``cloud_init`` (whether it was cleaned)."""
    if not os.path.isdir(root):
        raise BakeryError("hygiene: %s is not a directory" % root)
    options = Options(builder_key=str(builder_key or "").strip() or None)
    removed: dict[str, Any] = {}
    keys = _builder_key(root, options)[0] if options.builder_key else []
    body = key_body(options.builder_key or "")
    removed["builder_key"] = sorted(
        image_path for image_path in keys if _without_key(_path(root, image_path), body, check_mode)
    )
    host_keys = sorted(_ssh_host_keys(root, options)[0])
    if not check_mode:
        for image_path in host_keys:
            path = _path(root, image_path)
            if not os.path.isdir(path) or os.path.islink(path):
                os.unlink(path)
    removed["ssh_host_keys"] = host_keys
    identity = sorted(_machine_id(root, options)[0])
    if not check_mode:
        for finding in identity:
            if finding.startswith("/etc/machine-id"):
                _empty_machine_id(_path(root, "/etc/machine-id"))
            else:
                os.unlink(_path(root, "/var/lib/dbus/machine-id"))
    removed["machine_id"] = identity
    command = _cloud_init(root) if live else None
    removed["cloud_init"] = command is not None
    if command is not None and not check_mode:
        done = subprocess.run([command, "clean", "--logs"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BakeryError(
                "hygiene: cloud-init clean --logs failed (exit %d): %s"
                % (done.returncode, (done.stderr or done.stdout).strip()[-2000:]),
                generalized=removed,
            )
    if live and not check_mode and any(removed.values()):
        os.sync()
    return removed


def generalized_paths(removed: Mapping[str, Any]) -> list[str]:
    """The findings :func:`generalize` fixed (or would fix), as one list."""
    return [
        path for name in ("builder_key", "ssh_host_keys", "machine_id") for path in removed.get(name) or []
    ]


def passed(results: Iterable[Mapping[str, Any]]) -> bool:
    return all(result.get("ok", True) for result in results)


def failure_message(results: Iterable[Mapping[str, Any]], what: str = "the image") -> str:
    """One message with every finding (up to :data:`FINDINGS_SHOWN` a check) of every failed check."""
    failed = [result for result in results if not result.get("ok", True)]
    lines = [
        "hygiene: %d check%s failed for %s (%s); skip one by name with hygiene.skip"
        % (len(failed), "" if len(failed) == 1 else "s", what, ", ".join(r["name"] for r in failed))
    ]
    for result in failed:
        shown = list(result.get("findings") or [])
        more = int(result.get("count") or len(shown)) - len(shown)
        lines.append(
            "  %s: %s%s%s"
            % (
                result["name"],
                ", ".join(shown),
                " and %d more" % more if more > 0 else "",
                " (%s)" % result["detail"] if result.get("detail") else "",
            )
        )
        lines.append("    fix: %s" % result.get("fix", ""))
    return "\n".join(lines)
