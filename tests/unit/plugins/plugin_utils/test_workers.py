from __future__ import annotations

import json
import sys
from pathlib import Path

from worker_probe import worker_imports

from ansible_collections.bakery.images.plugins.plugin_utils import _workers

CONNECTION = "ansible_collections.bakery.images.plugins.connection.docker_api"
MODULE = "ansible_collections.bakery.images.plugins.modules.docker_image_build"
DOCKER_UTILS = "ansible_collections.bakery.images.plugins.module_utils._docker"

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
        names: %s
      register: worker
"""


def workers_see(tmp_path: Path, first_play: bool, names: list[str]) -> list[bool]:
    playbook = PLAYBOOK % json.dumps(names)
    if not first_play:
        playbook = "\n- hosts" + playbook.split("\n- hosts")[2]
    return worker_imports(tmp_path, playbook)


def test_a_worker_forked_after_the_docker_action_was_imported_has_the_build_containers_connection(tmp_path):
    assert workers_see(tmp_path / "with", first_play=True, names=[CONNECTION]) == [True]
    # without the Docker module's action, a worker imports the connection itself
    assert workers_see(tmp_path / "without", first_play=False, names=[CONNECTION]) == [False]


def test_a_worker_forked_after_the_docker_action_was_imported_has_the_module_and_its_utilities(tmp_path):
    # the module runs in the worker (_in_process): its code and bakery's Docker code are there before it starts
    assert workers_see(tmp_path / "with", first_play=True, names=[MODULE, DOCKER_UTILS]) == [True, True]
    assert workers_see(tmp_path / "without", first_play=False, names=[MODULE, DOCKER_UTILS]) == [False, False]


def test_a_connection_or_module_that_cannot_be_loaded_is_left_to_the_task_that_needs_it():
    _workers.preload_connection("no_such.collection.nothing")
    _workers.preload_connection("")
    _workers.preload_module("no_such_module")
    _workers.preload_module("../nothing")
    assert "ansible_collections.bakery.images.plugins.modules.no_such_module" not in sys.modules
