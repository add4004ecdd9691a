"""A rebake after changing only the last provisioner's variables, against the full bake: the per-step cache.

The default bake's docker target (its base, role bakery.images.example_web), with a last provisioner of its own: a
shell entry whose environment writes /etc/motd. Each round times the full bake (`bake_force=true`: every provisioner
runs, the cache is bypassed) and then the default bake with only that environment changed, which starts from the
cached state after the role. Prints the medians of N rounds (default 1) and their ratio, rebake / full (goal
<= 0.35). A first bake, not timed, makes the base root filesystem (shared with `make bake` in output/cache) and the
cached state; the images and step images the benchmark made are removed at the end.

With `qemu` the same for the default bake's disk target (`provision: chroot`, qcow2, vagrant): its cached states are
the chroot builder's sealed tarballs in output/cache/rootfs-steps; the benchmark's entries and its disk are removed
at the end.

Run from the repository: .venv/bin/python bench/rebake_last_step.py [N] [docker|qemu]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
REPOSITORY = "bakery-bench/rebake-last-step"
TARGET = "rebake-bench"


def definition(greeting: str, kind: str = "docker") -> dict:
    default = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    docker = next(target for target in default["targets"] if "docker" in target)
    disk = next(target for target in default["targets"] if "qemu" in target)
    target = (
        {"name": TARGET, "docker": dict(docker["docker"], repository=REPOSITORY, tags=["latest"])}
        if kind == "docker"
        else {"name": TARGET, "qemu": dict(disk["qemu"], name=TARGET)}
    )
    return {
        "bake": {
            "name": "rebake-bench",
            "output_dir": "output",
            "cache_dir": str(REPO / "output" / "cache"),
            "base": default["base"],
            "provisioners": [
                *default["provisioners"],
                {
                    "shell": {
                        "inline": ['printf "%s\\n" "$GREETING" > /etc/motd'],
                        "environment": {"GREETING": greeting},
                    }
                },
            ],
            "targets": [target],
        }
    }


def run_definition(
    work: Path, bake_definition: dict, *args: str, env: dict[str, str] | None = None, what: str = "bake"
) -> tuple[float, str]:
    """``playbooks/bake.yml`` on *bake_definition* in *work* (more environment variables in *env*): its wall time
    and its output; the benchmark stops when it fails (saying *what* failed)."""
    path = work / ("%s.yml" % what.replace(" ", "-"))
    path.write_text(yaml.safe_dump(bake_definition))
    # the repository's ansible.cfg (collections, forks), as make bake uses it; the output goes to the work directory
    env = dict(
        os.environ,
        PATH="%s:%s" % (BIN, os.environ.get("PATH", "")),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
        **(env or {}),
    )
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), str(REPO / "playbooks" / "bake.yml"), "-e", "@%s" % path, *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit("%s failed:\n%s\n%s" % (what, proc.stdout[-3000:], proc.stderr[-3000:]))
    return seconds, proc.stdout


def run_bake(
    work: Path, greeting: str, *args: str, kind: str = "docker", env: dict[str, str] | None = None
) -> tuple[float, str]:
    """The bake of definition(greeting, kind) in *work* (more environment variables in *env*): its wall time and
    its output; the benchmark stops when it fails."""
    return run_definition(work, definition(greeting, kind), *args, env=env)


def bake(work: Path, greeting: str, *args: str, kind: str = "docker") -> tuple[float, dict]:
    seconds, _output = run_bake(work, greeting, *args, kind=kind)
    (entry,) = json.loads((work / "output" / "bake-manifest.json").read_text())["artifacts"]
    return seconds, entry


def remove_images() -> None:
    """The benchmark's images: its tags, then its step images (label org.bakery.target), children first."""
    subprocess.run(["docker", "rmi", "-f", "%s:latest" % REPOSITORY], capture_output=True, check=False)
    for _attempt in range(3):
        listed = subprocess.run(
            ["docker", "images", "-aq", "--no-trunc", "--filter", "label=org.bakery.target=%s" % TARGET],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for image in listed:
            subprocess.run(["docker", "rmi", image], capture_output=True, check=False)


def remove_entries() -> None:
    """The benchmark's cached chroot trees: the entries whose seal names its target."""
    steps = REPO / "output" / "cache" / "rootfs-steps"
    for seal in steps.glob("*.tar.zst.seal"):
        try:
            target = json.loads(seal.read_text()).get("target")
        except ValueError:
            continue
        if target == TARGET:
            seal.unlink(missing_ok=True)
            (steps / seal.name[: -len(".seal")]).unlink(missing_ok=True)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    kind = sys.argv[2] if len(sys.argv) > 2 else "docker"
    if kind not in ("docker", "qemu"):
        sys.exit("usage: rebake_last_step.py [N] [docker|qemu]")
    # packages, venv and the installed collection first: not part of what is measured
    subprocess.run(["make", "-C", str(REPO), "apt-bake", "collection"], check=True, capture_output=True)
    cleanup = remove_images if kind == "docker" else remove_entries
    cleanup()
    full, rebake, steps = [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
            work = Path(tmp)
            bake(work, "warm-up", kind=kind)  # the rootfs, the base image, the cached state after the role
            for index in range(rounds):
                full.append(bake(work, "full %d" % index, "-e", "bake_force=true", kind=kind)[0])
                seconds, entry = bake(work, "rebake %d" % index, kind=kind)
                rebake.append(seconds)
                steps.append(entry.get("step_cache", {}).get("steps"))
    finally:
        cleanup()
    ratio = statistics.median(rebake) / statistics.median(full)
    print(
        json.dumps(
            {
                "benchmark": "rebake_last_step",
                "target": kind if kind == "docker" else "qemu (provision: chroot)",
                "rounds": rounds,
                "full_s": round(statistics.median(full), 1),
                "rebake_s": round(statistics.median(rebake), 1),
                "ratio": round(ratio, 3),
                "goal": "<= 0.35",
                "met": ratio <= 0.35,
                "rebake_steps": steps,
                # every round, in order: how far this machine's noise spreads the medians above
                "rounds_s": {
                    "full": [round(seconds, 1) for seconds in full],
                    "rebake": [round(seconds, 1) for seconds in rebake],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
