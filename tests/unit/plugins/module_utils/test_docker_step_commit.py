"""``_docker.step_commit`` keeps the build container's state after a provisioner as a step image. The stand-in
commands are no part of that state: they go out before Docker's commit and come back for the next provisioner,
but not after the last one (nothing runs in the container then but the removal of the package lists, and the
final commit takes them out again), unless that commit failed (the error provisioners run in the container as
the failure left it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from docker.errors import APIError

from ansible_collections.bakery.images.plugins.module_utils import _docker
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

CID = "c" * 64
IMAGE_ID = "sha256:" + "1" * 64
STEP_ID = "sha256:" + "5" * 64
KEYS = ["base-key", "key-1", "key-2", "key-3"]


class Api:
    """The Docker API calls ``step_commit`` makes; ``commit`` raises when *fail*."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.commits: list[dict[str, Any]] = []

    def images(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: A002
        return []

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"Id": cid, "Name": "/bakery-build", "Image": IMAGE_ID}

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return {"Id": ref, "Config": {"Cmd": ["bash"]}}

    def commit(self, cid: str, conf: dict[str, Any], message: str) -> dict[str, str]:
        if self.fail:
            raise APIError("commit failed", explanation="no space left on device")
        self.commits.append(conf["Labels"])
        return {"Id": STEP_ID}


class Client:
    def __init__(self, api: Api) -> None:
        self.api = api


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What was run in the container, in order: ``remove`` or ``install`` (the stand-ins)."""
    ran: list[str] = []
    commands = {tuple(_docker.remove_command()): "remove", tuple(_docker.install_command()): "install"}

    def exec_checked(client: Any, cid: str, cname: str, argv: list[str], what: str) -> str:
        ran.append(commands[tuple(argv)])
        return ""

    monkeypatch.setattr(_docker, "_exec_checked", exec_checked)
    return ran


def keep(tmp_path: Path, step: int, api: Api) -> dict[str, Any]:
    params = {
        "container": CID,
        "step": step,
        "step_keys": KEYS,
        "step_cache": {"enabled": True, "max_size": 0, "dir": str(tmp_path)},
        "target": "web",
    }
    return _docker.step_commit(Client(api), params, check_mode=False)


@pytest.mark.parametrize("step", [1, 2])
def test_the_stand_ins_come_back_for_the_next_provisioner(
    tmp_path: Path, execs: list[str], step: int
) -> None:
    api = Api()
    result = keep(tmp_path, step, api)
    assert result["changed"] and result["image"] == STEP_ID and result["key"] == KEYS[step]
    assert execs == ["remove", "install"]
    assert json.loads(api.commits[0][_docker.STEP_LABEL])["position"] == step


def test_after_the_last_provisioner_they_stay_out(tmp_path: Path, execs: list[str]) -> None:
    api = Api()
    result = keep(tmp_path, len(KEYS) - 1, api)
    assert result["changed"] and result["image"] == STEP_ID
    assert execs == ["remove"]
    # the use of the step is recorded all the same
    assert STEP_ID in json.loads((tmp_path / _docker.STEP_INDEX).read_text())["used"]


def test_a_failed_commit_of_the_last_step_puts_them_back(tmp_path: Path, execs: list[str]) -> None:
    with pytest.raises(BakeryError, match="docker commit of step 3 .* no space left on device"):
        keep(tmp_path, len(KEYS) - 1, Api(fail=True))
    assert execs == ["remove", "install"]
