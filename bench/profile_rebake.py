"""Where the time of a rebake goes: the docker rebake of bench/rebake_last_step.py, task by task.

The bake of rebake_last_step.py (the default bake's docker target, role bakery.images.example_web, then a shell
entry that writes /etc/motd), run once not timed (the base, the cached state after the role), then N times
(default 2) with only the shell entry's environment changed, so that each starts from the cached state after
the role and runs the shell entry. ansible.posix.profile_tasks times every task; prints the wall times, the
load average and the mean seconds per task name (tasks of 0.1 s and more), largest first. The benchmark's images
are removed at the end.

Run from the repository: .venv/bin/python bench/profile_rebake.py [N]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rebake_last_step import REPO, remove_images, run_bake

TASK_TIME = re.compile(r"^(.*?) -+ ([0-9.]+)s$")


def rebake(work: Path, greeting: str) -> tuple[float, str]:
    return run_bake(
        work,
        greeting,
        env={
            "ANSIBLE_CALLBACKS_ENABLED": "bakery.images.bake_progress,ansible.posix.profile_tasks",
            "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all",
            "PROFILE_TASKS_SORT_ORDER": "none",
        },
    )


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    subprocess.run(["make", "-C", str(REPO), "apt-bake", "collection"], check=True, capture_output=True)
    remove_images()
    walls: list[float] = []
    tasks: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bakery-profile-") as tmp:
            work = Path(tmp)
            rebake(work, "warm-up")
            for index in range(rounds):
                seconds, output = rebake(work, "profile %d %s" % (index, time.time()))
                walls.append(round(seconds, 1))
                for line in output.splitlines():
                    match = TASK_TIME.match(line)
                    if match:
                        name = match.group(1).strip()
                        tasks[name] = tasks.get(name, 0.0) + float(match.group(2))
    finally:
        remove_images()
    print(
        json.dumps(
            {"benchmark": "profile_rebake", "rounds": rounds, "wall_s": walls, "load": os.getloadavg()}
        )
    )
    for name, total in sorted(tasks.items(), key=lambda item: -item[1]):
        if total / rounds >= 0.1:
            print("%6.2f  %s" % (total / rounds, name))


if __name__ == "__main__":
    main()
