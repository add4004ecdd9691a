"""Cost of the isolated chroot builder (bubblewrap per command) against a plain chroot.

Bakes the default definition's disk target (`-e bake_only=disk -e bake_force=disk`: the rootfs is cached,
the disk is made again) with the isolated builder, as users get it, and with today's plain chroot (the same
bake with `-e ansible_chroot_exe=chroot`, which makes community.general.chroot call chroot(8) directly),
alternating, N rounds (default 3). Prints the medians and their ratios; the goal is <= 1.15:
- `ratio`: the whole ansible-playbook run;
- `ratio_provision`: only the tasks run on the builder (fact gathering, the provisioning roles, the stand-in
  set-up), where the isolation costs something per command.

Run as root from the repository, after `make bake` (it leaves the cached rootfs):
.venv/bin/python bench/chroot_isolation.py [N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(
    os.environ,
    ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
    ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
    ANSIBLE_STDOUT_CALLBACK="json",
    PATH="%s:%s" % (REPO / ".venv" / "bin", os.environ.get("PATH", "")),
)


def seconds(stamp: dict) -> float:
    def parse(text: str) -> float:
        return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + text[20:26])

    return parse(stamp["end"]) - parse(stamp["start"])


def bake(plain: bool) -> tuple[float, float]:
    argv = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"),
        str(REPO / "playbooks" / "bake.yml"),
        "-e",
        "bake_only=disk",
        "-e",
        "bake_force=disk",
    ]
    if plain:
        argv += ["-e", "ansible_chroot_exe=chroot"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, check=False)
    whole = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit("the bake failed (plain=%s):\n%s\n%s" % (plain, proc.stdout[-4000:], proc.stderr[-3000:]))
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    provision = 0.0
    for play in report["plays"]:
        for task in play["tasks"]:
            # the builder's inventory name (the target's with -builder)
            if any(host.endswith("-builder") for host in task["hosts"]) and "duration" in task["task"]:
                provision += seconds(task["task"]["duration"])
    return whole, provision


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    isolated: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    bake(False)  # warm-up: the rootfs cache and the page cache, not measured
    for _round in range(rounds):
        isolated.append(bake(False))
        plain.append(bake(True))
        print("isolated %.1f s (provision %.1f s), plain chroot %.1f s (provision %.1f s)"
              % (*isolated[-1], *plain[-1]), file=sys.stderr)  # fmt: skip
    med = {
        "isolated_s": statistics.median(run[0] for run in isolated),
        "plain_chroot_s": statistics.median(run[0] for run in plain),
        "isolated_provision_s": statistics.median(run[1] for run in isolated),
        "plain_chroot_provision_s": statistics.median(run[1] for run in plain),
    }
    print(
        json.dumps(
            dict(
                rounds=rounds,
                **{key: round(value, 2) for key, value in med.items()},
                ratio=round(med["isolated_s"] / med["plain_chroot_s"], 3),
                ratio_provision=round(med["isolated_provision_s"] / med["plain_chroot_provision_s"], 3),
                goal="ratio <= 1.15",
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
