# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the bake playbook uses to record artifacts."""

from __future__ import annotations

import time

from ansible_collections.bakery.images.plugins.module_utils import _manifest


def docker_artifact(result, target, started=None):
    return _manifest.docker_artifact(result, target, started, time.time())


def gce_artifact(result, target, started=None):
    return _manifest.gce_artifact(result, target, started, time.time())


class FilterModule:
    def filters(self):
        return {
            "docker_artifact": docker_artifact,
            "gce_artifact": gce_artifact,
        }
