#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vagrant_box
short_description: Make a Vagrant box (libvirt or virtualbox) from a disk image and list it in a versioned catalog
version_added: 0.2.0
description:
  - Packs a disk image (for example the qcow2 of a M(bakery.images.qemu_image) target) into a Vagrant box
    file, and adds the box to a versioned catalog that C(vagrant box add) reads.
  - A V(libvirt) box (vagrant-libvirt's box format) holds C(box.img), a standalone qcow2 (the source as it is
    when it is a qcow2 without backing file, else converted with C(qemu-img)), C(metadata.json) with
    C(provider), C(format) and C(virtual_size) (GiB, rounded up), and a C(Vagrantfile) with the box's
    defaults.
  - A V(virtualbox) box holds C(box.ovf), an OVF 1.0 descriptor, C(box-disk001.vmdk), a streamOptimized VMDK
    made with C(qemu-img convert -O vmdk -o subformat=streamOptimized), C(metadata.json) and a C(Vagrantfile)
    that sets C(config.vm.base_mac) to the MAC of the OVF's network adapter.
  - The box's fingerprint is a sha256 over O(inputs) (or, without them, the source disk's sha256) and the box
    options (O(provider), O(architecture), O(compression), O(memory), O(cpus), O(vagrantfile)). It is written with the box's
    sha256 and size to the sidecar C(<path>.bakery.json); a box whose sidecar carries the same fingerprint is
    not rebuilt. Boxes are reproducible, so the same disk and options give the same bytes and checksum.
  - The box is written under a temporary name beside O(path) and renamed onto it only when complete; on
    failure or interruption the temporary files are removed. C(action=clean) removes what a killed run left.
  - With O(catalog), the box is added to the catalog as version O(version) of O(box_name) for O(provider)
    and O(architecture), with its URL and sha256; the catalog file is updated in place (other versions,
    providers and architectures are kept) and replaced atomically. Adding the same box again changes nothing.
    A version that the catalog already lists for O(provider) and O(architecture) with another checksum is
    refused before the existing box file is touched, unless O(force=true).
  - The box's C(metadata.json) and its catalog entry name its architecture, as Vagrant 2.4 reads them (older
    Vagrant ignores the field). One entry per provider of a version is marked C(default_architecture), amd64
    where the version lists it, else the first architecture by name; it is listed last, which Vagrant 2.3 takes. A catalog entry that names no
    architecture is taken for amd64.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - C(qemu-img) (Debian package C(qemu-utils)) for V(virtualbox) boxes and for sources that are not standalone
    qcow2 images
attributes:
  check_mode:
    support: full
    description: Reports whether the box would be built, and whether the catalog would change; writes nothing.
  diff_mode:
    support: none
    description: Reports the changed inputs in RV(changed_inputs) instead of a diff.
  idempotent:
    support: full
    description: The same disk and options give the same fingerprint; a box carrying it is not rebuilt, and
      a catalog that already lists it is not rewritten.
options:
  action:
    description:
      - V(build) makes the box unless it is up to date, then updates the catalog.
      - V(find) only reports whether a box with the fingerprint exists (RV(found)); it needs no source disk
        when O(inputs) are given, and changes nothing.
      - V(clean) removes temporary files that an interrupted build of O(path) left beside it.
    type: str
    choices: [build, find, clean]
    default: build
  path:
    description: The box file to write, usually ending in C(.box). Missing parent directories are created.
    type: path
    required: true
  source:
    description: The disk image to box (qcow2, or any format C(qemu-img) reads). Required for V(build).
    type: path
  source_sha256:
    description:
      - The source disk's sha256 when it is known (a bake passes its source target's), so that it is not
        hashed again. It is recorded in the sidecar; a box made from a disk with another sha256 is rebuilt.
    type: str
  inputs:
    description:
      - Input digests computed by the bake plan (they identify the source disk). Without them, the source
        disk's sha256 is the input.
    type: dict
  provider:
    description: The Vagrant provider the box is for.
    type: str
    choices: [libvirt, virtualbox]
    default: libvirt
  compression:
    description: The gzip level of the box file, from V(1) (fastest) to V(9) (smallest); V(0) writes a plain tar.
    type: int
    default: 6
  memory:
    description: Memory of the machine in MiB, as a default in the box's Vagrantfile (and OVF).
    type: int
    default: 1024
  cpus:
    description: Number of CPUs, as a default in the box's Vagrantfile (and OVF).
    type: int
    default: 1
  vagrantfile:
    description:
      - The content of the box's Vagrantfile, instead of the generated one. The generated one disables the
        default synced folder, and sets O(memory), O(cpus) and, for libvirt, virtio disk and network and a
        virtio RNG.
      - A project's own Vagrantfile overrides whatever the box's sets.
    type: str
  architecture:
    description:
      - The Debian architecture of the disk (V(amd64), V(arm64), V(armhf) ...), named in the box's metadata and
        catalog entry with Vagrant's name (V(amd64), V(arm64), V(arm) ...).
      - The bake passes the architecture of the target's base.
    type: str
    choices: [amd64, i386, arm64, armhf, armel, ppc64el, s390x, riscv64]
    default: amd64
  catalog:
    description:
      - A catalog file (Vagrant's box metadata JSON) to add the box to; created when missing.
      - Serve it with the boxes and run C(vagrant box add <URL of the catalog>).
    type: path
  box_name:
    description: The box's name in the catalog, for example V(bakery/example-web). Required with O(catalog).
    type: str
  version:
    description: The box's version in the catalog, for example V(1.0.0). Required with O(catalog).
    type: str
  description:
    description: The catalog's description of the box.
    type: str
  base_url:
    description:
      - Where the box file will be served; its URL in the catalog is O(base_url) followed by the box's file
        name. Without it, the URL is the box's C(file://) URL.
    type: str
  force:
    description:
      - Rebuild the box even when it is up to date, and replace a catalog entry of the same version and
        provider that has another checksum.
    type: bool
    default: false
  bake_id:
    description: The id of the bake that makes the box; recorded in the sidecar.
    type: str
  qemu_img:
    description: The C(qemu-img) program to use.
    type: str
    default: qemu-img
notes:
  - The sidecar C(<path>.bakery.json) holds C(fingerprint), C(inputs), C(sha256), C(size), C(provider),
    C(metadata), C(virtual_size) (bytes), C(source), C(source_format), C(source_sha256), C(bake_id) and
    C(built_at).
  - A box for C(vagrant up) must follow Vagrant's base box conventions (user C(vagrant) with passwordless
    sudo and Vagrant's insecure public key, sshd, DHCP on the first network interface); the role
    C(bakery.images.qemu) makes such disks.
seealso:
  - name: Vagrant box file format
    description: metadata.json, the Vagrantfile and the provider's files.
    link: https://developer.hashicorp.com/vagrant/docs/boxes/format
  - name: vagrant-libvirt box format
    description: box.img, format and virtual_size.
    link: https://vagrant-libvirt.github.io/vagrant-libvirt/boxes.html
"""

EXAMPLES = r"""
- name: A libvirt box of a qcow2 disk, version 1.0.0 in a catalog served from a web server
  bakery.images.vagrant_box:
    path: /srv/boxes/example-web-1.0.0-libvirt.box
    source: output/example-web.qcow2
    provider: libvirt
    catalog: /srv/boxes/example-web.json
    box_name: bakery/example-web
    version: 1.0.0
    description: nginx on Debian
    base_url: https://boxes.example.org

- name: The same disk as a VirtualBox box, added to the same version of the catalog
  bakery.images.vagrant_box:
    path: /srv/boxes/example-web-1.0.0-virtualbox.box
    source: output/example-web.qcow2
    provider: virtualbox
    compression: 9
    catalog: /srv/boxes/example-web.json
    box_name: bakery/example-web
    version: 1.0.0
    base_url: https://boxes.example.org

- name: Is the box of this bake target up to date?
  bakery.images.vagrant_box:
    action: find
    path: output/example-web-1.0.0-libvirt.box
    inputs: "{{ bakery_target.inputs }}"
  register: box_found
"""

RETURN = r"""
path:
  description: Absolute path of the box file.
  returned: always
  type: str
  sample: /srv/boxes/example-web-1.0.0-libvirt.box
provider:
  description: The box's provider.
  returned: always
  type: str
  sample: libvirt
box_name:
  description: O(box_name), when given.
  returned: always
  type: str
  sample: bakery/example-web
version:
  description: O(version), when given.
  returned: always
  type: str
  sample: 1.0.0
found:
  description: Whether a box with the fingerprint existed (and O(force) was not set).
  returned: always
  type: bool
built:
  description: Whether this task wrote the box.
  returned: always
  type: bool
sha256:
  description: sha256 of the box file, as listed in the catalog; null when it would be built (check mode, find).
  returned: always
  type: str
  sample: 6c1b...e0a2
size:
  description: Size of the box file in bytes; null when it would be built.
  returned: always
  type: int
  sample: 412318720
metadata:
  description: The box's C(metadata.json); null when it would be built.
  returned: always
  type: dict
  sample: {"provider": "libvirt", "format": "qcow2", "virtual_size": 3}
fingerprint:
  description: sha256 over RV(inputs); also in the sidecar.
  returned: always
  type: str
inputs:
  description: The digest of each input; C(box) is the digest of the box options.
  returned: always
  type: dict
changed_inputs:
  description: Names of the inputs that differ from the existing box's sidecar; empty when it is up to date.
  returned: always
  type: list
  elements: str
  sample: [source_target]
bake_id:
  description: The bake that made the box, as recorded in its sidecar.
  returned: always
  type: str
catalog:
  description: What happened to the catalog (path, name, version, url, changed, change); null without O(catalog).
  returned: always
  type: dict
  sample: {"path": "/srv/boxes/example-web.json", "name": "bakery/example-web", "version": "1.0.0",
           "url": "https://boxes.example.org/example-web-1.0.0-libvirt.box", "changed": true,
           "change": "added version 1.0.0"}
removed:
  description: The temporary files that C(action=clean) removed (or would remove in check mode).
  returned: when O(action=clean)
  type: list
  elements: str
duration:
  description: Seconds the task took.
  returned: always
  type: float
msg:
  description: What was done and why.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _vagrant
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="build", choices=list(_vagrant.ACTIONS)),
            path=dict(type="path", required=True),
            source=dict(type="path"),
            source_sha256=dict(type="str"),
            inputs=dict(type="dict"),
            provider=dict(type="str", default="libvirt", choices=list(_vagrant.PROVIDERS)),
            architecture=dict(type="str", default="amd64", choices=list(_vagrant.VAGRANT_ARCHITECTURES)),
            compression=dict(type="int", default=6),
            memory=dict(type="int", default=1024),
            cpus=dict(type="int", default=1),
            vagrantfile=dict(type="str"),
            catalog=dict(type="path"),
            box_name=dict(type="str"),
            version=dict(type="str"),
            description=dict(type="str"),
            base_url=dict(type="str"),
            force=dict(type="bool", default=False),
            bake_id=dict(type="str"),
            qemu_img=dict(type="str", default="qemu-img"),
        ),
        required_if=[("action", "build", ["source"])],
        required_by={"catalog": ("box_name", "version")},
        supports_check_mode=True,
    )
    run(module, _vagrant.module_action)


if __name__ == "__main__":
    main()
