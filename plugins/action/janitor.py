# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the janitor: relative paths mean what they mean to the bake.

The bake's plan resolves a relative ``output_dir`` against the directory ansible-playbook was started in,
while modules run in the playbook's directory; this passes the former on as ``cwd`` (unless given) and runs
the module.
"""

from __future__ import annotations

import os

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if not args.get("cwd"):
            args["cwd"] = os.getcwd()
        result.update(
            self._execute_module(
                module_name="bakery.images.janitor", module_args=args, task_vars=task_vars, wrap_async=False
            )
        )
        return result
