# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Software bills of materials of an artifact: SPDX 2.3 JSON and CycloneDX 1.6 JSON.

What an artifact holds is read from its own package database after provisioning: dpkg's status file (every
installed package: name, version, architecture, source package, maintainer), the machine-readable
copyright file of each package (its licenses) and dpkg's md5sums list of each package (a digest of it). The
provisioning inputs (roles, scripts, files, variables, the source) are listed with their digests.

The documents are deterministic: their serial number and namespace derive from the artifact's fingerprint,
their creation time from the bake that made the artifact (the time in its bake id), and every list is
sorted; the same inputs give byte-identical documents, so a bake that changes nothing rewrites none.

The package database is read by :mod:`_dpkg_db` (a directory tree, tar archives of an image's files, a disk's
file system read with debugfs), or taken as the records a module read before (``installed``).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils import _sbom_record
from ansible_collections.bakery.images.plugins.module_utils._disk_files import DiskError, DiskFiles
from ansible_collections.bakery.images.plugins.module_utils._dpkg_db import (
    DATABASE_PATHS,
    DebPackage,
    DiskReader,
    NoDatabase,
    SbomError,
    TarReader,
    TreeReader,
    package_from_record,
    package_record,
    read_packages,
    wanted_member,
)
from ansible_collections.bakery.images.plugins.module_utils._files import atomic_output
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

try:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.model.license import LicenseExpression
    from cyclonedx.output.json import JsonV1Dot6
    from license_expression import get_spdx_licensing
    from packageurl import PackageURL
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        ExtractedLicensingInfo,
        Package,
        PackagePurpose,
        Relationship,
        RelationshipType,
        SpdxNoAssertion,
    )
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    HAS_SBOM_LIBS = True
    SBOM_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - reported by the module
    HAS_SBOM_LIBS = False
    SBOM_IMPORT_ERROR = str(_exc)

# the namespace of the UUIDs (serial numbers, document namespaces) derived from fingerprints
_NAMESPACE = uuid.UUID("5d1f6a1e-3b7c-4f59-9a1e-6b616b657279")
_LICENSE_REF = re.compile(r"[^A-Za-z0-9.-]+")
_SPDX_ID = re.compile(r"[^A-Za-z0-9.-]+")
# Debian's short license names (copyright-format 1.0) that are not SPDX identifiers as they are
_DEBIAN_LICENSES = {
    "expat": "MIT",
    "artistic": "Artistic-1.0",
    "psf-2": "PSF-2.0",
    "zope": "ZPL-2.1",
}


_LICENSING: list[Any] = []


def licensing() -> Any:
    """The SPDX license symbols and parser of ``license_expression``, made once (making them takes seconds)."""
    if not _LICENSING:
        made = get_spdx_licensing()
        _LICENSING.append((made, {key.lower(): key for key in made.known_symbols}))
    return _LICENSING[0]


# ---------------------------------------------------------------- licenses


def license_ref(name: str) -> str:
    """The SPDX ``LicenseRef-`` identifier of a license name that is not an SPDX identifier."""
    return "LicenseRef-" + (_LICENSE_REF.sub("-", name).strip("-") or "unknown")


def spdx_license(names: list[str]) -> tuple[str | None, dict[str, str]]:
    """An SPDX license expression for the license names of a copyright file (all of them apply: AND), and the
    ``LicenseRef-`` identifiers it uses, each with the Debian name it stands for. A name made of SPDX
    identifiers (Debian's ``GPL-2+`` is ``GPL-2.0-or-later``) joined by ``or``/``and`` becomes that expression;
    any other name (an exception, a name of its own) becomes one ``LicenseRef-``."""
    if not names:
        return None, {}
    known = licensing()[1]
    refs: dict[str, str] = {}
    parts = []
    for name in names:
        words = re.split(r"\s+(or|and)\s+", name.strip(), flags=re.IGNORECASE)
        ids = []
        for position, word in enumerate(words):
            if position % 2:
                ids.append(word.upper())
                continue
            ident = _spdx_id(word, known)
            if ident is None:
                ids = []
                break
            ids.append(ident)
        if ids:
            parts.append("(%s)" % " ".join(ids) if len(ids) > 1 else ids[0])
        else:
            ref = license_ref(name)
            refs[ref] = name
            parts.append(ref)
    unique = list(dict.fromkeys(parts))
    return " AND ".join(unique), refs


def _spdx_id(word: str, known: Mapping[str, str]) -> str | None:
    word = word.strip().strip(",")
    lower = word.lower()
    if lower in _DEBIAN_LICENSES:
        return _DEBIAN_LICENSES[lower]
    plus = lower.endswith("+")
    base = lower.rstrip("+")
    match = re.match(r"^(a?gpl|lgpl|gfdl)-(\d)(?:\.(\d))?$", base)
    if match:
        family, major, minor = match.group(1).upper(), match.group(2), match.group(3) or "0"
        if family == "LGPL" and major == "2" and minor == "0":
            family_version = "LGPL-2.0"
        else:
            family_version = "%s-%s.%s" % (family, major, minor)
        suffix = "-or-later" if plus else "-only"
        if family == "GFDL":
            # GFDL identifiers need the invariants part, which a short name does not say
            return None
        candidate = family_version + suffix
        return known.get(candidate.lower())
    if plus:
        return None
    return known.get(lower)


# ---------------------------------------------------------------- documents


@dataclass
class Subject:
    """The artifact a document describes."""

    name: str
    kind: str
    fingerprint: str
    bake_id: str | None = None
    digest: str | None = None
    namespace: str = "debian"
    # the bake's SOURCE_DATE_EPOCH: the documents' creation time
    source_date_epoch: int | None = None
    # the Debian architecture the artifact runs on (amd64, arm64), where it is known
    architecture: str | None = None
    # what the documents record of the artifact (_sbom_record.subject_key; None: no digest)
    key: str | None = None


def created(subject: Subject) -> datetime.datetime:
    """When the documents say they were made (:func:`_sbom_record.created`): the bake's epoch, else the start of the
    bake that made the artifact; never the wall clock, so that the same artifact gives the same documents."""
    when = _sbom_record.created(subject.source_date_epoch, subject.bake_id)
    return datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)


def purl(package: DebPackage, namespace: str) -> str:
    return PackageURL(
        type="deb",
        namespace=namespace,
        name=package.name,
        version=package.version,
        qualifiers={"arch": package.architecture} if package.architecture else None,
    ).to_string()


def _spdx_ref(prefix: str, *names: str) -> str:
    text = ":".join(names)
    readable = _SPDX_ID.sub("-", text).strip("-")[:60]
    return "SPDXRef-%s-%s-%s" % (prefix, readable, hashlib.sha256(text.encode()).hexdigest()[:8])


def _actor(maintainer: str) -> Any:
    name = re.sub(r"\s*<[^>]*>\s*$", "", maintainer).strip()
    email = re.search(r"<([^>]+)>", maintainer)
    if not name:
        return SpdxNoAssertion()
    return Actor(ActorType.ORGANIZATION, name, email.group(1) if email else None)


def spdx_document(subject: Subject, packages: list[DebPackage], inputs: Mapping[str, str]) -> str:
    """The SPDX 2.3 JSON document of the artifact: its packages and its provisioning inputs."""
    root_id = _spdx_ref("artifact", subject.kind, subject.name)
    when = created(subject)
    namespace = "https://spdx.org/spdxdocs/bakery-%s-%s" % (
        _SPDX_ID.sub("-", subject.name),
        uuid.uuid5(_NAMESPACE, "spdx:" + subject.fingerprint),
    )
    root = Package(
        spdx_id=root_id,
        name=subject.name,
        download_location=SpdxNoAssertion(),
        files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, _hex(subject.digest))] if subject.digest else [],
        primary_package_purpose=PackagePurpose.CONTAINER if subject.kind == "docker" else PackagePurpose.FILE,
        comment="%s artifact baked by bakery, fingerprint %s%s%s"
        % (
            subject.kind,
            subject.fingerprint,
            "; architecture %s" % subject.architecture if subject.architecture else "",
            "; " + _sbom_record.SPDX_WORDS + subject.key if subject.key else "",
        ),
    )
    spdx_packages = [root]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, root_id)]
    extracted: dict[str, str] = {}
    for package in packages:
        ident = _spdx_ref("deb", package.name, package.architecture)
        expression, refs = spdx_license(package.licenses)
        extracted.update(refs)
        spdx_packages.append(
            Package(
                spdx_id=ident,
                name=package.name,
                version=package.version,
                download_location=SpdxNoAssertion(),
                files_analyzed=False,
                supplier=_actor(package.maintainer),
                source_info="built package from: %s %s" % (package.source, package.source_version),
                license_declared=licensing()[0].parse(expression) if expression else SpdxNoAssertion(),
                license_concluded=SpdxNoAssertion(),
                copyright_text=SpdxNoAssertion(),
                external_references=[
                    ExternalPackageRef(
                        ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl(package, subject.namespace)
                    )
                ],
                comment="architecture %s%s"
                % (
                    package.architecture,
                    "; sha256 of dpkg's md5sums list: %s" % package.md5sums_sha256
                    if package.md5sums_sha256
                    else "",
                ),
                primary_package_purpose=PackagePurpose.LIBRARY,
            )
        )
        relationships.append(Relationship(root_id, RelationshipType.CONTAINS, ident))
    for name, digest in sorted(inputs.items()):
        ident = _spdx_ref("input", name)
        spdx_packages.append(
            Package(
                spdx_id=ident,
                name=name,
                download_location=SpdxNoAssertion(),
                files_analyzed=False,
                checksums=[Checksum(ChecksumAlgorithm.SHA256, _hex(digest))],
                primary_package_purpose=PackagePurpose.SOURCE,
                comment="provisioning input of the artifact (bakery fingerprint input)",
            )
        )
        relationships.append(Relationship(root_id, RelationshipType.GENERATED_FROM, ident))
    document = Document(
        creation_info=CreationInfo(
            spdx_version="SPDX-2.3",
            spdx_id="SPDXRef-DOCUMENT",
            name="%s %s" % (subject.kind, subject.name),
            document_namespace=namespace,
            creators=[Actor(ActorType.TOOL, "bakery")],
            created=when,
            data_license="CC0-1.0",
        ),
        packages=spdx_packages,
        relationships=relationships,
        extracted_licensing_info=[
            ExtractedLicensingInfo(
                license_id=ref,
                extracted_text="License: %s (as a Debian copyright file names it)" % name,
                license_name=name,
            )
            for ref, name in sorted(extracted.items())
        ],
    )
    stream = io.StringIO()
    write_document_to_stream(document, stream, validate=True)
    return _canonical(stream.getvalue())


def cyclonedx_document(subject: Subject, packages: list[DebPackage], inputs: Mapping[str, str]) -> str:
    """The CycloneDX 1.6 JSON document of the artifact: its packages and its provisioning inputs."""
    root = Component(
        name=subject.name,
        type=ComponentType.CONTAINER if subject.kind == "docker" else ComponentType.FILE,
        bom_ref="artifact",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=_hex(subject.digest))]
        if subject.digest
        else None,
        properties=[
            Property(name="bakery:type", value=subject.kind),
            Property(name="bakery:fingerprint", value=subject.fingerprint),
        ]
        + ([Property(name="bakery:architecture", value=subject.architecture)] if subject.architecture else [])
        + ([Property(name=_sbom_record.CYCLONEDX_PROPERTY, value=subject.key)] if subject.key else []),
    )
    components = []
    for package in packages:
        expression, _refs = spdx_license(package.licenses)
        properties = [
            Property(name="bakery:dpkg:architecture", value=package.architecture),
            Property(name="bakery:dpkg:source", value=package.source),
            Property(name="bakery:dpkg:source-version", value=package.source_version),
            Property(name="bakery:dpkg:maintainer", value=package.maintainer),
        ]
        if package.md5sums_sha256:
            properties.append(Property(name="bakery:dpkg:md5sums-sha256", value=package.md5sums_sha256))
        for name in package.licenses:
            properties.append(Property(name="bakery:dpkg:license", value=name))
        maintainer = re.sub(r"\s*<[^>]*>\s*$", "", package.maintainer).strip()
        components.append(
            Component(
                name=package.name,
                version=package.version,
                type=ComponentType.LIBRARY,
                bom_ref="deb:%s:%s" % (package.name, package.architecture),
                purl=PackageURL.from_string(purl(package, subject.namespace)),
                supplier=OrganizationalEntity(name=maintainer) if maintainer else None,
                licenses=[LicenseExpression(expression)] if expression else None,
                properties=properties,
            )
        )
    for name, digest in sorted(inputs.items()):
        components.append(
            Component(
                name=name,
                type=ComponentType.DATA if name in ("vars", "options") else ComponentType.FILE,
                bom_ref="input:%s" % name,
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=_hex(digest))],
                properties=[Property(name="bakery:input", value=name)],
            )
        )
    bom = Bom(
        serial_number=uuid.uuid5(_NAMESPACE, "cyclonedx:" + subject.fingerprint),
        metadata=BomMetaData(component=root, timestamp=created(subject)),
        components=components,
    )
    bom.register_dependency(root, components)
    return _canonical(JsonV1Dot6(bom).output_as_string())


def _hex(digest: str | None) -> str:
    return str(digest or "").split(":", 1)[-1]


def _canonical(text: str) -> str:
    """The document as indented JSON with sorted keys (the libraries' key order may vary between versions)."""
    return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def documents(subject: Subject, packages: list[DebPackage], inputs: Mapping[str, str]) -> dict[str, str]:
    """Both documents of the artifact, by format (``spdx``, ``cyclonedx``).

    The CycloneDX document is made in a child process beside the SPDX one (:func:`_beside`): each takes 0.2-0.3 s
    of one core for the default bake's 130-180 packages, all of it in the libraries (their models, the SPDX
    validation), so on two cores the documents take the longer one's time rather than their sum. Both are functions
    of their arguments only: the child's document is the one this process would have made; where the child cannot
    make it, it is made here."""
    cyclonedx = _beside(lambda: cyclonedx_document(subject, packages, inputs))
    try:
        spdx = spdx_document(subject, packages, inputs)
    finally:
        made = cyclonedx()
    return {
        "spdx": spdx,
        "cyclonedx": made if made is not None else cyclonedx_document(subject, packages, inputs),
    }


def _beside(make: Callable[[], str]) -> Callable[[], str | None]:
    """Start *make* in a forked child; returns the call that waits for the child and gives its text, or None
    when the child failed (or no child could be started: then *make* never ran).

    Only a process with one thread forks: a fork copies no other thread, and a lock another thread held stays
    held in the child (an Ansible worker, where in-process modules run, has one). The child leaves with
    ``os._exit``: no exit handler of this process (Ansible's, the module's) runs in it, nor is a buffer of it
    flushed twice."""
    if threading.active_count() != 1 or not hasattr(os, "fork"):
        return lambda: None
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return lambda: None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return lambda: None
    if pid == 0:  # pragma: no cover - the child's side, reported through its exit status and its text
        status = 1
        try:
            os.close(read_end)
            data = make().encode("utf-8")
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)

    def result() -> str | None:
        # the pipe is read to its end before the wait: a child writing more than the pipe holds waits for this
        with os.fdopen(read_end, "rb") as handle:
            data = handle.read()
        _pid, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    return result


# ---------------------------------------------------------------- reading a document back


def from_cyclonedx(text: str) -> tuple[list[DebPackage], dict[str, str]]:
    """The packages and provisioning inputs of a CycloneDX document bakery wrote (a source artifact's, for
    the artifacts made from it, such as the Vagrant box of a disk)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SbomError("not a JSON document: %s" % exc) from None
    packages, inputs = [], {}
    for component in data.get("components") or []:
        props: dict[str, list[str]] = {}
        for prop in component.get("properties") or []:
            props.setdefault(prop.get("name"), []).append(prop.get("value"))
        if "bakery:input" in props:
            sha = [h["content"] for h in component.get("hashes") or [] if h.get("alg") == "SHA-256"]
            inputs[props["bakery:input"][0]] = sha[0] if sha else ""
        elif str(component.get("purl", "")).startswith("pkg:deb/"):
            packages.append(
                DebPackage(
                    name=component["name"],
                    version=component.get("version", ""),
                    architecture=(props.get("bakery:dpkg:architecture") or [""])[0],
                    source=(props.get("bakery:dpkg:source") or [component["name"]])[0],
                    source_version=(props.get("bakery:dpkg:source-version") or [""])[0],
                    maintainer=(props.get("bakery:dpkg:maintainer") or [""])[0],
                    licenses=sorted(props.get("bakery:dpkg:license") or []),
                    md5sums_sha256=(props.get("bakery:dpkg:md5sums-sha256") or [None])[0],
                )
            )
    if not packages and not inputs:
        raise SbomError("no packages or inputs in the document: not a bakery CycloneDX document")
    return sorted(packages, key=DebPackage.key), inputs


# ---------------------------------------------------------------- writing


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _current(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def write(paths: Mapping[str, str], made: Mapping[str, str], check_mode: bool) -> tuple[bool, dict[str, Any]]:
    """Write each document of *made* to its path of *paths* (by format), atomically, unless the file holds it
    already; whether one was (or, in check mode, would be) written, and each document's path and sha256."""
    changed = False
    found: dict[str, Any] = {}
    for kind in sorted(made):
        path, text = paths[kind], made[kind]
        if _current(path) != text:
            changed = True
            if not check_mode:
                with atomic_output(path) as tmp:
                    with open(tmp, "w", encoding="utf-8") as handle:
                        handle.write(text)
        found[kind] = {"path": path, "sha256": _sha256(text)}
    return changed, found


def existing(paths: Mapping[str, str]) -> dict[str, Any]:
    """The documents already at *paths* (by format), each with its sha256; those missing left out."""
    found = {}
    for kind, path in sorted(paths.items()):
        text = _current(path)
        if text is not None:
            found[kind] = {"path": path, "sha256": _sha256(text)}
    return found


def read_image(image: str, docker_host: str | None, bake_id: str | None) -> TarReader:
    """The package database of a Docker image, from the engine's archives of its paths."""
    from ansible_collections.bakery.images.plugins.module_utils import _docker

    if not _docker.HAS_DOCKER:
        raise BakeryError(
            "the docker Python SDK is needed to read an image: %s" % _docker.DOCKER_IMPORT_ERROR
        )
    client = _docker.connect(docker_host, 120)
    reader = TarReader()
    for parent, archive in _docker.image_archives(client, image, DATABASE_PATHS, bake_id):
        reader.add(parent, archive, wanted_member)
    return reader


def run(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """The ``sbom`` module: read the artifact's packages, write both documents where they differ."""
    if params.get("collect"):
        return collect(params.get("root") or "/")
    paths = {"spdx": params["spdx_path"], "cyclonedx": params["cyclonedx_path"]}
    inputs = {str(k): str(v) for k, v in (params.get("inputs") or {}).items()}
    warnings: list[str] = []
    key = _sbom_record.subject_key(params)
    reads = any(
        params.get(name) is not None for name in ("root", "image", "disk", "source_document", "installed")
    )
    if reads:
        # documents written for this very artifact (its digest, inputs, ...) are kept without reading it again
        found = _sbom_record.recorded(paths, key)
        if found is not None:
            return _sbom_record.unchanged_result(found)
    try:
        if params.get("installed") is not None:
            packages = sorted(
                (package_from_record(record) for record in params["installed"]), key=DebPackage.key
            )
        elif params.get("disk"):
            try:
                packages = read_disk(params["disk"])
            except (DiskError, NoDatabase) as exc:
                message = "the packages of disk %s cannot be read: %s" % (params["disk"], exc)
                if params.get("when_unreadable") != "skip":
                    raise BakeryError(
                        "%s (to bake a disk bakery cannot read without its SBOMs, set the qemu target's "
                        "sbom_unreadable: skip)" % message
                    ) from None
                return without_documents(paths, message, check_mode)
        elif params.get("root") or params.get("image"):
            if params.get("root") and not os.path.isdir(params["root"]):
                raise BakeryError("root %s is not a directory" % params["root"])
            reader = (
                TreeReader(params["root"])
                if params.get("root")
                else read_image(params["image"], params.get("docker_host"), params.get("bake_id"))
            )
            try:
                packages = read_packages(reader)
            except NoDatabase as exc:
                # the documents still list the inputs; no package is claimed
                warnings.append("%s: its SBOMs list no package" % exc)
                packages = []
        elif params.get("source_document"):
            text = _current(params["source_document"])
            if text is None:
                raise BakeryError("source document %s cannot be read" % params["source_document"])
            packages, source_inputs = from_cyclonedx(text)
            inputs = dict(source_inputs, **inputs)
        else:
            found = existing(paths)
            return dict(
                changed=False, documents=found, packages=0, msg="%d SBOM documents found" % len(found)
            )
    except SbomError as exc:
        raise BakeryError(str(exc)) from None
    subject = Subject(
        name=params["name"],
        kind=params["type"],
        fingerprint=params["fingerprint"],
        bake_id=params.get("bake_id"),
        digest=params.get("digest"),
        namespace=params.get("namespace") or "debian",
        source_date_epoch=None
        if params.get("source_date_epoch") in (None, "")
        else int(params["source_date_epoch"]),
        architecture=params.get("architecture") or None,
        key=key,
    )
    changed, found = write(paths, documents(subject, packages, inputs), check_mode)
    result = dict(
        changed=changed,
        documents=found,
        packages=len(packages),
        msg="%s SBOMs of %d packages" % ("wrote" if changed else "unchanged", len(packages)),
    )
    if warnings:
        result["warnings"] = warnings
    return result


def read_disk(disk: str) -> list[DebPackage]:
    """Every installed package of the dpkg database in the root file system of the disk image *disk* (any format
    qemu-img reads), read without a mount; DiskError if no root file system can be read, NoDatabase if it has no
    dpkg database."""
    with DiskFiles(disk) as files:
        return read_packages(DiskReader(files))


def without_documents(paths: Mapping[str, str], message: str, check_mode: bool) -> dict[str, Any]:
    """The result of a disk whose packages cannot be read, as the user asked (``when_unreadable: skip``): no
    documents, and none left at *paths* from an earlier artifact (they would describe another disk)."""
    stale = [path for _kind, path in sorted(paths.items()) if os.path.lexists(path)]
    if not check_mode:
        for path in stale:
            os.unlink(path)
    return dict(
        changed=bool(stale),
        documents={},
        packages=0,
        msg="no SBOMs: %s" % message,
        warnings=["no SBOMs are written (when_unreadable: skip): %s" % message],
    )


def collect(root: str) -> dict[str, Any]:
    """The ``collect`` run of the ``sbom`` module (on an instance): every installed package of the dpkg database
    under *root*, as records; nothing is written."""
    if not os.path.isdir(root):
        raise BakeryError("root %s is not a directory" % root)
    warnings: list[str] = []
    try:
        packages = read_packages(TreeReader(root))
    except NoDatabase as exc:
        warnings.append("%s: its SBOMs will list no package" % exc)
        packages = []
    except SbomError as exc:
        raise BakeryError(str(exc)) from None
    result: dict[str, Any] = dict(
        changed=False,
        installed=[package_record(package) for package in packages],
        packages=len(packages),
        msg="read %d installed packages under %s" % (len(packages), root),
    )
    if warnings:
        result["warnings"] = warnings
    return result
