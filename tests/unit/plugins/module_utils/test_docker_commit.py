"""``_docker.commit`` always removes the build container, and says whether that worked: the docker role's cleanup
removes it only when the commit did not (one Docker module call less for every container bake)."""

from __future__ import annotations

from typing import Any

import pytest
from docker.errors import APIError

from ansible_collections.bakery.images.plugins.module_utils import _docker

CID = "c" * 64
IMAGE_ID = "sha256:" + "1" * 64
MADE_ID = "sha256:" + "9" * 64


class Api:
    """The Docker API calls ``commit`` makes itself; ``remove_container`` fails when *stuck*."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck
        self.removed: list[str] = []

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"Id": cid, "Name": "/bakery-build", "Image": IMAGE_ID, "Config": {"Labels": {}}}

    def remove_container(self, cid: str, force: bool = False, v: bool = False) -> None:
        if self.stuck:
            raise APIError("removal failed", explanation="device or resource busy")
        self.removed.append(cid)


class Client:
    def __init__(self, api: Api) -> None:
        self.api = api


@pytest.fixture(autouse=True)
def engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything but the container's removal as it goes when the image is made (tested elsewhere)."""
    monkeypatch.setattr(_docker, "container_inputs", lambda client, params: {"source": "a" * 64})
    monkeypatch.setattr(_docker, "previous_inputs", lambda client, name, tags: {})
    monkeypatch.setattr(_docker, "_image", lambda client, ref: {"Id": ref, "Config": {"Cmd": ["bash"]}})
    monkeypatch.setattr(_docker, "_exec_checked", lambda *args: "")
    monkeypatch.setattr(
        _docker,
        "reproducible_image",
        lambda client, cid, base_id, conf, params: {
            "id": MADE_ID,
            "packages": [],
            "diff_id": "sha256:" + "d" * 64,
        },
    )
    monkeypatch.setattr(_docker, "_check_committed", lambda client, image_id, conf: None)
    monkeypatch.setattr(
        _docker,
        "_built",
        lambda client, image_id, params, fp, inputs, changed, started, what: {
            "changed": True,
            "id": image_id,
        },
    )


def commit(api: Api) -> dict[str, Any]:
    params = {"name": "example/web", "tags": ["latest"], "container": CID, "changes": {}, "labels": {}}
    return _docker.commit(Client(api), params, check_mode=False)


def test_the_commit_removes_the_container_and_says_so() -> None:
    api = Api()
    result = commit(api)
    assert result["id"] == MADE_ID and result["layer"]["diff_id"] == "sha256:" + "d" * 64
    assert api.removed == [CID]
    assert result["container_removed"] is True


def test_a_container_the_commit_could_not_remove_is_left_to_the_cleanup() -> None:
    result = commit(Api(stuck=True))
    assert result["id"] == MADE_ID
    assert result["container_removed"] is False
