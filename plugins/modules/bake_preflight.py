#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This module is implemented by the action plugin of the same name (plugins/action/bake_preflight.py), which runs
# the checks on the controller, the build host of the plan play; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bake_preflight
short_description: Check the build host for every planned target of a bake, before anything is created
version_added: 0.1.0
description:
  - Runs on the controller, the build host of the plan play, after M(bakery.images.bake_plan) and checks, for
    every target of the plan, what its build needs of this host. Every problem of every target is reported at once, one line each, naming the
    target, the option that asks for it, what is wrong and how to fix it; the module then fails.
  - B(tools) - the commands and files the target's modules run, searched as those modules search them, each
    reported with the Debian package that ships it. Docker targets need C(mmdebstrap) only when the base root
    filesystem is not in the cache. qemu targets need C(qemu-img); made from the base, C(sfdisk), C(mkfs.ext4),
    C(mkfs.vfat), C(mtools), C(grub-mkimage), GRUB for i386-pc and x86_64-efi and C(tar); with
    C(provision=chroot) C(bwrap); with C(provision=vm) C(qemu-system-x86_64), C(ssh), C(ssh-keygen) (and OVMF
    for C(vm.firmware=uefi)); with C(vagrant=true) Vagrant's insecure public key. A vagrant target needs
    C(qemu-img) when the source disk is converted (virtualbox, or a source that is no standalone qcow2).
  - B(engine) - the Docker engine of each docker target answers (its C(docker_host), else E(DOCKER_HOST), else
    the local socket), within O(timeout) seconds. All engines are asked at once.
  - B(disk_space) - what a disk target's build will likely write fits in the free space, summed per file system
    over the output and cache directories of all targets. Each copy of the disk (the raw work disk, each output
    that is not the raw disk itself, the unpacked tree or the builder VM's disk, a vagrant box) counts the base's
    content (its cached tarball, a base image's file, 1 GiB for a base not built yet) plus 1 GiB for what the
    provisioning adds, at most C(disk_size). Short of the upper bound (every copy as large as C(disk_size)) is
    said in the check's message, not refused.
  - B(catalog) - a vagrant target's catalog does not already list its version for its provider with another box
    (unless C(force)); a box that exists with the target's fingerprint and the listed checksum is no clash.
  - B(mirror) - the base's mirror answers (a HEAD of its C(dists/<suite>/InRelease), proxies from E(http_proxy)
    and E(https_proxy)) for a docker or qemu target whose build downloads from it, that is mmdebstrap for a base
    not in the cache and apt-get update before the first provisioner unless the bake's C(package_lists) is V(keep). Mirrors and
    engines are asked at once, within O(timeout) seconds.
  - B(architecture) - a C(bake.base.architecture) (or a docker target's C(platform) on a local engine) whose
    binaries this host cannot run, natively or through a binfmt_misc handler (C(arch-test) decides).
  - What only a build needs does not fail a target whose artifact already exists with its fingerprint; a qemu
    or vagrant target with such a problem is looked up as its C(find) step does (sidecars, no tool runs). Docker
    targets are not looked up (the engine decides).
  - B(credentials), B(region), B(source_ami) - an ami target's credentials are accepted (STS C(GetCallerIdentity)),
    its C(region) and every region of C(regions) exist and are enabled for the account (EC2 C(DescribeRegions)),
    and an instance bake's source AMI resolves (C(source_ami), C(source_ami_filter) or
    C(source_ami_ssm_parameter)) as M(bakery.images.ami_bake) resolves it. An ami target has no bucket (uploads
    use the EBS direct APIs).
  - B(credentials), B(zone), B(source_image), B(bucket) - a gce target's credentials yield an access token, its
    C(zone) exists and is up, an instance bake's C(source_image) or C(source_image_family) resolves, and its
    C(bucket) exists and lets the credentials create, delete and list objects (Cloud Storage C(testIamPermissions),
    which writes nothing).
  - The cloud checks use the parameters the roles give the modules (endpoints, profile, project, credentials
    file, environment fallbacks), call nothing that creates anything, and are bounded (O(timeout) to connect and
    to read, at most one retry per call, all targets at once, 3 x O(timeout) + 1 seconds in all). Credentials that
    fail are one problem; that target's other cloud checks are then skipped.
author:
  - bakery maintainers (@bakery-images)
attributes:
  check_mode:
    support: full
    description: Changes nothing; runs every check in check mode too.
  diff_mode:
    support: none
    description: Reports checks; nothing to diff.
  idempotent:
    support: full
    description: Never changes anything.
  action:
    support: full
    description: Implemented as an action plugin that runs on the controller.
options:
  targets:
    description: The planned targets, C(plan.targets) of the result of M(bakery.images.bake_plan).
    type: list
    elements: dict
    required: true
  timeout:
    description: Seconds each external call (an engine ping, a mirror's C(InRelease), C(arch-test), a cloud API call) may take.
    type: float
    default: 5
  bake:
    description:
      - The bake definition. The plan masks the targets' secret options; their real values are taken from here
        (as the filter P(bakery.images.target_secrets#filter) does) for the checks, and never returned.
    type: dict
  credentials:
    description:
      - The roles' credential variables (C(ami_access_key), C(ami_secret_key), C(ami_session_token)); unset ones
        may be null. Used for the calls only, never returned.
    type: dict
"""

EXAMPLES = r"""
- name: Plan the bake
  bakery.images.bake_plan:
    bake: "{{ bake }}"
  register: planned

- name: Check the build host and the clouds for every target
  bakery.images.bake_preflight:
    targets: "{{ planned.plan.targets }}"
    bake: "{{ bake }}"
    credentials:
      ami_access_key: "{{ ami_access_key | default(none) }}"
      ami_secret_key: "{{ ami_secret_key | default(none) }}"
  register: preflight

- name: Show every check
  ansible.builtin.debug:
    msg: "{{ preflight.summary }}"
"""

RETURN = r"""
targets:
  description: Every target with its checks (also returned when the module fails).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Target name.
      type: str
    type:
      description: Target type.
      type: str
    artifact_found:
      description: Whether its artifact was found, when a problem made the preflight look (else null).
      type: bool
    preflight:
      description: The checks of the target.
      type: list
      elements: dict
      contains:
        check:
          description:
            - V(tools), V(engine), V(mirror), V(disk_space), V(catalog) or V(architecture); for cloud targets
              V(credentials), V(region), V(source_ami), V(zone), V(source_image), V(bucket), V(endpoint) or V(cloud)
              (checks that did not finish in time).
          type: str
        option:
          description: The option that asks for what was checked, with its value.
          type: str
        ok:
          description: Whether the check passed.
          type: bool
        msg:
          description: What was found; for a problem, what is wrong and how to fix it.
          type: str
  sample:
    - name: disk
      type: qemu
      artifact_found: null
      preflight:
        - {check: tools, option: qemu, ok: true, msg: "found: qemu-img, sfdisk, mkfs.ext4, bwrap"}
        - {check: disk_space, option: qemu.disk_size=4G, ok: true, msg: "a build writes about 4.5 GiB: ..."}
problems:
  description: 'One line per problem: C(target <name> (<type>), <option>: <what is wrong>; <how to fix it>).'
  returned: always
  type: list
  elements: str
summary:
  description: One line per check of every target.
  returned: always
  type: list
  elements: str
duration:
  description: Seconds the checks took.
  returned: always
  type: float
msg:
  description: Every problem, or how many checks passed.
  returned: always
  type: str
"""
