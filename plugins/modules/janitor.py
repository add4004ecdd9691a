#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: janitor
short_description: Remove the temporary resources that bakes left behind
version_added: 0.1.0
description:
  - Finds every temporary resource bakery made (tag or label C(bakery-temporary=true), or a work directory
    with the C(.bakery-temporary) marker) that belongs to the bake O(bake_id) and/or is older than
    O(older_than), and removes it. Final artifacts never carry C(bakery-temporary=true) and are never touched.
  - "C(docker): build containers (running ones are killed) and images labelled C(bakery-temporary=true); by
    O(bake_id) also that bake's images without any tag, which a commit killed before tagging leaves."
  - "C(qemu): builder VMs (qemu processes started with C(-name bakery-<bake id>-<target>)), their work
    directories, chroot work directories marked C(.bakery-temporary) and leftover C(.*.partial) files of
    interrupted writes in O(qemu.paths). A C(.partial) file records no bake id: in the directories scanned it
    counts as the bake's when it changed after the bake started; one that a process has open or that changed in
    the last 10 seconds is left alone. Builders' private keys that the ami and gce roles keep in
    C(.bakery-tmp) and C(.bakery-ssh) of the output directory go as well. Where libvirtd runs
    (C(/run/libvirt/libvirt-sock)), the libvirt domains C(bakery-<bake id>-<target>-default) of boxes booted for
    their checks (a vagrant target's C(verify_up)), also shut-off ones, go with their storage, and so do the box
    images vagrant-libvirt uploaded for them (volumes C(bakery-<bake id>-<target>_vagrant_box_image_*)); their age
    is the time in the bake id."
  - "C(aws): EC2 instances, images, snapshots, key pairs and security groups tagged C(bakery-temporary=true)."
  - "C(gce): Compute Engine instances, disks and images labelled C(bakery-temporary=true) (an image is until
    its bake labels it final), and uploaded Cloud Storage objects with that metadata."
  - "C(openstack): Glance images with the property C(bakery_temporary=true) (an upload a killed bake left queued,
    saving or importing, or an image that was never made final)."
  - "C(digitalocean): images tagged C(bakery-temporary) (an import or a snapshot a killed bake left, or an image
    never made final), bakery's disk uploads (C(bakery/<bake id>/)) in the Spaces bucket, and an instance bake's
    droplets (tag C(bakery-temporary)), SSH keys and snapshots not yet tagged (named C(bakery-<bake id>-<target>))."
  - The bake's cleanup play removes its resources with the same functions; the janitor is for what a killed
    bake left. Playbook C(playbooks/janitor.yml) runs this module with a bake definition.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - docker (Python SDK) for the C(docker) backend
  - boto3 for the C(aws) backend
  - google-auth for the C(gce) backend
  - virsh (C(libvirt-clients)) for the libvirt part of the C(qemu) backend, where libvirtd runs
  - openstacksdk for the C(openstack) backend
  - pydo and boto3 for the C(digitalocean) backend
attributes:
  check_mode:
    support: full
    description: Lists what would be removed (state C(would remove)) and removes nothing.
  diff_mode:
    support: none
    description: RV(resources) lists what is removed.
  idempotent:
    support: full
    description: A second run finds nothing left to remove and reports no change.
  action:
    support: full
    description: An action plugin passes the controller's working directory on as O(cwd).
options:
  bake_id:
    description:
      - Remove the temporary resources of this bake (exact match of C(bakery-bake-id)).
      - At least one of O(bake_id) and O(older_than) is required; with both, both must match.
    type: str
  older_than:
    description:
      - Remove temporary resources older than this, a number with a unit C(s), C(m), C(h), C(d) or C(w)
        (V(90s), V(30m), V(6h), V(2d), V(1h30m)).
      - The age is the creation time (container, instance, image, snapshot, disk, object), the C(bakery-created)
        tag of key pairs and security groups, the start of a builder VM, or the modification time of the
        marker of a work directory and of a C(.partial) file. A resource of unknown age is not selected by age.
    type: str
  backends:
    description:
      - The backends to sweep. By default every backend that has something to look at; C(docker) and C(qemu)
        always do, C(aws) and C(gce) when their options or O(bake) name regions or a project, C(openstack) when
        O(openstack) or O(bake) name a cloud, C(digitalocean) when O(digitalocean) or O(bake) name an account or a
        bucket.
      - An unreachable Docker engine is reported in RV(not_swept) unless C(docker) is listed here or O(docker)
        is given; an unreachable cloud endpoint always fails.
    type: list
    elements: str
    choices: [docker, qemu, aws, gce, openstack, digitalocean]
  bake:
    description:
      - A bake definition (the value of C(bake) in a bake file). Its output and cache directories are added to
        O(qemu.paths), the C(docker_host) of its docker targets to the Docker engines, the regions, endpoint
        and profile of its ami targets to the AWS scopes, the project, zone, bucket, endpoints and key file of
        its gce targets to the Compute Engine scopes.
    type: dict
  cwd:
    description:
      - Directory that relative paths (of O(qemu.paths) and of the bake definition) are relative to.
      - The directory ansible-playbook was started in by default, as for the bake itself.
    type: path
  docker:
    description: The Docker engine.
    type: dict
    suboptions:
      docker_host:
        description: The engine's address, such as V(unix:///var/run/docker.sock) or V(tcp://host:2376).
        type: str
      timeout:
        description: Seconds for each Docker API call.
        type: int
        default: 60
  qemu:
    description: Builder VMs and work directories on this host.
    type: dict
    suboptions:
      paths:
        description:
          - Directories to scan for marked work directories and C(.partial) files (a bake's output and cache
            directories); VM work directories named C(bakery-vm-*) in the system's temporary directory are
            always scanned, and so are the running processes.
        type: list
        elements: path
  aws:
    description: An AWS account; credentials come from the standard chain unless given.
    type: dict
    suboptions:
      regions:
        description: Regions to sweep.
        type: list
        elements: str
      endpoint_url:
        description: EC2 endpoint (an EC2-compatible service, or a test double).
        type: str
      profile:
        description: Named AWS profile.
        type: str
      access_key:
        description: AWS access key id (also used for the ami targets of O(bake)).
        type: str
      secret_key:
        description: AWS secret access key.
        type: str
      session_token:
        description: AWS session token.
        type: str
      max_attempts:
        description: Attempts per AWS call (botocore standard retry mode).
        type: int
        default: 5
  openstack:
    description:
      - An OpenStack cloud whose Glance images marked C(bakery_temporary=true) are deleted (an upload of a killed bake,
        queued or saving); connection options as M(bakery.images.openstack_image_bake) takes them.
    type: dict
    suboptions:
      cloud:
        description: Name of a cloud in C(clouds.yaml).
        type: str
      auth:
        description: Authentication options.
        type: dict
      auth_type:
        description: Keystoneauth plugin.
        type: str
      region_name:
        description: Region.
        type: str
      interface:
        description: Endpoint interface.
        type: str
      image_endpoint:
        description: The image service's URL.
        type: str
      validate_certs:
        description: Check TLS certificates.
        type: bool
      ca_cert:
        description: CA bundle.
        type: path
      headers:
        description: HTTP headers sent with every request.
        type: dict
      timeout:
        description: Seconds per call.
        type: int
        default: 300
      retries:
        description: Retries of a call answered with 429 or 5xx.
        type: int
        default: 5
  digitalocean:
    description:
      - A DigitalOcean account whose custom images tagged C(bakery-temporary) are deleted, and a Spaces bucket whose
        uploads under C(bakery/) are; options as M(bakery.images.digitalocean_image_bake) takes them.
    type: dict
    suboptions:
      token:
        description: API token (default C(DIGITALOCEAN_TOKEN) of the environment).
        type: str
      api_url:
        description: The API's URL.
        type: str
      region:
        description: Region of the Spaces bucket.
        type: str
      spaces_bucket:
        description: The Spaces bucket of the uploads.
        type: str
      spaces_region:
        description: The bucket's region (default O(digitalocean.region)).
        type: str
      spaces_endpoint:
        description: The Spaces endpoint.
        type: str
      spaces_access_key:
        description: Spaces access key id.
        type: str
      spaces_secret_key:
        description: Spaces secret key.
        type: str
      timeout:
        description: Seconds per call.
        type: int
        default: 300
      retries:
        description: Retries of a call answered with 429 or 5xx.
        type: int
        default: 5
  gce:
    description: A Compute Engine project; credentials as M(bakery.images.gce_image_bake) takes them.
    type: dict
    suboptions:
      project:
        description: Project id.
        type: str
      zones:
        description: Zones to sweep for instances and disks.
        type: list
        elements: str
      bucket:
        description: Cloud Storage bucket that holds uploaded disks.
        type: str
      auth_kind:
        description: How to authenticate; from the other options by default.
        type: str
        choices: [application, serviceaccount, accesstoken]
      service_account_file:
        description: Service-account key file.
        type: path
      service_account_contents:
        description: Service-account key (JSON).
        type: jsonarg
      access_token:
        description: OAuth2 access token.
        type: str
      api_endpoint:
        description: Compute Engine API endpoint.
        type: str
      storage_endpoint:
        description: Cloud Storage endpoint.
        type: str
      retries:
        description: Retries of a call that failed with 429, 5xx or a broken connection.
        type: int
        default: 5
      retry_delay:
        description: First delay between retries, in seconds (doubled each time).
        type: float
        default: 1.0
seealso:
  - module: bakery.images.docker_image_build
  - module: bakery.images.qemu_vm
  - module: bakery.images.ami_bake
  - module: bakery.images.gce_image_bake
notes:
  - Running without O(bake_id) and O(older_than) is refused, so that no running bake loses its resources.
"""

EXAMPLES = r"""
- name: Remove what the bake 20261127t101500-a1b2c3 left behind, wherever its definition says it worked
  bakery.images.janitor:
    bake_id: 20261127t101500-a1b2c3
    bake: "{{ bake }}"

- name: List the temporary resources older than six hours in two AWS regions and on this host
  bakery.images.janitor:
    older_than: 6h
    backends: [aws, qemu]
    aws:
      regions: [eu-west-1, us-east-1]
    qemu:
      paths: [/srv/bakery/output]
  check_mode: true
  register: leftovers

- name: Sweep a Compute Engine project with a service-account key
  bakery.images.janitor:
    older_than: 1d
    backends: [gce]
    gce:
      project: my-project
      zones: [europe-west1-b]
      bucket: my-bakery-uploads
      service_account_file: /etc/bakery/gce-key.json
"""

RETURN = r"""
resources:
  description: Every temporary resource the selector selected, with what happened to it.
  returned: always
  type: list
  elements: dict
  contains:
    backend:
      description: V(docker), V(qemu), V(aws) or V(gce).
      type: str
    kind:
      description: >-
        V(container), V(image), V(vm), V(vm workdir), V(workdir), V(partial file), V(key file), V(instance),
        V(snapshot), V(key pair), V(security group), V(disk) or V(object).
      type: str
    id:
      description: Container or image id, pid, path, EC2 or GCE id, object URL.
      type: str
    name:
      description: A readable name.
      type: str
    bake_id:
      description: The bake the resource belongs to, when it records one.
      type: str
    target:
      description: The bake target, when the resource records it.
      type: str
    created:
      description: Creation time (UTC, ISO 8601), when known.
      type: str
    location:
      description: Engine, region, zone, host directory or bucket.
      type: str
    state:
      description: V(removed), V(would remove) (check mode) or V(failed).
      type: str
    error:
      description: Why the removal failed.
      type: str
      returned: when state is failed
  sample:
    - backend: docker
      kind: container
      id: 3f6c0e...
      name: bakery-20261127t101500-a1b2c3-docker
      bake_id: 20261127t101500-a1b2c3
      target: docker
      created: "2026-11-27T10:15:07Z"
      location: local engine
      state: removed
counts:
  description: Number of resources per state (removed, would_remove, failed).
  returned: always
  type: dict
backends:
  description: The backends swept.
  returned: always
  type: list
  elements: str
not_swept:
  description: Scopes not swept (backend, scope, reason), such as an unreachable Docker engine nobody asked for.
  returned: always
  type: list
  elements: dict
errors:
  description: Scopes that could not be swept (an unreachable cloud endpoint, say).
  returned: always
  type: list
  elements: str
selector:
  description: The bake id and the age in seconds that selected.
  returned: always
  type: dict
msg:
  description: What happened, in one line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _janitor, _module


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            bake_id=dict(type="str"),
            older_than=dict(type="str"),
            backends=dict(type="list", elements="str", choices=list(_janitor.BACKENDS)),
            bake=dict(type="dict"),
            cwd=dict(type="path"),
            docker=dict(
                type="dict",
                options=dict(docker_host=dict(type="str"), timeout=dict(type="int", default=60)),
            ),
            qemu=dict(type="dict", options=dict(paths=dict(type="list", elements="path"))),
            aws=dict(
                type="dict",
                options=dict(
                    regions=dict(type="list", elements="str"),
                    endpoint_url=dict(type="str"),
                    profile=dict(type="str"),
                    access_key=dict(type="str", no_log=True),
                    secret_key=dict(type="str", no_log=True),
                    session_token=dict(type="str", no_log=True),
                    max_attempts=dict(type="int", default=5),
                ),
            ),
            openstack=dict(
                type="dict",
                options=dict(
                    cloud=dict(type="str"),
                    auth=dict(type="dict", no_log=True),
                    auth_type=dict(type="str"),
                    region_name=dict(type="str"),
                    interface=dict(type="str"),
                    image_endpoint=dict(type="str"),
                    validate_certs=dict(type="bool"),
                    ca_cert=dict(type="path"),
                    headers=dict(type="dict", no_log=True),
                    timeout=dict(type="int", default=300),
                    retries=dict(type="int", default=5),
                ),
            ),
            digitalocean=dict(
                type="dict",
                options=dict(
                    token=dict(type="str", no_log=True),
                    api_url=dict(type="str"),
                    region=dict(type="str"),
                    spaces_bucket=dict(type="str"),
                    spaces_region=dict(type="str"),
                    spaces_endpoint=dict(type="str"),
                    spaces_access_key=dict(type="str", no_log=True),
                    spaces_secret_key=dict(type="str", no_log=True),
                    timeout=dict(type="int", default=300),
                    retries=dict(type="int", default=5),
                ),
            ),
            gce=dict(
                type="dict",
                options=dict(
                    project=dict(type="str"),
                    zones=dict(type="list", elements="str"),
                    bucket=dict(type="str"),
                    auth_kind=dict(type="str", choices=["application", "serviceaccount", "accesstoken"]),
                    service_account_file=dict(type="path"),
                    service_account_contents=dict(type="jsonarg", no_log=True),
                    access_token=dict(type="str", no_log=True),
                    api_endpoint=dict(type="str"),
                    storage_endpoint=dict(type="str"),
                    retries=dict(type="int", default=5),
                    retry_delay=dict(type="float", default=1.0),
                ),
            ),
        ),
        required_one_of=[("bake_id", "older_than")],
        supports_check_mode=True,
    )
    # the secret options of the bake's targets (an openstack target's auth and headers) are never shown
    module.no_log_values.update(_janitor.bake_secrets(module.params.get("bake")))
    _module.run(module, lambda mod: _janitor.sweep(mod.params, mod.check_mode))


if __name__ == "__main__":
    main()
