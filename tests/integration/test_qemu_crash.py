"""A bake of a qemu disk and its Vagrant box, killed with SIGKILL (the whole process tree) at each phase:
launch (unpacking the chroot), provision, capture (making the disk) and post-process (writing the box).
The janitor then leaves no work directory, no process and no partial file, and no final output carries
what the killed bake was making. It needs the default bake's kernel rootfs in the shared cache
(fixture kernel_rootfs).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from crash import Run, run_janitor, write_role

BAKE = REPO / "playbooks" / "bake.yml"

KILL_POINTS = [
    (
        "launch",
        r"TASK \[bakery\.images\.qemu : Unpack the root filesystem into the chroot work directory\]",
        0.3,
    ),
    ("provision", r"TASK \[hold : Hold the builder\]", 1.0),
    (
        "capture",
        r"TASK \[bakery\.images\.qemu : Make the disk and its outputs from the provisioned tree\]",
        2.0,
    ),
    ("postprocess", r"TASK \[bakery\.images\.vagrant : Make the box from the source's disk\]", 3.0),
]


def definition(tmp_path: Path, cache_dir: Path, hold: int) -> Path:
    bake = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    write_role(tmp_path)
    bake["cache_dir"] = str(cache_dir)
    bake["provisioners"] = [{"role": "hold", "vars": {"hold_seconds": hold, "crash_run": uuid.uuid4().hex}}]
    bake["targets"] = [t for t in bake["targets"] if t["name"] in ("disk", "box")]
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": bake}))
    return path


def left_behind(bake_id: str, tmp_path: Path, cache_dir: Path) -> dict[str, list[str]]:
    """Work directories, partial files and processes of bake *bake_id*."""
    workdirs = sorted(str(p) for p in (cache_dir / "qemu").glob("%s-*" % bake_id))
    partial = sorted(str(p) for p in (tmp_path / "output").rglob("*.partial"))
    partial += sorted(str(p) for p in (tmp_path / "output").glob(".bakery-qemu-*"))  # disk scratch dirs
    processes = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    argv = handle.read().decode(errors="replace")
            except OSError:
                continue
            if bake_id in argv and "pytest" not in argv:
                processes.append("%s %s" % (entry, argv.replace("\0", " ")[:200]))
    return {"workdirs": workdirs, "partial": partial, "processes": processes}


@pytest.mark.parametrize("phase, banner, delay", KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_sigkill_at_each_phase_then_the_janitor_leaves_nothing(
    kernel_rootfs, cache_dir, tmp_path, phase, banner, delay
):
    bake_file = definition(tmp_path, cache_dir, hold=300 if phase == "provision" else 0)
    bake_id = "crash-%s-%s" % (phase, uuid.uuid4().hex[:6])
    env = {"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    run = Run([str(BAKE), "-e", "@%s" % bake_file, "-e", "bake_id=%s" % bake_id], tmp_path, env=env)
    run.wait_for(banner, timeout=600)
    if phase == "launch":
        # the banner comes before the task's module has made the work directory (seconds, on a busy machine)
        run.wait_until(
            lambda: left_behind(bake_id, tmp_path, cache_dir)["workdirs"], "the chroot work directory", 120
        )
    time.sleep(delay)
    run.kill()
    before = left_behind(bake_id, tmp_path, cache_dir)
    if phase in ("launch", "provision", "capture"):
        assert before["workdirs"], (
            "the chroot work directory should exist at the kill:\n%s" % run.output[-2000:]
        )

    run_janitor(tmp_path, bake_file, bake_id, env=env)
    assert left_behind(bake_id, tmp_path, cache_dir) == {"workdirs": [], "partial": [], "processes": []}

    output = tmp_path / "output"
    disk, box = output / "example-web.qcow2", output / "bakery-example-web-1.0.0-libvirt.box"
    catalog = output / "bakery-example-web.json"
    if phase == "postprocess":
        # the disk was finished before the kill and is a whole artifact; the box was not
        assert json.loads((output / "example-web.qcow2.bakery.json").read_text())["fingerprint"]
    else:
        assert not disk.exists() and not (output / "example-web.qcow2.bakery.json").exists()
    assert not box.exists(), "the killed bake left a box: %s" % sorted(os.listdir(output))
    assert not catalog.exists() or "1.0.0" not in catalog.read_text()
