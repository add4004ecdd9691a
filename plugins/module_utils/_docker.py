# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker images on the build host's engine, through the ``docker`` SDK.

Four ways to an image, each idempotent by the ``org.bakery.fingerprint`` label:

* ``build``: a Dockerfile build of a context directory;
* ``import``: a root filesystem tarball (from ``rootfs``) as a base image;
* ``start`` + ``commit``: a build container that Ansible provisions in between (Packer's docker
  builder, with Ansible as the provisioner), committed with Dockerfile-like changes;
* ``push``: the image's tags to a registry.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

from ansible_collections.bakery.images.plugins.module_utils import (
    _docker_agent,
    _dpkg_db,
    _overlay,
    _reproducible,
    _rootfs,
)
from ansible_collections.bakery.images.plugins.module_utils._files import (
    atomic_output,
    check_tarball,
    file_lock,
    read_sidecar,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    BAKE_ID_LABEL,
    FINGERPRINT_LABEL,
    INPUTS_LABEL,
    TEMPORARY_LABEL,
    IgnoreRules,
    canonical_json,
    changed_inputs,
    digest_file,
    digest_tree,
    digest_value,
    fingerprint,
    parse_inputs,
)
from ansible_collections.bakery.images.plugins.module_utils._layer import (
    Entry,
    changes,
    dump_index,
    image_archive,
    image_entries,
    index_tar,
    load_index,
    member_name,
    newest_mtime,
    write_layer,
)
from ansible_collections.bakery.images.plugins.module_utils._standin import (
    RECORD_PATH,
    install_command,
    remove_command,
)
from ansible_collections.bakery.images.plugins.module_utils._step_cache import (
    eviction_order,
    resume_reason,
    step_cache_params,
    step_states,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import Selector, act, errors_of, record

try:
    import docker
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound

    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - reported by the module
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = str(_exc)
    APIError = DockerException = ImageNotFound = NotFound = Exception  # type: ignore[misc,assignment]

TARGET_LABEL = "org.bakery.target"
ROOTFS_LABEL = "org.bakery.rootfs"
BUILD_BAKE_ID_LABEL = "org.bakery.bake-id"
# a step image of the per-step cache: its chain key, and (JSON) its position, target and the base it started from
STEP_KEY_LABEL = "org.bakery.step-key"
STEP_LABEL = "org.bakery.step"
# the per-step cache's record of when each step image was last used, in the bake's cache directory
STEP_INDEX = "docker-steps.json"
# keeps a verifier container alive whose image's command ends at once (a build container runs the command agent,
# _docker_agent, instead); the image's CMD becomes $0, harmlessly
KEEPALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
# repository[:tag] as Docker accepts it: lowercase path components, optional registry host:port
_REPOSITORY = re.compile(
    r"^(?:(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHANGE_KEYS = ("cmd", "entrypoint", "env", "expose", "user", "workdir", "volumes", "stopsignal")


def validate_name(name: str, tags: Iterable[str]) -> None:
    """Fail early, before anything is created, on names Docker would reject."""
    if not name or not _REPOSITORY.match(name):
        raise BakeryError(
            "invalid image name %r: Docker repository names are lowercase letters, digits and separators "
            "(. _ -), optionally prefixed by a registry host[:port]/" % name
        )
    for tag in tags:
        if not _TAG.match(str(tag)):
            raise BakeryError(
                "invalid image tag %r: up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"
                % tag
            )


def connect(docker_host: str | None, timeout: int) -> Any:
    if not HAS_DOCKER:
        raise BakeryError(
            "the Python 'docker' SDK is required on the build host (pip install docker): %s"
            % DOCKER_IMPORT_ERROR
        )
    try:
        client = docker.DockerClient(base_url=docker_host or None, timeout=timeout, version="auto")
        client.ping()
    except DockerException as exc:
        # urllib3's chain of wrappers says little; its innermost reason ("[Errno 111] Connection refused") says it
        reasons = re.findall(r"\[Errno -?\d+\][^'\")]*", str(exc))
        raise BakeryError(
            "cannot reach the Docker engine at %s: %s (is dockerd running and is this user allowed to use it?)"
            % (docker_host or "the default socket", reasons[-1].strip() if reasons else exc)
        ) from exc
    return client


def _image(client: Any, ref: str) -> dict[str, Any] | None:
    try:
        return client.api.inspect_image(ref)
    except (ImageNotFound, NotFound):
        return None


def _labels(image: dict[str, Any] | None) -> dict[str, str]:
    if not image:
        return {}
    return (image.get("Config") or {}).get("Labels") or {}


@contextlib.contextmanager
def engine_lock(client: Any, ref: str) -> Iterator[None]:
    """Serialise the look-up and making of ``ref`` (``name:tag``) on one engine between processes of this host.

    Without it two bakes that import the same rootfs at once both find no image and both import; the later
    tag wins and the earlier caller holds an untagged image id, which the engine deletes (an untagged parent
    goes with its last child) while that bake still uses it. The lock is a file lock in the host's temporary
    directory, keyed by the engine's URL and the reference (the SDK names every local socket alike, so imports
    into two local engines may wait for each other, no more). Processes on other hosts that share a remote
    engine are not serialised: their imports still work, only the untagged duplicate remains possible.
    """
    key = hashlib.sha256(("%s\0%s" % (client.api.base_url, ref)).encode()).hexdigest()[:32]
    with file_lock(os.path.join(tempfile.gettempdir(), "bakery-docker-locks", key)):
        yield


def find_by_fingerprint(client: Any, name: str, tags: list[str], fp: str) -> dict[str, Any] | None:
    """The local image carrying *fp*: preferably the one the first tag names, else any labelled one."""
    for tag in tags:
        image = _image(client, "%s:%s" % (name, tag))
        if image and _labels(image).get(FINGERPRINT_LABEL) == fp:
            return image
    matches = client.api.images(filters={"label": "%s=%s" % (FINGERPRINT_LABEL, fp)})
    for match in matches:
        image = _image(client, match["Id"])
        if image:
            return image
    return None


def previous_inputs(client: Any, name: str, tags: list[str]) -> dict[str, str]:
    """Inputs of the image the tags point at now (to say what changed)."""
    for tag in tags:
        image = _image(client, "%s:%s" % (name, tag))
        if image:
            return parse_inputs(_labels(image).get(INPUTS_LABEL))
    return {}


def ensure_tags(client: Any, image_id: str, name: str, tags: list[str], check_mode: bool) -> list[str]:
    """Point every ``name:tag`` at *image_id*; returns the tags that had to move.

    All or nothing: when one tag cannot move, the tags moved before it are put back where they were (or
    removed, if they were new), so that a reader never sees some tags on the new image and some on the old.
    """
    moved: list[str] = []
    previous: dict[str, str | None] = {}
    for tag in tags:
        current = _image(client, "%s:%s" % (name, tag))
        if current and current["Id"] == image_id:
            continue
        moved.append(tag)
        if check_mode:
            continue
        try:
            client.api.tag(image_id, name, tag)
        except APIError as exc:
            restored = _restore_tags(client, name, previous)
            raise BakeryError(
                "docker tag %s:%s failed: %s; %s"
                % (name, tag, exc.explanation or exc, restored or "no tag had moved")
            ) from exc
        previous[tag] = current["Id"] if current else None
    return moved


def _restore_tags(client: Any, name: str, previous: dict[str, str | None]) -> str:
    """Put tags back on the images they named before (or remove new ones); say what was done."""
    done, failed = [], []
    for tag, image_id in previous.items():
        ref = "%s:%s" % (name, tag)
        try:
            if image_id:
                client.api.tag(image_id, name, tag)
            else:
                client.api.remove_image(ref, noprune=True)
            done.append(ref)
        except (APIError, NotFound) as exc:
            failed.append("%s (%s)" % (ref, exc))
    text = "put back %s" % ", ".join(done) if done else ""
    if failed:
        text += "%scould not put back %s" % ("; " if text else "", ", ".join(failed))
    return text


def image_summary(client: Any, image_id: str, name: str, tags: list[str]) -> dict[str, Any]:
    image = _image(client, image_id) or {}
    config = image.get("Config") or {}
    return {
        "id": image.get("Id", image_id),
        "name": name,
        "tags": ["%s:%s" % (name, tag) for tag in tags],
        "repo_digests": image.get("RepoDigests") or [],
        "size": image.get("Size"),
        "architecture": debian_architecture(image),
        "labels": config.get("Labels") or {},
        "config": {
            key: config.get(key)
            for key in ("Cmd", "Entrypoint", "Env", "ExposedPorts", "User", "WorkingDir", "Volumes")
        },
    }


# ---------------------------------------------------------------- fingerprints


def _from_images(dockerfile_text: str, build_args: dict[str, str]) -> list[str]:
    """Base images named by FROM lines (ARG defaults and build args substituted, stage names skipped)."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    for raw in _logical_lines(dockerfile_text):
        parts = raw.split()
        if not parts:
            continue
        keyword = parts[0].upper()
        if keyword == "ARG" and len(parts) > 1 and not images:
            key, _sep, value = parts[1].partition("=")
            args[key] = build_args.get(key, value.strip("\"'"))
        elif keyword == "FROM":
            words = [word for word in parts[1:] if not word.startswith("--")]
            if not words:
                continue
            ref = re.sub(
                r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                lambda m: args.get(m.group(1), build_args.get(m.group(1), "")),
                words[0],
            )
            if ref.lower() not in stages and ref.lower() != "scratch":
                images.append(ref)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2].lower())
    return images


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def dockerfile_path(context: str, dockerfile: str | None) -> str:
    name = dockerfile or "Dockerfile"
    return name if os.path.isabs(name) else os.path.join(context, name)


# every instruction Docker's Dockerfile parser knows
DOCKERFILE_INSTRUCTIONS = (
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "MAINTAINER",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
)  # fmt: skip
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*(\S*)\s*$")
_HEREDOC = re.compile(r"<<-?\s*[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?")


def check_dockerfile(text: str, name: str = "Dockerfile") -> None:
    """Fail, before anything is built, on what Docker's parser rejects: unknown instructions, no FROM.

    Lenient where Docker is: instructions in any case, parser directives (``# escape=``), line continuations
    (comments inside them dropped), heredoc bodies skipped.
    """
    lines = text.splitlines()
    escape = "\\"
    index = 0
    while index < len(lines):  # parser directives come first, before any comment or instruction
        directive = _DIRECTIVE.match(lines[index])
        if not directive:
            break
        if directive.group(1).lower() == "escape" and directive.group(2) in ("\\", "`"):
            escape = directive.group(2)
        index += 1
    first = None
    while index < len(lines):
        number, logical = index + 1, lines[index].strip()
        index += 1
        if not logical or logical.startswith("#"):
            continue
        while logical.endswith(escape) and index < len(lines):
            following = lines[index].strip()
            index += 1
            if not following.startswith("#"):
                logical = logical[: -len(escape)] + " " + following
        word = logical.split(None, 1)[0]
        instruction = word.upper()
        if instruction not in DOCKERFILE_INSTRUCTIONS:
            raise BakeryError(
                "%s line %d: unknown instruction %s (a Dockerfile instruction is one of %s)"
                % (name, number, word[:40], ", ".join(DOCKERFILE_INSTRUCTIONS))
            )
        if first is None and instruction not in ("FROM", "ARG"):
            raise BakeryError(
                "%s line %d: the first instruction must be FROM (or ARG before it), not %s"
                % (name, number, word)
            )
        if instruction == "FROM":
            first = number
        if instruction in ("RUN", "COPY", "ADD"):
            for heredoc in _HEREDOC.finditer(logical):  # skip the body, up to its terminator line
                while index < len(lines) and lines[index].strip() != heredoc.group(1):
                    index += 1
                index += 1
    if first is None:
        raise BakeryError("%s has no FROM instruction" % name)


def check_context(context: Any, dockerfile: str | None) -> str:
    """The Dockerfile of a build context, checked: the context is a directory, the Dockerfile parses."""
    if not context or not isinstance(context, str) or not os.path.isdir(context):
        raise BakeryError("build context %r is not a directory" % (context,))
    path = dockerfile_path(context, dockerfile)
    if not os.path.isfile(path):
        raise BakeryError("Dockerfile %r not found" % path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise BakeryError(
            "cannot read Dockerfile %r: %s" % (path, getattr(exc, "strerror", None) or exc)
        ) from None
    check_dockerfile(text, "Dockerfile %s" % path)
    return path


def build_inputs(client: Any, params: dict[str, Any]) -> dict[str, str]:
    """Inputs of a Dockerfile build: context content, Dockerfile, options and the base images' ids."""
    context = params["context"]
    path = check_context(context, params.get("dockerfile"))
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    build_args = {k: str(v) for k, v in (params.get("build_args") or {}).items()}
    bases = {}
    for ref in _from_images(text, build_args):
        image = _image(client, ref)
        bases[ref] = image["Id"] if image else "missing:" + ref
    rules = IgnoreRules.from_file(os.path.join(context, ".dockerignore"))
    inputs = dict(params.get("inputs") or {})
    inputs.update(
        {
            "dockerfile": digest_file(path),
            "context": digest_tree(context, ignore=rules),
            "base_images": digest_value(bases),
            "options": digest_value(
                {
                    "build_args": build_args,
                    "stage": params.get("stage"),
                    "labels": params.get("labels") or {},
                    "platform": params.get("platform"),
                    "nocache": params.get("nocache"),
                }
            ),
        }
    )
    return inputs


def container_inputs(client: Any, params: dict[str, Any]) -> dict[str, str]:
    """Inputs of a container bake: the plan's inputs, the base image's id and the commit changes."""
    inputs = dict(params.get("inputs") or {})
    if params.get("base_image"):
        image = _image(client, params["base_image"])
        if image is None:
            raise BakeryError(
                "base image %r not found on the Docker engine (bakery does not pull: build it with the "
                "'import' action from a rootfs, or load it first)" % params["base_image"]
            )
        inputs["base_image"] = image["Id"]
    elif params.get("rootfs") and "source" not in inputs:
        inputs["source"] = rootfs_identity(params["rootfs"])
    inputs["options"] = config_options_digest(params)
    return inputs


def config_options_digest(params: dict[str, Any]) -> str:
    """Digest of what an import or a commit writes into the image config: its changes and labels."""
    return digest_value({"changes": params.get("changes") or {}, "labels": params.get("labels") or {}})


def rootfs_identity(path: str) -> str:
    """The rootfs's fingerprint from its sidecar, else the tarball's sha256."""
    if not os.path.isfile(path):
        raise BakeryError("rootfs tarball %r not found" % path)
    sidecar = read_sidecar(path) or {}
    return str(sidecar.get("fingerprint") or digest_file(path))


def final_labels(params: dict[str, Any], fp: str, inputs: dict[str, str]) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in (params.get("labels") or {}).items()}
    labels[FINGERPRINT_LABEL] = fp
    labels[INPUTS_LABEL] = canonical_json(inputs)
    if params.get("bake_id"):
        labels[BUILD_BAKE_ID_LABEL] = params["bake_id"]
    return labels


# ---------------------------------------------------------------- build


def _build_error(step: str | None, output: list[str], error: dict[str, Any]) -> BakeryError:
    detail = (error.get("errorDetail") or {}).get("message") or error.get("error") or "unknown error"
    tail = [line for line in output if line.strip()][-25:]
    where = "at %s" % step if step else "before the first instruction"
    msg = "docker build failed %s: %s" % (where, detail.strip())
    if tail:
        msg += "\n--- output of the failing instruction (last %d lines) ---\n%s" % (
            len(tail),
            "\n".join(tail),
        )
    return BakeryError(msg, failed_instruction=step, output_lines=tail)


def build(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    name, tags = params["name"], params["tags"]
    inputs = build_inputs(client, params)
    fp = fingerprint(inputs)
    looked = _lookup(client, params, fp, inputs, check_mode)
    if looked["found"] or check_mode:
        return looked
    started = time.monotonic()
    context = params["context"]
    dockerfile = params.get("dockerfile") or "Dockerfile"
    if os.path.isabs(dockerfile):
        dockerfile = os.path.relpath(dockerfile, context)
    kwargs: dict[str, Any] = dict(
        path=context,
        dockerfile=dockerfile,
        # an image to verify first gets no tag (the build's aux ID names it)
        tag="%s:%s" % (name, tags[0]) if publishes(params) else None,
        buildargs={k: str(v) for k, v in (params.get("build_args") or {}).items()},
        labels=final_labels(params, fp, inputs),
        pull=bool(params.get("pull")),
        nocache=bool(params.get("nocache")),
        rm=True,
        forcerm=True,
        decode=True,
    )
    if params.get("stage"):
        kwargs["target"] = params["stage"]
    if params.get("platform"):
        kwargs["platform"] = params["platform"]
    step: str | None = None
    output: list[str] = []
    image_id = None
    try:
        for chunk in client.api.build(**kwargs):
            if "error" in chunk or "errorDetail" in chunk:
                raise _build_error(step, output, chunk)
            text = chunk.get("stream")
            if text:
                for line in _ANSI.sub("", text).splitlines():
                    if line.startswith((" ---> ", "Removing intermediate container")):
                        continue
                    match = re.match(r"^Step (\d+/\d+) : (.*)$", line)
                    if match:
                        step = "step %s `%s`" % (match.group(1), match.group(2))
                        output = []
                    else:
                        output.append(line)
            aux = chunk.get("aux") or {}
            if aux.get("ID"):
                image_id = aux["ID"]
    except APIError as exc:
        raise BakeryError("docker build failed: %s" % exc.explanation) from exc
    image = _image(client, image_id or "%s:%s" % (name, tags[0])) if image_id or publishes(params) else None
    if image is None:
        raise BakeryError("docker build ended without an image")
    what = "built %s" % params["context"]
    return _built(client, image["Id"], params, fp, inputs, looked["changed_inputs"], started, what)


def _lookup(
    client: Any, params: dict[str, Any], fp: str, inputs: dict[str, str], check_mode: bool
) -> dict[str, Any]:
    """The image with fingerprint *fp* (``found``, its tags moved onto it), or what would be built and why.

    Callers return this result when ``found`` or in check mode; otherwise they build, and keep its
    ``changed_inputs`` (computed against the image the tags pointed at before).
    """
    name, tags = params["name"], params["tags"]
    existing = None if params.get("force") else find_by_fingerprint(client, name, tags, fp)
    if existing is not None:
        # an image still to be verified keeps its tags where they are (publish moves them)
        moved = ensure_tags(client, existing["Id"], name, tags, check_mode) if publishes(params) else []
        return dict(
            changed=bool(moved),
            built=False,
            found=True,
            published=publishes(params),
            image=image_summary(client, existing["Id"], name, tags if publishes(params) else []),
            fingerprint=fp,
            inputs=inputs,
            changed_inputs=[],
            msg="%s:%s is up to date (fingerprint %s)%s"
            % (name, tags[0], fp[:12], "; tagged %s" % ", ".join(moved) if moved else ""),
        )
    changed = changed_inputs(previous_inputs(client, name, tags), inputs)
    reason = "forced" if params.get("force") else "inputs changed: %s" % ", ".join(changed)
    return dict(
        changed=True,
        built=False,
        found=False,
        fingerprint=fp,
        inputs=inputs,
        changed_inputs=changed,
        msg="would build %s:%s (%s)" % (name, tags[0], reason),
    )


# ---------------------------------------------------------------- import / start / commit


def import_rootfs(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """A rootfs tarball as an image (a base image of one's own, no registry needed)."""
    name, tags = params["name"], params["tags"]
    inputs = dict(params.get("inputs") or {})
    inputs["source"] = rootfs_identity(params["rootfs"])
    inputs["options"] = config_options_digest(params)
    fp = fingerprint(inputs)
    if check_mode:
        return _lookup(client, params, fp, inputs, check_mode)
    with engine_lock(client, "%s:%s" % (name, tags[0])):
        looked = _lookup(client, params, fp, inputs, check_mode)
        if looked["found"]:
            return looked
        started = time.monotonic()
        changes = dockerfile_changes(params.get("changes") or {}, default_cmd=["bash"])
        labels = final_labels(params, fp, inputs)
        labels[ROOTFS_LABEL] = inputs["source"]
        changes += ["LABEL %s=%s" % (key, _quote(value)) for key, value in sorted(labels.items())]
        image_id = _import(client, params["rootfs"], name if publishes(params) else None, tags[0], changes)
        what = "imported %s" % params["rootfs"]
        return _built(client, image_id, params, fp, inputs, looked["changed_inputs"], started, what)


def _built(
    client: Any,
    image_id: str,
    params: dict[str, Any],
    fp: str,
    inputs: dict[str, str],
    changed: list[str],
    started: float,
    what: str,
) -> dict[str, Any]:
    """Tag a freshly made image (unless it is to be verified first) and describe it: the result of build, import
    and commit."""
    name, tags = params["name"], params["tags"]
    if publishes(params):
        ensure_tags(client, image_id, name, tags, False)
    return dict(
        changed=True,
        built=True,
        published=publishes(params),
        image=image_summary(client, image_id, name, tags if publishes(params) else []),
        fingerprint=fp,
        inputs=inputs,
        changed_inputs=changed,
        duration=round(time.monotonic() - started, 3),
        msg="%s as %s:%s" % (what, name, tags[0]),
    )


def _quote(value: str) -> str:
    return canonical_json(str(value))


# Debian architecture of a root filesystem -> the platform of the image imported from it
DEBIAN_PLATFORMS = {
    "amd64": "linux/amd64",
    "i386": "linux/386",
    "arm64": "linux/arm64",
    "armhf": "linux/arm/v7",
    "armel": "linux/arm/v5",
    "ppc64el": "linux/ppc64le",
    "s390x": "linux/s390x",
    "riscv64": "linux/riscv64",
}


DEBIAN_ARCHITECTURES = {platform: architecture for architecture, platform in DEBIAN_PLATFORMS.items()}


def debian_architecture(image: dict[str, Any]) -> str | None:
    """The Debian architecture of an inspected image (its platform looked up in :data:`DEBIAN_PLATFORMS`; an arm
    image without a variant is v7, as OCI's platform rules have it), else the architecture it records, as recorded."""
    recorded = image.get("Architecture")
    variant = image.get("Variant") or ("v7" if recorded == "arm" else None)
    platform = "/".join(part for part in ("linux", recorded, variant) if part)
    return DEBIAN_ARCHITECTURES.get(platform) or DEBIAN_ARCHITECTURES.get("linux/%s" % recorded) or recorded


def rootfs_platform(path: str) -> str | None:
    """The image platform of a rootfs tarball, from the architecture its sidecar records (None: not recorded)."""
    architecture = (read_sidecar(path) or {}).get("architecture")
    return DEBIAN_PLATFORMS.get(str(architecture)) if architecture else None


def _import(client: Any, tarball: str, repository: str | None, tag: str, changes: list[str]) -> str:
    """Import *tarball* as ``repository:tag``, or untagged without a *repository* (an image to verify first).

    The image's platform is the rootfs's architecture (:func:`with_platform`)."""
    check_tarball(tarball, "rootfs tarball")  # Docker would make an image of whatever it got
    platform = rootfs_platform(tarball)
    try:
        with open(tarball, "rb") as handle:
            reply = client.api.import_image_from_data(
                handle,
                repository=None if platform else repository,
                tag=tag if repository and not platform else None,
                changes=changes,
            )
    except APIError as exc:
        raise BakeryError("docker import of %s failed: %s" % (tarball, exc.explanation)) from exc
    text = reply if isinstance(reply, str) else str(reply)
    if repository and not platform:
        image = _image(client, "%s:%s" % (repository, tag))
    else:
        # the engine's reply names the new image: {"status":"sha256:..."}
        found = re.findall(r"sha256:[0-9a-f]{64}", text)
        image = _image(client, found[-1]) if found else None
    if image is None:
        raise BakeryError("docker import of %s produced no image: %s" % (tarball, text[-500:]))
    if platform:
        return with_platform(
            client, image, platform, repository, tag, os.path.dirname(os.path.abspath(tarball))
        )
    return image["Id"]


def with_platform(
    client: Any, image: dict[str, Any], platform: str, repository: str | None, tag: str, workdir: str
) -> str:
    """*image* recorded as an image of *platform* (``os/arch[/variant]``), tagged ``repository:tag`` if given.

    ``docker import`` records the engine's own architecture, whatever the tree holds (Docker 20.10 reads only
    the OS of its ``platform`` query; later engines read it all). So the imported image is saved, its config
    says the platform instead, and it is loaded back: the layer is the same, only the config (and so the image
    id) changes; the first image goes. An image that already says the platform is kept as it is."""
    os_name, _sep, rest = platform.partition("/")
    arch, _sep, variant = rest.partition("/")
    if (image.get("Os"), image.get("Architecture"), image.get("Variant") or "") == (os_name, arch, variant):
        if repository:
            client.api.tag(image["Id"], repository, tag)
        return image["Id"]
    fd, path = tempfile.mkstemp(prefix=".bakery-platform-", suffix=".tar", dir=workdir)
    os.close(fd)
    try:
        with open(path, "wb") as out, tarfile.open(fileobj=out, mode="w|") as rewritten:
            saved = _ChunkReader(client.api.get_image(image["Id"]))
            with tarfile.open(fileobj=saved, mode="r|") as original:
                for member in original:
                    data = original.extractfile(member) if member.isfile() else None
                    if member.name == "manifest.json" and data is not None:
                        manifest = json.loads(data.read())
                        for entry in manifest:
                            entry["RepoTags"] = ["%s:%s" % (repository, tag)] if repository else None
                        _add_bytes(rewritten, member, canonical_json(manifest).encode())
                    elif member.name.endswith(".json") and "/" not in member.name and data is not None:
                        config = json.loads(data.read())
                        config.update(os=os_name, architecture=arch)
                        if variant:
                            config["variant"] = variant
                        else:
                            config.pop("variant", None)
                        _add_bytes(rewritten, member, json.dumps(config, sort_keys=True).encode())
                    else:
                        rewritten.addfile(member, data)
        with open(path, "rb") as handle:
            reply = "".join(str(line) for line in client.api.load_image(handle))
    except (APIError, OSError, tarfile.TarError, ValueError) as exc:
        raise BakeryError(
            "docker: recording the image of %s as %s failed: %s" % (image["Id"], platform, exc)
        ) from exc
    finally:
        os.unlink(path)
    # the reply names the loaded image: "Loaded image: repo:tag", or "Loaded image ID: sha256:..." (it may also
    # name an image that lost the tag, "renaming the old one with ID ...")
    if repository:
        loaded = _image(client, "%s:%s" % (repository, tag))
    else:
        found = re.findall(r"Loaded image ID: (sha256:[0-9a-f]{64})", reply)
        loaded = _image(client, found[-1]) if found else None
    if loaded is None or loaded.get("Architecture") != arch:
        raise BakeryError(
            "docker load of the %s image of %s did not make one: %s" % (platform, image["Id"], reply[-500:])
        )
    with contextlib.suppress(APIError, NotFound):
        client.api.remove_image(image["Id"], noprune=False)
    return loaded["Id"]


class _ChunkReader(io.RawIOBase):
    """The chunks of a streamed response as a file, for tarfile's stream mode; each chunk also written to
    *copy_to* as it is read, when given (a byte-exact copy of what was read)."""

    def __init__(self, chunks: Iterable[bytes], copy_to: IO[bytes] | None = None) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self._copy_to = copy_to

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read what the stream still has (a tar's end blocks), so that the response is whole."""
        for chunk in self._chunks:
            if self._copy_to is not None:
                self._copy_to.write(chunk)

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            if self._copy_to is not None:
                self._copy_to.write(self._pending)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _add_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo, data: bytes) -> None:
    member.size = len(data)
    archive.addfile(member, io.BytesIO(data))


def dockerfile_changes(changes: dict[str, Any], default_cmd: list[str] | None = None) -> list[str]:
    """``changes`` as Dockerfile instructions, for ``docker import``."""
    lines = []
    if changes.get("entrypoint") is not None:
        lines.append("ENTRYPOINT %s" % canonical_json(list(changes["entrypoint"])))
    cmd = changes.get("cmd") if changes.get("cmd") is not None else default_cmd
    if cmd is not None:
        lines.append("CMD %s" % canonical_json(list(cmd)))
    for key, value in sorted((changes.get("env") or {}).items()):
        lines.append("ENV %s=%s" % (key, _quote(value)))
    for port in changes.get("expose") or []:
        lines.append("EXPOSE %s" % port)
    if changes.get("user"):
        lines.append("USER %s" % changes["user"])
    if changes.get("workdir"):
        lines.append("WORKDIR %s" % changes["workdir"])
    for volume in changes.get("volumes") or []:
        lines.append("VOLUME %s" % canonical_json([volume]))
    if changes.get("stopsignal"):
        lines.append("STOPSIGNAL %s" % changes["stopsignal"])
    return lines


def rootfs_base_image(client: Any, rootfs: str) -> str:
    """The image made from a rootfs tarball, imported once and reused (label org.bakery.rootfs)."""
    identity = rootfs_identity(rootfs)
    with engine_lock(client, "bakery-rootfs:%s" % identity[:12]):
        # only the plain import made here: an image imported with changes may carry the same rootfs label
        cached = _image(client, "bakery-rootfs:%s" % identity[:12])
        platform = rootfs_platform(rootfs)
        # an image imported before it recorded a foreign tree's architecture is made again
        if (
            cached
            and _labels(cached).get(ROOTFS_LABEL) == identity
            and (not platform or platform.split("/")[1] == cached.get("Architecture"))
        ):
            return cached["Id"]
        image_id = _import(
            client,
            rootfs,
            "bakery-rootfs",
            identity[:12],
            ['CMD ["bash"]', "LABEL %s=%s" % (ROOTFS_LABEL, identity)],
        )
        if (
            cached and cached["Id"] != image_id
        ):  # the stale one lost its tag to the new one; images on it keep it
            with contextlib.suppress(APIError, NotFound):
                client.api.remove_image(cached["Id"], noprune=False)
        return image_id


def container_name(bake_id: str | None, target: str | None) -> str:
    raw = "bakery-%s-%s" % (bake_id or time.strftime("%Y%m%d%H%M%S"), target or "build")
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)[:120]


def seed_apt_lists(client: Any, cid: str, rootfs: str) -> dict[str, Any] | None:
    """Put the package lists kept beside the rootfs tarball *rootfs* (``_rootfs.apt_lists_path``) into the lists
    directory of the build container *cid* (created, started or not), as ``_rootfs.seed_apt_lists`` puts them into
    a chroot builder's tree (``_rootfs.apt_lists_archive``: plain files but the lock, root's, with their times), so
    that the refresh before the first provisioner fetches only what changed on the mirror since the rootfs was
    built.

    None when the rootfs has none; else ``path`` and the number of ``files`` sent, or ``files`` 0 and the
    ``error``: never raised, the refresh fetches what is missing."""
    lists = _rootfs.apt_lists_path(rootfs)
    try:
        with _rootfs.apt_lists_archive(lists) as (seeded, data):
            if data is None:
                return seeded
            taken = client.api.put_archive(cid, "/" + _rootfs.APT_LISTS_DIR, data)
    except (APIError, DockerException, OSError) as exc:
        error = getattr(exc, "explanation", None) or str(exc)
    else:
        if taken:
            return seeded
        error = "the engine did not take them"
    return {"path": lists, "files": 0, "error": "cannot put them into the build container: %s" % error}


# The refresh of the package lists before the first provisioner (role bake's), started in the build container as
# soon as it runs, so that it overlaps what the bake does before that provisioner (gathering facts, the play's
# start): role bake's refresh task then only waits for it and shows its output and exit code. Everything of it lives
# in LISTS_REFRESH_DIR, which that task removes, so no provisioner sees it. Only where /usr/bin/apt-get is (where role
# bake counts the builder's package manager as apt without facts); where the directory cannot be made nothing
# starts, and the task runs the refresh itself.
LISTS_REFRESH_DIR = "/run/bakery-lists-refresh"
LISTS_REFRESH = "apt-get -q update -o Acquire::Languages=none"
# the refresh in a subshell whose output goes to a file, not to the exec's streams (the exec ends at once, and no
# stream of it stays open); its exit code is written to a file of its own and renamed into place, then its pid
_LISTS_REFRESH_LAUNCH = r"""set +e
d=%(dir)s
[ -x %(apt_get)s ] || exit 0
mkdir -m 0700 "$d" 2>/dev/null || exit 0
( %(refresh)s; echo $? >"$d/rc.new" && mv "$d/rc.new" "$d/rc" ) </dev/null >"$d/log" 2>&1 &
echo $! >"$d/pid.new" && mv "$d/pid.new" "$d/pid"
exit 0
"""
# role bake's task: the output and exit code of the refresh started with the container (its pid is there once the
# start has ended), or the refresh itself when none started. One whose process went without an exit code (killed)
# fails the task.
_LISTS_REFRESH_WAIT = r"""d=%(dir)s
if ! [ -e "$d/pid" ]; then [ -x %(apt_get)s ] || exit 0; exec %(refresh)s; fi
while ! [ -e "$d/rc" ]; do
    if ! kill -0 "$(cat "$d/pid")" 2>/dev/null && ! [ -e "$d/rc" ]; then
        cat "$d/log"; rm -rf "$d"; echo "bakery: the refresh of the package lists ended without an exit code" >&2; exit 1
    fi
    sleep 0.02
done
cat "$d/log"; rc=$(cat "$d/rc"); rm -rf "$d"; exit "$rc"
"""


def _lists_refresh_values(directory: str, refresh: str, apt_get: str) -> dict[str, str]:
    return {"dir": shlex.quote(directory), "refresh": refresh, "apt_get": shlex.quote(apt_get)}


def lists_refresh_launch(
    directory: str = LISTS_REFRESH_DIR, refresh: str = LISTS_REFRESH, apt_get: str = "/usr/bin/apt-get"
) -> str:
    """Shell that starts *refresh* in the background (see LISTS_REFRESH_DIR); it ends at once, with 0 even when it
    started nothing. The arguments are for tests."""
    return _LISTS_REFRESH_LAUNCH % _lists_refresh_values(directory, refresh, apt_get)


def lists_refresh_wait(
    directory: str = LISTS_REFRESH_DIR, refresh: str = LISTS_REFRESH, apt_get: str = "/usr/bin/apt-get"
) -> str:
    """Shell that waits for the refresh :func:`lists_refresh_launch` started, prints its output, removes what it
    left and exits with its exit code; it runs *refresh* itself when none started."""
    return _LISTS_REFRESH_WAIT % _lists_refresh_values(directory, refresh, apt_get)


def start(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Start a build container (unless an image with the fingerprint exists) for Ansible to provision."""
    name = params["name"]
    if not params.get("base_image") and not params.get("rootfs"):
        raise BakeryError("a container bake needs base_image or rootfs")
    inputs = container_inputs(client, params)
    fp = fingerprint(inputs)
    looked = _lookup(client, params, fp, inputs, check_mode)
    if looked["found"]:
        return looked
    cache = step_cache_params(params)
    keys = step_keys(params, inputs.get("base_image"))
    resume, step_image = find_step(client, keys[: cache["max_resume"] + 1]) if cache["enabled"] else (0, None)
    cached = dict(
        cache,
        keys=keys,
        resume=resume,
        image=step_image["Id"] if step_image else None,
        reason=resume_reason(
            resume, len(keys) - 1, cache["enabled"], bool(params.get("force")), cache["max_resume"]
        ),
        steps=step_states(resume, len(keys) - 1, cache["enabled"]),
    )
    if check_mode:
        return dict(looked, step_cache=cached)
    if step_image is not None:
        touch_steps(cache["dir"], [step_image["Id"]])
    base = params.get("base_image") or rootfs_base_image(client, params["rootfs"])
    start_from = step_image["Id"] if step_image is not None else base
    labels = {
        BAKE_ID_LABEL: params.get("bake_id") or "",
        TEMPORARY_LABEL: "true",
        TARGET_LABEL: params.get("target") or name,
    }
    cname = params.get("container_name") or container_name(params.get("bake_id"), params.get("target"))
    # Docker's commit fills empty config fields from the container's, so the container keeps the base
    # image's Cmd, WorkingDir and User (root is forced only when the base image runs as someone else).
    # a step image has its base's user (its config is the build container's)
    base_user = ((_image(client, base) or {}).get("Config") or {}).get("User") or ""
    run_as = "0" if base_user not in ("", "0", "root") else None
    with Steps() as steps:

        def create() -> str:
            try:
                # the main process is the command agent (_docker_agent), which reads its requests on stdin; no log:
                # the engine would keep every command's output (secrets of no_log tasks too) in the container's log
                created = client.api.create_container(
                    start_from,
                    entrypoint=_docker_agent.ENTRYPOINT,
                    user=run_as,
                    labels=labels,
                    name=cname,
                    detach=True,
                    stdin_open=True,
                    host_config=client.api.create_host_config(
                        init=False, log_config={"Type": "none", "Config": {}}
                    ),
                )
            except APIError as exc:
                raise BakeryError("cannot create build container %s: %s" % (cname, exc.explanation)) from exc
            return created["Id"]

        try:
            cid = steps.run("create container", create, undo=lambda cid: _remove(client, cid))
        except BakeryError:
            if step_image is None or _image(client, step_image["Id"]) is not None:
                raise
            # another bake evicted the step image since it was found: start from the base, as without a cache
            start_from = base
            cached.update(
                resume=0,
                image=None,
                reason="the cached step image went before the container started (evicted by another bake)",
                steps=step_states(0, len(keys) - 1, True),
            )
            cid = steps.run("create container", create, undo=lambda cid: _remove(client, cid))
        # the package lists of the rootfs, when the container starts from the image made of it (a step image has the
        # lists its bake refreshed; a base_image is the user's)
        seeded = (
            steps.run("seed the package lists", lambda: seed_apt_lists(client, cid, params["rootfs"]))
            if params.get("apt_lists") and not params.get("base_image") and start_from == base
            else None
        )
        try:
            steps.run("start container", lambda: client.api.start(cid))
        except APIError as exc:
            raise BakeryError("cannot start build container %s: %s" % (cname, exc.explanation)) from exc
        _wait_running(client, cid)
        # the refresh before the first provisioner starts now, in the same exec (not into a step image: it has the
        # lists its bake refreshed, and its bake runs no refresh)
        refresh = bool(params.get("lists_refresh")) and start_from == base
        install = install_command()
        if refresh:
            install = install[:-1] + [install[-1] + "\n" + lists_refresh_launch()]
        steps.run(
            "install stand-in commands",
            lambda: _exec_checked(client, cid, cname, install, "installing the stand-in commands"),
        )
    base_image = _image(client, base) or {}
    result = dict(
        changed=True,
        built=False,
        found=False,
        container={"id": cid, "name": cname, "base_image": base_image.get("Id", base), "agent": True},
        fingerprint=fp,
        inputs=inputs,
        changed_inputs=looked["changed_inputs"],
        step_cache=cached,
        msg="started build container %s from %s%s"
        % (cname, base, " at step %d (cached %s)" % (resume, start_from[7:19]) if resume else ""),
    )
    if seeded is not None:
        result["apt_lists"] = seeded
    if refresh:
        result["lists_refresh"] = {"wait": lists_refresh_wait()}
    return result


# how long a verification container must keep running on the image's own command to count as a service
SETTLE_SECONDS = 2.0


def verifier(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Run a container from the finished image (``image``) for the bake's checks: as the image runs, with its own
    entrypoint and command (a service serves, its ports answer inside), no stand-in commands. An image whose
    command ends at once (a shell, a one-shot tool) is run again kept alive (``KEEPALIVE``) instead, and the
    result says so (``kept_alive``). The container is temporary (bake id, target), like a build container."""
    ref = params.get("image")
    if not ref:
        raise BakeryError("action=verifier needs image (the id of the image to check)")
    image = _image(client, ref)
    if image is None:
        raise BakeryError("cannot verify %s: no such image" % ref)
    cname = container_name(params.get("bake_id"), "%s-verify" % (params.get("target") or "image"))
    if check_mode:
        return dict(changed=True, container={"name": cname}, msg="would run %s for its checks" % cname)
    labels = {
        BAKE_ID_LABEL: params.get("bake_id") or "",
        TEMPORARY_LABEL: "true",
        TARGET_LABEL: params.get("target") or params.get("name") or "",
    }

    def run(entrypoint: list[str] | None) -> str:
        try:
            created = client.api.create_container(
                image["Id"],
                entrypoint=entrypoint,
                labels=labels,
                name=cname,
                detach=True,
                host_config=client.api.create_host_config(init=False),
            )
            client.api.start(created["Id"])
        except APIError as exc:
            raise BakeryError("cannot run %s from %s: %s" % (cname, ref, exc.explanation)) from exc
        return created["Id"]

    cid = run(None)
    time.sleep(SETTLE_SECONDS)
    state = client.api.inspect_container(cid)["State"]
    kept_alive = not state.get("Running")
    if kept_alive:
        logs = client.api.logs(cid, tail=5).decode("utf-8", "replace").strip()
        _remove(client, cid)
        cid = run(KEEPALIVE)
    try:
        _wait_running(client, cid)
    except BakeryError:
        _remove(client, cid)
        raise
    return dict(
        changed=True,
        container={"id": cid, "name": cname, "image": image["Id"]},
        kept_alive=kept_alive,
        msg="running %s from %s%s"
        % (
            cname,
            image["Id"][7:19],
            " kept alive: its own command ended (exit code %s%s)"
            % (state.get("ExitCode"), ": " + logs[-300:] if logs else "")
            if kept_alive
            else "",
        ),
    )


def poll_delays(first: float = 0.005, cap: float = 0.1) -> Iterator[float]:
    """The pauses between two looks at something that ends soon (an exec, a container's start): *first*, then
    twice the one before, at most *cap*. The stand-in script's exec (three or four per container bake) takes
    0.09-0.17 s from its creation to its look that finds it done with these (median 0.126 s), 0.15-0.19 s with a
    fixed 0.1 s pause (median 0.166 s)."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def _wait_running(client: Any, cid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for delay in poll_delays(cap=0.2):
        state = client.api.inspect_container(cid)["State"]
        if state.get("Running"):
            return
        if state.get("Status") in ("exited", "dead") or time.monotonic() > deadline:
            try:
                logs = client.api.logs(cid, tail=20).decode("utf-8", "replace")
            except APIError:
                # a build container logs nothing (start: its main process answers the connection)
                logs = "(no log)"
            raise BakeryError("build container %s did not stay running (%s): %s" % (cid[:12], state, logs))
        time.sleep(delay)


def _take_output(client: Any, cid: str, path: str) -> str:
    """The text of the output file *path* (or its twin in /tmp) an :func:`_exec_checked` command left, removed
    then; what went wrong instead when it cannot be read."""
    text = None
    for candidate in (path, "/tmp/" + os.path.basename(path)):
        try:
            stream, _stat = client.api.get_archive(cid, candidate)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.extractfile(archive.getmembers()[0])
                text = member.read().decode("utf-8", "replace") if member else ""
        except (APIError, DockerException, tarfile.TarError, IndexError, OSError):
            continue
        with contextlib.suppress(APIError, DockerException):
            removal = client.api.exec_create(cid, ["rm", "-f", candidate], user="0")
            client.api.exec_start(removal["Id"], detach=True)
        break
    return text if text is not None else "(its output could not be read back from %s)" % path


def _exec_checked(
    client: Any, cid: str, cname: str, argv: list[str], what: str, timeout: float = 120.0
) -> None:
    """Run *argv* in the build container as root and wait for it, at most *timeout* seconds; an error names
    the container and the command's last output.

    The exec is detached, and its output goes to a file in the container's ``/dev/shm`` (Docker's tmpfs, never in
    the image), read back with a plain request on failure and removed: an attached exec needs a hijacked HTTP
    connection, which not every path to an engine carries (an API proxy), and a plain request with a bounded wait
    cannot hang the bake. Not the container's log: a build container has none (its main process is the command
    agent, whose answers no log may keep).
    """
    path = "/dev/shm/.bakery-exec-%s.log" % os.urandom(6).hex()
    wrapped = [
        "/bin/sh",
        "-c",
        'o=$1; shift; { [ -d /dev/shm ] && [ -w /dev/shm ]; } || o=/tmp/${o##*/}\n"$@" >"$o" 2>&1; r=$?\n'
        '[ "$r" -ne 0 ] || rm -f "$o"; exit "$r"',
        "bakery",
        path,
        *argv,
    ]
    try:
        created = client.api.exec_create(cid, wrapped, user="0")
        client.api.exec_start(created["Id"], detach=True)
        deadline = time.monotonic() + timeout
        for delay in poll_delays():
            state = client.api.exec_inspect(created["Id"])
            if not state.get("Running") and state.get("ExitCode") is not None:
                break
            if time.monotonic() > deadline:
                raise BakeryError("%s in build container %s did not end in %d s" % (what, cname, timeout))
            time.sleep(delay)
        if state["ExitCode"] == 0:
            return
    except APIError as exc:
        raise BakeryError(
            "%s in build container %s failed: %s" % (what, cname, exc.explanation or exc)
        ) from exc
    output = _take_output(client, cid, path)
    raise BakeryError(
        "%s in build container %s failed (exit code %s): %s"
        % (what, cname, state["ExitCode"], output.strip()[-2000:])
    )


def _remove(client: Any, cid: str) -> None:
    try:
        client.api.remove_container(cid, force=True, v=True)
    except (NotFound, ImageNotFound):
        pass


def _remove_quietly(client: Any, cid: str) -> None:
    """:func:`_remove` in a thread of its own (the commit's, beside the image's load): a failure is left to the
    cleanup's removal, which tries again and reports it."""
    with contextlib.suppress(APIError, DockerException, OSError):
        _remove(client, cid)


def commit_config(base: dict[str, Any], changes: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The committed image's config: the base image's, with *changes* applied as a Dockerfile would.

    The build container ran the command agent as its entrypoint (perhaps as root), so Entrypoint, Cmd and User
    are always set explicitly; as in a Dockerfile, a new ENTRYPOINT resets the base's CMD.
    """
    config = dict(base.get("Config") or {})
    entrypoint = config.get("Entrypoint") or []
    cmd = config.get("Cmd") or []
    if changes.get("entrypoint") is not None:
        entrypoint = list(changes["entrypoint"])
        cmd = []
    if changes.get("cmd") is not None:
        cmd = list(changes["cmd"])
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in config.get("Env") or [])
    env.update({str(k): str(v) for k, v in (changes.get("env") or {}).items()})
    ports = dict(config.get("ExposedPorts") or {})
    for port in changes.get("expose") or []:
        port = str(port)
        ports[port if "/" in port else port + "/tcp"] = {}
    volumes = dict(config.get("Volumes") or {})
    for volume in changes.get("volumes") or []:
        volumes[str(volume)] = {}
    all_labels = dict(config.get("Labels") or {})
    all_labels.update(labels)
    # Docker's commit also copies the build container's labels; the image is not temporary
    all_labels[TEMPORARY_LABEL] = "false"
    conf: dict[str, Any] = {
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "Env": ["%s=%s" % item for item in env.items()],
        "ExposedPorts": ports,
        "Volumes": volumes or None,
        "User": changes.get("user") if changes.get("user") is not None else config.get("User") or "",
        "WorkingDir": changes.get("workdir")
        if changes.get("workdir") is not None
        else config.get("WorkingDir") or "",
        "Labels": all_labels,
    }
    if changes.get("stopsignal"):
        conf["StopSignal"] = changes["stopsignal"]
    elif config.get("StopSignal"):
        conf["StopSignal"] = config["StopSignal"]
    return conf


def commit(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Make the final image of the provisioned build container; the container always goes.

    The image is the base image's layers plus one layer computed from the container's file system
    (:func:`reproducible_image`), not Docker's commit: the same file system gives the same layer, whenever it was
    written and whether the container started from the base or from a step image."""
    name, tags = params["name"], params["tags"]
    cid = params.get("container")
    if not cid:
        raise BakeryError("commit needs the build container (container=...)")
    try:
        container = client.api.inspect_container(cid)
    except NotFound as exc:
        raise BakeryError("build container %s not found (was it removed?)" % cid) from exc
    inputs = container_inputs(client, params)
    fp = fingerprint(inputs)
    if check_mode:
        return dict(changed=True, fingerprint=fp, inputs=inputs, msg="would commit %s as %s" % (cid, name))
    previous = previous_inputs(client, name, tags)
    started = time.monotonic()
    base = step_base(_image(client, container["Image"]) or {})
    with Steps() as steps:
        steps.add_undo("remove build container", lambda: _remove(client, cid), always=True)
        conf = commit_config(base, params.get("changes") or {}, final_labels(params, fp, inputs))
        # a container started from a step image has its labels, which Docker's commit would copy: an image
        # made from the cache is the image made without it, and neither is a step image
        conf["Labels"].update({STEP_KEY_LABEL: "", STEP_LABEL: ""})
        cname = container.get("Name", cid).lstrip("/")
        # the container's overlay, once for both uses: the look for the stand-ins and the layer
        base_id = str(base.get("Id") or "")
        base_image = _image(client, base_id) if base_id else None
        merged = _merged_tree(client, cid, base_image) if base_image is not None else None
        if not standins_absent(merged[0] if merged else None):
            steps.run(
                "remove stand-in commands",
                lambda: _exec_checked(client, cid, cname, remove_command(), "removing the stand-in commands"),
            )
        # as Docker's commit does, the container's labels (bake id, target) are the image's where ours say nothing
        conf["Labels"] = dict((container.get("Config") or {}).get("Labels") or {}, **conf["Labels"])
        # the container goes while the engine loads the image (about 0.1 s of each, side by side): nothing more
        # is read from it then. The cleanup's removal below finds it gone, or removes it when this one failed
        removal = threading.Thread(target=_remove_quietly, args=(client, cid), name="remove build container")
        try:
            made = steps.run(
                "write the image",
                lambda: reproducible_image(
                    client,
                    cid,
                    base_id,
                    conf,
                    params,
                    base_image=base_image,
                    merged=merged,
                    read=removal.start,
                ),
            )
        finally:
            if removal.ident is not None:
                removal.join()
        image_id = made.pop("id")
        # until it is tagged, the image is nobody's: a failure from here on removes it
        steps.add_undo("remove the untagged image", lambda: _remove_untagged(client, image_id))
        _check_committed(client, image_id, conf)
        what = "committed %s" % cname
        result = _built(client, image_id, params, fp, inputs, changed_inputs(previous, inputs), started, what)
        # the image's packages, for its SBOMs (the docker role hands them to the sbom module as installed)
        result["packages"] = made.pop("packages")
        result["layer"] = made
    # the container went with the commit (the cleanup has nothing left to remove), unless its removal failed
    result["container_removed"] = "remove build container" in steps.undone
    return result


# ---------------------------------------------------------------- reproducible layers
#
# The final image of a container bake is its base image's layers plus one layer that is a function of the
# container's file system only (module_utils/_layer.py): both file systems are indexed (the base image's from an
# export, kept by image id; the container's from its overlay directories, module_utils/_overlay.py, else from its
# export), compared, and the changes written as a normalised tar (sorted, times clamped to the bake's
# SOURCE_DATE_EPOCH, numeric owners, whiteouts for what went), which is loaded (``docker load``) with the image
# config. The engine looks every layer up by its chain id before it reads the archive's file for it: the base layers
# are never sent, and a layer it has already (the same bake again) is not stored twice.

# What provisioning leaves that differs from one run to the next although the bake is the same (logs, the
# package tools' backups and binary caches, random seeds, ...: the root-filesystem builders' list, with the reason
# for each), as paths relative to the root (fnmatch patterns, ``*`` crosses ``/``). A final image has none of them
# unless its base has them as they are.
VARYING_PATHS = tuple(pattern for pattern, _reason in _reproducible.VARYING_PATHS)

# the base image's config fields an image made here keeps besides those commit_config sets
_KEPT_CONFIG = ("Healthcheck", "OnBuild", "Shell", "ArgsEscaped")


# the work directories of reproducible_image (the exported container, the layer, the image archive), in the temporary
# directory, named with the pid of the module that made them
LAYER_WORKDIR_PREFIX = ".bakery-layer-"


def sweep_layer_workdirs(directory: str | None = None) -> list[str]:
    """Remove the work directories that a killed commit left (their process is gone); return their paths."""
    directory = directory or tempfile.gettempdir()
    removed = []
    for name in sorted(os.listdir(directory)):
        match = re.match(r"^%s(\d+)-" % re.escape(LAYER_WORKDIR_PREFIX), name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its process is running: a commit of another bake
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(os.path.join(directory, name))
    return removed


def reading_container(client: Any, image: str, bake_id: str | None) -> str:
    """The id of a new container of *image* that is never started, to read the image's files from (nothing runs,
    nothing is mounted on the host): temporary, labelled with the bake id for the janitor; the caller removes it."""
    labels = {BAKE_ID_LABEL: bake_id or "", TEMPORARY_LABEL: "true"}
    try:
        return client.api.create_container(image, command=["/bin/true"], labels=labels, detach=True)["Id"]
    except APIError as exc:
        raise BakeryError(
            "cannot create a container of %s to read it: %s" % (image, exc.explanation)
        ) from exc


def _export_index(client: Any, image: str, bake_id: str | None) -> dict[str, Entry]:
    """Every path of *image*'s file system, from the export of a container of it that never starts (temporary,
    labelled with the bake id for the janitor, always removed)."""
    reader = reading_container(client, image, bake_id)
    try:
        with tarfile.open(fileobj=_ChunkReader(client.api.export(reader)), mode="r|") as archive:
            return index_tar(archive)
    except (APIError, tarfile.TarError, ValueError) as exc:
        raise BakeryError("cannot read the file system of %s: %s" % (image, exc)) from exc
    finally:
        _remove(client, reader)


# how many base images' indexes the cache keeps (the most recently used; one per base rootfs, 1-3 MB each)
INDEX_CACHE_KEEP = 8


def base_index(
    client: Any, image_id: str, bake_id: str | None, cache: str | None
) -> tuple[dict[str, Entry], str]:
    """Every path of the image *image_id*'s file system, and where it came from: the index kept in the directory
    *cache* by image id (an image's files never change), else read from an export of the image (then kept there,
    beside the most recently used :data:`INDEX_CACHE_KEEP` others). An unreadable kept index is read again."""
    path = os.path.join(cache, "%s.json.gz" % image_id.split(":")[-1]) if cache else None
    if path and os.path.isfile(path):
        try:
            with gzip.open(path, "rb") as handle:
                entries = load_index(handle.read())
            os.utime(path)
            return entries, "kept"
        except (OSError, EOFError, ValueError):
            pass
    entries = _export_index(client, image_id, bake_id)
    if path:
        try:
            with atomic_output(path) as tmp, gzip.open(tmp, "wb", compresslevel=1) as handle:
                handle.write(dump_index(entries))
            kept = sorted(
                (entry for entry in os.scandir(cache) if entry.name.endswith(".json.gz")),
                key=lambda entry: entry.stat().st_mtime,
                reverse=True,
            )
            for entry in kept[INDEX_CACHE_KEEP:]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        except OSError:
            pass  # a cache: the next commit reads the image again
    return entries, "export"


def image_config(
    base_image: dict[str, Any], conf: dict[str, Any], diff_ids: list[str], epoch: int
) -> dict[str, Any]:
    """The config of the image of *diff_ids* (the base image's layers and one more) with the container config
    *conf*, made at *epoch*: nothing in it depends on when it is made."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    base_config = base_image.get("Config") or {}
    config = {key: base_config[key] for key in _KEPT_CONFIG if base_config.get(key) is not None}
    config.update(conf)
    base_layers = len(diff_ids) - 1
    history = [
        {"created": base_image.get("Created") or created, "created_by": "base image %s" % base_image["Id"]}
        for _layer in range(base_layers)
    ]
    history.append(
        {"created": created, "created_by": "bakery: provisioned build container", "comment": "bakery"}
    )
    image = {
        "architecture": base_image.get("Architecture") or "amd64",
        "os": base_image.get("Os") or "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if base_image.get("Variant"):
        image["variant"] = base_image["Variant"]
    return image


def image_packages(
    kept: Mapping[str, Entry],
    members: Mapping[str, tarfile.TarInfo],
    extract: Callable[[tarfile.TarInfo], Any],
) -> list[dict[str, Any]] | None:
    """The package records (:func:`_dpkg_db.records`) of the image whose files are *kept* (the container's, less
    what the layer leaves out), read from the container's export (*members*, ``extract``) while it is open: what
    reading the image's package database again would give, without the engine's archives of it (the SBOM step's
    slowest part). None when the image has no dpkg database."""
    reader = _dpkg_db.TarReader()
    for name in kept:
        if _dpkg_db.in_database(name):
            reader.add_member(name, members[name], extract, _dpkg_db.wanted_member)
    return _dpkg_db.records(reader)


def _merged_tree(client: Any, cid: str, base_image: dict[str, Any]) -> tuple[_overlay.MergedTree | None, str]:
    """The merged view of the running container *cid*'s overlay directories above *base_image*, when this process
    can read it as the container's export would give it (:func:`_overlay.overlay_of`); else None and why."""
    if os.environ.get(_overlay.READ_FROM_ENV) == "export":
        return None, "%s=export" % _overlay.READ_FROM_ENV
    try:
        container, info = client.api.inspect_container(cid), client.api.info()
    except APIError as exc:
        return None, "cannot inspect the container or the engine: %s" % exc.explanation
    try:
        overlay, why = _overlay.overlay_of(container, base_image, info)
    except OSError as exc:
        return None, "cannot read this host's mounts: %s" % exc
    return (_overlay.MergedTree(overlay) if overlay else None), why


def standins_absent(tree: _overlay.MergedTree | None) -> bool:
    """Whether the build container whose merged view is *tree* (read on this host) has no record of stand-ins, so
    that their removal (``remove_command``: nothing without the record) would do nothing: the keep of the last
    step took them out already. A path of the record that cannot be followed here (a symbolic link on the way, an
    unreadable directory) or no merged view counts as stand-ins there: the removal runs."""
    if tree is None:
        return False
    path = tree.overlay.merged
    for part in RECORD_PATH.strip("/").split("/"):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return False
    return False


def reproducible_image(
    client: Any,
    cid: str,
    base_id: str,
    conf: dict[str, Any],
    params: Mapping[str, Any],
    base_image: dict[str, Any] | None = None,
    merged: tuple[_overlay.MergedTree | None, str] | None = None,
    read: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Load the image of container *cid* over the image *base_id*: its layers, then one layer of what the
    container's file system changed (normalised, :mod:`_layer`), with the container config *conf*.

    SOURCE_DATE_EPOCH is ``params["source_date_epoch"]`` (the bake's), else the newest modification time of the
    base image's files (stable for one base image, so for one rootfs cache). The container's files are read from
    its overlay directories where they give what its export would (:mod:`_overlay`), else from the export
    (``read_from``, and ``read_from_why`` not); *base_image* (the inspection of *base_id*) and *merged*
    (:func:`_merged_tree`'s answer for *cid*) are the caller's when it has them. *read* is called once nothing more
    is read from the container, before the image is loaded. Returns the image id, the layer's diff id and what
    making it took."""
    if base_image is None and base_id:
        base_image = _image(client, base_id)
    if base_image is None:
        raise BakeryError("the base image %s of the build container is gone" % (base_id or "?"))
    started = time.monotonic()
    sweep_layer_workdirs()
    workdir = tempfile.mkdtemp(prefix="%s%d-" % (LAYER_WORKDIR_PREFIX, os.getpid()))
    try:
        base_entries, base_from = base_index(
            client, base_image["Id"], params.get("bake_id"), params.get("index_cache")
        )
        epoch = params.get("source_date_epoch")
        epoch_source = "source_date_epoch"
        if epoch is None:
            epoch, epoch_source = newest_mtime(base_entries), "the newest mtime of the base image's files"
        epoch = int(epoch)
        layer_path = os.path.join(workdir, "layer.tar")

        def layer(final: dict[str, Entry], content: Callable[[str], Any], packages_of: Callable) -> tuple:
            kept = image_entries(base_entries, final, VARYING_PATHS)
            paths, whiteouts = changes(base_entries, final, VARYING_PATHS, kept)
            with open(layer_path, "wb") as layer_file:
                diff_id, size = write_layer(layer_file, final, paths, whiteouts, content, epoch)
            return diff_id, size, paths, whiteouts, packages_of(kept)

        # the container's files from its overlay directories where they can be read as its export would give
        # them (_overlay), else from the export
        made = None
        tree, why = merged if merged is not None else _merged_tree(client, cid, base_image)
        if tree is not None:
            try:
                final = tree.index(base_entries)
                exported_at = time.monotonic()
                made = layer(final, tree.open, tree.packages)
            except (OSError, _overlay.Unusable) as exc:
                if not _overlay.reading_error(exc):
                    raise
                why = "reading the overlay directories failed: %s" % exc
        if made is None:
            # the export is indexed (every file hashed) as it streams, and copied to a file as it is read: the
            # members' data offsets in the stream are their offsets in the copy, where the layer's contents are
            # read
            exported = os.path.join(workdir, "container.tar")
            with open(exported, "w+b") as copy:
                try:
                    chunks = _ChunkReader(client.api.export(cid), copy_to=copy)
                    with tarfile.open(fileobj=chunks, mode="r|") as stream:
                        final = index_tar(stream)
                        members = {member_name(member.name): member for member in stream.getmembers()}
                    chunks.drain()
                except APIError as exc:
                    raise BakeryError("docker export of %s failed: %s" % (cid[:12], exc.explanation)) from exc
            exported_at = time.monotonic()
            with open(exported, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
                # a regular file's member (a hard link's content is its target's: write_layer asks for that)
                def content(name: str) -> Any:
                    return archive.extractfile(members[name])

                made = layer(final, content, lambda kept: image_packages(kept, members, archive.extractfile))
        diff_id, size, paths, whiteouts, packages = made
        if read is not None:
            read()
        diff_ids = list((base_image.get("RootFS") or {}).get("Layers") or []) + [diff_id]
        config = canonical_json(image_config(base_image, conf, diff_ids, epoch)).encode()
        archive_path = os.path.join(workdir, "image.tar")
        with open(layer_path, "rb") as layer_file, open(archive_path, "wb") as out:
            image_id = image_archive(out, config, diff_ids, (diff_id, layer_file))
        written_at = time.monotonic()
        try:
            with open(archive_path, "rb") as handle:
                reply = "".join(str(line) for line in client.api.load_image(handle))
        except APIError as exc:
            raise BakeryError(
                "docker load of the image of %s failed: %s" % (cid[:12], exc.explanation)
            ) from exc
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise BakeryError("writing the image of %s failed: %s" % (cid[:12], exc)) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    loaded = _image(client, image_id)
    if loaded is None or ((loaded.get("RootFS") or {}).get("Layers") or [])[-1:] != [diff_id]:
        raise BakeryError(
            "docker load of the image of %s did not make %s: %s" % (cid[:12], image_id, reply[-500:])
        )
    return dict(
        id=image_id,
        packages=packages,
        diff_id=diff_id,
        size=size,
        paths=len(paths),
        whiteouts=len(whiteouts),
        source_date_epoch=epoch,
        source_date_epoch_from=epoch_source,
        base_index=base_from,
        read_from="export" if why else "overlay",
        read_from_why=why,
        export_seconds=round(exported_at - started, 3),
        write_seconds=round(written_at - exported_at, 3),
        load_seconds=round(time.monotonic() - written_at, 3),
    )


# ---------------------------------------------------------------- per-step cache
#
# After each provisioner (and its handlers) succeeded, the build container is committed as a step image: no tag,
# labelled with its chain key (STEP_KEY_LABEL) and, in STEP_LABEL, its position, its target and the base image it
# started from (id and config, which the final commit writes as the base's). Docker's commit is atomic: an image
# with the label is a complete state, and a provisioner that failed or was killed commits nothing. A bake starts
# its container from the deepest step image whose key it has, and skips the provisioners before it. Step images
# are not temporary (``bakery-temporary=false``, no bake id): cleanup and the janitor's leak sweep leave them;
# least recently used ones beyond the cache's size go (:func:`evict_steps`), and ``prune_steps`` empties it.


def step_keys(params: Mapping[str, Any], base_image_id: str | None) -> list[str]:
    """The builder's chain keys (the plan's), bound to the base image's id when the target names a base image
    (the plan knows only its name)."""
    keys = [str(key) for key in params.get("step_keys") or []]
    if base_image_id:
        keys = [digest_value({"key": key, "base_image": base_image_id}) for key in keys]
    return keys


def _step_images(client: Any, key: str | None = None) -> list[dict[str, Any]]:
    """Step images (listing entries) with *key*, or all of them; an artifact's empty step label does not count."""
    wanted = "%s=%s" % (STEP_KEY_LABEL, key) if key else STEP_KEY_LABEL
    found = client.api.images(all=True, filters={"label": wanted})
    return [image for image in found if (image.get("Labels") or {}).get(STEP_KEY_LABEL)]


def find_step(client: Any, keys: list[str]) -> tuple[int, dict[str, Any] | None]:
    """The deepest step (1..n) whose key has a step image, and that image (inspected); (0, None) if none."""
    for position in range(len(keys) - 1, 0, -1):
        for listed in _step_images(client, keys[position]):
            image = _image(client, listed["Id"])
            if image is not None and _labels(image).get(STEP_KEY_LABEL) == keys[position]:
                return position, image
    return 0, None


def step_base(image: dict[str, Any]) -> dict[str, Any]:
    """The base image a container started from: *image* itself, or the base a step image records."""
    raw = _labels(image).get(STEP_LABEL)
    if not raw:
        return image
    try:
        step = json.loads(raw)
    except ValueError:
        return image
    return {"Id": step.get("base"), "Config": step.get("config") or {}}


# the base image's config fields the final commit reads (commit_config)
_BASE_CONFIG = (
    "Entrypoint",
    "Cmd",
    "Env",
    "ExposedPorts",
    "Volumes",
    "User",
    "WorkingDir",
    "Labels",
    "StopSignal",
)


def step_commit(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Keep the build container's state after provisioner ``step`` as a step image (``step_keys[step]``), unless
    one with that key exists; then record its use and evict what the cache holds beyond its size."""
    cid, position = params.get("container"), int(params.get("step") or 0)
    keys = [str(key) for key in params.get("step_keys") or []]
    cache = step_cache_params(params)
    if not cid or not 0 < position < len(keys):
        raise BakeryError("step_commit needs the container and a step (1-%d) of step_keys" % (len(keys) - 1))
    key = keys[position]
    existing = _step_images(client, key)
    if existing or check_mode or not cache["enabled"]:
        if existing and not check_mode:
            touch_steps(cache["dir"], [existing[0]["Id"]])
        return dict(
            changed=bool(check_mode and cache["enabled"] and not existing),
            image=existing[0]["Id"] if existing else None,
            key=key,
            msg="step %d is cached" % position if existing else "would keep step %d" % position,
        )
    try:
        container = client.api.inspect_container(cid)
    except NotFound as exc:
        raise BakeryError("build container %s not found (was it removed?)" % cid) from exc
    cname = container.get("Name", cid).lstrip("/")
    started = _image(client, container["Image"]) or {}
    base = step_base(started)
    config = {name: value for name, value in (base.get("Config") or {}).items() if name in _BASE_CONFIG}
    step = {
        "position": position,
        "target": params.get("target") or "",
        "base": base.get("Id"),
        "config": config,
    }
    labels = {
        STEP_KEY_LABEL: key,
        STEP_LABEL: canonical_json(step),
        TEMPORARY_LABEL: "false",
        # a step image outlives the bake that made it: no bake's cleanup takes it
        BAKE_ID_LABEL: "",
        # nor is it an artifact, even when the base image is one (Docker's commit copies the container's labels,
        # which has its image's): no fingerprint look-up finds it, no janitor sweep of that bake takes it
        FINGERPRINT_LABEL: "",
        INPUTS_LABEL: "",
        BUILD_BAKE_ID_LABEL: "",
    }
    # the stand-in commands are no part of a step's state: out for the commit, in again for the next step. After
    # the last provisioner none follows: the bake removes the package lists (apt-get clean, find) and commits the
    # image, whose commit would take them out again (one exec less; a failed commit puts them back all the same)
    last = position == len(keys) - 1
    _exec_checked(client, cid, cname, remove_command(), "removing the stand-in commands")
    committed = False
    try:
        reply = client.api.commit(
            cid, conf={"Labels": labels}, message="bakery step %d %s" % (position, key[:12])
        )
        committed = True
    except APIError as exc:
        raise BakeryError(
            "docker commit of step %d of %s failed: %s" % (position, cid[:12], exc.explanation)
        ) from exc
    finally:
        if not (committed and last):
            _exec_checked(client, cid, cname, install_command(), "installing the stand-in commands")
    touch_steps(cache["dir"], [reply["Id"]])
    evicted = (
        evict_steps(client, cache["dir"], cache["max_size"], keep={reply["Id"]}) if cache["max_size"] else []
    )
    return dict(
        changed=True,
        image=reply["Id"],
        key=key,
        evicted=evicted,
        msg="kept step %d as %s%s"
        % (position, reply["Id"][7:19], "; evicted %d step image(s)" % len(evicted) if evicted else ""),
    )


def _read_index(directory: str | None) -> dict[str, float]:
    if not directory:
        return {}
    try:
        with open(os.path.join(directory, STEP_INDEX), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    used = data.get("used") if isinstance(data, dict) else None
    return (
        {str(k): float(v) for k, v in used.items() if isinstance(v, (int, float))}
        if isinstance(used, dict)
        else {}
    )


def _write_index(directory: str, used: Mapping[str, float]) -> None:
    path = os.path.join(directory, STEP_INDEX)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"used": dict(sorted(used.items()))}, handle, indent=1)


def touch_steps(directory: str | None, image_ids: Iterable[str], now: float | None = None) -> None:
    """Record that the step images were used now (the index ``<cache_dir>/docker-steps.json``, written atomically
    under a lock; the least recently used are evicted first)."""
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    with file_lock(os.path.join(directory, STEP_INDEX)):
        used = _read_index(directory)
        for image_id in image_ids:
            used[image_id] = time.time() if now is None else now
        _write_index(directory, used)


def step_entries(client: Any, directory: str | None) -> list[dict[str, Any]]:
    """The engine's step images: id, key, position, own size (what it adds to its parent) and last use (the
    index's, else its creation)."""
    used = _read_index(directory)
    listed = _step_images(client)
    sizes = {image["Id"]: int(image.get("Size") or 0) for image in client.api.images(all=True)}
    entries = []
    for image in listed:
        labels = image.get("Labels") or {}
        try:
            position = int(json.loads(labels.get(STEP_LABEL) or "{}").get("position") or 0)
        except (ValueError, AttributeError):
            position = 0
        size = int(image.get("Size") or 0)
        parent = image.get("ParentId") or ""
        entries.append(
            {
                "id": image["Id"],
                "key": labels[STEP_KEY_LABEL],
                "position": position,
                "size": max(size - sizes[parent], 0) if parent in sizes else size,
                "used": used.get(image["Id"], float(image.get("Created") or 0)),
            }
        )
    return entries


def evict_steps(
    client: Any, directory: str | None, max_size: int, keep: Iterable[str] = (), check_mode: bool = False
) -> list[str]:
    """Remove step images beyond *max_size* (least recently used first); an image another image or a container
    still stands on (a later step, an artifact made from it) stays. Returns the ids removed."""
    removed = []
    for image_id in eviction_order(step_entries(client, directory), max_size, keep):
        if not check_mode:
            try:
                client.api.remove_image(image_id, noprune=False)
            except (NotFound, ImageNotFound):
                pass
            except APIError:
                continue
        removed.append(image_id)
    if removed and directory and not check_mode:
        with file_lock(os.path.join(directory, STEP_INDEX)):
            used = _read_index(directory)
            for image_id in removed:
                used.pop(image_id, None)
            _write_index(directory, used)
    return removed


def prune_steps(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Empty the per-step cache down to ``step_cache.max_size`` bytes (0: every step image nothing stands on)."""
    cache = params.get("step_cache") or {}
    removed = evict_steps(client, cache.get("dir"), int(cache.get("max_size") or 0), check_mode=check_mode)
    return dict(
        changed=bool(removed),
        removed=removed,
        msg="%s %d step image(s)" % ("would remove" if check_mode else "removed", len(removed)),
    )


def _remove_untagged(client: Any, image_id: str) -> None:
    image = _image(client, image_id)
    if image is not None and not image.get("RepoTags"):
        client.api.remove_image(image_id, noprune=False)


def _check_committed(client: Any, image_id: str, conf: dict[str, Any]) -> None:
    """Docker's commit merges the container's config into empty fields; make sure ours won."""
    got = (_image(client, image_id) or {}).get("Config") or {}
    if (got.get("Entrypoint") or []) != conf["Entrypoint"] or (got.get("Cmd") or []) != conf["Cmd"]:
        raise BakeryError(
            "committed image has Entrypoint=%s Cmd=%s, expected Entrypoint=%s Cmd=%s"
            % (got.get("Entrypoint"), got.get("Cmd"), conf["Entrypoint"], conf["Cmd"])
        )


def remove(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Remove build containers: the one named, and every temporary one of a bake (``bake_id``).

    The bake's cleanup and the janitor both go through :func:`sweep_containers`.
    """
    ids: list[str] = []
    if params.get("container"):
        try:
            container = client.api.inspect_container(params["container"])
        except NotFound:
            container = None
        if container is not None:
            labels = (container.get("Config") or {}).get("Labels") or {}
            if labels.get(TEMPORARY_LABEL) != "true":
                raise BakeryError(
                    "container %s is not a build container (no label %s=true); not removing it"
                    % (params["container"], TEMPORARY_LABEL)
                )
            ids.append(container["Id"])
    selector = Selector(bake_id=params["bake_id"]) if params.get("bake_id") else None
    entries = sweep_containers(client, selector, check_mode, only=ids, location=params.get("docker_host"))
    problems = errors_of(entries)
    if problems:
        raise BakeryError("could not remove build container(s): %s" % "; ".join(problems), removed=entries)
    removed = [entry["id"] for entry in entries]
    return dict(changed=bool(removed), removed=removed, msg="removed %d build container(s)" % len(removed))


def _temporary_containers(client: Any, bake_id: str | None) -> list[dict[str, Any]]:
    labels = ["%s=true" % TEMPORARY_LABEL]
    if bake_id is not None:
        labels.append("%s=%s" % (BAKE_ID_LABEL, bake_id))
    return client.api.containers(all=True, filters={"label": labels})


def sweep_containers(
    client: Any,
    selector: Selector | None,
    check_mode: bool,
    only: Iterable[str] = (),
    location: str | None = None,
) -> list[dict[str, Any]]:
    """Build containers (label ``bakery-temporary=true``) the selector selects, plus those of *only* (ids of
    containers already checked to be temporary); running ones are killed and removed."""
    found: dict[str, dict[str, Any]] = {}
    wanted = set(only)
    # one listing serves both: the bake's containers, or every temporary one when ids are wanted too
    listed_id = selector.bake_id if selector and not wanted else None
    candidates = _temporary_containers(client, listed_id) if selector or wanted else []
    for container in candidates:
        labels = container.get("Labels") or {}
        cid = container["Id"]
        chosen = selector is not None and selector.matches(
            labels.get(BAKE_ID_LABEL), container.get("Created")
        )
        if cid in found or not (cid in wanted or chosen):
            continue
        names = container.get("Names") or []
        found[cid] = record(
            "docker",
            "container",
            cid,
            name=names[0].lstrip("/") if names else cid[:12],
            bake_id=labels.get(BAKE_ID_LABEL) or None,
            target=labels.get(TARGET_LABEL),
            created=container.get("Created"),
            location=location or "local engine",
        )
    return [
        act(entry, check_mode, lambda cid=cid: _remove_checked(client, cid)) for cid, entry in found.items()
    ]


def _remove_checked(client: Any, cid: str) -> None:
    try:
        _remove(client, cid)
    except APIError as exc:
        raise BakeryError("cannot remove container %s: %s" % (cid[:12], exc.explanation)) from exc


def sweep_images(
    client: Any, selector: Selector, check_mode: bool, location: str | None = None
) -> list[dict[str, Any]]:
    """Images labelled ``bakery-temporary=true`` (committed and built images carry ``false``, or no label);
    and, by bake id only, that bake's images without any tag: what a commit killed before its tagging made
    (a finished bake's image always has its tags)."""
    found: dict[str, dict[str, Any]] = {}
    labels = ["%s=true" % TEMPORARY_LABEL]
    if selector.bake_id is not None:
        labels.append("%s=%s" % (BAKE_ID_LABEL, selector.bake_id))
    images = [(image, BAKE_ID_LABEL) for image in client.api.images(all=True, filters={"label": labels})]
    if selector.bake_id is not None:
        untagged = client.api.images(
            all=True, filters={"label": "%s=%s" % (BUILD_BAKE_ID_LABEL, selector.bake_id)}
        )
        images += [
            (image, BUILD_BAKE_ID_LABEL)
            for image in untagged
            if not [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
        ]
    for image, id_label in images:
        image_labels = image.get("Labels") or {}
        if image["Id"] in found:
            continue
        if id_label == BAKE_ID_LABEL and image_labels.get(TEMPORARY_LABEL) != "true":
            continue
        if not selector.matches(image_labels.get(id_label), image.get("Created")):
            continue
        tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
        found[image["Id"]] = record(
            "docker",
            "image",
            image["Id"],
            name=tags[0] if tags else image["Id"][7:19],
            bake_id=image_labels.get(id_label) or None,
            target=image_labels.get(TARGET_LABEL),
            created=image.get("Created"),
            location=location or "local engine",
        )
    return [
        act(entry, check_mode, lambda ref=ref: _remove_image(client, ref)) for ref, entry in found.items()
    ]


def _remove_image(client: Any, ref: str) -> None:
    try:
        client.api.remove_image(ref, force=True, noprune=False)
    except (NotFound, ImageNotFound):
        pass
    except APIError as exc:
        raise BakeryError("cannot remove image %s: %s" % (ref[7:19], exc.explanation)) from exc


def sweep(
    docker_host: str | None, selector: Selector, check_mode: bool, timeout: int = 60
) -> list[dict[str, Any]]:
    """The janitor's Docker sweep: build containers first (they hold their images), then temporary images."""
    client = connect(docker_host, timeout)
    try:
        entries = sweep_containers(client, selector, check_mode, location=docker_host)
        return entries + sweep_images(client, selector, check_mode, location=docker_host)
    finally:
        client.close()


def find(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Look for an image with the fingerprint, as build or start would.

    Changes nothing, except with ``restore_tags``: then tags moved away from the found image are pointed
    back at it (``changed`` says whether any had to move).
    """
    inputs = build_inputs(client, params) if params.get("context") else container_inputs(client, params)
    restore = bool(params.get("restore_tags"))
    result = _lookup(client, params, fingerprint(inputs), inputs, check_mode=check_mode or not restore)
    return dict(result, changed=bool(result["found"] and restore and result["changed"]))


# ---------------------------------------------------------------- publish


def publishes(params: Mapping[str, Any]) -> bool:
    """Whether build, import, commit and find publish the image (tag and push it). ``publish: false`` leaves a new
    image untagged, carrying only its fingerprint label, until it passed its checks: ``action=publish`` then tags
    it (and pushes it with ``push``)."""
    return params.get("publish", True) is not False


def publish(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Point the tags at the image (``image``: an id or reference) and push them when asked."""
    name, tags = params["name"], params["tags"]
    ref = params.get("image")
    if not ref:
        raise BakeryError("action=publish needs image (the id of the image to tag)")
    image = _image(client, ref)
    if image is None:
        raise BakeryError("cannot publish %s as %s: no such image" % (ref, name))
    moved = ensure_tags(client, image["Id"], name, tags, check_mode)
    result: dict[str, Any] = dict(
        changed=bool(moved),
        published=True,
        tagged=["%s:%s" % (name, tag) for tag in moved],
        msg="tagged %s as %s" % (image["Id"][7:19], ", ".join(moved))
        if moved
        else "tags already on the image",
    )
    if params.get("push"):
        if check_mode and moved:
            result["push"] = dict(changed=True, pushed=["%s:%s" % (name, tag) for tag in tags], up_to_date=[])
        else:
            result["push"] = push(client, params, check_mode)
        result["changed"] = result["changed"] or result["push"]["changed"]
    result["image"] = image_summary(client, image["Id"], name, tags)
    return result


# ---------------------------------------------------------------- push


def _auth(params: dict[str, Any]) -> dict[str, str] | None:
    registry = params.get("registry") or {}
    if registry.get("password") == NO_LOG_MASK:
        raise BakeryError(
            "registry.password is the masked copy the bake plan shows, not the password: role bakery.images.docker "
            "takes the real value from bakery_target_secrets, which role bakery.images.bake sets"
        )
    if registry.get("username"):
        return {"username": registry["username"], "password": registry.get("password") or ""}
    return None


def push(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Push every tag; a tag whose registry digest already matches the local image is left alone."""
    name, tags = params["name"], params["tags"]
    image = _image(client, "%s:%s" % (name, tags[0]))
    if image is None:
        raise BakeryError("cannot push %s:%s: no such image" % (name, tags[0]))
    auth = _auth(params)
    pushed, up_to_date = [], []
    for tag in tags:
        ref = "%s:%s" % (name, tag)
        if _registry_has(client, ref, name, image, auth):
            up_to_date.append(ref)
            continue
        pushed.append(ref)
        if check_mode:
            continue
        last_error = None
        for attempt in range(3):
            last_error = _push_once(client, name, tag, auth)
            if last_error is None:
                break
            time.sleep(1 + attempt)
        if last_error is not None:
            raise BakeryError("push of %s failed: %s" % (ref, last_error))
    image = _image(client, image["Id"]) or image
    return dict(
        changed=bool(pushed),
        pushed=pushed,
        up_to_date=up_to_date,
        repo_digests=image.get("RepoDigests") or [],
        msg="pushed %s" % ", ".join(pushed) if pushed else "registry already has %s" % ", ".join(up_to_date),
    )


def _push_once(client: Any, name: str, tag: str, auth: dict[str, str] | None) -> str | None:
    try:
        for chunk in client.api.push(name, tag=tag, auth_config=auth, stream=True, decode=True):
            if "error" in chunk:
                return (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
    except APIError as exc:
        return str(exc.explanation)
    return None


def _registry_has(
    client: Any, ref: str, name: str, image: dict[str, Any], auth: dict[str, str] | None
) -> bool:
    try:
        remote = client.api.inspect_distribution(ref, auth_config=auth)
    except (APIError, NotFound):
        return False
    digest = (remote.get("Descriptor") or {}).get("digest")
    return bool(digest) and "%s@%s" % (name, digest) in (image.get("RepoDigests") or [])


# ---------------------------------------------------------------- image index (a multi-architecture image)

# The media types of an image index: Docker's manifest list and the OCI image index.
INDEX_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)


def registry_host(name: str) -> str:
    """The registry a repository name names (its first component when that is a host), Docker Hub's otherwise."""
    first, _slash, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def loopback_registry(host: str) -> bool:
    """Whether the registry is on this machine (127.0.0.0/8, ::1, localhost): the Docker engine talks plain http
    to those (it treats them as insecure registries), and ``docker manifest`` is told to with ``--insecure``."""
    hostname = host[1 : host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return hostname == "localhost" or hostname == "::1" or hostname.startswith("127.")


class _ManifestCli:
    """The docker CLI's ``docker manifest``, which makes and pushes image indexes (bakery writes no registry
    protocol of its own). It runs with a configuration directory of its own, temporary: the lists it keeps while
    making one and the registry credentials (written there as Docker's ``config.json`` does, never on a command
    line) are removed with it, and the user's ``~/.docker`` is neither read nor written."""

    def __init__(self, name: str, auth: Mapping[str, str] | None) -> None:
        self.name = name
        self.host = registry_host(name)
        self.insecure = ["--insecure"] if loopback_registry(self.host) else []
        self.directory = tempfile.mkdtemp(prefix="bakery-manifest-")
        if auth:
            key = "https://index.docker.io/v1/" if self.host == "docker.io" else self.host
            token = base64.b64encode(("%s:%s" % (auth["username"], auth["password"])).encode()).decode()
            path = os.path.join(self.directory, "config.json")
            with open(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8"
            ) as out:
                json.dump({"auths": {key: {"auth": token}}}, out)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise BakeryError(
                "an image index is made with the docker CLI (docker manifest): install docker.io"
            )
        command = [docker_cli, "--config", self.directory, "manifest", args[0], *self.insecure, *args[1:]]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            raise BakeryError("docker manifest %s %s did not answer in 300 s" % (args[0], args[-1])) from None

    def inspect(self, ref: str) -> dict[str, Any] | None:
        """What the registry has under *ref* (an index or an image manifest), None when it has nothing."""
        proc = self.run("inspect", ref)
        if proc.returncode != 0:
            text = (proc.stderr or proc.stdout).strip()
            if "no such manifest" in text.lower() or "not found" in text.lower():
                return None
            raise BakeryError("cannot read %s from its registry: %s" % (ref, text))
        return json.loads(proc.stdout)

    def create_and_push(self, ref: str, manifests: list[str]) -> None:
        for args in (("create", ref, *manifests), ("push", "--purge", ref)):
            proc = self.run(*args)
            if proc.returncode != 0:
                raise BakeryError(
                    "docker manifest %s %s failed: %s" % (args[0], ref, (proc.stderr or proc.stdout).strip())
                )


def index_entries(found: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The images an index lists (digest, platform ``os/architecture[/variant]``), sorted by platform; none for
    anything else. The registry's order is that of the images' digests (the manifest tool's store is a directory
    of them), which changes with every build: the manifest and the summary list the platforms in one order."""
    if not found or found.get("mediaType") not in INDEX_MEDIA_TYPES:
        return []
    listed = []
    for item in found.get("manifests") or []:
        platform = item.get("platform") or {}
        words = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
        listed.append({"digest": item.get("digest"), "platform": "/".join(w for w in words if w)})
    return sorted(listed, key=lambda item: (item["platform"], str(item["digest"])))


def image_index(client: Any, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """One image index under each of the tags, listing the images *manifests* names (``<name>@sha256:...``, each
    already in the registry: the per-architecture images). A tag whose index lists exactly those images is left
    alone; the others get a new index (the same one for every tag)."""
    name, tags = params["name"], params["tags"]
    wanted = [str(ref) for ref in params.get("manifests") or []]
    if not wanted:
        raise BakeryError(
            "action=index needs manifests (the images the index lists, as %s@sha256:...)" % name
        )
    for ref in wanted:
        if not ref.startswith(name + "@sha256:"):
            raise BakeryError(
                "index %s: %s is not an image of %s by digest (%s@sha256:...)" % (name, ref, name, name)
            )
    auth = _auth(params)
    cli = _ManifestCli(name, auth)
    pushed, up_to_date = [], []
    try:
        # an image pulled through an index also has the index's digest among its repo digests: not an image to list
        images = []
        for ref in wanted:
            found = cli.inspect(ref)
            if found is None:
                raise BakeryError(
                    "index %s: the registry has no %s (push each image before its index)" % (name, ref)
                )
            if found.get("mediaType") not in INDEX_MEDIA_TYPES:
                images.append(ref)
        if not images:
            raise BakeryError("index %s: %s are indexes, not images" % (name, ", ".join(wanted)))
        wanted = images
        digests = sorted(ref.split("@", 1)[1] for ref in wanted)
        for tag in tags:
            ref = "%s:%s" % (name, tag)
            listed = index_entries(cli.inspect(ref))
            if sorted(item["digest"] for item in listed) == digests:
                up_to_date.append(ref)
                continue
            pushed.append(ref)
            if not check_mode:
                cli.create_and_push(ref, wanted)
        index: dict[str, Any] = {"name": name, "tags": ["%s:%s" % (name, tag) for tag in tags]}
        if not (check_mode and pushed):
            ref = "%s:%s" % (name, tags[0])
            index["manifests"] = index_entries(cli.inspect(ref))
            try:
                index["digest"] = (
                    client.api.inspect_distribution(ref, auth_config=auth).get("Descriptor") or {}
                ).get("digest")
            except APIError as exc:
                raise BakeryError("cannot read the digest of %s: %s" % (ref, exc.explanation)) from exc
    finally:
        cli.close()
    return dict(
        changed=bool(pushed),
        pushed=pushed,
        up_to_date=up_to_date,
        index=index,
        msg="%s the index of %s under %s"
        % ("would push" if check_mode else "pushed", ", ".join(wanted), ", ".join(pushed))
        if pushed
        else "the registry already has the index under %s" % ", ".join(up_to_date),
    )


ACTIONS = {
    "build": build,
    "index": image_index,
    "import": import_rootfs,
    "find": find,
    "start": start,
    "commit": commit,
    "remove": remove,
    "push": push,
    "publish": publish,
    "verifier": verifier,
    "step_commit": step_commit,
    "prune_steps": prune_steps,
}


def run_action(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Entry point of the docker_image_build module."""
    action = params["action"]
    tags = [str(tag) for tag in (params.get("tags") or ["latest"])]
    params = dict(params, tags=tags)
    if action not in ("remove", "step_commit", "prune_steps"):
        validate_name(params.get("name") or "", tags)
    if action == "build" and not params.get("context"):
        raise BakeryError("action=build needs context (the directory holding the Dockerfile)")
    if action == "import" and not params.get("rootfs"):
        raise BakeryError("action=import needs rootfs (a tarball made by bakery.images.rootfs)")
    changes = params.get("changes") or {}
    unknown = sorted(set(changes) - set(_CHANGE_KEYS))
    if unknown:
        raise BakeryError(
            "unknown key(s) in changes: %s (known: %s)" % (", ".join(unknown), ", ".join(_CHANGE_KEYS))
        )
    client = connect(params.get("docker_host"), params.get("timeout") or 600)
    try:
        result = ACTIONS[action](client, params, check_mode)
        if (
            params.get("push")
            and publishes(params)
            and action in ("build", "import", "commit")
            and result.get("image")
        ):
            pushed = push(client, params, check_mode)
            result["push"] = pushed
            result["changed"] = result["changed"] or pushed["changed"]
            result["image"] = image_summary(client, result["image"]["id"], params["name"], tags)
        return result
    finally:
        client.close()


def image_archives(
    client: Any, image: str, paths: Iterable[str], bake_id: str | None = None
) -> list[tuple[str, bytes]]:
    """Tar archives of *paths* in *image* (each with the directory it is relative to; a missing path has none),
    read from a container
    that is created from the image and never started (nothing runs, nothing is mounted on the host); the
    container is temporary (labelled with the bake id for the janitor) and always removed."""
    reader = reading_container(client, image, bake_id)
    archives = []
    with Steps() as steps:
        steps.add_undo("remove the reading container", lambda: _remove(client, reader), always=True)
        for path in paths:
            try:
                stream, _stat = client.api.get_archive(reader, path)
            except APIError as exc:
                # NotFound is an APIError: a path the image does not have gives no archive
                if isinstance(exc, NotFound):
                    continue
                raise BakeryError("cannot read %s of %s: %s" % (path, image, exc.explanation)) from exc
            archives.append((os.path.dirname(path.rstrip("/")) or "/", b"".join(stream)))
    return archives
