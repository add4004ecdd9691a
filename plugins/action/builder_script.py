# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of builder_script: the scripts (or the inline commands) go with the module's arguments.

The script files are read here, as bytes, and sent base64 encoded in ``script_contents`` with the module
(pipelined, that is one call to the builder), instead of a copy of each through the connection first.
"""

from __future__ import annotations

import base64

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.bakery.images.plugins.module_utils import _scripts


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        scripts = args.pop("scripts", None)
        inline = args.pop("inline", None)
        if scripts:
            if not isinstance(scripts, list):
                raise AnsibleActionFail("scripts must be a list of paths on the controller")
            paths = [self._find_needle("files", str(path)) for path in scripts]
            try:
                args["script_contents"] = _scripts.read_scripts(paths)
            except OSError as exc:
                raise AnsibleActionFail("cannot read a script: %s" % exc) from exc
        elif inline is not None:
            data = base64.b64encode(str(inline).encode("utf-8")).decode("ascii")
            args["script_contents"] = [{"name": _scripts.INLINE, "data": data}]
        result.update(
            self._execute_module(
                module_name="bakery.images.builder_script", module_args=args, task_vars=task_vars
            )
        )
        return result
