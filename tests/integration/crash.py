"""Kill a running ansible-playbook the hard way, at a chosen moment, as a cancelled CI job or a lost machine
would: the whole process tree at once with SIGKILL, so that no task of it gets to finish or clean up.

The moment is a line of the run's own output (a task banner), so the code under test has no test hook.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import REPO, ansible_env, run_playbook

JANITOR = REPO / "playbooks" / "janitor.yml"

# a provisioning role that holds the bake in its provisioning phase for hold_seconds (0: not at all)
HOLD_ROLE = """
- name: Hold the builder
  ansible.builtin.command: sleep {{ hold_seconds }}
  changed_when: false
"""


def write_role(tmp_path: Path, tasks: str = HOLD_ROLE, name: str = "hold") -> Path:
    """Role *name* with *tasks* under *tmp_path*/roles (the ANSIBLE_ROLES_PATH to give the run)."""
    role = tmp_path / "roles" / name / "tasks"
    role.mkdir(parents=True, exist_ok=True)
    (role / "main.yml").write_text(tasks)
    return tmp_path / "roles"


def run_janitor(
    cwd: Path, bake_file: Path | str, bake_id: str, *args: str, env: dict[str, str] | None = None
):
    """playbooks/janitor.yml for bake *bake_id*, with the bake definition's file; it must succeed."""
    run = run_playbook(
        JANITOR, cwd, args=["-e", "@%s" % bake_file, "-e", "janitor_bake_id=%s" % bake_id, *args], env=env
    )
    assert run.rc == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return run


def descendants(pid: int) -> set[int]:
    """Every process below *pid* (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_tree(pid: int) -> set[int]:
    """SIGKILL *pid* and everything below it at once: freeze the tree (SIGSTOP, until no new process
    appears), then kill every frozen process. Returns the pids killed."""
    frozen: set[int] = set()
    todo = {pid}
    for _round in range(20):
        for each in todo:
            try:
                os.kill(each, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        frozen |= todo
        todo = set().union(*(descendants(each) for each in frozen)) - frozen
        if not todo:
            break
    for each in frozen:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return frozen


class Run:
    """ansible-playbook started in the background; its output is read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        run_env = ansible_env(**(env or {}))
        run_env.pop("ANSIBLE_STDOUT_CALLBACK", None)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            ["ansible-playbook", *args],
            cwd=cwd,
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        self._drain()
        return "\n".join(self.lines)

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """Block until a line matching *pattern* (a regex) is printed; fail if the run ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if regex.search(line):
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    "the run ended before %r; %s\n%s"
                    % (pattern, self.failures(), "\n".join(self.lines[-60:]))
                )
            self.lines.append(line)
            if regex.search(line):
                return line
        raise AssertionError("no %r within %d s:\n%s" % (pattern, timeout, "\n".join(self.lines[-60:])))

    def failures(self) -> str:
        """Every failed or unreachable task in the output so far, on one line: the task's name and
        Ansible's message (its next lines joined), so that a run that ended early says why even where its failure
        scrolled out of the last lines shown (the end of a bake is its cleanup and report)."""
        found, task = [], ""
        for index, line in enumerate(self.lines):
            if line.startswith("TASK ["):
                task = line.split("]")[0][len("TASK [") :]
            elif re.match(r"(fatal|failed): \[", line) and ("FAILED!" in line or "UNREACHABLE!" in line):
                block = [line.strip()]
                for following in self.lines[index + 1 : index + 12]:
                    if not following.strip() or following.startswith(("TASK [", "PLAY ", "fatal: ", "ok: ")):
                        break
                    block.append(following.strip())
                found.append(("[%s] %s" % (task, " ".join(block)))[:600])
        return "what failed: " + (" || ".join(found) if found else "nothing reported failed or unreachable")

    def wait_until(self, condition, what: str, timeout: float) -> None:
        """Block until *condition()* is true (checked every 0.2 s); fail if the run ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            self._drain()
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                self._drain()
                raise AssertionError(
                    "the run ended before %s; %s\n%s" % (what, self.failures(), "\n".join(self.lines[-60:]))
                )
            if time.monotonic() > deadline:
                raise AssertionError("no %s within %d s:\n%s" % (what, timeout, "\n".join(self.lines[-60:])))
            time.sleep(0.2)

    def kill(self) -> set[int]:
        killed = kill_tree(self.proc.pid)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        self._drain()
        return killed

    def signal(self, signum: int, timeout: float) -> int:
        """Send *signum* to ansible-playbook itself (not its group) and wait for it to exit."""
        os.kill(self.proc.pid, signum)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()
        self._reader.join(timeout=10)
        self._drain()
        return rc
