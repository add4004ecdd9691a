#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: digitalocean_image_bake
short_description: Make a DigitalOcean image from a disk or a provisioned droplet, idempotent by fingerprint
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
  - C(action=launch) and C(action=capture) are an instance bake, as Packer's digitalocean builder does it.
    V(launch) finds the image by fingerprint (the inputs, the image and droplet options and the base image's id),
    else adds a temporary SSH key (C(POST /v2/account/keys)) and creates a droplet of O(base_image) named
    C(bakery-<bake id>-<target>), tagged C(bakery-temporary) and C(bakery-bake-id:<id>), and returns how to reach it
    over SSH once it answers. V(capture) powers the droplet off (droplet action C(power_off)), snapshots it under
    its temporary name (action C(snapshot)), tags the snapshot as an imported image is tagged, transfers it to
    O(regions), renames it O(name) and makes it final; the droplet and the key are deleted in every case, an
    unfinished snapshot when a step failed.
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
    choices: [find, upload, launch, capture, publish, cleanup]
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
  base_image:
    description: The image the droplet of V(launch) starts from, a slug (V(debian-12-x64)) or an image id.
    type: str
  size:
    description: The droplet's size slug for V(launch) (for example V(s-1vcpu-1gb)).
    type: str
  droplet:
    description: The id of the droplet V(launch) started, for V(capture).
    type: str
  ssh_key_id:
    description: The id of the temporary SSH key V(launch) added, for V(capture) (deleted there; an id, no secret).
    type: str
  ssh_user:
    description: The user Ansible logs in as on the droplet.
    type: str
    default: root
  ssh_port:
    description: The droplet's SSH port.
    type: int
    default: 22
  ssh_timeout:
    description: Seconds V(launch) waits for the droplet's SSH server once it is active.
    type: int
    default: 300
  ssh_key_dir:
    description: Directory of the temporary private key file (C(bakery-<bake id>-<target>)), removed by V(capture)
      and V(cleanup).
    type: path
  python:
    description: The Python interpreter on the droplet.
    type: str
    default: /usr/bin/python3
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
  - The snapshot of an instance bake is a DigitalOcean image of type C(snapshot), found by the same tag
    C(bakery-fingerprint:<sha256>) as a custom image.
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

- name: Start a droplet of Debian 12 for an instance bake (or find its image)
  bakery.images.digitalocean_image_bake:
    action: launch
    name: web
    base_image: debian-12-x64
    region: nyc3
    size: s-1vcpu-1gb
    bake_id: 20261127t100000-abcdef
    target: web
    ssh_key_dir: /srv/bakes/out/.bakery-ssh
  register: launched

- name: Snapshot it once provisioned, and make the image available in ams3 too
  bakery.images.digitalocean_image_bake:
    action: capture
    name: web
    regions: [ams3]
    droplet: "{{ launched.droplet.id }}"
    ssh_key_id: "{{ launched.key.id }}"
    inputs: "{{ launched.inputs }}"
    bake_id: 20261127t100000-abcdef
    target: web
    ssh_key_dir: /srv/bakes/out/.bakery-ssh
  when: launched.droplet is defined

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
  returned: find, upload, launch, capture
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
droplet:
  description: The droplet V(launch) started (id, name, host, region).
  type: dict
  returned: launch, when a droplet was started
key:
  description: The temporary SSH key V(launch) added (id, fingerprint).
  type: dict
  returned: launch, when a droplet was started
public_key:
  description: The temporary public key in the droplet's authorized_keys (the image hygiene checks look for it).
  type: str
  returned: launch, when a droplet was started
builder:
  description: How Ansible reaches the droplet (connection, host, port, user, private_key, python,
    ssh_common_args).
  type: dict
  returned: launch, when a droplet was started
base_image:
  description: The base image (id, slug, name).
  type: dict
  returned: launch, when a droplet was started
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
            action=dict(
                type="str",
                required=True,
                choices=["find", "upload", "launch", "capture", "publish", "cleanup"],
            ),
            name=dict(type="str"),
            description=dict(type="str"),
            distribution=dict(type="str", default="Unknown", choices=list(_digitalocean.DISTRIBUTIONS)),
            disk=dict(type="path"),
            disk_sha256=dict(type="str"),
            disk_format=dict(type="str", default="qcow2", choices=["qcow2", "raw"]),
            region=dict(type="str"),
            regions=dict(type="list", elements="str", default=[]),
            tags=dict(type="list", elements="str", default=[]),
            base_image=dict(type="str"),
            size=dict(type="str"),
            droplet=dict(type="str"),
            ssh_key_id=dict(type="str", no_log=False),
            ssh_user=dict(type="str", default="root"),
            ssh_port=dict(type="int", default=22),
            ssh_timeout=dict(type="int", default=300),
            ssh_key_dir=dict(type="path"),
            python=dict(type="str", default="/usr/bin/python3"),
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
            ("action", "launch", ("name", "base_image", "region", "size", "bake_id")),
            ("action", "capture", ("name", "droplet", "bake_id")),
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
