# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A shell provisioner's commands in the builder, in one call: written, run one after the other, removed.

The commands (inline, or script files read on the controller) are written to a directory of their own in
the builder (mode 0700, files 0700, owned by the user the call runs as), each is run by the interpreter with
its path as last argument, as Ansible's ``command`` module would run it (same environment, working
directory and expansion of the arguments), and the directory is removed afterwards, also when a command
fails. Every command runs, also after one that failed (as a loop of ``command`` tasks did); each one's
result is in ``results``, in the order they ran.

Runs in the builder: the standard library only.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
from collections.abc import Mapping
from typing import Any, Callable

INLINE = "inline"
NON_ZERO = "non-zero return code"


def run_names(scripts: list[str]) -> list[str]:
    """The names the scripts get in the builder's directory, in the order they run: ``<index>-<basename>``."""
    return ["%d-%s" % (index, os.path.basename(path)) for index, path in enumerate(scripts)]


def read_scripts(scripts: list[str]) -> list[dict[str, str]]:
    """The controller's script files as ``{name, data}``: their bytes, base64 encoded, under their run names."""
    contents = []
    for name, path in zip(run_names(scripts), scripts):
        with open(path, "rb") as handle:
            contents.append({"name": name, "data": base64.b64encode(handle.read()).decode("ascii")})
    return contents


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).rstrip("\r\n")


def _clear(directory: str) -> None:
    """Nothing at *directory*: a directory left by an interrupted run is removed."""
    if os.path.isdir(directory) and not os.path.islink(directory):
        shutil.rmtree(directory)
    elif os.path.lexists(directory):
        os.unlink(directory)


def _write(directory: str, files: list[tuple[str, bytes]]) -> None:
    _clear(directory)
    os.mkdir(directory, 0o700)
    os.chmod(directory, 0o700)  # whatever the umask
    for name, data in files:
        descriptor = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        try:
            os.fchmod(descriptor, 0o700)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        finally:
            os.close(descriptor)


def run_scripts(
    directory: str,
    inline: str | None,
    contents: list[Mapping[str, str]],
    interpreter: list[str],
    valid_exit_codes: list[int],
    fail_on_exit_code: bool,
    run_command: Callable[[list[str]], tuple[int, Any, Any]],
    check_mode: bool = False,
) -> dict[str, Any]:
    """Write the commands to *directory*, run each with *interpreter*, remove the directory; the result.

    *inline* is the text of inline commands, else *contents* the scripts (``{name, data}``, data base64).
    Each run is an item of ``results`` with ``rc``, ``stdout``, ``stderr`` (and their lines), ``cmd``,
    ``bakery_run`` (its name), ``start``/``end``/``delta``, ``msg`` (``non-zero return code`` when rc is not
    0) and ``failed`` (with *fail_on_exit_code*: rc not in *valid_exit_codes*). The first item that fails stops
    the runs (as Packer's shell provisioner does) and fails the result; ``not_run`` names the commands it stopped;
    ``removed`` says that the directory is gone.
    """
    if inline is not None:
        files = [(INLINE, inline.encode("utf-8"))]
    else:
        files = [(str(item["name"]), base64.b64decode(item["data"])) for item in contents]
    for name, _data in files:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError("a script's name must be a file name, not %r" % name)
    runs = [name for name, _data in files]
    if check_mode:
        return {
            "changed": True,
            "results": [],
            "removed": True,
            "msg": "would write %s to %s and run %s" % (", ".join(runs), directory, " ".join(interpreter)),
        }
    results = []
    try:
        _write(directory, files)
        for name in runs:
            argv = list(interpreter) + [os.path.join(directory, name)]
            start = datetime.datetime.now()
            rc, stdout, stderr = run_command(argv)
            end = datetime.datetime.now()
            item = {
                "bakery_run": name,
                "cmd": argv,
                "rc": rc,
                "stdout": _text(stdout),
                "stderr": _text(stderr),
                "start": str(start),
                "end": str(end),
                "delta": str(end - start),
                "changed": True,
                "msg": NON_ZERO if rc != 0 else "",
                "failed": fail_on_exit_code and rc not in valid_exit_codes,
            }
            item["stdout_lines"] = item["stdout"].splitlines()
            item["stderr_lines"] = item["stderr"].splitlines()
            results.append(item)
            if item["failed"]:
                # as Packer's shell provisioner: a script that failed stops the ones after it (they may need
                # what it did not do)
                break
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    failed = [item for item in results if item["failed"]]
    not_run = runs[len(results) :]
    result: dict[str, Any] = {
        "changed": True,
        "results": results,
        "not_run": not_run,
        "removed": not os.path.lexists(directory),
        "failed": bool(failed),
        "msg": "ran %s" % ", ".join(runs),
    }
    if failed:
        result["msg"] = "%s exited with %s (valid: %s)%s" % (
            failed[-1]["bakery_run"],
            failed[-1]["rc"],
            ", ".join(str(code) for code in valid_exit_codes),
            "; not run: %s" % ", ".join(not_run) if not_run else "",
        )
    return result
