# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the bake plan: resolves roles and target specs, then calls module_utils._plan."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import yaml
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.release import __version__ as ansible_version
from ansible.utils.collection_loader._collection_finder import _get_collection_role_path

from ansible_collections.bakery.images.plugins.module_utils import (
    _facts,
    _manifest,
    _plan,
    _provisioners,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    digest_file,
    digest_tree,
    digest_value,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

ROLES_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "roles"))


# libyaml's loader where PyYAML has it: the role specs are read once per target and kind (fresh objects each time:
# the validator puts their defaults into the values it returns), and the pure-Python loader took 45 ms for the bake
# role's alone, libyaml's 3 ms
SPEC_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _role_spec(role: str) -> dict[str, Any]:
    path = os.path.join(ROLES_DIR, role, "meta", "argument_specs.yml")
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=SPEC_LOADER)["argument_specs"]["main"]["options"]


def target_spec(kind: str) -> dict[str, Any]:
    """The options a target of *kind* takes: ``bakery_target.options`` of the target role's spec."""
    return _role_spec(kind)["bakery_target"]["options"]["options"]["options"]


def bake_spec() -> dict[str, Any]:
    """The keys of a bake definition: option ``bake`` of role bakery.images.bake's spec."""
    return _role_spec("bake")["bake"]["options"]


def secret_options(kind: str) -> list[list[str]]:
    """Paths of a target type's secret options: those its role's argument spec marks ``no_log``."""
    return _plan.secret_paths(target_spec(kind))


def validate_target(kind: str, options: Any, where: str) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise BakeryError("%s must be a dictionary of %s target options" % (where, kind))
    spec = target_spec(kind)
    validated = validate(spec, options, where)
    # sub-options left unset stay out (the validator fills them with None, which the role's own validation
    # at include time would then check against their choices)
    return {
        name: _without_unset(value, spec[name]["options"])
        if isinstance(value, dict) and isinstance(spec.get(name), dict) and spec[name].get("options")
        else value
        for name, value in validated.items()
    }


def _without_unset(values: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        sub = spec.get(key) or {}
        out[key] = (
            _without_unset(value, sub["options"]) if isinstance(value, dict) and sub.get("options") else value
        )
    return out


def validate_bake(bake: Any) -> dict[str, Any]:
    """The definition checked against the bake role's spec, with its defaults.

    The role validates it too when it is included, but this module can be called on its own, and the
    plan must work on the validated values (a list given for a string is an error here, not a string).
    Target type options are left as given: validate_target checks them against their role's spec.
    """
    if not isinstance(bake, dict):
        raise BakeryError("bake must be a dictionary (the bake definition), not %s" % _type_name(bake))
    # the kinds of provisioners first: the spec's own message for an unknown one would not list the kinds
    _provisioners.check_kinds(bake.get("provisioners"), "bake.provisioners")
    _provisioners.check_kinds(bake.get("error_provisioners"), "bake.error_provisioners")
    _provisioners.check_kinds(bake.get("verify"), "bake.verify")
    targets = bake.get("targets")
    # the spec check below names a targets that is not a list
    for index, target in enumerate(targets if isinstance(targets, list) else []):
        if isinstance(target, dict):
            _provisioners.check_kinds(target.get("provisioners"), "bake.targets[%d].provisioners" % index)
            _provisioners.check_kinds(target.get("verify"), "bake.targets[%d].verify" % index)
    return validate(bake_spec(), bake, "bake")


def definition_dir(bake: Any) -> str | None:
    """The directory of the file the bake definition came from (``-e @file``, a vars file), when Ansible
    knows it: the definition's controller paths (scripts, uploads) are relative to it."""
    try:
        from ansible._internal._datatag._tags import Origin
    except ImportError:  # an ansible-core without data tags: the working directory
        return None
    origin = Origin.get_tag(bake)
    path = getattr(origin, "path", None)
    return os.path.dirname(os.path.abspath(path)) if path and os.path.isfile(path) else None


# what a playbook can use beside it, besides its roles: each is part of a playbook entry's fingerprint
PLAYBOOK_DIRS = (
    "group_vars",
    "host_vars",
    "vars",
    "files",
    "templates",
    "tasks",
    "handlers",
    "library",
    "module_utils",
    "filter_plugins",
    "lookup_plugins",
    "action_plugins",
)
TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers")
ROLE_ACTIONS = {
    prefix + action
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for action in ("include_role", "import_role")
}


def read_playbook(path: str, seen: set[str] | None = None) -> dict[str, Any]:
    """What a playbook entry needs to know of a user's playbook: its plays' ``hosts:`` patterns, its files
    (with those it imports) and the roles its plays name (``roles:``, ``include_role``/``import_role`` with
    a fixed name). A playbook that does not parse, or is no list of plays, is refused here, before anything
    is created."""
    seen = set() if seen is None else seen
    found: dict[str, Any] = {"hosts": [], "files": [path], "roles": []}
    if path in seen:
        return found
    seen.add(path)
    try:
        with open(path, encoding="utf-8") as handle:
            plays = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise BakeryError("playbook %s cannot be read: %s" % (path, exc)) from None
    if not isinstance(plays, list):
        raise BakeryError("playbook %s is not a list of plays" % path)
    for play in plays:
        if not isinstance(play, dict):
            raise BakeryError("playbook %s: a play is a dictionary, not %r" % (path, play))
        imported = play.get("import_playbook") or play.get("ansible.builtin.import_playbook")
        if isinstance(imported, str):
            if "{{" in imported:
                # a templated import cannot be followed before the run: it may match the builder
                found["hosts"].append("all")
                continue
            inner = read_playbook(os.path.join(os.path.dirname(path), imported), seen)
            for key in ("hosts", "files", "roles"):
                found[key] += [item for item in inner[key] if item not in found[key]]
            continue
        hosts = play.get("hosts")
        found["hosts"].append(hosts if isinstance(hosts, (str, list)) else "")
        for role in play.get("roles") or []:
            name = role.get("role") or role.get("name") if isinstance(role, dict) else role
            if isinstance(name, str) and "{{" not in name and name not in found["roles"]:
                found["roles"].append(name)
        for key in TASK_LISTS:
            for name in _task_roles(play.get(key) or []):
                if name not in found["roles"]:
                    found["roles"].append(name)
    return found


def _task_roles(tasks: Any, templated: bool = False) -> list[str]:
    """The roles that tasks (and their blocks) include or import by a fixed name (*templated*: by any name)."""
    names = []
    for task in tasks if isinstance(tasks, list) else []:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            names += _task_roles(task.get(key), templated)
        for action in ROLE_ACTIONS & set(task):
            args = task[action]
            name = args.get("name") if isinstance(args, dict) else args
            if isinstance(name, str) and (templated or "{{" not in name):
                names.append(name)
    return names


def _meta_dependencies(data: Any) -> list[str]:
    """The role names a role's meta/main.yml lists as its dependencies (templated names too)."""
    names = []
    for dep in (data.get("dependencies") if isinstance(data, dict) else None) or []:
        name = dep.get("role") or dep.get("name") if isinstance(dep, dict) else dep
        if isinstance(name, str):
            names.append(name)
    return names


def _included_roles(path: str, text: str) -> list[str]:
    """The roles a role's file *path* (its content *text*) names: its meta dependencies (meta/main.yml), or
    those a task list includes or imports (templated names too)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if os.path.basename(os.path.dirname(path)) == "meta":
        return _meta_dependencies(data)
    return _task_roles(data, templated=True) if isinstance(data, list) else []


def hosts_match(patterns: list[Any], host: str, groups: list[str]) -> bool:
    """Whether a play with one of *patterns* as its ``hosts:`` would run on *host*, in *groups* (and ``all``),
    as Ansible's own inventory matches patterns (``a:b``, ``a:&b``, ``!a``, ``*``, ``~regex``). A templated
    pattern cannot be known before the run: it counts as matching."""
    from ansible import constants as C
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    inventory = InventoryManager(DataLoader(), sources=[])
    for group in groups:
        inventory.add_group(group)
        inventory.add_host(host, group=group)
    inventory.reconcile_inventory()
    mismatch = C.HOST_PATTERN_MISMATCH
    # a pattern naming no builder is what this function answers, not a warning to print
    C.HOST_PATTERN_MISMATCH = "ignore"
    try:
        for pattern in patterns:
            text = ",".join(str(item) for item in pattern) if isinstance(pattern, list) else str(pattern)
            if "{{" in text:
                return True
            if text and host in [found.name for found in inventory.get_hosts(pattern)]:
                return True
    finally:
        C.HOST_PATTERN_MISMATCH = mismatch
    return False


def validate(spec: dict[str, Any], values: dict[str, Any], where: str) -> dict[str, Any]:
    """*values* checked against a role argument spec; every problem in one message prefixed by *where*."""
    spec = _strip_docs(spec)
    messages = _strict_strings(spec, values, where)
    # the last names of the options those messages name (bake.targets[0] -> targets)
    named = {re.sub(r"\[\d+\]$", "", m.split(" ", 1)[0]).rsplit(".", 1)[-1] for m in messages}
    result = ArgumentSpecValidator(spec).validate(values)
    errors = result.errors.errors
    for error in errors:
        kind = type(error).__name__
        text = _plain(str(error))
        if kind == "UnsupportedError":
            text = "unsupported option %s" % text
        # left out: the validator's words for an option a message above already names, and what its parsing of
        # a value that is no dictionary adds ("dictionary requested, could not parse JSON or key=value", once
        # per value, without naming the option)
        if set(re.findall(r"(?:option|argument|value of) '([^']+)'", text)) & named:
            continue
        if kind in ("NoLogError", "ElementError") and (messages or len(errors) > 1):
            continue
        messages.append(text)
    # the messages above name their options from the top (bake.targets[0]): from below *where* instead
    messages = [m[len(where) + 1 :] if m.startswith(where + ".") else m for m in messages]
    if messages:
        raise BakeryError("%s: %s" % (where, "; ".join(messages)))
    return result.validated_parameters


def _strict_strings(spec: dict[str, Any], values: Any, where: str) -> list[str]:
    """Options of type str given a list or a dictionary (the validator would quietly make a string of them)."""
    if not isinstance(values, dict):
        return []
    found = []
    for name, option in spec.items():
        value = values.get(name)
        here = "%s.%s" % (where, name)
        if option.get("type", "str") == "str" and isinstance(value, (list, dict)):
            found.append("%s must be a string, not a %s" % (here, _type_name(value)))
        elif value is not None and option.get("type") == "dict" and not isinstance(value, dict):
            found.append("%s must be a dictionary, not a %s" % (here, _type_name(value)))
        elif (
            value is not None
            and option.get("type") == "list"
            and option.get("elements") == "dict"
            and not isinstance(value, list)
        ):
            found.append("%s must be a list of dictionaries, not a %s" % (here, _type_name(value)))
        elif option.get("type") == "list" and option.get("elements") == "dict" and isinstance(value, list):
            found += [
                "%s[%d] must be a dictionary, not a %s" % (here, index, _type_name(item))
                for index, item in enumerate(value)
                if not isinstance(item, dict)
            ]
        elif (
            option.get("type") == "list"
            and option.get("elements", "str") == "str"
            and isinstance(value, list)
        ):
            found += [
                "%s[%d] must be a string, not a %s" % (here, index, _type_name(item))
                for index, item in enumerate(value)
                if isinstance(item, (list, dict))
            ]
        if "options" in option:
            items = value if option.get("type") == "list" and isinstance(value, list) else [value]
            for index, item in enumerate(items):
                sub = "%s[%d]" % (here, index) if option.get("type") == "list" else here
                found += _strict_strings(option["options"], item, sub)
    return found


def _plain(text: str) -> str:
    """The validator's messages name Ansible's internal types (``<class '..._AnsibleTaggedList'>``): plain
    type names instead."""
    text = re.sub(
        r"<class '(?:[\w.]*\.)?(?:_AnsibleTagged)?(\w+)'>", lambda m: "a " + m.group(1).lower(), text
    )
    return re.sub(r"_AnsibleTagged(\w+)", lambda m: m.group(1).lower(), text)


def _type_name(value: Any) -> str:
    """A value's type as a user writes it: Ansible hands the plan tagged subclasses (``_AnsibleTaggedInt``)."""
    for kind, name in ((dict, "dictionary"), (list, "list"), (str, "string"), (bool, "boolean")):
        if isinstance(value, kind):
            return name
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else re.sub(r"^_AnsibleTagged", "", type(value).__name__).lower()


def _strip_docs(spec: dict[str, Any]) -> dict[str, Any]:
    """Role specs carry descriptions; the validator wants only the argument spec keys."""
    keep = ("type", "elements", "default", "choices", "required", "no_log", "aliases", "mutually_exclusive")
    out = {}
    for name, option in spec.items():
        entry = {key: option[key] for key in keep if key in option}
        if "options" in option:
            entry["options"] = _strip_docs(option["options"])
        out[name] = entry
    return out


# what a failure does to the temporary resources: remove them all, keep the failed builders, or leave
# everything (a janitor removes it later)
ON_ERROR = ("cleanup", "keep", "abort")


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("bake", "only", "except", "force", "bake_id", "fail_fast", "on_error"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        bake = args.get("bake")
        playbook_dir = task_vars.get("playbook_dir") or os.getcwd()
        collections = task_vars.get("ansible_collection_name")
        cache: dict[str, str] = {}

        def role_digest(name: str) -> str:
            if name not in cache:
                cache[name] = self._role_digest(name, playbook_dir, collections, set())
            return cache[name]

        playbooks: dict[str, dict[str, Any]] = {}

        def playbook(path: str) -> dict[str, Any]:
            if path not in playbooks:
                playbooks[path] = read_playbook(path)
            return playbooks[path]

        def playbook_digest(path: str) -> str:
            # once per playbook, however many targets run it
            if "digest" not in playbook(path):
                playbook(path)["digest"] = digest_playbook(path)
            return playbook(path)["digest"]

        def digest_playbook(path: str) -> str:
            found = playbook(path)
            parts: dict[str, str] = {}
            for file in found["files"]:
                parts["file:" + file] = digest_file(file)
            for base in sorted({os.path.dirname(file) for file in found["files"]}):
                for name in PLAYBOOK_DIRS:
                    if os.path.isdir(os.path.join(base, name)):
                        parts["dir:%s/%s" % (base, name)] = digest_tree(os.path.join(base, name))
            for role in found["roles"]:
                try:
                    parts["role:" + role] = self._role_digest(role, os.path.dirname(path), collections, set())
                except BakeryError as exc:
                    raise BakeryError(
                        "playbook %s uses a role that is not found: %s" % (path, exc.msg)
                    ) from None
            return digest_value(parts)

        def playbook_hosts(path: str, host: str, groups: list[str]) -> bool:
            return hosts_match(playbook(path)["hosts"], host, groups)

        facts: dict[str, tuple[set[str], str | None]] = {}

        def role_facts(name: str) -> tuple[set[str], str | None]:
            if name not in facts:
                facts[name] = self._role_facts(name, playbook_dir, set())
            return facts[name]

        directory = definition_dir(bake)
        try:
            bake = validate_bake(bake)
            plan = _plan.make_plan(
                bake,
                validate_target=validate_target,
                role_digest=role_digest,
                cwd=os.getcwd(),
                only=args.get("only"),
                except_=args.get("except"),
                force=args.get("force", False),
                bake_id=args.get("bake_id"),
                secrets_of=secret_options,
                definition_dir=directory,
                playbook_digest=playbook_digest,
                playbook_hosts=playbook_hosts,
                role_facts=role_facts,
            )
        except BakeryError as exc:
            raise AnsibleActionFail(exc.msg) from None
        try:
            plan["fail_fast"] = boolean(args.get("fail_fast", bake.get("fail_fast", False)), strict=True)
        except TypeError:
            raise AnsibleActionFail(
                "fail_fast must be true or false, not %r" % args.get("fail_fast")
            ) from None
        on_error = args.get("on_error") or bake.get("on_error") or "cleanup"
        if on_error not in ON_ERROR:
            raise AnsibleActionFail(
                "on_error must be one of %s, not %r" % (", ".join(ON_ERROR), on_error)
            ) from None
        plan["on_error"] = on_error
        # what an earlier run checked already: found again unchanged, it is published without new checks
        previous = _read_json(plan["manifest"])
        for target in plan["targets"]:
            target["verified"] = _manifest.verified_before(previous, target)
        # abort stops the whole bake at the first failure, as fail_fast does, and then cleans nothing
        plan["fail_fast"] = plan["fail_fast"] or on_error == "abort"
        # who bakes, for the provenance statements (runDetails.builder.version)
        plan["versions"] = {
            "bakery": _plan.bakery_version(),
            "ansible-core": ansible_version,
        }
        result.update(changed=False, plan=plan)
        result["msg"] = "bake %s (%s): %d target(s): %s" % (
            plan["name"],
            plan["bake_id"],
            len(plan["targets"]),
            ", ".join("%s (%s)" % (t["name"], t["type"]) for t in plan["targets"]) or "none selected",
        )
        return result

    def _role_path(self, name: str, playbook_dir: str) -> str:
        if name.count(".") >= 2:
            found = _get_collection_role_path(name)
            if found:
                return found[1]
            raise BakeryError("provisioner role %r not found in any installed collection" % name)
        from ansible import constants as C

        for base in [os.path.join(playbook_dir, "roles"), *C.DEFAULT_ROLES_PATH, playbook_dir]:
            candidate = os.path.join(os.path.expanduser(base), name)
            if os.path.isdir(candidate):
                return candidate
        raise BakeryError(
            "provisioner role %r not found (looked in %s/roles and the roles path %s)"
            % (name, playbook_dir, ":".join(C.DEFAULT_ROLES_PATH))
        )

    def _role_facts(self, name: str, playbook_dir: str, seen: set[str]) -> tuple[set[str], str | None]:
        """The fact subsets beyond min that role *name* (and the roles it depends on or includes by name) names,
        and why it could read any fact, or None (see _facts)."""
        if name in seen:
            return set(), None
        seen.add(name)
        if "{{" in name:
            return set(), "it includes a role by a templated name (%s)" % name
        try:
            path = self._role_path(name, playbook_dir)
        except BakeryError:
            return set(), "role %s was not found to be read" % name
        needed, why, roles = _facts.role_subsets(path, _included_roles)
        if why:
            return needed, why
        for other in roles:
            found, why = self._role_facts(other, playbook_dir, seen)
            needed |= found
            if why:
                return needed, "%s (included): %s" % (other, why)
        return needed, None

    def _role_digest(self, name: str, playbook_dir: str, collections: Any, seen: set[str]) -> str:
        """Content digest of a role and, recursively, of the roles it depends on."""
        if name in seen:
            return "cycle"
        seen.add(name)
        path = self._role_path(name, playbook_dir)
        parts = {"content": digest_tree(path)}
        meta = os.path.join(path, "meta", "main.yml")
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
            for dep_name in _meta_dependencies(data):
                if "{{" not in dep_name:
                    parts["dep:" + dep_name] = self._role_digest(dep_name, playbook_dir, collections, seen)
        return digest_value(parts)
