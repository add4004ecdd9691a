"""Cost of qemu_image (from a rootfs, chroot path, no provisioning) against the floor of any disk build.

Both start from the same rootfs tarball with a kernel (the default bake's qemu rootfs) and end with a qcow2:
- qemu_image: ``action=unpack`` into a work directory (what the chroot path provisions), then ``action=build``
  from that directory (machine-image preparation, GPT, ESP, GRUB for BIOS and UEFI, ext4, conversion,
  sha256, sidecar), both through ``ansible-playbook``'s task timing minus a ping task (the per-task floor);
- the floor: ``tar -x`` of the same tarball, ``mkfs.ext4 -d`` of the tree into a file, ``qemu-img convert``
  of that file to qcow2 (no partition table, no boot loader: not bootable).
Runs N rounds (default 3), alternating, and prints the medians, their ratio (goal <= 1.5) and the size of
the qcow2 against the rootfs (the tarball and the unpacked tree).

The rootfs tarball is built with bakery.images.rootfs into output/cache when missing (not measured).
Run as root from the repository: .venv/bin/python bench/qemu_build.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".collections" / "src"))
ENV = dict(
    os.environ,
    ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
    ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
    ANSIBLE_LOCALHOST_WARNING="false",
    ANSIBLE_STDOUT_CALLBACK="json",
    PATH="%s:%s" % (REPO / ".venv" / "bin", os.environ.get("PATH", "")),
)
PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: floor
      ansible.builtin.ping:
    - name: unpack
      bakery.images.qemu_image:
        action: unpack
        rootfs: "%(rootfs)s"
        workdir: "%(work)s/chroot"
    - name: build
      bakery.images.qemu_image:
        rootfs: "%(work)s/chroot/root"
        disk_size: 4G
        force: true
        outputs:
          - path: "%(work)s/disk.qcow2"
    - name: remove
      bakery.images.qemu_image:
        action: remove
        workdir: "%(work)s/chroot"
"""
ROOTFS = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - bakery.images.rootfs: %s
"""


def kernel_rootfs() -> str:
    """The default bake's qemu rootfs (its base plus the qemu target's system packages), built if missing."""
    from ansible_collections.bakery.images.plugins.module_utils._plan import rootfs_plan

    bake = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    specs = yaml.safe_load((REPO / "roles" / "qemu" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]["bakery_target"]["options"]["options"]["options"]
    base = dict(bake["base"], packages=bake["base"]["packages"] + options["system_packages"]["default"])
    plan = rootfs_plan(base, str(REPO / "output" / "cache"))
    if not os.path.exists(plan["path"]):
        with tempfile.TemporaryDirectory() as tmp:
            play = Path(tmp) / "rootfs.yml"
            play.write_text(ROOTFS % json.dumps(dict(plan["options"], path=plan["path"])))
            subprocess.run(["ansible-playbook", str(play)], env=ENV, check=True, capture_output=True)
    return plan["path"]


def task_seconds(data: dict, name: str) -> float:
    for play in data["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == name:
                duration = task["task"]["duration"]
                start = duration["start"].replace("Z", "+00:00")
                end = duration["end"].replace("Z", "+00:00")
                from datetime import datetime

                return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    raise KeyError(name)


def module_round(rootfs: str, work: Path) -> tuple[float, int, int]:
    play = work / "play.yml"
    play.write_text(PLAY % {"rootfs": rootfs, "work": work})
    proc = subprocess.run(
        ["ansible-playbook", str(play)], env=ENV, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit("qemu_image failed:\n%s" % proc.stdout[-4000:])
    data = json.loads(proc.stdout[proc.stdout.index("{") :])
    floor = task_seconds(data, "floor")
    seconds = task_seconds(data, "unpack") + task_seconds(data, "build") - 2 * floor
    build = data["plays"][0]["tasks"][2]["hosts"]["localhost"]
    size = (work / "disk.qcow2").stat().st_size
    return seconds, size, int(build.get("rootfs_bytes") or 0)


def floor_round(rootfs: str, work: Path) -> float:
    tree = work / "tree"
    tree.mkdir()
    started = time.monotonic()
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", rootfs, "-C", str(tree)],
        check=True,
    )
    raw = work / "root.ext4"
    with open(raw, "wb") as handle:
        handle.truncate(4 * 1024**3 - 67 * 1024**2)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(raw)], check=True)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "floor.qcow2")], check=True
    )
    return time.monotonic() - started


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    subprocess.run(["make", "-C", str(REPO), "collection"], check=True, capture_output=True)
    rootfs = kernel_rootfs()
    module, floor = [], []
    size = tree = 0
    for _round in range(rounds):
        for measure in ("module", "floor"):
            work = Path(tempfile.mkdtemp(prefix="bakery-bench-", dir=str(REPO / "output")))
            try:
                if measure == "module":
                    seconds, size, tree = module_round(rootfs, work)
                    module.append(seconds)
                else:
                    floor.append(floor_round(rootfs, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(module) / statistics.median(floor)
    tarball = os.path.getsize(rootfs)
    print(
        json.dumps(
            {
                "benchmark": "qemu_build",
                "rounds": rounds,
                "qemu_image_s": round(statistics.median(module), 1),
                "floor_s": round(statistics.median(floor), 1),
                "ratio": round(ratio, 3),
                "goal": "<= 1.5",
                "met": ratio <= 1.5,
                "qcow2_bytes": size,
                "rootfs_tarball_bytes": tarball,
                "rootfs_tree_bytes": tree,
                "qcow2_to_tarball": round(size / tarball, 3),
                "qcow2_to_tree": round(size / tree, 3) if tree else None,
            }
        )
    )


if __name__ == "__main__":
    main()
