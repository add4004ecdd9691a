# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bake inside a module is a list of steps; each step may register an undo.

When a step fails, or the module is interrupted (SIGINT/SIGTERM), the undos registered so far run
in reverse order and the original error is raised again.  On success the undos are dropped
(what they would remove is the result) unless they were registered as ``always``: temporary
resources such as a build container go in every case.  This is the idea of Packer's multistep.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

# what bakery shows in place of a secret (the marker Ansible shows for a no_log module parameter); a module
# that gets it as a value was handed a masked copy instead of the secret
NO_LOG_MASK = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


class BakeryError(Exception):
    """An error the user can act on; its message is shown as the task's failure message."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class Interrupted(BakeryError):
    """The module received SIGINT or SIGTERM."""


class Steps:
    """Run named steps; undo what they did, in reverse, if a later one fails.

    Use as a context manager::

        with Steps() as steps:
            cid = steps.run("create container", create, undo=lambda cid: remove(cid), always=True)
            steps.run("commit", lambda: commit(cid))
    """

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], Any], bool]] = []
        self.done: list[str] = []
        self.undone: list[str] = []
        self.undo_errors: list[str] = []
        self._previous: dict[int, Any] = {}

    def run(
        self,
        name: str,
        action: Callable[[], Any],
        undo: Callable[[Any], Any] | None = None,
        always: bool = False,
    ) -> Any:
        """Run *action*; if it succeeds and *undo* is given, remember ``undo(result)``."""
        result = action()
        self.done.append(name)
        if undo is not None:
            self._undo.append((name, lambda: undo(result), always))
        return result

    def add_undo(self, name: str, undo: Callable[[], Any], always: bool = False) -> None:
        """Register an undo for something already done (e.g. a resource created by a callee)."""
        self._undo.append((name, undo, always))

    def rollback(self, only_always: bool = False) -> None:
        """Run the registered undos in reverse; errors are collected, never raised."""
        while self._undo:
            name, undo, always = self._undo.pop()
            if only_always and not always:
                continue
            try:
                undo()
                self.undone.append(name)
            except Exception as exc:  # noqa: BLE001 - every undo must get its chance
                self.undo_errors.append("%s: %s" % (name, exc))

    def _on_signal(self, signum: int, frame: Any) -> None:
        raise Interrupted("interrupted by signal %d" % signum)

    def __enter__(self) -> Steps:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                self.rollback(only_always=True)
            else:
                # ignore further signals while cleaning up
                for sig in self._previous:
                    signal.signal(sig, signal.SIG_IGN)
                self.rollback()
                if isinstance(exc, BakeryError) and self.undo_errors:
                    exc.msg = "%s (cleanup also failed: %s)" % (exc.msg, "; ".join(self.undo_errors))
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        return False
