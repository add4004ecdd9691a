# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Provenance of an artifact: an in-toto Statement v1 with an SLSA Provenance v1 predicate.

The statement says what was made (``subject``: the artifact's digests - each file output's sha256, a Docker
image's id and the repository digests of its pushes), from what (``buildDefinition``: the target as the plan
shows it, secrets masked, the base root filesystem and every provisioning input with its digest) and by whom
(``runDetails``: bakery, ansible-core and the build host's versions, the bake id, when the bake started and the
artifact was finished).

It is deterministic but for ``finishedOn``: the start time is the time in the bake id of the bake that made the
artifact, every list is sorted. A statement already written for the same artifact (same subjects, same
fingerprint) is kept when the artifact was found unchanged: it describes the bake that made it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from collections.abc import Mapping
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._files import atomic_output, bake_started
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# what the build type and builder ids name: the collection (galaxy.yml's repository)
PROJECT = "https://github.com/bakery-images/bakery"
BUILD_TYPE = PROJECT + "/buildtypes/bake/v1"
BUILDER_ID = PROJECT
# the kinds of artifact that get a statement (those with SBOMs)
KINDS = ("docker", "qemu", "vagrant", "ami", "gce")
# the kinds whose artifact is a cloud image (subjects: its ids, with the digest of the disk it was made from)
CLOUD_KINDS = ("ami", "gce")
# the digest of an image made from an instance (no disk file to hash): bakery's fingerprint of its inputs
FINGERPRINT_DIGEST = "bakery.fingerprint"
# what the fields of a statement may be (more is no statement of ours)
_STATEMENT_KEYS = {"_type", "subject", "predicateType", "predicate"}
_PREDICATE_KEYS = {"buildDefinition", "runDetails"}
_DEFINITION_KEYS = {"buildType", "externalParameters", "internalParameters", "resolvedDependencies"}
_RUN_KEYS = {"builder", "metadata", "byproducts"}
_DESCRIPTOR_KEYS = {"name", "uri", "digest", "content", "downloadLocation", "mediaType", "annotations"}


class ProvenanceError(Exception):
    """An artifact without anything to name it by, or a document that is not a statement of ours."""


def _hex(value: Any) -> str:
    return str(value or "").split(":", 1)[-1]


def _sha256_hex(value: Any) -> str | None:
    text = _hex(value)
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def subjects(kind: str, artifact: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The artifact's digests as in-toto resource descriptors, sorted: a docker image's id (its config digest)
    and each repository digest of its pushes; each file output of a disk; a box file."""
    found: list[dict[str, Any]] = []
    if kind == "docker":
        image_id = _sha256_hex(artifact.get("id"))
        if image_id:
            found.append(
                {
                    "name": str(artifact.get("name") or ""),
                    "digest": {"sha256": image_id},
                    "annotations": {"bakery.digest": "image-id"},
                }
            )
        for reference in artifact.get("repo_digests") or []:
            repository, _sep, digest = str(reference).partition("@")
            if _sha256_hex(digest):
                found.append(
                    {
                        "name": repository,
                        "digest": {"sha256": _hex(digest)},
                        "annotations": {"bakery.digest": "repository-digest"},
                    }
                )
    elif kind in CLOUD_KINDS:
        found = cloud_subjects(kind, artifact)
    else:
        files = [dict(out) for out in artifact.get("outputs") or []]
        if kind == "vagrant" and artifact.get("path"):
            files.append({"path": artifact["path"], "sha256": artifact.get("sha256"), "format": "box"})
        for item in files:
            digest = _sha256_hex(item.get("sha256"))
            if item.get("path") and digest:
                descriptor: dict[str, Any] = {
                    "name": os.path.basename(str(item["path"])),
                    "digest": {"sha256": digest},
                }
                if item.get("format"):
                    descriptor["annotations"] = {"bakery.format": str(item["format"])}
                found.append(descriptor)
    if not found:
        raise ProvenanceError(
            "the %s artifact has no digest to name it by (no image id, no file output)" % kind
        )
    return sorted(found, key=lambda d: (d["name"], sorted(d["digest"].items())))


def cloud_subjects(kind: str, artifact: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The subjects of a cloud image (its manifest entry): one per image id (an AMI per region, a GCE image),
    each with the digest of what the image holds: the sha256 of the raw disk it was uploaded from
    (``disk_sha256``), else, for an image made from an instance (no disk file exists to hash), bakery's
    fingerprint of its inputs (``bakery.fingerprint``). None without an image id or a digest."""
    disk = _sha256_hex(artifact.get("disk_sha256"))
    fingerprint = str(artifact.get("fingerprint") or "")
    if disk:
        digest = {"sha256": disk}
    elif fingerprint:
        digest = {FINGERPRINT_DIGEST: fingerprint}
    else:
        return []
    found: list[dict[str, Any]] = []
    if kind == "ami":
        images = dict(artifact.get("images") or {})
        if not images and artifact.get("id") and artifact.get("region"):
            images = {str(artifact["region"]): artifact["id"]}
        for region, image_id in sorted(images.items()):
            if image_id:
                found.append(
                    {
                        "name": "%s/%s" % (region, image_id),
                        "digest": dict(digest),
                        "annotations": {"bakery.image-id": str(image_id), "bakery.region": str(region)},
                    }
                )
    elif artifact.get("name") and artifact.get("project"):
        annotations = {"bakery.image-name": str(artifact["name"]), "bakery.project": str(artifact["project"])}
        if artifact.get("id"):
            annotations["bakery.image-id"] = str(artifact["id"])
        found.append(
            {
                "name": "projects/%s/global/images/%s" % (artifact["project"], artifact["name"]),
                "digest": dict(digest),
                "annotations": annotations,
            }
        )
    return found


def dependencies(target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the artifact was made from: the base root filesystem (its fingerprint, mirror and suite) and every
    provisioning input of the target's fingerprint with its digest, sorted by name."""
    found: list[dict[str, Any]] = []
    rootfs = target.get("rootfs") or None
    inputs = {str(k): str(v) for k, v in (target.get("inputs") or {}).items()}
    if isinstance(rootfs, Mapping) and rootfs.get("identity"):
        # the suite, mirror and architecture it is made from (defaults resolved), then the bake's other options
        annotations = {
            key: value
            for key, value in sorted(dict(rootfs.get("options") or {}).items())
            if isinstance(value, (str, int, bool, list))
        }
        annotations.update({k: v for k, v in sorted(dict(rootfs.get("source") or {}).items()) if v})
        descriptor: dict[str, Any] = {
            "name": "rootfs",
            "digest": {"sha256": _hex(rootfs["identity"])},
            "annotations": annotations,
        }
        if annotations.get("mirror"):
            descriptor["uri"] = str(annotations["mirror"])
        found.append(descriptor)
        if inputs.get("source") == rootfs["identity"]:
            inputs.pop("source")
    for name in sorted(inputs):
        digest = _sha256_hex(inputs[name])
        found.append({"name": name, "digest": {"sha256": digest} if digest else {"bakery": inputs[name]}})
    return found


def external_parameters(target: Mapping[str, Any]) -> dict[str, Any]:
    """The bake definition of the target as the plan holds it: secret options and provisioner secrets are masked
    there, never their values."""
    rootfs = target.get("rootfs") or {}
    return _plain(
        {
            "bake": target.get("bake_name"),
            "target": {
                "name": target.get("name"),
                "type": target.get("type"),
                "options": target.get("options") or {},
                "provisioners": target.get("provisioners") or [],
                "verify": target.get("verify") or [],
                "source": target.get("source"),
            },
            "base": (rootfs.get("options") if isinstance(rootfs, Mapping) else None) or None,
        }
    )


def _plain(value: Any) -> Any:
    """*value* as JSON has it (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def collection_version(root: str) -> str:
    """The version of the collection at *root*: its ``MANIFEST.json`` (an installed collection) or its
    ``galaxy.yml`` (a checkout); ``unknown`` without either."""
    try:
        with open(os.path.join(root, "MANIFEST.json"), encoding="utf-8") as handle:
            return str(json.load(handle)["collection_info"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(os.path.join(root, "galaxy.yml"), encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("version:"):
                    return line.split(":", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


def host_versions() -> dict[str, str]:
    """The build host's versions: its operating system (os-release), kernel, machine and Python."""
    pretty = ""
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    pretty = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "host.os": pretty or platform.system(),
        "host.kernel": platform.release(),
        "host.machine": platform.machine(),
        "python": platform.python_version(),
    }


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    when = datetime.datetime.fromtimestamp(int(seconds), tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def statement(
    target: Mapping[str, Any],
    artifact: Mapping[str, Any],
    versions: Mapping[str, str],
    finished: float | None = None,
) -> dict[str, Any]:
    """The statement of *artifact* (its manifest entry, as the target's role records it) made for *target* (its
    plan entry); *versions* are the builder's (``bakery``, ``ansible-core``, the host's), *finished* when the
    artifact was finished (none: not said)."""
    kind = str(target.get("type") or artifact.get("type"))
    bake_id = artifact.get("bake_id") or target.get("bake_id")
    metadata: dict[str, Any] = {"invocationId": str(bake_id or "")}
    started = timestamp(bake_started(bake_id))
    if started:
        metadata["startedOn"] = started
    if finished is not None:
        metadata["finishedOn"] = timestamp(finished)
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects(kind, artifact),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external_parameters(target),
                "internalParameters": {"fingerprint": str(artifact.get("fingerprint") or "")},
                "resolvedDependencies": dependencies(target),
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {str(k): str(v) for k, v in sorted(versions.items()) if v},
                },
                "metadata": metadata,
            },
        },
    }


def dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def problems(document: Any) -> list[str]:
    """What makes *document* no in-toto Statement v1 with an SLSA Provenance v1 predicate of the shape bakery
    writes (empty: none)."""
    found: list[str] = []
    if not isinstance(document, Mapping):
        return ["not a JSON object"]
    if document.get("_type") != STATEMENT_TYPE:
        found.append("_type is %r, not %s" % (document.get("_type"), STATEMENT_TYPE))
    if document.get("predicateType") != PREDICATE_TYPE:
        found.append("predicateType is %r, not %s" % (document.get("predicateType"), PREDICATE_TYPE))
    found += ["unknown field %s" % key for key in sorted(set(document) - _STATEMENT_KEYS)]
    subject = document.get("subject")
    if not isinstance(subject, list) or not subject:
        found.append("no subject")
    else:
        for index, item in enumerate(subject):
            found += _descriptor_problems(item, "subject[%d]" % index, needs_digest=True)
    predicate = document.get("predicate")
    if not isinstance(predicate, Mapping):
        return found + ["no predicate"]
    found += ["unknown field predicate.%s" % key for key in sorted(set(predicate) - _PREDICATE_KEYS)]
    definition = predicate.get("buildDefinition")
    if not isinstance(definition, Mapping):
        found.append("no predicate.buildDefinition")
    else:
        found += [
            "unknown field buildDefinition.%s" % key for key in sorted(set(definition) - _DEFINITION_KEYS)
        ]
        if not definition.get("buildType"):
            found.append("no buildDefinition.buildType")
        if not isinstance(definition.get("externalParameters"), Mapping):
            found.append("buildDefinition.externalParameters is not an object")
        for index, item in enumerate(definition.get("resolvedDependencies") or []):
            found += _descriptor_problems(item, "resolvedDependencies[%d]" % index, needs_digest=False)
    run = predicate.get("runDetails")
    if not isinstance(run, Mapping):
        found.append("no predicate.runDetails")
    else:
        found += ["unknown field runDetails.%s" % key for key in sorted(set(run) - _RUN_KEYS)]
        builder = run.get("builder")
        if not isinstance(builder, Mapping) or not builder.get("id"):
            found.append("no runDetails.builder.id")
    return found


def _descriptor_problems(item: Any, where: str, needs_digest: bool) -> list[str]:
    if not isinstance(item, Mapping):
        return ["%s is not an object" % where]
    found = ["unknown field %s.%s" % (where, key) for key in sorted(set(item) - _DESCRIPTOR_KEYS)]
    digest = item.get("digest")
    if digest is not None and (
        not isinstance(digest, Mapping) or not all(isinstance(v, str) for v in digest.values())
    ):
        found.append("%s.digest is not a map of strings" % where)
    if needs_digest and not digest:
        found.append("%s has no digest" % where)
    if not (item.get("name") or item.get("uri") or digest):
        found.append("%s has neither name, uri nor digest" % where)
    return found


def _read(path: str) -> tuple[str | None, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None, None
    try:
        return text, json.loads(text)
    except ValueError:
        return text, None


def _kept(old: Any, new: Mapping[str, Any], built_now: bool) -> bool:
    """Whether the statement *old* (already written) stands for the artifact of *new*: the same subjects and
    fingerprint, and, for an artifact built by this bake, the same bake."""
    if not isinstance(old, Mapping) or problems(old):
        return False
    if old.get("subject") != new["subject"]:
        return False
    old_definition = old["predicate"]["buildDefinition"]
    new_definition = new["predicate"]["buildDefinition"]
    if old_definition.get("internalParameters") != new_definition["internalParameters"]:
        return False
    if built_now:
        old_run = old["predicate"]["runDetails"].get("metadata") or {}
        return old_run.get("invocationId") == new["predicate"]["runDetails"]["metadata"]["invocationId"]
    return True


def run(params: Mapping[str, Any], check_mode: bool, now: float) -> dict[str, Any]:
    """The ``provenance`` module: write the artifact's statement unless one for it is there."""
    path = params["path"]
    target, artifact = params["target"], params["artifact"]
    versions = dict(host_versions())
    versions.update({str(k): str(v) for k, v in (params.get("versions") or {}).items()})
    built_now = artifact.get("status") == "built"
    _text, old = _read(path)
    finished: float | None = now if built_now else None
    if not built_now and isinstance(old, Mapping) and not problems(old):
        # an artifact found unchanged keeps when its bake finished, if the statement there says it
        old_meta = old["predicate"]["runDetails"].get("metadata") or {}
        if old_meta.get("finishedOn") and old.get("predicate", {}).get("buildDefinition", {}).get(
            "internalParameters"
        ) == {"fingerprint": str(artifact.get("fingerprint") or "")}:
            parsed = datetime.datetime.strptime(old_meta["finishedOn"], "%Y-%m-%dT%H:%M:%SZ")
            finished = parsed.replace(tzinfo=datetime.timezone.utc).timestamp()
    try:
        made = statement(target, artifact, versions, finished)
    except ProvenanceError as exc:
        raise BakeryError(str(exc)) from None
    if _kept(old, made, built_now):
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        return dict(
            changed=False,
            statement={"path": path, "sha256": digest},
            subjects=len(old["subject"]),
            msg="provenance of %s unchanged" % target.get("name"),
        )
    text = dumps(made)
    if not check_mode:
        with atomic_output(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
    return dict(
        changed=True,
        statement={"path": path, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()},
        subjects=len(made["subject"]),
        msg="wrote the provenance of %s" % target.get("name"),
    )
