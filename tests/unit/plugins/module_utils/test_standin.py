"""The stand-in dispatcher run with sh in a temporary tree, and its install/remove round trips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _standin

SH = shutil.which("dash") or "/bin/sh"


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "sysctl.d").mkdir(parents=True)
    (root / "proc" / "sys" / "net" / "ipv4").mkdir(parents=True)
    (root / "proc" / "sys" / "net" / "ipv4" / "ip_forward").write_text("0\n")
    (root / "var" / "lib").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "standin").write_text(_standin.SCRIPT)
    for name in _standin.COMMANDS:
        (bin_dir / name).symlink_to("standin")
    return root


def run(tree: Path, name: str, *args: str, stdin: str = "", real: str = "/nonexistent"):
    env = dict(os.environ, BAKERY_STANDIN_ROOT=str(tree), BAKERY_STANDIN_REAL_DIRS=real, LC_ALL="C")
    return subprocess.run(
        [SH, str(tree.parent / "bin" / name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_shellcheck_finds_nothing(tmp_path: Path):
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for name, text in (
        ("standin", _standin.SCRIPT),
        ("install", _standin.install_command()[2]),
        ("remove", _standin.remove_command()[2]),
    ):
        path = tmp_path / name
        path.write_text(text if text.startswith("#!") else "#!/bin/sh\n" + text)
        done = subprocess.run(
            [shellcheck, "-s", "sh", str(path)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout


def test_sysctl_reads_proc_sys_without_the_real_tool(tree: Path):
    done = run(tree, "sysctl", "-e", "-n", "net.ipv4.ip_forward")
    assert (done.returncode, done.stdout) == (0, "0\n")
    assert run(tree, "sysctl", "net.ipv4.ip_forward").stdout == "net.ipv4.ip_forward = 0\n"
    missing = run(tree, "sysctl", "-n", "net.nope")
    assert missing.returncode == 255 and "cannot stat /proc/sys/net/nope" in missing.stderr
    assert run(tree, "sysctl", "-e", "-n", "net.nope").returncode == 0


def test_sysctl_read_goes_to_the_real_tool(tree: Path, tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "sysctl").write_text('#!/bin/sh\necho "real $*"\n')
    (real / "sysctl").chmod(0o755)
    assert run(tree, "sysctl", "-n", "kernel.x", real=str(real)).stdout == "real -n kernel.x\n"


def test_sysctl_writes_apply_nothing_and_print_what_sysctl_prints(tree: Path):
    for args in (
        ["-w", "net.ipv4.ip_forward=1"],
        ["net.ipv4.ip_forward=1"],
        ["-e", "-w", "net.ipv4.ip_forward = 1"],
    ):
        done = run(tree, "sysctl", *args)
        assert (done.returncode, done.stdout) == (0, "net.ipv4.ip_forward = 1\n"), args
        assert done.stderr.startswith("bakery: sysctl: net.ipv4.ip_forward is not set")
        assert "/etc/sysctl.d" in done.stderr
    assert (tree / "proc/sys/net/ipv4/ip_forward").read_text() == "0\n"
    # ansible.posix.sysctl fails on these lines only
    assert 'setting key "' not in done.stderr
    (tree / "etc/sysctl.d/10-a.conf").write_text("# comment\n; other\n\n vm.swappiness = 10 \n-kernel.x=2\n")
    (tree / "etc/sysctl.conf").write_text("net.ipv4.ip_forward=1\n")
    loaded = run(tree, "sysctl", "-p", "/etc/sysctl.d/10-a.conf")
    assert (loaded.returncode, loaded.stdout) == (0, "vm.swappiness = 10\nkernel.x = 2\n")
    assert run(tree, "sysctl", "-p").stdout == "net.ipv4.ip_forward = 1\n"
    system = run(tree, "sysctl", "--system")
    assert system.returncode == 0
    assert system.stdout == (
        "* Applying /etc/sysctl.d/10-a.conf ...\nvm.swappiness = 10\nkernel.x = 2\n"
        "* Applying /etc/sysctl.conf ...\nnet.ipv4.ip_forward = 1\n"
    )
    missing = run(tree, "sysctl", "-p", "/etc/nope.conf")
    assert missing.returncode == 255 and 'cannot open "/etc/nope.conf"' in missing.stderr


def test_mount_and_umount(tree: Path, tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "mount").write_text('#!/bin/sh\necho "real mount $*"\n')
    (real / "mount").chmod(0o755)
    for args in ([], ["-l"], ["-t", "proc"], ["-l", "-t", "ext4"]):
        assert run(tree, "mount", *args, real=str(real)).stdout == "real mount %s\n" % " ".join(args)
    for args in (["-a"], ["/proc"], ["-o", "remount,hidepid=2", "/proc"], ["-t", "proc", "proc", "/proc"]):
        done = run(tree, "mount", *args, real=str(real))
        assert (done.returncode, done.stdout) == (0, ""), args
        assert done.stderr.startswith("bakery: mount: nothing is mounted") and "/etc/fstab" in done.stderr
    done = run(tree, "umount", "/proc")
    assert done.returncode == 0 and done.stderr.startswith("bakery: umount: nothing is unmounted")


def test_modprobe_loads_nothing(tree: Path):
    for name, args in (
        ("modprobe", ["br_netfilter"]),
        ("modprobe", ["-r", "x"]),
        ("insmod", ["a.ko"]),
        ("rmmod", ["x"]),
    ):
        done = run(tree, name, *args)
        assert done.returncode == 0 and "/etc/modules-load.d" in done.stderr
    assert "bakery stand-in" in run(tree, "modprobe", "--version").stdout


def test_systemctl_without_systemd(tree: Path, tmp_path: Path):
    for verb in ("start", "stop", "restart", "daemon-reload", "reset-failed"):
        assert run(tree, "systemctl", verb, "nginx").returncode == 0
    active = run(tree, "systemctl", "is-active", "nginx")
    assert (active.returncode, active.stdout) == (3, "inactive\n")
    enable = run(tree, "systemctl", "enable", "nginx")
    assert enable.returncode == 1
    assert enable.stderr == (
        "bakery: systemd is not installed in this builder; `systemctl enable` needs it (install systemd, "
        "or skip with `when: ansible_service_mgr == 'systemd'`)\n"
    )
    real = tmp_path / "real"
    real.mkdir()
    (real / "systemctl").write_text('#!/bin/sh\necho "offline=$SYSTEMD_OFFLINE $*"\n')
    (real / "systemctl").chmod(0o755)
    assert run(tree, "systemctl", "enable", "x", real=str(real)).stdout == "offline=1 enable x\n"


def test_service(tree: Path):
    for action in ("start", "stop", "restart", "reload", "force-reload", "try-restart"):
        done = run(tree, "service", "nginx", action)
        assert done.returncode == 0 and done.stderr.startswith("bakery: service: nginx %s" % action)
    status = run(tree, "service", "nginx", "status")
    assert status.returncode == 3 and "not running (services do not run in an image build)" in status.stdout
    assert (run(tree, "service", "--status-all").returncode, run(tree, "service", "--status-all").stdout) == (
        0,
        "",
    )


def test_hostname_and_hostnamectl(tree: Path):
    assert run(tree, "hostname").stdout.strip() == os.uname().nodename
    assert run(tree, "hostname", "-s").stdout.strip() == os.uname().nodename.split(".")[0]
    for args in (["web1"], ["-F", "/etc/hostname"], ["-b", "web1"]):
        done = run(tree, "hostname", *args)
        assert done.returncode == 0 and "/etc/hostname" in done.stderr and done.stdout == ""
    assert not (tree / "etc/hostname").exists()
    # ansible.builtin.hostname use: systemd
    assert run(tree, "hostnamectl", "--static", "status").stdout == "\n"
    assert run(tree, "hostnamectl", "--transient", "status").stdout.strip() == os.uname().nodename
    assert run(tree, "hostnamectl", "--pretty", "--static", "set-hostname", "web1").returncode == 0
    assert (tree / "etc/hostname").read_text() == "web1\n"
    assert run(tree, "hostnamectl", "--transient", "set-hostname", "other").returncode == 0
    assert run(tree, "hostnamectl", "--static", "status").stdout == "web1\n"
    assert run(tree, "hostnamectl", "hostname", "--static").stdout == "web1\n"
    assert run(tree, "hostnamectl", "set-hostname", "web2").returncode == 0
    assert "Static hostname: web2" in run(tree, "hostnamectl").stdout


def test_iptables_records_rules_and_checks_them(tree: Path):
    rule = ["-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "ssh in", "-j", "ACCEPT"]
    assert run(tree, "iptables", "--version").stdout == "iptables v1.8.9 (bakery stand-in)\n"
    assert run(tree, "iptables", "-t", "filter", "-C", "INPUT", *rule).returncode == 1
    added = run(tree, "iptables", "-t", "filter", "-A", "INPUT", "-w", "5", *rule)
    assert added.returncode == 0 and added.stderr.startswith("bakery: iptables: recorded")
    assert run(tree, "iptables", "-t", "filter", "-C", "INPUT", "-w", *rule).returncode == 0
    assert run(tree, "iptables", "-I", "INPUT", "1", "-i", "lo", "-j", "ACCEPT").returncode == 0
    assert run(tree, "iptables", "-N", "LOGDROP").returncode == 0
    assert run(tree, "iptables", "-N", "LOGDROP").returncode == 1
    assert run(tree, "iptables", "-P", "FORWARD", "DROP").returncode == 0
    assert run(tree, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE").returncode == 0
    assert run(tree, "iptables", "-A", "NOCHAIN", "-j", "ACCEPT").returncode == 1
    assert "Chain FORWARD (policy DROP)" in run(tree, "iptables", "-L", "FORWARD").stdout
    assert run(tree, "iptables", "-L", "NOCHAIN").returncode == 1
    saved = run(tree, "iptables-save").stdout
    assert saved.splitlines()[1:] == [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":LOGDROP - [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        '-A INPUT -p tcp --dport 22 -m comment --comment "ssh in" -j ACCEPT',
        "COMMIT",
        "# Generated by iptables-save (bakery stand-in)",
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        "-A POSTROUTING -j MASQUERADE",
        "COMMIT",
    ]
    assert run(tree, "iptables", "-D", "INPUT", *rule).returncode == 0
    assert run(tree, "iptables", "-C", "INPUT", *rule).returncode == 1
    assert run(tree, "ip6tables-save").stdout == ""  # a family of its own
    restored = run(
        tree, "ip6tables-restore", stdin="*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n"
    )
    assert restored.returncode == 0
    assert run(tree, "ip6tables", "-C", "INPUT", "-i", "lo", "-j", "ACCEPT").returncode == 0
    assert "-P INPUT DROP" in run(tree, "ip6tables", "-S").stdout
    assert (tree / "var/lib/bakery-standin/iptables/v4/filter").is_file()


def test_reboot_family(tree: Path):
    for name in ("reboot", "shutdown", "poweroff", "halt", "telinit"):
        done = run(tree, name, "-r", "now")
        assert done.returncode == 0 and done.stderr.startswith("bakery: %s: nothing is rebooted" % name)
    refused = run(tree, "shutdown", "-r", "0", "Reboot initiated by Ansible")
    assert refused.returncode == 1
    assert refused.stderr == (
        "bakery: ansible.builtin.reboot cannot reboot a build container or root-filesystem builder; skip it "
        "with `when: bakery_builder_type == 'vm'` (the image boots fresh anyway)\n"
    )


# ---------------------------------------------------------------- install and remove


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything of a tree but directory mtimes."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            if path.is_symlink():
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif path.is_dir():
                found[str(path.relative_to(root))] = ("dir", info.st_mode)
            else:
                found[str(path.relative_to(root))] = (
                    "file",
                    info.st_mode,
                    info.st_mtime_ns,
                    path.read_bytes(),
                )
    return found


def base_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "sbin").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "usr" / "local" / "sbin").mkdir()
    (root / "usr" / "local" / "sbin" / "service").write_text("#!/bin/sh\n# the base's own\n")
    (root / "var" / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    return root


def test_install_into_tree_and_remove_leave_the_tree_as_it_was(tmp_path: Path):
    root = base_tree(tmp_path)
    before = snapshot(root)
    names = _standin.install_into_tree(str(root))
    assert "service" not in names and "sysctl" in names  # the base's own file is never replaced
    assert (root / "usr/local/sbin/service").read_text() == "#!/bin/sh\n# the base's own\n"
    assert os.readlink(root / "usr/local/sbin/sysctl") == "/usr/local/lib/bakery/standin"
    assert (root / "usr/local/lib/bakery/standin").read_text() == _standin.SCRIPT
    assert (root / "usr/lib/modules" / os.uname().release / "modules.builtin").read_bytes() == b""
    with pytest.raises(Exception, match="already exists"):
        _standin.install_into_tree(str(root))
    # what a role does meanwhile: replaces a link, keeps its own file, records iptables rules
    (root / "usr/local/sbin/mount").unlink()
    (root / "usr/local/sbin/mount").write_text("#!/bin/sh\n# the role's\n")
    (root / "var/lib/bakery-standin/iptables/v4").mkdir(parents=True)
    (root / "var/lib/bakery-standin/iptables/v4/filter").write_text(":INPUT ACCEPT\n")
    _standin.remove_from_tree(str(root))
    after = snapshot(root)
    assert after.pop("usr/local/sbin/mount")[3] == b"#!/bin/sh\n# the role's\n"
    assert after == before
    _standin.remove_from_tree(str(root))  # nothing installed: nothing to do


def test_install_in_a_tree_without_usr_local(tmp_path: Path):
    root = tmp_path / "bare"
    (root / "etc").mkdir(parents=True)
    before = snapshot(root)
    _standin.install_into_tree(str(root))
    assert (root / "usr/local/sbin/sysctl").is_symlink()
    _standin.remove_from_tree(str(root))
    assert snapshot(root) == before


def rewrite(root: Path, script: str) -> str:
    for path in ("/usr/local", "/var/lib/bakery-standin", "/lib/modules"):
        script = script.replace(path, str(root) + path)
    return script


def in_chroot_like(root: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """The commands' paths are absolute: run them with the tree's paths rewritten (no chroot needed)."""
    return subprocess.run([SH, "-c", rewrite(root, argv[2])], capture_output=True, text=True, check=False)


def test_install_and_remove_commands_round_trip_and_match_the_tree_variant(tmp_path: Path):
    root = base_tree(tmp_path)
    before = snapshot(root)
    done = in_chroot_like(root, _standin.install_command())
    assert done.returncode == 0, done.stderr
    assert "service" not in done.stdout.split() and "sysctl" in done.stdout.split()
    link = root / "usr/local/sbin/sysctl"
    assert os.readlink(link) == str(root) + "/usr/local/lib/bakery/standin"
    assert (root / "usr/local/lib/bakery/standin").read_text() == rewrite(root, _standin.SCRIPT)
    assert ((root / "usr/local/lib/bakery/standin").stat().st_mode & 0o777) == 0o755
    record = (root / "usr/local/lib/bakery/installed").read_text()
    assert "dir %s/usr/local/lib/bakery\n" % root in record and "link sysctl\n" in record
    assert "file %s/lib/modules/%s/modules.builtin" % (root, os.uname().release) in record
    again = in_chroot_like(root, _standin.install_command())
    assert again.returncode == 1 and "already exists" in again.stderr
    (root / "var/lib/bakery-standin").mkdir()
    removed = in_chroot_like(root, _standin.remove_command())
    assert removed.returncode == 0, removed.stderr
    assert snapshot(root) == before
    assert in_chroot_like(root, _standin.remove_command()).returncode == 0


def test_files_describe_the_script_and_links():
    described = _standin.files()
    assert described[0] == ("/usr/local/lib/bakery/standin", _standin.SCRIPT, 0o755, None)
    assert {entry[0] for entry in described[1:]} == {"/usr/local/sbin/" + name for name in _standin.COMMANDS}
