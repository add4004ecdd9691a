"""Shared fixtures for integration tests: run real playbooks with the collection make installed."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = Path(os.environ.get("BAKERY_TEST_COLLECTIONS", REPO / ".collections"))
# make test runs its steps and integration streams side by side (scripts/steps, scripts/integration): each has
# a cache directory of its own (chroot and VM work directories, the qemu_vm test disk), named by the stream
# scripts/integration sets.  Only the base root filesystem tarballs are shared, through the symbolic link
# <cache>/rootfs: they are made under a lock, written atomically and never removed by a test.
CACHES = REPO / "tests" / "output" / "cache"
CACHE = CACHES / os.environ.get("BAKERY_TEST_STREAM", "all")
# this session's own tag on the base image (bake_base)
HOLD_REPOSITORY, HOLD_TAG = "bakery-test-hold/%d" % os.getpid(), "base"


@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    data: dict | None

    def _tasks(self, task_name: str) -> Iterator[dict]:
        """The json callback's entries of the task(s) named *task_name* (role tasks: "role : name")."""
        for play in (self.data or {}).get("plays", []):
            for task in play.get("tasks", []):
                name = task["task"]["name"]
                if name == task_name or name.endswith(" : " + task_name):
                    yield task

    def task_results(self, task_name: str) -> list[dict]:
        """Every host's result of the task(s) named *task_name*."""
        return [result for task in self._tasks(task_name) for result in task["hosts"].values()]

    def host_results(self, task_name: str) -> dict[str, dict]:
        """The result of the task(s) named *task_name* by host (a later task of that name wins)."""
        found: dict[str, dict] = {}
        for task in self._tasks(task_name):
            found.update(task["hosts"])
        return found

    def task_seconds(self, task_name: str) -> float:
        """How long the task(s) named *task_name* took, together (the json callback's durations)."""
        total = 0.0
        for task in self._tasks(task_name):
            duration = task["task"].get("duration") or {}
            if duration.get("end"):
                total += (
                    datetime.datetime.fromisoformat(duration["end"].replace("Z", "+00:00"))
                    - datetime.datetime.fromisoformat(duration["start"].replace("Z", "+00:00"))
                ).total_seconds()
        return total

    def task_result(self, task_name: str) -> dict:
        results = self.task_results(task_name)
        assert results, "no result for task %r in:\n%s" % (task_name, self.stdout[-4000:])
        return results[0]

    @property
    def stats(self) -> dict:
        return (self.data or {}).get("stats", {})

    def explain(self, tail: int = 3000) -> str:
        """Why a run failed, for an assertion message: every failed or unreachable task result (host, task,
        message: an unreachable builder's connection error is otherwise cut off in the output's tail), then
        the tail of the output and of stderr."""
        lines = []
        for play in (self.data or {}).get("plays", []):
            for task in play.get("tasks", []):
                for host, result in task.get("hosts", {}).items():
                    if result.get("unreachable") or (
                        result.get("failed") and not result.get("ignore_errors")
                    ):
                        what = "UNREACHABLE" if result.get("unreachable") else "FAILED"
                        lines.append(
                            "%s %s in %r: %s"
                            % (what, host, task["task"]["name"], str(result.get("msg", ""))[:1500])
                        )
        return "\n".join(
            [
                "failed and unreachable results:",
                *lines,
                "output tail:",
                self.stdout[-tail:],
                self.stderr[-1500:],
            ]
        )


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_playbook(
    playbook: str | Path,
    tmp_path: Path,
    extra_vars: dict | None = None,
    args: list[str] | None = None,
    json_output: bool = True,
    env: dict[str, str] | None = None,
    timeout: int = 1200,
) -> PlaybookResult:
    """Run ansible-playbook; *playbook* is a path or the text of a playbook."""
    if isinstance(playbook, str) and "\n" in playbook:
        path = tmp_path / "playbook.yml"
        path.write_text(textwrap.dedent(playbook))
        playbook = path
    cmd = ["ansible-playbook", str(playbook)]
    if extra_vars:
        vars_file = tmp_path / ("extra-vars-%d.json" % len(list(tmp_path.glob("extra-vars-*.json"))))
        vars_file.write_text(json.dumps(extra_vars))
        cmd += ["-e", "@%s" % vars_file]
    cmd += args or []
    run_env = ansible_env(**(env or {}))
    if json_output:
        run_env["ANSIBLE_STDOUT_CALLBACK"] = "json"
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    note_output(proc.stdout, proc.stderr)
    data = None
    if json_output:
        try:
            # the json callback's document starts a line; with -v and more, lines before it may hold braces
            start = proc.stdout.rfind("\n{\n") + 1 if "\n{\n" in proc.stdout else proc.stdout.index("{")
            data = json.loads(proc.stdout[start:])
        except ValueError:
            data = None
    return PlaybookResult(proc.returncode, proc.stdout, proc.stderr, data)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Artifacts worth keeping between tests of one session (a base rootfs, say): this stream's own."""
    (CACHES / "rootfs").mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    link = CACHE / "rootfs"
    if not link.is_symlink():
        link.symlink_to(Path("..") / "rootfs")
    return CACHE


# The base every Docker test starts from: what the default bake builds (Debian bookworm minbase with
# python3 and python3-apt), made once per session by bakery.images.rootfs in the shared cache, and
# imported as bakery/debian:bookworm, the name ../shared/examples/Dockerfile.nginx starts FROM.
BAKE_BASE = {
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "variant": "minbase",
    "packages": ["python3", "python3-apt"],
}
LOCAL = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter={{ ansible_playbook_python }}"]


def docker_client():
    import docker

    return docker.from_env()


def remove_repositories(*names: str) -> None:
    """Remove a test's images by their tags in *names*, never by image id: an image found by its fingerprint
    is shared (bakery tags the image that already has the fingerprint, the session's base image say), and
    removing it by id would take it from every other test, stream and scenario that uses it.  An image
    loses only these tags; the engine deletes it when it had no other."""
    client = docker_client()
    for name in names:
        for image in client.api.images(name=name):
            for ref in image.get("RepoTags") or []:
                if ref.rsplit(":", 1)[0] == name:
                    client.api.remove_image(ref, force=True)


def remove_untagged(image_ids: list[str]) -> None:
    """Remove the images of *image_ids* that have no tag left (a test's earlier images, whose tags its later
    bakes took), the latest first: an image another one was made from goes after it.  Images that still have a
    tag, or are gone already, stay as they are."""
    import docker

    client = docker_client()
    for image_id in reversed(image_ids):
        with contextlib.suppress(docker.errors.APIError):
            if not client.api.inspect_image(image_id)["RepoTags"]:
                client.api.remove_image(image_id)


@pytest.fixture(scope="session")
def bake_base(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The bake's base rootfs tarball (path as the plan computes it) and the base image made from it.

    Every stream (scripts/integration) and Molecule's scenarios import the same rootfs as the same name, and
    the tests hand the image on by id.  While this session runs, the image also carries a tag of this
    session's own (``bakery-test-hold/<pid>:base``): an image with a tag is never deleted as an untagged
    parent when a child of it is removed, and no test or scenario removes another's tags.
    """
    from ansible_collections.bakery.images.plugins.module_utils._plan import rootfs_plan

    rootfs = rootfs_plan(BAKE_BASE, str(cache_dir))
    tmp = tmp_path_factory.mktemp("bake-base")
    play = """
    - hosts: localhost
      gather_facts: false
      tasks:
        - name: rootfs
          bakery.images.rootfs:
            path: "{{ path }}"
            suite: "{{ base.suite }}"
            mirror: "{{ base.mirror }}"
            variant: "{{ base.variant }}"
            packages: "{{ base.packages }}"
        - name: import
          bakery.images.docker_image_build:
            action: import
            rootfs: "{{ path }}"
            name: bakery/debian
            tags: [bookworm]
    """
    run = run_playbook(play, tmp, extra_vars={"base": BAKE_BASE, "path": rootfs["path"]}, args=LOCAL)
    assert run.rc == 0, run.stdout[-4000:] + run.stderr[-2000:]
    image = run.task_result("import")["image"]["id"]
    client = docker_client()
    client.api.tag(image, HOLD_REPOSITORY, HOLD_TAG)
    try:
        yield {"rootfs": rootfs["path"], "image": image, "cache_dir": str(cache_dir)}
    finally:
        client.api.remove_image("%s:%s" % (HOLD_REPOSITORY, HOLD_TAG), noprune=True)


# what the playbooks of the test in progress printed, while docker_leftovers collects it
_TEST_OUTPUT: list[str] | None = None


def note_output(*outputs: str) -> None:
    """Keep a playbook run's output for docker_leftovers, which finds the test's bake ids in it."""
    if _TEST_OUTPUT is not None:
        _TEST_OUTPUT.extend(outputs)


@pytest.fixture()
def docker_leftovers():
    """Fails the test if it leaves build containers behind: those made while it ran that carry a bake id its
    playbook runs printed (plans, summaries, errors and module arguments name it).  The other streams
    (scripts/integration) and Molecule's scenarios make build containers on the same engine meanwhile, with bake
    ids of their own or none: theirs never count, and nothing needs to wait for them.  A test that starts
    build containers itself gives them a bake id (``docker_image_build`` ``bake_id``)."""
    global _TEST_OUTPUT  # noqa: PLW0603 - one test at a time in a pytest process
    client = docker_client()
    # the low-level listing: containers.list inspects each one, and fails if one goes meanwhile
    temporary = {"label": "bakery-temporary=true"}
    before = {c["Id"] for c in client.api.containers(all=True, filters=temporary)}
    _TEST_OUTPUT = output = []
    try:
        yield client
    finally:
        _TEST_OUTPUT = None
    text = "\n".join(output)
    leaked = sorted(
        "%s (bake %s)" % (c["Names"][0].lstrip("/"), bake_id)
        for c in client.api.containers(all=True, filters=temporary)
        for bake_id in [(c.get("Labels") or {}).get("bakery-bake-id")]
        if c["Id"] not in before and bake_id and bake_id in text
    )
    assert not leaked, "build containers left behind: %s" % leaked


@pytest.fixture(scope="session")
def libvirtd():
    """libvirtd, virtlogd, the network and storage pool `default`: started by scripts/libvirtd where they do not
    run, and afterwards stopped again (only what it started)."""
    script = str(REPO / "scripts" / "libvirtd")
    started = subprocess.run([script, "start"], capture_output=True, text=True, timeout=180, check=False)
    assert started.returncode == 0, "scripts/libvirtd start failed:\n" + started.stderr
    try:
        yield "qemu:///system"
    finally:
        subprocess.run([script, "stop"], capture_output=True, text=True, timeout=180, check=False)


def loops_and_mounts(*under: Path) -> tuple[set[str], set[str]]:
    """Loop devices whose file, and mounts whose point, lie under *under* (other bakes on a shared host
    mount and unmount their own things meanwhile, so only what could be this suite's counts)."""
    prefixes = tuple(str(path.resolve()) for path in under)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    with open("/proc/mounts", encoding="utf-8") as handle:
        points = {line.split()[1] for line in handle}
    return (
        {line for line in loops.splitlines() if any(prefix in line for prefix in prefixes)},
        {point for point in points if point.startswith(prefixes)},
    )


KERNEL_ROOTFS_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: plan
      bakery.images.bake_plan:
        bake: "{{ bake }}"
        only: disk
      register: planned
    - name: rootfs
      bakery.images.rootfs:
        path: "{{ rootfs.path }}"
        suite: "{{ rootfs.options.suite }}"
        mirror: "{{ rootfs.options.mirror | default(omit) }}"
        variant: "{{ rootfs.options.variant | default(omit) }}"
        packages: "{{ rootfs.options.packages | default(omit) }}"
      vars:
        rootfs: "{{ (planned.plan.targets | selectattr('name', 'equalto', 'disk') | first).rootfs }}"
"""


@pytest.fixture(scope="session")
def kernel_rootfs(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rootfs of the default bake's disk target (the base with a kernel, systemd, sshd), in the shared
    cache: made here, or by the default bake of another stream (the rootfs module locks it meanwhile)."""
    import yaml

    definition = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    definition["cache_dir"] = str(cache_dir)
    tmp = tmp_path_factory.mktemp("kernel-rootfs")
    run = run_playbook(KERNEL_ROOTFS_PLAY, tmp, extra_vars={"bake": definition}, args=LOCAL)
    assert run.rc == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return Path(run.task_result("rootfs")["path"])


@pytest.fixture(scope="session")
def default_bake(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default bake's disk and its libvirt box (``-e bake_only=box``, which selects the disk too), baked once
    per session into a temporary output directory with the shared cache; tests boot copies, never these files."""
    import time

    import yaml

    definition = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    definition["cache_dir"] = str(cache_dir)
    tmp = tmp_path_factory.mktemp("default-bake")
    (tmp / "bake.json").write_text(json.dumps({"bake": definition}))
    watched = (tmp_path_factory.getbasetemp(), cache_dir, REPO)
    before = loops_and_mounts(*watched)
    started = time.monotonic()
    first = run_playbook(
        REPO / "playbooks" / "bake.yml", tmp, args=["-e", "@%s" % (tmp / "bake.json"), "-e", "bake_only=box"]
    )
    seconds = time.monotonic() - started
    assert first.rc == 0, first.stdout[-6000:] + first.stderr[-2000:]
    return {
        "tmp": tmp,
        "output": tmp / "output",
        "definition": definition,
        "first": first,
        "seconds": seconds,
        "watched": watched,
        "before": before,
    }


# ------------------------------------------------------------------------------------------------ clouds


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto_server (EC2, S3, SSM, STS, EBS direct) on the loopback, one per test module, stopped after it."""
    from aws import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def glance(tmp_path_factory):
    """A real Glance (glance-api under gunicorn, sqlite, filesystem store; tests/integration/glance.py), one per
    test module, stopped after it."""
    from glance import Glance

    server = Glance(tmp_path_factory.mktemp("glance"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def gce(tmp_path):
    """The fake Compute Engine and the storage emulator (test_gce.Env), stopped after the test; a request the
    Compute API would not accept fails it."""
    from test_gce import Env

    env = Env(tmp_path)
    try:
        yield env
        assert not env.fake.violations, "requests the Compute API would not accept:\n" + "\n".join(
            env.fake.violations
        )
    finally:
        env.stop()


def shadow_path(tmp_path: Path, hidden: set[str]) -> str:
    """A PATH with every command of this one but *hidden* (links in a directory of their own, first the venv's)."""
    shadow = tmp_path / "path"
    shadow.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep) + SYSTEM_DIRS:
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = shadow / entry.name
            if entry.name not in hidden and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    return str(shadow)


SYSTEM_DIRS = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]

# the plan play's preflight task (roles/bake/tasks/main.yml)
PREFLIGHT_TASK = (
    "Check the build host for every selected target (preflight; -e bake_preflight=false skips it)"
)
