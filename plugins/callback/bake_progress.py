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

import threading
import time

from ansible import constants as C
from ansible.plugins.callback import CallbackBase

REPORT_ACTIONS = frozenset(("bakery.images.bake_report", "bake_report"))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bakery.images.bake_progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        # host name -> [task uuid, task name, started, last line printed]; a host runs one task at a time
        self._running: dict[str, list] = {}
        self._summary: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._quiet = False
        self._interval = 30.0

    # ------------------------------------------------------------------ life cycle

    def v2_playbook_on_start(self, playbook):
        stdout = str(C.config.get_config_value("DEFAULT_STDOUT_CALLBACK") or "")
        self._quiet = stdout.endswith(("json", "jsonl"))
        self._interval = max(float(self.get_option("interval")), 0.1)
        if not self._quiet and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="bake_progress", daemon=True)
            self._thread.start()

    def v2_playbook_on_play_start(self, play):
        with self._lock:
            self._running.clear()

    def v2_playbook_on_stats(self, stats):
        self._stop.set()
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

    def _done(self, result):
        with self._lock:
            entry = self._running.get(result._host.get_name())
            if entry and entry[0] == result._task._uuid:
                del self._running[result._host.get_name()]

    def v2_runner_on_ok(self, result):
        self._done(result)
        if result._task.action in REPORT_ACTIONS and isinstance(result._result.get("summary"), list):
            self._summary = [str(line) for line in result._result["summary"]]

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result)

    def v2_runner_on_skipped(self, result):
        self._done(result)

    def v2_runner_on_unreachable(self, result):
        self._done(result)

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
