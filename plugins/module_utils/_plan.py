# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bake plan: a validated bake definition expanded into one entry per output target.

Pure logic, no Ansible internals: the ``bake_plan`` action plugin resolves role paths and argument
specs on the controller and hands them in, which keeps this unit-testable.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

# _hygiene, _qemu_disk and _vagrant are imported where a target needs them: this module runs in Ansible's main
# process, where they were 0.1 s of every bake's start
from ansible_collections.bakery.images.plugins.module_utils import (
    _facts,
    _provisioners,
    _qemu_arch,
    _reproducible,
    _rootfs,
    _signature,
)
from ansible_collections.bakery.images.plugins.module_utils._files import parse_size
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    chain_keys,
    digest_value,
    fingerprint,
    new_bake_id,
)
from ansible_collections.bakery.images.plugins.module_utils._provenance import collection_version
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError

# every target type bakery knows; a target names its type by the one key of these it has
TARGET_TYPES = ("docker", "qemu", "vagrant", "ami", "gce", "openstack", "digitalocean")
# target types whose artifact is a disk file that other targets can take as their ``source`` (a Vagrant
# box, an AMI or a GCE image made from a qemu disk); such consumers run in the bake's post-process play
SOURCE_TYPES = ("qemu",)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_ROLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# an output file name without its ending: no directory part, not hidden
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")
# the largest EBS volume and Compute Engine disk, in GiB
MAX_VOLUME_GB = 65536

Validator = Callable[[str, Mapping[str, Any], str], dict]
# where a target type's secret options are: option paths whose argument spec says no_log
SecretPaths = Callable[[str], "list[list[str]]"]
# (playbook path, builder's inventory name, its groups) -> whether a play of the playbook runs on it
PlaybookHosts = Callable[[str, str, "list[str]"], bool]

# what the plan shows for a secret option's value (the marker Ansible shows for a no_log module parameter)
MASK = NO_LOG_MASK


def secret_paths(spec: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """The paths of the options an argument spec marks ``no_log: true`` (suboptions included)."""
    found: list[list[str]] = []
    for name, option in (spec or {}).items():
        if not isinstance(option, Mapping):
            continue
        if option.get("no_log"):
            found.append([*prefix, name])
        elif isinstance(option.get("options"), Mapping):
            found.extend(secret_paths(option["options"], (*prefix, name)))
    return found


def _at_path(value: Any, path: list[str], change: Callable[[Any], Any] | None) -> list[Any]:
    """The non-empty values at *path* (a list is looked into item by item); *change* replaces each."""
    if not path:
        return []
    if isinstance(value, list):
        return [found for item in value for found in _at_path(item, path, change)]
    if not isinstance(value, dict) or value.get(path[0]) in (None, ""):
        return []
    if len(path) > 1:
        return _at_path(value[path[0]], path[1:], change)
    found = value[path[0]]
    if change is not None:
        value[path[0]] = change(found)
    return [found]


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def mask_secrets(options: Mapping[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """A copy of *options* with every value at a secret path replaced by :data:`MASK`.

    The plan, the manifest, the summary and every task result that shows a target show this copy; the
    real values go only to the module parameters that need them (which are ``no_log``).
    """
    masked = _copy(dict(options))
    for path in paths:
        _at_path(masked, path, lambda _value: MASK)
    return masked


def present_secrets(options: Mapping[str, Any], paths: list[list[str]]) -> list[list[str]]:
    """The secret paths that hold a value in *options*."""
    return [path for path in paths if _at_path(dict(options), path, None)]


def pick_secrets(options: Mapping[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """Only the secret values of *options*, nested as in *options* (dictionaries only).

    ``combine(..., recursive=true)`` of the masked options and this gives the real options back.
    """
    picked: dict[str, Any] = {}
    for path in paths:
        node: Any = options
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node in (None, ""):
            continue
        into = picked
        for key in path[:-1]:
            into = into.setdefault(key, {})
        into[path[-1]] = node
    return picked


def target_secrets(bake: Mapping[str, Any] | None, target: Mapping[str, Any]) -> dict[str, Any]:
    """The real values of *target*'s secret options (the plan masks them), taken from the bake definition
    *bake*, nested as in the target's options (filter ``bakery.images.target_secrets``, the preflight)."""
    paths = target.get("secret_options") or []
    if not paths:
        return {}
    for entry in (bake or {}).get("targets") or []:
        # an entry of a target expanded per architecture has the options of the definition's target
        if isinstance(entry, Mapping) and entry.get("name") == (
            target.get("definition") or target.get("name")
        ):
            options = entry.get(target.get("type"))
            return pick_secrets(options if isinstance(options, Mapping) else {}, paths)
    raise BakeryError("target %r is not in the bake definition" % target.get("name"))


def with_secrets(options: Mapping[str, Any], secrets: Mapping[str, Any]) -> dict[str, Any]:
    """*options* (masked, as the plan shows them) with the real values of *secrets* put back (what
    ``options | combine(secrets, recursive=true)`` gives in a role)."""
    merged = _copy(dict(options))
    for key, value in secrets.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = with_secrets(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BakeryError(
            "%s name %r is not valid: use 1 to 40 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit" % (kind, name)
        )
    return name


def check_role_name(role: Any) -> str:
    """Role names are names (``ns.coll.role`` or ``role``), never paths: no '/', no '..'."""
    if not isinstance(role, str) or not _ROLE.match(role) or ".." in role:
        raise BakeryError(
            "provisioner role %r is not a role name: give a role name such as 'my_role' or "
            "'my_namespace.my_collection.my_role' (paths and '..' are not accepted)" % (role,)
        )
    return role


def target_type(target: Mapping[str, Any]) -> str:
    present = [kind for kind in TARGET_TYPES if target.get(kind) is not None]
    if len(present) != 1:
        raise BakeryError(
            "target %r must have exactly one of the keys %s (it has %s)"
            % (target.get("name"), ", ".join(TARGET_TYPES), ", ".join(present) or "none")
        )
    return present[0]


def select(
    names: list[str],
    only: list[str],
    except_: list[str],
    types: dict[str, str],
    groups: Mapping[str, str] | None = None,
) -> list[str]:
    """Targets chosen by ``bake_only``/``bake_except`` (by target name or by type). *groups* maps the name of
    a target expanded per architecture (``web-arm64``) to the name the definition gives it (``web``), which
    chooses all its architectures."""
    groups = groups or {}
    known = set(names) | set(types.values()) | set(groups.values())
    for word in only + except_:
        if word not in known:
            raise BakeryError(
                "bake_only/bake_except name %r is neither a target nor a target type of this bake "
                "(targets: %s)" % (word, ", ".join(names))
            )

    def named(name: str, words: list[str]) -> bool:
        return name in words or types[name] in words or groups.get(name, name) in words

    chosen = [n for n in names if not only or named(n, only)]
    return [n for n in chosen if not named(n, except_)]


def as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [str(item) for item in value]


def rootfs_plan(base: Mapping[str, Any], cache_dir: str) -> dict[str, Any]:
    """Where the bake's base rootfs goes and its identity: one tarball per distinct base.

    The options are checked as the rootfs module will check them (a bad suite, package name or
    mirror fails here, before anything is created), and the identity is the fingerprint the module
    will give the tarball.
    """
    options = {key: value for key, value in base.items() if value not in (None, [], {})}
    directory = os.path.join(cache_dir, "rootfs")
    try:
        parsed = _rootfs.parse_options(dict(options, path=os.path.join(directory, "base.tar")))
    except BakeryError as exc:
        raise BakeryError("bake.base: %s" % exc.msg) from None
    identity = fingerprint(_rootfs.compute_inputs(parsed))
    name = "%s-%s.tar" % (parsed.suite.lower(), identity[:12])
    # what it is made from, defaults resolved (the provenance statements name them)
    source = {"suite": parsed.suite, "mirror": parsed.mirror, "architecture": parsed.architecture}
    return {
        "path": os.path.join(directory, name),
        "options": options,
        "identity": identity,
        "source": source,
    }


# Debian's architectures that bakery can build a root filesystem for (mmdebstrap; under qemu-user when foreign)
DEBIAN_ARCHITECTURES = ("amd64", "arm64", "armel", "armhf", "i386", "mips64el", "ppc64el", "riscv64", "s390x")


def check_architectures(value: Any, where: str) -> list[str] | None:
    """An ``architectures`` list: Debian architectures, each once; None when it is not given."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise BakeryError(
            "%s.architectures must be a list of Debian architectures, such as [amd64, arm64]" % where
        )
    for arch in value:
        if arch not in DEBIAN_ARCHITECTURES:
            raise BakeryError(
                "%s.architectures: %r is not a Debian architecture bakery builds for (one of %s)"
                % (where, arch, ", ".join(DEBIAN_ARCHITECTURES))
            )
    twice = sorted({arch for arch in value if value.count(arch) > 1})
    if twice:
        raise BakeryError("%s.architectures lists %s twice" % (where, ", ".join(twice)))
    return list(value)


def base_architectures(base: Mapping[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """``bake.base`` without its ``architectures``, and that list (None when the base names no list)."""
    arches = check_architectures(base.get("architectures"), "bake.base") if base else None
    if arches is not None and base.get("architecture"):
        raise BakeryError("bake.base: give architecture (one) or architectures (a list of them), not both")
    return {key: value for key, value in base.items() if key != "architectures"}, arches


def builds_from_base(kind: str, options: Mapping[str, Any]) -> bool:
    """Whether the target's builder starts from the bake's base rootfs (a container bake, a qemu disk)."""
    return needs_builder(kind, options) and not options.get("source") and not uses_own_source(kind, options)


def arch_name(name: str, arch: str) -> str:
    """The name of a target's (or a tag's, an output's) entry baked for one of its ``architectures``."""
    return "%s-%s" % (name, arch)


def plan_architectures(
    targets_in: list[Mapping[str, Any]],
    types: Mapping[str, str],
    validated: Mapping[str, Mapping[str, Any]],
    base_arches: list[str] | None,
) -> dict[str, list[str] | None]:
    """The architectures each target of the definition is expanded for (None: not expanded, one entry as ever).

    A target built from the base takes its own ``architectures``, else the base's; a target made from another
    target's disk (``source``) takes its source's; any other target (a Dockerfile build, a base_image, an
    instance bake) builds what its own source is, and may not list architectures.
    """
    arches: dict[str, list[str] | None] = {}
    for index, target in enumerate(targets_in):
        tname, kind = target["name"], types[target["name"]]
        own = check_architectures(target.get("architectures"), "bake.targets[%d]" % index)
        options = validated[tname]
        if builds_from_base(kind, options):
            arches[tname] = own if own is not None else base_arches
        elif own is not None and not options.get("source"):
            raise BakeryError(
                "bake.targets[%d] (%s): architectures is for a target built from bake.base (a docker container "
                "bake, a qemu disk, or a target made from one's disk); this one starts from %s"
                % (
                    index,
                    tname,
                    "its Dockerfile"
                    if options.get("context")
                    else "its own base image"
                    if options.get("base_image")
                    else "a source image of its cloud",
                )
            )
    for index, target in enumerate(targets_in):
        tname = target["name"]
        source = validated[tname].get("source")
        if not source:
            continue
        own = check_architectures(target.get("architectures"), "bake.targets[%d]" % index)
        theirs = arches.get(source)
        if own is not None and set(own) != set(theirs or []):
            raise BakeryError(
                "bake.targets[%d] (%s): architectures %s, but its source %s is baked for %s: leave architectures "
                "out (a target made from another's disk is made for each architecture of that disk)"
                % (index, tname, ", ".join(own), source, ", ".join(theirs) if theirs else "one architecture")
            )
        arches[tname] = theirs
    return arches


def expand_targets(
    targets_in: list[Mapping[str, Any]],
    types: Mapping[str, str],
    validated: Mapping[str, Mapping[str, Any]],
    arches: Mapping[str, list[str] | None],
    bake_name: str,
) -> list[dict[str, Any]]:
    """One unit per planned entry: a target of the definition, or one per architecture of its ``architectures``.

    An expanded entry is named ``<target>-<arch>``; what it makes is named apart the same way: a docker image's
    tags ``<tag>-<arch>``, a qemu disk's files ``<name>-<arch>.<format>``, and a target made from an expanded
    disk takes the disk of its own architecture (``source: <disk>-<arch>``), its image named ``<name>-<arch>``
    (a box file ``<output>-<arch>.box``; the box's name and catalog stay one, listing both architectures).
    """
    units = []
    for index, target in enumerate(targets_in):
        tname, kind = target["name"], types[target["name"]]
        given = target[kind] if isinstance(target[kind], Mapping) else {}
        for arch in arches.get(tname) or [None]:
            options = dict(given)
            if arch:
                full = validated[tname]
                if kind == "docker":
                    options["tags"] = [arch_name(tag, arch) for tag in full.get("tags") or ["latest"]]
                elif kind == "qemu":
                    options["name"] = arch_name(full.get("name") or bake_name, arch)
                elif kind in ("ami", "gce", "openstack", "digitalocean") and full.get("name"):
                    options["name"] = arch_name(full["name"], arch)
                elif kind == "vagrant" and full.get("output"):
                    stem, ending = os.path.splitext(full["output"])
                    options["output"] = arch_name(stem, arch) + ending
                if full.get("source"):
                    options["source"] = arch_name(full["source"], arch)
            units.append(
                {
                    "index": index,
                    "target": target,
                    "definition": tname,
                    "name": check_name("target", arch_name(tname, arch)) if arch else tname,
                    "architecture": arch,
                    "options": options,
                }
            )
    return units


def docker_indexes(
    units: list[Mapping[str, Any]],
    validated: Mapping[str, Mapping[str, Any]],
    planned: list[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The multi-architecture images of the bake: one per docker target baked for ``architectures`` with
    ``push``, an image index under the target's own tags that lists the per-architecture images (pushed under
    ``<tag>-<arch>``). It is pushed only when every architecture of it is baked in this run (an index of some
    of them would drop the others)."""
    by_name = {entry["name"]: entry for entry in planned}
    indexes = []
    for tname, options in validated.items():
        entries = [
            by_name[unit["name"]]
            for unit in units
            if unit["definition"] == tname
            and unit["architecture"]
            and by_name[unit["name"]]["type"] == "docker"
        ]
        if not entries or not options.get("push"):
            continue
        index = {
            "name": tname,
            "repository": options["repository"],
            "tags": list(options.get("tags") or ["latest"]),
            "entries": [
                {"name": e["name"], "host": e["host"], "architecture": e["expanded_architecture"]}
                for e in entries
            ],
            "selected": all(e["selected"] for e in entries),
        }
        # the entry of the first architecture pushes it, once every architecture's image is pushed
        entries[0]["index"] = index
        indexes.append(index)
    return indexes


def bake_dirs(bake: Mapping[str, Any], cwd: str) -> tuple[str, str]:
    """The bake's output directory and cache directory (``<output_dir>/cache`` by default), absolute."""
    output_dir = os.path.normpath(os.path.join(cwd, bake.get("output_dir") or "output"))
    cache_dir = os.path.normpath(
        os.path.join(cwd, bake.get("cache_dir") or os.path.join(output_dir, "cache"))
    )
    return output_dir, cache_dir


# the most the per-step cache of a bake's cache directory keeps by default (least recently used go first)
DEFAULT_CACHE_MAX_SIZE = "10G"


def cache_settings(bake: Mapping[str, Any], cache_dir: str) -> dict[str, Any]:
    """The per-step cache of the bake's builders: whether it is used (``step_cache``), the most it keeps
    (``cache_max_size``, bytes) and where its index is (the bake's cache directory)."""
    enabled = bake.get("step_cache")
    if enabled is not None and not isinstance(enabled, bool):
        raise BakeryError("bake.step_cache must be true or false (got %r)" % (enabled,))
    size = bake.get("cache_max_size")
    return {
        "enabled": enabled is not False,
        "max_size": parse_size(
            DEFAULT_CACHE_MAX_SIZE if size is None else size, "bake.cache_max_size", "10G"
        ),
        "dir": cache_dir,
    }


# How bakery itself prepares a builder and what it does around each provisioner (the refresh of the package lists
# before the first one, the facts it gathers, ...), beyond what the roles do: part of key 0 with the collection's
# version, so that a bake never resumes from steps that a bakery which did this otherwise kept. Raise it with any
# such change (2: the package lists are refreshed without translations).
BUILDER_FORMAT = 2

# the collection's root, whose galaxy.yml (a checkout) or MANIFEST.json (an installed collection) has its version
_COLLECTION_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@functools.cache
def bakery_version() -> str:
    """This collection's version, read once per process (every target's key 0 and the provenance name it)."""
    return collection_version(_COLLECTION_ROOT)


def step_root(
    name: str, kind: str, options: Mapping[str, Any], source: str | None, package_lists: str
) -> dict[str, Any]:
    """What decides a builder's state before its first provisioner (key 0 of its per-step cache): the target's
    name and type (a role may act on them: ``bakery_target_name``, ``bakery_builder_type``, the builder's host
    name), its source (the rootfs identity; a docker base image by name here, by id where the builder starts),
    the package lists (refreshed before the first provisioner, or kept), and the bakery that prepares the builder
    (:data:`BUILDER_FORMAT`, the collection's version). A docker target's other options (changes, labels) are
    applied at the commit, after every step; another type's options may shape its builder, so they all count."""
    root: dict[str, Any] = {
        "target": name,
        "type": kind,
        "source": source,
        "package_lists": package_lists,
        "bakery": {"builder_format": BUILDER_FORMAT, "version": bakery_version()},
    }
    if kind == "docker":
        root["base_image"] = options.get("base_image")
    else:
        root["options"] = digest_value(options)
    return root


def make_plan(
    bake: Mapping[str, Any],
    validate_target: Validator,
    role_digest: Callable[[str], str],
    cwd: str,
    only: Any = None,
    except_: Any = None,
    force: Any = False,
    bake_id: str | None = None,
    secrets_of: SecretPaths | None = None,
    definition_dir: str | None = None,
    playbook_digest: Callable[[str], str] | None = None,
    playbook_hosts: PlaybookHosts | None = None,
    environ: Mapping[str, str] | None = None,
    role_facts: Callable[[str], tuple[set[str], str | None]] | None = None,
) -> dict[str, Any]:
    """Expand a bake definition (already validated against the bake role's spec) into targets.

    *validate_target(type, options, where)* validates a target's type-specific options against the
    target role's argument spec and returns them with defaults; *role_digest(name)* digests a
    provisioning role's content (its files and its dependencies'); *secrets_of(type)* lists the
    paths of a target type's secret (``no_log``) options: the plan holds them masked (see
    :func:`mask_secrets`) and names them in ``secret_options``. *definition_dir* is the directory the
    provisioners' controller paths (scripts, uploads) are relative to: the bake definition's (*cwd* by
    default). *playbook_digest(path)* digests a playbook entry's content (its file, the files beside it,
    its roles); *playbook_hosts(path, host, groups)* says whether a play of the playbook would run on a
    builder named *host* in *groups* (``all``, ``bakery_builders``, the target's name and type, ``default``).
    *environ* is the controller's environment (its ``SOURCE_DATE_EPOCH``; ``os.environ`` by default).
    *role_facts(name)* gives the fact subsets beyond Ansible's ``min`` whose facts a role names, and why it could
    read any fact, or None: a builder gathers ``min`` and those subsets only (:mod:`_facts`; without it, all).
    """
    name = check_name("bake", bake.get("name"))
    output_dir, cache_dir = bake_dirs(bake, cwd)
    sign = sign_plan(bake.get("sign"), cwd)
    bake_hygiene = check_hygiene(bake.get("hygiene"), "bake.hygiene")
    targets_in = list(bake.get("targets") or [])
    if not targets_in:
        raise BakeryError("bake %r has no targets" % name)

    seen: set[str] = set()
    types: dict[str, str] = {}
    for index, target in enumerate(targets_in):
        where = "bake.targets[%d]" % index
        tname = check_name("target", target.get("name"))
        if tname in seen:
            raise BakeryError("%s: target name %r is used twice" % (where, tname))
        seen.add(tname)
        types[tname] = target_type(target)

    base, base_arches = base_architectures(bake.get("base") or {})
    validated = {
        target["name"]: validate_target(
            types[target["name"]],
            target[types[target["name"]]],
            "bake.targets[%d].%s" % (index, types[target["name"]]),
        )
        for index, target in enumerate(targets_in)
    }
    arches = plan_architectures(targets_in, types, validated, base_arches)
    units = expand_targets(targets_in, types, validated, arches, name)
    # the planned entries' names and types (a target expanded per architecture is one entry per architecture) and
    # the definition's name of each expanded entry
    unit_types = {unit["name"]: types[unit["definition"]] for unit in units}
    groups = {unit["name"]: unit["definition"] for unit in units if unit["architecture"]}
    for unit in units:
        if unit["name"] in types and unit["architecture"]:
            raise BakeryError(
                "target %s baked for %s is named %s, the name of another target: rename one of them"
                % (unit["definition"], unit["architecture"], unit["name"])
            )

    directory = definition_dir or cwd
    shared = [
        _provisioners.parse_entry(entry, ["provisioners", index], directory, check_role_name)
        for index, entry in enumerate(bake.get("provisioners") or [])
    ]
    own: dict[str, list[dict]] = {}
    for index, target in enumerate(targets_in):
        own[target["name"]] = [
            _provisioners.parse_entry(
                entry, ["targets", index, "provisioners", position], directory, check_role_name
            )
            for position, entry in enumerate(target.get("provisioners") or [])
        ]
        if target.get("vars") is not None and not isinstance(target["vars"], Mapping):
            raise BakeryError("bake.targets[%d].vars must be a dictionary" % index)
    on_error = [
        _provisioners.parse_entry(entry, ["error_provisioners", index], directory, check_role_name)
        for index, entry in enumerate(bake.get("error_provisioners") or [])
    ]
    checks = [
        _provisioners.parse_entry(entry, ["verify", index], directory, check_role_name)
        for index, entry in enumerate(bake.get("verify") or [])
    ]
    own_checks: dict[str, list[dict]] = {
        target["name"]: [
            _provisioners.parse_entry(
                entry, ["targets", index, "verify", position], directory, check_role_name
            )
            for position, entry in enumerate(target.get("verify") or [])
        ]
        for index, target in enumerate(targets_in)
    }
    every_check = checks + [entry for entries in own_checks.values() for entry in entries]
    _provisioners.check_verify(every_check)
    every_entry = shared + [entry for entries in own.values() for entry in entries] + on_error + every_check
    for entry in every_entry:
        _provisioners.check_selection(entry, dict(types, **unit_types))
    digests: dict[str, str] = {}
    rootfs = rootfs_plan(base, cache_dir) if base else None
    epoch = reproducibility(bake, rootfs, os.environ if environ is None else environ)

    chosen = select(list(unit_types), as_list(only), as_list(except_), unit_types, groups)
    package_lists = bake.get("package_lists") or "refresh"
    chosen_subset = bake.get("gather_subset") or None
    step_cache = cache_settings(bake, cache_dir)
    forced = force if isinstance(force, bool) else None
    forced_names = [] if forced is not None else as_list(force)

    planned = []
    for unit in units:
        index, target, tname, arch = unit["index"], unit["target"], unit["name"], unit["architecture"]
        kind, defined = types[unit["definition"]], unit["definition"]
        where = "bake.targets[%d].%s" % (index, kind)
        options = validate_target(kind, unit["options"], where)
        # an entry of a target expanded per architecture builds from the base made for that architecture: what a
        # bake whose base names that architecture gives a target
        unit_base = dict(base, architecture=arch) if arch else base
        unit_rootfs = rootfs_plan(unit_base, cache_dir) if arch and base else rootfs
        if kind == "qemu":
            options = with_hygiene(options, bake_hygiene, where)
        elif kind in INSTANCE_HYGIENE_TYPES:
            options = instance_hygiene(options, bake_hygiene, where)
        check_target(kind, options, where, cwd)
        options = with_local_paths(kind, options, cwd)
        paths = secrets_of(kind) if secrets_of else []
        secret_options = present_secrets(options, paths)
        options = mask_secrets(options, paths)
        uses_builder = needs_builder(kind, options) and not options.get("source")
        inputs: dict[str, str] = {}
        step_keys: list[str] = []
        target_rootfs = None
        provisioners: list[dict] = []
        error_provisioners: list[dict] = []
        if not uses_builder and (own[defined] or target.get("vars")):
            raise BakeryError(
                "bake.targets[%d] (%s) is not provisioned (%s): it takes no provisioners or vars"
                % (
                    index,
                    tname,
                    "made from target %s" % options["source"] if options.get("source") else "it builds alone",
                )
            )
        if uses_builder:
            target_vars = target.get("vars") or {}
            where_out = os.path.join(output_dir, "downloads")
            provisioners = _provisioners.for_target(
                shared, own[defined], tname, kind, target_vars, where_out, group=defined
            )
            error_provisioners = _provisioners.for_target(
                on_error, [], tname, kind, target_vars, where_out, group=defined
            )
            builder = builder_kind(kind, options)
            _provisioners.check_builder(provisioners + error_provisioners, tname, builder)
            if playbook_hosts:
                check_playbook_hosts(provisioners + error_provisioners, tname, kind, playbook_hosts, defined)
            inputs.update(_provisioners.inputs(provisioners, role_digest, digests, playbook_digest))
            step_digests = [
                _provisioners.step_digest(entry, role_digest, digests, playbook_digest)
                for entry in provisioners
            ]
            if kind in INSTANCE_HYGIENE_TYPES:
                # tighter checks check the instance again: a new image
                inputs["hygiene"] = hygiene_input(options["hygiene"])
            if not uses_own_source(kind, options):
                if unit_rootfs is None:
                    raise BakeryError(
                        "bake.targets[%d] (%s) needs a source: set bake.base (a rootfs to build) or "
                        "the target's own base image" % (index, tname)
                    )
                target_rootfs = own_rootfs(kind, options, unit_base, cache_dir) or unit_rootfs
                inputs["source"] = target_rootfs["identity"]
                if kind == "qemu":
                    try:
                        _qemu_arch.check_firmware(
                            base.get("architecture"), (options.get("vm") or {}).get("firmware")
                        )
                    except BakeryError as exc:
                        raise BakeryError("%s: vm.%s" % (where, exc.msg)) from None
            root = step_root(tname, kind, options, inputs.get("source"), package_lists)
            if epoch["explicit"]:
                # the user's epoch changes what the provisioners write (it is in their environment) and the
                # artifact's bytes; the derived one follows from the source, an input already. A digest, as every
                # input is (the SBOMs list the inputs as SHA-256 checksums)
                inputs["source_date_epoch"] = digest_value({"source_date_epoch": epoch["source_date_epoch"]})
                root["source_date_epoch"] = epoch["source_date_epoch"]
            step_keys = chain_keys(root, step_digests)
        # the checks of the finished artifact: no input of its fingerprint, but of whether it is verified
        verify = _provisioners.for_target(
            checks, own_checks[defined], tname, kind, target.get("vars") or {}, group=defined
        )
        if verify and kind not in VERIFY_TYPES:
            raise BakeryError(
                "%s selects target %s: verify is not supported for %s targets yet (only %s; restrict the entry "
                "with only or except)" % (verify[0]["source"], tname, kind, ", ".join(VERIFY_TYPES))
            )
        if verify and kind == "qemu" and not {"qcow2", "raw"} & set(options.get("formats") or []):
            raise BakeryError(
                "%s selects target %s: verify boots the disk from its qcow2 or raw output, and formats (%s) has "
                "neither: add qcow2 to formats, or restrict the entry with only or except"
                % (verify[0]["source"], tname, ", ".join(options.get("formats") or []))
            )
        check_verify_instance(kind, options, verify, tname)
        booted = [entry for entry in verify if entry["kind"] != "local"]
        if booted and kind in LOCAL_CHECKS and not boots_for_checks(kind, options):
            raise BakeryError(
                "%s selects target %s: %s; a %s check needs a running system: %scheck the qemu target the %s is "
                "made from instead, or restrict the entry with only or except"
                % (
                    booted[0]["source"],
                    tname,
                    LOCAL_CHECKS[kind],
                    booted[0]["kind"],
                    "set verify_up: true on the target, "
                    if kind == "vagrant"
                    else "set verify_instance: true on the target, "
                    if kind in INSTANCE_CHECKS
                    else "",
                    "box" if kind == "vagrant" else "image",
                )
            )
        verify_inputs = _provisioners.inputs(verify, role_digest, digests, playbook_digest)
        target_forced = (
            bool(target.get("force")) or bool(forced) or tname in forced_names or defined in forced_names
        )
        verify_inputs.update(verify_options(kind, options))
        subset, subset_why = _facts.gather_subset(
            provisioners + error_provisioners, role_facts, chosen_subset
        )
        verify_subset, verify_subset_why = _facts.gather_subset(verify, role_facts, chosen_subset)
        planned.append(
            {
                "name": tname,
                # the target of the definition it is baked for (its name, and the architecture it is baked for
                # when the definition lists several: architectures)
                "definition": defined,
                "expanded_architecture": arch,
                "type": kind,
                "host": "bakery-%s" % tname,
                "builder": "bakery-%s-builder" % tname,
                "selected": tname in chosen,
                "force": target_forced,
                "options": options,
                "secret_options": secret_options,
                "inputs": inputs,
                "rootfs": target_rootfs,
                # what the artifact runs on, where the plan knows it (a base image's is read at capture)
                "architecture": target_rootfs["source"]["architecture"] if target_rootfs else arch,
                "needs_builder": uses_builder,
                "step_keys": step_keys,
                "step_cache": dict(
                    step_cache,
                    enabled=step_cache["enabled"] and not target_forced,
                    max_resume=_provisioners.resumable(provisioners),
                )
                if step_keys
                else None,
                "provisioners": [_provisioners.masked(entry) for entry in provisioners],
                "error_provisioners": [_provisioners.masked(entry) for entry in error_provisioners],
                "verify": [_provisioners.masked(entry) for entry in verify],
                "verify_digest": fingerprint(verify_inputs) if verify else None,
                # the facts the builder and the verifier gather before the roles (see _facts)
                "gather_subset": {
                    "builder": subset,
                    "builder_why": subset_why,
                    "verifier": verify_subset,
                    "verifier_why": verify_subset_why,
                    # a builder that resumes (the per-step cache) at or after this position gathers none
                    "builder_facts_until": _facts.facts_until(
                        provisioners, error_provisioners, chosen_subset
                    ),
                },
                "source": None,
            }
        )
    check_selected(every_entry, planned)
    link_sources(planned, unit_types, chosen, {unit["name"]: unit["options"] for unit in units})
    indexes = docker_indexes(units, validated, planned)
    bake_id = bake_id or new_bake_id()
    for entry in planned:
        entry.update(
            bake_id=bake_id,
            bake_name=name,
            output_dir=output_dir,
            cache_dir=cache_dir,
            source_date_epoch=epoch["source_date_epoch"],
        )
    return {
        "name": name,
        "bake_id": bake_id,
        "output_dir": output_dir,
        "manifest": os.path.join(output_dir, "bake-manifest.json"),
        "targets": [entry for entry in planned if entry["selected"]],
        "skipped_targets": [entry["name"] for entry in planned if not entry["selected"]],
        "indexes": indexes,
        "sign": sign,
        "reproducibility": epoch,
    }


def reproducibility(
    bake: Mapping[str, Any], rootfs: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """The bake's epoch (``_reproducible.source_date_epoch``), where it comes from, and what keeps the
    artifacts from being reproduced later (a moving base mirror), for the plan and ``--check``."""
    mirror = (rootfs or {}).get("source", {}).get("mirror") if rootfs else None
    epoch = _reproducible.source_date_epoch(
        bake.get("source_date_epoch"), environ, mirror, rootfs["identity"] if rootfs else None
    )
    return {
        "source_date_epoch": epoch.value,
        "source": epoch.source,
        "explicit": epoch.explicit,
        "mirror": mirror,
        "warning": _reproducible.mirror_warning(mirror),
    }


def sign_plan(value: Any, cwd: str) -> dict[str, Any] | None:
    """The bake's ``sign`` setting as the plan shows it: the key, the GnuPG home (absolute), the passphrase
    masked; None when the bake signs nothing."""
    try:
        sign = _signature.sign_option(value)
    except BakeryError as exc:
        raise BakeryError(exc.msg) from None
    if sign is None:
        return None
    home = sign["gnupg_home"]
    return {
        "key": sign["key"],
        "gnupg_home": os.path.normpath(os.path.join(cwd, os.path.expanduser(home))) if home else None,
        "passphrase": MASK if sign["passphrase"] else None,
    }


def check_hygiene(hygiene: Any, where: str) -> dict[str, Any]:
    """A ``hygiene`` setting (``skip``, ``var_log_max``), checked: unknown check names and bad sizes refused."""
    if hygiene is None:
        return {}
    if not isinstance(hygiene, Mapping):
        raise BakeryError("%s must be a dictionary (skip, var_log_max)" % where)
    from ansible_collections.bakery.images.plugins.module_utils import _hygiene

    try:
        if hygiene.get("skip") is not None:
            _hygiene.check_names(as_list(hygiene["skip"]), "skip")
        if hygiene.get("var_log_max") is not None:
            _hygiene.parse_size(hygiene["var_log_max"])
    except BakeryError as exc:
        raise BakeryError("%s: %s" % (where, exc.msg)) from None
    return dict(hygiene)


# the target types whose instance bakes run the hygiene checks on their builder before capture (an upload of a
# qemu target's disk has that disk's results)
INSTANCE_HYGIENE_TYPES = ("ami", "gce", "digitalocean")


def instance_hygiene(
    options: Mapping[str, Any], bake_hygiene: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """An ami, gce or digitalocean target's options with its ``hygiene`` complete (as :func:`with_hygiene`) for an instance
    bake; an upload (``source``) has none, and refuses its own: the checks of the disk it uploads apply."""
    if options.get("source"):
        if options.get("hygiene") is not None:
            raise BakeryError(
                "%s.hygiene: this target uploads the disk of qemu target %s, whose hygiene checks apply (set "
                "hygiene on that target, or bake.hygiene); only an instance bake has hygiene settings of its own"
                % (where, options["source"])
            )
        return dict(options)
    return with_hygiene(options, bake_hygiene, where)


def hygiene_input(hygiene: Mapping[str, Any]) -> str:
    """The fingerprint input of a target's complete ``hygiene`` settings (sizes in bytes: 64M and 64MiB agree)."""
    from ansible_collections.bakery.images.plugins.module_utils import _hygiene

    return digest_value(_hygiene.parse_options(hygiene).describe())


def with_hygiene(options: Mapping[str, Any], bake_hygiene: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A qemu target's options with its ``hygiene`` complete: each setting the target leaves out is the bake's
    (``bake.hygiene``), else the default."""
    own = check_hygiene(options.get("hygiene") or {}, where + ".hygiene")
    merged = {}
    for key, default in (("skip", []), ("var_log_max", "64M")):
        value = own.get(key) if own.get(key) is not None else bake_hygiene.get(key)
        merged[key] = default if value is None else value
    merged["skip"] = sorted(set(as_list(merged["skip"])))
    return dict(options, hygiene=merged)


# the target types whose checks are local commands on the controller, and what they are told
LOCAL_CHECKS = {
    "vagrant": "a box's checks are local commands (the box is added to a temporary VAGRANT_HOME, exported to them) "
    "unless the target sets verify_up: true, which boots the box with vagrant up for them",
    "ami": "an AMI's checks are local commands (BAKERY_IMAGE_ID and BAKERY_AWS_REGION name the image) unless the "
    "target sets verify_instance: true (then the others run on an instance launched from the new image)",
    "gce": "a GCE image's checks are local commands (BAKERY_IMAGE_NAME and BAKERY_GCE_PROJECT name the image) "
    "unless the target sets verify_instance: true (then the others run on an instance started from the new image)",
    "openstack": "a Glance image's checks are local commands (BAKERY_IMAGE_ID and BAKERY_OPENSTACK_CLOUD name the "
    "image; bakery starts no server)",
    "digitalocean": "a DigitalOcean image's checks are local commands (BAKERY_IMAGE_ID names the image; bakery starts "
    "no droplet)",
}
# the target types whose checks may run on an instance of the new image (option verify_instance)
INSTANCE_CHECKS = ("ami", "gce")


def check_verify_instance(kind: str, options: Mapping[str, Any], verify: list[dict], target: str) -> None:
    """``verify_instance`` starts an instance for the checks: refused without a check to run on it, and for a gce
    target without the zone to start it in."""
    if kind not in INSTANCE_CHECKS or not options.get("verify_instance"):
        return
    if not verify:
        raise BakeryError(
            "target %s sets verify_instance, but no verify entry selects it: add a check (bake.verify or the "
            "target's verify), or leave verify_instance out" % target
        )
    if kind == "gce" and not options.get("zone"):
        raise BakeryError(
            "target %s sets verify_instance: the instance of the new image starts in zone, which it does not set"
            % target
        )


def boots_for_checks(kind: str, options: Mapping[str, Any]) -> bool:
    """Whether a target of a LOCAL_CHECKS type boots its artifact for its checks (a box with verify_up, an ami
    or gce image with verify_instance)."""
    if kind == "vagrant":
        return bool(options.get("verify_up"))
    return kind in INSTANCE_CHECKS and bool(options.get("verify_instance"))


def verify_options(kind: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The target options that decide how its checks run (inputs of its verify digest, not of its fingerprint):
    a changed one verifies the artifact again without rebuilding it."""
    if kind in INSTANCE_CHECKS and options.get("verify_instance"):
        return {"verify_instance": "true"}
    if kind != "vagrant" or not (options.get("verify_up") or options.get("verify_vagrantfile")):
        return {}  # the digest of a box whose checks are local commands stays what it was before verify_up
    return {
        "vagrant_verify": digest_value(
            {
                "verify_up": bool(options.get("verify_up")),
                "vagrantfile": list(options.get("verify_vagrantfile") or []),
            }
        )
    }


# the target types whose artifacts the bake can check (verify) before it publishes them
VERIFY_TYPES = ("docker", "qemu", "vagrant", "ami", "gce", "openstack", "digitalocean")


def check_selected(entries: list[dict], planned: list[dict[str, Any]]) -> None:
    """Every entry with ``only``/``except`` runs on some target's builder (else it is a mistake: an ``only``
    naming a target that is not provisioned, an ``except`` that leaves out every target). An entry without
    them may find no builder, in a bake whose targets are all made without one."""
    used = {
        entry["source"]
        for target in planned
        for entry in target["provisioners"] + target["error_provisioners"] + target["verify"]
    }
    for entry in entries:
        if entry["source"] not in used and (entry["only"] or entry["except"]):
            every = (
                "target"
                if ".verify[" in entry["source"]
                else "target that is provisioned (one with a builder)"
            )
            raise BakeryError(
                "%s is selected by no target: its only/except leave out every %s"
                % (_provisioners.entry_where(entry["source"], entry), every)
            )


# The names clouds give the Debian architectures of the disks they import (EC2's RegisterImage Architecture,
# Compute Engine's Image.architecture), and the option of each target type that carries it.
CLOUD_ARCHITECTURES = {
    "ami": {"amd64": "x86_64", "arm64": "arm64", "i386": "i386"},
    "gce": {"amd64": "X86_64", "arm64": "ARM64"},
}
# arm64 machines of these clouds boot with UEFI only
UEFI_ONLY = {"arm64"}


def cloud_architecture(entry: dict[str, Any], kind: str, given: Mapping[str, Any], where: str) -> None:
    """An image uploaded from another target's disk gets that disk's architecture, in the cloud's words (and
    UEFI boot for arm64 AMIs); an option that names another one is refused: the image would not boot."""
    names = CLOUD_ARCHITECTURES.get(kind)
    debian = entry.get("architecture")
    if names is None or not debian:
        return
    name = names.get(debian)
    if name is None:
        raise BakeryError(
            "%s: its source disk is %s, and %s images are made for %s only"
            % (where, debian, kind, ", ".join(names))
        )
    if given.get("architecture") not in (None, name):
        raise BakeryError(
            "%s: architecture %s, but its source disk is %s (%s here): leave architecture out, or bake the "
            "source for that architecture" % (where, given["architecture"], debian, name)
        )
    entry["options"]["architecture"] = name
    if kind == "ami" and debian in UEFI_ONLY:
        if given.get("boot_mode") not in (None, "uefi"):
            raise BakeryError(
                "%s: boot_mode %s, but an %s AMI boots with UEFI only: leave boot_mode out, or set uefi"
                % (where, given["boot_mode"], debian)
            )
        entry["options"]["boot_mode"] = "uefi"


# Instance bakes: the machines that run each architecture. EC2's Graviton families end their generation with a
# "g" (t4g, m7g, c6gn, x2gd, g5g, hpc7g, is4gen; a1 came first); Compute Engine's arm64 series are Ampere's T2A and
# Google's Axion C4A. The smallest general-purpose type of each is the build machine's default.
_EC2_ARM_FAMILY = re.compile(r"^(a1|[a-z]+\d+[a-z]*g[a-z-]*)$")
_GCE_ARM_SERIES = ("t2a", "c4a")
BUILD_MACHINES = {
    "ami": {"x86_64": None, "arm64": "t4g.micro"},  # None: the module's default, t3.micro
    "gce": {"X86_64": None, "ARM64": "t2a-standard-1"},  # None: the role's default, e2-medium
}


def machine_architecture(kind: str, machine: str) -> str:
    """The architecture (in the cloud's words) of an EC2 instance type or a Compute Engine machine type."""
    if kind == "ami":
        return "arm64" if _EC2_ARM_FAMILY.match(machine.split(".", 1)[0]) else "x86_64"
    return "ARM64" if machine.split("-", 1)[0] in _GCE_ARM_SERIES else "X86_64"


def instance_architecture(entry: dict[str, Any], kind: str, given: Mapping[str, Any], where: str) -> None:
    """An instance bake for an architecture: ``architecture`` (or an AMI filter's ``architecture``) chooses the
    source image and the build machine. An AMI's source filter gets that architecture, and the build machine of an
    arm64 bake defaults to an arm64 type (``t4g.micro``, ``t2a-standard-1``); a machine type of the other
    architecture, or a filter that names another one, is refused: the instance would not start. The entry records
    the Debian architecture (manifest, summary)."""
    if kind not in BUILD_MACHINES or entry["options"].get("source"):
        return
    options = entry["options"]
    named = given.get("architecture")
    source_filter = dict(options.get("source_ami_filter") or {}) if kind == "ami" else {}
    filtered = source_filter.get("architecture")
    if named and filtered and named != filtered:
        raise BakeryError(
            "%s: architecture %s, but source_ami_filter.architecture is %s: name one architecture"
            % (where, named, filtered)
        )
    arch = named or filtered
    if not arch:
        return
    machine_option = "instance_type" if kind == "ami" else "machine_type"
    machine = given.get(machine_option)
    runs = "x86_64" if arch == "i386" else arch  # x86_64 instances run i386 images
    if machine:
        if machine_architecture(kind, str(machine)) != runs:
            raise BakeryError(
                "%s: %s %s runs %s, but the bake is for %s: choose a %s type (for example %s), or leave %s out"
                % (
                    where,
                    machine_option,
                    machine,
                    machine_architecture(kind, str(machine)),
                    arch,
                    runs,
                    BUILD_MACHINES[kind][runs] or ("t3.micro" if kind == "ami" else "e2-medium"),
                    machine_option,
                )
            )
    elif BUILD_MACHINES[kind][runs]:
        options[machine_option] = BUILD_MACHINES[kind][runs]
    options["architecture"] = arch
    if source_filter and not filtered:
        options["source_ami_filter"] = dict(source_filter, architecture=arch)
    debian = {name: debian for debian, name in CLOUD_ARCHITECTURES[kind].items()}
    entry["architecture"] = debian.get(arch, entry.get("architecture"))


def link_sources(
    planned: list[dict[str, Any]],
    types: dict[str, str],
    chosen: list[str],
    given: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Targets made from another target's disk file (``options.source``) get that target as their source.

    The source's identity (its inputs and options) becomes part of the consumer's inputs, so a new disk
    means a new box or image. Selecting a consumer selects its source too: the source is then found
    unchanged, or built first. An image of a cloud gets the source's architecture (*given*: the options as
    the definition wrote them, to tell a default from a choice).
    """
    by_name = {entry["name"]: entry for entry in planned}
    for entry in planned:
        kind, named = types[entry["name"]], ((given or {}).get(entry["name"]) or {}).get("architecture")
        if (
            kind in CLOUD_ARCHITECTURES
            and named is not None
            and named not in CLOUD_ARCHITECTURES[kind].values()
        ):
            raise BakeryError(
                "target %r: architecture %r is not one of %s"
                % (entry["name"], named, ", ".join(sorted(set(CLOUD_ARCHITECTURES[kind].values()))))
            )
        source = entry["options"].get("source")
        if not source:
            instance_architecture(
                entry, kind, (given or {}).get(entry["name"]) or {}, "target %r" % entry["name"]
            )
            continue
        where = "target %r" % entry["name"]
        if source not in by_name:
            raise BakeryError(
                "%s: source %r is not a target of this bake (targets: %s)"
                % (where, source, ", ".join(by_name))
            )
        if types[source] not in SOURCE_TYPES:
            raise BakeryError(
                "%s: source %r is a %s target; a source must be a target of type %s"
                % (where, source, types[source], " or ".join(SOURCE_TYPES))
            )
        origin = by_name[source]
        entry["source"] = {"target": source, "type": types[source], "host": origin["host"]}
        entry["architecture"] = origin.get("architecture")
        cloud_architecture(entry, types[entry["name"]], (given or {}).get(entry["name"]) or {}, where)
        entry["inputs"] = {
            "source_target": digest_value(
                {"type": types[source], "inputs": origin["inputs"], "options": origin["options"]}
            )
        }
        if entry["name"] in chosen and source not in chosen:
            origin["selected"] = True


def own_rootfs(kind: str, options: Mapping[str, Any], base: Mapping[str, Any], cache_dir: str) -> dict | None:
    """A target type whose builder needs more than the base: its own rootfs, the base plus its packages.

    A qemu target boots, so its rootfs has a kernel, an init and an SSH server (its ``system_packages``) and
    its ``packages``; the tarball is cached by fingerprint beside the base. For another architecture the
    kernel is that architecture's and GRUB's EFI modules are added where its disks take them from the tree
    (:func:`_qemu_arch.rootfs_packages`).
    """
    if kind != "qemu" or not base:
        return None
    system = _qemu_arch.rootfs_packages(
        base.get("architecture"), list(options.get("system_packages") or []), list(base.get("packages") or [])
    )
    extra = system + list(options.get("packages") or [])
    if options.get("cloud_init"):
        extra.append("cloud-init")
    if not extra:
        return None
    packages = list(base.get("packages") or []) + extra
    return rootfs_plan(dict(base, packages=packages), cache_dir)


def check_file_name(what: str, name: Any) -> str:
    """A name that becomes a file name in the output directory: never a path."""
    if not isinstance(name, str) or not _FILE_NAME.match(name):
        raise BakeryError(
            "%s %r is not a file name: use letters, digits, '_', '.', '+' or '-' (up to 200, no '/', not "
            "starting with '.')" % (what, name)
        )
    return name


def check_relative_path(what: str, path: Any) -> None:
    """An output path relative to the output directory stays in it ('..' is refused; absolute is explicit)."""
    if isinstance(path, str) and not os.path.isabs(path) and ".." in path.replace("\\", "/").split("/"):
        raise BakeryError(
            "%s %r leaves the output directory: give a path inside it, or an absolute path" % (what, path)
        )


def check_size_gb(what: str, value: Any) -> None:
    if value is not None and not 1 <= int(value) <= MAX_VOLUME_GB:
        raise BakeryError("%s must be 1 to %d (GiB), not %r" % (what, MAX_VOLUME_GB, value))


def local_path(cwd: str, path: str) -> str:
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


# Target options that name a file or directory on the controller, by target type
LOCAL_PATHS = {
    "docker": ("context",),
    "qemu": ("base_image", "vagrant_key"),
    "gce": ("service_account_file",),
    "openstack": ("ca_cert",),
}


def with_local_paths(kind: str, options: Mapping[str, Any], cwd: str) -> dict[str, Any]:
    """*options* with the controller paths among them made absolute against *cwd*, the directory
    ansible-playbook runs in: the plan checks them there, and the modules that read them run elsewhere."""
    out = dict(options)
    for key in LOCAL_PATHS.get(kind, ()):
        if isinstance(out.get(key), str) and out[key]:
            out[key] = local_path(cwd, out[key])
    return out


def check_target(kind: str, options: Mapping[str, Any], where: str, cwd: str = ".") -> None:
    """What the argument spec cannot say: names the engine or cloud would reject later, files that are
    missing or malformed (targets build on this host), sizes out of range, options that conflict."""
    # the modules of a kind are imported when a target of that kind is checked: _aws, _gcp and _docker import
    # boto3, google-auth and the Docker SDK, 0.2 s that every bake paid in its plan (the bake_plan action loads this
    # module in Ansible's main process), whatever its targets
    try:
        if kind == "docker":
            from ansible_collections.bakery.images.plugins.module_utils._docker import (
                check_context,
                validate_name,
            )

            validate_name(options.get("repository") or "", options.get("tags") or ["latest"])
            if options.get("context"):
                if options.get("base_image"):
                    raise BakeryError(
                        "base_image is for a container bake; a Dockerfile build (context) starts FROM its "
                        "Dockerfile"
                    )
                check_context(local_path(cwd, options["context"]), options.get("dockerfile"))
        elif kind == "qemu":
            from ansible_collections.bakery.images.plugins.module_utils import _qemu_disk

            _qemu_disk.parse_size(options.get("disk_size") or "4G")
            if options.get("name") is not None:
                check_file_name("output name", options["name"])
            if options.get("base_image") and options.get("provision") == "chroot":
                raise BakeryError(
                    "a base_image disk cannot be provisioned in a chroot (bakery mounts nothing); "
                    "set provision: vm"
                )
            if options.get("provision") == "none" and not options.get("base_image"):
                raise BakeryError("provision: none copies base_image into the outputs; set base_image")
            if options.get("backing") and not options.get("base_image"):
                raise BakeryError("backing is for a base_image")
            if options.get("compress") and "qcow2" not in (options.get("formats") or []):
                raise BakeryError("compress is for qcow2 outputs; formats has no qcow2")
            if options.get("base_image") and not os.path.isfile(local_path(cwd, options["base_image"])):
                raise BakeryError("base_image %r is not a file" % options["base_image"])
        elif kind == "vagrant":
            from ansible_collections.bakery.images.plugins.module_utils import _vagrant

            if options.get("box_name"):
                _vagrant.check_box_name(options["box_name"])
            if options.get("version") is not None:
                _vagrant.check_version(options["version"])
            if not 0 <= int(options.get("compression", 6)) <= 9:
                raise BakeryError("compression must be a gzip level, 0 (plain tar) to 9")
            check_relative_path("output", options.get("output"))
            check_relative_path("catalog", options.get("catalog"))
        elif kind == "ami":
            from ansible_collections.bakery.images.plugins.module_utils._aws import check_ami_name

            check_ami_name(options.get("name"))
            check_size_gb("root_volume_size", options.get("root_volume_size"))
            sources = [key for key in AMI_SOURCES if options.get(key)]
            if not options.get("source") and len(sources) != 1:
                raise BakeryError(
                    "an instance bake needs exactly one of %s (it has %s); or set source to a qemu target "
                    "to upload its disk" % (", ".join(AMI_SOURCES), ", ".join(sources) or "none")
                )
    except BakeryError as exc:
        raise BakeryError("%s: %s" % (where, exc.msg)) from None
    if kind == "gce":
        check_gce(options, where)
    if kind == "openstack":
        check_openstack(options, where)
    if kind == "digitalocean":
        check_digitalocean(options, where)


def check_digitalocean(options: Mapping[str, Any], where: str) -> None:
    """A digitalocean target imports a qemu target's disk (source, through a Spaces bucket) or snapshots a droplet
    of base_image (an instance bake); what DigitalOcean would refuse later."""
    from ansible_collections.bakery.images.plugins.module_utils import _digitalocean

    if options.get("source"):
        if not options.get("spaces_bucket"):
            raise BakeryError(
                "%s: a digitalocean target that imports the disk of target %s uploads it to a Spaces bucket: set "
                "spaces_bucket" % (where, options["source"])
            )
        if options.get("base_image"):
            raise BakeryError(
                "%s: base_image is for an instance bake (a droplet); this target imports the disk of target %s"
                % (where, options["source"])
            )
    elif not options.get("base_image"):
        raise BakeryError(
            "%s: a digitalocean target needs base_image (an instance bake: a droplet of that image, such as "
            "debian-12-x64, provisioned and snapshotted) or source (a qemu target of this bake whose disk is "
            "imported)" % where
        )
    try:
        _digitalocean.check_params(options)
    except BakeryError as exc:
        raise BakeryError("%s: %s" % (where, exc.msg)) from None


def check_openstack(options: Mapping[str, Any], where: str) -> None:
    """An openstack target uploads a qemu target's disk (no instance bakes); what Glance would refuse later."""
    if not options.get("source"):
        raise BakeryError(
            "%s: an openstack target publishes the disk of a qemu target of this bake: set source to its name "
            "(instance bakes on Nova are not supported)" % where
        )
    # imported here: openstacksdk (which _openstack imports) is slow to import, and only openstack targets need it
    from ansible_collections.bakery.images.plugins.module_utils import _openstack

    for key in _openstack.SECRET_OPTIONS:
        if options.get(key) is not None and not isinstance(options[key], Mapping):
            raise BakeryError("%s: %s must be a dictionary" % (where, key))
    if options.get("interface") not in (None, "public", "internal", "admin"):
        raise BakeryError(
            "%s: interface must be public, internal or admin, not %r" % (where, options["interface"])
        )
    try:
        _openstack.check_params(options)
    except BakeryError as exc:
        raise BakeryError("%s: %s" % (where, exc.msg)) from None


def check_gce(options: Mapping[str, Any], where: str) -> None:
    """Names Compute Engine would reject (RFC 1035), and the options each way of making the image needs."""
    from ansible_collections.bakery.images.plugins.module_utils._gcp import BAKE_ID_LENGTH, check_labels
    from ansible_collections.bakery.images.plugins.module_utils._gcp import check_name as check_gce_name

    try:
        name = options.get("name") or ""
        if options.get("unique_name", True):
            limit = 62 - BAKE_ID_LENGTH
            if len(name) > limit:
                raise BakeryError(
                    "image name %r is too long: with unique_name the bake id is appended, so at most %d "
                    "characters" % (name, limit)
                )
        # a valid name stays valid with "-<bake id>" appended
        check_gce_name("image name", name)
        if options.get("family"):
            check_gce_name("image family", options["family"])
        check_labels(options.get("labels") or {})
        check_size_gb("disk_size_gb", options.get("disk_size_gb"))
    except BakeryError as exc:
        raise BakeryError("%s: %s" % (where, exc.msg)) from None
    if options.get("source"):
        if not options.get("bucket"):
            raise BakeryError("%s: an import (source: %s) needs bucket" % (where, options["source"]))
        if options.get("source_image") or options.get("source_image_family"):
            raise BakeryError(
                "%s: give either source (an import) or source_image/source_image_family" % where
            )
    else:
        if bool(options.get("source_image")) == bool(options.get("source_image_family")):
            raise BakeryError(
                "%s: an instance bake needs exactly one of source_image and source_image_family "
                "(or source, the name of a qemu target to import)" % where
            )
        if not options.get("zone"):
            raise BakeryError("%s: an instance bake needs zone" % where)


# how an ami target names the AMI its builder starts from
AMI_SOURCES = ("source_ami", "source_ami_filter", "source_ami_ssm_parameter")


def builder_kind(kind: str, options: Mapping[str, Any]) -> str:
    """What provisions a target: a ``container``, a ``rootfs`` (chroot), a ``vm`` or a ``cloud`` machine."""
    if kind == "docker":
        return "container"
    if kind == "qemu":
        return "vm" if options.get("provision") == "vm" else "rootfs"
    return "vm" if kind == "vagrant" else "cloud"


def playbook_groups(target: str, kind: str, group: str | None = None) -> list[str]:
    """The groups a builder is in for a playbook entry's plays (its ``hosts:`` patterns); an entry of a target
    baked for several architectures is in its target's group too (*group*: ``web`` for ``web-arm64``)."""
    return ["bakery_builders", target, kind, "default"] + ([group] if group and group != target else [])


def check_playbook_hosts(
    entries: list[dict], target: str, kind: str, playbook_hosts: PlaybookHosts, group: str | None = None
) -> None:
    """A playbook entry whose plays would all leave this target's builder out is a mistake: refused."""
    for entry in entries:
        if entry["kind"] != "playbook":
            continue
        path = entry["playbook"]["file"]
        if not playbook_hosts(path, "bakery-%s-builder" % target, playbook_groups(target, kind, group)):
            raise BakeryError(
                "%s: no play of playbook %s would run on the builder of target %s: its hosts: patterns match "
                "none of all, bakery_builders, default, %s (the target's name), %s (its type)"
                % (_provisioners.entry_where(entry["source"], entry), path, target, target, kind)
            )


def needs_builder(kind: str, options: Mapping[str, Any]) -> bool:
    """Whether the target is provisioned by the bake's roles on a builder (else it builds alone)."""
    if kind == "docker":
        return not options.get("context")
    if kind == "qemu":
        return options.get("provision") != "none"
    return True


def uses_own_source(kind: str, options: Mapping[str, Any]) -> bool:
    if kind in ("docker", "qemu"):
        return bool(options.get("base_image"))
    # an AMI, a GCE instance or a droplet starts from its source image, whose id the module folds into the fingerprint
    return kind in ("ami", "gce", "digitalocean")
