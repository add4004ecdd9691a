# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the bake report: the manifest, the summary and the failures, in one quick step."""

from __future__ import annotations

import json
import os

from ansible import context
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.bakery.images.plugins.module_utils import _manifest
from ansible_collections.bakery.images.plugins.module_utils._files import atomic_output, write_json_atomic


def _read(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _var_files() -> list[str]:
    """The run's ``-e @file`` arguments, absolute, for the janitor command the report suggests."""
    files = []
    for extra in context.CLIARGS.get("extra_vars") or ():
        extra = str(extra)
        if extra.startswith("@"):
            files.append(os.path.abspath(os.path.expanduser(extra[1:])))
    return files


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("plan", "results"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        plan = self._task.args.get("plan")
        results = self._task.args.get("results") or []
        if not isinstance(plan, dict) or "manifest" not in plan:
            raise AnsibleActionFail("plan must be the plan returned by bakery.images.bake_plan")
        path = plan["manifest"]
        previous = _read(path)
        manifest = _manifest.manifest(plan, results, previous)
        # a bake whose only news is a disk that failed its hygiene checks records that too
        has_artifacts = bool(manifest["artifacts"] or manifest.get("hygiene_failures"))
        changed = has_artifacts and manifest != previous
        if changed and not self._task.check_mode:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json_atomic(path, manifest)
        # the checksums of the bake's files beside the manifest, written as the manifest is: when they changed
        sums_path = os.path.join(os.path.dirname(path), _manifest.SHA256SUMS)
        sums = _manifest.sha256sums(manifest, os.path.dirname(path))
        if sums and sums != _read_text(sums_path):
            changed = True
            if not self._task.check_mode:
                os.makedirs(os.path.dirname(sums_path), exist_ok=True)
                with atomic_output(sums_path) as tmp:
                    with open(tmp, "w", encoding="utf-8") as handle:
                        handle.write(sums)
        failures = [r for r in results if r.get("failure") and not r["failure"].get("cancelled")]
        cancelled = [r for r in results if r.get("failure") and r["failure"].get("cancelled")]
        result.update(
            changed=changed,
            manifest=path if has_artifacts else None,
            sha256sums=sums_path if sums else None,
            summary=_manifest.summary(plan, results),
            failed_targets=[r["target"] for r in failures],
            cancelled_targets=[r["target"] for r in cancelled],
            failures=_manifest.failures(plan, results, _var_files()) if failures or cancelled else "",
        )
        if self._task.diff and changed:
            result["diff"] = {
                "before": json.dumps(previous, indent=2, sort_keys=True) + "\n" if previous else "",
                "after": json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                "before_header": path,
                "after_header": path,
            }
        return result
