"""Overhead of docker_image_build (Dockerfile mode) over plain `docker build` on the same context.

Both build tests/integration/files/Dockerfile.nginx on bakery/debian:bookworm without the layer cache
(the module through `ansible-playbook`, as users run it, with force=true and nocache=true; the CLI with
--no-cache and the same classic builder, DOCKER_BUILDKIT=0), alternating, N times each (default 5).
Prints the medians and their ratios; the goal is a ratio <= 1.10.
- `ratio`: what docker_image_build itself costs (its task, minus the same play's `ansible.builtin.ping`
  task, the fixed cost of running any module) against `docker build`;
- `ratio_task`: the whole task as Ansible times it (module transfer and start included);
- `ratio_with_ansible_startup`: the whole ansible-playbook run, start-up included.

Needs the base image bakery/debian:bookworm: `make bake` leaves the rootfs it needs in output/cache,
and this script imports it when the image is missing. Run: .venv/bin/python bench/docker_overhead.py [N]
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "tests" / "integration" / "files" / "Dockerfile.nginx"
ENV = dict(
    os.environ,
    ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
    ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
    ANSIBLE_LOCALHOST_WARNING="false",
    DOCKER_BUILDKIT="0",
)
PLAY_HEADER = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
"""
PLAY = (
    PLAY_HEADER
    + """    - name: floor
      ansible.builtin.ping:
    - name: build
      bakery.images.docker_image_build:
        context: "%(context)s"
        name: bakery-bench/overhead-module
        nocache: true
        force: true
"""
)
IMPORT = (
    PLAY_HEADER
    + """    - name: import
      bakery.images.docker_image_build:
        action: import
        rootfs: "%(rootfs)s"
        name: bakery/debian
        tags: [bookworm]
"""
)


def run(cmd: list[str], **kwargs) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL, **kwargs)
    return time.monotonic() - started


def run_module(play: Path) -> tuple[float, float, float]:
    """Wall time of ansible-playbook, and the ping and build tasks' durations from the json callback."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", str(play)],
        check=True,
        env=dict(ENV, ANSIBLE_STDOUT_CALLBACK="json"),
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    seconds = []
    for task in json.loads(proc.stdout)["plays"][0]["tasks"]:
        duration = task["task"]["duration"]
        start, end = (
            datetime.datetime.fromisoformat(duration[k].replace("Z", "+00:00")) for k in ("start", "end")
        )
        seconds.append((end - start).total_seconds())
    floor, build = seconds
    return wall, floor, build


def ensure_base(workdir: Path) -> None:
    if (
        subprocess.run(
            ["docker", "image", "inspect", "bakery/debian:bookworm"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return
    tarballs = sorted((REPO / "output" / "cache" / "rootfs").glob("bookworm-*.tar"))
    if not tarballs:
        sys.exit("no base image bakery/debian:bookworm and no rootfs in output/cache: run `make bake` first")
    play = workdir / "import.yml"
    play.write_text(IMPORT % {"rootfs": tarballs[-1]})
    run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", str(play)])


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        workdir = Path(tmp)
        context = workdir / "context"
        context.mkdir()
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        ensure_base(workdir)
        play = workdir / "build.yml"
        play.write_text(PLAY % {"context": context})
        module, floors, playbook, cli = [], [], [], []
        for index in range(rounds):
            wall, floor, task = run_module(play)
            playbook.append(wall)
            floors.append(floor)
            module.append(task)
            cli.append(
                run(
                    ["docker", "build", "--no-cache", "-q", "-t", "bakery-bench/overhead-cli", str(context)],
                    stderr=subprocess.DEVNULL,
                )
            )
            print(
                "round %d: module task %.2f s (any module: %.2f s; ansible-playbook %.2f s), docker build %.2f s"
                % (index + 1, task, floor, wall, cli[-1]),
                file=sys.stderr,
            )
        subprocess.run(
            ["docker", "rmi", "-f", "bakery-bench/overhead-module", "bakery-bench/overhead-cli"],
            capture_output=True,
            check=False,
        )
    cli_median = statistics.median(cli)
    ratio = (statistics.median(module) - statistics.median(floors)) / cli_median
    print(
        json.dumps(
            {
                "benchmark": "docker_overhead",
                "rounds": rounds,
                "module_task_median_s": round(statistics.median(module), 2),
                "any_module_task_median_s": round(statistics.median(floors), 2),
                "ansible_playbook_median_s": round(statistics.median(playbook), 2),
                "docker_build_median_s": round(cli_median, 2),
                "ratio": round(ratio, 3),
                "ratio_task": round(statistics.median(module) / cli_median, 3),
                "ratio_with_ansible_startup": round(statistics.median(playbook) / cli_median, 3),
                "goal": "<= 1.10",
                "met": ratio <= 1.10,
            }
        )
    )


if __name__ == "__main__":
    main()
