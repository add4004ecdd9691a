# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the bake playbook uses to record artifacts and report on them."""

from __future__ import annotations

import time

from ansible_collections.bakery.images.plugins.module_utils import _manifest


def docker_artifact(result, target, started=None):
    return _manifest.docker_artifact(result, target, started, time.time())


def bake_manifest(plan, results, previous=None):
    return _manifest.manifest(plan, results, previous)


def bake_summary(plan, results):
    return _manifest.summary(plan, results)


def bake_failures(plan, results):
    return _manifest.failures(plan, results)


class FilterModule:
    def filters(self):
        return {
            "docker_artifact": docker_artifact,
            "bake_manifest": bake_manifest,
            "bake_summary": bake_summary,
            "bake_failures": bake_failures,
        }
