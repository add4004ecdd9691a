"""Shared fixtures for integration tests: run real playbooks with the collection make installed."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".collections"
CACHE = REPO / "tests" / "output" / "cache"


@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    data: dict | None

    def task_results(self, task_name: str) -> list[dict]:
        """Every host's result of the task(s) named *task_name*."""
        found = []
        for play in (self.data or {}).get("plays", []):
            for task in play.get("tasks", []):
                if task["task"]["name"] == task_name:
                    found.extend(task["hosts"].values())
        return found

    def task_result(self, task_name: str) -> dict:
        results = self.task_results(task_name)
        assert results, "no result for task %r in:\n%s" % (task_name, self.stdout[-4000:])
        return results[0]

    @property
    def stats(self) -> dict:
        return (self.data or {}).get("stats", {})


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_playbook(
    playbook: str | Path,
    tmp_path: Path,
    extra_vars: dict | None = None,
    args: list[str] | None = None,
    json_output: bool = True,
    env: dict[str, str] | None = None,
    timeout: int = 1200,
) -> PlaybookResult:
    """Run ansible-playbook; *playbook* is a path or the text of a playbook."""
    if isinstance(playbook, str) and "\n" in playbook:
        path = tmp_path / "playbook.yml"
        path.write_text(textwrap.dedent(playbook))
        playbook = path
    cmd = ["ansible-playbook", str(playbook)]
    if extra_vars:
        vars_file = tmp_path / ("extra-vars-%d.json" % len(list(tmp_path.glob("extra-vars-*.json"))))
        vars_file.write_text(json.dumps(extra_vars))
        cmd += ["-e", "@%s" % vars_file]
    cmd += args or []
    run_env = ansible_env(**(env or {}))
    if json_output:
        run_env["ANSIBLE_STDOUT_CALLBACK"] = "json"
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=timeout)
    data = None
    if json_output:
        try:
            data = json.loads(proc.stdout[proc.stdout.index("{") :])
        except ValueError:
            data = None
    return PlaybookResult(proc.returncode, proc.stdout, proc.stderr, data)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Artifacts worth keeping between tests of one session (a base rootfs, say)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE
