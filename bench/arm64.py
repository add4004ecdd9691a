"""The cost of emulation: the default role baked into an arm64 disk against the same bake for amd64 (informative).

The default bake's disk target (``provision: chroot``, qcow2, vagrant, role bakery.images.example_web) alone, once
for this host's amd64 and once with ``base.architecture: arm64``: its rootfs is built by mmdebstrap under qemu-user,
provisioned in an emulated chroot, and its disk gets GRUB arm64-efi (UEFI only). The base holds the disk's packages
(the qemu target's default system_packages for the architecture, and curl) and the target ``system_packages: []``,
the shape of the arm64 integration test (tests/integration/test_arm64.py), so the same rootfs serves both.

A rootfs missing from the cache (output/cache, shared with ``make bake``; ``BAKERY_BENCH_CACHE`` names another, such
as tests/output/cache/cloud to use the integration test's) is built first by a bake of its own, whose wall time is
printed as ``rootfs_s`` (the emulated mmdebstrap dominates it for arm64). Then each round times a forced bake
(``bake_force=true``: every provisioner runs, the per-step cache is bypassed, the disk is made again) of amd64 and
of arm64: the medians of N rounds (default 1) and their ratio, arm64 / amd64. Nothing boots. The disks are written
to a temporary directory and removed.

Run as root from the repository: .venv/bin/python bench/arm64.py [N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CACHE = Path(os.environ.get("BAKERY_BENCH_CACHE") or REPO / "output" / "cache").resolve()
sys.path.insert(0, str(REPO / ".collections" / "src"))
from rebake_last_step import run_definition  # noqa: E402

from ansible_collections.bakery.images.plugins.module_utils import _qemu_arch  # noqa: E402


def definition(architecture: str, output: Path) -> dict:
    default = yaml.safe_load((REPO / "playbooks" / "vars" / "default_bake.yml").read_text())["bake"]
    disk = next(target for target in default["targets"] if "qemu" in target)["qemu"]
    specs = yaml.safe_load((REPO / "roles" / "qemu" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]["bakery_target"]["options"]["options"]["options"]
    system = _qemu_arch.rootfs_packages(architecture, options["system_packages"]["default"], [])
    packages = [*default["base"]["packages"], *system, *disk.get("packages", [])]
    return {
        "bake": {
            "name": "arm64-bench-%s" % architecture,
            "output_dir": str(output),
            "cache_dir": str(CACHE),
            "base": dict(default["base"], architecture=architecture, packages=packages),
            "provisioners": default["provisioners"],
            "targets": [{"name": "disk", "qemu": dict(disk, system_packages=[], packages=[])}],
        }
    }


def rootfs_cached(architecture: str) -> bool:
    from ansible_collections.bakery.images.plugins.module_utils._plan import rootfs_plan

    base = definition(architecture, Path("/nonexistent"))["bake"]["base"]
    return os.path.exists(rootfs_plan(base, str(CACHE))["path"])


def bake(work: Path, architecture: str, *args: str) -> float:
    """The bake of *architecture*'s definition in *work*: its wall time; the benchmark stops when it fails."""
    seconds, _output = run_definition(
        work, definition(architecture, work / architecture), *args, what="bake %s" % architecture
    )
    return seconds


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    # packages (qemu-user-static, binfmt), venv and the installed collection first: not part of what is measured
    subprocess.run(["make", "-C", str(REPO), "apt-bake", "collection"], check=True, capture_output=True)
    subprocess.run([str(REPO / "scripts" / "binfmt"), "arm64"], check=True, capture_output=True)
    times: dict[str, list[float]] = {"amd64": [], "arm64": []}
    rootfs: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        work = Path(tmp)
        for arch in times:
            rootfs[arch] = None if rootfs_cached(arch) else round(bake(work, arch), 1)
        for _index in range(rounds):
            for arch in times:
                times[arch].append(bake(work, arch, "-e", "bake_force=true"))
    amd64, arm64 = statistics.median(times["amd64"]), statistics.median(times["arm64"])
    print(
        json.dumps(
            {
                "benchmark": "arm64",
                "target": "qemu (provision: chroot), role bakery.images.example_web",
                "rounds": rounds,
                "rootfs_s": rootfs,
                "amd64_s": round(amd64, 1),
                "arm64_s": round(arm64, 1),
                "ratio": round(arm64 / amd64, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
