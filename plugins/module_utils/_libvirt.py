# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What libvirt still holds of a bake after ``vagrant destroy``, found and removed with ``virsh``.

A vagrant target with ``verify_up`` boots its box with vagrant-libvirt. The machine is a libvirt domain named
``bakery-<bake id>-<target>-default`` (its disk a volume ``<domain>.img``), and vagrant-libvirt uploads the box's
disk into a storage pool as ``<box name>_vagrant_box_image_<version>_box.img`` and keeps it there for later
machines; the box is added under the name ``bakery-<bake id>-<target>``. ``vagrant destroy`` removes the domain
and its disk but not the box image, and a killed bake removes nothing: :func:`sweep` removes all three, for the
bake's cleanup (by name) and for the janitor (by bake id and the age encoded in it). Nothing else is touched:
no network, no pool, no domain or volume whose name does not carry a bake id.
"""

from __future__ import annotations

import errno
import os
import socket as _socket
import subprocess
from collections.abc import Sequence
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._files import bake_started
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    Selector,
    act,
    record,
    split_name,
)

SOCKET = "/run/libvirt/libvirt-sock"
URI = "qemu:///system"
# what vagrant-libvirt puts between the box's name and its version in the volume of an uploaded box image
BOX_IMAGE = "_vagrant_box_image_"
# vagrant's name of the one machine of a Vagrantfile without `config.vm.define`
MACHINE = "default"
TIMEOUT = 120


def available(socket: str | None = None) -> bool:
    """Whether libvirtd listens on this host: its socket exists and a connection to it is not refused.

    A libvirtd that was killed (a crash, the OOM killer, SIGKILL) leaves its socket behind; nothing listens on it
    then, and virsh fails with "Connection refused". Such a host has no libvirtd to list or remove domains with,
    as one without the socket: the domains it defined are swept when a libvirtd runs again. Any other failure to
    connect (permission denied, a full backlog) counts as listening, so that virsh says what is wrong.
    """
    path = socket or SOCKET
    if not os.path.exists(path):
        return False
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(5)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        probe.close()
    return True


def domain_name(bake_id: str, target: str) -> str:
    """The libvirt domain of a target's booted box: vagrant-libvirt's ``default_prefix`` plus the machine."""
    return "%s%s" % (domain_prefix(bake_id, target), MACHINE)


def domain_prefix(bake_id: str, target: str) -> str:
    return "bakery-%s-%s-" % (bake_id, target)


def box_name(bake_id: str, target: str) -> str:
    """The name a target's box is added under for its checks (vagrant box add --name)."""
    return "bakery-%s-%s" % (bake_id, target)


def virsh(args: Sequence[str], uri: str = URI, what: str | None = None, timeout: float = TIMEOUT) -> str:
    """``virsh -q -c <uri> <args>``'s output; a failure raises BakeryError with virsh's last words."""
    argv = ["virsh", "-q", "-c", uri, *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BakeryError(
            "virsh is not installed on the build host (Debian package libvirt-clients)"
        ) from None
    except subprocess.TimeoutExpired:
        raise BakeryError(
            "%s: virsh did not answer within %d s" % (what or " ".join(args), timeout)
        ) from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BakeryError(
            "%s failed: %s"
            % (
                what or "virsh " + " ".join(args),
                detail[-1] if detail else "exit status %d" % proc.returncode,
            ),
            command=argv,
            rc=proc.returncode,
        )
    return proc.stdout


def _names(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def domains(uri: str = URI) -> list[str]:
    """Every domain, running or not."""
    return _names(virsh(["list", "--all", "--name"], uri, "listing libvirt domains"))


def volumes(uri: str = URI) -> list[tuple[str, str]]:
    """(pool, volume) of every volume in every active pool."""
    found = []
    for pool in _names(virsh(["pool-list", "--name"], uri, "listing libvirt storage pools")):
        listing = virsh(["vol-list", "--pool", pool], uri, "listing the volumes of pool %s" % pool)
        found += [(pool, line.split()[0]) for line in listing.splitlines() if line.strip()]
    return found


def remove_domain(name: str, uri: str = URI) -> None:
    """Stop the domain if it runs, then undefine it with all its storage (and its UEFI variables, if any)."""
    state = virsh(["domstate", name], uri, "reading the state of domain %s" % name).strip()
    if state not in ("shut off", "crashed"):
        try:
            virsh(["destroy", name], uri, "stopping domain %s" % name)
        except BakeryError as exc:
            if "not running" not in exc.msg:
                raise
    try:
        virsh(["undefine", name, "--remove-all-storage", "--nvram"], uri, "undefining domain %s" % name)
    except BakeryError as exc:
        # a libvirt that refuses --nvram (unsupported flags) for a domain without UEFI variables
        try:
            virsh(["undefine", name, "--remove-all-storage"], uri, "undefining domain %s" % name)
        except BakeryError:
            raise exc from None


def remove_volume(pool: str, name: str, uri: str = URI) -> None:
    virsh(["vol-delete", "--pool", pool, name], uri, "deleting volume %s of pool %s" % (name, pool))


def _volume_owner(name: str) -> tuple[str, str] | None:
    """(box or domain name, kind) of a volume that vagrant-libvirt made for a bake: an uploaded box image or a
    machine's disk; None for any other volume."""
    if BOX_IMAGE in name:
        return name.split(BOX_IMAGE, 1)[0], "box image"
    if name.endswith("-%s.img" % MACHINE):
        return name[: -len(".img")], "machine disk"
    return None


def sweep(
    selector: Selector | None,
    check_mode: bool,
    *,
    domain_names: Sequence[str] | None = None,
    box_names: Sequence[str] | None = None,
    uri: str = URI,
    socket: str | None = None,
) -> list[dict[str, Any]]:
    """Remove (in check mode: list) the bakes' libvirt domains, also shut-off ones, with their storage, then the
    box images vagrant-libvirt uploaded for their boxes and machine disks left without a domain.

    A resource is selected when its name carries a bake id (``bakery-<bake id>-...``) that *selector* selects (the
    age is the time in a generated bake id) and, when given, when it is one of *domain_names* (a domain or its
    disk) or belongs to one of *box_names* (a box image). Without a libvirtd listening (:func:`available`) there is
    nothing to look at.
    Removals that fail are reported (state failed), not raised; a listing that fails raises BakeryError.
    """
    if not available(socket or SOCKET):
        return []

    def chosen(name: str) -> tuple[str, str] | None:
        bake_id, rest = split_name(name, selector.bake_id if selector else None)
        if bake_id is None or rest is None:
            return None
        if selector is not None and not selector.matches(bake_id, bake_started(bake_id)):
            return None
        return bake_id, rest

    entries: list[dict[str, Any]] = []
    removed_domains = set()
    for name in domains(uri):
        owner = chosen(name)
        if owner is None or (domain_names is not None and name not in domain_names):
            continue
        entry = record(
            "libvirt",
            "domain",
            name,
            bake_id=owner[0],
            target=owner[1].rsplit("-", 1)[0],
            created=bake_started(owner[0]),
            location=uri,
        )
        entries.append(act(entry, check_mode, lambda name=name: remove_domain(name, uri)))
        removed_domains.add(name)
    for pool, name in volumes(uri):
        owned = _volume_owner(name)
        if owned is None:
            continue
        owner_name, kind = owned
        owner = chosen(owner_name)
        if owner is None:
            continue
        if kind == "box image" and box_names is not None and owner_name not in box_names:
            continue
        if kind == "machine disk":
            if domain_names is not None and owner_name not in domain_names:
                continue
            if owner_name in removed_domains:
                continue  # it goes with its domain (undefine --remove-all-storage)
        entry = record(
            "libvirt",
            kind,
            "%s/%s" % (pool, name),
            name=name,
            bake_id=owner[0],
            target=owner[1] if kind == "box image" else owner[1].rsplit("-", 1)[0],
            created=bake_started(owner[0]),
            location=pool,
        )
        entries.append(act(entry, check_mode, lambda pool=pool, name=name: remove_volume(pool, name, uri)))
    return entries
