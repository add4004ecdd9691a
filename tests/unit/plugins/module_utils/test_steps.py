"""The step runner undoes what was done, in reverse, when a later step fails."""

from __future__ import annotations

import os
import signal

import pytest

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Interrupted, Steps


def test_undos_run_in_reverse_on_failure():
    log = []
    with pytest.raises(BakeryError, match="boom"):
        with Steps() as steps:
            steps.run("one", lambda: log.append("do 1") or 1, undo=lambda r: log.append("undo %d" % r))
            steps.run("two", lambda: log.append("do 2") or 2, undo=lambda r: log.append("undo %d" % r))
            steps.run("three", lambda: (_fail for _fail in ()).throw(BakeryError("boom")))
    assert log == ["do 1", "do 2", "undo 2", "undo 1"]
    assert steps.undone == ["two", "one"]


def test_success_keeps_results_but_runs_always_undos():
    log = []
    with Steps() as steps:
        steps.run("make artifact", lambda: "a", undo=lambda r: log.append("remove artifact"))
        steps.add_undo("remove temp container", lambda: log.append("remove container"), always=True)
    assert log == ["remove container"]


def test_a_failing_undo_does_not_stop_the_others_and_is_reported():
    log = []

    def bad_undo(_result):
        raise RuntimeError("cannot remove")

    with pytest.raises(BakeryError) as info:
        with Steps() as steps:
            steps.run("one", lambda: 1, undo=lambda r: log.append("undo one"))
            steps.run("two", lambda: 2, undo=bad_undo)
            raise BakeryError("failed")
    assert log == ["undo one"]
    assert "cleanup also failed: two: cannot remove" in info.value.msg


def test_sigterm_runs_the_undos():
    log = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted):
        with Steps() as steps:
            steps.run("one", lambda: 1, undo=lambda r: log.append("undo one"))
            os.kill(os.getpid(), signal.SIGTERM)
    assert log == ["undo one"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_signal_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with Steps():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
