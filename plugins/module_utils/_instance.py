# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the instance bakes on clouds (gce, digitalocean; ami's wait) share: a temporary ed25519 SSH key written
for Ansible, the wait for an instance's SSH banner, and the connection a builder is reached by."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


def new_ssh_key(directory: str, name: str) -> tuple[str, str]:
    """A new ed25519 key: the private key written (mode 0600) to *directory*/*name*, and its public key in OpenSSH
    form with *name* as the comment."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, name)
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    return path, "%s %s" % (public.decode("ascii"), name)


def remove_files(*paths: str) -> None:
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)


def remove_key(path: str) -> None:
    """The private key file and the known_hosts file of :func:`connection`."""
    remove_files(path, path + ".known_hosts")


def wait_ssh(host: str, port: int, deadline: float, what: str = "the build instance") -> None:
    """Until the SSH server at *host*:*port* answers with its banner (an open port is not enough), or *deadline*
    (``time.monotonic()``) passed."""
    last = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.settimeout(5)
                banner = sock.recv(256)
            if banner.startswith(b"SSH-"):
                return
            last = "unexpected banner %r" % banner[:40]
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise BakeryError("%s did not answer SSH on %s:%d in time (%s)" % (what, host, port, last))
        time.sleep(1)


def connection(host: str, port: int, user: str, key_path: str, python: str | None) -> dict[str, Any]:
    """How Ansible reaches a new instance: its new host key accepted once, remembered only for this bake."""
    return {
        "connection": "ssh",
        "host": host,
        "port": port,
        "user": user,
        "private_key": key_path,
        "python": python or "/usr/bin/python3",
        "ssh_common_args": "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s.known_hosts"
        % key_path,
    }
