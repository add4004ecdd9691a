#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qemu_image
short_description: Make bootable QEMU disk images (qcow2, raw, vmdk, vdi, vhdx) from a rootfs or a disk image
version_added: 0.2.0
description:
  - With O(rootfs) (a tarball, or a directory such as a provisioned chroot), makes a GPT disk that boots with
    BIOS (GRUB for i386-pc made by C(grub-mkimage); its core image goes into a BIOS boot partition and its boot
    sector into the protective MBR, the writes C(grub-bios-setup) makes) and with UEFI (GRUB for
    x86_64-efi as C(\EFI\BOOT\BOOTX64.EFI) on an EFI system partition). The root file system is ext4, made
    with C(mkfs.ext4 -d) at its offset inside the disk file; the partition table is written by C(sfdisk) on the
    file and the ESP by C(mkfs.vfat --offset) and C(mtools). No loop device and no mount are used.
  - The tree is made into a machine image before it goes into the disk. C(/etc/fstab) mounts the root by
    UUID; C(/boot/grub/grub.cfg) boots C(/vmlinuz) (or the newest C(/boot/vmlinuz-*)) with the console on
    C(ttyS0); SSH host keys are removed and new ed25519 and ECDSA keys made at first boot (sshd is set to use
    these two; an RSA key takes minutes in an emulated guest); C(/etc/machine-id) is emptied; with
    O(dhcp), systemd-networkd does DHCP on every Ethernet NIC; with O(vagrant), the image follows Vagrant's
    base-box conventions. The tree must hold a kernel and an initramfs (for example C(linux-image-cloud-amd64)).
  - With O(architecture=arm64) the disk boots with UEFI only (on C(qemu-system-aarch64 -machine virt)). GRUB
    for arm64-efi, made by the host's C(grub-mkimage) from the modules of the tree's own C(grub-efi-arm64-bin)
    (Debian ships it for arm64 only; the tree must hold it), is C(\EFI\BOOT\BOOTAA64.EFI); the root partition
    has the arm64 root type, the console is C(ttyAMA0), and the BIOS boot partition stays empty.
  - A directory O(rootfs) is changed in place by this preparation. A directory made by O(action=unpack) gets
    back its own C(resolv.conf) and loses the C(policy-rc.d) it had while provisioned.
  - With O(image) (an existing qcow2 or raw disk image, checked against O(image_checksum)), the outputs are
    copies of it grown to O(disk_size), or with O(backing=true) qcow2 overlays whose backing file is O(image).
  - Every output is written under a temporary name beside its path and renamed into place, with a sidecar
    C(<path>.bakery.json) holding the fingerprint, sha256, size and format. The fingerprint covers O(inputs)
    (or, without them, the content of O(rootfs) or O(image)) and the disk options. When every output's sidecar
    carries it, nothing is done (C(changed=false)).
  - O(action=unpack) unpacks a rootfs tarball into O(workdir)C(/root) for chroot provisioning; O(workdir) is
    marked temporary (C(.bakery-temporary) holds O(bake_id)). O(action=remove) removes such a work directory.
  - "The per-step cache (O(step_cache)): O(action=unpack) starts the tree from the deepest sealed entry whose chain
    key it has (O(step_keys)) instead of O(rootfs) and says from which step (RV(step_cache.resume)), also in check
    mode; O(action=step_save) keeps the tree after provisioner O(step) as C(<step_cache.dir>/rootfs-steps/<key>.tar.zst)
    (zstd, numeric owners, xattrs, ACLs, hard links; synced, sealed by C(<key>.tar.zst.seal) with its size and
    sha256, then renamed into place), or, when the tree stood on the sealed entry of the step before, as a layer
    C(<key>.layer.tar.zst) of what the provisioner changed (its seal adds what it removed and its parent's key and
    sha256); O(action=unpack) applies the layers of a chain over its whole entry, only when every entry is sound.
    Then it evicts the least recently used entries beyond O(step_cache.max_size) (and the layers over them);
    O(action=prune_steps) removes unsealed entries and layers over a broken parent, and empties the cache down to
    O(step_cache.max_size)."
  - "The per-step cache of a builder VM (qemu C(provision: vm)), a qcow2 overlay chain: O(action=vm_resume) boots
    nothing but looks up the deepest step whose layer chain in C(<step_cache.dir>/vm-steps) is sound (every layer
    sealed, with the sha256 its seal records, standing on the layer of the step before with the content recorded
    when it was written) and makes C(<workdir>/disk.qcow2) a fresh overlay over it; it says from which step and
    why (RV(step_cache)), also in check mode, which makes nothing. O(action=vm_step_save) flushes and freezes the
    running builder VM's file system (its builder key O(public_key) taken out of the guest's C(authorized_keys)
    files for that moment), takes an external snapshot through QMP so that the disk becomes a read-only layer and
    the VM goes on in a new overlay (C(<workdir>/disk-<step>.qcow2); C(<workdir>/top.qcow2) links to the chain's
    top; no file the VM has open is renamed), thaws the guest, and keeps the layer as C(vm-steps/<key>.qcow2) (copied,
    its backing file named relatively, synced, sealed with its key, position, size, sha256 and its parent's key
    and sha256, then renamed into place); O(action=prune_steps) prunes these layers too (also those whose parent
    went)."
  - O(action=unpack) also writes O(workdir)C(/enter), the C(chroot_exe) for community.general.chroot, which runs
    each command in the tree under bubblewrap, in mount, PID, UTS and IPC namespaces of its own, with a fresh
    C(/proc), read-only C(/proc/sys) and C(/sys), a small C(/dev), Docker's default capabilities and the
    hostname O(hostname) (else the tree's), so that no role reaches the build host's kernel parameters,
    mounts, processes, network configuration, hostname, clock or modules.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - root on the build host (the tree's owners are kept)
  - bubblewrap (Debian C(bubblewrap)) for O(action=unpack)
  - qemu-img (Debian C(qemu-utils)); from a rootfs also C(fdisk), C(e2fsprogs), C(dosfstools), C(mtools),
    C(grub-common), C(grub-pc-bin) and C(grub-efi-amd64-bin)
  - the build host is x86_64 (amd64); the rootfs is amd64, or arm64 with O(architecture=arm64)
attributes:
  check_mode:
    support: full
    description: Reports whether the disk would be built and which inputs changed; creates nothing.
  diff_mode:
    support: none
    description: No diff; RV(changed_inputs) names what changed.
  idempotent:
    support: full
    description: Same inputs give the same fingerprint; outputs whose sidecars carry it are not rebuilt.
options:
  action:
    description:
      - V(build) makes the outputs unless they are up to date; V(find) only looks them up.
      - V(unpack) and V(remove) make and remove a chroot work directory (O(workdir)).
      - V(step_save) keeps the tree of O(workdir) in the per-step cache; V(prune_steps) empties that cache.
      - V(vm_resume) and V(vm_step_save) start a builder VM's disk from, and keep its steps in, the per-step cache.
    type: str
    default: build
    choices: [build, find, unpack, remove, step_save, prune_steps, vm_resume, vm_step_save]
  outputs:
    description: The disk files to make; the first is the primary output.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: File name; its ending (C(.qcow2), C(.raw), C(.img), C(.vmdk), C(.vdi), C(.vhdx)) gives the format.
        type: path
        required: true
      format:
        description: Output format, when the ending does not say it. C(vmdk) is streamOptimized.
        type: str
        choices: [qcow2, raw, vmdk, vdi, vhdx]
      compress:
        description: Compress the clusters of a qcow2 output.
        type: bool
        default: false
  rootfs:
    description:
      - Root file system to make the disk from (a tarball, or a directory changed in place), or with
        O(action=unpack) the tarball to unpack. Mutually exclusive with O(image).
    type: path
  apt_lists:
    description:
      - Seed a builder's tree with the package lists kept beside the O(rootfs) tarball (C(<rootfs>.apt-lists.tar),
        written by M(bakery.images.rootfs)); with O(action=unpack) the tree unpacked from the tarball (not one
        unpacked from a cached step), with O(action=build) the tree of a builder VM's disk. The files go into
        C(/var/lib/apt/lists) with their times, so that the refresh before the first provisioner fetches only what
        changed on the mirror since; a tarball without them (built by an older bakery) is used as it is.
      - No input of the fingerprint. Not for a disk that is an image's (the lists would be in it).
    type: bool
    default: false
  image:
    description: Existing qcow2 or raw disk image to make the outputs from.
    type: path
  image_checksum:
    description: sha256 of O(image) (64 hex digits, optionally after C(sha256:)); the build fails on a mismatch.
    type: str
  image_format:
    description: Expected format of O(image); detected by C(qemu-img info) when not given.
    type: str
    choices: [qcow2, raw]
  backing:
    description: With O(image), make qcow2 overlays backed by O(image) (absolute path) instead of copies.
    type: bool
    default: false
  reassemble:
    description:
      - With O(image), a disk made by this module from a rootfs that booted since (the disk of a C(provision=vm)
        builder, powered off), make the disk again from the tree of its root file system, as a disk is made from
        O(rootfs) (the same layout, times clamped to O(source_date_epoch), identifiers from the fingerprint, the
        varying files of provisioning removed), so that the same inputs give byte-identical outputs.
      - The tree is copied out with C(debugfs), without a mount or a loop device, with its owners, modes, times,
        symbolic and hard links, device nodes, extended attributes (file capabilities) and ACLs. C(/etc/fstab)
        and C(/boot/grub/grub.cfg) name the new root file system's UUID instead of the old one.
      - The tree's own files are not prepared again (no O(dhcp), O(hostname), O(vagrant) or O(authorized_keys)).
    type: bool
    default: false
  disk_size:
    description: Virtual size of the disk, such as V(4G) or V(512M) (binary units), rounded up to MiB.
    type: str
    default: 4G
  architecture:
    description:
      - Debian architecture of O(rootfs), which the disk boots on (the bake plan gives the target's). V(arm64) disks
        boot with UEFI only and need C(grub-efi-arm64-bin) in the tree. An input of the fingerprint (but for
        V(amd64), the default).
    type: str
    choices: [amd64, arm64]
    default: amd64
  kernel_cmdline:
    description: Kernel arguments added after C(root=UUID=... ro console=tty0 console=ttyS0,115200n8) (C(ttyAMA0)
      on arm64).
    type: str
    default: ""
  dhcp:
    description: Configure DHCP on every Ethernet NIC (C(en*), C(eth*)) with systemd-networkd and enable it.
    type: bool
    default: true
  hostname:
    description: Write this name to C(/etc/hostname).
    type: str
  vagrant:
    description:
      - Follow Vagrant's base-box conventions; user C(vagrant) (password C(vagrant)) with passwordless sudo
        and Vagrant's insecure public key in C(~vagrant/.ssh/authorized_keys). The tree needs C(sudo) and
        C(openssh-server).
    type: bool
    default: false
  vagrant_key:
    description: Public key for O(vagrant); by default the C(keys/vagrant.pub) of Debian's C(vagrant) package.
    type: path
  inputs:
    description:
      - Digests that identify the content of O(rootfs) (such as the bake's provisioning roles and base), as the
        bake plan computes them. Without them, the content of O(rootfs) or O(image) is digested.
    type: dict
    default: {}
  fingerprint:
    description:
      - Record this fingerprint instead of computing one, for a disk converted from a builder VM (O(image))
        that a lookup made from O(rootfs) with O(action=find) looked for.
    type: str
  authorized_keys:
    description:
      - Public keys written to C(/root/.ssh/authorized_keys) in the tree, for example a builder VM's per-bake key
        (remove them before the image is published).
    type: list
    elements: str
    default: []
  force:
    description: Build even when up to date.
    type: bool
    default: false
  bake_id:
    description: Id of the bake, recorded in the sidecars and the work directories.
    type: str
  source_date_epoch:
    description:
      - The time (seconds since 1970, UTC) every time in a disk made from O(rootfs) is set to (access, change
        and creation times; modification times later than it are clamped to it), and the time of the file
        systems themselves; with O(action=unpack) also exported as E(SOURCE_DATE_EPOCH) to every command run in the
        chroot builder. The bake plan gives C(bakery_target.source_date_epoch). Without it, a time that follows
        from the disk's fingerprint. Not an input of the fingerprint by itself (the plan adds it to O(inputs) when
        the user chose it).
    type: int
  workdir:
    description: The chroot work directory for O(action=unpack) and O(action=remove); the target's work directory
      (its C(disk.qcow2), the overlays of kept steps over it, its builder VM's C(vm)) for O(action=vm_resume) and
      O(action=vm_step_save).
    type: path
  public_key:
    description: With O(action=vm_step_save), the builder VM's public key, which the kept layer does not hold.
    type: str
  step_keys:
    description:
      - The builder's per-step cache keys from the bake plan, of the state after the start (key 0) and after each
        provisioner (key 1 to n), for O(action=unpack) and O(action=step_save).
    type: list
    elements: str
    default: []
  step:
    description: With O(action=step_save), the position (1 to n) of the provisioner whose state to keep.
    type: int
  target:
    description: The bake target the tree is provisioned for, recorded in a step's seal.
    type: str
  step_cache:
    description: The per-step cache settings of the bake plan.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Whether O(action=unpack) reads and O(action=step_save) writes the cache. O(force=true) bypasses it.
        type: bool
        default: false
      max_size:
        description: The most the entries may take, in bytes (their files); least recently used go first.
        type: int
        default: 0
      dir:
        description: The bake's cache directory; the entries are in its C(rootfs-steps) directory.
        type: path
      max_resume:
        description: The last provisioner a tree may start after (those after it act outside the builder).
        type: int
  timeout:
    description: Seconds each long command (unpacking, mkfs, conversion) may take.
    type: int
    default: 1800
  hygiene:
    description:
      - Check the prepared tree of a O(rootfs) disk with the image hygiene checks (see M(bakery.images.image_hygiene))
        before the disk is made. A failing check fails the build with every finding of every check, before any
        output or sidecar is written; the results are returned as RV(hygiene) and recorded in the sidecars, so
        a disk found later reports the results of its build.
      - O(hygiene.skip) and O(hygiene.var_log_max) are inputs of the fingerprint (tighter checks check the disk again).
      - With O(image), O(hygiene.results) records the results of checks made elsewhere (in a builder VM).
      - Not given, nothing is checked (a builder VM's own disk).
    type: dict
    suboptions:
      skip:
        description: Names of checks not to run.
        type: list
        elements: str
        choices: [ssh_host_keys, machine_id, builder_key, shell_history, apt_lists, provisioning_leftovers,
                  core_dumps, var_log_size, world_writable]
        default: []
      var_log_max:
        description: The most C(/var/log) may hold (allocated bytes), such as V(64M) (binary units).
        type: str
        default: 64M
      package_lists:
        description: V(keep) when the bake keeps the package lists; C(apt_lists) is then not applicable.
        type: str
        choices: [refresh, keep]
        default: refresh
      results:
        description: The RV(bakery.images.image_hygiene#module:hygiene) results of checks made elsewhere, to record.
        type: list
        elements: dict
notes:
  - GRUB finds the root file system by UUID; the UUIDs follow from the fingerprint, so a rebuild with the same
    inputs gives the same identifiers.
seealso:
  - module: bakery.images.rootfs
"""

EXAMPLES = r"""
- name: A bootable qcow2 and vmdk from a rootfs tarball with a kernel in it
  bakery.images.qemu_image:
    rootfs: /var/cache/bakery/rootfs/bookworm-kernel.tar
    disk_size: 4G
    outputs:
      - path: /srv/images/web.qcow2
        compress: true
      - path: /srv/images/web.vmdk

- name: A Vagrant base box disk
  bakery.images.qemu_image:
    rootfs: /var/cache/bakery/rootfs/bookworm-kernel.tar
    vagrant: true
    outputs:
      - path: /srv/images/box.qcow2

- name: A larger copy of a downloaded cloud image, checked first
  bakery.images.qemu_image:
    image: /srv/downloads/debian-12-genericcloud-amd64.qcow2
    image_checksum: "sha256:{{ cloud_image_sha256 }}"
    disk_size: 10G
    outputs:
      - path: /srv/images/debian-10g.qcow2

- name: Is the disk up to date?
  bakery.images.qemu_image:
    action: find
    rootfs: /var/cache/bakery/rootfs/bookworm-kernel.tar
    outputs:
      - path: /srv/images/web.qcow2
  register: disk
"""

RETURN = r"""
found:
  description: Whether every output already existed with this fingerprint.
  returned: actions find and build
  type: bool
fingerprint:
  description: sha256 over RV(inputs).
  returned: actions find and build
  type: str
inputs:
  description: Input digests; O(inputs) (or C(source)) plus C(disk), the disk options.
  returned: actions find and build
  type: dict
changed_inputs:
  description: Inputs that differ from the primary output's sidecar; empty when up to date.
  returned: actions find and build
  type: list
  elements: str
outputs:
  description: The outputs made or found, each with C(format), C(path), C(size) and C(sha256).
  returned: actions find and build
  type: list
  elements: dict
path:
  description: The primary output.
  returned: when built or found
  type: str
format:
  description: Format of the primary output.
  returned: when built or found
  type: str
size:
  description: Size in bytes of the primary output file.
  returned: when built or found
  type: int
sha256:
  description: sha256 of the primary output file.
  returned: when built or found
  type: str
virtual_size:
  description: Virtual size of the disk in bytes.
  returned: when built or found
  type: int
workdir:
  description: The work directory (actions unpack and remove).
  returned: actions unpack and remove
  type: str
root:
  description: The unpacked tree, the chroot to provision (action unpack).
  returned: action unpack
  type: str
step_cache:
  description: Where the per-step cache starts the tree (action unpack, also in check mode, when O(step_keys) are given).
  returned: action unpack with step_keys
  type: dict
  contains:
    resume:
      description: The last provisioner whose cached state the tree starts from (V(0) for none).
      type: int
    keys:
      description: The builder's chain keys.
      type: list
      elements: str
    image:
      description: The entry (tarball) the tree is unpacked from.
      type: str
    reason:
      description: Why it starts there.
      type: str
    steps:
      description: Each provisioner's state, V(hit), V(miss) or V(bypassed).
      type: list
      elements: str
layer:
  description: Whether the entry action step_save kept (or found) is a layer over the step before's entry.
  returned: action step_save (null when it kept nothing)
  type: bool
removed:
  description: The files action prune_steps removed (or would remove).
  returned: action prune_steps
  type: list
  elements: str
apt_lists:
  description: The package lists the tree was seeded with (O(apt_lists)).
  returned: with O(apt_lists) when the tree was unpacked from a rootfs tarball that has them
  type: dict
  contains:
    path:
      description: The file they came from.
      type: str
    files:
      description: How many files went into C(/var/lib/apt/lists).
      type: int
    error:
      description: Why the file could not be read whole (the refresh fetches what is missing).
      type: str
enter:
  description: The script that runs a command isolated in the tree, for the chroot connection's C(chroot_exe).
  returned: action unpack
  type: str
hygiene:
  description:
    - One result per hygiene check, in the order of M(bakery.images.image_hygiene)'s RV(bakery.images.image_hygiene#module:hygiene),
      each with C(name), C(status) (V(passed), V(failed) or V(skipped)), C(ok), C(count), C(findings),
      C(detail) and C(fix); of a found disk, those its sidecar recorded when it was built.
    - Also returned when the build failed for a check.
  returned: when O(hygiene) was given and the disk was built, or found with recorded results
  type: list
  elements: dict
msg:
  description: What was done and why.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _hygiene, _qemu_disk
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="build", choices=list(_qemu_disk.ACTIONS)),
            outputs=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    path=dict(type="path", required=True),
                    format=dict(type="str", choices=list(_qemu_disk.FORMATS)),
                    compress=dict(type="bool", default=False),
                ),
            ),
            rootfs=dict(type="path"),
            apt_lists=dict(type="bool", default=False),
            image=dict(type="path"),
            image_checksum=dict(type="str"),
            image_format=dict(type="str", choices=list(_qemu_disk.SOURCE_FORMATS)),
            backing=dict(type="bool", default=False),
            reassemble=dict(type="bool", default=False),
            disk_size=dict(type="str", default="4G"),
            architecture=dict(type="str", default="amd64", choices=["amd64", "arm64"]),
            kernel_cmdline=dict(type="str", default=""),
            dhcp=dict(type="bool", default=True),
            hostname=dict(type="str"),
            vagrant=dict(type="bool", default=False),
            vagrant_key=dict(type="path", no_log=False),
            inputs=dict(type="dict", default={}),
            fingerprint=dict(type="str"),
            authorized_keys=dict(type="list", elements="str", default=[], no_log=False),
            force=dict(type="bool", default=False),
            bake_id=dict(type="str"),
            source_date_epoch=dict(type="int"),
            workdir=dict(type="path"),
            timeout=dict(type="int", default=1800),
            step_keys=dict(type="list", elements="str", default=[], no_log=False),
            step=dict(type="int"),
            public_key=dict(type="str", no_log=False),
            target=dict(type="str"),
            step_cache=dict(
                type="dict",
                default={},
                options=dict(
                    enabled=dict(type="bool", default=False),
                    max_size=dict(type="int", default=0),
                    dir=dict(type="path"),
                    max_resume=dict(type="int"),
                ),
            ),
            hygiene=dict(
                type="dict",
                options=dict(
                    skip=dict(type="list", elements="str", default=[], choices=list(_hygiene.CHECKS)),
                    var_log_max=dict(type="str", default="64M"),
                    package_lists=dict(type="str", default="refresh", choices=list(_hygiene.PACKAGE_LISTS)),
                    results=dict(type="list", elements="dict"),
                ),
            ),
        ),
        mutually_exclusive=[("rootfs", "image")],
        supports_check_mode=True,
    )
    run(module, _qemu_disk.module_action)


if __name__ == "__main__":
    main()
