# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Builder VMs: a disk image booted by qemu-system-x86_64, reachable by SSH on 127.0.0.1.

This is Packer's qemu builder without its SSH proxy: user-mode networking forwards a free port on
127.0.0.1 to the guest's port 22, a per-bake ed25519 key gets in through a cloud-init NoCloud seed
(or was put into the image by the caller), and the module returns what ``add_host`` needs.

Every VM has a work directory (``bakery-vm-<bake id>-<target>`` by default) holding its state file,
serial console log, QMP socket, throw-away overlay, cloud-init seed, UEFI variables and key pair.
``stop`` works from that directory alone.

qemu must never outlive the bake, but the module returns while qemu keeps running across plays.  So
qemu is started by a detached supervisor (a fork of the module, in its own session) that watches
the ansible-playbook process: when that disappears (finished, failed, Ctrl-C, SIGKILL) the
supervisor stops qemu and removes the work directory; it exits when qemu exits.  qemu itself gets
SIGTERM should the supervisor die (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils import _files, _libvirt, _qemu_arch, _qemu_disk
from ansible_collections.bakery.images.plugins.module_utils._files import check_raw_disk, write_json_atomic
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import new_bake_id
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    Selector,
    act,
    record,
    split_name,
)

ACCELERATORS = ("kvm", "tcg", "xen")
DEFAULT_ACCELERATORS = "kvm:tcg"
FIRMWARES = ("bios", "uefi")
DISK_FORMATS = ("auto", "qcow2", "raw")
SHUTDOWN_METHODS = ("auto", "ssh", "acpi", "kill")
# (code, vars) pairs, first existing wins: Debian/Ubuntu (package ovmf), then Fedora/RHEL (edk2-ovmf)
OVMF_PAIRS = _qemu_arch.AMD64.firmware_pairs
QCOW2_MAGIC = b"QFI\xfb"

# file names inside the work directory (qemu runs there, so its arguments use these relative names)
STATE_FILE = "state.json"
SERIAL_LOG = "serial.log"
QEMU_LOG = "qemu.log"
QMP_SOCKET = "qmp.sock"
OVERLAY = "overlay.qcow2"
SEED = "seed.img"
UEFI_VARS = "efivars.fd"
KEY = "id_ed25519"
# in the work directory: the VM runs on after the ansible-playbook that started it (a failed bake kept it)
KEEP_MARKER = "keep"
WORKDIR_PREFIX = "bakery-vm-"

SSH_PORT_ATTEMPTS = 5
QEMU_READY_TIMEOUT = 60.0
SUPERVISOR_POLL = 0.5
TERM_GRACE = 10.0
SERIAL_TAIL = 30
SERIAL_TAIL_IN_MSG = 8
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the processes whose end is the end of the bake when the module finds its watch_pid itself
ANSIBLE_PROGRAMS = frozenset({"ansible-playbook", "ansible", "ansible-console"})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PUBLIC_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")
_HOSTFWD_ERROR = "host forwarding rule"


# --------------------------------------------------------------------------- options


@dataclass
class VmOptions:
    """What ``start`` needs, validated, with defaults resolved (paths absolute)."""

    disk: str
    workdir: str
    bake_id: str
    target: str
    disk_format: str = "auto"
    overlay: bool = True
    accelerators: list[str] = field(default_factory=lambda: ["kvm", "tcg"])
    memory: int = 1024
    cpus: int = 2
    cpu: str = "max"
    machine: str = "q35"
    firmware: str = "bios"
    uefi_code: str | None = None
    uefi_vars: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    user: str = "root"
    python: str = "/usr/bin/python3"
    cloud_init: bool = True
    credential: bool = False
    hostname: str | None = None
    public_key: str | None = None
    private_key: str | None = None
    boot_timeout: int = 300
    wait_for_ssh: bool = True
    keep_workdir: bool = False
    watch_pid: int | None = None
    qemu_binary: str = "qemu-system-x86_64"
    qemu_args: list[str] = field(default_factory=list)
    # the guest's Debian architecture: the defaults of binary, machine, cpu, firmware, accelerators, boot_timeout
    architecture: str = _qemu_arch.DEFAULT

    @property
    def name(self) -> str:
        """qemu's ``-name``: what ``ps`` shows, and what a janitor looks for."""
        return vm_name(self.bake_id, self.target)


def vm_name(bake_id: str, target: str) -> str:
    return "bakery-%s-%s" % (bake_id, target)


def check_name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise BakeryError(
            "qemu_vm: %s %r is not valid: use 1 to 63 letters, digits, '.', '-' or '_', starting with a "
            "letter or digit" % (kind, value)
        )
    return value


def default_workdir(bake_id: str, target: str, root: str | None = None) -> str:
    """``<tmp>/bakery-vm-<bake id>-<target>``: the name says which bake left it, for a janitor."""
    return os.path.join(root or tempfile.gettempdir(), "%s%s-%s" % (WORKDIR_PREFIX, bake_id, target))


def parse_accelerators(value: str | Sequence[str]) -> list[str]:
    """``kvm:tcg`` or ``[kvm, tcg]`` -> ``["kvm", "tcg"]``: the accelerators qemu tries, in order."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(":")]
    else:
        items = [str(item).strip() for item in value]
        if len(items) == 1 and ":" in items[0]:
            return parse_accelerators(items[0])
    if not items or any(not item for item in items):
        raise BakeryError("qemu_vm: accelerator %r is empty or has an empty entry" % (value,))
    unknown = [item for item in items if item not in ACCELERATORS]
    if unknown:
        raise BakeryError(
            "qemu_vm: unknown accelerator %s in %r: use %s, in the order to try them (e.g. kvm:tcg)"
            % (", ".join(unknown), value, ", ".join(ACCELERATORS))
        )
    if len(set(items)) != len(items):
        raise BakeryError("qemu_vm: accelerator %r names one accelerator twice" % (value,))
    return items


def _existing_file(kind: str, path: str | None) -> str | None:
    if path is None:
        return None
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise BakeryError("qemu_vm: %s %s does not exist or is not a file" % (kind, path), path=path)
    return path


def uefi_firmware(
    code: str | None, vars_template: str | None, arch: _qemu_arch.Arch = _qemu_arch.AMD64
) -> tuple[str, str]:
    """The UEFI code (read-only) and variables template to copy (OVMF; AAVMF for arm64); given ones win over
    the defaults."""
    if code and vars_template:
        return _existing_file("uefi_code", code) or code, _existing_file("uefi_vars", vars_template) or ""
    for default_code, default_vars in arch.firmware_pairs:
        if os.path.isfile(code or default_code) and os.path.isfile(vars_template or default_vars):
            return os.path.abspath(code or default_code), os.path.abspath(vars_template or default_vars)
    raise BakeryError(
        "qemu_vm: firmware uefi needs %s, which was not found (looked for %s): install the Debian "
        "package %s, or give uefi_code and uefi_vars"
        % (arch.firmware_name, ", ".join(pair[0] for pair in arch.firmware_pairs), arch.firmware_package)
    )


def _int_or(value: Any, default: int) -> int:
    return default if value is None else int(value)


def check_disk(disk: str, disk_format: str) -> None:
    """The disk to boot is a qcow2 image or whole sectors of a raw one (not a text file or a cut-off copy)."""
    is_qcow2 = detect_format(disk) == "qcow2"
    if disk_format == "qcow2" and not is_qcow2:
        raise BakeryError("qemu_vm: disk %s is not a qcow2 image (disk_format is qcow2)" % disk)
    if not is_qcow2:
        check_raw_disk(disk, "qemu_vm: disk")


def parse_options(params: Mapping[str, Any]) -> VmOptions:
    """Validate the module parameters of ``action=start``."""
    if not params.get("disk"):
        raise BakeryError("qemu_vm: action=start needs disk (the image to boot)")
    bake_id = check_name("bake_id", params.get("bake_id") or new_bake_id())
    target = check_name("target", params.get("target") or "vm")
    disk = _existing_file("disk", params["disk"]) or ""
    check_disk(disk, params.get("disk_format") or "auto")
    user = params.get("user") or "root"
    if not _USER_RE.match(user):
        raise BakeryError("qemu_vm: user %r is not a valid user name" % user)
    # 0 is a value to refuse, not a missing one
    memory, cpus = _int_or(params.get("memory"), 1024), _int_or(params.get("cpus"), 2)
    if memory < 128:
        raise BakeryError("qemu_vm: memory is in MiB and must be at least 128 (got %d)" % memory)
    if cpus < 1:
        raise BakeryError("qemu_vm: cpus must be at least 1 (got %d)" % cpus)
    arch = _qemu_arch.get(params.get("architecture"))
    try:
        _qemu_arch.check_firmware(arch.name, params.get("firmware"))
    except BakeryError as exc:
        raise BakeryError("qemu_vm: %s" % exc.msg) from None
    # a guest of another architecture than the host's is emulated (TCG): KVM cannot run it
    accelerators = DEFAULT_ACCELERATORS if arch.name == _qemu_arch.host() else "tcg"
    boot_timeout = _int_or(params.get("boot_timeout"), arch.boot_timeout)
    if boot_timeout < 1:
        raise BakeryError("qemu_vm: boot_timeout must be at least 1 second")
    kernel = _existing_file("kernel", params.get("kernel"))
    initrd = _existing_file("initrd", params.get("initrd"))
    if (initrd or params.get("append")) and not kernel:
        raise BakeryError("qemu_vm: initrd and append are for direct kernel boot and need kernel")
    public_key = (params.get("public_key") or "").strip() or None
    if public_key is not None and not _PUBLIC_KEY_RE.match(public_key):
        raise BakeryError("qemu_vm: public_key is not an OpenSSH public key line (ssh-ed25519 AAAA...)")
    private_key = _existing_file("private_key", params.get("private_key"))
    if public_key and not private_key:
        raise BakeryError("qemu_vm: public_key needs private_key, the key the module logs in with")
    watch_pid = params.get("watch_pid")
    if watch_pid is not None and int(watch_pid) < 2:
        raise BakeryError("qemu_vm: watch_pid must be a process id (> 1)")
    workdir = params.get("workdir") or default_workdir(bake_id, target)
    return VmOptions(
        disk=disk,
        workdir=os.path.abspath(workdir),
        bake_id=bake_id,
        target=target,
        disk_format=params.get("disk_format") or "auto",
        overlay=bool(params.get("overlay", True)),
        accelerators=parse_accelerators(params.get("accelerator") or accelerators),
        memory=memory,
        cpus=cpus,
        cpu=params.get("cpu") or arch.cpu,
        machine=params.get("machine") or arch.machine,
        firmware=params.get("firmware") or arch.firmware_only or "bios",
        uefi_code=params.get("uefi_code"),
        uefi_vars=params.get("uefi_vars"),
        kernel=kernel,
        initrd=initrd,
        append=params.get("append"),
        user=user,
        python=params.get("python") or "/usr/bin/python3",
        cloud_init=bool(params.get("cloud_init", True)),
        credential=bool(params.get("credential", False)),
        hostname=params.get("hostname"),
        public_key=public_key,
        private_key=private_key,
        boot_timeout=boot_timeout,
        wait_for_ssh=bool(params.get("wait_for_ssh", True)),
        keep_workdir=bool(params.get("keep_workdir", False)),
        watch_pid=int(watch_pid) if watch_pid is not None else None,
        qemu_binary=params.get("qemu_binary") or arch.qemu_binary,
        qemu_args=list(params.get("qemu_args") or []),
        architecture=arch.name,
    )


# --------------------------------------------------------------------------- pure pieces


def detect_format(path: str) -> str:
    """``qcow2`` when the file starts with qcow2's magic, else ``raw``."""
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == QCOW2_MAGIC else "raw"


def qemu_opt(value: str) -> str:
    """A value inside a qemu ``-drive``/``-chardev`` option list: commas are doubled."""
    return value.replace(",", ",,")


def qemu_command(
    opts: VmOptions,
    port: int,
    disk: str,
    disk_format: str,
    seed: bool = False,
    uefi_code: str | None = None,
    credential: str | None = None,
) -> list[str]:
    """The qemu argv.  It runs in the work directory: the files there are named relatively."""
    argv = [opts.qemu_binary, "-name", qemu_opt(opts.name), "-machine", opts.machine]
    for accel in opts.accelerators:
        argv += ["-accel", accel]
    argv += [
        "-cpu", opts.cpu,
        "-m", str(opts.memory),
        "-smp", str(opts.cpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", "file,id=serial0,path=%s" % SERIAL_LOG,
        "-serial", "chardev:serial0",
        "-qmp", "unix:%s,server=on,wait=off" % QMP_SOCKET,
    ]  # fmt: skip
    if uefi_code:
        argv += [
            "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s" % qemu_opt(uefi_code),
            "-drive", "if=pflash,format=raw,unit=1,file=%s" % UEFI_VARS,
        ]  # fmt: skip
    argv += [
        "-drive", "file=%s,format=%s,if=virtio,discard=unmap" % (qemu_opt(disk), disk_format),
        "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22" % port,
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if seed:
        argv += ["-drive", "file=%s,format=raw,if=virtio,readonly=on" % SEED]
    if credential:
        argv += ["-smbios", "type=11,value=%s" % qemu_opt(credential)]
    if opts.kernel:
        argv += ["-kernel", opts.kernel]
        if opts.initrd:
            argv += ["-initrd", opts.initrd]
        argv += ["-append", opts.append if opts.append is not None else "console=ttyS0"]
    return argv + list(opts.qemu_args)


def cloud_init_user_data(user: str, public_key: str) -> str:
    """A ``#cloud-config`` that lets *user* in with *public_key* (JSON, which is YAML)."""
    if user == "root":
        config: dict[str, Any] = {"disable_root": False, "ssh_authorized_keys": [public_key]}
    else:
        config = {
            "users": [
                {
                    "name": user,
                    "shell": "/bin/bash",
                    "lock_passwd": True,
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "ssh_authorized_keys": [public_key],
                }
            ]
        }
    config["ssh_pwauth"] = False
    return "#cloud-config\n" + json.dumps(config, indent=2, sort_keys=True) + "\n"


def key_credential(user: str, public_key: str) -> str:
    """An SMBIOS type 11 string that gives *user* the key at boot, for guests without cloud-init.

    systemd (252 and later, Debian 12's) imports ``io.systemd.credential.binary:NAME=BASE64`` strings as system
    credentials, and systemd-tmpfiles-setup.service applies the lines of credential ``tmpfiles.extra``. The key goes
    to ``authorized_keys2`` (sshd reads it beside ``authorized_keys`` by default), so a file the image has is
    neither needed nor changed; ``f+`` writes it on every boot. ssh.authorized_keys.root is not used: it is root's
    only and does nothing when ``authorized_keys`` exists.
    """
    home = "/root" if user == "root" else "/home/%s" % user
    lines = [
        # the group stays root ("-"): a user's own group may be named otherwise, and sshd accepts it
        "d %s/.ssh 0700 %s - -" % (home, user),
        "f+ %s/.ssh/authorized_keys2 0600 %s - - %s" % (home, user, public_key.strip()),
    ]
    data = base64.b64encode(("\n".join(lines) + "\n").encode()).decode()
    return "io.systemd.credential.binary:tmpfiles.extra=%s" % data


def cloud_init_meta_data(instance_id: str, hostname: str) -> str:
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=2) + "\n"


def default_hostname(target: str) -> str:
    """The target name as a host name label (letters, digits, '-'; at most 63)."""
    label = re.sub(r"[^a-z0-9-]+", "-", target.lower()).strip("-")[:63]
    return label or "bakery-vm"


def ssh_options(private_key: str, port: int) -> list[str]:
    """ssh client options for a throw-away guest: no host key is checked or remembered."""
    return [
        "-F", "none",
        "-i", private_key,
        "-p", str(port),
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip


# for ansible_ssh_common_args: the guest's host key is new on every boot and never worth remembering
SSH_COMMON_ARGS = "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes"


def clean_console(text: str) -> list[str]:
    """Lines of a serial console log without escape sequences, carriage returns or blank lines."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = _ANSI_RE.sub("", raw.rsplit("\r", 1)[-1]).rstrip()
        if line.strip():
            lines.append(line)
    return lines


def tail_file(path: str, count: int = SERIAL_TAIL, max_bytes: int = 65536) -> list[str]:
    """The last *count* non-blank lines of a (console) log file; [] when there is none."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return clean_console(text)[-count:]


# --------------------------------------------------------------------------- state file


def state_record(
    opts: VmOptions,
    pid: int,
    pid_start: int,
    supervisor_pid: int,
    watch: tuple[int, int],
    port: int,
    disk: str,
    private_key: str,
    command: list[str],
) -> dict[str, Any]:
    """What the work directory remembers of a running VM (no secret: the key is a path)."""
    return {
        "bake_id": opts.bake_id,
        "target": opts.target,
        "name": opts.name,
        "pid": pid,
        "pid_start": pid_start,
        "supervisor_pid": supervisor_pid,
        "watch_pid": watch[0],
        "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": "127.0.0.1",
        "port": port,
        "user": opts.user,
        "private_key": private_key,
        "python": opts.python,
        "disk": opts.disk,
        "booted_disk": disk,
        "overlay": opts.overlay,
        "keep_workdir": opts.keep_workdir,
        "command": command,
    }


def read_state(workdir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(workdir, STATE_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(workdir: str, state: Mapping[str, Any]) -> None:
    write_json_atomic(os.path.join(workdir, STATE_FILE), dict(state))


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, is item 0)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When *pid* started (clock ticks since boot), or None if it is gone or a zombie.

    A pid and its start time name one process: a recycled pid has another start time.
    """
    fields = _proc_stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, ticks: int | None) -> bool:
    return pid > 0 and start_ticks(pid) is not None and (ticks is None or start_ticks(pid) == ticks)


def parent_of(pid: int) -> int:
    fields = _proc_stat(pid)
    return int(fields[1]) if fields else 0


def cmdline(pid: int) -> list[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def is_ansible(argv: Sequence[str]) -> bool:
    """ansible-playbook and friends, run directly or as ``python .../ansible-playbook``."""
    return any(os.path.basename(arg) in ANSIBLE_PROGRAMS for arg in argv[:2])


def find_ansible_process(pid: int | None = None) -> int | None:
    """The ansible-playbook process this module runs under, walking up from *pid* (default: us).

    ansible-playbook forks a worker per task, and the worker runs the module; the worker has the
    same command line as the main process, which is the one to watch (the worker ends with the task).
    """
    current = parent_of(pid or os.getpid())
    found: int | None = None
    while current > 1:
        argv = cmdline(current)
        if found is None:
            if is_ansible(argv):
                found = current
        elif argv == cmdline(found):
            found = current
        else:
            break
        current = parent_of(current)
    return found


def resolve_watch(watch_pid: int | None) -> tuple[int, int]:
    """(pid, start ticks) of the process whose end must stop the VM."""
    pid = watch_pid or find_ansible_process()
    if pid is None:
        raise BakeryError(
            "qemu_vm: no ansible-playbook process found above this module to tie the VM's life to; "
            "give watch_pid, the process whose end must stop the VM"
        )
    ticks = start_ticks(pid)
    if ticks is None:
        raise BakeryError("qemu_vm: watch_pid %d is not a running process" % pid)
    return pid, ticks


def _die_with_parent() -> None:
    """In qemu's child before exec: get SIGTERM when the supervisor dies (Linux prctl)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _terminate(proc: subprocess.Popen, grace: float = TERM_GRACE) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def supervise(
    argv: list[str],
    cwd: str,
    log_path: str,
    watch: tuple[int, int],
    remove_on_abandon: str | None,
    report_fd: int,
) -> None:
    """The supervisor's body (in the forked child): start qemu, report its pid, watch, clean up.

    Never returns normally into module code: the caller ``os._exit``s after it.
    """
    os.setsid()
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    os.closerange(3, report_fd)
    os.closerange(report_fd + 1, max(limit, report_fd + 1))
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write("bakery-watchdog")
    except OSError:
        pass
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                env=dict(os.environ, PATH=os.environ.get("PATH") or SYSTEM_PATH),
            )
    except OSError as exc:
        os.write(report_fd, ("error: %s\n" % exc).encode())
        return
    os.write(report_fd, b"%d\n" % proc.pid)
    os.close(report_fd)
    while proc.poll() is None:
        if stop:
            _terminate(proc)
            return
        if not alive(*watch) and not os.path.exists(os.path.join(cwd, KEEP_MARKER)):
            _terminate(proc)
            if remove_on_abandon:
                shutil.rmtree(remove_on_abandon, ignore_errors=True)
            return
        time.sleep(SUPERVISOR_POLL)


def spawn_supervised(
    argv: list[str], cwd: str, watch: tuple[int, int], remove_on_abandon: str | None
) -> tuple[int, int]:
    """Fork the supervisor, which starts qemu; return (supervisor pid, qemu pid)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor
        try:
            os.close(read_fd)
            supervise(argv, cwd, os.path.join(cwd, QEMU_LOG), watch, remove_on_abandon, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        reply = b""
        deadline = time.monotonic() + 30
        while not reply.endswith(b"\n") and time.monotonic() < deadline:
            ready = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))[0]
            if not ready:
                break
            chunk = os.read(read_fd, 256)
            if not chunk:
                break
            reply += chunk
    finally:
        os.close(read_fd)
    text = reply.decode(errors="replace").strip()
    if not text.isdigit():
        _reap(pid)
        raise BakeryError(
            "qemu_vm: could not start %s: %s" % (argv[0], text or "the supervisor process did not answer"),
            command=argv,
        )
    return pid, int(text)


def _reap(pid: int) -> None:
    """Collect our exited child (the supervisor) so that it leaves no zombie; never blocks."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(pid: int, ticks: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def signal_process(pid: int, ticks: int | None, sig: int) -> None:
    if alive(pid, ticks):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_vm(pid: int, ticks: int | None, supervisor: int | None = None, grace: float = TERM_GRACE) -> str:
    """SIGTERM, then SIGKILL; returns the signal that ended qemu ('' if it was gone already)."""
    how = ""
    for sig, name, wait in ((signal.SIGTERM, "sigterm", grace), (signal.SIGKILL, "sigkill", 10.0)):
        if not alive(pid, ticks):
            break
        signal_process(pid, ticks, sig)
        how = name
        if wait_gone(pid, ticks, wait):
            break
    if supervisor:
        _reap(supervisor)
        if not wait_gone(supervisor, None, 3 * SUPERVISOR_POLL + 1):
            signal_process(supervisor, None, signal.SIGKILL)
        _reap(supervisor)
    return how


# --------------------------------------------------------------------------- QMP


class Qmp:
    """A minimal QMP client: greeting, capabilities, commands (events are skipped)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self._buffer = b""
        # sun_path holds ~107 bytes; a long work directory is reached through /proc/self/fd
        dir_fd = None
        try:
            if len(path.encode()) > 100:
                dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
                path = "/proc/self/fd/%d/%s" % (dir_fd, os.path.basename(path))
            self.sock.connect(path)
            self._read()  # greeting
            self.command("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise ConnectionError("QMP %s: %s" % (name, reply["error"].get("desc", reply["error"])))

    def close(self) -> None:
        self.sock.close()


def qmp_command(workdir: str, name: str, timeout: float = 5.0, **arguments: Any) -> Any:
    qmp = Qmp(os.path.join(workdir, QMP_SOCKET), timeout)
    try:
        return qmp.command(name, **arguments)
    finally:
        qmp.close()


# --------------------------------------------------------------------------- files


def _run(argv: list[str], what: str, timeout: float = 120) -> str:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C"),
        )
    except FileNotFoundError:
        raise BakeryError(
            "qemu_vm: %s needs %s, which is not installed (%s)" % (what, argv[0], PACKAGES.get(argv[0], "?"))
        ) from None
    except subprocess.TimeoutExpired:
        raise BakeryError("qemu_vm: %s timed out after %d s" % (what, timeout), command=argv) from None
    if proc.returncode != 0:
        raise BakeryError(
            "qemu_vm: %s failed (%s, rc=%d): %s"
            % (what, argv[0], proc.returncode, (proc.stderr or proc.stdout).strip()[-400:]),
            command=argv,
        )
    return proc.stdout


# program -> the Debian package that ships it (named in errors)
PACKAGES = {
    "qemu-system-x86_64": "Debian package qemu-system-x86",
    "qemu-system-aarch64": "Debian package qemu-system-arm",
    "qemu-img": "Debian package qemu-utils",
    "ssh": "Debian package openssh-client",
    "ssh-keygen": "Debian package openssh-client",
    "mkfs.vfat": "Debian package dosfstools",
    "mcopy": "Debian package mtools",
}


def require_programs(names: Sequence[str]) -> None:
    missing = [name for name in names if not shutil.which(name, path=os.environ.get("PATH") or SYSTEM_PATH)]
    if missing:
        raise BakeryError(
            "qemu_vm: missing programs on the build host: %s"
            % ", ".join("%s (%s)" % (name, PACKAGES.get(name, "install it")) for name in missing)
        )


def generate_key(path: str, comment: str) -> str:
    """A new ed25519 key pair at *path* (0600) and *path*.pub; returns the public key line."""
    for stale in (path, path + ".pub"):
        if os.path.lexists(stale):
            os.unlink(stale)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], "generating the SSH key")
    os.chmod(path, 0o600)
    with open(path + ".pub", encoding="ascii") as handle:
        return handle.read().strip()


def public_key_of(private_key: str) -> str:
    return _run(["ssh-keygen", "-y", "-f", private_key], "reading the public key of private_key").strip()


def make_seed(path: str, user_data: str, meta_data: str) -> None:
    """A NoCloud seed: a small vfat image labelled CIDATA with user-data and meta-data (mtools, no mount)."""
    if os.path.lexists(path):
        os.unlink(path)
    _run(["mkfs.vfat", "-n", "CIDATA", "-C", path, "1024"], "making the cloud-init seed")
    source = tempfile.mkdtemp(prefix=".seed-", dir=os.path.dirname(path))
    try:
        files = []
        for name, text in (("user-data", user_data), ("meta-data", meta_data)):
            files.append(os.path.join(source, name))
            with open(files[-1], "w", encoding="utf-8") as handle:
                handle.write(text)
        _run(["mcopy", "-i", path, *files, "::"], "writing the cloud-init seed")
    finally:
        shutil.rmtree(source, ignore_errors=True)


def make_overlay(path: str, backing: str, backing_format: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    _run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, path],
        "making the overlay on %s" % backing,
    )


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (qemu may still lose a race for it: then we retry)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- waiting for the guest


def ssh_banner(port: int, timeout: float) -> str | None:
    """The SSH server's identification line, or None (slirp accepts before the guest listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return line if line.startswith("SSH-") else None


def ssh_run(port: int, user: str, private_key: str, command: str, timeout: float) -> tuple[int, str]:
    argv = ["ssh", *ssh_options(private_key, port), "%s@127.0.0.1" % user, command]
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return 255, "ssh timed out after %d s" % timeout
    return proc.returncode, (proc.stderr or "").strip()


def wait_for_ssh(
    port: int,
    user: str,
    private_key: str,
    deadline: float,
    running: Callable[[], bool],
    started: float,
) -> dict[str, float]:
    """Wait for the SSH banner, then for a login that runs ``true``; returns seconds since *started*.

    Raises BakeryError when qemu exits or the deadline passes (the message says which stage was
    reached); the caller adds the serial console.
    """
    timings: dict[str, float] = {}
    last_error = ""
    while True:
        if not running():
            raise BakeryError("qemu_vm: qemu exited while the guest was booting", stage="boot")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stage = "login" if "banner" in timings else "banner"
            detail = (
                "no SSH server answered on 127.0.0.1:%d" % port
                if stage == "banner"
                else "SSH answered but the login as %s with the key failed: %s" % (user, last_error or "?")
            )
            raise BakeryError("qemu_vm: " + detail, stage=stage, ssh_error=last_error)
        if "banner" not in timings:
            if ssh_banner(port, min(5.0, remaining)) is None:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            timings["banner"] = round(time.monotonic() - started, 3)
        rc, last_error = ssh_run(port, user, private_key, "true", max(1.0, min(30.0, remaining)))
        if rc == 0:
            timings["login"] = round(time.monotonic() - started, 3)
            return timings
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# --------------------------------------------------------------------------- start


def _key_pair(opts: VmOptions, steps: Steps) -> tuple[str, str, bool]:
    """(private key path, public key, generated now?)."""
    if opts.private_key:
        return opts.private_key, opts.public_key or public_key_of(opts.private_key), False
    path = os.path.join(opts.workdir, KEY)
    if os.path.isfile(path) and os.path.isfile(path + ".pub"):  # made by action=keygen
        with open(path + ".pub", encoding="ascii") as handle:
            return path, handle.read().strip(), False
    public = steps.run(
        "generate SSH key",
        lambda: generate_key(path, opts.name),
        undo=lambda _result: [_remove(p) for p in (path, path + ".pub")],
    )
    return path, public, True


def _wait_for_qemu(workdir: str, pid: int, ticks: int | None, timeout: float = QEMU_READY_TIMEOUT) -> bool:
    """Wait until qemu answers QMP; returns whether KVM is in use.  Raises if qemu exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid, ticks):
            raise _QemuExited(tail_file(os.path.join(workdir, QEMU_LOG), 20))
        try:
            return bool(qmp_command(workdir, "query-kvm").get("enabled"))
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise BakeryError(
                    "qemu_vm: qemu did not answer on its QMP socket within %d s" % timeout,
                    qemu_log=tail_file(os.path.join(workdir, QEMU_LOG), 20),
                ) from None
            time.sleep(0.1)


class _QemuExited(Exception):
    def __init__(self, log: list[str]) -> None:
        super().__init__("qemu exited")
        self.log = log


def _boot_failure(exc: BakeryError, opts: VmOptions, port: int, waited: float) -> BakeryError:
    serial = tail_file(os.path.join(opts.workdir, SERIAL_LOG))
    shown = serial[-SERIAL_TAIL_IN_MSG:]
    msg = "%s after %.0f s (boot_timeout %d s); the VM was stopped. Last serial console lines:\n%s" % (
        exc.msg,
        waited,
        opts.boot_timeout,
        "\n".join(shown) if shown else "(none: nothing was written to the serial console)",
    )
    if exc.details.get("stage") == "boot":
        msg = "%s. Last serial console lines:\n%s" % (exc.msg, "\n".join(shown) or "(none)")
    details = dict(exc.details, serial_tail=serial, port=port)
    details["qemu_log"] = tail_file(os.path.join(opts.workdir, QEMU_LOG), 20)
    return BakeryError(msg, **details)


def start(opts: VmOptions, check_mode: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    programs = [opts.qemu_binary, "ssh", "ssh-keygen"]
    programs += ["qemu-img"] if opts.overlay else []
    programs += ["mkfs.vfat", "mcopy"] if opts.cloud_init else []
    require_programs(programs)
    state = read_state(opts.workdir)
    if state and alive(int(state.get("pid", 0)), state.get("pid_start")):
        raise BakeryError(
            "qemu_vm: a VM is already running from %s (pid %s); stop it first" % (opts.workdir, state["pid"]),
            vm=public_state(opts.workdir, state),
        )
    disk_format = detect_format(opts.disk) if opts.disk_format == "auto" else opts.disk_format
    code, vars_template = (
        uefi_firmware(opts.uefi_code, opts.uefi_vars, _qemu_arch.get(opts.architecture))
        if opts.firmware == "uefi"
        else ("", "")
    )
    watch = resolve_watch(opts.watch_pid)
    if check_mode:
        return {
            "changed": True,
            "msg": "would start VM %s from %s (%s%s)"
            % (opts.name, opts.disk, disk_format, ", through an overlay" if opts.overlay else ", in place"),
            "vm": {"workdir": opts.workdir, "name": opts.name},
        }

    with Steps() as steps:
        if not os.path.isdir(opts.workdir):
            steps.run(
                "make work directory",
                lambda: os.makedirs(opts.workdir, mode=0o700),
                undo=lambda _result: shutil.rmtree(opts.workdir, ignore_errors=True),
            )
        os.chmod(opts.workdir, 0o700)
        for stale in (SERIAL_LOG, QEMU_LOG, STATE_FILE, QMP_SOCKET):
            _remove(os.path.join(opts.workdir, stale))
        steps.add_undo(
            "remove logs and state",
            lambda: [
                _remove(os.path.join(opts.workdir, n)) for n in (SERIAL_LOG, QEMU_LOG, STATE_FILE, QMP_SOCKET)
            ],
        )
        private_key, public_key = _key_pair(opts, steps)[:2]
        disk, fmt = opts.disk, disk_format
        if opts.overlay:
            overlay = os.path.join(opts.workdir, OVERLAY)
            steps.run(
                "make overlay",
                lambda: make_overlay(overlay, opts.disk, disk_format),
                undo=lambda _result: _remove(overlay),
            )
            disk, fmt = overlay, "qcow2"
        if opts.cloud_init:
            seed = os.path.join(opts.workdir, SEED)
            hostname = opts.hostname or default_hostname(opts.target)
            steps.run(
                "make cloud-init seed",
                lambda: make_seed(
                    seed,
                    cloud_init_user_data(opts.user, public_key),
                    cloud_init_meta_data(opts.name, hostname),
                ),
                undo=lambda _result: _remove(seed),
            )
        if code:
            uefi_vars = os.path.join(opts.workdir, UEFI_VARS)
            steps.run(
                "copy UEFI variables",
                lambda: shutil.copyfile(vars_template, uefi_vars),
                undo=lambda _result: _remove(uefi_vars),
            )
            os.chmod(uefi_vars, 0o600)

        remove_on_abandon = None if opts.keep_workdir else opts.workdir
        for attempt in range(1, SSH_PORT_ATTEMPTS + 1):
            port = free_port()
            argv = qemu_command(
                opts,
                port,
                disk,
                fmt,
                seed=opts.cloud_init,
                uefi_code=code or None,
                credential=key_credential(opts.user, public_key) if opts.credential else None,
            )
            supervisor, pid = steps.run(
                "start qemu",
                lambda argv=argv: spawn_supervised(argv, opts.workdir, watch, remove_on_abandon),
                undo=lambda pids: kill_vm(pids[1], None, pids[0]),
            )
            ticks = start_ticks(pid)
            try:
                kvm = _wait_for_qemu(opts.workdir, pid, ticks)
                break
            except _QemuExited as exited:
                kill_vm(pid, ticks, supervisor)
                if any(_HOSTFWD_ERROR in line for line in exited.log) and attempt < SSH_PORT_ATTEMPTS:
                    continue  # another process took the port between free_port() and qemu's bind
                raise BakeryError(
                    "qemu_vm: qemu exited at start: %s" % (" / ".join(exited.log[-5:]) or "no output"),
                    qemu_log=exited.log,
                    command=argv,
                ) from None
        accelerator = "kvm" if kvm else next((a for a in opts.accelerators if a != "kvm"), "tcg")
        timings = {"qemu": round(time.monotonic() - started, 3)}
        state = state_record(opts, pid, ticks or 0, supervisor, watch, port, disk, private_key, argv)
        steps.run("write state file", lambda: write_state(opts.workdir, state))
        if opts.wait_for_ssh:
            deadline = started + opts.boot_timeout
            try:
                timings.update(
                    wait_for_ssh(port, opts.user, private_key, deadline, lambda: alive(pid, ticks), started)
                )
            except BakeryError as exc:
                raise _boot_failure(exc, opts, port, time.monotonic() - started) from None
        timings["total"] = round(time.monotonic() - started, 3)

    vm = public_state(opts.workdir, state)
    return {
        "changed": True,
        "msg": "started VM %s (%s) on 127.0.0.1:%d%s"
        % (opts.name, accelerator, port, ", SSH ready" if opts.wait_for_ssh else ""),
        "vm": vm,
        "builder": builder(vm),
        "ssh_common_args": SSH_COMMON_ARGS,
        "public_key": public_key,
        "accelerator": accelerator,
        "command": argv,
        "timings": timings,
    }


def public_state(workdir: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``vm`` return value: where the VM runs and how to reach it; the key is a path."""
    return {
        "name": state.get("name"),
        "bake_id": state.get("bake_id"),
        "target": state.get("target"),
        "pid": state.get("pid"),
        "host": state.get("host", "127.0.0.1"),
        "port": state.get("port"),
        "user": state.get("user"),
        "private_key": state.get("private_key"),
        "python": state.get("python"),
        "workdir": workdir,
        "serial_log": os.path.join(workdir, SERIAL_LOG),
        "qmp": os.path.join(workdir, QMP_SOCKET),
        "disk": state.get("booted_disk"),
        "watch_pid": state.get("watch_pid"),
    }


def builder(vm: Mapping[str, Any]) -> dict[str, Any]:
    """What ``add_host`` needs (the bake's ``bakery_builder``)."""
    return {
        "connection": "ssh",
        "host": vm["host"],
        "port": vm["port"],
        "user": vm["user"],
        "private_key": vm["private_key"],
        "python": vm["python"],
        "ssh_common_args": SSH_COMMON_ARGS,
    }


# --------------------------------------------------------------------------- stop


def _shutdown_ssh(state: Mapping[str, Any]) -> bool:
    """Ask the guest to power off over SSH.  The power-off runs in the background a second later, so
    that ssh gets its exit status before sshd goes down (rc 0 means it was accepted)."""
    key = state.get("private_key")
    if not key or not os.path.isfile(key) or not state.get("port"):
        return False
    user = state.get("user") or "root"
    later = "nohup sh -c 'sleep 1; poweroff' >/dev/null 2>&1 </dev/null &"
    command = later if user == "root" else "sudo -n true && " + later.replace("sh -c", "sudo -n sh -c", 1)
    return ssh_run(int(state["port"]), user, key, command, 20)[0] == 0


def _shutdown_acpi(workdir: str) -> bool:
    try:
        qmp_command(workdir, "system_powerdown")
    except (OSError, ValueError):
        return False
    return True


def stop(
    workdir: str,
    method: str = "auto",
    timeout: int = 60,
    keep_workdir: bool = False,
    check_mode: bool = False,
) -> dict[str, Any]:
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    state = read_state(workdir)
    pid = int(state.get("pid", 0)) if state else 0
    ticks = state.get("pid_start") if state else None
    running = bool(state) and alive(pid, ticks)
    exists = os.path.isdir(workdir)
    remove = exists and not keep_workdir
    result: dict[str, Any] = {"workdir": workdir, "running": running, "pid": pid or None}
    if check_mode:
        result.update(changed=running or remove, msg=_stop_msg(running, remove, "would "))
        return result

    requested: list[str] = []
    stopped_by = ""
    if running:
        deadline = time.monotonic() + timeout
        if method in ("auto", "ssh"):
            requested.append("ssh" if _shutdown_ssh(state or {}) else "ssh (failed)")
            if requested[-1] == "ssh" and wait_gone(pid, ticks, max(0.0, deadline - time.monotonic())):
                stopped_by = "ssh"
        if not stopped_by and method in ("auto", "acpi") and alive(pid, ticks):
            requested.append("acpi" if _shutdown_acpi(workdir) else "acpi (failed)")
            if wait_gone(pid, ticks, max(0.0, deadline - time.monotonic())):
                stopped_by = "acpi"
        if not stopped_by and not alive(pid, ticks):
            stopped_by = requested[-1] if requested else "itself"
        if not stopped_by:
            stopped_by = kill_vm(pid, ticks)
    supervisor = int(state.get("supervisor_pid", 0)) if state else 0
    if supervisor:
        # it exits within a poll interval of qemu; it must be gone before the directory is removed
        if not wait_gone(supervisor, None, 3 * SUPERVISOR_POLL + 1):
            signal_process(supervisor, None, signal.SIGKILL)
    if remove:
        shutil.rmtree(workdir)
    result.update(
        changed=running or remove,
        msg=_stop_msg(running, remove, ""),
        stopped_by=stopped_by or None,
        shutdown_requested=requested,
        clean=stopped_by in ("ssh", "acpi"),
        workdir_removed=remove,
        seconds=round(time.monotonic() - started, 3),
    )
    return result


def _stop_msg(running: bool, remove: bool, would: str) -> str:
    parts = []
    if running:
        parts.append("%sstop the VM" % would if would else "stopped the VM")
    if remove:
        parts.append("%sremove its work directory" % would if would else "removed its work directory")
    return " and ".join(parts) if parts else "nothing to do: no VM running and no work directory"


def keep(workdir: str, check_mode: bool = False) -> dict[str, Any]:
    """Let the VM run on after the ansible-playbook that started it ends: its watchdog lets go of it.

    For a failed bake that keeps its builder (on_error keep); ``stop`` or the janitor stops it later.
    """
    workdir = os.path.abspath(workdir)
    state = read_state(workdir)
    if not state or not alive(int(state.get("pid", 0)), state.get("pid_start")):
        raise BakeryError("qemu_vm: no VM runs from %s, nothing to keep" % workdir)
    marker = os.path.join(workdir, KEEP_MARKER)
    result: dict[str, Any] = {
        "workdir": workdir,
        "pid": state.get("pid"),
        "changed": not os.path.exists(marker),
    }
    if result["changed"] and not check_mode:
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write("kept by a failed bake; stop it with qemu_vm action=stop or the janitor\n")
    result["msg"] = "the VM runs on after the run" if result["changed"] else "the VM was already kept"
    return result


# --------------------------------------------------------------------------- keygen


def keygen(workdir: str, bake_id: str, target: str, check_mode: bool = False) -> dict[str, Any]:
    """The VM's key pair in its work directory, made ahead of ``start`` for a caller that puts the public
    key into the image itself; ``start`` with the same work directory logs in with it."""
    path = os.path.join(workdir, KEY)
    result: dict[str, Any] = {"workdir": workdir, "private_key": path}
    if os.path.isfile(path) and os.path.isfile(path + ".pub"):
        with open(path + ".pub", encoding="ascii") as handle:
            result.update(changed=False, public_key=handle.read().strip(), msg="key pair exists")
        return result
    if check_mode:
        result.update(changed=True, public_key=None, msg="would generate a key pair")
        return result
    require_programs(["ssh-keygen"])
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    result.update(
        changed=True, public_key=generate_key(path, vm_name(bake_id, target)), msg="generated a key pair"
    )
    return result


# --------------------------------------------------------------------------- module entry


def _workdir_param(params: Mapping[str, Any]) -> str:
    if params.get("workdir"):
        return os.path.abspath(params["workdir"])
    if params.get("bake_id") and params.get("target"):
        return default_workdir(
            check_name("bake_id", params["bake_id"]), check_name("target", params["target"])
        )
    raise BakeryError("qemu_vm: action=%s needs workdir, or bake_id and target" % params.get("action"))


def module_action(module: Any) -> dict[str, Any]:
    """Entry point for ``_module.run``."""
    params = module.params
    action = params.get("action")
    if action == "start":
        return start(parse_options(params), check_mode=module.check_mode)
    if action == "stop":
        return stop(
            _workdir_param(params),
            method=params.get("shutdown_method") or "auto",
            timeout=int(params.get("shutdown_timeout") or 60),
            keep_workdir=bool(params.get("keep_workdir")),
            check_mode=module.check_mode,
        )
    if action == "keep":
        return keep(_workdir_param(params), check_mode=module.check_mode)
    if action == "keygen":
        bake_id = check_name("bake_id", params.get("bake_id") or "vm")
        target = check_name("target", params.get("target") or "vm")
        return keygen(_workdir_param(params), bake_id, target, check_mode=module.check_mode)
    raise BakeryError("qemu_vm: unknown action %r" % action)


# --------------------------------------------------------------------------- janitor: leftover builder VMs


def _boot_time() -> float:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def process_started(pid: int) -> float | None:
    """When *pid* started, in seconds since the epoch (None if it is gone)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return _boot_time() + ticks / float(os.sysconf("SC_CLK_TCK"))


def split_vm_name(name: str, bake_id: str | None = None) -> tuple[str | None, str | None]:
    """(bake id, target) of a qemu ``-name`` ``bakery-<bake id>-<target>`` (see _temporary.split_name)."""
    return split_name(name, bake_id)


def builder_processes() -> list[dict[str, Any]]:
    """Running builder VMs: processes whose argv has ``-name bakery-...`` and that are qemu (by program
    name) or are the pid their work directory's state file records. Their work directory is their cwd."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = cmdline(pid)
        if "-name" not in argv[:-1]:
            continue
        name = argv[argv.index("-name") + 1].split(",")[0]
        if not name.startswith("bakery-"):
            continue
        try:
            cwd = os.readlink("/proc/%d/cwd" % pid)
        except OSError:
            cwd = ""
        state = read_state(cwd) if cwd else None
        if state and int(state.get("pid") or 0) != pid:
            state = None
        if not (os.path.basename(argv[0]).startswith("qemu") or state):
            continue
        ticks = start_ticks(pid)
        if ticks is None:
            continue
        found.append({"pid": pid, "ticks": ticks, "name": name, "workdir": cwd, "state": state})
    return found


def vm_workdirs(roots: Sequence[str]) -> list[str]:
    """VM work directories (holding a state file) directly in *roots* and named ``bakery-vm-*`` in the
    system's temporary directory, where qemu_vm makes them by default."""
    found = []
    tmp = tempfile.gettempdir()
    candidates = [os.path.join(tmp, n) for n in _listdir(tmp) if n.startswith(WORKDIR_PREFIX)]
    for root in roots:
        candidates += [os.path.join(root, n) for n in _listdir(root)]
    for path in candidates:
        path = os.path.abspath(path)
        if path not in found and not os.path.islink(path) and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append(path)
    return found


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def sweep_vms(selector: Selector, check_mode: bool, roots: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Builder VMs the selector selects, killed (with ``stop``, as the bake's cleanup stops them) and their
    work directories removed; then VM work directories no process runs from any more."""
    entries: list[dict[str, Any]] = []
    running_dirs = set()
    for proc in builder_processes():
        state = proc["state"] or {}
        bake_id, target = split_vm_name(proc["name"], selector.bake_id)
        bake_id = state.get("bake_id") or bake_id
        target = state.get("target") or target
        created = state.get("started_at") or process_started(proc["pid"])
        if not selector.matches(bake_id, created):
            running_dirs.add(proc["workdir"])
            continue
        entry = record(
            "qemu",
            "vm",
            str(proc["pid"]),
            name=proc["name"],
            bake_id=bake_id,
            target=target,
            created=created,
            location=proc["workdir"] or None,
        )

        def kill(proc: dict[str, Any] = proc) -> None:
            if proc["state"]:
                # the work directory goes too, unless the VM was started to keep it
                stop(proc["workdir"], method="kill", keep_workdir=bool(proc["state"].get("keep_workdir")))
            else:
                kill_vm(proc["pid"], proc["ticks"])
            if alive(proc["pid"], proc["ticks"]):
                raise BakeryError("qemu (pid %d) is still running" % proc["pid"])

        entries.append(act(entry, check_mode, kill))
    handled = {entry["location"] for entry in entries}
    for workdir in vm_workdirs(roots):
        if workdir in handled or workdir in running_dirs:
            continue
        state = read_state(workdir) or {}
        if alive(int(state.get("pid") or 0), state.get("pid_start")):
            continue  # its VM runs (a process the scan above did not recognise): not ours to judge
        created = state.get("started_at") or os.stat(os.path.join(workdir, STATE_FILE)).st_mtime
        if not selector.matches(state.get("bake_id"), created):
            continue
        entry = record(
            "qemu",
            "vm workdir",
            workdir,
            name=os.path.basename(workdir),
            bake_id=state.get("bake_id"),
            target=state.get("target"),
            created=created,
            location=workdir,
        )
        entries.append(act(entry, check_mode, lambda workdir=workdir: shutil.rmtree(workdir)))
    return entries


def sweep(selector: Selector, check_mode: bool, paths: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The janitor's sweep of this host: builder VMs, VM and chroot work directories, leftover ``.partial``
    files, the private keys the ami and gce roles keep below the output directory, and (where libvirtd runs)
    the libvirt domains and volumes of boxes booted for their checks (vagrant verify_up)."""
    paths = [os.path.abspath(path) for path in paths]
    entries = sweep_vms(selector, check_mode, paths)
    busy = {
        proc["workdir"]
        for proc in builder_processes()
        if proc["workdir"] and alive(proc["pid"], proc["ticks"])
    }
    entries += _qemu_disk.sweep_workdirs(selector, check_mode, paths, busy=busy)
    entries += _files.sweep_partials(selector, check_mode, paths)
    entries += _files.sweep_key_files(selector, check_mode, paths)
    entries += _libvirt.sweep(selector, check_mode)
    return entries
