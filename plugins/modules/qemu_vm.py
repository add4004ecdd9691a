#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qemu_vm
short_description: Boot a disk image as a throw-away builder VM reachable by SSH on 127.0.0.1, and stop it
version_added: 0.1.0
description:
  - Packer's qemu builder without its SSH proxy. O(action=start) boots O(disk) with C(qemu-system-x86_64),
    forwards a free TCP port on 127.0.0.1 to the guest's port 22 (user-mode networking), lets a per-VM
    ed25519 key in, waits until an SSH login works and returns what C(ansible.builtin.add_host) needs
    (RV(builder), RV(ssh_common_args)). O(action=stop) shuts the VM down cleanly, with a timeout and a kill
    fallback, and removes its work directory.
  - By default the VM writes into a throw-away qcow2 overlay in its work directory, and O(disk) is left as
    it was. With O(overlay=false) the VM writes to O(disk) itself (to provision a disk in place).
  - The key pair is made by the module (C(id_ed25519), mode 0600, in the work directory), or by
    O(action=keygen) ahead of O(action=start), or given as O(private_key). It gets into the guest by a
    cloud-init NoCloud seed (O(cloud_init=true), a small vfat image labelled C(CIDATA) made with
    C(mkfs.vfat) and C(mcopy), no mount), by a systemd credential (O(credential=true), for images without
    cloud-init), or because the caller put RV(public_key) into the image's C(authorized_keys). No secret is returned, only the key's path.
  - The VM's work directory (by default C(<tmp>/bakery-vm-<bake_id>-<target>)) holds a state file
    (C(state.json) with bake id, target, pid, start time, port, user, key path), the serial console log
    (C(serial.log)), the QMP socket (C(qmp.sock)), C(qemu.log) (qemu's own messages), the overlay, the seed and
    the per-VM copy of the UEFI variables. O(action=stop) needs nothing but this directory. qemu's C(-name)
    is C(bakery-<bake_id>-<target>), so C(ps) shows which bake started it.
  - No qemu outlives the bake. qemu runs under a small detached supervisor (its process name is
    C(bakery-watchdog)) that watches the ansible-playbook process (found by walking up from the module's
    process, or O(watch_pid)); when that process ends in any way, also by SIGKILL, the supervisor stops
    qemu within a second or two and removes the work directory (unless O(keep_workdir=true)). The
    supervisor exits when qemu exits; qemu gets SIGTERM if the supervisor dies.
  - If the guest does not accept an SSH login within O(boot_timeout), or qemu exits, the task fails with
    the last lines of the serial console in its message and in RV(serial_tail); the VM is killed and the
    files made for it are removed. An interrupted task (SIGINT, SIGTERM) undoes the same way.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - qemu-system-x86_64 (Debian package C(qemu-system-x86)), C(qemu-img) for the overlay (C(qemu-utils))
  - ssh and ssh-keygen (C(openssh-client))
  - mkfs.vfat (C(dosfstools)) and mcopy (C(mtools)) for the cloud-init seed
  - OVMF (C(ovmf)) for O(firmware=uefi)
  - for O(architecture=arm64) qemu-system-aarch64 (C(qemu-system-arm)) and AAVMF (C(qemu-efi-aarch64))
  - Linux (C(/proc)); the module runs on the host where qemu runs, which must be the controller, since the
    guest is reachable on that host's 127.0.0.1 only
attributes:
  check_mode:
    support: full
    description: O(action=start) validates its options and reports that it would start the VM; nothing is made.
      O(action=stop) reports whether a VM is running or a work directory would be removed.
  diff_mode:
    support: none
    description: Nothing to compare; a VM is either running or not.
  idempotent:
    support: partial
    description: O(action=stop) and O(action=keygen) are idempotent (C(changed=false) when there is nothing
      to do). O(action=start) always starts a new VM, and fails when one is already running from the same
      work directory.
options:
  action:
    description:
      - C(start) boots the VM and waits for SSH; C(stop) shuts it down and removes its work directory;
        C(keygen) makes the key pair in the work directory ahead of C(start), for a caller that puts the public
        key into the image (C(start) with the same work directory logs in with it); C(keep) lets a running
        VM outlive the ansible-playbook that started it (its watchdog lets go; a failed bake with
        C(on_error=keep) does this), until C(stop) or the janitor stops it.
    type: str
    choices: [start, stop, keygen, keep]
    default: start
  disk:
    description:
      - The disk image to boot (qcow2 or raw); required for O(action=start).
    type: path
  disk_format:
    description:
      - Format of O(disk); C(auto) tells qcow2 by its header and takes anything else as raw.
    type: str
    choices: [auto, qcow2, raw]
    default: auto
  overlay:
    description:
      - Boot through a throw-away qcow2 overlay in the work directory (O(disk) is only read).
      - With V(false) the VM writes to O(disk) itself, as when a disk is provisioned in place; O(action=stop)
        shuts it down cleanly so that what was written is on the disk.
    type: bool
    default: true
  bake_id:
    description:
      - The bake this VM belongs to; part of the work directory's name, qemu's C(-name) and the state file.
      - Defaults to a new id (time and random) for O(action=start).
    type: str
  target:
    description:
      - The bake target this VM builds; part of the work directory's name and qemu's C(-name).
    type: str
    default: vm
  workdir:
    description:
      - The VM's work directory; created (mode 0700) if missing.
      - Defaults to C(<tmp>/bakery-vm-<bake_id>-<target>), where C(<tmp>) is C($TMPDIR) or C(/tmp).
      - O(action=stop) and O(action=keygen) need O(workdir) or both O(bake_id) and O(target).
    type: path
  architecture:
    description:
      - The guest's Debian architecture; it chooses the defaults of O(qemu_binary), O(machine), O(cpu),
        O(firmware), O(accelerator) and O(boot_timeout).
      - V(arm64) boots under C(qemu-system-aarch64 -machine virt -cpu max,pauth-impdef=on) with UEFI only
        (AAVMF, Debian's C(qemu-efi-aarch64); O(firmware=bios) is refused), under TCG on a host of another
        architecture, with a console on C(ttyAMA0) and O(boot_timeout) 900 s by default.
    type: str
    choices: [amd64, arm64]
    default: amd64
  accelerator:
    description:
      - The accelerators qemu tries, in order, separated by C(:) (C(kvm:tcg) means KVM if it can be used,
        else TCG, software emulation).
      - Defaults to C(kvm:tcg) for a guest of the host's architecture, else C(tcg).
    type: str
  memory:
    description: Guest memory in MiB.
    type: int
    default: 1024
  cpus:
    description: Number of virtual CPUs.
    type: int
    default: 2
  cpu:
    description:
      - qemu's C(-cpu) model. C(max) is the host's CPU under KVM; under TCG a plainer model such as C(qemu64)
        can boot faster.
      - Defaults to C(max) (C(max,pauth-impdef=on) for O(architecture=arm64)).
    type: str
  machine:
    description: qemu's C(-machine) type; C(q35) by default (C(virt) for O(architecture=arm64)).
    type: str
  firmware:
    description:
      - C(bios) boots with SeaBIOS, C(uefi) with OVMF (the code read-only, a copy of the variables file per VM).
      - Defaults to C(bios) (C(uefi), with AAVMF, for O(architecture=arm64)).
    type: str
    choices: [bios, uefi]
  uefi_code:
    description: The OVMF code file; defaults to the first found of Debian's C(OVMF_CODE_4M.fd) and C(OVMF_CODE.fd).
    type: path
  uefi_vars:
    description: The OVMF variables template copied for the VM; defaults to the one matching the code file.
    type: path
  kernel:
    description:
      - Boot this kernel directly (qemu C(-kernel)), for images without a boot loader.
    type: path
  initrd:
    description: The initramfs for O(kernel).
    type: path
  append:
    description:
      - The kernel command line for O(kernel), for example C(root=/dev/vda1 console=ttyS0).
      - Defaults to C(console=ttyS0).
    type: str
  user:
    description: The user to log in as; with cloud-init it is created with passwordless sudo unless it is C(root).
    type: str
    default: root
  python:
    description: The guest's Python, returned in RV(builder) for C(ansible_python_interpreter).
    type: str
    default: /usr/bin/python3
  cloud_init:
    description:
      - Attach a NoCloud seed that gives O(user) the public key (for images with cloud-init).
      - With V(false) the image must already accept the key, for example because the caller put
        RV(public_key) into its C(authorized_keys) (see O(action=keygen) and O(private_key)).
    type: bool
    default: true
  credential:
    description:
      - Give O(user) the public key through a systemd credential, for images without cloud-init (systemd 252
        or later in the guest, as in Debian 12). qemu passes it as an SMBIOS type 11 string
        (C(io.systemd.credential.binary:tmpfiles.extra=...)); at boot systemd-tmpfiles writes the key to
        C(~/.ssh/authorized_keys2), which sshd reads by default. The image's own C(authorized_keys) is neither
        needed nor changed.
      - The file is written into the disk the VM boots; use it with O(overlay=true) to leave the image as it was
        (the bake's verify does).
    type: bool
    default: false
  hostname:
    description: The guest's host name in the cloud-init seed; defaults to O(target).
    type: str
  private_key:
    description:
      - An existing private key to log in with, instead of the one the module makes.
      - Its public key is read with C(ssh-keygen -y) unless O(public_key) is given.
    type: path
  public_key:
    description: The public key of O(private_key) (one OpenSSH line).
    type: str
  boot_timeout:
    description:
      - Seconds from the start of qemu until an SSH login must work (TCP, banner, login running C(true)).
      - Defaults to 300 (900 for O(architecture=arm64), emulated).
    type: int
  wait_for_ssh:
    description:
      - Wait for the SSH login. With V(false) the task returns as soon as qemu runs.
    type: bool
    default: true
  watch_pid:
    description:
      - The process whose end must stop the VM.
      - Defaults to the ansible-playbook (or ansible) process above the module; when there is none (the
        module was not run by ansible-playbook on this host), give it.
    type: int
  keep_workdir:
    description:
      - Keep the work directory when the VM stops (O(action=stop)) or is abandoned (O(action=start)), for
        example to read its serial log.
    type: bool
    default: false
  shutdown_method:
    description:
      - How O(action=stop) asks the guest to power off. C(ssh) runs C(poweroff) over SSH (C(sudo -n poweroff)
        unless the user is root); C(acpi) presses the power button (QMP C(system_powerdown)), which needs a
        guest that handles it (systemd-logind or acpid); C(auto) tries C(ssh), then C(acpi); C(kill) skips to
        the signals.
      - A VM still running after O(shutdown_timeout) gets SIGTERM, then SIGKILL.
    type: str
    choices: [auto, ssh, acpi, kill]
    default: auto
  shutdown_timeout:
    description: Seconds O(action=stop) waits for the guest to power off before it signals qemu.
    type: int
    default: 60
  qemu_binary:
    description: The qemu system emulator to run; C(qemu-system-x86_64) by default (C(qemu-system-aarch64) for
      O(architecture=arm64)).
    type: str
  qemu_args:
    description: Extra arguments appended to qemu's command line.
    type: list
    elements: str
    default: []
notes:
  - Never give O(accelerator=kvm) on a host whose C(/dev/kvm) is not usable; C(tcg) always works, slowly.
  - Give the returned RV(ssh_common_args) to the builder host as C(ansible_ssh_common_args), since each VM has a new
    host key on a recycled port, which must be neither checked nor remembered.
seealso:
  - module: bakery.images.rootfs
"""

EXAMPLES = r"""
- name: Boot a cloud image (with cloud-init) as a builder
  bakery.images.qemu_vm:
    disk: /var/cache/images/debian-12-genericcloud-amd64.qcow2
    bake_id: "{{ bakery_bake_id }}"
    target: web
    user: debian
  register: builder_vm

- name: Provision it over SSH
  ansible.builtin.add_host:
    name: builder-web
    ansible_connection: ssh
    ansible_host: "{{ builder_vm.builder.host }}"
    ansible_port: "{{ builder_vm.builder.port }}"
    ansible_user: "{{ builder_vm.builder.user }}"
    ansible_ssh_private_key_file: "{{ builder_vm.builder.private_key }}"
    ansible_ssh_common_args: "{{ builder_vm.ssh_common_args }}"
    ansible_python_interpreter: "{{ builder_vm.builder.python }}"

- name: A disk without cloud-init or boot loader, written in place; the key goes into its root filesystem
  bakery.images.qemu_vm:
    action: keygen
    bake_id: "{{ bakery_bake_id }}"
    target: web
  register: vm_key
# ... put vm_key.public_key into /root/.ssh/authorized_keys of the rootfs, make the disk ...
- name: Boot it with its own kernel, under TCG
  bakery.images.qemu_vm:
    disk: /srv/bake/web.raw
    overlay: false
    cloud_init: false
    kernel: /srv/bake/tree/boot/vmlinuz
    initrd: /srv/bake/tree/boot/initrd.img
    append: root=/dev/vda rw console=ttyS0
    accelerator: tcg
    bake_id: "{{ bakery_bake_id }}"
    target: web
    boot_timeout: 600

- name: Stop it (also in the cleanup play, knowing only the work directory)
  bakery.images.qemu_vm:
    action: stop
    workdir: "{{ builder_vm.vm.workdir }}"
"""

RETURN = r"""
vm:
  description:
    - The running VM (O(action=start)); in check mode only C(workdir) and C(name).
  returned: action=start
  type: dict
  contains:
    name:
      description: qemu's C(-name), C(bakery-<bake_id>-<target>).
      type: str
    bake_id:
      description: The bake id.
      type: str
    target:
      description: The target name.
      type: str
    pid:
      description: qemu's process id.
      type: int
    host:
      description: Always C(127.0.0.1).
      type: str
    port:
      description: The port on 127.0.0.1 forwarded to the guest's SSH port.
      type: int
    user:
      description: The user to log in as.
      type: str
    private_key:
      description: Path of the private key file (mode 0600).
      type: str
    python:
      description: The guest's Python (O(python)).
      type: str
    workdir:
      description: The VM's work directory.
      type: str
    serial_log:
      description: Path of the serial console log.
      type: str
    qmp:
      description: Path of the QMP socket.
      type: str
    disk:
      description: The file qemu writes to (the overlay, or O(disk) with O(overlay=false)).
      type: str
    watch_pid:
      description: The process whose end stops the VM.
      type: int
  sample:
    name: bakery-20250101t120000-a1b2c3-web
    pid: 41234
    host: 127.0.0.1
    port: 40211
    user: root
    private_key: /tmp/bakery-vm-20250101t120000-a1b2c3-web/id_ed25519
    workdir: /tmp/bakery-vm-20250101t120000-a1b2c3-web
builder:
  description:
    - What C(add_host) needs for the builder (the bake's C(bakery_builder)).
  returned: action=start and not check mode
  type: dict
  sample:
    connection: ssh
    host: 127.0.0.1
    port: 40211
    user: root
    private_key: /tmp/bakery-vm-20250101t120000-a1b2c3-web/id_ed25519
    python: /usr/bin/python3
    ssh_common_args: -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes
ssh_common_args:
  description: ssh options for C(ansible_ssh_common_args) that neither check nor remember the guest's host key.
  returned: action=start and not check mode
  type: str
  sample: -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes
public_key:
  description: The public key the guest accepts (O(action=start), O(action=keygen)).
  returned: action=start or keygen
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... bakery-20250101t120000-a1b2c3-web
private_key:
  description: Path of the private key (O(action=keygen)).
  returned: action=keygen
  type: str
accelerator:
  description: The accelerator qemu uses (C(kvm) or the first other one in O(accelerator)).
  returned: action=start and not check mode
  type: str
  sample: tcg
command:
  description: qemu's command line (run in the work directory).
  returned: action=start and not check mode
  type: list
  elements: str
timings:
  description:
    - Seconds from the start of the task until qemu answered on QMP (C(qemu)), the guest's SSH server
      sent its banner (C(banner)), a login worked (C(login)), and the task ended (C(total)).
  returned: action=start and not check mode
  type: dict
  sample: {qemu: 0.4, banner: 21.7, login: 22.3, total: 22.3}
workdir:
  description: The work directory (O(action=stop), O(action=keygen), O(action=keep)).
  returned: action=stop, keygen or keep
  type: str
running:
  description: Whether the VM was running when O(action=stop) began.
  returned: action=stop
  type: bool
stopped_by:
  description:
    - What ended the VM, C(ssh) or C(acpi) (a clean power-off), C(sigterm) or C(sigkill); null when it was
      not running.
  returned: action=stop and not check mode
  type: str
  sample: ssh
clean:
  description: Whether the guest powered itself off (C(stopped_by) is C(ssh) or C(acpi)).
  returned: action=stop and not check mode
  type: bool
shutdown_requested:
  description: The power-off requests sent, in order (a failed one is marked C((failed))).
  returned: action=stop and not check mode
  type: list
  elements: str
workdir_removed:
  description: Whether the work directory was removed.
  returned: action=stop and not check mode
  type: bool
seconds:
  description: Seconds O(action=stop) took.
  returned: action=stop and not check mode
  type: float
msg:
  description: What was done.
  returned: always
  type: str
serial_tail:
  description: The last lines of the serial console when the guest did not come up.
  returned: failure
  type: list
  elements: str
qemu_log:
  description: The last lines of qemu's own output when it failed.
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _qemu_vm
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="start", choices=["start", "stop", "keygen", "keep"]),
            disk=dict(type="path"),
            disk_format=dict(type="str", default="auto", choices=list(_qemu_vm.DISK_FORMATS)),
            overlay=dict(type="bool", default=True),
            bake_id=dict(type="str"),
            target=dict(type="str", default="vm"),
            workdir=dict(type="path"),
            architecture=dict(type="str", default="amd64", choices=["amd64", "arm64"]),
            accelerator=dict(type="str"),
            memory=dict(type="int", default=1024),
            cpus=dict(type="int", default=2),
            cpu=dict(type="str"),
            machine=dict(type="str"),
            firmware=dict(type="str", choices=list(_qemu_vm.FIRMWARES)),
            uefi_code=dict(type="path"),
            uefi_vars=dict(type="path"),
            kernel=dict(type="path"),
            initrd=dict(type="path"),
            append=dict(type="str"),
            user=dict(type="str", default="root"),
            python=dict(type="str", default="/usr/bin/python3"),
            cloud_init=dict(type="bool", default=True),
            credential=dict(type="bool", default=False),
            hostname=dict(type="str"),
            private_key=dict(type="path", no_log=False),
            public_key=dict(type="str", no_log=False),
            boot_timeout=dict(type="int"),
            wait_for_ssh=dict(type="bool", default=True),
            watch_pid=dict(type="int"),
            keep_workdir=dict(type="bool", default=False),
            shutdown_method=dict(type="str", default="auto", choices=list(_qemu_vm.SHUTDOWN_METHODS)),
            shutdown_timeout=dict(type="int", default=60),
            qemu_binary=dict(type="str"),
            qemu_args=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    run(module, _qemu_vm.module_action)


if __name__ == "__main__":
    main()
