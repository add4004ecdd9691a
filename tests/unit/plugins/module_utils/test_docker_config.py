"""Option handling of docker_image_build that needs no engine: names, changes, committed config."""

from __future__ import annotations

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _docker
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BASE = {
    "Config": {
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Cmd": ["serve"],
        "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "ExposedPorts": {"443/tcp": {}},
        "User": "app",
        "WorkingDir": "/srv",
        "Labels": {"vendor": "x"},
    }
}


def test_base_entrypoint_and_cmd_survive_without_changes():
    conf = _docker.commit_config(BASE, {}, {"org.bakery.fingerprint": "f"})
    assert conf["Entrypoint"] == ["/docker-entrypoint.sh"] and conf["Cmd"] == ["serve"]
    assert conf["User"] == "app" and conf["WorkingDir"] == "/srv"
    assert conf["Labels"]["vendor"] == "x" and conf["Labels"]["org.bakery.fingerprint"] == "f"
    assert conf["Labels"]["bakery-temporary"] == "false"


def test_changes_apply_like_a_dockerfile():
    conf = _docker.commit_config(
        BASE,
        {"cmd": ["nginx"], "env": {"LANG": "C", "A": "1"}, "expose": ["80", "53/udp"], "user": "root"},
        {},
    )
    assert conf["Entrypoint"] == ["/docker-entrypoint.sh"] and conf["Cmd"] == ["nginx"]
    assert sorted(conf["Env"]) == ["A=1", "LANG=C", "PATH=/usr/bin:/bin"]
    assert set(conf["ExposedPorts"]) == {"443/tcp", "80/tcp", "53/udp"}
    assert conf["User"] == "root"


def test_new_entrypoint_resets_the_base_cmd():
    conf = _docker.commit_config(BASE, {"entrypoint": ["/bin/app"]}, {})
    assert conf["Entrypoint"] == ["/bin/app"] and conf["Cmd"] == []
    conf = _docker.commit_config(BASE, {"entrypoint": ["/bin/app"], "cmd": ["--x"]}, {})
    assert conf["Cmd"] == ["--x"]


def test_dockerfile_changes_for_import():
    lines = _docker.dockerfile_changes({"env": {"A": "b c"}, "expose": ["80"]}, default_cmd=["bash"])
    assert lines == ['CMD ["bash"]', 'ENV A="b c"', "EXPOSE 80"]


@pytest.mark.parametrize(
    "text, args, expected",
    [
        ("FROM bakery/debian:bookworm\nRUN x\n", {}, ["bakery/debian:bookworm"]),
        ("ARG BASE=a/b:1\nFROM ${BASE} AS build\nFROM build\nFROM scratch\n", {}, ["a/b:1"]),
        ("ARG BASE=a/b:1\nFROM $BASE\n", {"BASE": "c/d:2"}, ["c/d:2"]),
        ("FROM --platform=linux/amd64 x/y \\\n  AS s\nCOPY --from=s / /\n", {}, ["x/y"]),
    ],
)
def test_from_images(text, args, expected):
    assert _docker._from_images(text, args) == expected


@pytest.mark.parametrize(
    "name, tags",
    [("Bakery/Web", ["latest"]), ("", ["latest"]), ("web", ["-bad"]), ("web", ["a" * 129]), ("we b", ["x"])],
)
def test_names_docker_rejects_fail_early(name, tags):
    with pytest.raises(BakeryError, match="invalid image"):
        _docker.validate_name(name, tags)


@pytest.mark.parametrize("name", ["web", "bakery/example-web", "127.0.0.1:5000/team/app", "a.b/c__d"])
def test_valid_names(name):
    _docker.validate_name(name, ["latest", "1.2.0", "v1_x"])


def test_unknown_change_keys_are_refused_before_connecting():
    with pytest.raises(BakeryError, match="unknown key\\(s\\) in changes: onbuild"):
        _docker.run_action({"action": "start", "name": "x", "changes": {"onbuild": "x"}}, False)


def test_the_build_containers_environment_is_not_the_images():
    """commit_config builds Env from the base image only: nothing of the build container's (SYSTEMD_OFFLINE)."""
    conf = _docker.commit_config({"Config": {"Env": ["PATH=/usr/bin:/bin"]}}, {}, {})
    assert conf["Env"] == ["PATH=/usr/bin:/bin"]
    assert not any(item.startswith("SYSTEMD_OFFLINE") for item in conf["Env"])


class _ExecClient:
    def __init__(self, code: int, output: bytes) -> None:
        self.code, self.output = code, output
        self.api = self
        self.polls = 0

    def exec_create(self, cid, argv, **kwargs):
        self.argvs = getattr(self, "argvs", []) + [argv]
        return {"Id": "exec%d" % len(self.argvs)}

    def exec_start(self, exec_id, detach=False):
        assert detach, "an attached exec needs a hijacked connection"

    def exec_inspect(self, exec_id):
        # running at the first look, done at the second
        self.polls += 1
        return (
            {"Running": True, "ExitCode": None}
            if self.polls == 1
            else {"Running": False, "ExitCode": self.code}
        )

    def get_archive(self, cid, path):
        # the wrapper's output file: in /dev/shm, as the first exec named it
        assert path == self.argvs[0][4] and path.startswith("/dev/shm/.bakery-exec-")
        import io
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size = len(self.output)
            archive.addfile(info, io.BytesIO(self.output))
        return [buffer.getvalue()], {}


def test_stand_in_install_failure_names_the_container_and_the_output():
    import pytest

    from ansible_collections.bakery.images.plugins.module_utils._docker import _exec_checked
    from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

    done = _ExecClient(0, b"sysctl\n")
    assert _exec_checked(done, "c1", "bakery-x-web", ["true"], "installing") is None
    assert done.polls == 2
    failed = _ExecClient(1, b"no space\n")
    with pytest.raises(
        BakeryError, match=r"installing in build container bakery-x-web failed \(exit code 1\): no space"
    ):
        _docker._exec_checked(failed, "c1", "bakery-x-web", ["true"], "installing")
    # the output file is read back and removed; a command that succeeded removed its own
    assert failed.argvs[1] == ["rm", "-f", failed.argvs[0][4]]
    assert len(done.argvs) == 1 and done.argvs[0][5:] == ["true"]


def test_the_wrapper_keeps_a_failed_commands_output_and_removes_a_good_ones(tmp_path):
    """The wrapper script itself, run here with /tmp standing in when /dev/shm is not writable."""
    import subprocess

    wrapped = None

    class _Record(_ExecClient):
        def exec_create(self, cid, argv, **kwargs):
            nonlocal wrapped
            wrapped = argv
            return super().exec_create(cid, argv, **kwargs)

    _docker._exec_checked(_Record(0, b""), "c1", "bakery-x-web", ["true"], "installing")
    script = wrapped[2]
    out = tmp_path / "out.log"
    assert (
        subprocess.run(
            ["/bin/sh", "-c", script, "bakery", str(out), "sh", "-c", "echo hi; exit 3"], check=False
        ).returncode
        == 3
    )
    assert out.read_text() == "hi\n"
    assert (
        subprocess.run(
            ["/bin/sh", "-c", script, "bakery", str(out), "sh", "-c", "echo ok"], check=False
        ).returncode
        == 0
    )
    assert not out.exists()


def test_an_exec_that_ends_soon_is_found_done_soon(monkeypatch):
    # an exec is looked at again after 5 ms, then 10, 20, ... at most 0.1 s apart (the stand-in script's exec:
    # found done after a median 0.126 s, 0.166 s with a fixed 0.1 s pause)
    import itertools

    assert list(itertools.islice(_docker.poll_delays(), 7)) == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    assert list(itertools.islice(_docker.poll_delays(cap=0.2), 7))[-2:] == [0.16, 0.2]
    slept: list[float] = []
    monkeypatch.setattr(_docker.time, "sleep", slept.append)
    done = _ExecClient(0, b"")
    _docker._exec_checked(done, "c1", "bakery-x-web", ["true"], "installing")
    assert done.polls == 2 and slept == [0.005]
