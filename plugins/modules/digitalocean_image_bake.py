#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: digitalocean_image_bake
short_description: Import a disk as a DigitalOcean custom image, idempotent by fingerprint
version_added: 0.1.0
description:
  - Makes a DigitalOcean custom image from a disk file, for example the qcow2 or raw output of the qemu target
    (M(bakery.images.qemu_image)), through pydo (DigitalOcean's Python client) and boto3 (Spaces).
  - C(action=upload) uploads the disk to the Spaces bucket O(spaces_bucket) (the S3 API, multipart, bounded
    memory) under C(bakery/<bake id>/<target>/), imports it with C(POST /v2/images) from a presigned URL of that
    object, waits until the image is C(available), transfers it to the other O(regions) and deletes the Spaces
    object (whatever happened).
  - Until then the image carries the tags C(bakery-temporary) and C(bakery-bake-id:<id>); a failure or an
    interruption deletes it, and a killed bake's image or upload is deleted by C(action=cleanup) or the janitor
    (M(bakery.images.janitor)).
  - Images carry the tag C(bakery-fingerprint:<sha256>) (the bake's inputs, the image options and the disk's
    sha256; DigitalOcean tags are names, so the value follows a colon). When an available image without
    C(bakery-temporary) has it, nothing is uploaded (C(changed=false)).
  - C(action=find) only reports whether such an image exists; C(action=publish) makes final an image that
    C(upload) left temporary (O(publish=false), while its checks run); C(action=cleanup) deletes the temporary
    images and Spaces uploads of a bake id.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - pydo and boto3 on the host that runs the module
extends_documentation_fragment:
  - bakery.images.cleanup
attributes:
  check_mode:
    support: full
    description: Finds the image and reports whether it would be imported; creates nothing.
  diff_mode:
    support: none
    description: Not supported.
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
    description: Image name. Required for V(find) and V(upload).
    type: str
  description:
    description: Image description (at most 140 characters).
    type: str
  distribution:
    description: The image's distribution, as DigitalOcean names it.
    type: str
    default: Unknown
    choices: [Arch Linux, CentOS, CoreOS, Debian, Fedora, Fedora Atomic, FreeBSD, Gentoo, openSUSE, RancherOS,
              Rocky Linux, Ubuntu, Unknown]
  disk:
    description: The disk file to import (V(find), V(upload)).
    type: path
  disk_sha256:
    description: The sha256 of O(disk) when known (the qemu target's artifact has it), else it is computed.
    type: str
  disk_format:
    description: Format of O(disk) (DigitalOcean recognises it from the data).
    type: str
    choices: [qcow2, raw]
    default: qcow2
  region:
    description: Region slug the image is imported in (for example V(nyc3)). Required for V(upload).
    type: str
  regions:
    description: More region slugs the image is transferred to before it is final.
    type: list
    elements: str
    default: []
  tags:
    description: Image tags (letters, digits, C(_), C(:), C(-); names starting with C(bakery-) are bakery's own).
    type: list
    elements: str
    default: []
  inputs:
    description: Fingerprint inputs computed by the bake plan.
    type: dict
    default: {}
  force:
    description: Import even when an image with the fingerprint exists.
    type: bool
    default: false
  publish:
    description:
      - Make the new image final (drop the tag C(bakery-temporary)) once it is available in its regions.
        V(false) leaves it temporary for its checks; V(publish) then makes it final.
    type: bool
    default: true
  image:
    description: Image id for V(publish).
    type: str
  bake_id:
    description: Id of the bake (a new one when not given); required for V(cleanup).
    type: str
  target:
    description: Name of the bake target (the tag C(bakery-target:<name>)); narrows V(cleanup) to its resources.
    type: str
  token:
    description:
      - DigitalOcean API token. Secret (never shown). Defaults to the environment variable C(DIGITALOCEAN_TOKEN),
        C(DIGITALOCEAN_ACCESS_TOKEN) or C(DO_API_TOKEN).
    type: str
  api_url:
    description: The API's URL (an C(http://) URL only on the loopback, for a local stand-in).
    type: str
    default: https://api.digitalocean.com
  spaces_bucket:
    description: The Spaces bucket the disk is uploaded to (required for V(upload)).
    type: str
  spaces_region:
    description: The bucket's region (default O(region)).
    type: str
  spaces_endpoint:
    description: The Spaces endpoint (default C(https://<spaces_region>.digitaloceanspaces.com)).
    type: str
  spaces_access_key:
    description: Spaces access key id (default C(SPACES_ACCESS_KEY_ID) or C(AWS_ACCESS_KEY_ID)). Secret.
    type: str
  spaces_secret_key:
    description: Spaces secret key (default C(SPACES_SECRET_ACCESS_KEY) or C(AWS_SECRET_ACCESS_KEY)). Secret.
    type: str
  timeout:
    description: Seconds for an import and each transfer to finish (and the presigned URL to stay valid).
    type: int
    default: 1800
  retries:
    description: Retries of a call answered with HTTP 429 or 5xx or not answered (never of the import's POST).
    type: int
    default: 5
  retry_delay:
    description: Backoff factor of the retries, in seconds.
    type: float
    default: 1.0
notes:
  - Instance bakes (a droplet provisioned over SSH, snapshotted) are not supported yet; import a qemu target's disk.
seealso:
  - module: bakery.images.qemu_image
  - module: bakery.images.janitor
"""

EXAMPLES = r"""
- name: Import the qemu target's qcow2 disk as a custom image in nyc3 and ams3
  bakery.images.digitalocean_image_bake:
    action: upload
    name: web
    description: web server, baked by bakery
    distribution: Debian
    disk: /srv/bakes/out/web.qcow2
    region: nyc3
    regions: [ams3]
    tags: [web]
    spaces_bucket: my-bakes

- name: Remove what a killed bake left
  bakery.images.digitalocean_image_bake:
    action: cleanup
    spaces_bucket: my-bakes
    region: nyc3
    bake_id: 20261127t100000-abcdef
"""

RETURN = r"""
image:
  description: The image made or found (id, name, distribution, description, regions, status, size_gigabytes,
    min_disk_size, tags, type, created_at, error_message).
  type: dict
  returned: when an image was made or found
fingerprint:
  description: The fingerprint (tag C(bakery-fingerprint:<fingerprint>)).
  type: str
  returned: find, upload
inputs:
  description: The fingerprint's inputs (the plan's, the image options' digest and the disk's sha256).
  type: dict
  returned: find, upload
found:
  description: Whether an image with the fingerprint existed.
  type: bool
  returned: find, upload, publish
built:
  description: Whether this call imported a new image.
  type: bool
  returned: find, upload, publish
upload:
  description: Where the disk went (bucket, key, bytes, seconds).
  type: dict
  returned: when an image was imported
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
    - Whether this call sent a request that may make an image or an upload (also in a failure's result); a
      cleanup given V(false) has nothing to remove.
  type: bool
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.bakery.images.plugins.module_utils import _digitalocean, _module


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["find", "upload", "publish", "cleanup"]),
            name=dict(type="str"),
            description=dict(type="str"),
            distribution=dict(type="str", default="Unknown", choices=list(_digitalocean.DISTRIBUTIONS)),
            disk=dict(type="path"),
            disk_sha256=dict(type="str"),
            disk_format=dict(type="str", default="qcow2", choices=["qcow2", "raw"]),
            region=dict(type="str"),
            regions=dict(type="list", elements="str", default=[]),
            tags=dict(type="list", elements="str", default=[]),
            inputs=dict(type="dict", default={}),
            force=dict(type="bool", default=False),
            publish=dict(type="bool", default=True),
            image=dict(type="str"),
            created=dict(type="bool", default=True),
            bake_id=dict(type="str"),
            target=dict(type="str"),
            token=dict(type="str", no_log=True),
            api_url=dict(type="str", default=_digitalocean.API_URL),
            spaces_bucket=dict(type="str"),
            spaces_region=dict(type="str"),
            spaces_endpoint=dict(type="str"),
            spaces_access_key=dict(type="str", no_log=True),
            spaces_secret_key=dict(type="str", no_log=True),
            timeout=dict(type="int", default=1800),
            retries=dict(type="int", default=5),
            retry_delay=dict(type="float", default=1.0),
        ),
        required_if=[
            ("action", "find", ("name", "disk")),
            ("action", "upload", ("name", "disk", "region", "spaces_bucket")),
            ("action", "publish", ("image", "bake_id")),
            ("action", "cleanup", ("bake_id",)),
        ],
        supports_check_mode=True,
    )
    if not _digitalocean.HAS_PYDO:
        module.fail_json(msg=missing_required_lib("pydo"), exception=_digitalocean.PYDO_ERROR)
    # a token or Spaces key taken from the environment is masked like the parameters
    module.no_log_values.update(_digitalocean.environment_secrets())
    _module.run(module, lambda m: _digitalocean.run(m.params, check_mode=m.check_mode))


if __name__ == "__main__":
    main()
