"""Integration tests of bakery.images.rootfs: real ansible-playbook runs, real mmdebstrap, one real build.

The build is the default bake's base (bookworm minbase + python3 + python3-apt, conftest.BAKE_BASE), at
the path the bake plan gives it in the session's cache_dir: the Docker tests and this file share it.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from conftest import BAKE_BASE, run_playbook

PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
"""

ROOTFS_TASK = """\
    - name: rootfs
      bakery.images.rootfs:
        path: "{{ rootfs_path }}"
        suite: bookworm
        mirror: "{{ rootfs_mirror }}"
        variant: minbase
        packages: "{{ rootfs_packages | default(default_packages) }}"
"""

# The play sets its own connection and interpreter, so it also runs with an explicit inventory; an explicit
# one also keeps ansible-playbook from reading the inventory configured in ansible.cfg.
INVENTORY = ["-i", "localhost,"]
BASE_VARS = {"rootfs_mirror": BAKE_BASE["mirror"], "default_packages": BAKE_BASE["packages"]}

# a stand-in that records being run: when it appears first on PATH, an up-to-date rootfs must not call it
TRIPWIRE = """\
#!/bin/sh
echo "$@" >> "$(dirname "$0")/called"
exit 1
"""


def _tripwire(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bindir = tmp_path / "tripwire"
    bindir.mkdir()
    script = bindir / "mmdebstrap"
    script.write_text(TRIPWIRE)
    script.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}, bindir / "called"


@pytest.fixture(scope="session")
def bookworm_rootfs(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bookworm minbase tarball with python3, built once and kept in cache_dir.

    Returns ``{"path": Path, "result": <the first rootfs task result>, "seconds": <wall time>}``.
    """
    from ansible_collections.bakery.images.plugins.module_utils._plan import rootfs_plan

    path = Path(rootfs_plan(BAKE_BASE, str(cache_dir))["path"])
    tmp = tmp_path_factory.mktemp("bookworm-rootfs")
    started = time.monotonic()
    run = run_playbook(
        PLAY + ROOTFS_TASK, tmp, extra_vars={**BASE_VARS, "rootfs_path": str(path)}, args=INVENTORY
    )
    seconds = time.monotonic() - started
    assert run.rc == 0, run.explain()
    return {"path": path, "result": run.task_result("rootfs"), "seconds": seconds}


def test_build(bookworm_rootfs: dict) -> None:
    result = bookworm_rootfs["result"]
    path: Path = bookworm_rootfs["path"]
    assert result["path"] == str(path)
    assert path.is_file()
    assert result["size"] == path.stat().st_size
    if result["changed"]:
        # built now: mmdebstrap ran with the options asked for
        assert result["command"][0].endswith("mmdebstrap")
        assert (
            "--variant=minbase" in result["command"] and "--include=python3,python3-apt" in result["command"]
        )
        assert result["msg"].startswith("built rootfs")
        # the package lists mmdebstrap fetched are kept beside it (for the builders made from it), not in it
        with tarfile.open(str(path) + ".apt-lists.tar") as lists:
            kept = lists.getnames()
        assert any(name.endswith("_dists_bookworm_InRelease") for name in kept), kept
        assert any(name.endswith("_Packages") for name in kept), kept
        assert "lock" not in kept and not [name for name in kept if "/" in name], kept
    else:
        # reused from the cache of an earlier session
        assert result["changed_inputs"] == []
    sidecar = json.loads(Path(str(path) + ".bakery.json").read_text())
    assert sidecar["fingerprint"] == result["fingerprint"]
    assert sidecar["inputs"] == result["inputs"]
    assert sidecar["sha256"] == result["sha256"]
    assert sidecar["size"] == result["size"]
    assert sidecar["suite"] == "bookworm"
    assert sidecar["builder"].startswith("mmdebstrap ")
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert "./usr/bin/python3" in names
    assert not [n for n in names if n.startswith("./var/lib/apt/lists/") and n.endswith("_Packages")]
    assert not [p.name for p in path.parent.iterdir() if ".partial" in p.name]


def test_second_run_is_unchanged_and_runs_no_mmdebstrap(bookworm_rootfs: dict, tmp_path: Path) -> None:
    path: Path = bookworm_rootfs["path"]
    mtime = path.stat().st_mtime_ns
    env, called = _tripwire(tmp_path)
    run = run_playbook(
        PLAY + ROOTFS_TASK,
        tmp_path,
        extra_vars={**BASE_VARS, "rootfs_path": str(path)},
        args=INVENTORY,
        env=env,
    )
    assert run.rc == 0, run.explain()
    result = run.task_result("rootfs")
    assert result["changed"] is False
    assert result["changed_inputs"] == []
    # how fast it is lives in bench/noop_rebake.py: a wall-clock bound here failed a CI run on a loaded host
    assert result["fingerprint"] == bookworm_rootfs["result"]["fingerprint"]
    assert not called.exists(), "mmdebstrap ran for an up-to-date rootfs"
    assert path.stat().st_mtime_ns == mtime


def test_check_mode_reports_changed_packages_and_creates_nothing(
    bookworm_rootfs: dict, tmp_path: Path
) -> None:
    path: Path = bookworm_rootfs["path"]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in path.parent.iterdir())
    env, called = _tripwire(tmp_path)
    run = run_playbook(
        PLAY + ROOTFS_TASK,
        tmp_path,
        extra_vars={**BASE_VARS, "rootfs_path": str(path), "rootfs_packages": ["python3", "curl"]},
        args=[*INVENTORY, "--check", "--diff"],
        env=env,
    )
    assert run.rc == 0, run.explain()
    result = run.task_result("rootfs")
    assert result["changed"] is True
    assert result["changed_inputs"] == ["packages"]
    assert result["msg"] == "would build rootfs: inputs changed: packages"
    assert result["diff"]["before"]["packages"] == sorted(BAKE_BASE["packages"])
    assert result["diff"]["after"]["packages"] == ["curl", "python3"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in path.parent.iterdir()) == before
    assert not called.exists()

    fresh = tmp_path / "fresh" / "rootfs.tar"
    run = run_playbook(
        PLAY + ROOTFS_TASK,
        tmp_path,
        extra_vars={**BASE_VARS, "rootfs_path": str(fresh)},
        args=[*INVENTORY, "--check"],
    )
    assert run.rc == 0, run.explain()
    assert run.task_result("rootfs")["changed"] is True
    assert not fresh.parent.exists()


FAILURES = """\
    - name: unknown suite
      bakery.images.rootfs:
        path: "{{ out }}/nosuchsuite.tar"
        suite: nosuchsuite
      ignore_errors: true

    - name: unreachable mirror
      bakery.images.rootfs:
        path: "{{ out }}/unreachable.tar"
        suite: bookworm
        mirror: http://127.0.0.1:9/debian
      ignore_errors: true
"""


def test_failures_are_clear_and_leave_no_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = run_playbook(PLAY + FAILURES, tmp_path, extra_vars={"out": str(out)}, args=INVENTORY)
    assert run.rc == 0, run.stdout[-4000:]  # both failures are ignored

    suite = run.task_result("unknown suite")
    assert suite["failed"] is True
    assert suite["msg"] == (
        "rootfs: suite 'nosuchsuite' not found on mirror http://deb.debian.org/debian (Release file missing)"
    ), suite
    assert any("nosuchsuite" in line for line in suite["stderr_lines"])
    assert len(suite["stderr_lines"]) <= 20

    mirror = run.task_result("unreachable mirror")
    assert mirror["failed"] is True
    # "connection refused" here; the reason is apt's, so only the start of the message is fixed
    assert mirror["msg"].startswith("rootfs: mirror http://127.0.0.1:9/debian unreachable: "), mirror
    assert mirror["stderr_lines"]

    # nothing remains, not even the lock files that serialise builds of one path
    assert sorted(p.name for p in out.iterdir()) == []
