# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Packer templates read and evaluated as Packer does before a build: the input of the importer.

A legacy JSON template (read with the standard library, its ``{{user}}``/``{{env}}``/``{{timestamp}}`` ...
Go templates evaluated here), a ``.pkr.hcl`` file or a directory of them (Packer reads every ``*.pkr.hcl``
in it, in name order) becomes one :class:`Template`: its variables with their values (defaults, then
``PKR_VAR_*`` environment variables, ``*.auto.pkrvars.hcl``, the var files, then ``vars``: Packer's
order), its sources with their evaluated options, its builds (which sources, with build-level overrides,
provisioners and post-processor chains with their ``only``/``except``) and data sources. Values that only
a build knows stay :class:`Unknown` (``build.ID``) or keep their Go template (``{{ .HTTPIP }}``).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils import _packer_hcl as hcl
from ansible_collections.bakery.images.plugins.module_utils._packer_hcl import Block, DataRef, Unknown
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

HCL_SUFFIX = ".pkr.hcl"
HCL_VARS_SUFFIX = ".pkrvars.hcl"
# what Packer reads during a build, never before it
BUILD_TIME = "known only during the build"


class Template:
    """An evaluated Packer template (see the module docstring)."""

    def __init__(self, path: str, kind: str, directory: str, cwd: str) -> None:
        self.path = path
        self.kind = kind  # "hcl" or "json"
        self.directory = directory  # path.root, {{template_dir}}
        self.cwd = cwd  # where "packer build" runs: relative paths of scripts and files start here
        self.variables: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, dict[str, Any]] = {}
        self.builds: list[dict[str, Any]] = []
        self.data: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.unused: list[str] = []
        self.frozen: set[str] = (
            set()
        )  # timestamp(), uuidv4(), {{timestamp}} ...: evaluated now, not per build

    def sensitive_values(self) -> dict[str, str]:
        """Sensitive variables' values (texts only) by name: the importer never writes them."""
        return {
            name: str(variable["value"])
            for name, variable in self.variables.items()
            if variable.get("sensitive")
            and isinstance(variable.get("value"), (str, int, float))
            and str(variable["value"])
        }


def _where(block: Block, attribute: str | None = None) -> str:
    text = "%s: %s" % (os.path.basename(block.file), block.address())
    return "%s, %s" % (text, attribute) if attribute else text


# ---------------------------------------------------------------- var files and values


def convert(value: Any, type_text: str | None, where: str) -> Any:
    """A value from the command line or the environment (a text) as its variable's type says."""
    if not isinstance(value, str) or not type_text:
        return value
    kind = type_text.strip()
    if kind == "string":
        return value
    if kind == "number":
        try:
            return int(value) if re.match(r"^-?[0-9]+$", value) else float(value)
        except ValueError:
            raise BakeryError("%s: %r is not a number" % (where, value)) from None
    if kind == "bool":
        if value not in ("true", "false"):
            raise BakeryError("%s: %r is not true or false" % (where, value))
        return value == "true"
    if kind.startswith(("list", "set", "map", "object", "tuple")) or kind == "any" and value[:1] in "[{":
        evaluated = hcl.evaluate_raw("${%s}" % value, hcl.Context(_no_references, {}, where))
        if isinstance(evaluated, Unknown):
            raise BakeryError("%s: %r is not a value of type %s" % (where, value, kind))
        return evaluated
    return value


def _no_references(root: str, names: list[str], where: str) -> Any:
    raise BakeryError("%s: a variable value cannot refer to %s" % (where, ".".join([root] + names)))


def read_var_file(path: str) -> dict[str, Any]:
    """A var file's values: ``.json`` (an object) or ``.pkrvars.hcl`` (attributes of literal values)."""
    if not os.path.isfile(path):
        raise BakeryError("var file %s does not exist" % path)
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
        except ValueError as exc:
            raise BakeryError("%s: not valid JSON: %s" % (path, exc)) from None
        if not isinstance(values, Mapping):
            raise BakeryError("%s: a JSON var file holds one object of variable values" % path)
        return dict(values)
    body = hcl.parse_file(path)
    if body.blocks:
        raise BakeryError(
            "%s: a var file holds only attributes (name = value), not %s blocks" % (path, body.blocks[0].kind)
        )
    context = hcl.Context(_no_references, {}, path)
    out = {}
    for name, raw in body.attrs.items():
        value = hcl.evaluate_raw(raw, context.at("%s: %s" % (path, name)))
        if isinstance(value, Unknown):
            raise BakeryError("%s: %s: %s" % (path, name, value.why))
        out[name] = value
    return out


# ---------------------------------------------------------------- HCL2


class _Scope:
    """Evaluation of HCL expressions against one template: variables, locals (evaluated when first used, so
    locals may use other locals in any order), data sources and ``path``."""

    def __init__(self, template: Template, functions: dict[str, Callable], locals_: dict[str, tuple]) -> None:
        self.template = template
        self.functions = functions
        self.locals = locals_  # name -> (raw expression, block, sensitive)
        self.local_values: dict[str, Any] = {}
        self.evaluating: list[str] = []
        self.data = {(entry["type"], entry["name"]) for entry in template.data}

    def context(self, where: str, source: Mapping[str, str] | None = None) -> hcl.Context:
        def resolve(root: str, names: list[str], at: str) -> Any:
            return self.resolve(root, names, at, source)

        return hcl.Context(resolve, self.functions, where)

    def resolve(self, root: str, names: list[str], where: str, source: Mapping[str, str] | None) -> Any:
        if not names:
            raise BakeryError("%s: %s is not a value" % (where, root))
        first, rest = names[0], names[1:]
        if root == "var":
            variable = self.template.variables.get(first)
            if variable is None:
                raise hcl.Undefined(
                    "%s: undefined variable var.%s (no variable block declares it)" % (where, first)
                )
            if "value" not in variable:
                raise hcl.Undefined(
                    "%s: variable var.%s has no value: give it a default, a var file (packer_var_files), "
                    "packer_vars or PKR_VAR_%s" % (where, first, first)
                )
            variable["used"] = True
            return _walk(variable["value"], rest)
        if root == "local":
            return _walk(self.local(first, where), rest)
        if root == "path":
            if first == "root":
                return self.template.directory
            if first == "cwd":
                return self.template.cwd
        if root == "source":
            if source is None:
                raise hcl.Undefined("%s: source.%s is only known inside a build" % (where, first))
            if first in source:
                if isinstance(source[first], Unknown):
                    return source[first]
                return source[first]
        if root in ("build", "packer"):
            return Unknown("%s.%s" % (root, ".".join(names)), BUILD_TIME)
        if root == "data" and len(names) >= 3:
            if (first, names[1]) not in self.data:
                raise hcl.Undefined(
                    '%s: undefined data source data.%s.%s (no data "%s" "%s" block)'
                    % (where, first, names[1], first, names[1])
                )
            return DataRef(first, names[1], ".".join(names[2:]))
        raise hcl.Undefined("%s: unknown reference %s" % (where, ".".join([root] + names)))

    def local(self, name: str, where: str) -> Any:
        if name in self.local_values:
            return self.local_values[name]
        if name not in self.locals:
            raise hcl.Undefined(
                "%s: undefined local value local.%s (no locals block defines it)" % (where, name)
            )
        if name in self.evaluating:
            raise BakeryError(
                "local.%s refers to itself: %s"
                % (name, " -> ".join(["local." + n for n in self.evaluating + [name]]))
            )
        raw, block, _sensitive = self.locals[name]
        self.evaluating.append(name)
        try:
            value = hcl.evaluate_raw(raw, self.context(_where(block, "local." + name)))
        finally:
            self.evaluating.pop()
        self.local_values[name] = value
        return value


def _walk(value: Any, names: list[str]) -> Any:
    for name in names:
        if isinstance(value, (Unknown, DataRef)):
            return value
        if not isinstance(value, Mapping) or name not in value:
            raise hcl.EvalError("no attribute %r" % name)
        value = value[name]
    return value


def _expand(
    block: Block, scope: _Scope, context_for: Callable[[str], hcl.Context], bound: dict
) -> list[tuple]:
    """A block's nested blocks with ``dynamic`` blocks expanded: (kind, labels, block, bound names)."""
    out: list[tuple] = []
    for child in block.blocks:
        if child.kind != "dynamic":
            out.append((child.kind, child.labels, child, bound))
            continue
        kind = child.labels[0] if child.labels else ""
        where = _where(child)
        context = context_for(where)
        iterator = child.attrs.get("iterator")
        iterator = hcl.source_of(iterator) if iterator else kind
        collection = hcl.evaluate_raw(child.attrs.get("for_each"), context.at(where + ", for_each"), bound)
        if isinstance(collection, (Unknown, DataRef)):
            raise BakeryError("%s: for_each must be known before the build (%r)" % (where, collection))
        pairs = (
            list(collection.items()) if isinstance(collection, Mapping) else list(enumerate(collection or []))
        )
        contents = [inner for inner in child.blocks if inner.kind == "content"]
        if len(contents) != 1:
            raise BakeryError("%s: a dynamic block has one content block" % where)
        for key, value in pairs:
            names = dict(bound)
            names[iterator] = {"key": key, "value": value}
            labels = child.labels[1:]
            if "labels" in child.attrs:
                labels = hcl.evaluate_raw(child.attrs["labels"], context.at(where + ", labels"), names)
            content = contents[0]
            out.append((kind, [str(label) for label in labels], content, names))
    return out


def evaluate_body(
    block: Block, scope: _Scope, context_for: Callable[[str], hcl.Context], bound: dict
) -> dict:
    """A block's attributes evaluated and its nested blocks as lists of dictionaries (``dynamic`` expanded)."""
    where = _where(block)
    out: dict[str, Any] = {}
    for name, raw in block.attrs.items():
        out[name] = hcl.evaluate_raw(raw, context_for("%s, %s" % (where, name)), bound)
    for kind, labels, child, names in _expand(block, scope, context_for, bound):
        value = evaluate_body(child, scope, context_for, names)
        out.setdefault(kind, []).append(dict(value, __labels__=labels) if labels else value)
    return out


def _hcl_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*" + HCL_SUFFIX)))
        files += sorted(glob.glob(os.path.join(path, "*.pkr.json")))
        if not files:
            raise BakeryError("%s has no %s files" % (path, HCL_SUFFIX))
        return files
    return [path]


def load_hcl(
    template: Template,
    var_files: list[str],
    values: Mapping[str, Any],
    env: Mapping[str, str],
    functions: dict[str, Callable],
) -> None:
    files = _hcl_files(template.path)
    bodies = []
    for path in files:
        if path.endswith(".pkr.json"):
            raise BakeryError(
                "%s: HCL2 templates in JSON syntax (.pkr.json) are not read by the importer" % path
            )
        bodies.append(hcl.parse_file(path))
    blocks = [block for body in bodies for block in body.blocks]
    for body in bodies:
        for name in body.attrs:
            raise BakeryError(
                "%s: unexpected attribute %s at the top level of a template" % (body.file, name)
            )
    # variables: declarations first, then values in Packer's order
    for block in blocks:
        if block.kind == "variable":
            name = block.labels[0]
            if name in template.variables:
                raise BakeryError("%s: variable %s is declared twice" % (_where(block), name))
            type_raw = block.attrs.get("type")
            variable: dict[str, Any] = {
                "type": hcl.source_of(type_raw) if type_raw is not None else None,
                "sensitive": bool(block.attrs.get("sensitive") is True),
                "where": _where(block),
            }
            if "default" in block.attrs:
                variable["value"] = hcl.evaluate_raw(
                    block.attrs["default"], hcl.Context(_env_only(env), functions, _where(block, "default"))
                )
            template.variables[name] = variable
        elif block.kind == "variables":
            for name, raw in block.attrs.items():
                template.variables[name] = {
                    "type": None,
                    "sensitive": False,
                    "where": _where(block, name),
                    "value": hcl.evaluate_raw(
                        raw, hcl.Context(_env_only(env), functions, _where(block, name))
                    ),
                }
    for name, variable in template.variables.items():
        if "PKR_VAR_" + name in env:
            variable["value"] = convert(env["PKR_VAR_" + name], variable["type"], "PKR_VAR_" + name)
    directory = template.path if os.path.isdir(template.path) else os.path.dirname(template.path)
    auto = sorted(glob.glob(os.path.join(directory, "*.auto" + HCL_VARS_SUFFIX)))
    auto += sorted(glob.glob(os.path.join(directory, "*.auto.pkrvars.json")))
    for path in auto + list(var_files):
        for name, value in read_var_file(path).items():
            if name not in template.variables:
                template.warnings.append(
                    "%s sets %s, which no variable block declares: ignored" % (path, name)
                )
                continue
            template.variables[name]["value"] = value
    for name, value in values.items():
        if name not in template.variables:
            raise BakeryError("packer_vars sets %s, which no variable block of the template declares" % name)
        template.variables[name]["value"] = convert(
            value, template.variables[name]["type"], "packer_vars.%s" % name
        )
    locals_: dict[str, tuple] = {}
    for block in blocks:
        if block.kind == "locals":
            for name, raw in block.attrs.items():
                if name in locals_:
                    raise BakeryError("%s: local.%s is defined twice" % (_where(block), name))
                locals_[name] = (raw, block, False)
        elif block.kind == "local":
            locals_[block.labels[0]] = (
                block.attrs.get("expression"),
                block,
                bool(block.attrs.get("sensitive")),
            )
    for block in blocks:
        if block.kind == "data":
            template.data.append({"type": block.labels[0], "name": block.labels[1], "block": block})
    scope = _Scope(template, functions, locals_)
    for name, (_raw, _block, sensitive) in locals_.items():
        if sensitive:
            template.variables["local." + name] = {
                "sensitive": True,
                "value": scope.local(name, _where(_block)),
            }
    for entry in template.data:
        block = entry.pop("block")
        entry["where"] = _where(block)
        entry["config"] = evaluate_body(block, scope, scope.context, {})
    for block in blocks:
        if block.kind == "source":
            if len(block.labels) != 2:
                raise BakeryError('%s: a source block has two labels: source "TYPE" "NAME"' % _where(block))
            ref = "%s.%s" % tuple(block.labels)
            if ref in template.sources:
                raise BakeryError("%s: source %s is defined twice" % (_where(block), ref))
            template.sources[ref] = {"type": block.labels[0], "name": block.labels[1], "block": block}
    for index, block in enumerate(b for b in blocks if b.kind == "build"):
        template.builds.append(_hcl_build(template, scope, block, index))
    for ref, source in template.sources.items():
        source.pop("block", None)
        if not source.get("used"):
            template.unused.append(ref)
    for name, variable in template.variables.items():
        if "value" not in variable and not name.startswith("local."):
            variable["value"] = None
            variable["unset"] = True
    for block in blocks:
        if block.kind not in (
            "variable",
            "variables",
            "locals",
            "local",
            "data",
            "source",
            "build",
            "packer",
        ):
            template.warnings.append(
                "%s: a top-level %s block is not read by the importer" % (_where(block), block.kind)
            )


def _env_only(env: Mapping[str, str]) -> Callable:
    def resolve(root: str, names: list[str], where: str) -> Any:
        raise BakeryError(
            "%s: a variable's default cannot refer to %s (Packer allows only env() there)"
            % (where, ".".join([root] + names))
        )

    return resolve


def _selection(config: dict, where: str) -> tuple[list[str], list[str]]:
    out = []
    for key in ("only", "except"):
        value = config.pop(key, None) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BakeryError("%s: %s must be a list of source names" % (where, key))
        out.append(value)
    return out[0], out[1]


def _hcl_build(template: Template, scope: _Scope, block: Block, index: int) -> dict[str, Any]:
    where = _where(block)
    context = scope.context(where)
    name = (
        hcl.evaluate_raw(block.attrs.get("name"), context.at(where + ", name"))
        if "name" in block.attrs
        else None
    )
    refs = hcl.evaluate_raw(block.attrs.get("sources", []), context.at(where + ", sources"))
    targets: list[dict[str, Any]] = []

    def add(ref: str, overrides: dict, at: str) -> None:
        ref = ref[len("source.") :] if ref.startswith("source.") else ref
        if ref not in template.sources:
            raise BakeryError("%s: source.%s is not defined by any source block" % (at, ref))
        source = template.sources[ref]
        source["used"] = True
        local_name = overrides.pop("name", None) or source["name"]
        targets.append(
            {
                "source": ref,
                "type": source["type"],
                "name": local_name,
                "block": source["block"],
                "overrides": overrides,
                "where": _where(source["block"]) if source.get("block") else at,
            }
        )

    if not isinstance(refs, list):
        raise BakeryError("%s, sources: a list of source names" % where)
    for ref in refs:
        add(str(ref), {}, where + ", sources")
    bound: dict = {}
    for kind, labels, child, names in _expand(block, scope, scope.context, bound):
        if kind == "source":
            at = _where(child)
            overrides = {
                key: hcl.evaluate_raw(raw, context.at(at + ", " + key), names)
                for key, raw in child.attrs.items()
            }
            overrides.update(
                evaluate_body(Block("source", [], {}, child.blocks, child.file), scope, scope.context, names)
            )
            ref = labels[0] if labels else ""
            existing = [
                t for t in targets if t["source"] == ref.replace("source.", "", 1) and not t["overrides"]
            ]
            if existing and not overrides.get("name"):
                existing[0]["overrides"] = overrides
            else:
                add(ref, overrides, at)
    # each target's options: the source's, then the build's overrides
    for target in targets:
        source_names = {"name": target["name"], "type": target["type"]}
        body = evaluate_body(target.pop("block"), scope, lambda at, s=source_names: scope.context(at, s), {})
        body.update(target.pop("overrides"))
        target["config"] = body
    build: dict[str, Any] = {
        "name": name,
        "where": where,
        "targets": targets,
        "provisioners": [],
        "error_cleanup": [],
        "post_processors": [],
        "description": None,
    }
    one = targets[0] if len(targets) == 1 else None
    per_source = (
        {"name": one["name"], "type": one["type"]}
        if one
        else {
            "name": Unknown(
                "source.name", "differs per source (in bakery: bakery_target_name, BAKERY_TARGET_NAME)"
            ),
            "type": Unknown(
                "source.type", "differs per source (in bakery: bakery_target_name, BAKERY_TARGET_TYPE)"
            ),
        }
    )
    counts = {"provisioner": 0, "error-cleanup-provisioner": 0, "post-processor": 0, "post-processors": 0}
    build_label = 'build "%s"' % name if name else "build #%d" % (index + 1)
    for kind, labels, child, names in _expand(block, scope, lambda at: scope.context(at, per_source), bound):
        if kind not in counts:
            continue
        counts[kind] += 1
        if kind == "post-processors":
            chain = []
            for inner_kind, inner_labels, inner, inner_names in _expand(
                child, scope, lambda at: scope.context(at, per_source), names
            ):
                if inner_kind == "post-processor":
                    chain.append(
                        _step(
                            scope,
                            inner,
                            inner_labels,
                            inner_names,
                            per_source,
                            "post-processor",
                            "%s, post-processors #%d, post-processor #%d"
                            % (build_label, counts[kind], len(chain) + 1),
                        )
                    )
            build["post_processors"].append(chain)
            continue
        step_source = _one_source(child, targets) or per_source
        step = _step(
            scope, child, labels, names, step_source, kind, "%s, %s #%d" % (build_label, kind, counts[kind])
        )
        if kind == "provisioner":
            build["provisioners"].append(step)
        elif kind == "error-cleanup-provisioner":
            build["error_cleanup"].append(step)
        else:
            build["post_processors"].append([step])
    return build


def _one_source(block: Block, targets: list[dict]) -> dict | None:
    """The one source a provisioner's only/except (literal lists) select, if one: source.name is then known."""

    def names(key: str) -> list[str]:
        value = block.attrs.get(key) or []
        return (
            [hcl.source_of(item).strip('"') for item in value if isinstance(item, str)]
            if isinstance(value, list)
            else []
        )

    only, except_ = names("only"), names("except")
    chosen = [
        target
        for target in targets
        if (not only or "%s.%s" % (target["type"], target["name"]) in only)
        and "%s.%s" % (target["type"], target["name"]) not in except_
    ]
    return {"name": chosen[0]["name"], "type": chosen[0]["type"]} if len(chosen) == 1 else None


def _step(
    scope: _Scope, block: Block, labels: list[str], names: dict, per_source: dict, kind: str, position: str
) -> dict:
    where = "%s: %s %s" % (
        os.path.basename(block.file),
        position,
        " ".join('"%s"' % label for label in labels),
    )
    config = evaluate_body(block, scope, lambda at: scope.context(at, per_source), names)
    only, except_ = _selection(config, where)
    step_name = config.pop("name", None)
    return {
        "type": labels[0] if labels else "",
        "name": step_name,
        "config": config,
        "only": only,
        "except": except_,
        "where": where,
    }


# ---------------------------------------------------------------- legacy JSON

_GO = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_GO_WORD = re.compile(r'`[^`]*`|"(?:\\.|[^"\\])*"|[^\s|]+|\|')


class _GoTemplates:
    """The Go template functions of legacy JSON templates that Packer evaluates before a build."""

    def __init__(
        self,
        template: Template,
        raw_variables: Mapping[str, Any],
        env: Mapping[str, str],
        now: datetime.datetime,
        new_uuid: Callable[[], str],
    ):
        self.template = template
        self.raw_variables = raw_variables
        self.env = env
        self.now = now
        self.new_uuid = new_uuid
        self.values: dict[str, Any] = {}
        self.evaluating: list[str] = []

    def user(self, name: str, where: str) -> Any:
        if name in self.values:
            return self.values[name]
        variable = self.template.variables.get(name)
        if variable is None:
            raise hcl.Undefined(
                "%s: undefined variable %s ({{user `%s`}}: not in the template's variables)"
                % (where, name, name)
            )
        if name in self.evaluating:
            raise BakeryError("variable %s refers to itself" % name)
        self.evaluating.append(name)
        try:
            raw = variable.get("value")
            if raw is None and variable.get("required"):
                raise hcl.Undefined(
                    "%s: variable %s is required and has no value: give it in a var file (packer_var_files) or "
                    "packer_vars" % (where, name)
                )
            value = (
                self.render(raw, "variable %s" % name, {}, allow_env=True) if isinstance(raw, str) else raw
            )
        finally:
            self.evaluating.pop()
        variable["used"] = True
        self.values[name] = value
        return value

    def render(self, value: Any, where: str, build: Mapping[str, Any], allow_env: bool = False) -> Any:
        if isinstance(value, list):
            return [self.render(item, where, build, allow_env) for item in value]
        if isinstance(value, dict):
            return {
                key: self.render(item, "%s.%s" % (where, key), build, allow_env)
                for key, item in value.items()
            }
        if not isinstance(value, str) or "{{" not in value:
            return value
        unknown: list[Unknown] = []

        def one(match: re.Match) -> str:
            result = self.pipeline(match.group(1), where, build, allow_env)
            if isinstance(result, Unknown):
                unknown.append(result)
                return match.group(0)
            if result is None:
                return match.group(0)
            return hcl._text(result) if not isinstance(result, str) else result

        text = _GO.sub(one, value)
        if unknown:
            return Unknown(value, unknown[0].why)
        return text

    def pipeline(self, text: str, where: str, build: Mapping[str, Any], allow_env: bool) -> Any:
        words = _GO_WORD.findall(text)
        commands: list[list[str]] = [[]]
        for word in words:
            if word == "|":
                commands.append([])
            else:
                commands[-1].append(word)
        result: Any = None
        for position, command in enumerate(commands):
            if not command:
                raise BakeryError("%s: empty command in the template {{%s}}" % (where, text))
            name, args = command[0], [self.argument(arg, where, build, allow_env) for arg in command[1:]]
            if position:
                args.append(result)
            if name.startswith("."):
                # a field Packer sets during the build ({{ .HTTPIP }}, {{ .Vars }}): kept as written
                return None
            for arg in args:
                if isinstance(arg, Unknown):
                    return arg
            result = self.call(name, args, where, build, allow_env)
            if isinstance(result, Unknown):
                return result
        return result

    def argument(self, word: str, where: str, build: Mapping[str, Any], allow_env: bool) -> Any:
        if word[:1] == "`":
            return word[1:-1]
        if word[:1] == '"':
            return json.loads(word)
        if word.startswith("."):
            return Unknown("{{%s}}" % word, BUILD_TIME)
        if re.match(r"^-?[0-9]+$", word):
            return int(word)
        return self.call(word, [], where, build, allow_env)

    def call(self, name: str, args: list, where: str, build: Mapping[str, Any], allow_env: bool) -> Any:
        if name == "user":
            return self.user(str(args[0]), where)
        if name == "env":
            if not allow_env:
                raise BakeryError("%s: {{env}} is allowed only in variable defaults (as Packer says)" % where)
            return self.env.get(str(args[0]), "")
        if name in ("timestamp", "isotime", "uuid"):
            self.template.frozen.add("{{%s}}" % name)
        if name == "timestamp":
            return str(int(self.now.timestamp()))
        if name == "isotime":
            layout = args[0] if args else "2006-01-02T15:04:05Z07:00"
            return go_time(self.now, str(layout))
        if name == "template_dir":
            return self.template.directory
        if name == "pwd":
            return self.template.cwd
        if name in ("build_name", "build_type"):
            value = build.get(name[len("build_") :])
            if value is None:
                return Unknown(
                    "{{%s}}" % name, "differs per builder (in bakery: BAKERY_TARGET_NAME, bakery_target_name)"
                )
            return value
        if name == "uuid":
            return self.new_uuid()
        if name == "clean_resource_name":
            return clean_resource_name(str(args[0]))
        if name == "lower":
            return str(args[0]).lower()
        if name == "upper":
            return str(args[0]).upper()
        if name == "replace_all":
            return str(args[2]).replace(str(args[0]), str(args[1]))
        if name == "replace":
            return str(args[3]).replace(str(args[0]), str(args[1]), int(args[2]))
        if name == "split":
            parts = str(args[0]).split(str(args[1]))
            return parts[int(args[2])] if len(args) > 2 else parts
        if name in ("packer_version", "consul_key", "vault", "aws_secretsmanager", "sed", "build"):
            return Unknown("{{%s}}" % name, "Packer reads it during the build (%s)" % name)
        raise BakeryError("%s: the template function %s is not known to the importer" % (where, name))


_GO_LAYOUT = [
    ("January", "%B"),
    ("Jan", "%b"),
    ("Monday", "%A"),
    ("Mon", "%a"),
    ("2006", "%Y"),
    ("Z07:00", "Z"),
    ("-07:00", "%:z"),
    ("-0700", "%z"),
    ("MST", "%Z"),
    ("06", "%y"),
    ("01", "%m"),
    ("02", "%d"),
    ("_2", "%e"),
    ("15", "%H"),
    ("03", "%I"),
    ("04", "%M"),
    ("05", "%S"),
    ("PM", "%p"),
    ("1", "%-m"),
    ("2", "%-d"),
    ("3", "%-I"),
    ("4", "%-M"),
    ("5", "%-S"),
]


def go_time(moment: datetime.datetime, layout: str) -> str:
    """*moment* written with a Go time layout (``2006-01-02T15:04:05Z07:00``), as isotime does."""
    moment = moment.astimezone(datetime.timezone.utc)
    out: list[str] = []
    index = 0
    while index < len(layout):
        for token, directive in _GO_LAYOUT:
            if layout.startswith(token, index):
                if directive == "Z":
                    out.append("Z")
                elif directive == "%:z":
                    out.append("+00:00")
                elif directive.startswith("%-"):
                    out.append(str(int(moment.strftime("%" + directive[2:]))))
                elif directive == "%e":
                    out.append("%2d" % moment.day)
                else:
                    out.append(moment.strftime(directive))
                index += len(token)
                break
        else:
            out.append(layout[index])
            index += 1
    return "".join(out)


def clean_resource_name(text: str) -> str:
    """Packer's clean_resource_name: lower case, characters other than letters, digits and '-' become '-'."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", text.lower())
    return cleaned


def load_json(
    template: Template,
    var_files: list[str],
    values: Mapping[str, Any],
    env: Mapping[str, str],
    now: datetime.datetime,
    new_uuid: Callable[[], str],
) -> None:
    try:
        with open(template.path, encoding="utf-8") as handle:
            text = handle.read()
        data = json.loads(text)
    except ValueError as exc:
        line, column = getattr(exc, "lineno", "?"), getattr(exc, "colno", "?")
        raise BakeryError(
            "%s:%s:%s: JSON syntax error: %s" % (template.path, line, column, getattr(exc, "msg", exc))
        ) from None
    if not isinstance(data, Mapping):
        raise BakeryError(
            "%s: a JSON template is an object (builders, provisioners, post-processors)" % template.path
        )
    known = (
        "variables",
        "builders",
        "provisioners",
        "post-processors",
        "sensitive-variables",
        "description",
        "min_packer_version",
        "error-cleanup-provisioner",
        "_comment",
    )
    for key in data:
        if key not in known and not key.startswith("_"):
            template.warnings.append(
                "%s: the top-level key %s is not read by the importer" % (template.path, key)
            )
    sensitive = set(data.get("sensitive-variables") or [])
    for name, default in (data.get("variables") or {}).items():
        template.variables[name] = {
            "type": None,
            "sensitive": name in sensitive,
            "where": "%s: variables.%s" % (os.path.basename(template.path), name),
            "value": default,
            "required": default is None,
        }
    for path in var_files:
        for name, value in read_var_file(path).items():
            if name not in template.variables:
                template.warnings.append(
                    "%s sets %s, which the template's variables do not name: ignored" % (path, name)
                )
                continue
            template.variables[name]["value"] = value
            template.variables[name]["required"] = False
    for name, value in values.items():
        if name not in template.variables:
            raise BakeryError("packer_vars sets %s, which the template's variables do not name" % name)
        template.variables[name]["value"] = value
        template.variables[name]["required"] = False
    go = _GoTemplates(template, {}, env, now, new_uuid)
    base = os.path.basename(template.path)
    for name in list(template.variables):
        if not template.variables[name].get("required"):
            go.user(name, "%s: variables.%s" % (base, name))
    builders = data.get("builders") or []
    if not isinstance(builders, list) or not builders:
        raise BakeryError("%s: builders must be a list of builders" % template.path)
    targets = []
    for index, builder in enumerate(builders):
        if not isinstance(builder, Mapping) or not builder.get("type"):
            raise BakeryError("%s: builders[%d] has no type" % (base, index))
        name = builder.get("name") or builder["type"]
        config = {key: value for key, value in builder.items() if key not in ("type", "name")}
        where = "%s: builders[%d] (%s)" % (base, index, name)
        config = go.render(config, where, {"name": name, "type": builder["type"]})
        ref = "%s.%s" % (builder["type"], name)
        template.sources[ref] = {"type": builder["type"], "name": name, "used": True}
        targets.append(
            {"source": ref, "type": builder["type"], "name": name, "config": config, "where": where}
        )
    one = {"name": targets[0]["name"], "type": targets[0]["type"]} if len(targets) == 1 else {}

    def steps(entries: Any, key: str) -> list[dict]:
        out = []
        for index, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"type": entry}
            if not isinstance(entry, Mapping) or not entry.get("type"):
                raise BakeryError("%s: %s[%d] has no type" % (base, key, index))
            where = "%s: %s[%d] (%s)" % (base, key, index, entry["type"])
            config = {k: v for k, v in entry.items() if k not in ("type", "only", "except", "name")}
            only, except_ = _selection({"only": entry.get("only"), "except": entry.get("except")}, where)
            picked = [t for t in targets if (not only or t["name"] in only) and t["name"] not in except_]
            config = go.render(
                config,
                where,
                {"name": picked[0]["name"], "type": picked[0]["type"]} if len(picked) == 1 else one,
            )
            # legacy only/except name builders; the sources here are TYPE.NAME
            refs = {t["name"]: t["source"] for t in targets}
            out.append(
                {
                    "type": entry["type"],
                    "name": entry.get("name"),
                    "config": config,
                    "only": [refs.get(item, item) for item in only],
                    "except": [refs.get(item, item) for item in except_],
                    "where": where,
                }
            )
        return out

    chains = []
    for index, entry in enumerate(data.get("post-processors") or []):
        chain = entry if isinstance(entry, list) else [entry]
        chains.append(
            [
                dict(step, where=step["where"].replace("post-processors[0]", "post-processors[%d]" % index))
                for step in steps(chain, "post-processors")
            ]
        )
    error_cleanup = data.get("error-cleanup-provisioner")
    template.builds.append(
        {
            "name": None,
            "where": base,
            "targets": targets,
            "provisioners": steps(data.get("provisioners") or [], "provisioners"),
            "error_cleanup": steps([error_cleanup] if error_cleanup else [], "error-cleanup-provisioner"),
            "post_processors": chains,
            "description": data.get("description"),
        }
    )
    for variable in template.variables.values():
        variable.setdefault("value", None)
        if variable.get("required") and variable["value"] is None:
            variable["unset"] = True


# ---------------------------------------------------------------- entry point


def load(
    path: str,
    var_files: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    now: datetime.datetime | None = None,
    new_uuid: Callable[[], str] | None = None,
) -> Template:
    """The template at *path* (a JSON template, a ``.pkr.hcl`` file or a directory of them), evaluated.

    *cwd* is where ``packer build`` would run (relative paths of scripts and uploads start there; the
    template's directory by default), *now* the time ``timestamp()`` returns, *new_uuid* what
    ``uuidv4()`` returns: fixed in tests.
    """
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise BakeryError("Packer template %s does not exist" % path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    kind = "json" if path.endswith(".json") and not path.endswith(".pkr.json") else "hcl"
    template = Template(path, kind, directory, os.path.abspath(cwd or directory))
    env = dict(os.environ if env is None else env)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    new_uuid = new_uuid or hcl.new_uuid
    var_files = [os.path.abspath(os.path.join(template.cwd, file)) for file in (var_files or [])]
    if kind == "json":
        load_json(template, var_files, values or {}, env, now, new_uuid)
    else:
        functions = hcl.functions(now, new_uuid, template.cwd, env)
        for name in ("timestamp", "uuidv4"):
            functions[name] = _noted(template, name + "()", functions[name])
        load_hcl(template, var_files, values or {}, env, functions)
    if template.frozen:
        template.warnings.append(
            "%s evaluated when the template was imported: the values made from them are fixed in the definition "
            "(Packer makes new ones on every build); import again for new ones, or write them as Jinja "
            "(\"{{ now(utc=true).strftime('%%Y%%m%%d%%H%%M') }}\")" % " and ".join(sorted(template.frozen))
        )
    return template


def _noted(template: Template, name: str, function: Callable) -> Callable:
    def call(*args: Any) -> Any:
        template.frozen.add(name)
        return function(*args)

    return call
