# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress lines for long tasks and the bake summary after the recap."""

from __future__ import annotations

DOCUMENTATION = r"""
name: bake_progress
type: aggregate
short_description: Progress lines for long tasks, and the bake summary after the recap
version_added: 0.1.0
description:
  - >-
    While a task runs longer than O(interval) seconds on a host (a VM booting, an image upload, a cloud
    waiter, a long provisioning step), prints C(still waiting: <task> on <host>, 95 s) every O(interval)
    seconds instead of staying silent.
  - At the end of the run, after the play recap, prints the artifact summary of the bake again, as
    M(bakery.images.bake_report) returned it. Per target it gives the artifact id or path, its size, the
    build duration or that it was skipped because it was unchanged, and where the manifest is. The
    callback only shows that summary; it computes nothing.
  - On SIGINT or SIGTERM it stops the running tasks and removes the bake's temporary resources before the
    run exits (O(cleanup_on_signal)); Ansible alone would exit without running the cleanup play.
  - >-
    Keeps the compiled code of the collections' Python (plugins, module utilities) in a bytecode cache, as
    Python does for other code, so that a run does not compile the same unchanged files again (about 0.8 s of
    every bake). The cache is C(~/.cache/bakery/ansible-bytecode) (or under E(XDG_CACHE_HOME)), or the
    directory named by the E(BAKERY_BYTECODE_CACHE) environment variable; that variable set empty turns it
    off. A changed file is compiled again.
  - >-
    Keeps the payloads of modules that Ansible assembles for the hosts (AnsiballZ: the module and the module
    utilities it imports, zipped) from one run to the next, where Ansible keeps them for one run only: a module
    is assembled again only when its file, or a file among the module utilities it draws from, changed (about
    0.2-0.5 s per module a run uses). The cache is C(~/.cache/bakery/ansiballz), or the directory named by
    E(BAKERY_ANSIBALLZ_CACHE); that variable set empty turns it off.
  - >-
    While a long task of the bake's own roles runs (the start of a build container, the keep of a chroot tree,
    the conversion of a builder VM's disk), imports in Ansible's main process what the SBOM module needs
    (spdx-tools, cyclonedx-python-lib, license-expression, about 0.3 s), so that the SBOM task's worker, which
    Ansible forks from that process, starts with them. Every fork waits until that import is done.
  - >-
    Keeps what Ansible's main process holds when a play starts, and what the run made when it ends, out of
    Python's garbage collector (C(gc.freeze)): the collector no longer goes through the whole of Ansible, its
    plugins and the loaded libraries in each full collection and again at the exit (about 0.3 s of a bake), and
    the workers forked from that process inherit this.
  - >-
    Loads the filters and tests of C(ansible.builtin) and builds Jinja's lexer once in Ansible's main process
    at the playbook's start, so that the workers Ansible forks for the tasks start with them instead of each
    making them again (the first filter, test or template of every task took a few milliseconds more, skipped
    tasks included).
  - Works beside any stdout callback. It stays quiet when the stdout callback writes machine-readable
    output (a name ending in C(json) or C(jsonl)), which must not be mixed with other lines.
  - Enable it in C(ansible.cfg) with C(callbacks_enabled = bakery.images.bake_progress) (the
    repository's C(ansible.cfg) does), or with the C(ANSIBLE_CALLBACKS_ENABLED) environment variable.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - Enabled in C(callbacks_enabled).
options:
  interval:
    description:
      - Seconds a task runs on a host before the first progress line, and between two lines.
    type: float
    default: 30
    ini:
      - section: callback_bake_progress
        key: interval
    env:
      - name: BAKERY_PROGRESS_INTERVAL
  cleanup_on_signal:
    description:
      - When the run gets SIGINT (Ctrl-C) or SIGTERM (a CI job cancelled) after the bake was planned, stop
        the running tasks first, then remove every temporary resource of the bake before exiting. The
        removal is the janitor's (C(playbooks/janitor.yml) with the bake id and the run's C(-e)
        arguments), the same code as the bake's cleanup. A second signal during the removal stops it.
      - Not in check mode, and not with the bake's C(on_error) V(keep) or V(abort), which leave resources
        on purpose.
    type: bool
    default: true
    ini:
      - section: callback_bake_progress
        key: cleanup_on_signal
    env:
      - name: BAKERY_CLEANUP_ON_SIGNAL
  summary:
    description: Print the bake summary after the play recap.
    type: bool
    default: true
    ini:
      - section: callback_bake_progress
        key: summary
    env:
      - name: BAKERY_PROGRESS_SUMMARY
"""

import os
import signal
import subprocess
import sys
import threading
import time

from ansible import constants as C
from ansible import context
from ansible.plugins.callback import CallbackBase

from ansible_collections.bakery.images.plugins.plugin_utils import _ansiballz, _bytecode, _warm, _workers

# what a task marked with the variable bakery_warm has the main process import while it runs (see _warm)
WARMERS = {"sbom": _warm.sbom_libraries}
REPORT_ACTIONS = frozenset(("bakery.images.bake_report", "bake_report"))
PLAN_ACTIONS = frozenset(("bakery.images.bake_plan", "bake_plan"))
JANITOR_PLAYBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks", "janitor.yml"
)
# how long the tasks that run when the signal comes get to stop, and the janitor to finish
WORKERS_GRACE = 20.0
JANITOR_TIMEOUT = 900


def _children(pid: int) -> list[int]:
    """The live (not zombie) child processes of *pid*."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry))
    return found


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bakery.images.bake_progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # loaded in Ansible's main process before the first task: every collection module imported from here on,
        # here and in the workers, is compiled once and then read from the bytecode cache; the module payloads the
        # last runs assembled are where the workers look for them (kept again at the end: v2_playbook_on_stats)
        _bytecode.install()
        _ansiballz.restore()
        self._lock = threading.Lock()
        # host name -> [task uuid, task name, started, last line printed]; a host runs one task at a time
        self._running: dict[str, list] = {}
        self._summary: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._quiet = False
        self._interval = 30.0
        # the planned bake (id, on_error) that a signal must clean up after; None before the plan
        self._bake: dict | None = None
        self._previous_handlers: dict[int, object] = {}
        self._cleaning = False

    # ------------------------------------------------------------------ life cycle

    def v2_playbook_on_start(self, playbook):
        # before the first fork: the workers start with ansible.builtin's filters and tests loaded and the Jinja
        # lexer built, rather than each making them again (_workers.warm_templating)
        _workers.warm_templating()
        stdout = str(C.config.get_config_value("DEFAULT_STDOUT_CALLBACK") or "")
        self._quiet = stdout.endswith(("json", "jsonl"))
        self._interval = max(float(self.get_option("interval")), 0.1)
        if not self._quiet and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="bake_progress", daemon=True)
            self._thread.start()
        if self.get_option("cleanup_on_signal") and not self._previous_handlers:
            # Ansible's own handlers (which pass the signal to the workers and exit) run after ours
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def v2_playbook_on_play_start(self, play):
        with self._lock:
            self._running.clear()
        # what the run holds now lives until it ends: the collector, here and in the workers forked from here, looks
        # only at what is made from now on (_workers.freeze_heap)
        _workers.freeze_heap()

    def v2_playbook_on_stats(self, stats):
        self._stop.set()
        _ansiballz.keep()
        # nothing the run made is needed beyond its end: the interpreter's exit does not look at it all again
        _workers.freeze_heap()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._quiet or not self._summary or not self.get_option("summary"):
            return
        self._display.banner("BAKE SUMMARY")
        for line in self._summary:
            self._display.display(line)
        self._display.display("")

    # ------------------------------------------------------------------ tasks

    def v2_runner_on_start(self, host, task):
        with self._lock:
            now = time.monotonic()
            self._running[host.get_name()] = [task._uuid, task.get_name(), now, now]
        # a long task of the bake's own roles (marked bakery_warm) whose worker is forked now: the main process imports
        # what a later task's module needs meanwhile, once (_warm; every fork waits until it is done)
        warmer = WARMERS.get(str((getattr(task, "vars", None) or {}).get("bakery_warm") or ""))
        if warmer is not None:
            _warm.start(warmer)

    def _done(self, result):
        with self._lock:
            entry = self._running.get(result._host.get_name())
            if entry and entry[0] == result._task._uuid:
                del self._running[result._host.get_name()]

    def v2_runner_on_ok(self, result):
        self._done(result)
        plan = result._result.get("plan")
        if result._task.action in PLAN_ACTIONS and isinstance(plan, dict) and plan.get("bake_id"):
            self._bake = {
                "bake_id": str(plan["bake_id"]),
                "on_error": plan.get("on_error") or "cleanup",
                "check_mode": bool(result._task.check_mode),
            }
        if result._task.action in REPORT_ACTIONS and isinstance(result._result.get("summary"), list):
            self._summary = [str(line) for line in result._result["summary"]]

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result)

    def v2_runner_on_skipped(self, result):
        self._done(result)

    def v2_runner_on_unreachable(self, result):
        self._done(result)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum, frame):
        """Stop the running tasks, remove the bake's temporary resources, then let Ansible exit."""
        previous = self._previous_handlers.get(signum)
        bake = self._bake
        if not self._cleaning and bake and not bake["check_mode"] and bake["on_error"] == "cleanup":
            self._cleaning = True
            # a second signal during the cleanup ends it at once
            for other, handler in self._previous_handlers.items():
                signal.signal(other, handler)
            try:
                self._stop_workers(signum)
                self._run_janitor(signal.Signals(signum).name, bake["bake_id"])
            except Exception as exc:  # never hide the signal behind an error of ours
                self._display.warning("bakery: the cleanup after %s failed: %s" % (signum, exc))
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _stop_workers(self, signum: int) -> None:
        """Pass the signal to the task workers (each stops its module's process group) and wait for them."""
        workers = _children(os.getpid())
        for pid in workers:
            try:
                os.kill(pid, signum)
            except OSError:
                pass
        deadline = time.monotonic() + WORKERS_GRACE
        while time.monotonic() < deadline:
            if not set(workers) & set(_children(os.getpid())):
                return
            time.sleep(0.2)
        for pid in set(workers) & set(_children(os.getpid())):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _run_janitor(self, signame: str, bake_id: str) -> None:
        self._display.display(
            "bakery: %s: the running tasks were stopped; removing the temporary resources of bake %s"
            % (signame, bake_id),
            stderr=True,
        )
        argv = [sys.executable, sys.argv[0], JANITOR_PLAYBOOK]
        for extra in context.CLIARGS.get("extra_vars") or ():
            argv += ["-e", extra]
        argv += ["-e", "janitor_bake_id=%s" % bake_id]
        env = dict(os.environ, BAKERY_CLEANUP_ON_SIGNAL="false")
        # its output comes through our display (a child writing to our stdout directly failed to start)
        proc = subprocess.run(
            argv,
            env=env,
            timeout=JANITOR_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        for text in (proc.stdout, proc.stderr if proc.returncode else ""):
            if text.strip():
                self._display.display(text.rstrip(), stderr=True)
        if proc.returncode == 0:
            self._display.display("bakery: temporary resources of bake %s removed" % bake_id, stderr=True)
        else:
            self._display.warning(
                "bakery: the janitor did not finish (exit status %d); run it again: "
                "ansible-playbook bakery.images.janitor -e janitor_bake_id=%s" % (proc.returncode, bake_id)
            )

    # ------------------------------------------------------------------ the watcher

    def _watch(self):
        tick = min(1.0, self._interval / 4)
        while not self._stop.wait(tick):
            try:
                self._report(time.monotonic())
            except Exception as exc:  # never let the watcher break a run; say why it stopped
                self._display.warning("bake_progress: no more progress lines: %s" % exc)
                return

    def _report(self, now: float) -> None:
        lines = []
        with self._lock:
            for host, entry in sorted(self._running.items()):
                _uuid, task, started, last = entry
                if now - last >= self._interval:
                    entry[3] = now
                    lines.append("still waiting: %s on %s, %d s" % (task, host, round(now - started)))
        for line in lines:
            self._display.display(line, color=C.COLOR_VERBOSE)
