"""What libvirt holds of a bake's booted boxes, swept with virsh: a stand-in ``virsh`` on PATH keeps the domains and
volumes in a JSON file, so that selection, check mode, shut-off domains and failures are seen exactly."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _libvirt, _qemu_vm
from ansible_collections.bakery.images.plugins.module_utils._temporary import Selector

# a virsh that knows list, pool-list, vol-list, domstate, destroy, undefine and vol-delete, over a state file
VIRSH = r"""#!%(python)s
import json, os, sys
state_path = os.environ["FAKE_VIRSH_STATE"]
with open(state_path) as handle:
    state = json.load(handle)
args = sys.argv[1:]
with open(state_path + ".log", "a") as log:
    log.write(json.dumps(args) + "\n")
assert args[:3] == ["-q", "-c", "qemu:///system"], args
args = args[3:]

def fail(message):
    sys.stderr.write("error: %%s\n" %% message)
    sys.exit(1)

def save():
    with open(state_path, "w") as handle:
        json.dump(state, handle)

command, rest = args[0], args[1:]
if command in state.get("fail", {}).get("*", []) or rest[-1:] and rest[-1] in state.get("fail", {}).get(command, []):
    fail("unsupported flags (0x4) in function qemuDomainUndefineFlags" if "--nvram" in rest
         else "failed to %%s: injected failure" %% command)
if command == "list":
    print("\n".join(state["domains"]))
elif command == "pool-list":
    print("\n".join(state["pools"]))
elif command == "vol-list":
    pool = rest[rest.index("--pool") + 1]
    for name in state["pools"][pool]:
        print(" %%s   /var/lib/libvirt/images/%%s" %% (name, name))
elif command == "domstate":
    if rest[0] not in state["domains"]:
        fail("failed to get domain '%%s'" %% rest[0])
    print(state["domains"][rest[0]])
elif command == "destroy":
    if state["domains"][rest[0]] == "shut off":
        fail("Requested operation is not valid: domain is not running")
    state["domains"][rest[0]] = "shut off"
    save()
elif command == "undefine":
    name = rest[0]
    if state["domains"][name] != "shut off":
        fail("cannot undefine a running domain")
    del state["domains"][name]
    if "--remove-all-storage" in rest:
        for pool in state["pools"].values():
            if name + ".img" in pool:
                pool.remove(name + ".img")
    save()
elif command == "vol-delete":
    pool = rest[rest.index("--pool") + 1]
    state["pools"][pool].remove(rest[-1])
    save()
else:
    fail("unknown command " + command)
"""

OLD = "20200101t000000-0a0b0c"  # a bake of long ago
NEW = time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + "-0d0e0f"  # a bake of now


def unix_socket(listen: bool):
    """A Unix socket (in a short directory: socket paths have 107 bytes) something listens on, as libvirtd's, or
    the one a killed libvirtd leaves: bound once, nothing listening on it any more."""
    directory = tempfile.mkdtemp(prefix="lv-")
    path = os.path.join(directory, "libvirt-sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    if listen:
        server.listen(8)
    else:
        server.close()
    yield path
    server.close()
    os.unlink(path)
    os.rmdir(directory)


@pytest.fixture()
def listening():
    yield from unix_socket(listen=True)


@pytest.fixture()
def stale():
    yield from unix_socket(listen=False)


@pytest.fixture()
def libvirt(tmp_path, monkeypatch, listening):
    """The stand-in virsh on PATH, a socket it listens on, and the state: two bakes' machines and box images, a
    machine of bake ``mine`` (not a generated id), and things that are not bakery's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    virsh = bin_dir / "virsh"
    virsh.write_text(VIRSH % {"python": sys.executable})
    virsh.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ["PATH"]))
    state = tmp_path / "state.json"
    monkeypatch.setenv("FAKE_VIRSH_STATE", str(state))
    data = {
        "domains": {
            "bakery-%s-box-default" % OLD: "shut off",
            "bakery-%s-box-default" % NEW: "running",
            "bakery-%s-box2-default" % NEW: "running",
            "bakery-mine-box-default": "paused",
            "web_default": "running",
            "bakery-notanid-box-default": "running",
        },
        "pools": {
            "default": [
                "bakery-%s-box-default.img" % OLD,
                "bakery-%s-box-default.img" % NEW,
                "bakery-%s-box2-default.img" % NEW,
                "bakery-mine-box-default.img",
                "bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % OLD,
                "bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % NEW,
                "bakery-%s-box2_vagrant_box_image_0_1733287000_box.img" % NEW,
                "bakery-mine-box_vagrant_box_image_0_1733287000_box.img",
                "debian-VAGRANTSLASH-bookworm64_vagrant_box_image_12_box.img",
                "web_default.img",
                "bakery-%s-box-default.img.bak" % OLD,
            ],
            "other": ["bakery-%s-box-default-vdb.qcow2" % OLD],
        },
    }
    state.write_text(json.dumps(data))

    class Host:
        path = state
        sock = listening

        @staticmethod
        def read() -> dict:
            return json.loads(state.read_text())

        @staticmethod
        def calls() -> list[list[str]]:
            log = Path(str(state) + ".log")
            return [json.loads(line)[3:] for line in log.read_text().splitlines()] if log.exists() else []

        @staticmethod
        def fail(command: str, name: str) -> None:
            current = json.loads(state.read_text())
            current.setdefault("fail", {}).setdefault(command, []).append(name)
            state.write_text(json.dumps(current))

    return Host


def summary(entries):
    return sorted((e["kind"], e["name"], e["state"]) for e in entries)


def test_the_janitor_removes_a_bakes_domains_and_box_images_by_bake_id(libvirt):
    entries = _libvirt.sweep(Selector(NEW), False, socket=libvirt.sock)
    assert summary(entries) == [
        ("box image", "bakery-%s-box2_vagrant_box_image_0_1733287000_box.img" % NEW, "removed"),
        ("box image", "bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % NEW, "removed"),
        ("domain", "bakery-%s-box-default" % NEW, "removed"),
        ("domain", "bakery-%s-box2-default" % NEW, "removed"),
    ]
    domain = next(e for e in entries if e["name"] == "bakery-%s-box-default" % NEW)
    assert domain["bake_id"] == NEW and domain["target"] == "box" and domain["backend"] == "libvirt"
    image = next(e for e in entries if e["kind"] == "box image" and "box2" in e["name"])
    assert image["target"] == "box2" and image["location"] == "default"
    state = libvirt.read()
    assert not [d for d in state["domains"] if NEW in d]
    # the domains' disks went with them (undefine --remove-all-storage); nothing else was touched
    assert not [v for v in state["pools"]["default"] if NEW in v]
    assert "bakery-%s-box-default" % OLD in state["domains"] and "web_default" in state["domains"]
    assert len(state["pools"]["default"]) == 7 and state["pools"]["other"]
    # a running domain is stopped first, then undefined with its storage and UEFI variables
    calls = [
        c for c in libvirt.calls() if c[-1] == "bakery-%s-box-default" % NEW or c[1:2] == [domain["name"]]
    ]
    assert ["destroy", domain["name"]] in calls
    assert ["undefine", domain["name"], "--remove-all-storage", "--nvram"] in calls
    # the second sweep finds nothing
    assert _libvirt.sweep(Selector(NEW), False, socket=libvirt.sock) == []


def test_by_age_the_time_in_the_bake_id_counts_and_shut_off_domains_go_too(libvirt):
    entries = _libvirt.sweep(Selector(older_than=3600), False, socket=libvirt.sock)
    assert summary(entries) == [
        ("box image", "bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % OLD, "removed"),
        ("domain", "bakery-%s-box-default" % OLD, "removed"),
    ]
    assert entries[0]["created"] == "2020-01-01T00:00:00Z"
    # the shut-off domain was not stopped again, only undefined
    assert not [c for c in libvirt.calls() if c[0] == "destroy"]
    state = libvirt.read()
    assert "bakery-%s-box-default" % OLD not in state["domains"]
    # a bake id that is not a generated one has no age: never selected by age, only by its id
    assert "bakery-mine-box-default" in state["domains"]
    mine = _libvirt.sweep(Selector("mine"), False, socket=libvirt.sock)
    assert summary(mine) == [
        ("box image", "bakery-mine-box_vagrant_box_image_0_1733287000_box.img", "removed"),
        ("domain", "bakery-mine-box-default", "removed"),
    ]


def test_a_bakes_cleanup_removes_its_own_target_only(libvirt):
    entries = _libvirt.sweep(
        None,
        False,
        domain_names=["bakery-%s-box-default" % NEW],
        box_names=["bakery-%s-box" % NEW],
        socket=libvirt.sock,
    )
    assert summary(entries) == [
        ("box image", "bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % NEW, "removed"),
        ("domain", "bakery-%s-box-default" % NEW, "removed"),
    ]
    assert "bakery-%s-box2-default" % NEW in libvirt.read()["domains"]


def test_check_mode_removes_nothing(libvirt):
    before = libvirt.read()
    entries = _libvirt.sweep(Selector(NEW), True, socket=libvirt.sock)
    assert {e["state"] for e in entries} == {"would remove"} and len(entries) == 4
    assert libvirt.read() == before
    assert {c[0] for c in libvirt.calls()} <= {"list", "pool-list", "vol-list"}


def test_a_machine_disk_without_its_domain_goes_too(libvirt):
    state = libvirt.read()
    del state["domains"]["bakery-%s-box-default" % OLD]
    libvirt.path.write_text(json.dumps(state))
    entries = _libvirt.sweep(Selector(OLD), False, socket=libvirt.sock)
    assert ("machine disk", "bakery-%s-box-default.img" % OLD, "removed") in summary(entries)
    # its backup copy and the second disk in another pool are not vagrant-libvirt's names for it
    left = libvirt.read()["pools"]
    assert "bakery-%s-box-default.img.bak" % OLD in left["default"] and left["other"]


def test_failures_are_reported_and_the_rest_still_goes(libvirt):
    libvirt.fail("undefine", "--nvram")  # a libvirt that refuses --nvram: undefined without it
    libvirt.fail("vol-delete", "bakery-%s-box2_vagrant_box_image_0_1733287000_box.img" % NEW)
    entries = _libvirt.sweep(Selector(NEW), False, socket=libvirt.sock)
    states = {e["name"]: e["state"] for e in entries}
    assert states["bakery-%s-box-default" % NEW] == "removed"
    failed = [e for e in entries if e["state"] == "failed"]
    assert [e["name"] for e in failed] == ["bakery-%s-box2_vagrant_box_image_0_1733287000_box.img" % NEW]
    assert "injected failure" in failed[0]["error"] and "deleting volume" in failed[0]["error"]
    assert states["bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % NEW] == "removed"


def test_a_listing_that_fails_raises(libvirt):
    state = libvirt.read()
    state["fail"] = {"*": ["list"]}
    libvirt.path.write_text(json.dumps(state))
    with pytest.raises(Exception, match="listing libvirt domains failed: error: failed to list"):
        _libvirt.sweep(Selector(NEW), False, socket=libvirt.sock)


def test_without_a_libvirt_socket_there_is_nothing_to_look_at(libvirt, tmp_path):
    assert _libvirt.sweep(Selector(NEW), False, socket=str(tmp_path / "no-sock")) == []
    assert libvirt.calls() == []


def test_a_socket_nothing_listens_on_is_no_libvirtd(libvirt, stale, tmp_path):
    """A killed libvirtd leaves its socket: virsh would fail with "Connection refused" on every call, so the sweep
    (the janitor's, a bake's cleanup) has nothing to look at there, as without a socket; so has a plain file."""
    plain = tmp_path / "plain"
    plain.write_text("")
    assert _libvirt.available(libvirt.sock)
    assert not _libvirt.available(stale)
    assert not _libvirt.available(str(plain))
    assert not _libvirt.available(str(tmp_path / "no-sock"))
    assert _libvirt.sweep(Selector(NEW), False, socket=stale) == []
    assert libvirt.calls() == []


def test_the_janitors_sweep_of_this_host_includes_libvirt(libvirt, monkeypatch, tmp_path):
    monkeypatch.setattr(_libvirt, "SOCKET", libvirt.sock)
    entries = _qemu_vm.sweep(Selector(OLD), True, [str(tmp_path / "nothing-here")])
    assert summary([e for e in entries if e["backend"] == "libvirt"]) == [
        ("box image", "bakery-%s-box_vagrant_box_image_0_1733287000_box.img" % OLD, "would remove"),
        ("domain", "bakery-%s-box-default" % OLD, "would remove"),
    ]


def test_names():
    assert _libvirt.box_name("b1", "box") == "bakery-b1-box"
    assert _libvirt.domain_name("b1", "box") == "bakery-b1-box-default"
