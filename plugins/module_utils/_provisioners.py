# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Provisioners of a bake: entries checked, selected per target, and digested for the fingerprint.

A bake's ``provisioners`` apply, in order, to every target that selects them (``only``/``except``, by
target name or type); a target's own ``provisioners`` follow, and its ``vars`` override the variables of
the role and playbook entries for it alone. Each entry is of one kind: ``role``, ``playbook`` (a user's
playbook run against the builder), ``shell`` (commands or scripts in the builder), ``file`` (an upload to
the builder, or a download from it into the output directory), ``puppet`` (a masterless ``puppet apply``)
or ``local`` (commands on the controller). ``error_provisioners`` are entries of the same kinds that run on
a builder whose provisioning failed.

Pure logic: controller paths are resolved against the directory of the bake definition, which the caller
hands in.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    digest_file,
    digest_tree,
    digest_value,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError

KINDS = ("role", "playbook", "shell", "file", "puppet", "local")
# keys every entry may have, whatever its kind
COMMON = ("name", "only", "except", "pause_before", "retries", "timeout", "no_log")
# keys of role and playbook entries besides their kind
ROLE_KEYS = ("vars",)
VARS_KINDS = ("role", "playbook")
COMMAND_KEYS = ("inline", "script", "scripts", "interpreter", "environment", "valid_exit_codes")
SHELL_KEYS = COMMAND_KEYS + ("become", "user", "expect_disconnect")
FILE_KEYS = ("src", "dest", "mode", "owner", "group", "direction")
PLAYBOOK_KEYS = ("file", "tags", "skip_tags", "extra_arguments")
PUPPET_KEYS = (
    "manifest",
    "module_paths",
    "hiera_config",
    "facts",
    "extra_arguments",
    "environment",
    "package",
    "valid_exit_codes",
)
KIND_KEYS = {
    "shell": SHELL_KEYS,
    "local": ("inline", "script", "interpreter", "environment", "valid_exit_codes"),
    "file": FILE_KEYS,
    "playbook": PLAYBOOK_KEYS,
    "puppet": PUPPET_KEYS,
}
# the Packer provisioners bakery does not have, named in the error for an entry that uses one
NOT_YET = ("ansible", "ansible-local", "powershell", "windows-shell", "windows-restart", "breakpoint", "chef")
DEFAULT_INTERPRETER = ["/bin/sh", "-e"]
TARGET_TYPES = ("docker", "qemu", "vagrant", "ami", "gce", "openstack", "digitalocean")
# the kinds whose commands a timeout bounds
TIMED = ("shell", "local", "puppet", "playbook")
# builders that are no machine of their own: a reboot there means nothing (the stand-in refuses it)
NO_REBOOT = ("container", "rootfs")
# puppet apply --detailed-exitcodes: 0 nothing changed, 2 changes made; 4 and 6 are failures
PUPPET_EXIT_CODES = [0, 2]


def entry_where(source: str, entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    return "%s (%s)" % (source, name) if name else source


def check_kinds(entries: Any, source: str) -> None:
    """Each entry has exactly one kind and no key bakery does not know: checked before the argument spec,
    whose messages would not say which entry or what the known kinds are."""
    if entries is None:
        return
    if not isinstance(entries, list):
        raise BakeryError("%s must be a list of provisioners" % source)
    for index, entry in enumerate(entries):
        check_entry(entry, "%s[%d]" % (source, index))


def check_entry(entry: Any, where: str) -> str:
    """The kind of one entry, which must have exactly one, and no key bakery does not know."""
    if not isinstance(entry, Mapping):
        raise BakeryError("%s must be a dictionary (a provisioner), not %r" % (where, entry))
    where = entry_where(where, entry)
    kinds = [kind for kind in KINDS if entry.get(kind) is not None]
    unknown = sorted(str(key) for key in entry if key not in KINDS + COMMON + ROLE_KEYS)
    if unknown:
        later = [key for key in unknown if key in NOT_YET]
        raise BakeryError(
            "%s: unknown provisioner kind or key %s (kinds: %s; keys of every entry: %s)%s"
            % (
                where,
                ", ".join(repr(key) for key in unknown),
                ", ".join(KINDS),
                ", ".join(COMMON),
                "; %s is not supported yet" % ", ".join(later) if later else "",
            )
        )
    if len(kinds) != 1:
        raise BakeryError(
            "%s: a provisioner has exactly one kind of %s (it has %s)"
            % (where, ", ".join(KINDS), ", ".join(kinds) or "none")
        )
    if entry.get("vars") and kinds[0] not in VARS_KINDS:
        raise BakeryError(
            "%s: vars is for role and playbook entries (a %s entry has none)" % (where, kinds[0])
        )
    return kinds[0]


def resolve(directory: str, path: str) -> str:
    """A controller path: absolute, or relative to the bake definition's *directory*. A trailing '/' stays
    (an upload of a directory's contents rather than of the directory)."""
    full = os.path.normpath(os.path.join(directory, os.path.expanduser(path)))
    return full + "/" if path.endswith("/") and full != "/" else full


def _words(value: Any, where: str, key: str, what: str = "texts") -> list[str]:
    """A list of texts (target names, tags, arguments): a list, or one text split on commas."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BakeryError("%s: %s must be a list of %s" % (where, key, what))
    return list(value)


def _seconds(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BakeryError("%s: %s must be a whole number, 0 or more, not %r" % (where, key, value))
    return value


def _commands(kind: str, options: Any, where: str, directory: str) -> dict[str, Any]:
    """A shell or local entry's options, normalised: commands as text or script paths, interpreter, ..."""
    if not isinstance(options, Mapping):
        raise BakeryError(
            "%s: %s must be a dictionary (inline, script%s, ...)"
            % (where, kind, ", scripts" if kind == "shell" else "")
        )
    _known(kind, options, where)
    given = [key for key in ("inline", "script", "scripts") if options.get(key) not in (None, [], "")]
    if len(given) != 1:
        raise BakeryError(
            "%s: %s needs exactly one of %s (it has %s)"
            % (
                where,
                kind,
                "inline, script or scripts" if kind == "shell" else "inline or script",
                ", ".join(given) or "none",
            )
        )
    inline = options.get("inline")
    if inline is not None:
        if isinstance(inline, str):
            inline = [inline]
        if not isinstance(inline, list) or not all(isinstance(line, str) for line in inline):
            raise BakeryError("%s: %s.inline must be a list of commands" % (where, kind))
    scripts = options.get("scripts") or ([options["script"]] if options.get("script") else [])
    if not isinstance(scripts, list):
        raise BakeryError("%s: %s.scripts must be a list of paths" % (where, kind))
    interpreter = options.get("interpreter") or list(DEFAULT_INTERPRETER)
    if isinstance(interpreter, str):
        interpreter = interpreter.split()
    if (
        not isinstance(interpreter, list)
        or not interpreter
        or not all(isinstance(a, str) for a in interpreter)
    ):
        raise BakeryError("%s: %s.interpreter must be a list: the program and its arguments" % (where, kind))
    out = {
        "inline": "\n".join(inline) + "\n" if inline is not None else None,
        "scripts": [_path(path, where, "%s.script" % kind, directory, False) for path in scripts],
        "interpreter": [str(arg) for arg in interpreter],
        "environment": _dictionary(options, kind, "environment", where),
        "valid_exit_codes": _exit_codes(options, kind, where, [0]),
    }
    if kind == "shell":
        user = options.get("user")
        if user is not None and (not isinstance(user, str) or not user.strip()):
            raise BakeryError("%s: shell.user must be a user name" % where)
        for key in ("become", "expect_disconnect"):
            if not isinstance(options.get(key, False), bool):
                raise BakeryError("%s: shell.%s must be true or false" % (where, key))
        if options.get("expect_disconnect") and len(out["scripts"]) > 1:
            # a script run after the one that rebooted would find the builder gone
            raise BakeryError(
                "%s: shell.expect_disconnect takes inline commands or one script: put the commands that reboot "
                "last, or in an entry of their own" % where
            )
        out.update(
            become=bool(options.get("become")),
            user=user,
            expect_disconnect=bool(options.get("expect_disconnect")),
        )
    return out


def _environment(environment: Mapping[Any, Any]) -> dict[str, str]:
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def _dictionary(options: Mapping[str, Any], kind: str, key: str, where: str) -> dict[str, str]:
    """An option of texts by name (an environment, facts), its values made texts."""
    value = options.get(key) or {}
    if not isinstance(value, Mapping):
        raise BakeryError("%s: %s.%s must be a dictionary" % (where, kind, key))
    return _environment(value)


def _exit_codes(options: Mapping[str, Any], kind: str, where: str, default: list[int]) -> list[int]:
    codes = options.get("valid_exit_codes")
    codes = list(default) if codes is None else codes
    if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise BakeryError("%s: %s.valid_exit_codes must be a list of numbers" % (where, kind))
    return codes


def _known(kind: str, options: Mapping[str, Any], where: str) -> None:
    """A kind's options hold only the keys it knows."""
    unknown = sorted(str(key) for key in options if key not in KIND_KEYS[kind])
    if unknown:
        raise BakeryError(
            "%s: unknown %s option %s (known: %s)"
            % (where, kind, ", ".join(unknown), ", ".join(KIND_KEYS[kind]))
        )


def _options(kind: str, options: Any, where: str, first: str) -> Mapping[str, Any]:
    """A kind's options as a dictionary (a text is its *first* option) with only the keys it knows."""
    if isinstance(options, str):
        options = {first: options}
    if not isinstance(options, Mapping):
        raise BakeryError(
            "%s: %s must be a dictionary (%s) or a path" % (where, kind, ", ".join(KIND_KEYS[kind]))
        )
    _known(kind, options, where)
    return options


def _playbook(options: Any, where: str, directory: str) -> dict[str, Any]:
    """A playbook entry: ``playbook: site.yml`` or ``playbook: {file: site.yml, tags: [...]}``."""
    options = _options("playbook", options, where, "file")
    return {
        "file": _path(options.get("file"), where, "playbook.file", directory, False),
        "tags": _words(options.get("tags"), where, "playbook.tags"),
        "skip_tags": _words(options.get("skip_tags"), where, "playbook.skip_tags"),
        "extra_arguments": _words(options.get("extra_arguments"), where, "playbook.extra_arguments"),
    }


def _path(path: Any, where: str, key: str, directory: str, directory_ok: bool = True) -> str:
    """A controller path that exists (a file, or with *directory_ok* a directory too), resolved."""
    if not isinstance(path, str) or not path:
        raise BakeryError("%s: %s must be a path" % (where, key))
    full = resolve(directory, path)
    if not (os.path.isfile(full) or (directory_ok and os.path.isdir(full))):
        raise BakeryError(
            "%s: %s %r is not a %s (looked for %s)"
            % (where, key, path, "file or directory" if directory_ok else "file", full)
        )
    return full.rstrip("/") or "/"


def _puppet(options: Any, where: str, directory: str) -> dict[str, Any]:
    """A puppet entry: a masterless ``puppet apply`` of a manifest (a file, or a directory of them)."""
    options = _options("puppet", options, where, "manifest")
    modules = options.get("module_paths") or []
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list):
        raise BakeryError("%s: puppet.module_paths must be a list of directories" % where)
    package = options.get("package") or "puppet-agent"
    if not isinstance(package, str):
        raise BakeryError("%s: puppet.package must be a package name" % where)
    module_paths = []
    for path in modules:
        full = _path(path, where, "puppet.module_paths", directory)
        if not os.path.isdir(full):
            raise BakeryError("%s: puppet.module_paths %r is not a directory" % (where, path))
        module_paths.append(full)
    hiera = options.get("hiera_config")
    return {
        "manifest": _path(options.get("manifest"), where, "puppet.manifest", directory),
        "module_paths": module_paths,
        "hiera_config": None
        if hiera is None
        else _path(hiera, where, "puppet.hiera_config", directory, False),
        "facts": _dictionary(options, "puppet", "facts", where),
        "extra_arguments": _words(options.get("extra_arguments"), where, "puppet.extra_arguments"),
        "environment": _dictionary(options, "puppet", "environment", where),
        "package": package,
        "valid_exit_codes": _exit_codes(options, "puppet", where, PUPPET_EXIT_CODES),
    }


def _upload(options: Any, where: str, directory: str) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise BakeryError("%s: file must be a dictionary (src, dest, mode, owner, group, direction)" % where)
    _known("file", options, where)
    for key in ("src", "dest"):
        if not isinstance(options.get(key), str) or not options[key]:
            raise BakeryError("%s: file needs %s" % (where, key))
    direction = options.get("direction") or "upload"
    if direction not in ("upload", "download"):
        raise BakeryError("%s: file.direction must be upload or download, not %r" % (where, direction))
    if direction == "download":
        return _download(options, where)
    if not options["dest"].startswith("/"):
        raise BakeryError(
            "%s: file.dest %r must be an absolute path in the builder" % (where, options["dest"])
        )
    src = resolve(directory, options["src"])
    if not os.path.exists(src):
        raise BakeryError("%s: file.src %r does not exist (looked for %s)" % (where, options["src"], src))
    mode = options.get("mode")
    return {
        "src": src,
        "dest": options["dest"],
        # the files keep their modes unless a mode is given (Packer's file provisioner keeps them too)
        "mode": "preserve" if mode is None else "0%o" % mode if isinstance(mode, int) else str(mode),
        "owner": options.get("owner"),
        "group": options.get("group"),
        "directory": os.path.isdir(src),
        "direction": "upload",
    }


def _download(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A download (Packer's file with direction download): a path in the builder, fetched into the target's
    own directory under the bake's output directory; *dest* may not leave it."""
    extra = [key for key in ("mode", "owner", "group") if options.get(key) is not None]
    if extra:
        raise BakeryError("%s: %s is for uploads (a download keeps what the builder has)" % (where, extra[0]))
    if not options["src"].startswith("/"):
        raise BakeryError("%s: file.src %r must be an absolute path in the builder" % (where, options["src"]))
    dest = os.path.normpath(options["dest"])
    if os.path.isabs(dest) or dest == ".." or dest.startswith("../") or dest == ".":
        raise BakeryError(
            "%s: file.dest %r is outside the output directory: give a path relative to it (downloads go to "
            "<output_dir>/downloads/<target>/<dest>)" % (where, options["dest"])
        )
    return {"src": os.path.normpath(options["src"]), "dest": dest, "direction": "download"}


def _label(kind: str, entry: Mapping[str, Any], source: str) -> str:
    """How progress lines and failures name an entry: its name, else its kind and what it runs."""
    if kind == "role":
        what = "role %s" % entry["role"]
    elif kind == "playbook":
        what = "playbook %s" % os.path.basename(entry["playbook"]["file"])
    elif kind == "puppet":
        what = "puppet %s" % os.path.basename(entry["puppet"]["manifest"])
    elif kind == "file" and entry["file"]["direction"] == "download":
        what = "file download %s" % entry["file"]["src"]
    elif kind == "file":
        what = "file %s" % entry["file"]["dest"]
    elif entry[kind]["scripts"]:
        what = "%s %s" % (kind, ", ".join(os.path.basename(p) for p in entry[kind]["scripts"]))
    else:
        what = "%s %s" % (kind, source)
    return "%s (%s)" % (entry["name"], what) if entry.get("name") else what


def parse_entry(
    entry: Mapping[str, Any], origin: list[Any], directory: str, check_role: Callable[[Any], str]
) -> dict:
    """One definition entry, checked and normalised: its kind's options, controller paths made absolute.
    *origin* is its path in the definition (``["provisioners", 2]``, ``["targets", 0, "provisioners", 1]``)."""
    source = "bake" + "".join("[%d]" % step if isinstance(step, int) else ".%s" % step for step in origin)
    kind = check_entry(entry, source)
    where = entry_where(source, entry)
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise BakeryError("%s: name must be a text" % where)
    out: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "source": source,
        "origin": list(origin),
        "only": _words(entry.get("only"), where, "only", "target names or types"),
        "except": _words(entry.get("except"), where, "except", "target names or types"),
        "pause_before": _seconds(entry, "pause_before", where) or 0,
        "retries": _seconds(entry, "retries", where) or 0,
        "timeout": _seconds(entry, "timeout", where),
        "no_log": bool(entry.get("no_log")),
    }
    if out["timeout"] is not None and kind not in TIMED:
        raise BakeryError("%s: timeout is for %s entries" % (where, ", ".join(TIMED)))
    if kind in VARS_KINDS:
        variables = entry.get("vars") or {}
        if not isinstance(variables, Mapping):
            raise BakeryError("%s: vars must be a dictionary" % where)
        out["vars"] = dict(variables)
    if kind == "role":
        out["role"] = check_role(entry["role"])
    elif kind == "playbook":
        out["playbook"] = _playbook(entry["playbook"], where, directory)
    elif kind == "puppet":
        out["puppet"] = _puppet(entry["puppet"], where, directory)
    elif kind == "file":
        out["file"] = _upload(entry["file"], where, directory)
    else:
        out[kind] = _commands(kind, entry[kind], where, directory)
    out["label"] = _label(kind, out, source)
    return out


def selects(entry: Mapping[str, Any], target: str, kind: str, group: str | None = None) -> bool:
    """Whether the entry's ``only``/``except`` choose the target (by its name, its type, or *group*: the name the
    definition gives a target baked for several architectures, whose entries are ``<group>-<arch>``)."""
    only, except_ = entry["only"], entry["except"]
    names = {target, kind, group or target}
    if only and not names & set(only):
        return False
    return not names & set(except_)


def check_selection(entry: Mapping[str, Any], types: Mapping[str, str]) -> None:
    """``only``/``except`` name targets or target types of this bake."""
    known = set(types) | set(TARGET_TYPES)
    for key in ("only", "except"):
        for word in entry[key]:
            if word not in known:
                raise BakeryError(
                    "%s: %s names %r, neither a target of this bake (%s) nor a target type (%s)"
                    % (
                        entry_where(entry["source"], entry),
                        key,
                        word,
                        ", ".join(types),
                        ", ".join(TARGET_TYPES),
                    )
                )


def for_target(
    shared: list[dict],
    own: list[dict],
    target: str,
    kind: str,
    target_vars: Mapping[str, Any],
    output_dir: str = "",
    group: str | None = None,
) -> list[dict]:
    """The target's own ordered list: the bake's entries that select it, then its own; its vars override
    the role and playbook entries' variables. Each entry gets its position in the list; a download its path
    on the controller, ``<output_dir>/<target>/<dest>`` (the caller's *output_dir*)."""
    chosen = [entry for entry in shared + own if selects(entry, target, kind, group)]
    out = []
    for position, entry in enumerate(chosen):
        item = dict(entry, position=position)
        if item["kind"] in VARS_KINDS and target_vars:
            item["vars"] = dict(item["vars"], **target_vars)
        if item["kind"] == "file" and item["file"]["direction"] == "download":
            item["file"] = dict(item["file"], local=os.path.join(output_dir, target, item["file"]["dest"]))
        out.append(item)
    return out


# the kinds a verify entry may be: checks against the finished artifact. puppet and file change a machine (an
# upload, a manifest applied): they provision, and a verification that changed what it checks would prove little.
VERIFY_KINDS = ("role", "playbook", "shell", "local")


def check_verify(entries: list[dict]) -> None:
    """Verify entries check the artifact: of the provisioner kinds, role, playbook, shell and local; no reboot."""
    for entry in entries:
        where = entry_where(entry["source"], entry)
        if entry["kind"] not in VERIFY_KINDS:
            raise BakeryError(
                "%s: a verify entry checks the finished artifact with one of %s; a %s entry changes it (put it "
                "in provisioners)" % (where, ", ".join(VERIFY_KINDS), entry["kind"])
            )
        if entry["kind"] == "shell" and entry["shell"].get("expect_disconnect"):
            raise BakeryError(
                "%s: expect_disconnect is for provisioners; a verify entry does not reboot" % where
            )


def check_builder(entries: list[dict], target: str, builder: str) -> None:
    """An entry that expects its builder to reboot (shell.expect_disconnect) runs on a machine: a container or
    a root filesystem cannot reboot."""
    for entry in entries:
        if entry["kind"] == "shell" and entry["shell"]["expect_disconnect"] and builder in NO_REBOOT:
            raise BakeryError(
                "%s: shell.expect_disconnect is for builders that are machines (provision: vm, vagrant, ami, "
                "gce); target %s is provisioned in a %s, which cannot reboot: leave it out with except"
                % (entry_where(entry["source"], entry), target, builder)
            )


def digest_upload(src: str) -> str:
    """An uploaded file or tree by content and permission bits (never mtimes), and whether it is the
    directory itself or its contents (a trailing '/')."""
    if os.path.isdir(src):
        return digest_value(
            {
                "tree": digest_tree(src, modes=True),
                "mode": stat.S_IMODE(os.stat(src).st_mode),
                "contents": src.endswith("/"),
            }
        )
    return digest_value({"file": digest_file(src), "mode": stat.S_IMODE(os.stat(src).st_mode)})


def _cached(path: str, digests: dict[str, str]) -> str:
    if path not in digests:
        digests[path] = digest_upload(path)
    return digests[path]


def digest_entry(
    entry: Mapping[str, Any], digests: dict[str, str], playbook_digest: Callable[[str], str] | None = None
) -> str:
    """The content of an entry other than a role: what it runs, uploads or fetches, never how it is scheduled
    (pause_before, retries, timeout). A secret (no_log) environment enters as a digest of its values; a
    playbook as *playbook_digest* gives it (the playbook, the files beside it it can use, its roles)."""
    kind = entry["kind"]
    if kind == "file":
        options = dict(entry["file"])
        options.pop("local", None)
        if options["direction"] == "download":
            return digest_value({"kind": kind, "options": options})
        return digest_value(
            {"kind": kind, "content": _cached(options.pop("src"), digests), "options": options}
        )
    if kind == "playbook":
        options = dict(entry["playbook"])
        path = options.pop("file")
        content = playbook_digest(path) if playbook_digest else _cached(path, digests)
        return digest_value(
            {"kind": kind, "name": os.path.basename(path), "content": content, "options": options}
        )
    if kind == "puppet":
        options = dict(entry["puppet"])
        content = {
            "manifest": [
                os.path.basename(options.pop("manifest")),
                _cached(entry["puppet"]["manifest"], digests),
            ],
            "module_paths": [_cached(path, digests) for path in options.pop("module_paths")],
        }
        hiera = options.pop("hiera_config")
        if hiera:
            # the data a hiera.yaml names is beside it: its whole directory is uploaded
            content["hiera"] = [os.path.basename(hiera), _cached(os.path.dirname(hiera), digests)]
        options["environment"] = digest_value(options["environment"])
        return digest_value({"kind": kind, "content": content, "options": options})
    options = dict(entry[kind])
    scripts = []
    for path in options.pop("scripts"):
        scripts.append([os.path.basename(path), _cached(path, digests)])
    options["environment"] = digest_value(options["environment"])
    return digest_value({"kind": kind, "scripts": scripts, "options": options})


def outside_effects(entry: Mapping[str, Any]) -> bool:
    """Whether an entry does something outside its builder: a ``local`` command (on the controller), a ``file``
    download (to the controller)."""
    return entry["kind"] == "local" or (entry["kind"] == "file" and entry["file"]["direction"] == "download")


def resumable(entries: list[dict]) -> int:
    """How many of a builder's first entries a bake may take from the per-step cache instead of running them:
    those before the first one that does something outside the builder (:func:`outside_effects`), which must
    run in every bake that is built."""
    for position, entry in enumerate(entries):
        if outside_effects(entry):
            return position
    return len(entries)


def step_digest(
    entry: Mapping[str, Any],
    role_digest: Callable[[str], str],
    digests: dict[str, str],
    playbook_digest: Callable[[str], str] | None = None,
) -> str:
    """One entry's own digest for the per-step cache: what :func:`inputs` counts of it alone (a role's name and
    content, a role's or playbook's variables, any other entry's :func:`digest_entry`), and its kind. How it is
    scheduled (pause_before, retries, timeout) and its name are not part of it."""
    kind = entry["kind"]
    parts: dict[str, Any] = {"kind": kind}
    if kind == "role":
        parts.update(role=entry["role"], content=role_digest(entry["role"]))
    else:
        parts["content"] = digest_entry(entry, digests, playbook_digest)
    if kind in VARS_KINDS:
        parts["vars"] = entry["vars"]
    return digest_value(parts)


def input_name(entry: Mapping[str, Any]) -> str:
    """The name of an entry's fingerprint input, as ``--check`` and the image's inputs show it: where the
    entry is in the definition, its kind and name."""
    name = "%s:%s" % (entry["source"].replace("bake.", "", 1), entry["kind"])
    return "%s:%s" % (name, entry["name"]) if entry.get("name") else name


def inputs(
    entries: list[dict],
    role_digest: Callable[[str], str],
    digests: dict[str, str],
    playbook_digest: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """A target's provisioning inputs: each role's content (``role:<name>``), the role and playbook entries'
    variables in order (``vars``), and each other entry's content under :func:`input_name`."""
    found: dict[str, str] = {}
    roles = [entry for entry in entries if entry["kind"] == "role"]
    for entry in roles:
        found["role:%s" % entry["role"]] = role_digest(entry["role"])
    with_vars = [entry for entry in entries if entry["kind"] in VARS_KINDS]
    if with_vars:
        # a role entry's pair is [role, vars], as before playbooks came
        found["vars"] = digest_value(
            [
                [entry["role"] if entry["kind"] == "role" else input_name(entry), entry["vars"]]
                for entry in with_vars
            ]
        )
    for entry in entries:
        if entry["kind"] != "role":
            found[input_name(entry)] = digest_entry(entry, digests, playbook_digest)
    return found


SECRET_KINDS = ("shell", "local", "puppet")


def masked(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as the plan shows it: a secret (no_log) entry's environment or variables masked."""
    kind = entry["kind"]
    if not entry.get("no_log"):
        return dict(entry)
    if kind in VARS_KINDS:
        return dict(entry, vars={key: NO_LOG_MASK for key in entry["vars"]})
    if kind not in SECRET_KINDS or not entry[kind]["environment"]:
        return dict(entry)
    options = dict(entry[kind], environment={key: NO_LOG_MASK for key in entry[kind]["environment"]})
    return dict(entry, **{kind: options})


def real_environment(bake: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, str]:
    """A planned entry's environment with its real values, from the bake definition (the plan masks a
    secret one): the entry is found by its ``origin``, its path in the definition."""
    options = _definition_entry(bake, entry).get(entry["kind"]) or {}
    return _environment(options.get("environment") or {}) if isinstance(options, Mapping) else {}


def real_vars(bake: Mapping[str, Any], entry: Mapping[str, Any], target: str) -> dict[str, Any]:
    """A planned role or playbook entry's variables with their real values (the plan masks a secret one's):
    the entry's own, overridden by the target's ``vars``, as :func:`for_target` combines them."""
    found = dict(_definition_entry(bake, entry).get("vars") or {})
    for definition in bake.get("targets") or []:
        if isinstance(definition, Mapping) and definition.get("name") == target:
            found.update(definition.get("vars") or {})
    return found


def _definition_entry(bake: Mapping[str, Any], entry: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = bake
    for step in entry["origin"]:
        node = node[step]
    return node


def real_secrets(bake: Mapping[str, Any], entry: Mapping[str, Any], target: str) -> dict[str, Any]:
    """What the plan masks of a secret entry, with the real values: a role's or playbook's variables, or a
    command's environment."""
    if entry["kind"] in VARS_KINDS:
        return real_vars(bake, entry, target)
    return real_environment(bake, entry)
