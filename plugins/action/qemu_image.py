# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the ``qemu_image`` module: on a bake's target host (the controller itself) it runs in Ansible's
worker process instead of a new Python (plugins/plugin_utils/_in_process.py); anywhere else as any module."""

from __future__ import annotations

from ansible_collections.bakery.images.plugins.plugin_utils._in_process import InProcessAction
from ansible_collections.bakery.images.plugins.plugin_utils._workers import preload_module

# a disk bake runs this module many times: each worker starts with it (see _workers)
preload_module("qemu_image")


class ActionModule(InProcessAction):
    pass
