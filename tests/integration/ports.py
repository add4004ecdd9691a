"""Free ports on 127.0.0.1 for the servers tests start, and whether the server started is the one listening.

Every stream of make test (and Molecule beside them) starts servers on ports the kernel called free a moment
before; between that moment and the server's bind another process may take the port.  A check that the port
answers would then find the other process's server (another stream's moto_server, say) and the test would talk
to it: ``listens`` asks the kernel which socket listens on the port and whether it is the process's own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

LISTEN = "0A"  # the TCP state in /proc/net/tcp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    with open("/proc/net/tcp", encoding="ascii") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process *pid* holds the socket that listens on *port* (IPv4)."""
    wanted = {"socket:[%s]" % inode for inode in _listening_inodes(port)}
    if not wanted:
        return False
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) in wanted:
                return True
        except OSError:
            continue
    return False


def wait_listening(proc: subprocess.Popen, port: int, timeout: float) -> bool:
    """Wait until *proc* listens on *port*: True; False when it exited first (the port was taken, say) or the
    time ran out."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if listens(proc.pid, port):
            return True
        time.sleep(0.1)
    return False
