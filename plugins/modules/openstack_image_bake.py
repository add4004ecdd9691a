#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: openstack_image_bake
short_description: Publish a disk as an OpenStack Glance image, idempotent by fingerprint
version_added: 0.1.0
description:
  - Makes an OpenStack Glance image (image API v2) from a disk file, for example the qcow2 or raw output of the
    qemu target (M(bakery.images.qemu_image)), through openstacksdk.
  - Connects as the C(openstack.cloud) collection does - a named cloud of C(clouds.yaml) (O(cloud)), or an
    O(auth) dictionary with O(auth_type), the C(OS_*) environment variables - and takes an image endpoint
    override (O(image_endpoint)), for example a Glance without Keystone (O(auth_type=none)).
  - C(action=upload) creates the image record, then sends the data the way the server advertises it - the
    interoperable image import (C(glance-direct) - stage, then import) when C(/v2/info/import) lists it, else the
    image data C(PUT) - streamed from the file in chunks of O(chunk_size_mb) (bounded memory), waits until the
    image is C(active) and an import's task has ended (Glance drops its C(os_glance_import_task) lock; the task
    writes the image once more before that), and compares Glance's C(os_hash_value) (sha512) and size with the
    bytes sent.
  - Until then the image is private, unprotected and carries the properties C(bakery_temporary=true) and
    C(bakery_bake_id); a failure or an interruption deletes it, and a killed bake's image (queued, saving or
    importing) is deleted by C(action=cleanup) or the janitor (M(bakery.images.janitor)). Only the final image
    gets its O(visibility), O(protected) and O(members).
  - Images carry the property C(bakery_fingerprint) (a sha256 over the bake's inputs, the image options and the
    disk's sha256). When an active, final image with it exists, nothing is uploaded (C(changed=false)).
  - C(action=find) only reports whether such an image exists; C(action=publish) makes final an image that
    C(upload) left temporary (O(publish=false), while its checks run); C(action=cleanup) deletes the temporary
    images of a bake id.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - openstacksdk >= 1.0 on the host that runs the module
extends_documentation_fragment:
  - bakery.images.cleanup
attributes:
  check_mode:
    support: full
    description: Finds the image and reports what would be uploaded and which input changed; creates nothing.
  diff_mode:
    support: none
    description: Reports the changed inputs in RV(changed_inputs) instead of a diff.
  idempotent:
    support: full
    description: An image with the same fingerprint is found and reused; nothing is uploaded.
options:
  action:
    description: What to do.
    type: str
    choices: [find, upload, publish, cleanup]
    required: true
  name:
    description: Image name (Glance does not need it unique). Required for V(find) and V(upload).
    type: str
  disk:
    description: The disk file to upload (V(find), V(upload)).
    type: path
  disk_sha256:
    description: The sha256 of O(disk) when known (the qemu target's artifact has it), else it is computed.
    type: str
  disk_format:
    description: Format of O(disk), as Glance records (and checks) it.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  container_format:
    description: Glance container format.
    type: str
    default: bare
  properties:
    description: More image properties (strings; names that are Glance's own or start with C(bakery_) are refused).
    type: dict
    default: {}
  hw_firmware_type:
    description: Image property C(hw_firmware_type) (V(bios) or V(uefi)).
    type: str
  hw_machine_type:
    description: Image property C(hw_machine_type) (for example V(q35)).
    type: str
  hw_disk_bus:
    description: Image property C(hw_disk_bus) (for example V(virtio), V(scsi)).
    type: str
  hw_qemu_guest_agent:
    description: Image property C(hw_qemu_guest_agent) (V(true) becomes C(yes)).
    type: bool
  os_distro:
    description: Image property C(os_distro) (for example V(debian)).
    type: str
  os_version:
    description: Image property C(os_version) (for example V(12)).
    type: str
  architecture:
    description: Image property C(architecture) (for example V(x86_64)).
    type: str
  visibility:
    description: Visibility of the final image (a temporary image is private).
    type: str
    choices: [private, shared, community, public]
    default: private
  tags:
    description: Image tags.
    type: list
    elements: str
    default: []
  protected:
    description: Protect the final image from deletion.
    type: bool
    default: false
  members:
    description: Project ids the final image is shared with (needs O(visibility=shared)).
    type: list
    elements: str
    default: []
  min_disk:
    description: Minimum disk size in GiB to boot the image.
    type: int
    default: 0
  min_ram:
    description: Minimum RAM in MiB to boot the image.
    type: int
    default: 0
  import_method:
    description:
      - How the data is sent. V(auto) uses C(glance-direct) when the server advertises it, else V(put).
    type: str
    choices: [auto, glance-direct, put]
    default: auto
  chunk_size_mb:
    description: Size of the chunks the disk is read and sent in (the memory the upload holds).
    type: int
    default: 8
  inputs:
    description: Fingerprint inputs computed by the bake plan.
    type: dict
    default: {}
  force:
    description: Upload even when an image with the fingerprint exists.
    type: bool
    default: false
  publish:
    description:
      - Make the new image final (drop C(bakery_temporary), set visibility, protection, members) once it is active
        and verified. V(false) leaves it temporary for its checks; V(publish) then makes it final.
    type: bool
    default: true
  image:
    description: Image id for V(publish).
    type: str
  bake_id:
    description: Id of the bake (a new one when not given); required for V(cleanup).
    type: str
  target:
    description: Name of the bake target (the property C(bakery_target)); narrows V(cleanup) to its images.
    type: str
  cloud:
    description: Name of a cloud in C(clouds.yaml).
    type: str
  auth:
    description: Authentication options (C(auth_url), C(username), C(password), C(project_name), ...), as C(clouds.yaml) has them.
    type: dict
  auth_type:
    description: Keystoneauth plugin name (for example V(password), V(v3applicationcredential), V(none)).
    type: str
  region_name:
    description: Region of the image service.
    type: str
  interface:
    description: Endpoint interface of the service catalog.
    type: str
    choices: [public, internal, admin]
  image_endpoint:
    description: The image service's URL, instead of the one of the service catalog.
    type: str
  validate_certs:
    description: Check TLS certificates.
    type: bool
  ca_cert:
    description: CA bundle to check TLS certificates with.
    type: path
  headers:
    description:
      - HTTP headers sent with every request, for an image service behind a trusted proxy that takes the
        identity from headers. Secret (never shown).
    type: dict
  timeout:
    description: Seconds for an upload to finish and an image to become active, and for each API call.
    type: int
    default: 1800
  retries:
    description: Retries of a call that failed with HTTP 429, 5xx or no answer (not of a streamed upload).
    type: int
    default: 5
  retry_delay:
    description: Seconds before the first retry (doubled for each next one).
    type: float
    default: 1.0
notes:
  - Instance bakes (a Nova server provisioned over SSH, snapshotted) are not supported; upload a qemu target's disk.
seealso:
  - module: bakery.images.qemu_image
  - module: bakery.images.janitor
"""

EXAMPLES = r"""
- name: Publish the qemu target's qcow2 disk in Glance
  bakery.images.openstack_image_bake:
    action: upload
    cloud: mycloud
    name: web
    disk: /srv/bakes/out/web.qcow2
    disk_format: qcow2
    hw_disk_bus: virtio
    os_distro: debian
    os_version: "12"
    tags: [web]
    visibility: shared
    members: [3d0c6a7bb9a44d7a9c0e1b3a2c6f5e41]

- name: Remove what a killed bake left
  bakery.images.openstack_image_bake:
    action: cleanup
    cloud: mycloud
    bake_id: 20261127t100000-abcdef
"""

RETURN = r"""
image:
  description: The image made or found (id, name, status, size, virtual_size, os_hash_algo, os_hash_value, visibility,
    protected, tags, min_disk, min_ram, owner, properties).
  type: dict
  returned: when an image was made or found
fingerprint:
  description: The fingerprint (property C(bakery_fingerprint)).
  type: str
  returned: find, upload
found:
  description: Whether an image with the fingerprint existed.
  type: bool
  returned: find, upload, publish
built:
  description: Whether this call uploaded a new image.
  type: bool
  returned: find, upload, publish
changed_inputs:
  description: Inputs that changed since the target's last image (V(forced) when forced).
  type: list
  elements: str
  returned: find, upload
upload:
  description: How the data went (method, bytes, sha512, seconds).
  type: dict
  returned: when an image was uploaded
removed:
  description: What V(cleanup) removed.
  type: list
  elements: str
  returned: cleanup
bake_id:
  description: The bake id used.
  type: str
  returned: success
created:
  description:
    - Whether this call sent a request that may make an image (also in a failure's result); a cleanup given
      V(false) has nothing to remove.
  type: bool
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.bakery.images.plugins.module_utils import _module, _openstack


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["find", "upload", "publish", "cleanup"]),
            name=dict(type="str"),
            disk=dict(type="path"),
            disk_sha256=dict(type="str"),
            disk_format=dict(type="str", default="qcow2", choices=["qcow2", "raw"]),
            container_format=dict(type="str", default="bare"),
            properties=dict(type="dict", default={}),
            hw_firmware_type=dict(type="str"),
            hw_machine_type=dict(type="str"),
            hw_disk_bus=dict(type="str"),
            hw_qemu_guest_agent=dict(type="bool"),
            os_distro=dict(type="str"),
            os_version=dict(type="str"),
            architecture=dict(type="str"),
            visibility=dict(
                type="str", default="private", choices=["private", "shared", "community", "public"]
            ),
            tags=dict(type="list", elements="str", default=[]),
            protected=dict(type="bool", default=False),
            members=dict(type="list", elements="str", default=[]),
            min_disk=dict(type="int", default=0),
            min_ram=dict(type="int", default=0),
            import_method=dict(type="str", default="auto", choices=["auto", "glance-direct", "put"]),
            chunk_size_mb=dict(type="int", default=8),
            inputs=dict(type="dict", default={}),
            force=dict(type="bool", default=False),
            publish=dict(type="bool", default=True),
            image=dict(type="str"),
            created=dict(type="bool", default=True),
            bake_id=dict(type="str"),
            target=dict(type="str"),
            cloud=dict(type="str"),
            auth=dict(type="dict", no_log=True),
            auth_type=dict(type="str"),
            region_name=dict(type="str"),
            interface=dict(type="str", choices=["public", "internal", "admin"]),
            image_endpoint=dict(type="str"),
            validate_certs=dict(type="bool"),
            ca_cert=dict(type="path"),
            headers=dict(type="dict", no_log=True),
            timeout=dict(type="int", default=1800),
            retries=dict(type="int", default=5),
            retry_delay=dict(type="float", default=1.0),
        ),
        required_if=[
            ("action", "find", ("name", "disk")),
            ("action", "upload", ("name", "disk")),
            ("action", "publish", ("image", "bake_id")),
            ("action", "cleanup", ("bake_id",)),
        ],
        supports_check_mode=True,
    )
    if not _openstack.HAS_OPENSTACKSDK:
        module.fail_json(msg=missing_required_lib("openstacksdk"), exception=_openstack.OPENSTACKSDK_ERROR)
    _module.run(module, lambda m: _openstack.run(m.params, check_mode=m.check_mode))


if __name__ == "__main__":
    main()
