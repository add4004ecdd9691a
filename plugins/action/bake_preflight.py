# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the bake preflight: the plan play runs on the build host (localhost), so the checks run
here, in-process (a module would spend longer starting than the checks take); the logic is in
module_utils._preflight and, for cloud targets, module_utils._preflight_cloud. The task is not no_log (its problems
must show), so its result never holds a secret: the secret values it is given (``bake``'s secret options,
``credentials``) are only used for the calls and scrubbed from every message."""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.bakery.images.plugins.module_utils import _preflight
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("targets", "timeout", "bake", "credentials"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        bake = args.get("bake")
        credentials = args.get("credentials") or {}
        if bake is not None and not isinstance(bake, Mapping):
            raise AnsibleActionFail("bake must be the bake definition (a dictionary)")
        if not isinstance(credentials, Mapping):
            raise AnsibleActionFail("credentials must be a dictionary of the roles' credential variables")
        try:
            result.update(
                _preflight.run(
                    args.get("targets"),
                    args.get("timeout", _preflight.DEFAULT_TIMEOUT),
                    bake=bake,
                    variables={key: value for key, value in credentials.items() if value not in (None, "")},
                )
            )
        except BakeryError as exc:
            raise AnsibleActionFail(exc.msg) from None
        return result
