# Copyright: bakery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The isolated root-filesystem builder: every command of a chroot provisioning runs under bubblewrap.

A qemu target with ``provision: chroot`` is provisioned in its unpacked tree on the build host. A plain chroot
shares the host's kernel state with the roles: a role's ``sysctl -w`` or ``mount -o remount`` reaches the
host. So every command Ansible runs there (community.general.chroot calls its ``chroot_exe`` as
``<exe> <root> /bin/sh -c <command>``) goes through a small script, written beside the tree, that starts it
with ``bwrap`` (Debian's bubblewrap, made for exactly this) in namespaces of its own:

- mount namespace: the tree is ``/``, with a fresh ``/proc`` for the command's own PID namespace (so facts such
  as processor count, memory and mounts are there), ``/proc/sys`` and ``/sys`` read-only, and a small
  ``/dev`` (null, zero, random, urandom, tty, pts, shm); whatever the command mounts is gone with it;
- PID namespace: the command is PID 1 (its name is a shell's, so Ansible's ``service_mgr`` fact comes from
  the tree's ``/sbin/init``: systemd); a process it leaves running dies when it ends;
- UTS and IPC namespaces: the hostname is the image's, and setting it changes nothing outside;
- capabilities: Docker's default set only (no CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_MODULE, CAP_SYS_TIME,
  CAP_SYS_BOOT...), so mounts, kernel parameters, network configuration, modules and the clock are out of
  reach even by absolute path, and ``--die-with-parent`` ties the sandbox to the Ansible worker;
- the network namespace is the host's (package downloads work without a proxy), which the missing
  CAP_NET_ADMIN and the read-only ``/proc/sys`` keep from being changed.

The environment sets ``SYSTEMD_OFFLINE=1`` (systemctl then enables units in the tree and ignores start and
stop, as ansible.builtin.systemd_service expects) and Debian's default PATH, on which the stand-in commands
(``_standin``) come first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# Docker's default capability set: what package managers and maintainer scripts need, nothing that
# changes the kernel, mounts, the network configuration, modules or the clock.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENTER_SCRIPT = "enter"


def bwrap() -> str:
    path = shutil.which("bwrap")
    if not path:
        raise BakeryError(
            "bubblewrap is not installed (apt-get install bubblewrap): a chroot builder runs every command "
            "of the provisioning in it, so that no role reaches the build host"
        )
    return path


def sandbox_argv(root: str, hostname: str) -> list[str]:
    """bwrap's arguments up to (not including) the command, for the tree *root*."""
    argv = [
        bwrap(),
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--as-pid-1",
        "--hostname",
        hostname,
        "--bind",
        root,
        "/",
        "--proc",
        "/proc",
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--dev",
        "/dev",
        "--ro-bind",
        "/sys",
        "/sys",
        "--setenv",
        "PATH",
        PATH,
        "--setenv",
        "SYSTEMD_OFFLINE",
        "1",
        "--cap-drop",
        "ALL",
    ]
    for cap in CAPABILITIES:
        argv += ["--cap-add", cap]
    return argv


def write_enter_script(
    workdir: str, root: str, hostname: str, environment: Mapping[str, str] | None = None
) -> str:
    """Write ``<workdir>/enter``, the ``chroot_exe`` of community.general.chroot for *root*, and check it runs;
    every command it runs gets *environment* (such as the bake's ``SOURCE_DATE_EPOCH``)."""
    path = os.path.join(workdir, ENTER_SCRIPT)
    quoted_root = shlex.quote(root)
    script = (
        "#!/bin/sh\n"
        "# bakery: runs a command in the isolated root-filesystem builder %s (see _isolation.py);\n"
        "# community.general.chroot calls it as: enter <root> <command...>\n"
        'if [ "$1" != %s ]; then\n'
        '    echo "bakery: this sandbox is for %s, not $1" >&2\n'
        "    exit 125\n"
        "fi\n"
        "shift\n"
        "%s"
        'exec %s "$@"\n'
    ) % (
        root,
        quoted_root,
        root,
        "".join(
            "export %s=%s\n" % (name, shlex.quote(value))
            for name, value in sorted((environment or {}).items())
        ),
        " ".join(shlex.quote(arg) for arg in sandbox_argv(root, hostname)),
    )
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(script)
    os.chmod(path, 0o755)
    probe = subprocess.run(
        [path, root, "/bin/sh", "-c", "test -d /proc/self"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        raise BakeryError(
            "the isolated chroot builder does not start here (bwrap exit %d): %s"
            % (probe.returncode, (probe.stderr or probe.stdout).strip()[-500:])
        )
    return path
