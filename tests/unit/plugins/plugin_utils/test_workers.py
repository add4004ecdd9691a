from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.bakery.images.plugins.plugin_utils import _workers

REPO = Path(__file__).resolve().parents[4]
CONNECTION = "ansible_collections.bakery.images.plugins.connection.docker_api"
MODULE = "ansible_collections.bakery.images.plugins.modules.docker_image_build"
DOCKER_UTILS = "ansible_collections.bakery.images.plugins.module_utils._docker"

# an action that reports whether its worker process has a module imported already
LOADED = """
import sys
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        return {"changed": False, "loaded": self._task.args["name"] in sys.modules}
"""

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    # never runs: the strategy imports its action plugin in the main process all the same
    - name: Import the action of the Docker module
      bakery.images.docker_image_build:
        action: find
        name: example
        tags: [latest]
      when: false
      register: docker_import

- hosts: localhost
  gather_facts: false
  tasks:
    - name: Look in a worker forked after it
      loaded:
        name: %s
      register: worker
"""


def workers_see(tmp_path: Path, first_play: bool, name: str = CONNECTION) -> bool:
    (tmp_path / "action_plugins").mkdir(parents=True)
    (tmp_path / "action_plugins" / "loaded.py").write_text(LOADED)
    playbook = PLAYBOOK % name
    if not first_play:
        playbook = "\n- hosts" + playbook.split("\n- hosts")[2]
    (tmp_path / "site.yml").write_text(playbook)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOCALHOST_WARNING="false",
    )
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "site.yml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    plays = json.loads(run.stdout)["plays"]
    return plays[-1]["tasks"][0]["hosts"]["localhost"]["loaded"]


def test_a_worker_forked_after_the_docker_action_was_imported_has_the_build_containers_connection(tmp_path):
    assert workers_see(tmp_path / "with", first_play=True) is True
    # without the Docker module's action, a worker imports the connection itself
    assert workers_see(tmp_path / "without", first_play=False) is False


def test_a_worker_forked_after_the_docker_action_was_imported_has_the_module_and_its_utilities(tmp_path):
    # the module runs in the worker (_in_process): its code and bakery's Docker code are there before it starts
    for name in (MODULE, DOCKER_UTILS):
        assert workers_see(tmp_path / ("with-" + name), first_play=True, name=name) is True
        assert workers_see(tmp_path / ("without-" + name), first_play=False, name=name) is False


def test_a_connection_or_module_that_cannot_be_loaded_is_left_to_the_task_that_needs_it():
    _workers.preload_connection("no_such.collection.nothing")
    _workers.preload_connection("")
    _workers.preload_module("no_such_module")
    _workers.preload_module("../nothing")
    assert "ansible_collections.bakery.images.plugins.modules.no_such_module" not in sys.modules
