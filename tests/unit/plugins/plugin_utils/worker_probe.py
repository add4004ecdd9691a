"""What a worker that Ansible forks has imported before it runs its task: a playbook whose last task is the
action ``loaded`` (``names``: module names), run with this checkout's collection; test_workers and test_warm
use it. The action also says how many objects the worker inherited frozen (``gc.freeze``), and what of
Ansible's templating (filters, tests, Jinja's lexer) it was forked with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]

# an action that reports which of the modules named its worker process has imported already
LOADED = """
import gc
import sys
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        return {
            "changed": False,
            "loaded": [name in sys.modules for name in self._task.args["names"]],
            "frozen": gc.get_freeze_count(),
            "templating": templating(),
        }


# how many ansible.builtin filters and tests the worker's loaders hold, and Jinja lexers its templates share
def templating():
    try:
        from ansible.plugins.loader import filter_loader, test_loader
        from ansible._internal._templating._jinja_bits import AnsibleEnvironment

        return [
            len(filter_loader._cached_non_collection_wrappers),
            len(test_loader._cached_non_collection_wrappers),
            len(AnsibleEnvironment._lexer_cache),
        ]
    except Exception as ex:
        return repr(ex)
"""


def worker_imports(tmp_path: Path, playbook: str, **env: str) -> list[bool]:
    """Run *playbook* in *tmp_path* (more environment variables in *env*); for each name its last task's
    ``loaded`` asked about, whether that task's worker had it imported."""
    return worker_result(tmp_path, playbook, **env)["loaded"]


def worker_result(tmp_path: Path, playbook: str, **env: str) -> dict:
    """Run *playbook* in *tmp_path* (more environment variables in *env*); the result of its last task."""
    (tmp_path / "action_plugins").mkdir(parents=True)
    (tmp_path / "action_plugins" / "loaded.py").write_text(LOADED)
    (tmp_path / "site.yml").write_text(playbook)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "site.yml"],
        cwd=tmp_path,
        env=dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
            ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
            ANSIBLE_LOCALHOST_WARNING="false",
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the JSON document first: an aggregate callback may print after it
    document = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{") :])[0]
    return document["plays"][-1]["tasks"][-1]["hosts"]["localhost"]
