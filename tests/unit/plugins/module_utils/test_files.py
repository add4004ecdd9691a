"""Atomic outputs: all or nothing, and the sidecar that marks an output final goes before it is replaced."""

from __future__ import annotations

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _files


def test_outputs_are_replaced_together_and_lose_their_old_sidecars(tmp_path):
    paths = [str(tmp_path / "a.qcow2"), str(tmp_path / "a.vmdk")]
    for path in paths:
        (tmp_path / path).write_text("old")
        _files.write_sidecar(path, {"fingerprint": "old"})
    with pytest.raises(RuntimeError):
        with _files.atomic_outputs(paths) as tmps:
            open(tmps[0], "w").write("new")
            raise RuntimeError("the last output failed")
    assert [open(p).read() for p in paths] == ["old", "old"]
    assert all(_files.read_sidecar(p) == {"fingerprint": "old"} for p in paths)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["a.qcow2", "a.vmdk", "a.qcow2.bakery.json", "a.vmdk.bakery.json"]
    )

    with _files.atomic_outputs(paths) as tmps:
        for tmp in tmps:
            open(tmp, "w").write("new")
    assert [open(p).read() for p in paths] == ["new", "new"]
    # not final until the caller writes the new sidecars
    assert all(_files.read_sidecar(p) is None for p in paths)


def test_a_single_output_loses_its_old_sidecar_when_replaced(tmp_path):
    path = str(tmp_path / "box.box")
    open(path, "w").write("old")
    _files.write_sidecar(path, {"fingerprint": "old"})
    with _files.atomic_output(path) as tmp:
        open(tmp, "w").write("new")
    assert open(path).read() == "new" and _files.read_sidecar(path) is None
