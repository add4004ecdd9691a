# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the ``qemu_image`` module: on a bake's target host (the controller itself) it runs in Ansible's
worker process instead of a new Python (plugins/plugin_utils/_in_process.py); anywhere else as any module."""

from __future__ import annotations

from ansible_collections.bakery.images.plugins.plugin_utils._in_process import InProcessAction


class ActionModule(InProcessAction):
    pass
