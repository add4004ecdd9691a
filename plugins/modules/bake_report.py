#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This module is implemented by the action plugin of the same name (plugins/action/bake_report.py),
# which runs on the controller; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bake_report
short_description: Write a bake's manifest and summarise its artifacts
version_added: 0.1.0
description:
  - Runs on the controller at the end of a bake. Writes C(bake-manifest.json), one entry per target
    (id or path, tags, size, architecture, fingerprint, the bake id that built it, build seconds), atomically and only
    when its content changed, and returns a readable summary and the failures of the run.
  - The manifest is deterministic. An artifact that was not rebuilt keeps the entry of the bake that made
    it, so a bake that changes nothing reports C(changed=false). Targets not selected by this run keep
    their earlier entries.
  - Used by role C(bakery.images.bake).
author:
  - bakery maintainers (@bakery-images)
attributes:
  check_mode:
    support: full
    description: Returns the summary; writes nothing.
  diff_mode:
    support: full
    description: Shows the manifest before and after.
  idempotent:
    support: full
    description: Writes only when the manifest's content changes.
  action:
    support: full
    description: Implemented as an action plugin that runs on the controller.
options:
  plan:
    description: The plan returned by M(bakery.images.bake_plan).
    type: dict
    required: true
  results:
    description:
      - One entry per planned target, with its C(target), C(type), C(artifact) and C(failure), and the C(downloads)
        of its file provisioners (recorded in the manifest entry of its artifact).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Write the manifest
  bakery.images.bake_report:
    plan: "{{ bake_planned }}"
    results: "{{ bake_results }}"
  register: report

- name: Show the summary
  ansible.builtin.debug:
    msg: "{{ report.summary }}"
"""

RETURN = r"""
manifest:
  description: Path of the manifest, or null when there is nothing to record.
  returned: always
  type: str
summary:
  description: Readable lines, one per target, then where the manifest is.
  returned: always
  type: list
  elements: str
failed_targets:
  description: Names of the targets that failed.
  returned: always
  type: list
  elements: str
cancelled_targets:
  description: Names of the targets that were not captured because another failed and fail_fast is set.
  returned: always
  type: list
  elements: str
failures:
  description: One message naming each failed target, its phase, task, builder and last output lines.
  returned: always
  type: str
"""
