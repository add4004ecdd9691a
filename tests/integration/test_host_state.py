"""host_state on the real host: an unchanged host has no difference, and each kind of change is named."""

from __future__ import annotations

import copy
import os
import subprocess
import uuid

import host_state


def test_an_unchanged_host_has_no_difference():
    before = host_state.snapshot(["nothing-%s" % uuid.uuid4().hex])
    assert before.sysctl and before.mounts and before.processes and before.network["link"]
    assert host_state.diff(before, host_state.snapshot(before.markers)) == []


def test_a_process_left_with_a_marker_is_found_and_others_are_not():
    marker = "host-state-%s" % uuid.uuid4().hex
    before = host_state.snapshot([marker])
    marked = subprocess.Popen(["sleep", "300"], env=dict(os.environ, HOSTILE_MARKER=marker))
    other = subprocess.Popen(["sleep", "301"])
    try:
        changes = host_state.diff(before, host_state.snapshot([marker]))
        assert changes == ["process left running: pid %d 'sleep 300' (mentions %s)" % (marked.pid, marker)]
    finally:
        for process in (marked, other):
            process.kill()
            process.wait()
    assert host_state.diff(before, host_state.snapshot([marker])) == []


def test_each_kind_of_change_is_named():
    before = host_state.snapshot()
    after = copy.deepcopy(before)
    after.sysctl["net/ipv4/ip_forward"] = "0" if before.sysctl["net/ipv4/ip_forward"] != "0" else "1"
    after.mounts.add(("/srv/root/proc", "proc", "proc", "rw,hidepid=2 rw"))
    after.iptables["iptables-save"] = after.iptables["iptables-save"] + [
        "-A INPUT -p tcp --dport 22 -j ACCEPT"
    ]
    after.hostname = ("hostile-baked", "hostile-baked")
    after.modules = after.modules | {"dummy"}
    after.wall += 3600
    changes = host_state.diff(before, after)
    assert changes == [
        "sysctl net.ipv4.ip_forward: %s -> %s"
        % (before.sysctl["net/ipv4/ip_forward"], after.sysctl["net/ipv4/ip_forward"]),
        "mount new: /srv/root/proc proc proc rw,hidepid=2 rw",
        "iptables-save: +-A INPUT -p tcp --dport 22 -j ACCEPT",
        "hostname (uname -n): %s -> hostile-baked" % before.hostname[0],
        "/etc/hostname: %s -> hostile-baked" % before.hostname[1],
        "kernel module loaded: dummy",
        "clock: moved %.1f s in %.1f s (a jump of +3600.0 s)"
        % (after.wall - before.wall, after.monotonic - before.monotonic),
    ]
