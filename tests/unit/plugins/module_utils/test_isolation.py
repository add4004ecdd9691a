"""The isolated chroot builder's sandbox, run for real with bwrap on a tiny tree (dash and its libraries)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _isolation
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A tree with /bin/sh (the host's dash and the libraries it links) and the usual empty directories."""
    root = tmp_path_factory.mktemp("tree") / "root"
    dash = os.path.realpath("/bin/dash")
    libs = [line.split()[-2] if "=>" in line else line.split()[0] for line in _ldd(dash)]
    for path in [dash, *[lib for lib in libs if lib.startswith("/")]]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin" / "sh").exists():
        os.symlink(dash, root / "bin" / "sh")
    for name in ("proc", "sys", "dev", "tmp", "etc"):
        (root / name).mkdir(exist_ok=True)
    return root


def _ldd(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if "/" in line]


def enter(tree: Path, script: str) -> subprocess.CompletedProcess:
    path = _isolation.write_enter_script(str(tree.parent), str(tree), "baked")
    return subprocess.run(
        [path, str(tree), "/bin/sh", "-c", script], capture_output=True, text=True, check=False
    )


def test_the_command_is_pid_1_of_its_own_namespace_with_the_image_hostname(tree):
    proc = enter(tree, 'echo "$$"; read -r name < /proc/sys/kernel/hostname; echo "$name"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "baked"]


def test_every_command_gets_the_bakes_source_date_epoch(tree):
    path = _isolation.write_enter_script(
        str(tree.parent), str(tree), "baked", {"SOURCE_DATE_EPOCH": "1325732416"}
    )
    proc = subprocess.run(
        [path, str(tree), "/bin/sh", "-c", 'echo "$SOURCE_DATE_EPOCH"'],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, SOURCE_DATE_EPOCH="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1325732416"
    # without it, nothing is exported
    assert (
        "SOURCE_DATE_EPOCH"
        not in Path(_isolation.write_enter_script(str(tree.parent), str(tree), "baked")).read_text()
    )


def test_kernel_parameters_and_sysfs_are_read_only(tree):
    before = Path("/proc/sys/vm/swappiness").read_text()
    proc = enter(tree, "echo 13 > /proc/sys/vm/swappiness")
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    assert Path("/proc/sys/vm/swappiness").read_text() == before
    proc = enter(tree, "echo x > /sys/kernel/uevent_helper")
    assert proc.returncode != 0


def test_only_dockers_default_capabilities(tree):
    proc = enter(
        tree, 'while read -r key value; do [ "$key" != CapEff: ] || echo $value; done < /proc/self/status'
    )
    assert proc.returncode == 0, proc.stderr
    effective = int(proc.stdout.strip(), 16)
    # CAP_SYS_ADMIN 21, CAP_NET_ADMIN 12, CAP_SYS_MODULE 16, CAP_SYS_TIME 25, CAP_SYS_BOOT 22 are gone
    for bit in (21, 12, 16, 25, 22):
        assert not effective & (1 << bit), hex(effective)
    # CAP_CHOWN 0, CAP_SETUID 7 stay (package managers need them)
    assert effective & 1 and effective & (1 << 7)


def test_the_root_given_must_be_the_sandboxs(tree, tmp_path):
    path = _isolation.write_enter_script(str(tree.parent), str(tree), "baked")
    proc = subprocess.run(
        [path, str(tmp_path), "/bin/sh", "-c", "true"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 125
    assert "not %s" % tmp_path in proc.stderr


def test_a_tree_that_cannot_run_is_refused_when_written(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(BakeryError, match="does not start"):
        _isolation.write_enter_script(str(tmp_path), str(tmp_path / "root"), "baked")
