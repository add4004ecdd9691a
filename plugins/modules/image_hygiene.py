#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_hygiene
short_description: Check (and generalize) a machine image for secrets, identity and residue of its build
version_added: 0.2.0
description:
  - Checks the root directory O(root) of an image (C(/) on a builder VM about to be captured, or an unpacked tree)
    for what must not leave in a disk or cloud image. Each check has a name; O(skip) leaves checks out.
  - V(ssh_host_keys) - no C(/etc/ssh/ssh_host_*) files (every machine makes its own).
  - V(machine_id) - C(/etc/machine-id) empty (or V(uninitialized)) or absent; C(/var/lib/dbus/machine-id) absent
    or a link to it.
  - V(builder_key) - the builder's public key O(builder_key) in no C(authorized_keys) or C(authorized_keys2)
    of C(/root) and C(/home/*); passes without O(builder_key).
  - V(shell_history) - no non-empty history file (C(.bash_history), C(.zsh_history), C(.python_history),
    C(.lesshst), C(.mysql_history), C(.psql_history), C(.sqlite_history), C(.viminfo), fish's, ...) in C(/root)
    or a C(/home/*).
  - V(apt_lists) - nothing in C(/var/lib/apt/lists) but C(lock) and C(partial/), no C(.deb) in
    C(/var/cache/apt/archives), no C(/var/cache/apt/*.bin); not applicable with O(package_lists=keep).
  - V(provisioning_leftovers) - none of what bakery puts into a tree while it is provisioned - its
    C(/usr/sbin/policy-rc.d) and the build host's C(/etc/resolv.conf) (both recognised by bakery's marker
    line), the stand-in commands (C(/usr/local/lib/bakery), links to it in C(/usr/local/sbin), C(/var/lib/bakery-standin)).
  - V(core_dumps) - no C(core) or C(core.<pid>) file in C(/), C(/root) or C(/tmp), nothing in C(/var/crash)
    or C(/var/lib/systemd/coredump).
  - V(var_log_size) - C(/var/log) holds at most O(var_log_max) (allocated bytes, hard links once).
  - V(world_writable) - no regular file writable by others outside C(/tmp) and C(/var/tmp).
  - Symbolic links are never followed out of O(root); C(/proc), C(/sys), C(/dev) and C(/run) are not looked at.
    Nothing is changed, unless O(generalize=true).
  - With O(generalize=true), the image is first made any machine's, then checked - the builder's key
    O(builder_key) leaves every C(authorized_keys) and C(authorized_keys2) of C(/root) and C(/home/*) (rewritten
    in place, other keys kept; a file left empty goes), C(/etc/ssh/ssh_host_*) go, C(/etc/machine-id) is emptied,
    C(/var/lib/dbus/machine-id) goes (unless it is a link to C(/etc/machine-id)), and when O(root) is the running
    system (V(/)) and it has cloud-init, C(cloud-init clean --logs) runs.
author:
  - bakery maintainers (@bakery-images)
attributes:
  check_mode:
    support: full
    description:
      - The checks only read; they run in check mode too. O(generalize) then changes nothing and reports in
        RV(generalized) what it would remove; the checks do not count those findings.
  diff_mode:
    support: none
    description: Nothing is shown as a diff; RV(generalized) names what O(generalize) removed.
  idempotent:
    support: full
    description: The checks change nothing; O(generalize) changes something (C(changed)) only when it finds something to remove.
options:
  root:
    description: The root directory of the image.
    type: path
    default: /
  skip:
    description: Names of checks not to run (their status is V(skipped)).
    type: list
    elements: str
    choices: [ssh_host_keys, machine_id, builder_key, shell_history, apt_lists, provisioning_leftovers, core_dumps,
              var_log_size, world_writable]
    default: []
  var_log_max:
    description: The most C(/var/log) may hold, such as V(64M) (binary units) or a number of bytes.
    type: str
    default: 64M
  builder_key:
    description: The builder's public key (an OpenSSH public key line), for the V(builder_key) check.
    type: str
  package_lists:
    description: V(keep) when the bake keeps the package lists (C(bake.package_lists)); V(apt_lists) is then not applicable.
    type: str
    choices: [refresh, keep]
    default: refresh
  generalize:
    description:
      - Before the checks, remove the builder's key O(builder_key) from the C(authorized_keys) files, the SSH host
        keys and the machine id, and clean cloud-init's state on the running system (see above).
    type: bool
    default: false
  reproducible:
    description:
      - Before the checks, remove what provisioning leaves that differs from one run to the next and that no role
        makes on purpose (apt and dpkg logs, their C(-old) backups and binary caches, ldconfig's C(aux-cache),
        random seeds; not shell histories, which the V(shell_history) check reports; the list with the reason for
        each is C(VARYING_PATHS) in C(plugins/module_utils/_reproducible.py)); on the running system (O(root=/))
        the journal and C(/tmp) stay.
    type: bool
    default: false
notes:
  - Roles C(bakery.images.qemu) (O(root=/) in a builder VM before it powers off), C(bakery.images.ami) and
    C(bakery.images.gce) (on the builder instance before it is captured) run it with O(generalize=true); a disk
    provisioned in a chroot gets the same checks from M(bakery.images.qemu_image).
seealso:
  - module: bakery.images.qemu_image
"""

EXAMPLES = r"""
- name: Remove the builder's key and the machine's identity, then check the builder before it is captured
  bakery.images.image_hygiene:
    generalize: true
    builder_key: "{{ lookup('file', 'builder.pub') }}"
    var_log_max: 32M
  become: true

- name: Check an unpacked tree, leaving out a check
  bakery.images.image_hygiene:
    root: /srv/trees/web
    skip: [world_writable]
  register: hygiene
"""

RETURN = r"""
hygiene:
  description:
    - One result per check, in the order of the list above, also when the module fails.
    - C(name), C(status) (V(passed), V(failed) or V(skipped)), C(ok) (false only when failed), C(count) (findings in
      all), C(findings) (the first 20 paths, as the image sees them), C(detail) (why skipped, or the size of
      C(/var/log)), C(fix) (how to fix a failed check).
  returned: always
  type: list
  elements: dict
  sample:
    - {name: ssh_host_keys, status: failed, ok: false, count: 1, findings: [/etc/ssh/ssh_host_ed25519_key],
       detail: "", fix: "remove them (rm -f /etc/ssh/ssh_host_*) ..."}
    - {name: apt_lists, status: skipped, ok: true, count: 0, findings: [],
       detail: "not applicable: the bake keeps the package lists", fix: ""}
passed:
  description: Whether every check passed or was skipped.
  returned: always
  type: bool
reproducible:
  description: The paths O(reproducible) removed (in check mode, would remove), relative to O(root).
  returned: with O(reproducible=true)
  type: list
  elements: str
  sample: [var/log/dpkg.log, var/log/apt/history.log]
generalized:
  description:
    - What O(generalize) removed (in check mode, would remove), as image paths by check name - C(builder_key) (the
      files the key left), C(ssh_host_keys), C(machine_id) (emptied or removed) - and C(cloud_init) (whether
      C(cloud-init clean --logs) ran).
  returned: with O(generalize=true), also when a check failed
  type: dict
  sample:
    builder_key: [/home/admin/.ssh/authorized_keys]
    ssh_host_keys: [/etc/ssh/ssh_host_ed25519_key, /etc/ssh/ssh_host_ed25519_key.pub]
    machine_id: [/etc/machine-id]
    cloud_init: false
msg:
  description: A summary; when a check failed, every finding of every failed check.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _hygiene, _reproducible
from ansible_collections.bakery.images.plugins.module_utils._module import run
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


def check(module: AnsibleModule) -> dict:
    params = module.params
    extra: dict = {}
    fixed: list[str] = []
    if params["reproducible"]:
        live = os.path.realpath(params["root"]) == "/"
        extra["reproducible"] = _reproducible.normalise_tree(params["root"], live, module.check_mode)
    if params["generalize"]:
        live = os.path.realpath(params["root"]) == "/"
        removed = _hygiene.generalize(params["root"], params["builder_key"], live, module.check_mode)
        extra.update(generalized=removed, changed=any(removed.values()))
        fixed = _hygiene.generalized_paths(removed) if module.check_mode else []
    results = _hygiene.check(params["root"], params, fixed)
    if not _hygiene.passed(results):
        raise BakeryError(
            _hygiene.failure_message(results, params["root"]), hygiene=results, passed=False, **extra
        )
    checked = [r["name"] for r in results if r["status"] == "passed"]
    extra.setdefault("changed", False)
    extra["changed"] = extra["changed"] or bool(extra.get("reproducible"))
    return dict(
        hygiene=results,
        passed=True,
        msg="hygiene: %d checks passed, %d skipped" % (len(checked), len(results) - len(checked)),
        **extra,
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/"),
            skip=dict(type="list", elements="str", default=[], choices=list(_hygiene.CHECKS)),
            var_log_max=dict(type="str", default="64M"),
            builder_key=dict(type="str", no_log=False),
            package_lists=dict(type="str", default="refresh", choices=list(_hygiene.PACKAGE_LISTS)),
            generalize=dict(type="bool", default=False),
            reproducible=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    run(module, check)


if __name__ == "__main__":
    main()
