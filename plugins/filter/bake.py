# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the bake playbook uses to record artifacts."""

from __future__ import annotations

import time

from ansible.errors import AnsibleFilterError

from ansible_collections.bakery.images.plugins.module_utils import _manifest, _plan, _provisioners
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


def docker_artifact(result, target, started=None):
    return _manifest.docker_artifact(result, target, started, time.time())


def gce_artifact(result, target, started=None):
    return _manifest.gce_artifact(result, target, started, time.time())


def openstack_artifact(result, target, started=None):
    return _manifest.openstack_artifact(result, target, started, time.time())


def digitalocean_artifact(result, target, started=None):
    return _manifest.digitalocean_artifact(result, target, started, time.time())


def ami_artifact(result, target, started=None):
    return _manifest.ami_artifact(result, target, started, time.time())


def qemu_artifact(result, target, started=None):
    return _manifest.qemu_artifact(result, target, started, time.time())


# _qemu_disk is imported by the filters of disk targets only: every bake loads this file, in its main process and
# in the workers of the tasks that use a filter of it, and a docker-only bake needs none of the disk code
def qemu_outputs(target):
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk

    return _qemu_disk.outputs_for(target)


def qemu_workdir(target):
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk

    return _qemu_disk.workdir_for(target)


def vagrant_artifact(result, target, started=None):
    return _manifest.vagrant_artifact(result, target, started, time.time())


def target_secrets(bake, target):
    """The real values of *target*'s secret options, from the bake definition (the plan masks them)."""
    try:
        return _plan.target_secrets(bake, target)
    except BakeryError as exc:
        raise AnsibleFilterError(exc.msg) from None


def provisioner_secrets(bake, target):
    """The real environments (or, for role and playbook entries, variables) of *target*'s secret (no_log)
    provisioners, error provisioners and checks (verify), by their place in the definition (``source``)."""
    return {
        entry["source"]: _provisioners.real_secrets(bake, entry, target.get("definition") or target["name"])
        for entry in (target.get("provisioners") or [])
        + (target.get("error_provisioners") or [])
        + (target.get("verify") or [])
        if entry.get("no_log")
    }


def failure_output(result, lines=20):
    """The message and last output lines of a failed task's result; of its failed item for a loop."""
    return _manifest.failure_output(result, lines)


def sbom_documents(target):
    return _manifest.sbom_documents(target)


def builder_access(builder):
    return _manifest.builder_access(builder)


def failed_targets(hosts):
    return _manifest.failed_targets(hosts)


class FilterModule:
    def filters(self):
        return {
            "builder_access": builder_access,
            "failed_targets": failed_targets,
            "docker_artifact": docker_artifact,
            "gce_artifact": gce_artifact,
            "openstack_artifact": openstack_artifact,
            "digitalocean_artifact": digitalocean_artifact,
            "ami_artifact": ami_artifact,
            "qemu_artifact": qemu_artifact,
            "qemu_outputs": qemu_outputs,
            "qemu_workdir": qemu_workdir,
            "vagrant_artifact": vagrant_artifact,
            "target_secrets": target_secrets,
            "provisioner_secrets": provisioner_secrets,
            "failure_output": failure_output,
            "sbom_documents": sbom_documents,
        }
