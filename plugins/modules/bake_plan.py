#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This module is implemented by the action plugin of the same name (plugins/action/bake_plan.py),
# which runs on the controller; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bake_plan
short_description: Expand a bake definition into one planned entry per output target
version_added: 0.1.0
description:
  - Runs on the controller. Validates each target's type-specific options against the argument spec of
    the role of that type (for example C(bakery.images.docker)), checks names the engines would reject,
    resolves the provisioning roles and digests their content (files and dependencies, never mtimes),
    and returns the plan of the bake. Creates nothing.
  - Each planned target carries the C(inputs) of its fingerprint (base rootfs identity, role content,
    role variables); the target's module adds its own (base image id, Dockerfile context, options).
  - Used by role C(bakery.images.bake). The bake definition itself is validated against that role's argument
    spec (here too, so that the module can be called on its own); unknown keys, and a list or dictionary given
    for a string, fail.
  - Files the targets build from are checked here (targets build on this host), for example a Dockerfile
    build's context and its Dockerfile (unknown instructions, no C(FROM)) or a qemu target's C(base_image).
author:
  - bakery maintainers (@bakery-images)
attributes:
  check_mode:
    support: full
    description: Never changes anything.
  diff_mode:
    support: none
    description: Returns the plan; nothing to diff.
  idempotent:
    support: full
    description: The same definition and role content give the same inputs.
  action:
    support: full
    description: Implemented as an action plugin that runs on the controller.
options:
  bake:
    description: The bake definition (see role C(bakery.images.bake)).
    type: dict
    required: true
  only:
    description: Target names or types to plan (list or comma-separated string); all by default.
    type: raw
  except:
    description: Target names or types to leave out (list or comma-separated string).
    type: raw
  force:
    description: V(true) to rebuild every target, or the names of targets to rebuild.
    type: raw
    default: false
  bake_id:
    description: Id of this run; a new one by default.
    type: str
  fail_fast:
    description:
      - Whether a failing target stops the others (they are not captured; cleanup still runs).
      - The C(fail_fast) key of the bake definition by default.
    type: bool
  on_error:
    description:
      - What a failure does to the temporary resources. V(cleanup) removes them all. V(keep) leaves the
        builders of the failed targets running, for debugging, and the report says how to reach each and
        how to remove it later. V(abort) stops the bake at the first failure (as O(fail_fast)) and removes
        nothing, for CI that cleans up with the janitor (C(playbooks/janitor.yml)).
      - The C(on_error) key of the bake definition by default, else V(cleanup).
    type: str
    choices: [cleanup, keep, abort]
"""

EXAMPLES = r"""
- name: Plan a bake
  bakery.images.bake_plan:
    bake: "{{ bake }}"
    only: docker
  register: planned

- name: Show the targets
  ansible.builtin.debug:
    msg: "{{ planned.plan.targets | map(attribute='name') }}"
"""

RETURN = r"""
plan:
  description: The plan.
  returned: success
  type: dict
  contains:
    name:
      description: Bake name.
      type: str
    bake_id:
      description: Id of this run; labels and tags every temporary resource.
      type: str
    output_dir:
      description: Absolute output directory.
      type: str
    manifest:
      description: Path of C(bake-manifest.json).
      type: str
    targets:
      description: Selected targets (name, type, host, builder, force, options, inputs, rootfs, provisioners).
      type: list
      elements: dict
    skipped_targets:
      description: Names of targets left out by O(only)/O(except).
      type: list
      elements: str
    fail_fast:
      description: Whether a failing target stops the others (always with O(on_error=abort)).
      type: bool
    on_error:
      description: What a failure does to the temporary resources (V(cleanup), V(keep) or V(abort)).
      type: str
"""
