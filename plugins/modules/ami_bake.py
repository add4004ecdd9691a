#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ami_bake
short_description: Bake AWS AMIs from a builder instance or a local raw disk, idempotent and leak-proof
version_added: 0.1.0
description:
  - Makes Amazon Machine Images with boto3. Every AWS call uses botocore's C(standard) retry mode and
    fails with a message naming the call, the region and AWS's reason; every wait is bounded by
    O(wait_timeout) and tolerates EC2's eventual consistency (not found right after create).
  - C(action=launch) starts a builder instance from a source AMI (O(source_ami), O(source_ami_filter) or
    O(source_ami_ssm_parameter)) with a temporary ed25519 key pair and security group, IMDSv2 required,
    waits until it runs and SSH answers, and returns the connection for C(add_host) in RV(builder).
    C(action=capture) stops the provisioned builder and creates the image from it.
  - C(action=verifier) starts an instance of the new, still temporary image O(image_id) for the bake's checks
    (a target's C(verify_instance)), as V(launch) starts the builder (the same instance options) with its own
    key pair and security group (named C(bakery-<bake id>-<target>-verify), tagged as the builder's) and its
    own private key file, O(key_file) with C(.verify) appended; it returns the connection in RV(verifier).
    V(cleanup) removes it with the rest of the bake.
  - C(action=upload) registers an AMI from a local raw disk (for example one made by
    M(bakery.images.qemu_image)) through the EBS direct APIs. The disk is read and sent block by block
    (512 KiB blocks with SHA256 checksums, O(upload_workers) in flight), all-zero blocks and holes are
    skipped, and memory stays bounded however large the disk is.
  - C(capture) and C(upload) then publish the image (C(action=publish) alone does it for an existing one),
    that is copies to O(regions), launch permissions, deprecation time. Only then does the image get its final
    tags (O(tags) and C(bakery-fingerprint)); a half-made image is never tagged final. With O(publish=false)
    they leave the new image temporary in O(region) until C(action=publish) with O(image_id) publishes it (the
    bake does this for a target with checks, C(verify), once they passed).
  - Idempotent by the C(bakery-fingerprint) tag, a sha256 over the bake's O(inputs), the source (AMI id or
    disk) and the options that decide the image content. When an available image with it exists in
    O(region), nothing is launched or uploaded and the result is C(changed=false); O(force=true) bakes again.
  - Every temporary resource (instance, key pair, security group, image and snapshots not yet final,
    copies) is tagged C(bakery-bake-id), C(bakery-temporary=true) and O(run_tags). A failing step removes
    what the action created; C(action=cleanup) removes everything of a bake id, also from a later run.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - boto3 and botocore on the host that runs the module
extends_documentation_fragment:
  - bakery.images.cleanup
attributes:
  check_mode:
    support: full
    description: Resolves the source and looks for the fingerprint; reports what would be made and why, creates nothing.
  diff_mode:
    support: none
    description: Reports the changed inputs in RV(changed_inputs) instead of a diff.
  idempotent:
    support: full
    description: An available image with the same fingerprint is reused; publishing adds only what is missing.
options:
  action:
    description: What to do.
    type: str
    choices: [find, launch, capture, upload, publish, verifier, cleanup]
    required: true
  region:
    description: AWS region of the build and of the main image.
    type: str
    required: true
  profile:
    description: Named profile of the shared AWS configuration files.
    type: str
  access_key:
    description: AWS access key id; the standard credential chain (environment, profile, instance role) by default.
    type: str
    aliases: [aws_access_key_id]
  secret_key:
    description: AWS secret access key.
    type: str
    aliases: [aws_secret_access_key]
  session_token:
    description: AWS session token of temporary credentials.
    type: str
    aliases: [aws_session_token]
  endpoint_url:
    description: Endpoint for every AWS service used (EC2, EBS, SSM), for example a C(moto_server) in tests.
    type: str
  max_attempts:
    description: Attempts per AWS call in botocore's standard retry mode (throttling and transient errors).
    type: int
    default: 5
  wait_timeout:
    description: Seconds to wait for an instance state, an image or a snapshot.
    type: int
    default: 1800
  name:
    description:
      - AMI name (3 to 128 letters, digits, spaces and C(( ) [ ] . / - ' @ _)). Required but for V(cleanup).
      - An existing image with this name in a region the bake writes to fails the bake before anything is
        created, unless O(force_deregister=true).
    type: str
  description:
    description: AMI description.
    type: str
  tags:
    description: Tags of the final image and its snapshots, in every region.
    type: dict
    default: {}
  run_tags:
    description: Tags added to every temporary resource (instance, volumes, key pair, security group, snapshots).
    type: dict
    default: {}
  inputs:
    description:
      - Input digests computed by the bake plan; part of the fingerprint.
      - Without them, the fingerprint of an V(upload) includes the sha256 of O(disk) (the whole disk is read once).
    type: dict
    default: {}
  force:
    description: Bake even when an image with the same fingerprint exists.
    type: bool
    default: false
  publish:
    description:
      - With V(false), V(capture) and V(upload) leave the new image temporary (tagged C(bakery-temporary=true),
        not copied, not shared; no lookup finds it, and C(action=cleanup) of the bake removes it) until
        C(action=publish) with O(image_id).
    type: bool
    default: true
  image_id:
    description:
      - For V(verifier), the image to start the instance from.
      - For V(publish), the temporary image of this bake (the C(image_id) of RV(image) of V(capture) or V(upload) with
        O(publish=false)) to publish; the fingerprint is computed from O(disk) or O(source_ami_id) as the
        action that made it computed it. An image that is final already is converged as a found one.
    type: str
  snapshot_ids:
    description:
      - For V(publish) with O(image_id), snapshots of the image that describe_images may not list (the
        uploaded snapshot, the C(snapshot_id) of RV(snapshot) of V(upload)); they are tagged final with it.
    type: list
    elements: str
    default: []
  bake_id:
    description: Id of the bake; tags every temporary resource. Required for V(launch), V(capture), V(upload), V(cleanup).
    type: str
  target:
    description: Name of the bake target (C(bake/target)); tags resources and finds the previous image to name changed inputs.
    type: str
  source_ami:
    description: Id of the source AMI of V(launch). Give one of O(source_ami), O(source_ami_filter) and O(source_ami_ssm_parameter).
    type: str
  source_ami_filter:
    description: Find the source AMI of V(launch); no match, or several without O(source_ami_filter.most_recent), fails.
    type: dict
    suboptions:
      owners:
        description: Owner account ids or aliases (V(amazon), V(self), V(136693071363) for Debian).
        type: list
        elements: str
      name:
        description: Name pattern, for example V(debian-12-amd64-*).
        type: str
      architecture:
        description: V(x86_64) or V(arm64).
        type: str
      filters:
        description: Further C(describe_images) filters, name to value or list of values.
        type: dict
      most_recent:
        description: Take the newest of several matches.
        type: bool
        default: false
  source_ami_ssm_parameter:
    description: SSM parameter holding the source AMI id, for example V(/aws/service/debian/release/12/latest/amd64).
    type: str
  source_ami_id:
    description: Resolved source AMI id, the C(image_id) of RV(source_ami) that V(launch) returned (for V(find) and V(publish)).
    type: str
  instance_type:
    description: Instance type of the builder.
    type: str
    default: t3.micro
  subnet_id:
    description: Subnet of the builder; the default VPC's default subnet otherwise.
    type: str
  vpc_id:
    description: VPC of the temporary security group when no O(subnet_id) is given; the default VPC otherwise.
    type: str
  ssh_cidrs:
    description:
      - Source CIDRs allowed to reach SSH on the builder through the temporary security group.
      - The default admits any address; the builder accepts only the temporary ed25519 key. Narrow it to the
        controller's address range where you can.
    type: list
    elements: str
    default: [0.0.0.0/0]
  iam_instance_profile:
    description: IAM instance profile of the builder, by name or ARN.
    type: str
  root_volume_size:
    description: Root volume size in GiB; the source's for V(launch), the disk's (rounded up) for V(upload).
    type: int
  root_volume_type:
    description: Root volume type.
    type: str
    default: gp3
  root_volume_encrypted:
    description: Encrypt the builder's root volume (and so the image's snapshot).
    type: bool
    default: false
  root_volume_kms_key_id:
    description: KMS key for O(root_volume_encrypted); the account's default EBS key otherwise.
    type: str
  root_device_name:
    description: Root device name of an uploaded image.
    type: str
    default: /dev/xvda
  user_data:
    description: User data of the builder.
    type: str
  spot:
    description: Run the builder as a one-time spot instance. It is captured with a reboot instead of a stop.
    type: bool
    default: false
  imds_v2:
    description: Require IMDSv2 on the builder, and mark uploaded images as IMDSv2-only.
    type: bool
    default: true
  ssh_user:
    description: SSH user of the source AMI (V(admin) for Debian, V(ec2-user) for Amazon Linux, V(ubuntu)).
    type: str
    default: ec2-user
  ssh_port:
    description: SSH port of the builder.
    type: int
    default: 22
  ssh_interface:
    description: Which address of the builder is the C(host) of RV(builder).
    type: str
    choices: [public_ip, private_ip, public_dns, private_dns]
    default: public_ip
  ssh_timeout:
    description:
      - Seconds to wait for the builder's SSH banner after it runs. V(0) does not wait, for builders reached
        another way (and for tests against an emulator, whose instances do not boot).
    type: int
    default: 600
  key_file:
    description:
      - Where V(launch) writes the temporary private key (mode 0600); V(verifier) writes its own to this path with
        C(.verify) appended. V(cleanup) removes both.
    type: path
  instance_id:
    description: The builder instance to capture.
    type: str
  disk:
    description: Raw disk image to upload (V(upload)); a qcow2 image is refused.
    type: path
  upload_workers:
    description: Blocks in flight during an upload.
    type: int
    default: 8
  architecture:
    description: Architecture of an uploaded image.
    type: str
    choices: [x86_64, arm64, i386]
    default: x86_64
  boot_mode:
    description: Boot mode of an uploaded image.
    type: str
    choices: [legacy-bios, uefi, uefi-preferred]
  ena_support:
    description: Mark an uploaded image as supporting ENA networking.
    type: bool
    default: true
  regions:
    description: Regions to copy the image to, as names or as C({region, kms_key_id}) to encrypt the copy.
    type: list
    elements: raw
    default: []
  launch_permissions:
    description: Who may launch the image (added to, never removed from, what the image has).
    type: dict
    suboptions:
      user_ids:
        description: AWS account ids.
        type: list
        elements: str
      group_names:
        description: Groups; V(all) makes the image public.
        type: list
        elements: str
      organization_arns:
        description: AWS Organizations ARNs.
        type: list
        elements: str
      organizational_unit_arns:
        description: Organizational unit ARNs.
        type: list
        elements: str
  deprecate_at:
    description: Deprecation time of the image in every region (ISO 8601, UTC).
    type: str
  force_deregister:
    description: Deregister (with their snapshots) older images holding O(name) before the new one is created.
    type: bool
    default: false
notes:
  - Credentials given as parameters are C(no_log); prefer the environment or a profile.
  - The EBS direct APIs need C(ebs:StartSnapshot), C(ebs:PutSnapshotBlock) and C(ebs:CompleteSnapshot).
seealso:
  - name: EBS direct APIs
    description: Write snapshots block by block.
    link: https://docs.aws.amazon.com/ebs/latest/userguide/ebs-accessing-snapshot.html
"""

EXAMPLES = r"""
- name: Launch a builder from the newest Debian 12 AMI
  bakery.images.ami_bake:
    action: launch
    region: eu-west-1
    name: web-2026-11-27
    bake_id: "{{ bake_id }}"
    target: web/ami
    source_ami_filter:
      owners: ["136693071363"]
      name: debian-12-amd64-*
      architecture: x86_64
      most_recent: true
    ssh_user: admin
    ssh_cidrs: [203.0.113.0/24]
    key_file: /tmp/bakery-web.key
  register: ami_launch

- name: Capture it, copy to a second region and share with an account
  bakery.images.ami_bake:
    action: capture
    region: eu-west-1
    name: web-2026-11-27
    bake_id: "{{ bake_id }}"
    target: web/ami
    instance_id: "{{ ami_launch.instance.instance_id }}"
    regions: [us-east-1]
    launch_permissions:
      user_ids: ["123456789012"]
    tags:
      team: web

- name: Upload a raw disk as an AMI
  bakery.images.ami_bake:
    action: upload
    region: eu-west-1
    name: web-disk-2026-11-27
    bake_id: "{{ bake_id }}"
    disk: output/web.raw
    boot_mode: uefi

- name: Start an instance of the new image for its checks
  bakery.images.ami_bake:
    action: verifier
    region: eu-west-1
    bake_id: "{{ bake_id }}"
    target: web/ami
    image_id: "{{ ami_captured.image.image_id }}"
    ssh_user: admin
    ssh_cidrs: [203.0.113.0/24]
    key_file: /tmp/bakery-web.key
  register: ami_verifier

- name: Remove whatever a bake left behind
  bakery.images.ami_bake:
    action: cleanup
    region: eu-west-1
    bake_id: 20261127t101500-a1b2c3
    regions: [us-east-1]
"""

RETURN = r"""
created:
  description:
    - Whether this call sent a request that may make a resource (also in a failure's result); a cleanup given
      V(false) for every call of a target has nothing to remove.
  type: bool
  returned: always
found:
  description: Whether an image with the fingerprint existed.
  returned: find, launch, capture, upload, publish
  type: bool
built:
  description: Whether this run made the image.
  returned: find, launch, capture, upload, publish
  type: bool
fingerprint:
  description: The image's fingerprint (tag C(bakery-fingerprint)).
  returned: find, launch, capture, upload, publish
  type: str
inputs:
  description: The digests the fingerprint is made of.
  returned: find, launch, capture, upload, publish
  type: dict
changed_inputs:
  description: Inputs that differ from the previous image of O(target) (all of them when there is none).
  returned: find, launch, capture, upload
  type: list
  elements: str
image:
  description: The image in O(region) (image_id, name, region, state, snapshot_ids, size_gib, tags, ...).
  returned: when an image exists or was made
  type: dict
images:
  description: Image id per region.
  returned: capture, upload, publish
  type: dict
source_ami:
  description: The resolved source AMI (image_id, name).
  returned: launch, and find of an instance bake
  type: dict
instance:
  description:
    - The builder (V(launch)) or the instance of the image (V(verifier)) (instance_id, image_id, state, public_ip,
      private_ip, public_dns, private_dns, spot).
  returned: launch, when a builder was started; verifier
  type: dict
verifier:
  description:
    - Connection of the instance V(verifier) started, for the bake's checks (connection, host, port, user,
      private_key, known_hosts, ssh_common_args).
  returned: verifier, not in check mode
  type: dict
  sample:
    connection: ssh
    host: 203.0.113.7
    port: 22
    user: admin
    private_key: /srv/out/.bakery-tmp/20261127t101500-a1b2c3-web.key.verify
    known_hosts: /srv/out/.bakery-tmp/20261127t101500-a1b2c3-web.key.verify.known_hosts
    ssh_common_args: -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/srv/out/.bakery-tmp/20261127t101500-a1b2c3-web.key.verify.known_hosts
builder:
  description: Connection of the builder for C(add_host) (connection, host, port, user, private_key, ssh_common_args).
  returned: launch, when a builder was started
  type: dict
public_key:
  description:
    - The OpenSSH public key line of the builder's temporary key pair (derived from the private key EC2 handed
      out), for the image hygiene checks (M(bakery.images.image_hygiene) O(bakery.images.image_hygiene#module:builder_key)).
  returned: launch, when a builder was started
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB... bakery-20261127t101500-a1b2c3-web-ami
key_pair:
  description: Name of the temporary key pair.
  returned: launch, when a builder was started; verifier
  type: str
security_group:
  description: Id of the temporary security group.
  returned: launch, when a builder was started; verifier
  type: str
snapshot:
  description: The uploaded snapshot (snapshot_id, volume_size_gib, blocks_total, blocks_sent, blocks_zero).
  returned: upload, when a disk was uploaded
  type: dict
removed:
  description: What cleanup removed, by kind (instances, images, snapshots, key_pairs, security_groups, files).
  returned: cleanup
  type: dict
duration:
  description: Seconds the capture or upload took.
  returned: when an image was made
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _aws, _module

STRINGS = dict(type="list", elements="str")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=list(_aws.ACTIONS)),
            region=dict(type="str", required=True),
            profile=dict(type="str"),
            access_key=dict(type="str", aliases=["aws_access_key_id"], no_log=True),
            secret_key=dict(type="str", aliases=["aws_secret_access_key"], no_log=True),
            session_token=dict(type="str", aliases=["aws_session_token"], no_log=True),
            endpoint_url=dict(type="str"),
            max_attempts=dict(type="int", default=5),
            wait_timeout=dict(type="int", default=1800),
            name=dict(type="str"),
            description=dict(type="str"),
            tags=dict(type="dict", default={}),
            run_tags=dict(type="dict", default={}),
            inputs=dict(type="dict", default={}),
            force=dict(type="bool", default=False),
            publish=dict(type="bool", default=True),
            image_id=dict(type="str"),
            snapshot_ids=dict(type="list", elements="str", default=[]),
            created=dict(type="bool", default=True),
            bake_id=dict(type="str"),
            target=dict(type="str"),
            source_ami=dict(type="str"),
            source_ami_filter=dict(
                type="dict",
                options=dict(
                    owners=STRINGS,
                    name=dict(type="str"),
                    architecture=dict(type="str"),
                    filters=dict(type="dict"),
                    most_recent=dict(type="bool", default=False),
                ),
            ),
            source_ami_ssm_parameter=dict(type="str"),
            source_ami_id=dict(type="str"),
            instance_type=dict(type="str", default="t3.micro"),
            subnet_id=dict(type="str"),
            vpc_id=dict(type="str"),
            ssh_cidrs=dict(type="list", elements="str", default=["0.0.0.0/0"]),
            iam_instance_profile=dict(type="str"),
            root_volume_size=dict(type="int"),
            root_volume_type=dict(type="str", default="gp3"),
            root_volume_encrypted=dict(type="bool", default=False),
            root_volume_kms_key_id=dict(type="str"),
            root_device_name=dict(type="str", default="/dev/xvda"),
            user_data=dict(type="str"),
            spot=dict(type="bool", default=False),
            imds_v2=dict(type="bool", default=True),
            ssh_user=dict(type="str", default="ec2-user"),
            ssh_port=dict(type="int", default=22),
            ssh_interface=dict(
                type="str",
                default="public_ip",
                choices=["public_ip", "private_ip", "public_dns", "private_dns"],
            ),
            ssh_timeout=dict(type="int", default=600),
            key_file=dict(type="path", no_log=False),
            instance_id=dict(type="str"),
            disk=dict(type="path"),
            upload_workers=dict(type="int", default=8),
            architecture=dict(type="str", default="x86_64", choices=["x86_64", "arm64", "i386"]),
            boot_mode=dict(type="str", choices=["legacy-bios", "uefi", "uefi-preferred"]),
            ena_support=dict(type="bool", default=True),
            regions=dict(type="list", elements="raw", default=[]),
            launch_permissions=dict(
                type="dict",
                options=dict(
                    user_ids=STRINGS,
                    group_names=STRINGS,
                    organization_arns=STRINGS,
                    organizational_unit_arns=STRINGS,
                ),
            ),
            deprecate_at=dict(type="str"),
            force_deregister=dict(type="bool", default=False),
        ),
        required_if=[
            ("action", "launch", ["name", "bake_id", "key_file"]),
            ("action", "capture", ["name", "bake_id", "instance_id"]),
            ("action", "upload", ["name", "bake_id", "disk"]),
            ("action", "publish", ["name"]),
            ("action", "verifier", ["bake_id", "image_id", "key_file"]),
            ("action", "find", ["name"]),
            ("action", "cleanup", ["bake_id"]),
        ],
        required_together=[("access_key", "secret_key")],
        supports_check_mode=True,
    )
    _module.run(module, lambda mod: _aws.run_action(dict(mod.params), mod.check_mode))


if __name__ == "__main__":
    main()
