# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Imports that a later task will need, made in Ansible's main process while a worker runs a long task.

Each task runs in a worker that Ansible's main process forks for it, with what the main process has imported
(see _workers). Most of the time the main process only waits for the worker. A task whose module imports heavy
libraries pays for them in its own worker: the SBOM module imports spdx-tools, beartype, cyclonedx-python-lib and
license-expression, and builds the SPDX license index, 0.3 s of every bake that writes an SBOM. :func:`start` runs
such imports in a thread of the main process, beside a long task that always runs before the SBOM is written (the
start of the build container, the keep of a chroot tree, the conversion of a builder VM's disk; the bake_progress
callback starts it when such a task starts on a host), so that the SBOM's worker, forked later, starts with them.

The callback learns of the long task just before Ansible forks its worker (``v2_runner_on_start``), so
:func:`start` only asks for the thread, which starts right after that fork, in the main process
(``os.register_at_fork``). A fork while the thread imports would leave the child with modules half made and import
locks that nobody will release, so every later fork waits for the thread first: a fork that comes before the
imports are done is only later, by what is left of them. One thread per process; a failed import is left to the
task that needs it, which reports why.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

_lock = threading.Lock()
# the work asked for, until the next fork starts it; then its thread
_pending: list[Callable[[], None]] = []
_thread: list[threading.Thread] = []


def wait() -> None:
    """Block until the imports are done (called before every fork of this process; nothing once they are)."""
    if _thread and _thread[0].is_alive() and _thread[0] is not threading.current_thread():
        _thread[0].join()


def _run(work: Callable[[], None]) -> None:
    try:
        work()
    except Exception:  # noqa: BLE001 - a head start only: the task that needs it imports it and reports
        pass


def _launch() -> None:
    """After a fork, in the parent: start the thread of the work asked for, if any."""
    with _lock:
        if not _pending:
            return
        work = _pending.pop()
        thread = threading.Thread(target=_run, args=(work,), name="bakery-warm", daemon=True)
        _thread.append(thread)
    thread.start()


def _forget() -> None:
    """After a fork, in the child (a worker): the work is the main process's, not the worker's own forks'."""
    _pending.clear()
    _thread.clear()


def start(work: Callable[[], None]) -> bool:
    """Run *work* (imports) in a thread of this process from right after its next fork, unless that was asked for
    already; True when this call asked for it."""
    with _lock:
        if _pending or _thread:
            return False
        _pending.append(work)
    os.register_at_fork(before=wait, after_in_parent=_launch, after_in_child=_forget)
    return True


def sbom_libraries() -> None:
    """What the SBOM module needs before it writes anything: the module, its libraries and the SPDX license
    index (``_sbom.licensing``)."""
    from ansible_collections.bakery.images.plugins.module_utils import _sbom
    from ansible_collections.bakery.images.plugins.plugin_utils._in_process import import_module

    import_module("sbom")
    _sbom.licensing()
