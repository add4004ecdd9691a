#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sbom
short_description: Write an artifact's software bills of materials (SPDX 2.3 and CycloneDX 1.6 JSON)
version_added: 0.3.0
description:
  - Lists every installed package of an artifact, read from the artifact's own dpkg database after provisioning,
    and the artifact's provisioning inputs, in an SPDX 2.3 JSON document (O(spdx_path)) and a CycloneDX 1.6 JSON
    document (O(cyclonedx_path)).
  - Each package has its name, version, architecture, source package and version, supplier (its maintainer),
    the licenses its copyright file states when that file is machine-readable (Debian copyright-format 1.0; a
    license name that is no SPDX identifier becomes a C(LicenseRef-)), the sha256 of dpkg's md5sums list of its
    files where dpkg has one, and its purl C(pkg:deb/<namespace>/<name>@<version>?arch=<architecture>).
  - Each provisioning input (O(inputs), the fingerprint inputs of the target - roles, scripts, files, variables,
    the source) is listed with its sha256 digest.
  - The package database is read from O(root) (a provisioned directory tree; links are never followed out of
    it), from the Docker image O(image) (a container created from it and never started; nothing is mounted),
    from the disk image O(disk) (its root file system read with debugfs; nothing is mounted), from
    O(source_document), the CycloneDX document of the artifact this one was made from (the disk of a
    Vagrant box, the disk an AMI or GCE image was uploaded from), or from O(installed), what a O(collect) run
    read on an instance (a cloud image made from an instance). Without any of them, the module only reports the documents that are already there. An artifact
    without a dpkg database (another distribution, a scratch image) gets documents that list its inputs and no
    package, with a warning.
  - The documents are deterministic - their serial number and namespace derive from O(fingerprint), their
    creation time is O(source_date_epoch) (else the time of O(bake_id), the bake that made the artifact) - so the
    same artifact gives byte-identical documents, and a document that holds what it would be written with is left
    alone (C(changed=false)). Documents are written under a temporary name and renamed into place.
  - An artifact with a O(digest) is recorded in its documents (a digest of its name, type, architecture,
    fingerprint, digest, inputs and creation time). When both documents at O(spdx_path) and O(cyclonedx_path) record the artifact at
    hand, they are kept as they are and its packages are not read again (an unchanged bake's Docker image or disk);
    on the controller, the action plugin tells this without running the module.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - cyclonedx-python-lib >= 8 and spdx-tools >= 0.8 (Python, on the host that runs the module)
  - the docker Python SDK, for O(image)
attributes:
  check_mode:
    support: full
    description: Reports whether a document would be written, and writes none.
  diff_mode:
    support: none
    description: The documents are JSON files of thousands of lines; their paths and sha256 are returned instead.
  idempotent:
    support: full
    description: Documents that hold what they would be written with are not written again.
options:
  spdx_path:
    description: Where the SPDX 2.3 JSON document goes. Required unless O(collect).
    type: path
  cyclonedx_path:
    description: Where the CycloneDX 1.6 JSON document goes. Required unless O(collect).
    type: path
  root:
    description: A directory tree that is the artifact's root (its dpkg database under C(var/lib/dpkg)).
    type: path
  image:
    description: A Docker image (id or name) whose files are read.
    type: str
  docker_host:
    description: The Docker engine of O(image) (C(DOCKER_HOST) form); the local one by default.
    type: str
  disk:
    description:
      - A disk image (raw, qcow2 or another format C(qemu-img) reads) whose root file system's dpkg database is
        read, without a mount and without a loop device, for a disk bakery copied from a base image. The root
        partition is the first GPT root (any architecture) or Linux data partition, MBR Linux partition, or the
        whole disk, that holds an ext2/3/4 file system; C(debugfs) (e2fsprogs) reads it. A disk in another format
        than raw is converted into a temporary raw copy beside it first.
    type: path
  when_unreadable:
    description:
      - What a O(disk) whose packages cannot be read (no ext2/3/4 root file system, no dpkg database) does.
      - V(fail) fails the task, naming what the disk has.
      - V(skip) writes no documents (and removes those at O(spdx_path) and O(cyclonedx_path), which describe
        another disk), with a warning.
    type: str
    choices: [fail, skip]
    default: fail
  source_document:
    description:
      - The CycloneDX document (written by this module) of the artifact this one was made from; its packages
        and inputs are this artifact's, with O(inputs) added.
    type: path
  name:
    description: The artifact's name in the documents. Required unless O(collect).
    type: str
  type:
    description:
      - The artifact's kind (the target type), for example V(docker), V(qemu), V(vagrant), V(ami), V(gce).
        Required unless O(collect).
    type: str
  fingerprint:
    description:
      - The artifact's fingerprint; the documents' serial number and namespace derive from it. Required unless
        O(collect).
    type: str
  bake_id:
    description: The id of the bake that made the artifact; the documents' creation time is its time when
      O(source_date_epoch) is not given.
    type: str
  architecture:
    description: The Debian architecture the artifact runs on (V(amd64), V(arm64)), recorded in the documents.
    type: str
  source_date_epoch:
    description:
      - The bake's epoch (seconds since 1970, as C(SOURCE_DATE_EPOCH)); the documents' creation time, so that two
        bakes of the same artifact write the same documents.
    type: int
  digest:
    description:
      - The artifact's sha256 digest (an image id, a file's sha256, the disk a cloud image was uploaded from), if it
        has one.
    type: str
  installed:
    description:
      - The artifact's packages as a O(collect) run on the artifact's machine returned them (RV(installed)), for
        an instance that becomes a cloud image, read there after provisioning and before the image is made.
    type: list
    elements: dict
  collect:
    description:
      - Only read the packages of O(root) (V(/) by default) and return them (RV(installed)); no document is
        written and the SBOM libraries are not needed. Run on a builder (C(delegate_to)) whose packages the
        controller then writes the documents of with O(installed).
    type: bool
    default: false
  inputs:
    description: The provisioning inputs, each name with its sha256 digest.
    type: dict
    default: {}
  namespace:
    description: The purl namespace of the packages (the distribution).
    type: str
    default: debian
seealso:
  - module: bakery.images.docker_image_build
  - module: bakery.images.qemu_image
  - module: bakery.images.vagrant_box
"""

EXAMPLES = r"""
- name: Write the SBOMs of a provisioned tree
  bakery.images.sbom:
    root: /srv/build/root
    spdx_path: output/example-web-disk.spdx.json
    cyclonedx_path: output/example-web-disk.cdx.json
    name: example-web
    type: qemu
    fingerprint: "{{ built.fingerprint }}"
    bake_id: "{{ built.bake_id }}"
    inputs: "{{ built.inputs }}"

- name: Write the SBOMs of a disk copied from a base image (its root file system read without a mount)
  bakery.images.sbom:
    disk: output/base-copy.qcow2
    spdx_path: output/base-copy-disk.spdx.json
    cyclonedx_path: output/base-copy-disk.cdx.json
    name: base-copy.qcow2
    type: qemu
    fingerprint: "{{ copied.fingerprint }}"

- name: Read the packages on a builder instance (no document written there)
  bakery.images.sbom:
    collect: true
  delegate_to: builder
  register: on_builder

- name: Write the SBOMs of the image made from that instance
  bakery.images.sbom:
    installed: "{{ on_builder.installed }}"
    spdx_path: output/example-web-ami.spdx.json
    cyclonedx_path: output/example-web-ami.cdx.json
    name: example-web
    type: ami
    fingerprint: "{{ image.fingerprint }}"

- name: Write the SBOMs of a Docker image
  bakery.images.sbom:
    image: bakery/example-web:latest
    spdx_path: output/example-web-docker.spdx.json
    cyclonedx_path: output/example-web-docker.cdx.json
    name: bakery/example-web
    type: docker
    fingerprint: "{{ image.fingerprint }}"
"""

RETURN = r"""
documents:
  description: Each document (C(spdx), C(cyclonedx)) with its C(path) and C(sha256); only those that exist without a source to read.
  returned: always
  type: dict
  sample:
    spdx:
      path: /srv/bake/output/example-web-docker.spdx.json
      sha256: 3f2a0c...
    cyclonedx:
      path: /srv/bake/output/example-web-docker.cdx.json
      sha256: 9b1d44...
packages:
  description: How many packages the documents list (none when nothing was read).
  returned: always
  type: int
  sample: 142
installed:
  description:
    - Every installed package read (O(collect) only), sorted by name and architecture, each with C(name),
      C(version), C(architecture), C(source), C(source_version), C(maintainer), C(licenses) (the short names of
      its copyright file) and C(md5sums_sha256) (none without an md5sums list).
  returned: when O(collect) is set
  type: list
  elements: dict
  sample:
    - name: bash
      version: 5.2.15-2+b7
      architecture: amd64
      source: bash
      source_version: 5.2.15-2
      maintainer: Matthias Klose <doko@debian.org>
      licenses: [GPL-3+]
      md5sums_sha256: 6c0e2d...
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.bakery.images.plugins.module_utils import _sbom
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            spdx_path=dict(type="path"),
            cyclonedx_path=dict(type="path"),
            root=dict(type="path"),
            image=dict(type="str"),
            docker_host=dict(type="str"),
            disk=dict(type="path"),
            when_unreadable=dict(type="str", choices=["fail", "skip"], default="fail"),
            source_document=dict(type="path"),
            name=dict(type="str"),
            type=dict(type="str"),
            fingerprint=dict(type="str"),
            bake_id=dict(type="str"),
            source_date_epoch=dict(type="int"),
            architecture=dict(type="str"),
            digest=dict(type="str"),
            installed=dict(type="list", elements="dict"),
            collect=dict(type="bool", default=False),
            inputs=dict(type="dict", default={}),
            namespace=dict(type="str", default="debian"),
        ),
        mutually_exclusive=[
            ("root", "image", "disk", "source_document", "installed"),
            ("collect", "image"),
            ("collect", "disk"),
            ("collect", "source_document"),
            ("collect", "installed"),
        ],
        required_if=[("collect", False, ("spdx_path", "cyclonedx_path", "name", "type", "fingerprint"))],
        supports_check_mode=True,
    )
    if not _sbom.HAS_SBOM_LIBS and not module.params["collect"]:
        module.fail_json(
            msg=missing_required_lib("cyclonedx-python-lib and spdx-tools"), exception=_sbom.SBOM_IMPORT_ERROR
        )
    run(module, lambda mod: _sbom.run(mod.params, mod.check_mode))


if __name__ == "__main__":
    main()
