#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: builder_script
short_description: Write commands or scripts into a builder and run them, in one call (the shell provisioner)
version_added: 0.4.0
description:
  - Writes O(inline) commands, or the controller's O(scripts), into the directory O(directory) of the host (a
    builder), runs each, in order, with O(interpreter) and its path as last argument, and removes the directory,
    also when a command fails. One module call instead of one task for the directory, one per file, one per
    run and one for the removal.
  - The directory (mode C(0700)) and its files (C(0700)) belong to the user the module runs as (its C(become_user));
    a directory of that name left by an interrupted run is replaced. The inline commands are in a file named
    C(inline), the scripts in files named C(<index>-<basename>).
  - Each command runs as C(ansible.builtin.command) runs one - the task's environment, the same working directory,
    C($VARS) and C(~) in the arguments expanded - in order, up to the first that fails (its exit code is not in
    O(valid_exit_codes)); as in Packer's shell provisioner, the commands after it do not run (RV(not_run)). Each
    outcome is an item of RV(results).
  - The module's action plugin reads the scripts on the controller, as bytes, and sends them, and the inline
    commands, base64 encoded with the module's arguments (no copy through the connection).
author:
  - bakery maintainers (@bakery-images)
attributes:
  check_mode:
    support: full
    description: Says what would run; writes and runs nothing.
  diff_mode:
    support: none
    description: Commands have no before and after.
  idempotent:
    support: none
    description: The commands run every time (C(changed=true)).
options:
  directory:
    description: The directory in the host the commands are written to, and removed with them.
    type: path
    required: true
  inline:
    description: The inline commands, a text (the file C(inline)). Exactly one of O(inline) and O(scripts).
    type: str
  scripts:
    description:
      - Script files on the controller, run in this order. Exactly one of O(inline) and O(scripts).
      - The action plugin reads them and passes them on as O(script_contents).
    type: list
    elements: path
  script_contents:
    description:
      - The commands as the action plugin passes them on (from O(inline) or O(scripts)) - give those instead.
    type: list
    elements: dict
    suboptions:
      name:
        description: The file name in O(directory).
        type: str
        required: true
      data:
        description: The script's bytes, base64 encoded.
        type: str
        required: true
  interpreter:
    description: The program and its arguments that run each file (its path is added as last argument).
    type: list
    elements: str
    default: [/bin/sh, -e]
  valid_exit_codes:
    description: The exit codes of a command that are no failure.
    type: list
    elements: int
    default: [0]
  fail_on_exit_code:
    description:
      - Whether a command that exits with a code not in O(valid_exit_codes) fails the task. Without, the caller
        judges the codes in RV(results) (the shell provisioner's C(expect_disconnect), where a reboot may have
        killed the commands).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Run two scripts of the controller in the builder, as user baker
  bakery.images.builder_script:
    directory: /tmp/bakery-provisioner-3
    scripts:
      - scripts/users.sh
      - scripts/packages.sh
    interpreter: [/bin/bash, -eu]
  environment:
    DEBIAN_FRONTEND: noninteractive
  become: true
  become_user: baker
"""

RETURN = r"""
results:
  description:
    - One item per command, in the order they ran - C(bakery_run) (its file name), C(cmd), C(rc), C(stdout),
      C(stderr), C(stdout_lines), C(stderr_lines), C(start), C(end), C(delta), C(msg) (V(non-zero return code)
      when C(rc) is not 0) and C(failed).
  returned: success and failure
  type: list
  elements: dict
  sample:
    - bakery_run: inline
      cmd: [/bin/sh, -e, /tmp/bakery-provisioner-3/inline]
      rc: 0
      stdout: hello
      stderr: ""
      failed: false
not_run:
  description: The commands (file names) that did not run because one before them failed.
  returned: success and failure
  type: list
  elements: str
  sample: [2-cleanup.sh]
removed:
  description: Whether O(directory) is gone.
  returned: success and failure
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _scripts
from ansible_collections.bakery.images.plugins.module_utils._module import run


def _run(module: AnsibleModule) -> dict:
    params = module.params
    if params["scripts"]:
        module.fail_json(
            msg="scripts are read on the controller, by the module's action plugin: run it as a task"
        )
    result = _scripts.run_scripts(
        params["directory"],
        params["inline"],
        params["script_contents"] or [],
        params["interpreter"],
        params["valid_exit_codes"],
        params["fail_on_exit_code"],
        lambda argv: module.run_command(argv, encoding=None),
        module.check_mode,
    )
    if result.pop("failed"):
        module.fail_json(**result)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            directory=dict(type="path", required=True),
            inline=dict(type="str", no_log=True),
            scripts=dict(type="list", elements="path"),
            script_contents=dict(
                type="list",
                elements="dict",
                options=dict(
                    name=dict(type="str", required=True),
                    data=dict(type="str", required=True, no_log=True),
                ),
            ),
            interpreter=dict(type="list", elements="str", default=["/bin/sh", "-e"]),
            valid_exit_codes=dict(type="list", elements="int", default=[0]),
            fail_on_exit_code=dict(type="bool", default=True),
        ),
        required_one_of=[("inline", "scripts", "script_contents")],
        mutually_exclusive=[("inline", "scripts", "script_contents")],
        supports_check_mode=True,
    )
    run(module, _run)


if __name__ == "__main__":
    main()
