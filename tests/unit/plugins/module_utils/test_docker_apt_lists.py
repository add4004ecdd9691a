"""A build container that starts from the image made of the bake's rootfs gets the package lists kept beside the
tarball (``<rootfs>.apt-lists.tar``), as a chroot builder's tree does: ``_docker.start`` with ``apt_lists`` puts
them into the created container's /var/lib/apt/lists (Docker's put_archive), by the rules of ``_rootfs``'s seed."""

from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from docker.errors import APIError, NotFound

from ansible_collections.bakery.images.plugins.module_utils import _docker, _rootfs

LISTS = "var/lib/apt/lists"
RELEASE = "deb.debian.org_debian_dists_bookworm_InRelease"
PACKAGES = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
MIRROR_TIME = 1_700_000_000
BASE_ID = "sha256:" + "b" * 64
STEP_ID = "sha256:" + "5" * 64
USER_BASE_ID = "sha256:" + "u" * 64


def member(archive: tarfile.TarFile, name: str, data: bytes = b"", **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), MIRROR_TIME
    for key, value in fields.items():
        setattr(info, key, value)
    archive.addfile(info, io.BytesIO(data) if info.isreg() else None)


def rootfs(tmp_path: Path, lists: bytes | None = None) -> Path:
    """A rootfs tarball (its content does not matter here) with *lists* beside it (None: no lists file); by
    default the lists the hook keeps: the Release and a Packages index, as root's."""
    path = tmp_path / "rootfs.tar"
    path.write_bytes(b"a rootfs")
    if lists is None:
        return path
    Path(_rootfs.apt_lists_path(str(path))).write_bytes(lists)
    return path


def kept_lists(**extra: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        member(archive, RELEASE, b"Origin: Debian\n", mode=0o644)
        member(archive, PACKAGES, b"Package: bash\n", mode=0o644)
        for name, data in extra.items():
            member(archive, name, data)
    return out.getvalue()


class Api:
    """The Docker API calls ``start`` makes, recorded in order; ``put_archive`` raises or answers *put*."""

    base_url = "http+docker://localhost"

    def __init__(self, put: Any = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.archives: list[tuple[str, str, bytes]] = []
        self.put = put
        self.gone: set[str] = set()

    def inspect_image(self, ref: str) -> dict[str, Any]:
        if ref in self.gone or ref not in (BASE_ID, STEP_ID, USER_BASE_ID, "user/base:1"):
            raise NotFound("no such image %s" % ref)
        image_id = USER_BASE_ID if ref == "user/base:1" else ref
        return {"Id": image_id, "Config": {"User": ""}}

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        if image in self.gone:
            raise APIError("no such image", explanation="No such image: %s" % image)
        self.calls.append(("create", image))
        return {"Id": "c1"}

    def put_archive(self, cid: str, path: str, data: Any) -> bool:
        self.calls.append(("put_archive", path))
        if isinstance(self.put, Exception):
            raise self.put
        self.archives.append((cid, path, data.read()))
        return self.put

    def start(self, cid: str) -> None:
        self.calls.append(("start", cid))

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"State": {"Running": True, "Status": "running"}}

    def remove_container(self, cid: str, **kwargs: Any) -> None:
        self.calls.append(("remove", cid))


class Client:
    def __init__(self, put: Any = True) -> None:
        self.api = Api(put)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``start`` asks beyond the container: no image with the fingerprint, the rootfs's image, the step
    cache's answer (``step``: none by default), the stand-in commands installed."""
    state: dict[str, Any] = {"step": (0, None)}
    monkeypatch.setattr(_docker, "_lookup", lambda *args: {"found": False, "changed_inputs": []})
    monkeypatch.setattr(_docker, "rootfs_base_image", lambda client, path: BASE_ID)
    monkeypatch.setattr(_docker, "find_step", lambda client, keys: state["step"])
    monkeypatch.setattr(_docker, "_exec_checked", lambda *args, **kwargs: None)
    return state


def start(client: Client, tarball: Path | None, check_mode: bool = False, **params: Any) -> dict[str, Any]:
    params = dict(
        {
            "name": "bakery-test/web",
            "tags": ["latest"],
            "bake_id": "b1",
            "target": "web",
            "rootfs": str(tarball) if tarball else None,
            "apt_lists": True,
        },
        **params,
    )
    return _docker.start(client, params, check_mode)


def sent(client: Client) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members of the one archive put into the container, and their data."""
    ((cid, path, data),) = client.api.archives
    assert (cid, path) == ("c1", "/" + LISTS)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return [(info, archive.extractfile(info).read()) for info in archive.getmembers()]


def test_a_container_from_the_rootfs_gets_the_lists_before_it_starts(tmp_path: Path, engine: dict) -> None:
    client = Client()
    tarball = rootfs(tmp_path, kept_lists())
    result = start(client, tarball)
    assert result["apt_lists"] == {"path": _rootfs.apt_lists_path(str(tarball)), "files": 2}
    assert client.api.calls[:3] == [("create", BASE_ID), ("put_archive", "/" + LISTS), ("start", "c1")]
    members = sent(client)
    assert [(m.name, data) for m, data in members] == [
        (RELEASE, b"Origin: Debian\n"),
        (PACKAGES, b"Package: bash\n"),
    ]
    # root's plain files with the mirror's times, as seed_apt_lists writes them into a tree
    assert {(m.type, m.mode, m.uid, m.gid, m.mtime) for m, body in members} == {
        (tarfile.REGTYPE, 0o644, 0, 0, MIRROR_TIME)
    }
    # as the hook writes them: the file itself goes, not a copy
    assert client.api.archives[0][2] == Path(_rootfs.apt_lists_path(str(tarball))).read_bytes()


def test_no_seed_unless_asked(tmp_path: Path, engine: dict) -> None:
    client = Client()
    result = start(client, rootfs(tmp_path, kept_lists()), apt_lists=False)
    assert "apt_lists" not in result and ("put_archive", "/" + LISTS) not in client.api.calls


def test_a_container_from_a_step_image_gets_no_seed(tmp_path: Path, engine: dict) -> None:
    """A step image has the lists its bake refreshed (the refresh does not run again)."""
    engine["step"] = (1, {"Id": STEP_ID})
    client = Client()
    result = start(
        client, rootfs(tmp_path, kept_lists()), step_keys=["k0", "k1"], step_cache={"enabled": True}
    )
    assert result["step_cache"]["resume"] == 1
    assert "apt_lists" not in result and client.api.calls[:2] == [("create", STEP_ID), ("start", "c1")]


def test_a_container_that_falls_back_to_the_rootfs_from_an_evicted_step_image_is_seeded(
    tmp_path: Path, engine: dict
) -> None:
    engine["step"] = (1, {"Id": STEP_ID})
    client = Client()
    client.api.gone.add(STEP_ID)
    result = start(
        client, rootfs(tmp_path, kept_lists()), step_keys=["k0", "k1"], step_cache={"enabled": True}
    )
    assert result["step_cache"]["resume"] == 0 and result["apt_lists"]["files"] == 2
    assert client.api.calls[:3] == [("create", BASE_ID), ("put_archive", "/" + LISTS), ("start", "c1")]


def test_a_base_image_gets_no_seed(tmp_path: Path, engine: dict) -> None:
    """A base_image is the user's: nothing of a rootfs goes into it, even when asked (the role does not ask)."""
    rootfs(tmp_path, kept_lists())
    client = Client()
    result = start(client, None, base_image="user/base:1")
    assert "apt_lists" not in result and client.api.calls[:2] == [("create", "user/base:1"), ("start", "c1")]


@pytest.mark.parametrize("lists", [None, b""], ids=["no lists file", "an empty one"])
def test_a_rootfs_without_lists_is_used_as_it_is(tmp_path: Path, engine: dict, lists: bytes | None) -> None:
    client = Client()
    result = start(client, rootfs(tmp_path, lists))
    assert "apt_lists" not in result and client.api.calls[:2] == [("create", BASE_ID), ("start", "c1")]


def test_only_plain_files_directly_in_the_directory_are_sent(tmp_path: Path, engine: dict) -> None:
    """The rules of the chroot builder's seed (the same helper): never the lock, a link, a directory, a name that
    climbs out or goes deeper; a member named ./x is x."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        member(archive, "./" + RELEASE, b"Origin: Debian\n", mode=0o600, uid=1000, gid=1000)
        member(archive, "lock")
        member(archive, "../escaped", b"evil")
        member(archive, "/etc/passwd-like", b"evil")
        member(archive, "partial/half", b"half")
        member(archive, "partial", type=tarfile.DIRTYPE)
        member(archive, "linked", type=tarfile.SYMTYPE, linkname="/etc/shadow")
        member(archive, "hard", type=tarfile.LNKTYPE, linkname=RELEASE)
        member(archive, "fifo", type=tarfile.FIFOTYPE)
        member(archive, "..", b"")
        member(archive, PACKAGES, b"Package: bash\n")
    client = Client()
    tarball = rootfs(tmp_path, out.getvalue())
    result = start(client, tarball)
    members = sent(client)
    assert result["apt_lists"]["files"] == 2
    assert [(m.name, data) for m, data in members] == [
        (RELEASE, b"Origin: Debian\n"),
        (PACKAGES, b"Package: bash\n"),
    ]
    assert {(m.type, m.mode, m.uid, m.gid, m.mtime) for m, body in members} == {
        (tarfile.REGTYPE, 0o644, 0, 0, MIRROR_TIME)
    }
    # a chroot builder's tree gets the same files
    root = tmp_path / "root"
    (root / LISTS).mkdir(parents=True)
    (root / LISTS / "lock").write_text("")
    assert _rootfs.seed_apt_lists(_rootfs.apt_lists_path(str(tarball)), str(root))["files"] == 2
    assert sorted(os.listdir(root / LISTS)) == sorted([RELEASE, PACKAGES, "lock"])
    assert not (tmp_path / "escaped").exists()


def test_a_broken_lists_file_sends_nothing_and_never_fails(tmp_path: Path, engine: dict) -> None:
    """A half member would seed a half list: nothing goes, the refresh fetches them all."""
    client = Client()
    tarball = rootfs(tmp_path, kept_lists(big=b"x" * 4096)[: 2048 + 1024])
    result = start(client, tarball)
    assert result["apt_lists"]["files"] == 0 and result["apt_lists"]["error"], result["apt_lists"]
    assert client.api.calls[:2] == [("create", BASE_ID), ("start", "c1")]


@pytest.mark.parametrize(
    "put, why",
    [
        (APIError("500 Server Error", explanation="no space left on device"), "no space left on device"),
        (requests.exceptions.ConnectionError("connection reset"), "connection reset"),
        (False, "the engine did not take them"),
    ],
    ids=["an API error", "a lost connection", "a refusal"],
)
def test_a_failed_put_is_recorded_and_the_container_starts(
    tmp_path: Path, engine: dict, put: Any, why: str
) -> None:
    client = Client(put)
    tarball = rootfs(tmp_path, kept_lists())
    result = start(client, tarball)
    assert result["apt_lists"] == {
        "path": _rootfs.apt_lists_path(str(tarball)),
        "files": 0,
        "error": "cannot put them into the build container: %s" % why,
    }
    assert client.api.calls[:3] == [("create", BASE_ID), ("put_archive", "/" + LISTS), ("start", "c1")]
    assert result["container"]["id"] == "c1" and ("remove", "c1") not in client.api.calls


def test_check_mode_seeds_nothing(tmp_path: Path, engine: dict) -> None:
    client = Client()
    result = start(client, rootfs(tmp_path, kept_lists()), check_mode=True)
    assert "apt_lists" not in result and client.api.calls == []


@pytest.mark.parametrize(
    "fields",
    [{"mode": 0o600}, {"uid": 1000}, {"gid": 42}, {"pax_headers": {"SCHILY.xattr.user.x": "y"}}],
    ids=["mode", "owner", "group", "an extended attribute"],
)
def test_lists_other_than_the_hook_writes_them_go_as_root_s_plain_files(
    tmp_path: Path, engine: dict, fields: dict
) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        member(archive, RELEASE, b"Origin: Debian\n")
        member(archive, PACKAGES, b"Package: bash\n", **fields)
    client = Client()
    start(client, rootfs(tmp_path, out.getvalue()))
    members = sent(client)
    assert {(m.mode, m.uid, m.gid) for m, body in members} == {(0o644, 0, 0)}
    assert not any(m.pax_headers for m, body in members)


def test_the_archive_helper_reports_none_without_lists(tmp_path: Path) -> None:
    with _rootfs.apt_lists_archive(str(tmp_path / "none.tar")) as found:
        assert found == (None, None)
    (tmp_path / "empty.tar").write_bytes(b"")
    with _rootfs.apt_lists_archive(str(tmp_path / "empty.tar")) as found:
        assert found == (None, None)
    # nor does a chroot builder's tree get an error for an empty one (the hook leaves it when it could not write)
    (tmp_path / "root" / LISTS).mkdir(parents=True)
    assert _rootfs.seed_apt_lists(str(tmp_path / "empty.tar"), str(tmp_path / "root")) is None


# the refresh before the first provisioner, begun by the start (lists_refresh) and awaited by role bake's task


def installs(engine: dict, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every exec ``start`` runs as root (the stand-ins' install), recorded."""
    argvs: list[list[str]] = []
    monkeypatch.setattr(_docker, "_exec_checked", lambda client, cid, cname, argv, what: argvs.append(argv))
    return argvs


@pytest.mark.parametrize("base_image", [False, True], ids=["from the rootfs", "from a base_image"])
def test_the_refresh_begins_with_the_stand_ins_install(
    tmp_path: Path, engine: dict, monkeypatch: pytest.MonkeyPatch, base_image: bool
) -> None:
    argvs = installs(engine, monkeypatch)
    client = Client()
    if base_image:
        result = start(client, None, base_image="user/base:1", lists_refresh=True)
    else:
        result = start(client, rootfs(tmp_path, kept_lists()), lists_refresh=True)
    # one exec: the stand-ins, then the launch (no exec more than without it)
    ((shell, dash_c, script),) = argvs
    assert [shell, dash_c] == ["/bin/sh", "-c"]
    assert script == _docker.install_command()[-1] + "\n" + _docker.lists_refresh_launch()
    assert result["lists_refresh"] == {"wait": _docker.lists_refresh_wait()}


def test_no_refresh_begins_unless_asked_or_from_a_step_image(
    tmp_path: Path, engine: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    argvs = installs(engine, monkeypatch)
    result = start(Client(), rootfs(tmp_path, kept_lists()))
    assert "lists_refresh" not in result and argvs == [_docker.install_command()]
    # a step image has the lists its bake refreshed, and role bake runs no refresh on it
    engine["step"] = (1, {"Id": STEP_ID})
    argvs.clear()
    result = start(
        Client(),
        rootfs(tmp_path, kept_lists()),
        lists_refresh=True,
        step_keys=["k0", "k1"],
        step_cache={"enabled": True},
    )
    assert result["step_cache"]["resume"] == 1
    assert "lists_refresh" not in result and argvs == [_docker.install_command()]


def sh(script: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )


def refresh_scripts(tmp_path: Path, refresh: str, apt_get: str = "/bin/sh") -> tuple[str, str, Path]:
    """The launch and the wait around *refresh* (shell, made one command as apt-get's), in a directory of
    *tmp_path*."""
    directory = tmp_path / "bakery-lists-refresh"
    values = {
        "directory": str(directory),
        "refresh": "/bin/sh -c %s" % shlex.quote(refresh),
        "apt_get": apt_get,
    }
    return _docker.lists_refresh_launch(**values), _docker.lists_refresh_wait(**values), directory


@pytest.mark.parametrize("code", [0, 100])
def test_the_wait_gives_the_refresh_s_output_and_exit_code_and_leaves_nothing(
    tmp_path: Path, code: int
) -> None:
    launch, wait, directory = refresh_scripts(
        tmp_path,
        "echo Hit:1 http://deb.debian.org/debian bookworm InRelease; echo E: oops >&2; exit %d" % code,
    )
    # the launch ends at once: the refresh runs on in the background, its streams not the launch's
    started = time.monotonic()
    slow = launch.replace("exit %d'" % code, "sleep 1; exit %d'" % code)
    assert slow != launch
    launched = sh(slow)
    assert launched.returncode == 0 and launched.stdout == launched.stderr == ""
    assert time.monotonic() - started < 0.9
    assert (directory / "pid").exists() and not (directory / "rc").exists()
    waited = sh(wait)
    assert waited.returncode == code
    assert waited.stdout == "Hit:1 http://deb.debian.org/debian bookworm InRelease\nE: oops\n"
    assert not directory.exists()


def test_without_a_launch_the_wait_runs_the_refresh_itself(tmp_path: Path) -> None:
    _launch, wait, directory = refresh_scripts(tmp_path, "echo refreshed here; exit 3")
    waited = sh(wait)
    assert (waited.returncode, waited.stdout) == (3, "refreshed here\n") and not directory.exists()


def test_without_apt_get_nothing_starts_and_the_wait_does_nothing(tmp_path: Path) -> None:
    launch, wait, directory = refresh_scripts(
        tmp_path, "echo refreshed; exit 3", apt_get=str(tmp_path / "none")
    )
    assert sh(launch).returncode == 0 and not directory.exists()
    waited = sh(wait)
    assert (waited.returncode, waited.stdout) == (0, "")


def test_a_directory_that_cannot_be_made_starts_nothing(tmp_path: Path) -> None:
    launch, wait, directory = refresh_scripts(tmp_path, "echo refreshed; exit 0")
    directory.write_text("in the way")
    launched = sh(launch)
    assert launched.returncode == 0 and directory.read_text() == "in the way"
    # the wait finds no refresh begun, and runs it
    waited = sh(wait)
    assert (waited.returncode, waited.stdout) == (0, "refreshed\n")


def test_a_refresh_killed_without_an_exit_code_fails_the_wait(tmp_path: Path) -> None:
    launch, wait, directory = refresh_scripts(tmp_path, "echo fetching; sleep 37.25")
    assert sh(launch).returncode == 0
    pid = int((directory / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    waited = sh(wait, timeout=10)
    assert waited.returncode == 1 and "ended without an exit code" in waited.stderr
    assert not directory.exists()
    # the subshell's own child (the refresh's sleep) is left to the test's process group: end it
    subprocess.run(["pkill", "-f", "^sleep 37.25$"], check=False)
