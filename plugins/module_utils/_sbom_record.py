# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an artifact's SBOMs record of the artifact they describe, and whether the documents already written do.

Each document bakery writes carries a *subject key*: a digest of everything that decides the document for an
artifact whose content is known by its digest (its name and kind, architecture, fingerprint, digest, purl
namespace, creation time and provisioning inputs, and :data:`LAYOUT`). When both documents at their paths carry the key of the artifact
at hand, they were written for this very artifact, so an unchanged bake keeps them without reading the artifact's
package database again (the slowest part of the ``sbom`` module: a Docker image's archives, a disk's file system).

An artifact without a digest (an image of a cloud instance) has no key: what it holds cannot be told from its
name, so its packages are read every time.

This file imports no SBOM library: the ``sbom`` action plugin uses it on the controller before (instead of)
running the module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._files import bake_started

# the documents' layout: raise it when the documents bakery writes for the same artifact change, so that those
# written before are written again
LAYOUT = 2

# the CycloneDX property of the artifact's component, and the words of the SPDX artifact package's comment, that
# hold the subject key
CYCLONEDX_PROPERTY = "bakery:subject"
SPDX_WORDS = "subject "


def created(source_date_epoch: Any, bake_id: str | None) -> int:
    """When the documents say they were made: the bake's epoch (SOURCE_DATE_EPOCH: the same inputs give the same
    documents, whichever bake made them), else the start of the bake that made the artifact (the time in its bake
    id), else 0; never the wall clock."""
    if source_date_epoch not in (None, ""):
        return int(source_date_epoch)
    return int(bake_started(bake_id) or 0)


def subject_key(params: Mapping[str, Any]) -> str | None:
    """The subject key of the ``sbom`` module's *params*, None when the artifact has no digest."""
    digest = params.get("digest")
    if not digest:
        return None
    record = {
        "layout": LAYOUT,
        "name": params.get("name"),
        "type": params.get("type"),
        "fingerprint": params.get("fingerprint"),
        "digest": str(digest),
        "namespace": params.get("namespace") or "debian",
        "architecture": params.get("architecture") or None,
        "created": created(params.get("source_date_epoch"), params.get("bake_id")),
        "inputs": {str(k): str(v) for k, v in (params.get("inputs") or {}).items()},
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load(path: str) -> tuple[Any, str] | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        return json.loads(data), hashlib.sha256(data).hexdigest()
    except (OSError, ValueError):
        return None


def _cyclonedx_key(document: Any) -> str | None:
    component = ((document or {}).get("metadata") or {}).get("component") or {}
    for prop in component.get("properties") or []:
        if prop.get("name") == CYCLONEDX_PROPERTY:
            return prop.get("value")
    return None


def _spdx_keys(document: Any) -> set[str]:
    keys = set()
    for package in (document or {}).get("packages") or []:
        comment = str(package.get("comment") or "")
        at = comment.rfind(SPDX_WORDS)
        if at >= 0:
            keys.add(comment[at + len(SPDX_WORDS) :])
    return keys


def recorded(paths: Mapping[str, str], key: str | None) -> dict[str, Any] | None:
    """The documents at *paths* (``spdx``, ``cyclonedx``) when both record the subject *key*: each with its path
    and sha256, and how many packages they list; None otherwise (one missing, unreadable or of another artifact)."""
    if not key or set(paths) != {"spdx", "cyclonedx"}:
        return None
    spdx, cyclonedx = _load(paths["spdx"]), _load(paths["cyclonedx"])
    if spdx is None or cyclonedx is None:
        return None
    if _cyclonedx_key(cyclonedx[0]) != key or key not in _spdx_keys(spdx[0]):
        return None
    packages = sum(
        1
        for component in cyclonedx[0].get("components") or []
        if str(component.get("purl", "")).startswith("pkg:deb/")
    )
    return {
        "documents": {
            "cyclonedx": {"path": paths["cyclonedx"], "sha256": cyclonedx[1]},
            "spdx": {"path": paths["spdx"], "sha256": spdx[1]},
        },
        "packages": packages,
    }


def unchanged_result(found: Mapping[str, Any]) -> dict[str, Any]:
    """The ``sbom`` module's result for documents that already record the artifact (:func:`recorded`)."""
    return dict(
        changed=False,
        documents=dict(found["documents"]),
        packages=found["packages"],
        msg="unchanged SBOMs of %d packages (they record this artifact; its packages were not read again)"
        % found["packages"],
    )
