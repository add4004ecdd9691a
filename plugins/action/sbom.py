# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the ``sbom`` module: documents that already record the artifact (its digest, inputs, ...)
are kept without running the module, which would read the artifact's package database again (a Docker image's
archives, a disk's file system: the slowest part of an unchanged bake's SBOM step). Anything else runs the module,
in Ansible's worker on a bake's target host (plugins/plugin_utils/_in_process.py).
"""

from __future__ import annotations

import os

from ansible.plugins.action import ActionBase

from ansible_collections.bakery.images.plugins.module_utils import _sbom_record
from ansible_collections.bakery.images.plugins.plugin_utils import _in_process

_READS = ("root", "image", "disk", "source_document", "installed")


def _path(value) -> str | None:
    # as the module's type=path does
    return os.path.expanduser(os.path.expandvars(str(value))) if value not in (None, "") else None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        # the documents are on the controller when the task runs there; one source to read, as the module wants
        local = self._connection.transport == "local"
        sources = [name for name in _READS if args.get(name) is not None]
        if local and not args.get("collect") and len(sources) == 1:
            paths = {"spdx": _path(args.get("spdx_path")), "cyclonedx": _path(args.get("cyclonedx_path"))}
            if all(paths.values()):
                found = _sbom_record.recorded(paths, _sbom_record.subject_key(args))
                if found is not None:
                    result.update(_sbom_record.unchanged_result(found))
                    return result
        result.update(_in_process.module_result(self, task_vars or {}))
        return result
