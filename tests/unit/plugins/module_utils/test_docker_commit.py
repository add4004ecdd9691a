"""``_docker.commit`` always removes the build container, and says whether that worked: the docker role's cleanup
removes it only when the commit did not (one Docker module call less for every container bake)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from docker.errors import APIError

from ansible_collections.bakery.images.plugins.module_utils import _docker, _overlay, _standin

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
    # no merged view on this host unless a test gives one
    monkeypatch.setattr(_docker, "_merged_tree", lambda client, cid, base_image: (None, "not here"))
    monkeypatch.setattr(
        _docker,
        "reproducible_image",
        lambda client, cid, base_id, conf, params, base_image=None, merged=None, read=None: {
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


# the stand-ins' removal before the layer is written: skipped where the merged view shows it would do nothing


def merged_view(tmp_path: Path, record: str | None) -> _overlay.MergedTree:
    """A merged view in *tmp_path*: with the stand-ins' record (*record* ``file``), a symbolic link on its way
    (``link``), or none (None)."""
    merged = tmp_path / "merged"
    lib = merged / _standin.LIB_DIR.lstrip("/")
    if record == "link":
        (tmp_path / "elsewhere").mkdir()
        lib.parent.mkdir(parents=True)
        lib.symlink_to(tmp_path / "elsewhere")
    else:
        lib.mkdir(parents=True)
    if record == "file":
        (merged / _standin.RECORD_PATH.lstrip("/")).write_text("link systemctl\n")
    return _overlay.MergedTree(
        _overlay.Overlay(merged=str(merged), layers=(str(tmp_path / "upper"),), init="")
    )


@pytest.mark.parametrize(
    ("record", "removed"),
    [(None, False), ("file", True), ("link", True)],
    ids=["none there: skipped", "there: removed", "a link on the way: removed"],
)
def test_the_stand_ins_are_removed_unless_the_merged_view_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: str | None, removed: bool
) -> None:
    tree = merged_view(tmp_path, record)
    execs: list[list[str]] = []
    passed: list[Any] = []
    monkeypatch.setattr(_docker, "_exec_checked", lambda client, cid, cname, argv, what: execs.append(argv))
    looked: list[str] = []

    def merged_tree(client: Any, cid: str, base_image: dict[str, Any]) -> tuple[Any, str]:
        looked.append(cid)
        return tree, ""

    monkeypatch.setattr(_docker, "_merged_tree", merged_tree)

    def image(
        client: Any,
        cid: str,
        base_id: str,
        conf: Any,
        params: Any,
        base_image: Any = None,
        merged: Any = None,
        read: Any = None,
    ) -> dict[str, Any]:
        passed.append((base_image, merged))
        return {"id": MADE_ID, "packages": [], "diff_id": "sha256:" + "d" * 64}

    monkeypatch.setattr(_docker, "reproducible_image", image)
    result = commit(Api())
    assert result["id"] == MADE_ID
    assert execs == ([_standin.remove_command()] if removed else [])
    # the layer reads the same base image and merged view: each looked up once
    assert looked == [CID] and passed == [({"Id": IMAGE_ID, "Config": {"Cmd": ["bash"]}}, (tree, ""))]


def test_without_a_merged_view_the_stand_ins_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[list[str]] = []
    monkeypatch.setattr(_docker, "_exec_checked", lambda client, cid, cname, argv, what: execs.append(argv))
    commit(Api())
    assert execs == [_standin.remove_command()]


def test_a_path_that_cannot_be_followed_counts_as_stand_ins_there(tmp_path: Path) -> None:
    """Only a missing path says none is there: a file where a directory of the record's path should be (an error
    other than no such file) leaves the removal to run."""
    tree = merged_view(tmp_path, None)
    assert _docker.standins_absent(tree)
    lib = tmp_path / "merged" / _standin.LIB_DIR.lstrip("/")
    lib.rmdir()
    lib.write_text("not a directory")
    assert not _docker.standins_absent(tree)
    assert not _docker.standins_absent(None)


# the container's removal beside the image's load


@pytest.mark.parametrize("stuck", [False, True], ids=["removed", "stuck"])
def test_the_container_goes_while_the_image_loads_once_nothing_more_is_read(
    monkeypatch: pytest.MonkeyPatch, stuck: bool
) -> None:
    api = Api(stuck=stuck)
    seen: dict[str, Any] = {}

    def image(
        client: Any,
        cid: str,
        base_id: str,
        conf: Any,
        params: Any,
        base_image: Any = None,
        merged: Any = None,
        read: Any = None,
    ):
        seen["before"] = list(api.removed)
        read()
        # the load: the removal runs beside it
        deadline = time.monotonic() + 10
        while not api.removed and not stuck and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["during"] = list(api.removed)
        return {"id": MADE_ID, "packages": [], "diff_id": "sha256:" + "d" * 64}

    monkeypatch.setattr(_docker, "reproducible_image", image)
    result = commit(api)
    assert seen["before"] == []
    if stuck:
        # the thread's failure is quiet; the cleanup's removal tries again, and its failure is what the result says
        assert seen["during"] == [] and result["container_removed"] is False
    else:
        # removed beside the load; the cleanup's removal finds it gone
        assert seen["during"] == [CID] and result["container_removed"] is True
    assert [t.name for t in threading.enumerate() if t.name == "remove build container"] == []
