"""Builder VM logic without a VM: options, qemu's command line, the cloud-init seed, the state file, and
the supervisor that ties qemu's life to ansible-playbook's (tested with real processes standing in)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _qemu_vm as qv
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

SRC = Path(__file__).resolve().parents[4] / ".collections" / "src"


# --------------------------------------------------------------------------- accelerators


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("kvm:tcg", ["kvm", "tcg"]),
        ("tcg", ["tcg"]),
        (" tcg : kvm ", ["tcg", "kvm"]),
        (["kvm", "tcg"], ["kvm", "tcg"]),
        (["kvm:tcg"], ["kvm", "tcg"]),
    ],
)
def test_accelerator_lists_keep_their_order(value, expected) -> None:
    assert qv.parse_accelerators(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("kvm::tcg", "empty"),
        ("kvm:hvx", "unknown accelerator hvx"),
        ("tcg:tcg", "twice"),
    ],
)
def test_bad_accelerator_lists_are_named(value, message) -> None:
    with pytest.raises(BakeryError, match=message):
        qv.parse_accelerators(value)


# --------------------------------------------------------------------------- options


def _params(tmp_path: Path, **extra) -> dict:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    params = {"disk": str(disk), "bake_id": "20250101t000000-abcdef", "target": "web", "accelerator": "tcg"}
    params.update(extra)
    return params


def test_options_default_workdir_names_the_bake_and_target(tmp_path: Path) -> None:
    opts = qv.parse_options(_params(tmp_path))
    assert os.path.basename(opts.workdir) == "bakery-vm-20250101t000000-abcdef-web"
    assert opts.name == "bakery-20250101t000000-abcdef-web"
    assert opts.accelerators == ["tcg"]


def test_options_without_bake_id_get_a_fresh_one(tmp_path: Path) -> None:
    first = qv.parse_options(_params(tmp_path, bake_id=None))
    second = qv.parse_options(_params(tmp_path, bake_id=None))
    assert first.bake_id != second.bake_id
    assert first.bake_id in first.workdir


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"disk": "/nonexistent/disk.qcow2"}, "disk /nonexistent/disk.qcow2 does not exist"),
        ({"target": "../x"}, "target '../x' is not valid"),
        ({"initrd": "__disk__"}, "need kernel"),
        ({"public_key": "not a key", "private_key": "__disk__"}, "not an OpenSSH public key"),
        ({"public_key": "ssh-ed25519 AAAAC3Nza test"}, "public_key needs private_key"),
        ({"memory": 64}, "at least 128"),
        ({"user": "Root;rm"}, "not a valid user name"),
    ],
)
def test_bad_options_fail_with_a_message_naming_them(tmp_path: Path, extra: dict, message: str) -> None:
    params = _params(tmp_path)
    params.update({k: params["disk"] if v == "__disk__" else v for k, v in extra.items()})
    with pytest.raises(BakeryError, match=message):
        qv.parse_options(params)


def test_disk_format_is_told_by_the_qcow2_header(tmp_path: Path) -> None:
    raw = tmp_path / "a.img"
    raw.write_bytes(b"\0" * 512)
    qcow = tmp_path / "b.img"
    qcow.write_bytes(qv.QCOW2_MAGIC + b"\0" * 508)
    assert qv.detect_format(str(raw)) == "raw"
    assert qv.detect_format(str(qcow)) == "qcow2"


# --------------------------------------------------------------------------- qemu command line


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_command_line_bios_direct_kernel_and_seed(tmp_path: Path) -> None:
    params = _params(tmp_path, accelerator="kvm:tcg", memory=512, cpus=1)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    params.update(kernel=str(kernel), initrd=str(kernel), append="root=/dev/vda rw console=ttyS0")
    opts = qv.parse_options(params)
    argv = qv.qemu_command(opts, 40222, "/images/a,b.qcow2", "qcow2", seed=True)
    assert argv[0] == "qemu-system-x86_64"
    assert _pairs(argv, "-name") == ["bakery-20250101t000000-abcdef-web"]
    assert _pairs(argv, "-accel") == ["kvm", "tcg"]  # tried in this order
    assert _pairs(argv, "-m") == ["512"] and _pairs(argv, "-smp") == ["1"]
    drives = _pairs(argv, "-drive")
    # the disk path's comma is doubled, so qemu reads it as part of the file name
    assert drives[0] == "file=/images/a,,b.qcow2,format=qcow2,if=virtio,discard=unmap"
    assert drives[1] == "file=seed.img,format=raw,if=virtio,readonly=on"
    assert not [d for d in drives if "pflash" in d]
    assert _pairs(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:40222-:22"]
    assert _pairs(argv, "-serial") == ["chardev:serial0"]
    assert _pairs(argv, "-chardev") == ["file,id=serial0,path=serial.log"]
    assert _pairs(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]
    assert _pairs(argv, "-kernel") == [str(kernel)]
    assert _pairs(argv, "-append") == ["root=/dev/vda rw console=ttyS0"]
    assert "-nodefaults" in argv and _pairs(argv, "-display") == ["none"]


def test_command_line_uefi_without_kernel(tmp_path: Path) -> None:
    opts = qv.parse_options(_params(tmp_path, firmware="uefi", qemu_args=["-device", "virtio-balloon"]))
    argv = qv.qemu_command(opts, 2222, "overlay.qcow2", "qcow2", uefi_code="/fw/OVMF_CODE_4M.fd")
    drives = _pairs(argv, "-drive")
    assert drives[:2] == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd",
        "if=pflash,format=raw,unit=1,file=efivars.fd",  # the VM's own copy of the variables
    ]
    assert "-kernel" not in argv and "-append" not in argv
    assert argv[-2:] == ["-device", "virtio-balloon"]


def test_direct_kernel_boot_defaults_to_the_serial_console(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    opts = qv.parse_options(_params(tmp_path, kernel=str(kernel)))
    assert _pairs(qv.qemu_command(opts, 2222, "d", "raw"), "-append") == ["console=ttyS0"]


def test_uefi_firmware_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(BakeryError, match="does not exist"):
        qv.uefi_firmware(str(tmp_path / "code.fd"), str(tmp_path / "vars.fd"))


def test_uefi_firmware_defaults_to_debians_ovmf() -> None:
    code, template = qv.uefi_firmware(None, None)
    assert code.endswith("OVMF_CODE_4M.fd") and template.endswith("OVMF_VARS_4M.fd")


def test_the_key_credential_is_a_tmpfiles_line_for_authorized_keys2(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample bakery-verify"
    credential = qv.key_credential("root", key)
    prefix = "io.systemd.credential.binary:tmpfiles.extra="
    assert credential.startswith(prefix)
    lines = base64.b64decode(credential[len(prefix) :]).decode().splitlines()
    assert lines == [
        "d /root/.ssh 0700 root - -",
        "f+ /root/.ssh/authorized_keys2 0600 root - - " + key,
    ]
    assert (
        "/home/admin/.ssh/authorized_keys2 0600 admin"
        in base64.b64decode(qv.key_credential("admin", key)[len(prefix) :]).decode()
    )
    opts = qv.parse_options(_params(tmp_path, credential=True))
    assert opts.credential
    argv = qv.qemu_command(opts, 2222, "overlay.qcow2", "qcow2", credential=credential)
    assert _pairs(argv, "-smbios") == ["type=11,value=" + credential]
    assert "-smbios" not in qv.qemu_command(opts, 2222, "overlay.qcow2", "qcow2")


# --------------------------------------------------------------------------- cloud-init seed


def test_user_data_for_root_and_for_another_user() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk bakery-test"
    root = qv.cloud_init_user_data("root", key)
    assert root.startswith("#cloud-config\n")
    data = json.loads(root.split("\n", 1)[1])
    assert data == {"disable_root": False, "ssh_authorized_keys": [key], "ssh_pwauth": False}
    other = json.loads(qv.cloud_init_user_data("debian", key).split("\n", 1)[1])
    assert other["users"] == [
        {
            "name": "debian",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": [key],
        }
    ]


def test_seed_is_a_vfat_image_labelled_cidata_with_both_files(tmp_path: Path) -> None:
    seed = tmp_path / "seed.img"
    user_data = qv.cloud_init_user_data("root", "ssh-ed25519 AAAA x")
    meta_data = qv.cloud_init_meta_data("bakery-b-t", "web")
    qv.make_seed(str(seed), user_data, meta_data)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")

    def mtools(*args: str) -> str:
        return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout

    assert "CIDATA" in mtools("mlabel", "-s", "-i", str(seed), "::")
    assert mtools("mtype", "-i", str(seed), "::user-data") == user_data
    assert json.loads(mtools("mtype", "-i", str(seed), "::meta-data")) == {
        "instance-id": "bakery-b-t",
        "local-hostname": "web",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.img"]  # no staging files left


def test_hostname_from_target() -> None:
    assert qv.default_hostname("Web_Server.1") == "web-server-1"
    assert qv.default_hostname("___") == "bakery-vm"


# --------------------------------------------------------------------------- state and console


def test_state_file_round_trip_keeps_no_secret(tmp_path: Path) -> None:
    opts = qv.parse_options(_params(tmp_path, workdir=str(tmp_path / "vm")))
    os.makedirs(opts.workdir)
    key = os.path.join(opts.workdir, qv.KEY)
    state = qv.state_record(opts, 1234, 99, 1233, (1000, 5), 40222, "overlay.qcow2", key, ["qemu"])
    qv.write_state(opts.workdir, state)
    back = qv.read_state(opts.workdir)
    assert back == state
    assert (back["bake_id"], back["target"], back["pid"], back["port"]) == (opts.bake_id, "web", 1234, 40222)
    assert back["started_at"].endswith("Z")
    assert back["private_key"] == key
    vm = qv.public_state(opts.workdir, back)
    assert vm["serial_log"] == os.path.join(opts.workdir, "serial.log")
    builder = qv.builder(vm)
    assert builder["connection"] == "ssh" and builder["host"] == "127.0.0.1" and builder["port"] == 40222
    assert "UserKnownHostsFile=/dev/null" in builder["ssh_common_args"]
    assert qv.read_state(str(tmp_path / "nothing")) is None


def test_console_tail_drops_escape_sequences_and_blank_lines(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(
        b"\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r\n\r\n[    1.0] Linux version 6.1\n"
        b"progress 10%\rprogress 100%\nKernel panic - not syncing\n"
    )
    assert qv.tail_file(str(log), 3) == [
        "[    1.0] Linux version 6.1",
        "progress 100%",
        "Kernel panic - not syncing",
    ]
    assert qv.tail_file(str(log))[0] == "  OK  ] Started ssh.service"
    assert qv.tail_file(str(tmp_path / "missing")) == []


# --------------------------------------------------------------------------- processes


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


FAKE_PLAYBOOK = """\
import os, subprocess, sys
# like ansible-playbook: the main process forks a worker (same command line) that runs the module
if os.fork() == 0:
    code = "import sys; sys.path.insert(0, %r); " % sys.argv[1]
    code += "from ansible_collections.bakery.images.plugins.module_utils import _qemu_vm as q; "
    code += "print(q.find_ansible_process())"
    out = subprocess.run(["/bin/sh", "-c", '"$0" -c "$1"', sys.executable, code], capture_output=True, text=True)
    sys.stdout.write(out.stdout + out.stderr)
    sys.stdout.flush()
    os._exit(0)
os.wait()
"""


def test_find_ansible_process_returns_the_main_process_pid(tmp_path: Path) -> None:
    script = tmp_path / "ansible-playbook"
    script.write_text(FAKE_PLAYBOOK)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(SRC)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=60)
    # the worker (a fork with the same command line) found the main process, started by us
    assert out.strip() == str(proc.pid), out + err
    assert qv.find_ansible_process() is None  # pytest is no ansible-playbook


def test_no_ansible_above_means_watch_pid_is_required() -> None:
    with pytest.raises(BakeryError, match="give watch_pid"):
        qv.resolve_watch(None)


SUPERVISED = [sys.executable, "-c", "import time; time.sleep(120)"]


def _supervise(tmp_path: Path, watched: subprocess.Popen) -> tuple[int, int, Path]:
    workdir = tmp_path / "vm"
    workdir.mkdir()
    watch = (watched.pid, qv.start_ticks(watched.pid))
    supervisor, child = qv.spawn_supervised(SUPERVISED, str(workdir), watch, str(workdir))
    return supervisor, child, workdir


def test_supervisor_stops_the_vm_and_removes_its_directory_when_the_watched_process_dies(
    tmp_path: Path,
) -> None:
    watched = subprocess.Popen(["sleep", "300"])
    supervisor, child, workdir = _supervise(tmp_path, watched)
    try:
        assert qv.alive(child, None) and qv.alive(supervisor, None)
        time.sleep(1)
        assert qv.alive(child, None)  # nothing happens while the watched process lives
        watched.kill()
        watched.wait()
        assert _wait(lambda: not qv.alive(child, None), 5), "the supervised process outlived the watched one"
        assert _wait(lambda: not workdir.exists(), 5)
        assert _wait(lambda: not qv.alive(supervisor, None), 5)
    finally:
        watched.kill()
        qv.kill_vm(child, None, supervisor, grace=1)


def test_supervisor_exits_with_the_vm_and_leaves_the_directory(tmp_path: Path) -> None:
    watched = subprocess.Popen(["sleep", "300"])
    try:
        supervisor, child, workdir = _supervise(tmp_path, watched)
        assert "bakery-watchdog" in Path("/proc/%d/comm" % supervisor).read_text()
        assert (workdir / qv.QEMU_LOG).exists()
        os.kill(child, signal.SIGTERM)
        assert _wait(lambda: not qv.alive(supervisor, None), 5)
        assert workdir.exists()
    finally:
        watched.kill()
        watched.wait()


def test_a_missing_emulator_is_reported(tmp_path: Path) -> None:
    watched = subprocess.Popen(["sleep", "300"])
    try:
        workdir = tmp_path / "vm"
        workdir.mkdir()
        with pytest.raises(BakeryError, match="could not start /nonexistent/qemu"):
            qv.spawn_supervised(["/nonexistent/qemu"], str(workdir), (watched.pid, None), None)
    finally:
        watched.kill()
        watched.wait()


def test_kill_vm_escalates_to_sigkill() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import signal, sys, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ready", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert stubborn.stdout.readline().strip() == "ready"
    ticks = qv.start_ticks(stubborn.pid)

    def reaped_gone() -> bool:
        stubborn.poll()
        return not qv.alive(stubborn.pid, ticks)

    # our own child lingers as a zombie until reaped; alive() counts zombies as gone
    assert qv.kill_vm(stubborn.pid, ticks, grace=0.5) == "sigkill"
    assert _wait(reaped_gone, 5)


def test_stop_without_vm_or_directory_changes_nothing(tmp_path: Path) -> None:
    result = qv.stop(str(tmp_path / "bakery-vm-x-y"))
    assert result["changed"] is False and result["running"] is False
    assert result["msg"] == "nothing to do: no VM running and no work directory"


def test_stop_removes_a_left_directory_once(tmp_path: Path) -> None:
    workdir = tmp_path / "bakery-vm-x-y"
    workdir.mkdir()
    (workdir / "serial.log").write_text("boot\n")
    assert qv.stop(str(workdir), check_mode=True)["changed"] is True
    assert workdir.exists()
    first = qv.stop(str(workdir))
    assert first["changed"] is True and first["workdir_removed"] is True and not workdir.exists()
    assert qv.stop(str(workdir))["changed"] is False


def test_keygen_makes_a_private_key_only_we_can_read_once(tmp_path: Path) -> None:
    if not shutil.which("ssh-keygen"):
        pytest.fail("ssh-keygen (openssh-client) is required")
    workdir = tmp_path / "bakery-vm-b-t"
    first = qv.keygen(str(workdir), "b", "t")
    assert first["changed"] is True
    key = Path(first["private_key"])
    assert key.stat().st_mode & 0o777 == 0o600
    assert workdir.stat().st_mode & 0o777 == 0o700
    assert first["public_key"].startswith("ssh-ed25519 ") and first["public_key"].endswith(" bakery-b-t")
    assert "PRIVATE" not in json.dumps(first)
    assert qv.public_key_of(str(key)).split()[:2] == first["public_key"].split()[:2]
    again = qv.keygen(str(workdir), "b", "t")
    assert again["changed"] is False and again["public_key"] == first["public_key"]
