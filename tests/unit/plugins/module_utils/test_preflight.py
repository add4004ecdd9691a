"""The preflight: each check failing on its own with a fake build host, every problem listed at once."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.bakery.images.plugins.module_utils import (
    _plan,
    _preflight,
    _preflight_cloud,
    _qemu_disk,
    _qemu_vm,
    _vagrant,
)
from ansible_collections.bakery.images.plugins.module_utils._preflight import GIB, Host
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# the default bake's shape: a docker target, a qemu disk provisioned in a chroot, a libvirt box of the disk
BAKE = {
    "name": "web",
    "output_dir": "out",
    "base": {"suite": "bookworm", "packages": ["python3"]},
    "provisioners": [{"shell": {"inline": ["true"]}}],
    "targets": [
        {"name": "img", "docker": {"repository": "bakery/web"}},
        {"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2"], "vagrant": True}},
        {"name": "box", "vagrant": {"source": "disk", "box_name": "bakery/web", "version": "1.0.0"}},
    ],
}


def plan_targets(bake=None, **kwargs):
    return _plan.make_plan(
        bake or BAKE,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: "digest",
        cwd="/work",
        bake_id="b1",
        **kwargs,
    )["targets"]


def with_options(name, **options):
    bake = copy.deepcopy(BAKE)
    for target in bake["targets"]:
        if target["name"] == name:
            kind = next(key for key in _plan.TARGET_TYPES if key in target)
            target[kind].update(options)
    return bake


class FakeHost:
    """A build host with every tool, a cached base rootfs, engines that answer and room to spare, unless told."""

    def __init__(
        self,
        missing=(),
        missing_files=(),
        free=500 * GIB,
        engines=None,
        runs=None,
        found=None,
        cached=True,
        env=None,
        devices=None,
        sizes=None,
        mirrors=None,
    ):
        self.missing = set(missing)
        self.missing_files = tuple(missing_files)
        self.free = free
        self.engines = engines or {}
        self.runs = runs or {}
        self.found_map = found or {}
        self.cached = cached
        self.env = {"PATH": "/usr/bin:/bin"} if env is None else env
        self.devices = devices or {}
        # bytes held by files: the cached base rootfs tarball holds 0.5 GiB unless told
        self.sizes = {".tar": GIB // 2} if sizes is None else sizes
        # URL -> why it does not answer; every other URL answers
        self.mirrors = mirrors or {}
        self.fetched = []
        self.searched = {}
        self.pinged = []
        self.asked_arch = []
        self.looked_up = []

    def which(self, command, path):
        self.searched[command] = path
        return None if command in self.missing else "/usr/bin/" + command

    def exists(self, path):
        if any(path.startswith(prefix) for prefix in self.missing_files):
            return False
        if path.startswith("/work/out"):
            # nothing made yet; the base rootfs tarball is in the cache unless told
            return self.cached and path.endswith(".tar")
        return True

    def glob(self, pattern):
        return [] if any(pattern.startswith(prefix) for prefix in self.missing_files) else [pattern]

    def space(self, path):
        for prefix, (device, free) in self.devices.items():
            if path.startswith(prefix):
                return device, free
        return 1, self.free

    def file_size(self, path):
        if not self.exists(path):
            return None
        return next((size for ending, size in self.sizes.items() if path.endswith(ending)), None)

    def fetch(self, url, timeout):
        self.fetched.append(url)
        return self.mirrors.get(url)

    def ping(self, docker_host, timeout):
        self.pinged.append((docker_host, timeout))
        return self.engines.get(docker_host)

    def arch_runs(self, arch, timeout):
        self.asked_arch.append(arch)
        return self.runs.get(arch, True)

    def found(self, target):
        self.looked_up.append(target["name"])
        return self.found_map.get(target["name"], False)

    def host(self, timeout=5.0):
        return Host(
            which=self.which,
            exists=self.exists,
            glob=self.glob,
            space=self.space,
            file_size=self.file_size,
            fetch=self.fetch,
            ping=self.ping,
            host_arch=lambda: "amd64",
            arch_runs=self.arch_runs,
            found=self.found,
            env=self.env,
            timeout=timeout,
        )


def run(targets, fake, **kwargs):
    return _preflight.run(targets, host=fake.host(), **kwargs)


def checks(result, name):
    return next(t["preflight"] for t in result["targets"] if t["name"] == name)


def test_everything_there_passes_and_lists_each_targets_checks():
    fake = FakeHost()
    result = run(plan_targets(), fake)
    assert not result["failed"] and result["problems"] == []
    assert [t["name"] for t in result["targets"]] == ["img", "disk", "box"]
    # no tool: the rootfs is cached; the mirror for apt-get update
    assert {c["check"] for c in checks(result, "img")} == {"engine", "mirror"}
    assert {c["check"] for c in checks(result, "disk")} == {"tools", "mirror", "disk_space"}
    assert {c["check"] for c in checks(result, "box")} == {"disk_space", "catalog"}
    assert all(c["ok"] for t in result["targets"] for c in t["preflight"])
    assert result["msg"].startswith("preflight: ") and "passed" in result["msg"]
    assert any(line.startswith("disk (qemu) tools ok: found: ") for line in result["summary"])
    # the cached base rootfs needs no mmdebstrap; nothing was looked up, no architecture asked
    assert "mmdebstrap" not in fake.searched
    assert fake.looked_up == [] and fake.asked_arch == []
    assert fake.pinged == [(None, 5.0)]


def test_a_missing_tool_names_target_option_and_debian_package():
    result = run(plan_targets(), FakeHost(missing={"bwrap"}))
    assert result["failed"]
    assert result["problems"] == [
        "target disk (qemu), qemu.provision=chroot: bwrap is not installed on the build host (not on PATH), "
        "needed to isolate the chroot builder from the build host; install the Debian package bubblewrap "
        "(apt-get install bubblewrap)"
    ]
    assert result["msg"].startswith("preflight: 1 problem(s) on the build host; nothing was created")
    assert "-e bake_preflight=false" in result["msg"]


def test_commands_are_searched_as_their_modules_search_them():
    fake = FakeHost()
    run(plan_targets(), fake)
    # qemu_image looks on PATH and in the system directories, the chroot builder's bwrap on PATH alone
    assert fake.searched["qemu-img"] == "/usr/bin:/bin:" + _preflight.SYSTEM_PATH
    assert fake.searched["bwrap"] == "/usr/bin:/bin"


def test_every_missing_tool_of_a_vm_disk():
    bake = with_options("disk", provision="vm", vm={"firmware": "uefi"})
    fake = FakeHost(
        missing={"qemu-system-x86_64", "ssh-keygen"}, missing_files=("/usr/share/OVMF", "/usr/share/edk2")
    )
    result = run(plan_targets(bake), fake)
    problems = result["problems"]
    assert len(problems) == 3, problems
    assert problems[0].startswith(
        "target disk (qemu), qemu.provision=vm: qemu-system-x86_64 is not installed"
    )
    assert "install the Debian package qemu-system-x86" in problems[0]
    assert "ssh-keygen is not installed" in problems[1] and "openssh-client" in problems[1]
    assert problems[2].startswith(
        "target disk (qemu), qemu.vm.firmware=uefi: OVMF (UEFI firmware) is not installed"
    )
    assert "install the Debian package ovmf" in problems[2]
    assert "bwrap" not in fake.searched  # no chroot builder


def test_qemu_img_for_the_disk_and_for_a_virtualbox_box():
    bake = with_options("box", provider="virtualbox")
    result = run(plan_targets(bake), FakeHost(missing={"qemu-img"}))
    assert [p.split(":")[0] for p in result["problems"]] == [
        "target disk (qemu), qemu.formats=qcow2",
        "target box (vagrant), vagrant.provider=virtualbox",
    ]
    assert all("install the Debian package qemu-utils" in p for p in result["problems"])
    # a libvirt box of a standalone qcow2 packs the disk as it is: no qemu-img
    plain = run(plan_targets(), FakeHost(missing={"qemu-img"}))
    assert [p.split(":")[0] for p in plain["problems"]] == ["target disk (qemu), qemu.formats=qcow2"]


def test_mmdebstrap_only_when_the_base_rootfs_is_not_in_the_cache():
    cached = run(plan_targets(), FakeHost(missing={"mmdebstrap"}, cached=True))
    assert cached["problems"] == []
    result = run(plan_targets(), FakeHost(missing={"mmdebstrap"}, cached=False))
    assert [p.split(":")[0] for p in result["problems"]] == [
        "target img (docker), bake.base",
        "target disk (qemu), bake.base",
    ]
    assert "to build the root filesystem bookworm-" in result["problems"][0]
    assert "install the Debian package mmdebstrap" in result["problems"][0]


def test_a_box_booted_for_its_checks_needs_vagrant_and_virsh_also_when_found():
    bake = with_options("box", verify_up=True)
    bake["verify"] = [{"shell": {"inline": ["curl -s localhost"]}, "only": ["box"]}]
    fake = FakeHost(missing={"vagrant", "virsh"}, found={"disk": True, "box": True})
    result = run(plan_targets(bake), fake)
    assert [p.split(":")[0] for p in result["problems"]] == [
        "target box (vagrant), vagrant.verify_up=true"
    ] * 2
    assert "vagrant is not installed" in result["problems"][0]
    assert "to boot the box for its checks" in result["problems"][0]
    assert "install the Debian package vagrant" in result["problems"][0]
    assert "virsh is not installed" in result["problems"][1]
    assert "install the Debian package libvirt-clients" in result["problems"][1]
    # without verify_up (its checks are local commands), or without checks, neither is needed
    bake["targets"][2]["vagrant"]["verify_up"] = False
    bake["verify"] = [{"local": {"inline": ["true"]}, "only": ["box"]}]
    assert run(plan_targets(bake), fake)["problems"] == []
    assert run(plan_targets(with_options("box", verify_up=True)), fake)["problems"] == []


def test_vagrant_key_is_needed_even_when_the_disk_is_found():
    fake = FakeHost(
        missing_files=tuple(p.split("*", maxsplit=1)[0] for p in _qemu_disk.VAGRANT_KEY_GLOBS),
        found={"disk": True},
    )
    result = run(plan_targets(), fake)
    assert len(result["problems"]) == 1
    assert result["problems"][0].startswith(
        "target disk (qemu), qemu.vagrant=true: Vagrant's insecure public key is not installed"
    )
    assert "install the Debian package vagrant" in result["problems"][0]


def test_a_dead_engine_names_docker_host():
    bake = with_options("img", docker_host="tcp://127.0.0.1:9")
    refused = "cannot reach the Docker engine at tcp://127.0.0.1:9: [Errno 111] Connection refused (is dockerd running?)"
    fake = FakeHost(engines={"tcp://127.0.0.1:9": refused})
    result = run(plan_targets(bake), fake)
    assert fake.pinged == [("tcp://127.0.0.1:9", 5.0)]
    assert len(result["problems"]) == 1
    problem = result["problems"][0]
    assert problem.startswith(
        "target img (docker), docker.docker_host=tcp://127.0.0.1:9: the Docker engine at "
    )
    assert "[Errno 111] Connection refused" in problem and "start dockerd" in problem


def test_the_engine_is_docker_host_else_DOCKER_HOST():
    fake = FakeHost(env={"PATH": "/usr/bin", "DOCKER_HOST": "unix:///run/other.sock"})
    result = run(plan_targets(), fake)
    assert fake.pinged == [("unix:///run/other.sock", 5.0)]
    engine = next(c for c in checks(result, "img") if c["check"] == "engine")
    assert engine["option"] == "docker.docker_host (unset: DOCKER_HOST=unix:///run/other.sock)"


def test_short_of_disk_space_names_both_figures():
    # the base holds 0.5 GiB, the provisioning may add 1 GiB: 1.5 GiB per copy, three copies
    result = run(plan_targets(bake_only_disk()), FakeHost(free=4 * GIB))
    assert len(result["problems"]) == 1
    problem = result["problems"][0]
    assert problem.startswith("target disk (qemu), qemu.disk_size=4G: a build writes about 4.5 GiB: ")
    assert "3.0 GiB in /work/out (the raw work disk and the qcow2 output(s))" in problem
    assert "1.5 GiB in /work/out/cache/qemu (the unpacked root filesystem)" in problem
    assert "has 4.0 GiB free" in problem and "output_dir or cache_dir" in problem


def test_room_for_the_likely_size_but_not_for_a_full_disk_is_said_not_refused():
    result = run(plan_targets(bake_only_disk()), FakeHost(free=6 * GIB))
    assert result["problems"] == []
    space = next(c for c in checks(result, "disk") if c["check"] == "disk_space")
    assert space["ok"]
    assert space["msg"].endswith(
        "enough unless the provisioning fills the disk (12.0 GiB if every copy is as large as disk_size)"
    )
    space = next(
        c
        for c in checks(run(plan_targets(bake_only_disk()), FakeHost()), "disk")
        if c["check"] == "disk_space"
    )
    assert "unless" not in space["msg"]


def test_the_estimate_follows_the_base(tmp_path):
    def likely(fake, bake=None):
        space = next(
            c
            for c in checks(run(plan_targets(bake or bake_only_disk()), fake), "disk")
            if c["check"] == "disk_space"
        )
        return space["msg"].split(":")[0]

    # a base not built yet counts 1 GiB, and 1 GiB of provisioning: 2 GiB a copy
    assert likely(FakeHost(cached=False)) == "a build writes about 6.0 GiB"
    # a built base counts what its tarball holds: 1 GiB -> 2 GiB a copy
    assert likely(FakeHost(sizes={".tar": GIB})) == "a build writes about 6.0 GiB"
    # never more than the disk: a copy of a 1G disk holds at most 1 GiB
    assert likely(FakeHost(), bake_only_disk(disk_size="1G")) == "a build writes about 3.0 GiB"
    # a base image counts what its file holds: 2 GiB + 1 GiB, as the outputs (the vm's overlay too)
    fake = FakeHost(sizes={".qcow2": 2 * GIB})
    (tmp_path / "debian.qcow2").write_bytes(b"")
    bake = bake_only_disk(base_image=str(tmp_path / "debian.qcow2"), provision="vm")
    assert likely(fake, bake) == "a build writes about 6.0 GiB"


def bake_only_disk(**options):
    bake = with_options("disk", **options)
    bake["targets"] = [t for t in bake["targets"] if "qemu" in t]
    return bake


def test_disk_space_is_summed_per_file_system():
    # 4.5 GiB for the disk and 1.5 GiB for its box on one file system of 5.5 GiB: both are named
    result = run(plan_targets(), FakeHost(free=5.5 * GIB))
    assert [p.split(":")[0] for p in result["problems"]] == [
        "target disk (qemu), qemu.disk_size=4G",
        "target box (vagrant), vagrant.source=disk (qemu.disk_size=4G)",
    ]
    assert "6.0 GiB needed there with target(s) box" in result["problems"][0]
    # the cache on a file system of its own: the outputs (3 + 1.5 GiB) fit in 5.5 GiB, the tree in 2 GiB
    bake = copy.deepcopy(BAKE)
    bake["cache_dir"] = "/cache"
    fake = FakeHost(free=5.5 * GIB, devices={"/cache": (2, 2 * GIB)})
    assert run(plan_targets(bake), fake)["problems"] == []
    fake = FakeHost(free=5.5 * GIB, devices={"/cache": (2, 1 * GIB)})
    problems = run(plan_targets(bake), fake)["problems"]
    assert len(problems) == 1 and "1.5 GiB in /cache/qemu" in problems[0] and "1.0 GiB free" in problems[0]


def test_disk_space_counts_formats():
    result = run(plan_targets(bake_only_disk(formats=["raw", "vmdk", "vdi"], disk_size="1G")), FakeHost())
    space = next(c for c in checks(result, "disk") if c["check"] == "disk_space")
    # the raw output is the work disk renamed: 1 G for it, 1 G for each of vmdk and vdi, 1 G for the tree
    assert space["msg"].startswith("a build writes about 4.0 GiB: 3.0 GiB in /work/out")


def test_found_artifacts_need_neither_build_tools_nor_space():
    fake = FakeHost(missing={"bwrap", "sfdisk"}, free=1 * GIB, found={"disk": True, "box": True})
    result = run(plan_targets(), fake)
    assert result["problems"] == []
    tools = [c for c in checks(result, "disk") if c["check"] == "tools" and "bwrap" in c["msg"]]
    assert tools[0]["ok"] and tools[0]["msg"].startswith(
        "not needed, the artifact is found (else: bwrap is not"
    )
    assert any(
        c["check"] == "disk_space" and c["msg"].startswith("nothing to write") for c in checks(result, "box")
    )
    assert sorted(set(fake.looked_up)) == ["box", "disk"]
    assert next(t for t in result["targets"] if t["name"] == "disk")["artifact_found"] is True


def test_an_artifact_that_is_not_found_keeps_its_problems():
    fake = FakeHost(missing={"bwrap"}, found={"disk": None})
    assert len(run(plan_targets(), fake)["problems"]) == 1
    assert fake.looked_up == ["disk"]


def test_a_foreign_architecture_without_binfmt(tmp_path, monkeypatch):
    monkeypatch.setattr(_preflight, "BINFMT_CONF_DIR", str(tmp_path / "binfmt.d"))  # no qemu-user-static
    bake = copy.deepcopy(BAKE)
    bake["base"]["architecture"] = "arm64"
    fake = FakeHost(runs={"arm64": False})
    result = run(plan_targets(bake), fake)
    assert [p.split(":")[0] for p in result["problems"]] == [
        "target img (docker), bake.base.architecture=arm64",
        "target disk (qemu), bake.base.architecture=arm64",
    ]
    assert "cannot run arm64 binaries" in result["problems"][0]
    assert "no binfmt_misc handler is registered" in result["problems"][0]
    assert "install the Debian package qemu-user-static" in result["problems"][0]
    assert fake.asked_arch == ["arm64"]  # asked once for the bake
    assert run(plan_targets(bake), FakeHost(runs={"arm64": True}))["problems"] == []


def test_a_docker_platform_on_a_local_engine():
    bake = with_options("img", platform="linux/arm/v7")
    fake = FakeHost(runs={"armhf": False})
    problems = run(plan_targets(bake), fake)["problems"]
    assert len(problems) == 1 and problems[0].startswith(
        "target img (docker), docker.platform=linux/arm/v7: "
    )
    # a remote engine runs the image itself
    bake = with_options("img", platform="linux/arm/v7", docker_host="tcp://builder:2375")
    assert run(plan_targets(bake), FakeHost(runs={"armhf": False}))["problems"] == []


def test_every_problem_at_once():
    bake = with_options("img", docker_host="tcp://127.0.0.1:9")
    bake["base"]["architecture"] = "arm64"
    fake = FakeHost(
        missing={"bwrap", "mmdebstrap"},
        cached=False,
        free=2 * GIB,
        engines={"tcp://127.0.0.1:9": "[Errno 111] Connection refused"},
        runs={"arm64": False},
    )
    result = run(plan_targets(bake), fake)
    options = [p.split(": ")[0] for p in result["problems"]]
    assert options == [
        "target img (docker), docker.docker_host=tcp://127.0.0.1:9",
        "target img (docker), bake.base",
        "target img (docker), bake.base.architecture=arm64",
        "target disk (qemu), bake.base",
        "target disk (qemu), qemu.provision=chroot",
        "target disk (qemu), bake.base.architecture=arm64",
        "target disk (qemu), qemu.disk_size=4G",
        "target box (vagrant), vagrant.source=disk (qemu.disk_size=4G)",
    ]
    assert result["msg"].count("\n- target ") == 8


def test_only_the_given_targets_are_checked():
    targets = plan_targets(only="img")
    fake = FakeHost(missing={"bwrap", "qemu-img"})
    result = run(targets, fake)
    assert [t["name"] for t in result["targets"]] == ["img"] and result["problems"] == []
    assert "bwrap" not in fake.searched


def test_cloud_targets_get_their_cloud_checks_and_nothing_of_the_host():
    bake = copy.deepcopy(BAKE)
    bake["targets"] = [
        {"name": "ami", "ami": {"name": "web", "region": "eu-west-1", "source_ami": "ami-12345678"}},
    ]
    asked = []

    def checks_of(targets, cloud):
        asked.extend(t["name"] for t in targets)
        return {
            "ami": [_preflight_cloud.Check("region", "ami.region=eu-west-1", False, "no such region; fix")]
        }

    fake = FakeHost()
    original = _preflight_cloud.check_targets
    _preflight_cloud.check_targets = checks_of
    try:
        result = run(plan_targets(bake), fake)
    finally:
        _preflight_cloud.check_targets = original
    assert asked == ["ami"]
    assert result["problems"] == ["target ami (ami), ami.region=eu-west-1: no such region; fix"]
    # a cloud problem fails the target even if its image exists: finding the image needs the cloud too
    assert fake.looked_up == [] and fake.searched == {}


def test_a_slow_engine_is_given_up_after_the_timeout():
    def ping(docker_host, timeout):
        time.sleep(10)

    host = FakeHost().host(timeout=0.2)
    host.ping = ping
    started = time.monotonic()
    result = _preflight.run(plan_targets(bake_only_docker()), host=host)
    assert time.monotonic() - started < 3
    assert "does not answer (asked with a 0.2 s timeout): no answer within 0.2 s" in result["problems"][0]


def bake_only_docker():
    bake = copy.deepcopy(BAKE)
    bake["targets"] = [bake["targets"][0]]
    return bake


def test_bad_arguments():
    with pytest.raises(BakeryError, match="targets must be the list"):
        _preflight.run("nope")
    with pytest.raises(BakeryError, match=r"targets\[0\] is not a planned target"):
        _preflight.run([{"name": "x"}])
    with pytest.raises(BakeryError, match="timeout must be a number"):
        _preflight.run([], timeout="soon")


def test_arch_runs_without_arch_test(tmp_path, monkeypatch):
    monkeypatch.setattr(_preflight, "BINFMT_DIR", str(tmp_path))
    host = Host(which=lambda command, path: None, host_arch=lambda: "amd64")
    assert _preflight.arch_runs("amd64", 1, host) is True
    assert _preflight.arch_runs("i386", 1, host) is True
    assert _preflight.arch_runs("arm64", 1, host) is False
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    assert _preflight.arch_runs("arm64", 1, host) is True
    (tmp_path / "qemu-aarch64").write_text("disabled\n")
    assert _preflight.arch_runs("arm64", 1, host) is False
    assert _preflight.arch_runs("sparc64", 1, host) is None


def test_the_remedy_for_a_foreign_architecture_names_what_is_missing(tmp_path, monkeypatch):
    conf, mounted = tmp_path / "binfmt.d", tmp_path / "binfmt_misc"
    monkeypatch.setattr(_preflight, "BINFMT_CONF_DIR", str(conf))
    monkeypatch.setattr(_preflight, "BINFMT_DIR", str(mounted))
    assert "apt-get install qemu-user-static" in _preflight.binfmt_remedy("arm64")
    assert "apt-get install qemu-user-static" in _preflight.binfmt_remedy("sparc64")
    conf.mkdir()
    (conf / "qemu-aarch64.conf").write_text(
        ":qemu-aarch64:M::...:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OCF\n"
    )
    unmounted = _preflight.binfmt_remedy("arm64")
    assert "binfmt_misc is not mounted" in unmounted and "scripts/binfmt arm64" in unmounted
    mounted.mkdir()
    (mounted / "register").write_text("")
    unregistered = _preflight.binfmt_remedy("arm64")
    assert unregistered.startswith("register the handler of %s" % (conf / "qemu-aarch64.conf"))


def test_the_package_table_agrees_with_the_modules():
    for command, package in _qemu_disk.TOOLS.items():
        assert _preflight.packages()[command] == package
    for command, text in _qemu_vm.PACKAGES.items():
        assert text == "Debian package " + _preflight.packages()[command]
    for package in _qemu_disk.GRUB_PLATFORMS.values():
        assert package in _preflight.packages().values()


def test_artifact_found_reads_the_qemu_sidecars(tmp_path):
    bake = bake_only_disk(vagrant=False)
    bake["output_dir"] = str(tmp_path / "out")
    target = plan_targets(bake)[0]
    assert _preflight.artifact_found(target) is False  # no outputs
    outputs = _qemu_disk.outputs_for(target)
    params = {
        "outputs": outputs,
        "rootfs": target["rootfs"]["path"],
        "disk_size": "4G",
        "inputs": dict(target["inputs"], provision="chroot"),
        # what role qemu's launch gives (qemu_hygiene; the plan filled in the defaults)
        "hygiene": {"skip": [], "var_log_max": "64M", "package_lists": "refresh"},
    }
    fingerprint = _qemu_disk.lookup(_qemu_disk.parse_options(params))["fingerprint"]
    os.makedirs(os.path.dirname(outputs[0]["path"]))
    with open(outputs[0]["path"], "wb") as handle:
        handle.write(b"QFI\xfb" + b"\0" * 60)
    sidecar = {"fingerprint": fingerprint, "format": "qcow2", "size": 64}
    with open(outputs[0]["path"] + ".bakery.json", "w", encoding="utf-8") as handle:
        json.dump(sidecar, handle)
    assert _preflight.artifact_found(target) is True
    assert _preflight.artifact_found(dict(target, force=True)) is False
    changed = copy.deepcopy(target)
    changed["options"]["disk_size"] = "5G"
    assert _preflight.artifact_found(changed) is False
    changed = copy.deepcopy(target)
    changed["options"]["hygiene"]["skip"] = ["core_dumps"]
    assert _preflight.artifact_found(changed) is False


def test_artifact_found_reads_the_box_sidecar(tmp_path):
    bake = copy.deepcopy(BAKE)
    bake["output_dir"] = str(tmp_path / "out")
    box = next(t for t in plan_targets(bake) if t["name"] == "box")
    path = _preflight.box_path(box)
    assert path == str(tmp_path / "out" / "bakery-web-1.0.0-libvirt.box")
    assert _preflight.artifact_found(box) is False  # no box
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"box")
    fingerprint = _vagrant.make_box(
        {
            "action": "find",
            "path": path,
            "inputs": box["inputs"],
            "box_name": "bakery/web",
            "version": "1.0.0",
        }
    )["fingerprint"]
    with open(path + ".bakery.json", "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": fingerprint, "size": 3}, handle)
    assert _preflight.artifact_found(box) is True
    assert _preflight.artifact_found(dict(box, inputs={"source_target": "another disk"})) is False


def catalog_bake(tmp_path, **options):
    bake = with_options("box", **options)
    bake["output_dir"] = str(tmp_path)
    return bake


def write_catalog(tmp_path, name="bakery/web", version="1.0.0", checksum="ab" * 32):
    catalog = {
        "name": name,
        "versions": [
            {
                "version": version,
                "providers": [
                    {"name": "libvirt", "url": "x", "checksum_type": "sha256", "checksum": checksum}
                ],
            }
        ],
    }
    (tmp_path / "bakery-web.json").write_text(json.dumps(catalog))


def catalog_check(result):
    return [c for c in checks(result, "box") if c["check"] == "catalog"]


def test_a_catalog_that_lists_the_version_with_another_box_is_a_problem(tmp_path):
    assert catalog_check(run(plan_targets(catalog_bake(tmp_path)), FakeHost())) == [
        {
            "check": "catalog",
            "option": "vagrant.version=1.0.0",
            "ok": True,
            "msg": "catalog %s/bakery-web.json does not exist yet" % tmp_path,
        }
    ]
    write_catalog(tmp_path)
    result = run(plan_targets(catalog_bake(tmp_path)), FakeHost())
    assert result["problems"] == [
        "target box (vagrant), vagrant.version=1.0.0: catalog %s/bakery-web.json already lists version 1.0.0 of "
        "bakery/web for libvirt (amd64) with another checksum (sha256 %s, the box this bake would build is another: no "
        "box with these inputs exists): Vagrant caches boxes by version, so give the new box a new version, or "
        "set force to replace it" % (tmp_path, "ab" * 32)
    ]
    # a found box that the catalog lists is no problem; a found box with another checksum is
    box = tmp_path / "bakery-web-1.0.0-libvirt.box"
    box.write_bytes(b"box")
    (tmp_path / (box.name + ".bakery.json")).write_text(json.dumps({"sha256": "ab" * 32}))
    assert run(plan_targets(catalog_bake(tmp_path)), FakeHost(found={"box": True}))["problems"] == []
    (tmp_path / (box.name + ".bakery.json")).write_text(json.dumps({"sha256": "cd" * 32}))
    problems = run(plan_targets(catalog_bake(tmp_path)), FakeHost(found={"box": True}))["problems"]
    assert len(problems) == 1 and "the new box has sha256 %s" % ("cd" * 32) in problems[0]
    # a new version, force, or no catalog at all: nothing to clash with
    for options in ({"version": "1.0.1"}, {"catalog": ""}):
        assert run(plan_targets(catalog_bake(tmp_path, **options)), FakeHost())["problems"] == []
    assert run(plan_targets(catalog_bake(tmp_path), force=True), FakeHost())["problems"] == []


def test_a_catalog_of_another_box_or_not_json_is_a_problem(tmp_path):
    write_catalog(tmp_path, name="someone/else", version="0.1")
    problems = run(plan_targets(catalog_bake(tmp_path)), FakeHost())["problems"]
    assert problems == [
        "target box (vagrant), vagrant.version=1.0.0: catalog %s/bakery-web.json lists box 'someone/else', not "
        "'bakery/web': give each box its own catalog" % tmp_path
    ]
    (tmp_path / "bakery-web.json").write_text("{")
    problems = run(plan_targets(catalog_bake(tmp_path)), FakeHost())["problems"]
    assert (
        len(problems) == 1
        and "is not readable JSON" in problems[0]
        and "repair the file or remove it" in problems[0]
    )


RELEASE = "http://deb.debian.org/debian/dists/bookworm/InRelease"


def test_the_mirror_is_asked_once_for_every_target_that_downloads_from_it():
    fake = FakeHost()
    result = run(plan_targets(), fake)
    assert fake.fetched == [RELEASE]
    mirror = [c for c in checks(result, "img") if c["check"] == "mirror"]
    assert mirror == [
        {
            "check": "mirror",
            "option": "bake.base.mirror=http://deb.debian.org/debian",
            "ok": True,
            "msg": "the mirror answers (%s)" % RELEASE,
        }
    ]
    assert [c["check"] for c in checks(result, "disk")].count("mirror") == 1
    assert "mirror" not in [c["check"] for c in checks(result, "box")]


def test_an_unreachable_mirror_or_a_missing_suite_names_the_mirror():
    fake = FakeHost(mirrors={RELEASE: "[Errno -2] Name or service not known"})
    problems = run(plan_targets(), fake)["problems"]
    assert problems[0] == (
        "target img (docker), bake.base.mirror=http://deb.debian.org/debian: the mirror does not answer within 5 s "
        "(%s: [Errno -2] Name or service not known), needed for apt-get update; give a mirror this host reaches "
        "(or set http_proxy), or bake.package_lists: keep to use the cached lists" % RELEASE
    )
    assert len(problems) == 2 and problems[1].startswith("target disk (qemu), bake.base.mirror=")
    fake = FakeHost(mirrors={RELEASE: "not found"}, cached=False)
    problems = run(plan_targets(), fake)["problems"]
    assert problems[0].endswith(
        "the mirror has no suite bookworm (%s not found), needed to build the root filesystem; give a mirror "
        "that carries it, or another suite" % RELEASE
    )


def test_a_cached_base_with_kept_lists_or_a_found_artifact_needs_no_mirror():
    fake = FakeHost(mirrors={RELEASE: "timed out"})
    assert run(plan_targets(), fake, package_lists="keep")["problems"] == []
    assert fake.fetched == []
    # a base still to build needs it even with kept lists
    fake = FakeHost(mirrors={RELEASE: "timed out"}, cached=False, missing={"mmdebstrap"})
    assert len(run(plan_targets(), fake, package_lists="keep")["problems"]) == 4
    # a found disk needs no download
    fake = FakeHost(mirrors={RELEASE: "timed out"}, found={"disk": True})
    problems = run(plan_targets(bake_only_disk()), fake)["problems"]
    assert problems == []
    with pytest.raises(BakeryError, match="package_lists must be refresh or keep"):
        run(plan_targets(), FakeHost(), package_lists="sometimes")


def test_fetch_url_answers_for_files_and_refused_connections(tmp_path):
    (tmp_path / "InRelease").write_text("x")
    assert _preflight.fetch_url((tmp_path / "InRelease").as_uri(), 1, {}) is None
    assert _preflight.fetch_url((tmp_path / "gone").as_uri(), 1, {}) == "not found"
    # nothing listens on port 9 of the loopback
    assert "refused" in _preflight.fetch_url("http://127.0.0.1:9/dists/x/InRelease", 1, {})


def test_a_bake_without_cloud_targets_does_not_import_the_cloud_checks():
    """The cloud checks, and boto3 and google-auth with them, are imported only for a bake with a cloud target (they
    cost every bake 0.26 s in Ansible's main process): the preflight of a docker target leaves them out. So do the
    plan's checks of a docker target and the preflight's with the disk, VM, box and hygiene modules (0.1 s), and the
    playbook's filters, which every bake loads."""
    code = (
        "import sys\n"
        "from ansible_collections.bakery.images.plugins.module_utils import _plan, _preflight\n"
        "from ansible_collections.bakery.images.plugins.filter import bake\n"
        "_plan.check_target('docker', {'repository': 'bakery/web', 'tags': ['1']}, 'targets[0].docker')\n"
        "host = _preflight.Host(env={}, ping=lambda docker_host, timeout: None, fetch=lambda url, timeout: None)\n"
        "_preflight.preflight([{'name': 'd', 'type': 'docker', 'options': {}}], host)\n"
        "names = ['boto3', 'google.auth'] + ['ansible_collections.bakery.images.plugins.module_utils.' + name\n"
        "    for name in ('_preflight_cloud', '_qemu_disk', '_qemu_vm', '_vagrant', '_hygiene')]\n"
        "print([name for name in names if name in sys.modules])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
