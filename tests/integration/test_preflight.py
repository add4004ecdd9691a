"""The preflight of the plan play: a bake whose targets cannot be built here stops before anything is created,
naming every problem at once.

Targets fail for two different reasons: a docker target whose engine (``docker_host``) does not listen, and qemu
targets whose disks together cannot fit in the free space of their output directory (as many as it takes on this
host: each is estimated at 12 GiB, six copies of a base not built yet plus room for the provisioning).
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import BAKE_BASE, PREFLIGHT_TASK, REPO, docker_client, run_playbook, shadow_path

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"


def foreign_platform() -> str:
    """A Docker platform this host cannot run (make bake registers arm64; a host with systemd registers every
    architecture of qemu-user-static when the package is installed): the first one arch-test says no to."""
    import subprocess

    for platform, arch in (
        ("s390x", "s390x"),
        ("ppc64le", "ppc64el"),
        ("riscv64", "riscv64"),
        ("arm/v5", "armel"),
    ):
        if subprocess.run(["arch-test", arch], capture_output=True, check=False).returncode != 0:
            return "linux/" + platform
    raise AssertionError(
        "this host runs every architecture the case could use (binfmt_misc handlers of qemu-user-static); "
        "as root, echo 0 > /proc/sys/fs/binfmt_misc/qemu-s390x disables one"
    )


FOREIGN_PLATFORM = foreign_platform()


def test_preflight_names_every_problem_and_creates_nothing(tmp_path, docker_leftovers):
    repo = "bakery-test/preflight-%s" % uuid.uuid4().hex[:8]
    bake_id = "preflight-%s" % uuid.uuid4().hex[:8]
    output, cache = tmp_path / "output", tmp_path / "cache"
    definition = {
        "name": "preflight",
        "output_dir": str(output),
        "cache_dir": str(cache),
        "base": dict(BAKE_BASE),
        "provisioners": [{"shell": {"inline": ["true"]}}],
        "targets": [
            # nothing listens on port 9 of the loopback (discard): the engine cannot answer
            {"name": "web", "docker": {"repository": repo, "docker_host": "tcp://127.0.0.1:9"}},
        ],
    }
    # a base not built yet counts 1 GiB, the provisioning 1 GiB more: 2 GiB for each of the raw work disk, the
    # four other outputs and the unpacked tree, 12 GiB a disk target; one more target than the free space holds,
    # and at least two, which share the file system (each line then says what they need there together; a host
    # with less than 12 GiB free had one target, whose line has no such total)
    free = shutil.disk_usage(tmp_path).free
    disks = max(2, int(free // (12 * 1024**3)) + 1)
    assert disks <= 100, "this host has %d GiB free: too many disk targets to fill it" % (free // 1024**3)
    formats = ["raw", "qcow2", "vmdk", "vdi", "vhdx"]
    for index in range(disks):
        definition["targets"].append(
            {"name": "disk%d" % index, "qemu": {"provision": "chroot", "formats": formats, "disk_size": "4G"}}
        )
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))

    started = time.monotonic()
    run = run_playbook(BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path, "-e", "bake_id=%s" % bake_id])
    seconds = time.monotonic() - started
    assert run.rc != 0, run.stdout[-3000:]
    msg = run.task_result(PREFLIGHT_TASK)["msg"]
    assert msg.startswith("preflight: %d problem(s) on the build host; nothing was created" % (1 + disks)), (
        msg
    )
    lines = msg.splitlines()[1:]
    assert lines[0].startswith(
        "- target web (docker), docker.docker_host=tcp://127.0.0.1:9: the Docker engine at "
    )
    assert "Connection refused" in lines[0]
    for index, line in enumerate(lines[1:]):
        assert line.startswith(
            "- target disk%d (qemu), qemu.disk_size=4G: a build writes about 12.0 GiB: " % index
        )
        assert "GiB free" in line and str(output) in line and "GiB needed there with target(s) disk" in line
    # the plan play stopped: no target became a host, no later play ran
    assert set(run.stats) == {"localhost"} and run.stats["localhost"]["failures"] == 1
    # a plan of many targets takes longer to start than the battery's single ones below (each under 10 s)
    assert msg and run.task_result(PREFLIGHT_TASK)["duration"] < 5
    assert seconds < 20, "the failing bake took %.1f s" % seconds

    # --check runs the same preflight and fails the same way
    checked = run_playbook(BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path, "--check"])
    assert checked.rc != 0
    # (the free space it names may have changed meanwhile)
    problems = checked.task_result(PREFLIGHT_TASK)["problems"]
    assert [p.split(": ")[0] for p in problems] == [line[2:].split(": ")[0] for line in lines]

    # nothing was created: no build container of the bake, no image of the repository, no output, no work dir
    client = docker_client()
    assert client.api.containers(all=True, filters={"label": "bakery-bake-id=%s" % bake_id}) == []
    assert client.api.images(name=repo) == []
    assert not output.exists() or not any(output.iterdir())
    assert not (cache / "qemu").exists() and not (cache / "rootfs").exists()


# ------------------------------------------------------------------ the battery: one reason per definition


class EmptyMirror:
    """An HTTP server on the loopback with no file: every suite is missing there."""

    def __init__(self, root: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/debian" % self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def processes_naming(text: str) -> list[str]:
    """Command lines of running processes that mention *text* (a builder VM, a build container's exec)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def qemu(name: str = "disk", **options) -> dict:
    return {"name": name, "qemu": dict({"provision": "chroot", "formats": ["qcow2"]}, **options)}


# id -> (targets, base changes, hidden commands, expected "target NAME (TYPE), OPTION" of each problem)
CASES = {
    "engine down": (
        [{"name": "web", "docker": {"repository": "REPO", "docker_host": "tcp://127.0.0.1:9"}}],
        {},
        set(),
        ["target web (docker), docker.docker_host=tcp://127.0.0.1:9"],
    ),
    "bwrap missing (chroot builder)": (
        [qemu()],
        {},
        {"bwrap"},
        ["target disk (qemu), qemu.provision=chroot"],
    ),
    "qemu-system-x86_64 missing (vm builder)": (
        [qemu(provision="vm")],
        {},
        {"qemu-system-x86_64"},
        ["target disk (qemu), qemu.provision=vm"],
    ),
    "ssh-keygen missing (vm builder)": (
        [qemu(provision="vm")],
        {},
        {"ssh-keygen"},
        ["target disk (qemu), qemu.provision=vm"],
    ),
    "qemu-img missing for a virtualbox box": (
        [qemu(), {"name": "box", "vagrant": {"source": "disk", "provider": "virtualbox"}}],
        {},
        {"qemu-img"},
        ["target box (vagrant), vagrant.provider=virtualbox"],
    ),
    # ia64: an architecture Debian had, which no qemu-user emulator runs: no amd64 host runs it
    "foreign base architecture": (
        [qemu()],
        {"architecture": "ia64"},
        set(),
        ["target disk (qemu), bake.base.architecture=ia64"],
    ),
    "foreign docker platform": (
        [{"name": "web", "docker": {"repository": "REPO", "platform": FOREIGN_PLATFORM}}],
        {},
        set(),
        ["target web (docker), docker.platform=%s" % FOREIGN_PLATFORM],
    ),
    "mirror does not answer": (
        [qemu()],
        {"mirror": "http://127.0.0.1:9/debian"},
        set(),
        ["target disk (qemu), bake.base.mirror=http://127.0.0.1:9/debian"],
    ),
    "mirror without the suite": (
        [qemu()],
        {"mirror": "EMPTY_MIRROR"},
        set(),
        ["target disk (qemu), bake.base.mirror=EMPTY_MIRROR"],
    ),
    "vagrant version clash": (
        [
            qemu(),
            {"name": "box", "vagrant": {"source": "disk", "box_name": "bakery/clash", "version": "2.0.0"}},
        ],
        {},
        set(),
        ["target box (vagrant), vagrant.version=2.0.0"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_reason_fails_the_plan_alone_and_creates_nothing(case, tmp_path, docker_leftovers):
    targets, base, hidden, expected = copy.deepcopy(CASES[case])
    repo = "bakery-test/preflight-%s" % uuid.uuid4().hex[:8]
    bake_id = "preflight-%s" % uuid.uuid4().hex[:8]
    output, cache = tmp_path / "output", tmp_path / "cache"
    mirror = EmptyMirror(tmp_path / "empty") if "EMPTY_MIRROR" in json.dumps(base) else None
    if mirror:
        (tmp_path / "empty").mkdir()
    try:
        text = json.dumps(
            {
                "name": "battery",
                "output_dir": str(output),
                "cache_dir": str(cache),
                "base": dict(BAKE_BASE, **base),
                "provisioners": [{"shell": {"inline": ["true"]}}],
                "targets": targets,
            }
        )
        text = text.replace("REPO", repo).replace("EMPTY_MIRROR", mirror.url if mirror else "")
        expected = [line.replace("EMPTY_MIRROR", mirror.url if mirror else "") for line in expected]
        if case == "vagrant version clash":
            output.mkdir()
            listed = {
                "version": "2.0.0",
                "providers": [
                    {"name": "libvirt", "url": "x", "checksum_type": "sha256", "checksum": "0" * 64}
                ],
            }
            (output / "bakery-clash.json").write_text(
                json.dumps({"name": "bakery/clash", "versions": [listed]})
            )
        before = sorted(output.rglob("*")) if output.exists() else []
        path = tmp_path / "bake.json"
        path.write_text(json.dumps({"bake": json.loads(text)}))
        env = {"PATH": shadow_path(tmp_path, hidden)} if hidden else None

        started = time.monotonic()
        run = run_playbook(
            BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path, "-e", "bake_id=%s" % bake_id], env=env
        )
        seconds = time.monotonic() - started
    finally:
        if mirror:
            mirror.stop()
    assert run.rc != 0, run.stdout[-3000:]
    result = run.task_result(PREFLIGHT_TASK)
    assert result.get("failed"), result
    assert [p.split(": ")[0] for p in result["problems"]] == expected, result["msg"]
    assert result["duration"] < 5, "the preflight took %.1f s" % result["duration"]
    assert seconds < 10, "the failing bake took %.1f s" % seconds
    # the plan play stopped: no target became a host
    assert set(run.stats) == {"localhost"}, run.stats
    # nothing was created: no container of the bake, no image, no file in the output or cache directories, no VM
    client = docker_client()
    assert client.api.containers(all=True, filters={"label": "bakery-bake-id=%s" % bake_id}) == []
    assert client.api.images(name=repo) == []
    assert client.api.images(all=True, filters={"label": "bakery-bake-id=%s" % bake_id}) == []
    assert (sorted(output.rglob("*")) if output.exists() else []) == before
    assert not cache.exists() or sorted(cache.rglob("*")) == []
    assert not processes_naming(bake_id)


def test_a_definition_error_names_the_option_without_the_spec(tmp_path):
    path = tmp_path / "bake.json"
    path.write_text(
        json.dumps({"bake": {"name": "bad", "base": "bookworm", "targets": [{"name": "t", "docker": {}}]}})
    )
    run = run_playbook(BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path], json_output=False)
    assert run.rc != 0
    out = run.stdout + run.stderr
    # (the YAML callback folds long messages)
    assert "msg: 'bake: base must be a dictionary, not a string'" in " ".join(out.split()), out
    # Ansible's own check of the role's arguments would print the whole spec (its descriptions) with it
    assert "argument_spec" not in out and "description" not in out
    assert len(out.splitlines()) < 40, out


def test_the_cleanup_of_a_target_whose_credentials_never_worked_says_it_created_nothing(
    tmp_path, monkeypatch
):
    """The bake of issue 14's report, with the preflight skipped: an ami target in region mars-north-9 without
    AWS credentials fails when it launches, and its cleanup says it created nothing instead of "left resources
    behind"."""
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    bake = {
        "name": "mars",
        "output_dir": str(tmp_path / "output"),
        "targets": [
            {"name": "ami", "ami": {"region": "mars-north-9", "name": "mars", "source_ami": "ami-12345678"}}
        ],
    }
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": bake}))
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    run = run_playbook(
        BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path, "-e", "bake_preflight=false"], env=env
    )
    assert run.rc != 0
    launch = run.task_result("Find the image by fingerprint, or launch the builder")
    assert launch["failed"] and launch["created"] is False, launch
    cleanup = run.task_result("Remove the temporary resources of the bake")
    assert not cleanup.get("failed"), cleanup
    assert cleanup["msg"].startswith("nothing to clean up: target mars/ami of bake "), cleanup["msg"]
    assert "left resources behind" not in run.stdout
