#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: packer_import
short_description: Import a Packer template (JSON or HCL2) as a bake definition
version_added: 0.2.0
description:
  - Reads a legacy JSON template, a C(.pkr.hcl) file or a directory of C(.pkr.hcl) files, evaluates what Packer
    evaluates before a build (variables with their defaults, C(PKR_VAR_*), C(*.auto.pkrvars.hcl), var files and
    O(vars); C(env()); locals, also of other locals; sources with build-level overrides; C(only)/C(except);
    C(dynamic) blocks; the common functions; the Go templates of JSON templates) and maps it to a bake definition.
  - Writes into O(output_dir) the definition C(<name>.yml) (commented where a choice was made), the files its
    provisioners need (a file provisioner's C(content)), and a report as C(<name>.report.md) and
    C(<name>.report.json) that says of every source, provisioner, post-processor and data source whether it is
    mapped, partly mapped (what was dropped and why) or not mapped (why, and what to do instead).
  - Scripts, uploads, playbooks and manifests are referenced by path, resolved as Packer resolves them (from
    O(working_dir)) and written relative to the definition. Values only a build knows (C(build.ID),
    C({{ .HTTPIP }})) are reported, not guessed. The value of a sensitive variable is never written; the
    definition reads it from C(PKR_VAR_<name>) when the bake runs.
  - Nothing is written when the template cannot be read or evaluated (a syntax error names the file, line and
    column; an undefined variable names itself and where it is used).
author:
  - bakery maintainers (@bakery-images)
requirements:
  - python-hcl2 >= 8.1 (for HCL2 templates)
attributes:
  check_mode:
    support: full
    description: Reads and maps the template and returns the report; writes nothing.
  diff_mode:
    support: full
    description: Shows the bake definition before and after.
  idempotent:
    support: full
    description: Writes only the files whose content changes; importing the same template again changes nothing.
options:
  template:
    description: The Packer template, a C(.json) or C(.pkr.hcl) file, or a directory of C(.pkr.hcl) files.
    type: path
    required: true
  var_files:
    description: Var files (C(.json) or C(.pkrvars.hcl)), as Packer's C(-var-file), in order; relative to O(working_dir).
    type: list
    elements: path
    default: []
  vars:
    description: Variable values, as Packer's C(-var name=value); they win over var files.
    type: dict
    default: {}
  only:
    description: Sources to import (C(TYPE.NAME), C(NAME) or C(BUILD.TYPE.NAME); shell patterns), as Packer's C(-only).
    type: list
    elements: str
    default: []
  except:
    description: Sources to leave out, as Packer's C(-except).
    type: list
    elements: str
    default: []
  output_dir:
    description: Where to write the definition, its files and the report; a new directory C(<name>-bakery) beside the template by default.
    type: path
  name:
    description: The bake's name (and the definition's file name); the build's name or the template's by default.
    type: str
  working_dir:
    description: The directory C(packer build) runs in, where relative paths of scripts and uploads start; the template's directory by default.
    type: path
"""

EXAMPLES = r"""
- name: Import a Packer template
  bakery.images.packer_import:
    template: packer/web.pkr.hcl
    var_files: [packer/prod.pkrvars.hcl]
    vars:
      version: "1.4.0"
    output_dir: bakes/web
  register: imported

- name: Show what was mapped
  ansible.builtin.debug:
    msg: "{{ imported.report_lines }}"
"""

RETURN = r"""
definition:
  description: Path of the bake definition.
  returned: always
  type: str
output_dir:
  description: The directory written into.
  returned: always
  type: str
files:
  description: Every file of the import (definition, provisioner files, reports), written or not.
  returned: always
  type: list
  elements: str
written:
  description: The files written by this run (their content changed); empty in check mode.
  returned: always
  type: list
  elements: str
fully_mapped:
  description: Whether every source, provisioner, post-processor and data source is mapped, and no base is proposed.
  returned: always
  type: bool
report:
  description: The report (as C(<name>.report.json)); C(items) has one entry per source, provisioner, post-processor and data source.
  returned: always
  type: dict
report_lines:
  description: The report, one line per item.
  returned: always
  type: list
  elements: str
bake:
  description: The bake definition (the variable C(bake)).
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.bakery.images.plugins.module_utils import _module, _packer_hcl, _packer_map


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            template=dict(type="path", required=True),
            var_files=dict(type="list", elements="path", default=[]),
            vars=dict(type="dict", default={}),
            only=dict(type="list", elements="str", default=[]),
            **{"except": dict(type="list", elements="str", default=[])},
            output_dir=dict(type="path"),
            name=dict(type="str"),
            working_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not _packer_hcl.HAS_HCL2 and not params["template"].endswith(".json"):
        module.fail_json(msg=missing_required_lib("python-hcl2"), exception=traceback.format_exc())

    def action(module: AnsibleModule) -> dict:
        return _packer_map.import_template(
            params["template"],
            var_files=params["var_files"],
            values=params["vars"],
            only=params["only"],
            except_=params["except"],
            output_dir=params["output_dir"],
            name=params["name"],
            cwd=params["working_dir"],
            check_mode=module.check_mode,
        )

    def with_diff(module: AnsibleModule) -> dict:
        result = action(module)
        diff = result.pop("diff")
        if module._diff and result["changed"]:
            result["diff"] = diff
        return result

    _module.run(module, with_diff)


if __name__ == "__main__":
    main()
