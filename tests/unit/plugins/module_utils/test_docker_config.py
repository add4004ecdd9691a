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
