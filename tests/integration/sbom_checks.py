"""Checks of an artifact's SBOM documents (bakery.images.sbom): both valid against their official schemas
(CycloneDX 1.6: the JSON schema cyclonedx-python-lib ships; SPDX 2.3: spdx-tools' parser and validator), both
listing exactly the packages that dpkg-query lists inside the artifact, and the manifest's sha256 theirs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

# what dpkg-query -W says of each package: its name, version, architecture and state
DPKG_FORMAT = r"${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n"


def installed(dpkg_query_output: str) -> set[tuple[str, str, str]]:
    """(name, version, architecture) of every installed package in ``dpkg-query -W -f DPKG_FORMAT`` output."""
    found = set()
    for line in dpkg_query_output.splitlines():
        name, version, arch, state = line.split("\t")
        if state == "installed":
            found.add((name, version, arch))
    return found


def dpkg_query(status: str, scratch: Path) -> set[tuple[str, str, str]]:
    """The installed packages of a dpkg status file (read out of an artifact), as dpkg-query lists them."""
    admindir = scratch / "dpkg-admindir"
    (admindir / "info").mkdir(parents=True, exist_ok=True)
    (admindir / "updates").mkdir(exist_ok=True)
    (admindir / "status").write_text(status)
    out = subprocess.run(
        ["dpkg-query", "--admindir=%s" % admindir, "-W", "-f", DPKG_FORMAT],
        capture_output=True,
        text=True,
        check=True,
    )
    return installed(out.stdout)


def _deb(purl: str) -> tuple[str, str, str] | None:
    parsed = PackageURL.from_string(purl)
    if parsed.type != "deb":
        return None
    return (parsed.name, parsed.version or "", (parsed.qualifiers or {}).get("arch", ""))


def check_documents(entry: dict, packages: set[tuple[str, str, str]]) -> dict[str, dict]:
    """Assert that the manifest entry's SBOMs are valid, are what the manifest says (path, sha256) and list
    exactly *packages*; return both documents, parsed."""
    documents = entry["sbom"]
    assert sorted(documents) == ["cyclonedx", "spdx"], documents
    texts = {}
    for kind, recorded in documents.items():
        path = Path(recorded["path"])
        texts[kind] = path.read_text(encoding="utf-8")
        assert hashlib.sha256(texts[kind].encode()).hexdigest() == recorded["sha256"], kind
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(texts["cyclonedx"]) is None
    assert (
        validate_full_spdx_document(json_parser.parse_from_file(documents["spdx"]["path"]), "SPDX-2.3") == []
    )
    bom = json.loads(texts["cyclonedx"])
    spdx = json.loads(texts["spdx"])
    in_cyclonedx = {_deb(c["purl"]) for c in bom["components"] if c.get("purl")} - {None}
    in_spdx = {
        _deb(ref["referenceLocator"])
        for package in spdx["packages"]
        for ref in package.get("externalRefs") or []
        if ref["referenceType"] == "purl"
    } - {None}
    assert in_cyclonedx == packages, (sorted(in_cyclonedx ^ packages))[:20]
    assert in_spdx == packages, (sorted(in_spdx ^ packages))[:20]
    # every package of the SPDX document but the artifact itself and its inputs is a deb with its purl
    others = [p for p in spdx["packages"] if not p.get("externalRefs")]
    assert all(p.get("primaryPackagePurpose") in ("SOURCE", "CONTAINER", "FILE") for p in others), others
    assert {"name": "bakery:fingerprint", "value": entry["fingerprint"]} in bom["metadata"]["component"][
        "properties"
    ]
    # the architecture the artifact runs on, as the manifest says
    if entry.get("architecture"):
        assert {"name": "bakery:architecture", "value": entry["architecture"]} in bom["metadata"][
            "component"
        ]["properties"]
    return {"cyclonedx": bom, "spdx": spdx}
