# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Ansible's worker processes start with.

Ansible runs every task of every host in a worker process that its main process forks for that task. A worker
starts with what the main process has imported; what it imports itself is gone when it exits. The main process
imports a task's action plugin (the strategy reads its class), but not the connection plugin of the task's host:
each worker of a host imports that again. For a build container's connection (bakery.images.docker_api, over
community.docker's Docker API client) that is 0.1-0.3 s of every task the container's host runs, ``set_fact``
included (20 such tasks on a build container, loaded machine: 7.3-8.0 s against 4.7-5.3 s with the plugin
imported beforehand in the main process). An action plugin imported by the strategy calls :func:`preload_connection`
for the connection of the hosts it makes, so that every later worker starts with it.

The same holds for a module that runs in the worker (plugins/plugin_utils/_in_process.py): each worker imports
the module and its module utilities again. The action plugin of a module that a bake runs many times
(``docker_image_build``: 6-8 times per container bake; ``qemu_image``) calls :func:`preload_module`, so that
the main process imports it once (35-65 ms here) and every worker starts with it. Only the import: the worker
still calls the module's ``main()`` with its own stand-in for ``AnsibleModule``, and whatever that changes ends
with the worker.

Python's cyclic garbage collector looks at every object the main process holds each time it collects its oldest
generation, and again in the collections of the interpreter's exit. A container bake's main process holds about
120,000 objects once Ansible, its plugins, Jinja and bakery's libraries are in; such a bake spent 0.2 s in the
collector while it ran, and its exit, after the recap, took 0.3 s. :func:`freeze_heap` moves every object the
process holds at that moment out of the collector's sight (``gc.freeze``), as a server does before it forks its
workers: what a play starts with lives until the run ends. With it at each play's start and after the recap, the
same bake spent 0.12 s in the collector and its exit took 0.08 s. The workers forked later inherit the frozen
objects, so a collection in a worker no longer writes to (and so copies) the pages it shares with the main process.

Templating has the same kind of per-process set-up, which each worker did again for itself: the first filter or
test a worker's templates name makes Ansible's filter or test loader read every plugin file of ansible.builtin and
wrap each of their functions (``core``, ``mathstuff``, ``encryption``, ``urls``, ...), and the first template a
worker compiles builds Jinja's lexer (its regular expressions). A bake's main process did the filters only from
its sixteenth task or so on, and the tests and the lexer never, so nearly every worker of a bake, and every
skipped task among them (a condition such as ``x | default(0) | int > 0`` or ``y is skipped``), paid for them:
60 skipped tasks whose condition names a filter took 3.8-3.9 s on a local host, and 2.5-2.9 s with them made
before the first fork. :func:`warm_templating` makes them once in the main process at the playbook's start.
"""

from __future__ import annotations

import gc


def preload_connection(name: str) -> None:
    """Import the connection plugin *name* into Ansible's plugin loader of this process (the main process, when
    the strategy imports the caller), once; a plugin that cannot be loaded is left to the task that needs it."""
    try:
        from ansible.plugins.loader import connection_loader

        connection_loader.get(name, class_only=True)
    except Exception:  # noqa: BLE001 - only a head start: the worker that needs it loads it and reports
        pass


def preload_module(name: str) -> None:
    """Import bakery's module *name* (its short name) with what it imports into this process (the main process,
    when the strategy imports the caller), once; a module that cannot be imported is left to the task that runs
    it, which reports why."""
    try:
        from ansible_collections.bakery.images.plugins.plugin_utils._in_process import import_module

        import_module(name)
    except Exception:  # noqa: BLE001 - only a head start: the worker that needs it imports it and reports
        pass


def warm_templating() -> None:
    """Load the filters and tests of ansible.builtin into Ansible's filter and test loaders of this process (the
    main process, before its first fork), and build the Jinja lexer of Ansible's default template settings (its
    cache is shared by every template environment of the process), so that every worker forked later starts with
    them: the same loaders and the same lexer the worker would make, only made once. Anything that fails is left
    to the worker, which makes them itself and reports what is wrong."""
    try:
        from ansible.plugins.loader import filter_loader, test_loader
        from ansible.template import Templar, trust_as_template

        # the first lookup of a plugin reads and wraps the whole of ansible.builtin's plugins of that kind
        filter_loader.get("ansible.builtin.bool")
        test_loader.get("ansible.builtin.truthy")
        Templar().template(trust_as_template("{{ 0 }}"))
    except Exception:  # noqa: BLE001 - only a head start: each worker makes what is missing and reports
        pass


def freeze_heap() -> None:
    """Leave every object this process holds now out of the garbage collector's later passes (``gc.freeze``): the
    collector only looks at what is made from here on. Objects that are garbage at this moment, not collected yet,
    stay until the process ends."""
    gc.freeze()
