"""Second `make bake` against the first: an unchanged bake must take a small fraction of a real one.

Removes what the default bake made (output/ with its rootfs cache, and the image bakery/example-web),
then times `make bake` twice in a row and prints the ratio second / first; the goal is <= 0.10.
Run from the repository: .venv/bin/python bench/noop_rebake.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_bake() -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(["make", "-C", str(REPO), "bake"], capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit("make bake failed:\n%s\n%s" % (proc.stdout[-3000:], proc.stderr[-3000:]))
    recap = [line for line in proc.stdout.splitlines() if " : ok=" in line]
    return seconds, "\n".join(recap)


def main() -> None:
    # packages, venv and the installed collection are set up first: not part of what is measured
    subprocess.run(["make", "-C", str(REPO), "apt-bake", "collection"], check=True, capture_output=True)
    shutil.rmtree(REPO / "output", ignore_errors=True)
    subprocess.run(["docker", "rmi", "-f", "bakery/example-web:latest"], capture_output=True, check=False)
    first = make_bake()[0]
    second, recap = make_bake()
    print(recap, file=sys.stderr)
    ratio = second / first
    print(
        json.dumps(
            {
                "benchmark": "noop_rebake",
                "first_s": round(first, 1),
                "second_s": round(second, 1),
                "ratio": round(ratio, 3),
                "goal": "<= 0.10",
                "met": ratio <= 0.10,
                "second_changed_nothing": all("changed=0" in line for line in recap.splitlines()),
            }
        )
    )


if __name__ == "__main__":
    main()
