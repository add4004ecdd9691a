# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which facts a builder gathers before its roles run: Ansible's ``min`` subset when no role of the target could
read a fact outside it, else all of them, so that roles see what they would see after a full gathering.

``setup`` with every subset takes twice as long as with ``min`` in a TCG guest (about 7 s against 5 s) and costs
a build container a second: the hardware, network and virtual subsets read ``/proc``, ``/sys``, ``ip`` and the
block devices. Most roles read only the distribution, the package and service managers, the host name and the
user (all in ``min``). A role's files (its tasks, handlers, templates, variables and meta, and those of the roles
it depends on or includes by a fixed name) are read as text for the names a role can reach facts by:
``ansible_<fact>``, ``ansible_facts.<fact>``, ``ansible_facts['<fact>']``. Any other fact, a name put together
at run time (``'ansible_' ~ name``, ``ansible_facts[name]``), ``ansible_facts`` or ``hostvars[host]`` or
``vars`` used whole, an ``ansible_`` name Ansible does not define (a role's own variable, or an interface) and a
role included by a templated name make the builder gather everything: a miss costs a second, a wrong guess would
change what a role sees. Written here, not taken from a library: no library reads Jinja for the names a role
uses (ansible-lint parses tasks, not the expressions in them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# the facts of setup's ``min`` subset (ansible-core 2.19 on Linux; read with gather_subset=min), without
# the ``ansible_`` prefix
MIN_FACTS = frozenset(
    """
    apparmor architecture cmdline date_time distribution distribution_file_parsed distribution_file_path
    distribution_file_variety distribution_major_version distribution_minor_version distribution_release
    distribution_version dns domain effective_group_id effective_user_id env fips fqdn hostname kernel
    kernel_version local lsb machine machine_id nodename os_family pkg_mgr proc_cmdline python python_version
    real_group_id real_user_id selinux selinux_python_present service_mgr system system_capabilities
    system_capabilities_enforced user_dir user_gecos user_gid user_id user_shell user_uid userspace_architecture
    userspace_bits
    """.split()
)

# the facts of the other subsets a role may name, by the subset that gathers them (read with
# gather_subset=!all,!min,<subset>; those of min left out)
SUBSET_FACTS = {
    "hardware": frozenset(
        """
        bios_date bios_vendor bios_version board_asset_tag board_name board_serial board_vendor board_version
        chassis_asset_tag chassis_serial chassis_vendor chassis_version device_links devices flags form_factor
        lvm memfree_mb memory_mb memtotal_mb mounts processor processor_cores processor_count processor_nproc
        processor_threads_per_core processor_vcpus product_name product_serial product_uuid product_version
        swapfree_mb swaptotal_mb system_vendor uptime_seconds
        """.split()
    ),
    # an interface's own fact (ansible_eth0) is no name known here: it makes the builder gather everything
    "network": frozenset(
        "all_ipv4_addresses all_ipv6_addresses default_ipv4 default_ipv6 interfaces locally_reachable_ips".split()
    ),
    "virtual": frozenset(
        "virtualization_role virtualization_tech_guest virtualization_tech_host virtualization_type".split()
    ),
    "chroot": frozenset(("is_chroot",)),
}
FACT_SUBSET = {fact: subset for subset, facts in SUBSET_FACTS.items() for fact in facts}
# facts that modules set when a role runs them (package_facts, service_facts, getent), not setup
MODULE_FACTS = frozenset(("packages", "services"))
MODULE_FACT_PREFIXES = ("getent_",)

# the names Ansible itself defines with the ``ansible_`` prefix that are not facts: magic variables and the
# connection's, become's and interpreter's variables
MAGIC_VARIABLES = frozenset(
    """
    facts check_mode diff_mode forks inventory_sources limit play_batch play_hosts play_hosts_all play_name
    play_role_names playbook_python role_name role_names collection_name dependent_role_names parent_role_names
    parent_role_paths run_tags skip_tags search_path config_file verbosity version failed_task failed_result loop
    loop_var index_var managed host port user password connection timeout pipelining private_key_file
    remote_tmp async_dir module_compression python_interpreter shell_type shell_executable become
    become_method become_user become_password become_flags become_exe eda ssh_common_args ssh_extra_args
    ssh_args scp_extra_args sftp_extra_args ssh_executable ssh_pipelining ssh_host_key_checking ssh_retries
    ssh_private_key_file ssh_pass ssh_user ssh_port ssh_host ssh_timeout ssh_transfer_method collections
    """.split()
)
# variable families of connection plugins and interpreters (ansible_docker_extra_env, ansible_perl_interpreter)
MAGIC_PREFIXES = (
    "ssh_",
    "become_",
    "docker_",
    "chroot_",
    "winrm_",
    "psrp_",
    "paramiko_",
    "httpapi_",
    "netconf_",
)
MAGIC_SUFFIXES = ("_interpreter",)

# directories of a role that hold no template Ansible evaluates (copied as they are, or run as code)
SKIPPED_DIRS = frozenset(("files", "library", "module_utils", "tests", "molecule", ".git"))
# a larger file is no template or task list (read anyway when smaller: a template's name can end in anything)
MAX_TEXT = 4 * 1024 * 1024

PREFIXED = re.compile(r"\bansible_([A-Za-z0-9_]*)")
ATTRIBUTE = re.compile(r"\bansible_facts\s*\.\s*([A-Za-z0-9_]+)")
KEY = re.compile(r"""\bansible_facts\s*\[\s*(['"])([A-Za-z0-9_]+)\1\s*\]""")
# ansible_facts followed by something that is not a fixed attribute or key (a whole use, or a key computed)
FACTS_OTHERWISE = re.compile(
    r"""\bansible_facts\b(?!\s*\.\s*[A-Za-z_])(?!\s*\[\s*['"][A-Za-z0-9_]+['"]\s*\])"""
)
# hostvars[host] and vars used whole: every fact is in them (hostvars[host]['x'], hostvars[host].x are not)
WHOLE = re.compile(r"""\bhostvars\s*\[[^\]]*\](?!\s*[\[.])|(?<![\w.])vars\s*(?=\||\}\}|\))""")
# the vars lookup with a name that is not written out
VARS_LOOKUP = re.compile(
    r"""\b(?:lookup|query|q)\s*\(\s*(['"])(?:ansible\.builtin\.)?vars\1\s*,\s*(?=[^'"\s])"""
)


def _is_fact_name(name: str) -> bool:
    return (
        name not in MAGIC_VARIABLES
        and not name.startswith(MAGIC_PREFIXES)
        and not name.endswith(MAGIC_SUFFIXES)
    )


def _subset_of(fact: str) -> str | None:
    """The subset that gathers *fact* ("min" for min's and the facts modules set), or None: not known."""
    if fact in MIN_FACTS or fact in MODULE_FACTS or fact.startswith(MODULE_FACT_PREFIXES):
        return "min"
    return FACT_SUBSET.get(fact)


def subsets_for(text: str) -> tuple[set[str], str | None]:
    """The subsets beyond ``min`` whose facts *text* (a file of a role) names, and why it could read any fact
    (then every subset is needed), or None."""
    needed: set[str] = set()

    def need(fact: str, how: str) -> str | None:
        subset = _subset_of(fact)
        if subset is None:
            return "it reads %s, a fact of no subset known here" % how
        if subset != "min":
            needed.add(subset)
        return None

    for match in FACTS_OTHERWISE.finditer(text):
        return needed, "%r uses ansible_facts whole or by a computed key" % (
            text[match.start() : match.end() + 20].strip()
        )
    for match in ATTRIBUTE.finditer(text):
        why = need(match.group(1), "ansible_facts.%s" % match.group(1))
        if why:
            return needed, why
    for match in KEY.finditer(text):
        why = need(match.group(2), "ansible_facts[%r]" % match.group(2))
        if why:
            return needed, why
    for match in PREFIXED.finditer(text):
        name = match.group(1)
        if not name.strip("_"):
            # 'ansible_' ~ name: a name put together (ansible_ followed by anything else is prose)
            if text[match.end() : match.end() + 1] in ("'", '"'):
                return needed, "it puts a variable's name together from 'ansible_'"
            continue
        if name == "facts" or not _is_fact_name(name):
            continue
        why = need(name, "ansible_%s" % name)
        if why:
            return needed, why
    match = WHOLE.search(text)
    if match:
        return needed, "it uses %s whole" % match.group(0).strip()
    if VARS_LOOKUP.search(text):
        return needed, "it looks a variable up by a name it computes (the vars lookup)"
    return needed, None


def facts_until(
    provisioners: Sequence[Mapping[str, Any]],
    error_provisioners: Sequence[Mapping[str, Any]],
    chosen: list[str] | None = None,
) -> int:
    """How many of a builder's first *provisioners* a bake may resume after (the per-step cache) and still need
    the builder's facts: the position after its last role entry (Ansible gives a role's tasks the facts; a
    playbook gathers its own, and the other kinds cannot name one: the plan templates the definition on the
    controller). A builder that resumes at or after it, or runs no role, has no use for facts and gathers none (a
    setup run costs a build container 0.5 s, a TCG VM 5 s). Every position plus one (always) when an error
    provisioner is a role, or the bake chose its ``gather_subset``."""
    always = len(provisioners) + 1
    if chosen or any(_is_role(entry) for entry in error_provisioners):
        return always
    until = 0
    for position, entry in enumerate(provisioners, 1):
        if _is_role(entry):
            until = position
    return until


def _is_role(entry: Mapping[str, Any]) -> bool:
    return entry.get("kind", "role") == "role"


def role_files(path: str) -> Iterable[str]:
    """The files of the role at *path* that Ansible reads as templates or task lists."""
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            yield os.path.join(root, name)


def role_subsets(
    path: str, included: Callable[[str, str], list[str]]
) -> tuple[set[str], str | None, list[str]]:
    """The subsets beyond ``min`` whose facts the role at *path* names, why it could read any fact (None: only
    those), and the roles its files name (*included(file, text)*: the roles a task file includes or imports by name, its
    meta dependencies; a templated name keeps its ``{{``)."""
    needed: set[str] = set()
    roles: list[str] = []
    for file in role_files(path):
        try:
            if os.path.getsize(file) > MAX_TEXT:
                continue
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            continue  # no text: no template
        found, why = subsets_for(text)
        needed |= found
        if why:
            return needed, "%s: %s" % (os.path.relpath(file, path), why), roles
        if file.endswith((".yml", ".yaml")):
            roles += included(file, text)
    return needed, None, roles


def gather_subset(
    entries: Iterable[Mapping[str, Any]],
    role_facts: Callable[[str], tuple[set[str], str | None]] | None,
    chosen: list[str] | None = None,
) -> tuple[list[str], str]:
    """The ``gather_subset`` of a builder (or verifier) whose provisioners (or checks) are *entries*, and why:
    *chosen* (``bake.gather_subset``) when given; else ``min`` and the subsets whose facts the role entries name
    (*role_facts(name)*: those subsets, and why the role could read any fact, or None), in their files or in the
    variables the entry gives them; ``all`` when one could read any fact. Without *role_facts*, ``all``. Entries
    of other kinds see no fact of this play (a playbook gathers its own)."""
    if chosen:
        return list(chosen), "bake.gather_subset"
    if role_facts is None:
        return ["all"], "the roles were not read"
    needed: set[str] = set()
    for entry in entries:
        if entry["kind"] != "role":
            continue
        found, why = subsets_for(json.dumps(entry.get("vars") or {}, sort_keys=True))
        if why:
            return ["all"], "the variables of role %s: %s" % (entry["role"], why)
        needed |= found
        found, why = role_facts(str(entry["role"]))
        if why:
            return ["all"], "role %s: %s" % (entry["role"], why)
        needed |= found
    if needed:
        return ["min", *sorted(needed)], "the roles name facts of %s" % ", ".join(sorted(needed))
    return ["min"], "no role names a fact outside the min subset"
