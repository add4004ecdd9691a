"""Write a Sphinx inventory (objects.inv) of the Ansible docsite labels that generated collection docs link to.

antsibull-docs pages refer to a few labels of the Ansible documentation (action plugins, common return
values, configuration settings, the environment variables of ansible-core's settings, and the pages of the
collections our plugins extend). Sphinx resolves them through intersphinx, which would fetch the Ansible
docsite's inventory; this writes that part of it instead, so the docs build offline and the links still
point at docs.ansible.com.

    python scripts/docs-inventory.py OUT.inv
"""

from __future__ import annotations

import sys
import zlib

# label: (page and anchor under https://docs.ansible.com/projects/ansible/devel/, title)
LABELS = {
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
    "common_return_values": (
        "reference_appendices/common_return_values.html#common-return-values",
        "Return Values",
    ),
    "ansible_configuration_settings": (
        "reference_appendices/config.html#ansible-configuration-settings",
        "Ansible Configuration Settings",
    ),
    "playbooks_filters": (
        "playbook_guide/playbooks_filters.html#playbooks-filters",
        "Using filters to manipulate data",
    ),
    "callback_plugins": ("plugins/callback.html#callback-plugins", "Callback plugins"),
    "playbooks_reuse_roles": ("playbook_guide/playbooks_reuse_roles.html#playbooks-reuse-roles", "Roles"),
    "check_mode_dry": (
        "playbook_guide/playbooks_checkmode.html#check-mode-dry",
        "Validating tasks: check mode and diff mode",
    ),
    "module_defaults": ("playbook_guide/playbooks_module_defaults.html#module-defaults", "Module defaults"),
    # bakery.images.docker_api extends this connection and links to it
    "ansible_collections.community.docker.docker_api_connection": (
        "collections/community/docker/docker_api_connection.html",
        "community.docker.docker_api connection",
    ),
}

# ansible-core settings whose environment variables options of our plugins share (option docs link them)
ENVVARS = ("ANSIBLE_REMOTE_USER", "ANSIBLE_TIMEOUT")


def main(path: str) -> None:
    body = "".join(
        "%s std:label -1 %s %s\n" % (label, uri, title) for label, (uri, title) in sorted(LABELS.items())
    ) + "".join(
        "%s std:envvar 1 reference_appendices/config.html#envvar-%s -\n" % (name, name) for name in ENVVARS
    )
    header = (
        "# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    with open(path, "wb") as handle:
        handle.write(header.encode() + zlib.compress(body.encode()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: %s OUT.inv" % sys.argv[0])
    main(sys.argv[1])
