# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the bake plan: resolves roles and target specs, then calls module_utils._plan."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.collection_loader._collection_finder import _get_collection_role_path

from ansible_collections.bakery.images.plugins.module_utils import _plan
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import digest_tree, digest_value
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

ROLES_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "roles"))


def _role_spec(role: str) -> dict[str, Any]:
    path = os.path.join(ROLES_DIR, role, "meta", "argument_specs.yml")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["argument_specs"]["main"]["options"]


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
    return validate(bake_spec(), bake, "bake")


def validate(spec: dict[str, Any], values: dict[str, Any], where: str) -> dict[str, Any]:
    """*values* checked against a role argument spec; every problem in one message prefixed by *where*."""
    spec = _strip_docs(spec)
    messages = _strict_strings(spec, values, where)
    result = ArgumentSpecValidator(spec).validate(values)
    for error in result.errors.errors:
        text = _plain(str(error))
        if type(error).__name__ == "UnsupportedError":
            text = "unsupported option %s" % text
        messages.append(text)
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
    if isinstance(value, dict):
        return "dictionary"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


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
        # abort stops the whole bake at the first failure, as fail_fast does, and then cleans nothing
        plan["fail_fast"] = plan["fail_fast"] or on_error == "abort"
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
            for dep in data.get("dependencies") or []:
                dep_name = dep.get("role") or dep.get("name") if isinstance(dep, dict) else dep
                if isinstance(dep_name, str) and "{{" not in dep_name:
                    parts["dep:" + dep_name] = self._role_digest(dep_name, playbook_dir, collections, seen)
        return digest_value(parts)
