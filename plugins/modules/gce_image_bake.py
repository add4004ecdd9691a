#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gce_image_bake
short_description: Bake Compute Engine images from a build instance or a raw disk, idempotent by fingerprint
version_added: 0.1.0
description:
  - Makes Google Compute Engine images through the Compute Engine and Cloud Storage REST APIs with
    google-auth.
  - C(action=launch) starts a build instance from O(source_image) or O(source_image_family) with a
    temporary SSH key in its metadata, waits until it runs and answers SSH, and returns the connection
    for C(add_host). C(action=capture) stops it, makes the image from its boot disk and deletes the
    instance and the disk, also when the capture fails.
  - C(action=import) packs a raw disk (for example one made by the qemu target, C(bakery.images.qemu_image)) as Compute
    Engine wants it (GNU tar, old GNU sparse format, a single member C(disk.raw) padded to a whole GiB,
    gzip), uploads it in chunks with a resumable upload to O(bucket), makes the image from the object and
    deletes the object unless O(keep_object).
  - C(action=verifier) starts an instance of the new, still temporary image O(image) for the bake's checks (a
    target's C(verify_instance)), as V(launch) starts the build instance (the same instance options), with its own
    temporary SSH key (the build instance's key file in O(ssh_key_dir) with C(.verify) appended); instance and disk
    are named C(bakery-<bake id>-<target>-verify) and labelled as the build instance is. It returns the connection
    in RV(verifier); V(cleanup) removes it with the rest of the bake.
  - C(action=find) only reports whether an image with the fingerprint exists. C(action=cleanup) removes
    every temporary resource of a bake id (instances, disks, objects, SSH key files).
  - Images carry the label C(bakery-fingerprint) (the first 63 hex digits of a sha256 over the bake's
    inputs, the image options and the source image id or the disk's sha256). When an image with it
    exists, nothing is launched or uploaded (C(changed=false)). Temporary resources carry the labels
    C(bakery-bake-id) and C(bakery-temporary=true).
  - Calls are retried with exponential backoff on HTTP 429 and 5xx; operations are waited for with
    their C(wait) method under O(timeout), and their errors fail the task.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - google-auth >= 2.0 and requests on the host that runs the module
extends_documentation_fragment:
  - bakery.images.cleanup
attributes:
  check_mode:
    support: full
    description: Finds the image and reports what would be built and which input changed; creates nothing.
  diff_mode:
    support: none
    description: Reports the changed inputs in RV(changed_inputs) instead of a diff.
  idempotent:
    support: full
    description: An image with the same fingerprint is found and reused; nothing is launched or uploaded.
options:
  action:
    description:
      - What to do. V(publish) labels final an image that V(capture) or V(import) made with O(publish=false)
        (after its checks passed), and deprecates older ones of its family with O(deprecate_older).
    type: str
    choices: [find, launch, capture, import, cleanup, publish, verifier]
    required: true
  project:
    description: Project of the image and the build instance.
    type: str
    required: true
  zone:
    description: Zone of the build instance (V(launch), V(capture), V(cleanup) of instances).
    type: str
  name:
    description: Image name, or its prefix with O(unique_name). Required for V(launch), V(capture), V(import).
    type: str
  unique_name:
    description: Append C(-<bake_id>) to O(name), so that every bake makes a new image name.
    type: bool
    default: true
  family:
    description: Image family.
    type: str
  description:
    description: Image description.
    type: str
  labels:
    description: Labels of the image (the bakery labels are added).
    type: dict
    default: {}
  architecture:
    description: The image's architecture; without it, Compute Engine's default.
    type: str
    choices: [X86_64, ARM64]
  guest_os_features:
    description: Guest OS features of the image, for example V(UEFI_COMPATIBLE), V(GVNIC).
    type: list
    elements: str
    default: []
  storage_locations:
    description: Cloud Storage locations of the image, for example V(eu).
    type: list
    elements: str
    default: []
  licenses:
    description: License URLs of the image.
    type: list
    elements: str
    default: []
  deprecate_older:
    description: After a new image is READY, deprecate the other images of O(family), with the new one as replacement.
    type: bool
    default: false
  inputs:
    description:
      - Fingerprint input digests computed by the bake plan. For V(capture), the RV(inputs) that V(launch) returned.
    type: dict
    default: {}
  force:
    description: Build even when an image with the fingerprint exists.
    type: bool
    default: false
  publish:
    description:
      - With V(false), V(capture) and V(import) leave the new image temporary (labelled C(bakery-temporary=true);
        no lookup finds it, and the bake's cleanup removes it) until V(publish) labels it final. The bake does
        this for a target with checks (C(verify)).
    type: bool
    default: true
  image:
    description:
      - The name of the image to publish (the C(name) of RV(image) of V(capture) or V(import)). Required for V(publish).
      - For V(verifier), the image to start the instance from. Required for V(verifier).
    type: str
  bake_id:
    description: Id of the bake; labels temporary resources and the image. A new one by default.
    type: str
  target:
    description: Name of the bake target; part of temporary resource names and the label C(bakery-target).
    type: str
  source_image:
    description: Source image of the build instance, a name in O(source_image_project) or a URL/path.
    type: str
  source_image_family:
    description: Family whose newest image the build instance starts from.
    type: str
  source_image_project:
    description: Project of O(source_image) or O(source_image_family), for example V(debian-cloud); O(project) by default.
    type: str
  machine_type:
    description: Machine type of the build instance.
    type: str
    default: e2-medium
  disk_size_gb:
    description: Boot disk size of the build instance; the source image's by default.
    type: int
  disk_type:
    description: Boot disk type of the build instance.
    type: str
    default: pd-balanced
  network:
    description: Network of the build instance (a name or a path).
    type: str
    default: default
  subnetwork:
    description: Subnetwork of the build instance (a name in the zone's region or a path).
    type: str
  external_ip:
    description: Give the build instance an external IP and connect to it; else connect to its internal IP.
    type: bool
    default: true
  service_account_email:
    description: Service account the build instance runs as.
    type: str
  scopes:
    description: OAuth scopes of O(service_account_email) on the build instance.
    type: list
    elements: str
    default: [https://www.googleapis.com/auth/cloud-platform]
  ssh_user:
    description: User the temporary SSH key is installed for.
    type: str
    default: bakery
  ssh_port:
    description: SSH port of the build instance.
    type: int
    default: 22
  ssh_timeout:
    description: Seconds to wait for SSH on the build instance.
    type: int
    default: 300
  ssh_key_dir:
    description: Directory for the temporary private key (mode 0600, removed with the instance).
    type: path
    default: /tmp
  python:
    description: Python interpreter on the build instance, returned in RV(builder).
    type: str
    default: /usr/bin/python3
  instance:
    description: Build instance to capture (the C(name) in RV(instance) of V(launch)).
    type: str
  disk:
    description: Raw disk file to import.
    type: path
  disk_sha256:
    description: sha256 of O(disk) if known (the qemu target's artifact has it); computed otherwise.
    type: str
  bucket:
    description: Cloud Storage bucket for the upload of V(import), and where V(cleanup) looks for objects.
    type: str
  object_name:
    description: Object name of the upload; C(bakery-<bake_id>-<target>.tar.gz) by default.
    type: str
  keep_object:
    description: Keep the uploaded object after a successful import.
    type: bool
    default: false
  chunk_size_mb:
    description: Size of the upload chunks in MiB; memory use is a few chunks.
    type: int
    default: 8
  auth_kind:
    description:
      - How to authenticate. By default V(accesstoken) when O(access_token) is set, V(serviceaccount) when a
        service-account key is given, else V(application) (application default credentials).
    type: str
    choices: [application, serviceaccount, accesstoken]
  service_account_file:
    description: Path of a service-account key file (JSON). E(GCP_SERVICE_ACCOUNT_FILE) by default.
    type: path
  service_account_contents:
    description: Content of a service-account key (JSON). E(GCP_SERVICE_ACCOUNT_CONTENTS) by default.
    type: jsonarg
  access_token:
    description: An OAuth2 access token. E(GCP_ACCESS_TOKEN) by default.
    type: str
  auth_scopes:
    description: Scopes the module asks for.
    type: list
    elements: str
    default: [https://www.googleapis.com/auth/cloud-platform]
  api_endpoint:
    description: Compute Engine API base URL (tests point it at a fake).
    type: str
    default: https://compute.googleapis.com/compute/v1
  storage_endpoint:
    description: Cloud Storage API base URL (tests point it at an emulator).
    type: str
    default: https://storage.googleapis.com
  timeout:
    description: Seconds the whole action may wait for operations, instances and images.
    type: int
    default: 1800
  retries:
    description: Retries of a call answered with HTTP 429 or 5xx, or not answered.
    type: int
    default: 5
  retry_delay:
    description: First backoff delay in seconds; it doubles with each retry.
    type: float
    default: 1.0
seealso:
  - name: Importing virtual disks
    description: The disk format Compute Engine imports.
    link: https://cloud.google.com/compute/docs/import/import-existing-image
"""

EXAMPLES = r"""
- name: Start a build instance from Debian 12
  bakery.images.gce_image_bake:
    action: launch
    project: my-project
    zone: europe-west1-b
    name: web
    family: web
    source_image_family: debian-12
    source_image_project: debian-cloud
    service_account_file: /etc/bakery/gce-key.json
  register: launched

- name: Capture the provisioned instance
  bakery.images.gce_image_bake:
    action: capture
    project: my-project
    zone: europe-west1-b
    name: web
    family: web
    instance: "{{ launched.instance.name }}"
    inputs: "{{ launched.inputs }}"
    bake_id: "{{ launched.bake_id }}"
    deprecate_older: true
  when: launched.instance is defined

- name: Start an instance of the new image for its checks
  bakery.images.gce_image_bake:
    action: verifier
    project: my-project
    zone: europe-west1-b
    image: "{{ captured.image.name }}"
    bake_id: "{{ launched.bake_id }}"
    target: web
  register: verify_instance

- name: Import a raw disk
  bakery.images.gce_image_bake:
    action: import
    project: my-project
    name: web
    disk: output/web.raw
    bucket: my-bakery-uploads
    guest_os_features: [UEFI_COMPATIBLE, VIRTIO_SCSI_MULTIQUEUE]
"""

RETURN = r"""
created:
  description:
    - Whether this call sent a request that may make a resource (also in a failure's result); a cleanup given
      V(false) for every call of a target has nothing to remove.
  type: bool
  returned: always
changed:
  description: Whether something was created (or, in check mode, would be).
  type: bool
  returned: always
found:
  description: An image with the fingerprint exists.
  type: bool
  returned: success
built:
  description: An image was made by this call.
  type: bool
  returned: success
fingerprint:
  description: sha256 over RV(inputs).
  type: str
  returned: success
inputs:
  description: The input digests of the fingerprint (pass them to V(capture)).
  type: dict
  returned: success
changed_inputs:
  description: Inputs that differ from the last image of this target (or V(forced)).
  type: list
  elements: str
  returned: success
image:
  description: The image found or made (name, id, self_link, family, status, labels, disk_size_gb, archive_size_bytes).
  type: dict
  returned: success
instance:
  description: The build instance (V(launch)) or the verify instance (V(verifier)) (name, zone, id, host, source_image).
  type: dict
  returned: when a build instance or a verify instance was started
public_key:
  description:
    - The OpenSSH public key line of the build instance's temporary key (in its C(ssh-keys) metadata), for the
      image hygiene checks (M(bakery.images.image_hygiene) O(bakery.images.image_hygiene#module:builder_key)).
  type: str
  returned: when a build instance was started
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB... bakery-20261127t140000-eeeeee-vm
verifier:
  description:
    - Connection of the instance V(verifier) started, for the bake's checks (connection, host, port, user,
      private_key, python, ssh_common_args).
  type: dict
  returned: verifier, not in check mode
  sample:
    connection: ssh
    host: 203.0.113.8
    port: 22
    user: bakery
    private_key: /srv/out/.bakery-ssh/bakery-20261127t101500-a1b2c3-web.verify
    python: /usr/bin/python3
    ssh_common_args: -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/srv/out/.bakery-ssh/bakery-20261127t101500-a1b2c3-web.verify.known_hosts
builder:
  description: Connection of the build instance for C(add_host) (connection, host, port, user, private_key, python).
  type: dict
  returned: when a build instance was started
upload:
  description: The upload of V(import) (bucket, object, size of the tarball, disk_size, seconds, kept).
  type: dict
  returned: when a disk was imported
deprecated:
  description: Images of the family deprecated by this call.
  type: list
  elements: str
  returned: when an image was made
removed:
  description: What V(cleanup) removed.
  type: list
  elements: str
  returned: cleanup
bake_id:
  description: The bake id used.
  type: str
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.bakery.images.plugins.module_utils import _gcp, _module

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(
                type="str",
                required=True,
                choices=["find", "launch", "capture", "import", "cleanup", "publish", "verifier"],
            ),
            project=dict(type="str", required=True),
            zone=dict(type="str"),
            name=dict(type="str"),
            unique_name=dict(type="bool", default=True),
            family=dict(type="str"),
            description=dict(type="str"),
            labels=dict(type="dict", default={}),
            architecture=dict(type="str", choices=["X86_64", "ARM64"]),
            guest_os_features=dict(type="list", elements="str", default=[]),
            storage_locations=dict(type="list", elements="str", default=[]),
            licenses=dict(type="list", elements="str", default=[]),
            deprecate_older=dict(type="bool", default=False),
            inputs=dict(type="dict", default={}),
            force=dict(type="bool", default=False),
            publish=dict(type="bool", default=True),
            image=dict(type="str"),
            created=dict(type="bool", default=True),
            bake_id=dict(type="str"),
            target=dict(type="str"),
            source_image=dict(type="str"),
            source_image_family=dict(type="str"),
            source_image_project=dict(type="str"),
            machine_type=dict(type="str", default="e2-medium"),
            disk_size_gb=dict(type="int"),
            disk_type=dict(type="str", default="pd-balanced"),
            network=dict(type="str", default="default"),
            subnetwork=dict(type="str"),
            external_ip=dict(type="bool", default=True),
            service_account_email=dict(type="str"),
            scopes=dict(type="list", elements="str", default=[SCOPE]),
            ssh_user=dict(type="str", default="bakery"),
            ssh_port=dict(type="int", default=22),
            ssh_timeout=dict(type="int", default=300),
            ssh_key_dir=dict(type="path", default="/tmp"),
            python=dict(type="str", default="/usr/bin/python3"),
            instance=dict(type="str"),
            disk=dict(type="path"),
            disk_sha256=dict(type="str"),
            bucket=dict(type="str"),
            object_name=dict(type="str"),
            keep_object=dict(type="bool", default=False),
            chunk_size_mb=dict(type="int", default=8),
            auth_kind=dict(type="str", choices=["application", "serviceaccount", "accesstoken"]),
            service_account_file=dict(
                type="path", fallback=(env_fallback, [_gcp.ENV_FALLBACKS["service_account_file"]])
            ),
            service_account_contents=dict(
                type="jsonarg",
                no_log=True,
                fallback=(env_fallback, [_gcp.ENV_FALLBACKS["service_account_contents"]]),
            ),
            access_token=dict(
                type="str", no_log=True, fallback=(env_fallback, [_gcp.ENV_FALLBACKS["access_token"]])
            ),
            auth_scopes=dict(type="list", elements="str", default=[SCOPE]),
            api_endpoint=dict(type="str", default=_gcp.DEFAULT_API),
            storage_endpoint=dict(type="str", default=_gcp.DEFAULT_STORAGE),
            timeout=dict(type="int", default=1800),
            retries=dict(type="int", default=5),
            retry_delay=dict(type="float", default=1.0),
        ),
        mutually_exclusive=[
            ("source_image", "source_image_family"),
            ("service_account_file", "service_account_contents"),
        ],
        required_if=[
            ("action", "launch", ("name", "zone")),
            ("action", "launch", ("source_image", "source_image_family"), True),
            ("action", "capture", ("name", "zone", "instance")),
            ("action", "import", ("name", "disk", "bucket")),
            ("action", "cleanup", ("bake_id",)),
            ("action", "verifier", ("zone", "image", "bake_id")),
        ],
        supports_check_mode=True,
    )
    if not _gcp.HAS_GOOGLE_AUTH:
        module.fail_json(msg=missing_required_lib("google-auth"), exception=_gcp.GOOGLE_AUTH_ERROR)
    _module.run(module, lambda m: _gcp.run(m.params, check_mode=m.check_mode))


if __name__ == "__main__":
    main()
