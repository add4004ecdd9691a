"""``_warm`` runs imports in a thread of Ansible's main process from the fork of a long task's worker on; every
later fork waits until they are done, so that no child starts with a module half imported. Each case runs in a
Python of its own: the fork handlers stay registered for the life of a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker_probe import REPO, worker_imports

SCRIPT = r"""
import json, os, sys, threading, time
from ansible_collections.bakery.images.plugins.plugin_utils import _warm

events = []

def work():
    events.append(("started", threading.current_thread().name))
    time.sleep(1.5)
    events.append(("done", time.monotonic()))

def fork(report):
    # a child that reports what it found, as a worker forked by Ansible would start with it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps(report()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as handle:
        data = json.loads(handle.read() or "null")
    os.waitpid(pid, 0)
    return data

out = {}
out["first"] = _warm.start(work)
out["second"] = _warm.start(work)
time.sleep(0.2)
out["before_fork"] = list(events)
# the long task's worker: forked before the thread starts, it never runs the work itself
out["worker"] = fork(lambda: {"pending": len(_warm._pending), "events": list(events)})
time.sleep(0.05)
out["after_fork"] = [event[0] for event in events]
# the next fork waits for the work; its child has everything the work did
out["asked_before_done"] = len(events) == 1
out["next_worker"] = fork(lambda: [event[0] for event in events])
out["forked_after_done"] = time.monotonic() >= events[1][1]
out["thread"] = events[0][1]
print(json.dumps(out))
"""

FAILING = r"""
import json, os, time
from ansible_collections.bakery.images.plugins.plugin_utils import _warm

def work():
    import no_such_module_anywhere  # noqa: F401

_warm.start(work)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
started = time.monotonic()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"waited": time.monotonic() - started, "alive": _warm._thread[0].is_alive()}))
"""


def run(script: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections" / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_work_starts_after_the_next_fork_and_the_fork_after_waits_for_it():
    out = run(SCRIPT)
    assert out["first"] is True and out["second"] is False
    # asked for, not started: the fork of the long task's worker starts it
    assert out["before_fork"] == []
    assert out["worker"] == {"pending": 0, "events": []}
    assert out["after_fork"] == ["started"]
    assert out["thread"] == "bakery-warm"
    # the next fork came while the work (1.5 s) still ran: it waited, and its child has all of it
    assert out["asked_before_done"] is True
    assert out["next_worker"] == ["started", "done"]
    assert out["forked_after_done"] is True


def test_a_failed_import_is_left_to_the_task_that_needs_it():
    out = run(FAILING)
    assert out["alive"] is False
    assert out["waited"] < 5


SBOM_LIBRARIES = ["spdx_tools.spdx.model", "cyclonedx.model.bom", "license_expression"]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Something long, marked as the bake's own roles mark theirs
      ansible.builtin.command: sleep 2
      changed_when: false
      vars:
        bakery_warm: %s

    - name: Look in a worker forked after it
      loaded:
        names: %s
      register: worker
"""


def worker_sees(tmp_path: Path, warm: str) -> list[bool]:
    return worker_imports(
        tmp_path,
        PLAYBOOK % (warm, json.dumps(SBOM_LIBRARIES)),
        ANSIBLE_CALLBACKS_ENABLED="bakery.images.bake_progress",
    )


def test_the_callback_has_a_marked_task_bring_the_sbom_libraries_to_the_workers_after_it(tmp_path):
    assert worker_sees(tmp_path / "sbom", "sbom") == [True, True, True]
    # unmarked (or marked with a name the callback does not know), the worker imports them itself
    assert worker_sees(tmp_path / "none", "nothing") == [False, False, False]
