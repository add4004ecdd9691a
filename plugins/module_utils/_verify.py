# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a bake's artifacts against its manifest (``bake-manifest.json``): what is there is what the bake made.

For every artifact: each file output's sha256; each SBOM's and provenance statement's sha256, and that it parses
as what it says it is (an SBOM validated in full: a CycloneDX 1.6 document against the official JSON schema that
cyclonedx-python-lib ships, an SPDX 2.3 document by spdx-tools' parser and validator, each violation reported
on its own); that the statement's subjects are the artifact's digests; a statement's signature; a Docker
image's id in the engine and that its tags name it. Then ``SHA256SUMS`` beside the manifest: its lines are the
manifest's files and their sha256, and its signature. Only reads; every finding is a :class:`Mismatch`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils import _manifest, _provenance, _signature
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


@dataclass
class Mismatch:
    """One thing that is not as the manifest says: the target it belongs to (none for ``SHA256SUMS``), what
    kind of thing (``output``, ``sbom``, ``provenance``, ``signature``, ``image``, ``sha256sums``), its path or
    reference, and what is wrong."""

    target: str | None
    kind: str
    path: str
    msg: str


# what an engine says of an image reference: its id, or None when it has no such image
ImageLookup = Callable[[str], "str | None"]


def _sha256(path: str) -> str | None:
    try:
        return _signature.sha256_file(path)
    except OSError:
        return None


def _hex(value: Any) -> str:
    return str(value or "").split(":", 1)[-1]


def _local(path: str, directory: str) -> str:
    """A manifest path as a path on this host: relative ones are relative to the manifest's directory."""
    return path if os.path.isabs(path) else os.path.join(directory, path)


class Checker:
    def __init__(self, directory: str, gnupg_home: str | None, images: ImageLookup | None) -> None:
        self.directory = directory
        self.gnupg_home = gnupg_home
        self.images = images
        self.found: list[Mismatch] = []
        self.checked = 0
        self.keys: set[str] = set()

    def miss(self, target: str | None, kind: str, path: str, msg: str) -> None:
        self.found.append(Mismatch(target, kind, path, msg))

    def file(self, target: str | None, kind: str, recorded: Mapping[str, Any]) -> str | None:
        """Check a file against its recorded sha256; its text when it is as recorded and readable."""
        path = _local(str(recorded.get("path") or ""), self.directory)
        self.checked += 1
        if not recorded.get("path"):
            self.miss(target, kind, "", "the manifest names no path")
            return None
        actual = _sha256(path)
        if actual is None:
            self.miss(target, kind, path, "missing")
            return None
        if actual != _hex(recorded.get("sha256")):
            self.miss(
                target, kind, path, "sha256 is %s, the manifest says %s" % (actual, recorded.get("sha256"))
            )
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError):
            return ""

    def signature(self, target: str | None, path: str, recorded: Mapping[str, Any] | None) -> None:
        """Check the detached signature of *path* (``<path>.asc``, or what *recorded* names)."""
        sig = _local(str((recorded or {}).get("path") or path + _signature.ENDING), self.directory)
        self.checked += 1
        checked = _signature.verify(path, sig, self.gnupg_home)
        if not checked.good:
            self.miss(target, "signature", sig, "does not verify: %s" % checked.message)
            return
        key = (recorded or {}).get("key")
        if key and key not in checked.fingerprints:
            self.miss(
                target, "signature", sig, "made by %s, not by %s" % (", ".join(checked.fingerprints), key)
            )
        if key:
            self.keys.add(key)
        else:
            self.keys.update(checked.fingerprints)

    def artifact(self, entry: Mapping[str, Any]) -> None:
        target = str(entry.get("target") or "?")
        kind = str(entry.get("type") or "")
        files = [dict(out) for out in entry.get("outputs") or []]
        if kind == "vagrant" and entry.get("path"):
            files.append({"path": entry["path"], "sha256": entry.get("sha256")})
        for item in files:
            self.file(target, "output", item)
        for form, recorded in sorted((entry.get("sbom") or {}).items()):
            text = self.file(target, "sbom", recorded)
            if text is not None:
                for problem in sbom_problems(form, text):
                    self.miss(target, "sbom", str(recorded.get("path")), problem)
        if kind == "docker" and entry.get("id") and self.images is not None:
            self.image(target, entry)
        recorded = entry.get("provenance")
        if not isinstance(recorded, Mapping):
            return
        text = self.file(target, "provenance", recorded)
        path = _local(str(recorded.get("path") or ""), self.directory)
        if text is not None:
            self.statement(target, kind, entry, path, text)
        if recorded.get("signature"):
            self.signature(target, path, recorded["signature"])

    def statement(self, target: str, kind: str, entry: Mapping[str, Any], path: str, text: str) -> None:
        try:
            document = json.loads(text)
        except ValueError as exc:
            self.miss(target, "provenance", path, "not JSON: %s" % exc)
            return
        found = _provenance.problems(document)
        if found:
            self.miss(target, "provenance", path, "not a provenance statement: %s" % "; ".join(found))
            return
        try:
            expected = _provenance.subjects(kind, entry)
        except _provenance.ProvenanceError as exc:
            self.miss(target, "provenance", path, str(exc))
            return
        named = {(s.get("name"), _digests(s.get("digest"))) for s in document["subject"]}
        wanted = {(s["name"], _digests(s["digest"])) for s in expected}
        if named != wanted:
            self.miss(
                target,
                "provenance",
                path,
                "its subjects are not the artifact's digests: %s missing, %s not the artifact's"
                % (sorted(wanted - named) or "none", sorted(named - wanted) or "none"),
            )
        fingerprint = document["predicate"]["buildDefinition"].get("internalParameters") or {}
        if entry.get("fingerprint") and fingerprint.get("fingerprint") != entry["fingerprint"]:
            self.miss(target, "provenance", path, "made for fingerprint %s" % fingerprint.get("fingerprint"))

    def image(self, target: str, entry: Mapping[str, Any]) -> None:
        if self.images is None:
            return
        self.checked += 1
        wanted = _hex(entry["id"])
        if _hex(self.images(str(entry["id"]))) != wanted:
            self.miss(target, "image", str(entry["id"]), "the Docker engine has no image with this id")
            return
        for tag in entry.get("tags") or []:
            reference = "%s:%s" % (entry.get("name"), tag) if ":" not in str(tag) else str(tag)
            actual = self.images(reference)
            if _hex(actual) != wanted:
                self.miss(
                    target, "image", reference, "names %s, not the artifact's image" % (actual or "no image")
                )

    def sums(self, manifest: Mapping[str, Any]) -> None:
        path = os.path.join(self.directory, _manifest.SHA256SUMS)
        expected = _manifest.sha256sums(manifest, self.directory)
        self.checked += 1
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            if expected:
                self.miss(None, "sha256sums", path, "missing")
            return
        wanted = set(expected.splitlines())
        lines = set(text.splitlines())
        for line in sorted(lines - wanted):
            self.miss(None, "sha256sums", path, "line %r is not the manifest's" % line)
        for line in sorted(wanted - lines):
            self.miss(None, "sha256sums", path, "lacks the manifest's line %r" % line)
        for line in sorted(lines & wanted):
            digest, name = line.split("  ", 1)
            actual = _sha256(_local(name, self.directory))
            if actual != digest:
                self.miss(
                    None,
                    "sha256sums",
                    _local(name, self.directory),
                    "sha256 is %s, SHA256SUMS says %s" % (actual, digest),
                )
        signature = path + _signature.ENDING
        if os.path.exists(signature) or self.keys:
            # signed statements: SHA256SUMS is signed too, by one of their keys
            self.checked += 1
            checked = _signature.verify(path, signature, self.gnupg_home)
            if not checked.good:
                self.miss(None, "signature", signature, "does not verify: %s" % checked.message)
            elif self.keys and not self.keys & set(checked.fingerprints):
                self.miss(
                    None,
                    "signature",
                    signature,
                    "made by %s, not by the key of the statements (%s)"
                    % (", ".join(checked.fingerprints), ", ".join(sorted(self.keys))),
                )


def _digests(digest: Any) -> tuple[tuple[str, str], ...]:
    """A subject's digests (algorithm, value), sorted: what two subjects of the same artifact share."""
    if not isinstance(digest, Mapping):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in digest.items()))


# the most violations of one document reported (a broken writer can make thousands), and of one message's length
MAX_VIOLATIONS = 20
_MAX_MESSAGE = 240


def _short(message: str) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _capped(found: list[str]) -> list[str]:
    if len(found) <= MAX_VIOLATIONS:
        return found
    return found[:MAX_VIOLATIONS] + ["and %d more violations" % (len(found) - MAX_VIOLATIONS)]


def cyclonedx_violations(text: str) -> list[str]:
    """Every violation of the official CycloneDX 1.6 JSON schema (cyclonedx-python-lib's strict validator), each
    with where in the document it is."""
    try:
        from cyclonedx.exception import MissingOptionalDependencyException
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError as exc:
        raise BakeryError(
            "checking a CycloneDX SBOM needs cyclonedx-python-lib[json-validation] >= 8 (%s)" % exc
        ) from None
    try:
        errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    except MissingOptionalDependencyException as exc:
        raise BakeryError(
            "checking a CycloneDX SBOM needs cyclonedx-python-lib[json-validation] >= 8 (%s)" % exc
        ) from None
    found = []
    for error in errors or []:
        data = getattr(error, "data", None)
        where = getattr(data, "json_path", None) or "$"
        found.append(
            "violates the CycloneDX 1.6 JSON schema at %s: %s"
            % (where, _short(getattr(data, "message", error)))
        )
    return sorted(found)


def spdx_violations(document: Mapping[str, Any]) -> list[str]:
    """Every reason spdx-tools' parser or its SPDX 2.3 validator gives against *document* (SPDX 2.3 JSON),
    each with the element it is about."""
    try:
        from spdx_tools.spdx.parser.error import SPDXParsingError
        from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
        from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    except ImportError as exc:
        raise BakeryError("checking an SPDX SBOM needs spdx-tools >= 0.8 (%s)" % exc) from None
    try:
        parsed = JsonLikeDictParser().parse(dict(document))
    except SPDXParsingError as exc:
        return ["is no SPDX 2.3 document spdx-tools can parse: %s" % _short(m) for m in exc.get_messages()]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return ["is no SPDX 2.3 document spdx-tools can parse: %s" % _short(str(exc))]
    found = []
    for message in validate_full_spdx_document(parsed, "SPDX-2.3"):
        context = message.context
        where = getattr(context, "spdx_id", None) or getattr(
            getattr(context, "element_type", None), "name", "the document"
        )
        if getattr(context, "parent_id", None) and not getattr(context, "spdx_id", None):
            where = "%s of %s" % (where, context.parent_id)
        found.append("violates SPDX 2.3 in %s: %s" % (where, _short(message.validation_message)))
    return sorted(found)


def sbom_problems(form: str, text: str) -> list[str]:
    """Why *text* is no valid SBOM of its format (``spdx``: SPDX 2.3 JSON, ``cyclonedx``: CycloneDX 1.6 JSON):
    not JSON, another format or version (the header), then each violation of the format (at most
    MAX_VIOLATIONS, and how many more); none for a valid document."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        return ["not JSON: %s" % exc]
    if not isinstance(document, Mapping):
        return ["not a JSON object"]
    if form == "spdx":
        if document.get("spdxVersion") != "SPDX-2.3" or not isinstance(document.get("packages"), list):
            return ["not an SPDX 2.3 document (spdxVersion %r)" % document.get("spdxVersion")]
        return _capped(spdx_violations(document))
    if form == "cyclonedx":
        if document.get("bomFormat") != "CycloneDX" or document.get("specVersion") != "1.6":
            return [
                "not a CycloneDX 1.6 document (bomFormat %r, specVersion %r)"
                % (document.get("bomFormat"), document.get("specVersion"))
            ]
        return _capped(cyclonedx_violations(text))
    return []


def check(
    manifest_path: str, gnupg_home: str | None = None, images: ImageLookup | None = None
) -> dict[str, Any]:
    """Every mismatch between the manifest at *manifest_path* and what is there; *images* looks images up in the
    Docker engine (None: images are not checked)."""
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except OSError as exc:
        raise BakeryError("manifest %s cannot be read: %s" % (manifest_path, exc.strerror)) from None
    except ValueError as exc:
        raise BakeryError("manifest %s is not JSON: %s" % (manifest_path, exc)) from None
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("artifacts"), list):
        raise BakeryError("%s is not a bake manifest (no artifacts)" % manifest_path)
    checker = Checker(os.path.dirname(os.path.abspath(manifest_path)), gnupg_home, images)
    for entry in manifest["artifacts"]:
        if isinstance(entry, Mapping):
            checker.artifact(entry)
    checker.sums(manifest)
    return {
        "mismatches": [asdict(found) for found in checker.found],
        "checked": checker.checked,
        "artifacts": len(manifest["artifacts"]),
    }


def docker_lookup(docker_host: str | None) -> ImageLookup | None:
    """Image lookups in the Docker engine at *docker_host* (the local one by default); None without an engine
    or the docker SDK."""
    from ansible_collections.bakery.images.plugins.module_utils import _docker

    if not _docker.HAS_DOCKER:
        return None
    try:
        client = _docker.connect(docker_host, 60)
        client.ping()
    except Exception:  # noqa: BLE001 - no engine: images are not checked
        return None

    def lookup(reference: str) -> str | None:
        try:
            return client.images.get(reference).id
        except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound and API errors: no such image
            return None

    return lookup


def run(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``verify_artifacts`` module."""
    docker = params.get("docker") or "auto"
    images = None
    if docker != "never":
        images = docker_lookup(params.get("docker_host"))
        if images is None and docker == "always":
            raise BakeryError("no Docker engine answers (docker: always): the images cannot be checked")
    found = check(params["manifest"], params.get("gnupg_home"), images)
    found["images_checked"] = images is not None
    count = len(found["mismatches"])
    found["changed"] = False
    if count:
        found["failed"] = True
        found["msg"] = "%d mismatch%s: %s" % (
            count,
            "" if count == 1 else "es",
            "; ".join(
                "%s%s %s: %s" % (m["target"] + " " if m["target"] else "", m["kind"], m["path"], m["msg"])
                for m in found["mismatches"]
            ),
        )
    else:
        found["msg"] = "%d artifacts as the manifest says (%d checks)" % (
            found["artifacts"],
            found["checked"],
        )
    return found
