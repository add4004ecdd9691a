# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one of bakery's modules inside Ansible's worker process when it would run on the controller anyway.

A bake's target hosts are the controller itself (``ansible_connection: local``, ``ansible_python_interpreter`` the
playbook's Python): every docker, qemu, rootfs, SBOM or provenance step runs one of bakery's modules there. Run as
Ansible runs any module, each such step builds a module archive, writes it to a temporary directory, starts a new
Python that unpacks it and imports it, and reads back its JSON: about 0.3 s of the controller's time before the
module does anything (a ``command: true`` task on a local host took 0.30-0.35 s here). The worker process that
would start that Python is already a Python of the same interpreter with the collection importable: this calls
the module's own ``main()`` there, with a stand-in for ``AnsibleModule`` that validates the task's arguments
against the module's argument spec (Ansible's ``ArgumentSpecValidator``, the validator ``AnsibleModule`` uses),
hands the module its parameters and check mode, and turns ``exit_json``/``fail_json`` into the task's result with
the ``no_log`` values removed, as ``AnsibleModule`` does. The worker is forked for this one task and exits after
it, so the module's changes to the process (its working directory, signal handlers, imports) end with it.

Only where the result is the module's own: a local connection, the controller's Python as the interpreter, no
become, no async, no task environment (else Ansible runs the module as usual). ``BAKERY_IN_PROCESS=0`` in the
environment turns it off. Written here rather than taken from a library: no library runs an Ansible module in the
worker (Mitogen replaces Ansible's whole connection and executor layer, which a collection cannot ask of its users).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError
from ansible.plugins.action import ActionBase

PACKAGE = "ansible_collections.bakery.images.plugins.modules"
SWITCH = "BAKERY_IN_PROCESS"


class ModuleExit(BaseException):
    """Raised by the stand-in's exit_json/fail_json: a BaseException, so that a module's ``except Exception``
    (bakery's ``_module.run`` catches every error of the module's action) does not swallow its own exit."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("module exit")
        self.result = result


class StandInModule:
    """What bakery's modules use of ``AnsibleModule``: the validated ``params``, ``check_mode``, ``_diff``,
    ``no_log_values``, ``warn``, ``exit_json`` and ``fail_json``."""

    def __init__(
        self,
        args: Mapping[str, Any],
        name: str,
        check_mode: bool,
        diff: bool,
        argument_spec: dict[str, Any],
        supports_check_mode: bool = False,
        mutually_exclusive: Any = None,
        required_together: Any = None,
        required_one_of: Any = None,
        required_if: Any = None,
        required_by: Any = None,
        **_ignored: Any,
    ) -> None:
        self._name = name
        self.check_mode = check_mode
        self._diff = diff
        self.argument_spec = argument_spec
        self.supports_check_mode = supports_check_mode
        self.no_log_values: set[str] = set()
        self._warnings: list[str] = []
        self.params: dict[str, Any] = dict(args)
        validator = ArgumentSpecValidator(
            argument_spec, mutually_exclusive, required_together, required_one_of, required_if, required_by
        )
        validation = validator.validate(self.params)
        self.params.update(validation.validated_parameters)
        # the validator's record of the values of no_log options (AnsibleModule reads the same attribute)
        self.no_log_values.update(getattr(validation, "_no_log_values", set()))
        if validation.error_messages:
            msg = validation.errors.msg
            if isinstance(validation.errors[0], UnsupportedError):
                msg = "Unsupported parameters for (%s) module: %s" % (name, msg)
            self.fail_json(msg=msg)
        if check_mode and not supports_check_mode:
            self.exit_json(skipped=True, msg="remote module (%s) does not support check mode" % name)

    def warn(self, warning: str) -> None:
        self._warnings.append(str(warning))

    def _result(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("invocation", {"module_args": self.params})
        warnings = list(kwargs.pop("warnings", None) or []) + self._warnings
        if warnings:
            kwargs["warnings"] = warnings
        # as AnsibleModule: booleans and None survive the removal of no_log values
        preserved = {key: value for key, value in kwargs.items() if value is None or isinstance(value, bool)}
        kwargs = remove_values(kwargs, self.no_log_values)
        kwargs.update(preserved)
        return kwargs

    def exit_json(self, **kwargs: Any) -> None:
        raise ModuleExit(self._result(kwargs))

    def fail_json(self, msg: str, exception: Any = None, **kwargs: Any) -> None:
        kwargs.update(failed=True, msg=str(msg))
        if isinstance(exception, str) and exception:
            # what Ansible shows of a module's traceback at -vvv
            kwargs["module_stderr"] = exception
        raise ModuleExit(self._result(kwargs))


def _interpreter(action: Any, task_vars: Mapping[str, Any]) -> str | None:
    # a delegated task's module runs with the interpreter of the host it is delegated to (Ansible's
    # ActionBase._configure_module reads it from the delegated host's variables, as here)
    delegate_to = getattr(action._task, "delegate_to", None)
    if delegate_to:
        task_vars = (task_vars.get("ansible_delegated_vars") or {}).get(delegate_to) or {}
    value = task_vars.get("ansible_python_interpreter")
    if value is None:
        return None
    try:
        value = action._templar.template(value)
    except Exception:  # noqa: BLE001 - an interpreter that cannot be read is not the controller's
        return None
    return str(value)


def eligible(action: Any, task_vars: Mapping[str, Any]) -> bool:
    """Whether the task's module may run in this worker: see the module's docstring."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    if getattr(action._connection, "transport", None) != "local":
        return False
    if action._play_context.become or action._task.async_val:
        return False
    # the play's and the task's environment keywords (a list of mappings; empty ones when none is set)
    if any(entry for entry in action._task.environment or []):
        return False
    return _interpreter(action, task_vars) == sys.executable


def import_module(name: str) -> Any:
    """bakery's module *name* (its short name), imported into this process."""
    return importlib.import_module("%s.%s" % (PACKAGE, name))


def run_module(action: Any, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Run bakery's module *name* (its short name) with *args* in this process; its result."""
    module = import_module(name)
    check_mode = bool(action._play_context.check_mode)
    diff = bool(action._play_context.diff)

    def stand_in(**kwargs: Any) -> StandInModule:
        return StandInModule(args, name, check_mode, diff, **kwargs)

    module.AnsibleModule = stand_in
    basedir = action._loader.get_basedir()
    try:
        # where Ansible's local connection runs a module: the task's base directory
        if basedir:
            os.chdir(basedir)
        module.main()
    except ModuleExit as done:
        result = done.result
    except SystemExit as exc:
        result = {"failed": True, "msg": "module %s exited (%s) without a result" % (name, exc.code)}
    except Exception as exc:  # noqa: BLE001 - as a module's crash: a failed task, the traceback for -vvv
        result = {
            "failed": True,
            "msg": "module %s failed: %s: %s" % (name, type(exc).__name__, exc),
            "module_stderr": traceback.format_exc(),
        }
    else:
        result = {"failed": True, "msg": "module %s returned without exit_json or fail_json" % name}
    result.setdefault("changed", False)
    return result


def module_result(action: Any, task_vars: Mapping[str, Any]) -> dict[str, Any]:
    """The result of the task's module: run in this worker where :func:`eligible`, else as Ansible runs it."""
    if eligible(action, task_vars):
        name = action._task.resolved_action or action._task.action
        return run_module(action, str(name).rsplit(".", 1)[-1], action._task.args)
    return action._execute_module(task_vars=task_vars)


class InProcessAction(ActionBase):
    """The action of a bakery module that may run in the worker (:func:`module_result`)."""

    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        result.update(module_result(self, task_vars or {}))
        return result
