#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vagrant_machine
short_description: Boot a Vagrant box with vagrant-libvirt for its checks, and remove everything of it again
version_added: 0.3.0
description:
  - O(action=up) writes a C(Vagrantfile) into O(project) that names the box O(box) (already added to
    O(vagrant_home)), disables the synced folder, names the libvirt domain O(domain_name) (vagrant-libvirt's
    C(default_prefix) followed by the machine C(default)), keeps libvirt's management network on destroy
    (C(management_network_keep)), uses the C(qemu) driver (TCG, no KVM needed) and ends with
    O(vagrantfile_lines). Names are written as single-quoted Ruby strings, never interpolated. It then runs
    C(vagrant up --provider=libvirt) and returns the SSH connection that C(vagrant ssh-config) describes
    (RV(builder), for C(ansible.builtin.add_host)).
  - A machine that does not come up within O(up_timeout) is destroyed, as with O(action=destroy), before the
    task fails with the end of vagrant's output.
  - O(action=destroy) runs C(vagrant destroy -f) in O(project), then removes with C(virsh) what libvirt still
    holds of the box, that is the domain O(domain_name) (also a shut-off one, with all its storage and UEFI variables),
    its disk, and the box image volumes that vagrant-libvirt uploaded into a storage pool for O(box)
    (C(<box>_vagrant_box_image_*)). Nothing else is touched (no network, no pool). Without a libvirt socket there
    is nothing to remove.
  - The role C(bakery.images.vagrant) uses it for a vagrant target with C(verify_up); the janitor removes the same
    libvirt resources of a bake that was killed.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - vagrant and vagrant-libvirt (Debian packages C(vagrant), C(vagrant-libvirt))
  - virsh (Debian package C(libvirt-clients)) and a running libvirtd
attributes:
  check_mode:
    support: full
    description: O(action=up) reports that it would boot the box and creates nothing. O(action=destroy) lists what
      it would remove and removes nothing.
  diff_mode:
    support: none
    description: Nothing to compare.
  idempotent:
    support: partial
    description: O(action=destroy) is idempotent (C(changed=false) when nothing is left). O(action=up) boots the
      machine, and reports a change, each time.
options:
  action:
    description: Boot the box (V(up)) or remove the machine and the box's libvirt volumes (V(destroy)).
    type: str
    choices: [up, destroy]
    default: up
  project:
    description: The Vagrant project directory (made if missing); the C(Vagrantfile) and C(.vagrant) go there.
    type: path
    required: true
  box:
    description: The name of the box in O(vagrant_home), as C(vagrant box add --name) added it.
    type: str
    required: true
  vagrant_home:
    description: Vagrant's home directory (C(VAGRANT_HOME)) that holds the box and Vagrant's insecure key.
    type: path
    required: true
  domain_name:
    description:
      - The libvirt domain of the machine; it must end with V(default), the name of Vagrant's machine, and hold
        only letters, digits, V(-), V(_) and V(.), for example V(bakery-20261204t040000-a1b2c3-box-default).
    type: str
    required: true
  vagrantfile_lines:
    description:
      - Lines added at the end of the C(Vagrantfile)'s C(Vagrant.configure) block; they can override what the
        module sets, for example C(config.vm.provider :libvirt do |l| l.memory = 2048 end).
    type: list
    elements: str
    default: []
  uri:
    description: The libvirt connection.
    type: str
    default: qemu:///system
  up_timeout:
    description: Seconds C(vagrant up) may take (a TCG boot is slow).
    type: int
    default: 900
  destroy_timeout:
    description: Seconds C(vagrant destroy) may take.
    type: int
    default: 300
  vagrant:
    description: The C(vagrant) program to use.
    type: str
    default: vagrant
notes:
  - The box must follow Vagrant's base box conventions (user C(vagrant) with Vagrant's insecure key, sshd, DHCP);
    C(config.ssh.insert_key) is false, so nothing is written into the guest.
seealso:
  - module: bakery.images.vagrant_box
  - module: bakery.images.janitor
  - name: vagrant-libvirt configuration
    description: default_prefix, driver, management_network_keep.
    link: https://vagrant-libvirt.github.io/vagrant-libvirt/configuration.html
"""

EXAMPLES = r"""
- name: Boot the box for its checks
  bakery.images.vagrant_machine:
    action: up
    project: /var/cache/bakery/qemu/20261204t040000-a1b2c3-box/machine
    box: bakery-20261204t040000-a1b2c3-box
    vagrant_home: /var/cache/bakery/qemu/20261204t040000-a1b2c3-box/vagrant.d
    domain_name: bakery-20261204t040000-a1b2c3-box-default
    vagrantfile_lines:
      - "config.vm.provider :libvirt do |libvirt| libvirt.memory = 2048 end"
  register: machine

- name: Reach it over SSH
  ansible.builtin.add_host:
    name: box-verify
    ansible_host: "{{ machine.builder.host }}"
    ansible_port: "{{ machine.builder.port }}"
    ansible_user: "{{ machine.builder.user }}"
    ansible_ssh_private_key_file: "{{ machine.builder.private_key }}"
    ansible_ssh_common_args: "{{ machine.builder.ssh_common_args }}"

- name: Remove it, and the box image vagrant-libvirt uploaded
  bakery.images.vagrant_machine:
    action: destroy
    project: /var/cache/bakery/qemu/20261204t040000-a1b2c3-box/machine
    box: bakery-20261204t040000-a1b2c3-box
    vagrant_home: /var/cache/bakery/qemu/20261204t040000-a1b2c3-box/vagrant.d
    domain_name: bakery-20261204t040000-a1b2c3-box-default
"""

RETURN = r"""
builder:
  description: How to reach the machine over SSH (O(action=up)); the key is a path, no secret.
  returned: success, O(action=up), not in check mode
  type: dict
  sample:
    connection: ssh
    host: 192.168.122.14
    port: 22
    user: vagrant
    private_key: /var/cache/bakery/qemu/20261204t040000-a1b2c3-box/vagrant.d/insecure_private_key
    ssh_common_args: -o LogLevel=FATAL -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no
ssh:
  description: C(vagrant ssh-config) as read (host, port, user, private_key, ssh_args).
  returned: success, O(action=up), not in check mode
  type: dict
vagrantfile:
  description: The project's C(Vagrantfile).
  returned: O(action=up)
  type: str
domain:
  description: O(domain_name).
  returned: always
  type: str
removed:
  description:
    - What O(action=destroy) removed (or would remove, in check mode), one entry per domain or volume, with
      C(kind) (C(domain), C(machine disk), C(box image)), C(name), C(state) (C(removed), C(would remove),
      C(failed)) and C(error).
  returned: O(action=destroy), and a failed O(action=up)
  type: list
  elements: dict
output_lines:
  description: The last lines of vagrant's output.
  returned: O(action=up)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _vagrant
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="up", choices=list(_vagrant.MACHINE_ACTIONS)),
            project=dict(type="path", required=True),
            box=dict(type="str", required=True),
            vagrant_home=dict(type="path", required=True),
            domain_name=dict(type="str", required=True),
            vagrantfile_lines=dict(type="list", elements="str", default=[]),
            uri=dict(type="str", default="qemu:///system"),
            up_timeout=dict(type="int", default=900),
            destroy_timeout=dict(type="int", default=300),
            vagrant=dict(type="str", default="vagrant"),
        ),
        supports_check_mode=True,
    )
    run(module, _vagrant.machine_action)


if __name__ == "__main__":
    main()
