# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the ``docker_image_build`` module: on a bake's target host (the controller itself) it runs in Ansible's
worker process instead of a new Python (plugins/plugin_utils/_in_process.py); anywhere else as any module."""

from __future__ import annotations

from ansible_collections.bakery.images.plugins.plugin_utils._in_process import InProcessAction
from ansible_collections.bakery.images.plugins.plugin_utils._workers import preload_connection, preload_module

# the connection of the build containers and verify containers this module starts, and the module itself, which a
# container bake runs 6-8 times (see _workers)
preload_connection("bakery.images.docker_api")
preload_module("docker_image_build")


class ActionModule(InProcessAction):
    pass
