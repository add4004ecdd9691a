"""bakery against Packer on the same role and the same base image, into a Docker image.

Packer: Debian's `packer` (1.6.6; installed with apt-get when missing), its docker builder from the local
image and its ansible provisioner (through Packer's SSH proxy) running role bakery.images.example_web, then
docker-tag. bakery: `playbooks/bake.yml` with one docker target from the same image and the same role. Both
run as users run them. Packer rebuilds every time; bakery is timed forced (`bake_force=true`) and unchanged.

Prints the medians of N alternating rounds (default 3) and two ratios, bakery / Packer:
- `ratio_full`: a forced bakery build (goal <= 0.8);
- `ratio_unchanged`: a bakery run with nothing changed (goal <= 0.2).
A first bakery run (not timed) makes the base root filesystem (shared with `make bake` in output/cache) and
imports it as the image both tools start from.

Run from the repository: .venv/bin/python bench/vs_packer.py [N]
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
BIN = REPO / ".venv" / "bin"
REPOSITORY = "bakery-bench/vs-packer"
# the OpenSSH client of Debian 12 refuses the ssh-rsa signatures of Packer 1.6.6's SSH proxy unless told
SSH_ARGS = "-o PubkeyAcceptedKeyTypes=+ssh-rsa -o HostkeyAlgorithms=+ssh-rsa"


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit("%s failed:\n%s\n%s" % (" ".join(argv), proc.stdout[-3000:], proc.stderr[-3000:]))
    return seconds


def base_image(definition: dict) -> str:
    """The image bakery imported from the bake's base root filesystem (a docker target without base_image)."""
    sys.path.insert(0, str(REPO / ".collections" / "src"))
    from ansible_collections.bakery.images.plugins.module_utils._docker import rootfs_identity
    from ansible_collections.bakery.images.plugins.module_utils._plan import rootfs_plan

    rootfs = rootfs_plan(definition["bake"]["base"], definition["bake"]["cache_dir"])["path"]
    return "bakery-rootfs:%s" % rootfs_identity(rootfs)[:12]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    # packages, venv and the installed collection first: not part of what is measured
    subprocess.run(["make", "-C", str(REPO), "apt-bake", "collection"], check=True, capture_output=True)
    if not shutil.which("packer"):
        subprocess.run(["apt-get", "install", "-y", "-q", "packer"], check=True, capture_output=True)
    version = subprocess.run(
        ["packer", "version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]

    default = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    work = Path(tempfile.mkdtemp(prefix="bakery-vs-packer-"))
    try:
        definition = {
            "bake": {
                "name": "vs-packer",
                "output_dir": str(work / "output"),
                "cache_dir": str(REPO / "output" / "cache"),
                "base": default["base"],
                "provisioners": [{"role": "bakery.images.example_web"}],
                "targets": [
                    {
                        "name": "docker",
                        "docker": {
                            "repository": REPOSITORY,
                            "tags": ["bakery"],
                            "changes": {"cmd": ["/usr/sbin/nginx"], "expose": ["80"]},
                        },
                    }
                ],
            }
        }
        bake_file = work / "bake.yml"
        bake_file.write_text(yaml.safe_dump(definition))
        bake = [str(BIN / "ansible-playbook"), "playbooks/bake.yml", "-e", "@%s" % bake_file]
        run(bake + ["-e", "bake_force=true"], REPO)  # warm-up: base rootfs and base image

        (work / "site.yml").write_text(
            "- hosts: all\n  gather_facts: true\n  roles:\n    - bakery.images.example_web\n"
        )
        template = {
            "builders": [
                {
                    "type": "docker",
                    "image": base_image(definition),
                    "pull": False,
                    "commit": True,
                    "changes": ['CMD ["/usr/sbin/nginx"]', "EXPOSE 80"],
                }
            ],
            "provisioners": [
                {
                    "type": "ansible",
                    "playbook_file": "site.yml",
                    "ansible_env_vars": [
                        "ANSIBLE_COLLECTIONS_PATH=%s" % (REPO / ".collections"),
                        "ANSIBLE_SSH_TRANSFER_METHOD=piped",
                    ],
                    "extra_arguments": [
                        "-e",
                        "ansible_python_interpreter=/usr/bin/python3",
                        "--ssh-extra-args",
                        SSH_ARGS,
                    ],
                }
            ],
            "post-processors": [{"type": "docker-tag", "repository": REPOSITORY, "tags": ["packer"]}],
        }
        (work / "template.json").write_text(json.dumps(template, indent=2))
        env = dict(os.environ, PATH="%s:%s" % (BIN, os.environ["PATH"]), CHECKPOINT_DISABLE="1")

        packer, forced, unchanged = [], [], []
        for _round in range(rounds):
            packer.append(run(["packer", "build", "-color=false", "template.json"], work, env))
            forced.append(run(bake + ["-e", "bake_force=true"], REPO))
            unchanged.append(run(bake, REPO))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for tag in ("packer", "bakery"):
            subprocess.run(["docker", "rmi", "%s:%s" % (REPOSITORY, tag)], capture_output=True, check=False)

    medians = {
        name: statistics.median(times) for name, times in (("p", packer), ("f", forced), ("u", unchanged))
    }
    full, noop = medians["f"] / medians["p"], medians["u"] / medians["p"]
    print(
        json.dumps(
            {
                "benchmark": "vs_packer",
                "packer_version": version,
                "rounds": rounds,
                "packer_s": round(medians["p"], 1),
                "bakery_forced_s": round(medians["f"], 1),
                "bakery_unchanged_s": round(medians["u"], 1),
                "ratio_full": round(full, 3),
                "goal_full": "<= 0.8",
                "met_full": full <= 0.8,
                "ratio_unchanged": round(noop, 3),
                "goal_unchanged": "<= 0.2",
                "met_unchanged": noop <= 0.2,
                # every round, in order: how far this machine's noise spreads the medians above
                "rounds_s": {
                    "packer": [round(seconds, 1) for seconds in packer],
                    "bakery_forced": [round(seconds, 1) for seconds in forced],
                    "bakery_unchanged": [round(seconds, 1) for seconds in unchanged],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
