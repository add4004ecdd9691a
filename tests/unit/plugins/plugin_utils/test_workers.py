from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from worker_probe import REPO, worker_imports, worker_result

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


ONE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Make something after the play started
      ansible.builtin.set_fact:
        numbers: "{{ range(200) | map('string') | list }}"
    - name: Look in a worker
      loaded:
        names: []
"""

# at the interpreter's exit (atexit runs before its last collections): how many objects the collector would look at
EXIT_REPORT = """
import atexit, gc, os

def _report():
    with open(os.environ["EXIT_REPORT"], "w") as handle:
        handle.write(str(len(gc.get_objects())))

atexit.register(_report)
"""


def test_with_bake_progress_workers_start_with_the_heap_of_the_play_start_frozen_and_the_exit_collects_little(
    tmp_path,
):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(EXIT_REPORT)
    seen = {}
    # without: another aggregate callback, which leaves the collector alone
    for name, callbacks in (("with", "bakery.images.bake_progress"), ("without", "ansible.posix.timer")):
        report = tmp_path / ("%s.exit" % name)
        result = worker_result(
            tmp_path / name,
            ONE_PLAY,
            ANSIBLE_CALLBACKS_ENABLED=callbacks,
            PYTHONPATH=str(tmp_path / "site"),
            EXIT_REPORT=str(report),
        )
        seen[name] = (result["frozen"], int(report.read_text()))
    # what the main process held when the play started (Ansible, its plugins, the playbook) is frozen in the worker
    assert seen["with"][0] > 20000, seen
    assert seen["without"][0] == 0, seen
    # and the end of the run froze what the run made: the exit's collections have next to nothing to look at
    assert seen["with"][1] < 300 < 20000 < seen["without"][1], seen


def test_freeze_heap_leaves_what_exists_to_the_end_of_the_process_and_collects_what_is_made_later():
    code = textwrap.dedent(
        """
        import gc
        from ansible_collections.bakery.images.plugins.plugin_utils import _workers

        class Node:
            pass

        def cycle():
            node = Node()
            node.self = node
            return node

        gc.collect()
        cycle()  # garbage before the freeze: the collector no longer looks at it
        _workers.freeze_heap()
        frozen = gc.get_freeze_count()
        before = gc.collect()
        cycle()
        after = gc.collect()
        print(frozen > 0, before, after > 0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(REPO / ".collections")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.split() == ["True", "0", "True"], done.stdout + done.stderr


NOTHING_TEMPLATED = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Look in a worker before any template
      loaded:
        names: []
"""


def test_with_bake_progress_workers_start_with_the_builtin_filters_and_tests_loaded_and_the_lexer_built(
    tmp_path,
):
    seen = {}
    # without: another aggregate callback; then each worker loads them itself at its first filter, test or template
    for name, callbacks in (("with", "bakery.images.bake_progress"), ("without", "ansible.posix.timer")):
        seen[name] = worker_result(tmp_path / name, NOTHING_TEMPLATED, ANSIBLE_CALLBACKS_ENABLED=callbacks)[
            "templating"
        ]
    filters, tests, lexers = seen["with"]
    assert filters > 50 and tests > 20 and lexers >= 1, seen
    assert seen["without"] == [0, 0, 0], seen


def test_warm_templating_leaves_a_failure_to_the_workers(monkeypatch):
    from ansible.plugins import loader

    def broken(*_args, **_kwargs):
        raise RuntimeError("no plugins here")

    monkeypatch.setattr(loader.filter_loader, "get", broken)
    _workers.warm_templating()  # says nothing: each worker loads the filters itself and reports
