"""A snapshot of the build host's live state, and the difference between two, for tests that show a bake left
the host alone: kernel parameters (/proc/sys), mounts, processes the bake left running, packet filter rules,
network links, addresses and routes, /etc/resolv.conf, the host name, loaded kernel modules and the clock.

Other test streams (scripts/integration) and other people's tests share this host and its Docker engine and run
containers meanwhile; what changes by itself or with their containers is left out below, each exclusion with the
reason it was needed (found by taking two snapshots 20 s apart while containers started and stopped:
``python tests/integration/host_state.py --observe 20``). Everything else must be equal.

    before = snapshot(markers=[bake_id, workdir, "sleep 31337"])
    ... bake ...
    assert diff(before, snapshot(markers=before.markers)) == []
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROC_SYS = Path("/proc/sys")

# Writable /proc/sys keys that change by themselves, each seen to change between two snapshots 20 s apart while
# containers started and stopped (python tests/integration/host_state.py --observe 20, with a docker run loop beside
# it). Read-only keys (counters such as fs/file-nr, kernel/random/uuid) are left out by read_sysctls.
VOLATILE_SYSCTLS = re.compile(
    "|".join(
        [
            # the last pid handed out: every process started moves it
            r"kernel/ns_last_pid",
            # each container has a veth pair; the host end's per-interface keys come and go with other tests'
            # containers ("all", "default", lo, eth0 and docker0 stay)
            r"net/ipv[46]/(conf|neigh)/veth[^/]*/.*",
        ]
    )
)

# mmdebstrap's root mode mounts /proc, /sys and /dev into its temporary tree while it builds a rootfs; seen:
# another stream's (or checkout's) base built beside a test's bake. The tree is File::Temp's mmdebstrap.XXXXXXXXXX,
# whose ten characters include "_" (seen: /tmp/mmdebstrap.iXigsC7kR_/proc)
MMDEBSTRAP_MOUNT = re.compile(r"/tmp/mmdebstrap\.[A-Za-z0-9_]{10}/(proc|sys|dev)(/|$)")

# interfaces of other tests' containers: the host ends of their veth pairs
VETH = re.compile(r"\bveth[0-9a-f]+\b")


@dataclass
class Process:
    pid: int
    started: int  # clock ticks after boot (/proc/<pid>/stat field 22): a pid reused later is another process
    cmdline: str
    marked: tuple[str, ...]  # the markers its command line, environment, cwd or root mention


@dataclass
class Snapshot:
    markers: tuple[str, ...]
    wall: float
    monotonic: float
    sysctl: dict[str, str] = field(default_factory=dict)
    mounts: set[tuple[str, str, str, str]] = field(default_factory=set)
    processes: dict[tuple[int, int], Process] = field(default_factory=dict)
    iptables: dict[str, list[str]] = field(default_factory=dict)
    network: dict[str, list[str]] = field(default_factory=dict)
    resolv_conf: str = ""
    hostname: tuple[str, str] = ("", "")
    modules: set[str] = field(default_factory=set)


def read_sysctls() -> dict[str, str]:
    """Every key under /proc/sys a role could set: readable and writable.

    Read-only keys are state the kernel reports, not settings: no `sysctl -w` changes them, and some count what
    every process on the host does (kernel/pty/nr moved 1 -> 0 in a clean-clone CI run when another stream's
    terminal closed). Write-only and unreadable keys are left out too.
    """
    values = {}
    for directory, _dirs, files in os.walk(PROC_SYS):
        for name in files:
            path = os.path.join(directory, name)
            key = os.path.relpath(path, PROC_SYS)
            if VOLATILE_SYSCTLS.fullmatch(key):
                continue
            try:
                mode = os.stat(path).st_mode
                if (
                    not mode & 0o444 or not mode & 0o222
                ):  # write-only (vm/drop_caches) or read-only (kernel/pty/nr)
                    continue
                with open(path, encoding="utf-8", errors="replace") as handle:
                    values[key] = " ".join(handle.read().split())
            except OSError:  # EPERM, EIO, EINVAL: some keys refuse reads
                continue
    return values


def docker_root() -> str:
    """The Docker engine's data root (its per-container overlay mounts live below it)."""
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{.DockerRootDir}}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "/var/lib/docker"


def unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def read_mounts(engine_root: str) -> set[tuple[str, str, str, str]]:
    """(mount point, fstype, source, options) of every mount of the host's mount namespace, but the Docker
    engine's own per-container mounts: other tests start and stop containers meanwhile, and each has an overlay
    root (and its /dev/shm) under the engine's data root and a network namespace file in /run/docker/netns;
    and the transient mounts of other rootfs builds (mmdebstrap)."""
    engine = engine_root.rstrip("/") + "/"
    found = set()
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            dash = fields.index("-")
            point, options = unescape(fields[4]), fields[5]
            fstype, source, super_options = fields[dash + 1], unescape(fields[dash + 2]), fields[dash + 3]
            if point.startswith(engine) and (
                fstype == "overlay" or re.search(r"/containers/[0-9a-f]{64}/mounts/", point)
            ):
                continue
            if point.startswith("/run/docker/netns/"):
                continue
            if MMDEBSTRAP_MOUNT.match(point):
                continue
            found.add((point, fstype, source, "%s %s" % (options, super_options)))
    return found


def read_processes(markers: Sequence[str]) -> dict[tuple[int, int], Process]:
    found = {}
    encoded = [marker.encode() for marker in markers if marker]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        base = "/proc/" + entry
        try:
            with open(base + "/stat", "rb") as handle:
                started = int(handle.read().rsplit(b")", 1)[1].split()[19])
            with open(base + "/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, IndexError, ValueError):
            continue
        texts = [cmdline]
        for extra in ("environ",):
            try:
                with open(base + "/" + extra, "rb") as handle:
                    texts.append(handle.read())
            except OSError:
                pass
        for link in ("cwd", "root"):
            try:
                texts.append(os.readlink(base + "/" + link).encode())
            except OSError:
                pass
        joined = b"\n".join(text.replace(b"\0", b" ") for text in texts)
        marked = tuple(marker.decode() for marker in encoded if marker in joined)
        found[(int(entry), started)] = Process(
            int(entry), started, cmdline.replace(b"\0", b" ").decode(errors="replace").strip(), marked
        )
    return found


def command_lines(argv: Sequence[str]) -> list[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except OSError as error:
        return ["<%s: %s>" % (argv[0], error)]
    if out.returncode != 0:
        return ["<%s failed: %s>" % (" ".join(argv), out.stderr.strip()[-300:])]
    return out.stdout.splitlines()


# The three rules Docker writes for each port a container publishes (seen in CI: another stream's test
# container on 172.17.0.3 with port 80 published on 127.0.0.1 came and went during a bake). They belong to
# other tests' containers, as their veth interfaces do; a rule a role adds on the host matches none of them.
DOCKER_PORT_RULES = (
    # -A DOCKER -d 172.17.0.3/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
    re.compile(
        r"^-A DOCKER -d \S+/(32|128) ! -i (docker0|br-[0-9a-f]+) -o \2 -p \w+ -m \w+ --dport \d+ -j ACCEPT$"
    ),
    # -A POSTROUTING -s 172.17.0.3/32 -d 172.17.0.3/32 -p tcp -m tcp --dport 80 -j MASQUERADE
    re.compile(r"^-A POSTROUTING -s (\S+)/(32|128) -d \1/\2 -p \w+ -m \w+ --dport \d+ -j MASQUERADE$"),
    # -A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 32768 -j DNAT --to-destination 172.17.0.3:80
    re.compile(
        r"^-A DOCKER (-d \S+ )?! -i (docker0|br-[0-9a-f]+) -p \w+ -m \w+ --dport \d+ -j DNAT --to-destination \S+$"
    ),
)


def read_iptables(binary: str) -> list[str]:
    """The rules, without counters, the comment lines that carry the time of the dump, or Docker's rules for
    the ports other tests' containers publish (DOCKER_PORT_RULES)."""
    return docker_port_rules_left_out(command_lines([binary]))


def docker_port_rules_left_out(lines: Iterable[str]) -> list[str]:
    kept = []
    for line in lines:
        if line.startswith("#") or any(rule.search(line) for rule in DOCKER_PORT_RULES):
            continue
        kept.append(re.sub(r" \[\d+:\d+\]$", "", line))
    return kept


def read_network() -> dict[str, list[str]]:
    """``ip -o`` links, addresses and routes (IPv4 and IPv6, every table), without what other tests' containers
    change (both seen): their veth interfaces (with the addresses and routes on them), and docker0's carrier
    (NO-CARRIER, state DOWN and its routes' ``linkdown`` while no container is attached, LOWER_UP and state UP
    while one is). Address lifetimes count down (DHCP): left out."""

    def normal(line: str) -> str:
        line = re.sub(r"\s+", " ", line).strip()
        line = re.sub(r" (valid|preferred)_lft \S+", "", line)  # lifetimes count down
        if re.search(r"\bdocker0\b", line):
            line = re.sub(r"\bNO-CARRIER,|,LOWER_UP\b", "", line)
            line = re.sub(r" state (UP|DOWN)\b", "", line).replace(" linkdown", "")
        return line

    result = {}
    for name, argv in (
        ("link", ["ip", "-o", "link", "show"]),
        ("addr", ["ip", "-o", "addr", "show"]),
        ("route", ["ip", "-o", "-4", "route", "show", "table", "all"]),
        ("route6", ["ip", "-o", "-6", "route", "show", "table", "all"]),
    ):
        lines = [normal(line) for line in command_lines(argv)]
        # "12: veth1a2b@if11: ..." and "... dev veth1a2b ..."
        result[name] = sorted(line for line in lines if not VETH.search(line))
    return result


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return "<%s>" % error.strerror


def read_modules() -> set[str]:
    """Loaded modules (/proc/modules); a kernel built without loadable modules has no /proc/modules: then
    /sys/module (its built-in modules, and any a future kernel would load)."""
    try:
        with open("/proc/modules", encoding="ascii") as handle:
            return {line.split()[0] for line in handle if line.strip()}
    except FileNotFoundError:
        return set(os.listdir("/sys/module"))


def snapshot(markers: Iterable[str] = (), engine_root: str | None = None) -> Snapshot:
    """The host's state now. *markers*: strings (a bake id, work directories, a test's marker) that make a
    process the bake's when its command line, environment, working directory or root mentions one."""
    markers = tuple(marker for marker in markers if marker)
    return Snapshot(
        markers=markers,
        wall=time.time(),
        monotonic=time.monotonic(),
        sysctl=read_sysctls(),
        mounts=read_mounts(engine_root or docker_root()),
        processes=read_processes(markers),
        iptables={binary: read_iptables(binary) for binary in ("iptables-save", "ip6tables-save")},
        network=read_network(),
        resolv_conf=read_text("/etc/resolv.conf"),
        hostname=(os.uname().nodename, read_text("/etc/hostname").strip()),
        modules=read_modules(),
    )


def _lines(before: Sequence[str], after: Sequence[str]) -> list[str]:
    gone = [line for line in before if line not in set(after)]
    new = [line for line in after if line not in set(before)]
    return ["-%s" % line for line in gone] + ["+%s" % line for line in new]


def diff(before: Snapshot, after: Snapshot, slack: float = 5.0) -> list[str]:
    """What changed on the host between *before* and *after*, one readable line per change ([] when nothing).
    A process counts only when it is new and mentions one of *before*'s markers (other tests start processes
    meanwhile); the clock may move by the time that passed, give or take *slack* seconds."""
    changes = []
    for key in sorted(set(before.sysctl) | set(after.sysctl)):
        old, new = before.sysctl.get(key), after.sysctl.get(key)
        if old != new:
            changes.append("sysctl %s: %s -> %s" % (key.replace("/", "."), old, new))
    for mount in sorted(before.mounts - after.mounts):
        changes.append("mount gone: %s" % " ".join(mount))
    for mount in sorted(after.mounts - before.mounts):
        changes.append("mount new: %s" % " ".join(mount))
    own = {os.getpid(), os.getppid()}
    for key, process in sorted(after.processes.items()):
        if key in before.processes or process.pid in own or not process.marked:
            continue
        changes.append(
            "process left running: pid %d %r (mentions %s)"
            % (process.pid, process.cmdline[:200], ", ".join(process.marked))
        )
    for table in sorted(set(before.iptables) | set(after.iptables)):
        for line in _lines(before.iptables.get(table, []), after.iptables.get(table, [])):
            changes.append("%s: %s" % (table, line))
    for kind in sorted(set(before.network) | set(after.network)):
        for line in _lines(before.network.get(kind, []), after.network.get(kind, [])):
            changes.append("ip %s: %s" % (kind, line))
    if before.resolv_conf != after.resolv_conf:
        changes.append("/etc/resolv.conf: %r -> %r" % (before.resolv_conf[:300], after.resolv_conf[:300]))
    if before.hostname[0] != after.hostname[0]:
        changes.append("hostname (uname -n): %s -> %s" % (before.hostname[0], after.hostname[0]))
    if before.hostname[1] != after.hostname[1]:
        changes.append("/etc/hostname: %s -> %s" % (before.hostname[1], after.hostname[1]))
    for module in sorted(after.modules - before.modules):
        changes.append("kernel module loaded: %s" % module)
    for module in sorted(before.modules - after.modules):
        changes.append("kernel module unloaded: %s" % module)
    elapsed = after.monotonic - before.monotonic
    moved = after.wall - before.wall
    if abs(moved - elapsed) > slack:
        changes.append(
            "clock: moved %.1f s in %.1f s (a jump of %+.1f s)" % (moved, elapsed, moved - elapsed)
        )
    return changes


def restore(before: Snapshot, after: Snapshot) -> list[str]:
    """Put back what a bake changed on the host and can be put back, so that a failing test does not leave the
    host changed for the tests that share it: kernel parameters, the host name, new packet filter rules (-A
    lines), new modules, processes the bake left (killed). Mounts are left to the test that knows their owner.
    Returns what it did."""
    done = []

    def run(*argv: str) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        done.append(
            "%s%s" % (" ".join(argv), "" if proc.returncode == 0 else " (failed: %s)" % proc.stderr.strip())
        )

    for key, value in sorted(before.sysctl.items()):
        if after.sysctl.get(key, value) != value:
            try:
                (PROC_SYS / key).write_text(value + "\n")
                done.append("sysctl %s=%s" % (key.replace("/", "."), value))
            except OSError as error:
                done.append("sysctl %s=%s (failed: %s)" % (key.replace("/", "."), value, error))
    if after.hostname[0] != before.hostname[0]:
        run("hostname", before.hostname[0])
    if after.hostname[1] != before.hostname[1] and not before.hostname[1].startswith("<"):
        Path("/etc/hostname").write_text(before.hostname[1] + "\n", encoding="utf-8")
        done.append("/etc/hostname: %s" % before.hostname[1])
    for binary in ("iptables-save", "ip6tables-save"):
        table = "filter"
        old = set(before.iptables.get(binary, []))
        for line in after.iptables.get(binary, []):
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and line not in old:
                run(binary.replace("-save", ""), "-t", table, "-D", *line[3:].split())
    for module in sorted(after.modules - before.modules):
        run("modprobe", "-r", module)
    for key, process in after.processes.items():
        if key not in before.processes and process.marked and process.pid not in (os.getpid(), os.getppid()):
            try:
                os.kill(process.pid, 9)
                done.append("killed %d %s" % (process.pid, process.cmdline[:80]))
            except ProcessLookupError:
                pass
    return done


def _observe(seconds: float) -> None:
    """Two snapshots *seconds* apart, printed as a diff (to find what changes by itself)."""
    first = snapshot()
    time.sleep(seconds)
    for line in diff(first, snapshot(markers=first.markers)):
        print(line)


if __name__ == "__main__":
    _observe(float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "--observe" else 20.0)
