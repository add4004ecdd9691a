# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bake manifest (``bake-manifest.json``) and the artifact summary printed at the end of a bake.

The manifest holds one entry per target. It is deterministic: an artifact that was not rebuilt keeps
the bake id and build time of the bake that made it, so a bake that changes nothing rewrites nothing.
A disk's entry, and an instance-baked AMI's or GCE image's, holds the results of its image hygiene checks
(``hygiene``; an unchanged artifact keeps those of the bake that made it); a target of this run that failed for
a hygiene check is listed under ``hygiene_failures`` with every check's result, and has no artifact.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

MANIFEST_VERSION = 1
# the Docker labels of an image that name its SBOM documents (relative to the bake's output directory)
SBOM_LABELS = {"spdx": "org.bakery.sbom.spdx", "cyclonedx": "org.bakery.sbom.cyclonedx"}
SBOM_ENDINGS = {"spdx": ".spdx.json", "cyclonedx": ".cdx.json"}
# the provenance statement (bakery.images.provenance) beside them, and the Docker label that names it
PROVENANCE_ENDING = ".intoto.json"
PROVENANCE_LABEL = "org.bakery.provenance"


def sbom_documents(target: Mapping[str, Any]) -> dict[str, Any]:
    """Where a planned target's SBOM documents go, ``<output_dir>/<bake name>-<target name>.spdx.json`` and
    ``.cdx.json`` (beside the file outputs, in the output directory for images), and the Docker labels that
    name them (``labels``: the file names, relative to the output directory, where ``bake-manifest.json`` is); the
    provenance statement (``provenance``, ``<output_dir>/<bake name>-<target name>.intoto.json``) and its label
    likewise."""
    directory = target.get("output_dir") or "output"
    stem = "%s-%s" % (target.get("bake_name") or "bake", target["name"])
    found: dict[str, Any] = {
        kind: os.path.join(directory, stem + ending) for kind, ending in SBOM_ENDINGS.items()
    }
    found["labels"] = {SBOM_LABELS[kind]: stem + ending for kind, ending in SBOM_ENDINGS.items()}
    found["provenance"] = os.path.join(directory, stem + PROVENANCE_ENDING)
    found["labels"][PROVENANCE_LABEL] = stem + PROVENANCE_ENDING
    return found


def docker_artifact(result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float) -> dict:
    """The manifest entry of a Docker target from the docker_image_build result that made or found it."""
    image = result.get("image") or {}
    labels = image.get("labels") or {}
    built = bool(result.get("built"))
    entry: dict[str, Any] = {
        "target": target["name"],
        "type": "docker",
        "architecture": image.get("architecture") or target.get("architecture"),
        "status": "built" if built else ("unchanged" if image else "would build"),
        "id": image.get("id"),
        "name": target["options"]["repository"],
        "tags": image.get("tags") or [],
        "repo_digests": sorted(image.get("repo_digests") or []),
        "size": image.get("size"),
        "fingerprint": result.get("fingerprint"),
        "bake_id": labels.get("org.bakery.bake-id") or (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
    }
    return entry


def _with_hygiene(entry: dict, result: Mapping[str, Any]) -> dict:
    """*entry* with the image hygiene results of its build (given to the result by the role), if any."""
    if result.get("hygiene") is not None:
        entry["hygiene"] = result["hygiene"]
    return entry


def gce_artifact(result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float) -> dict:
    """The manifest entry of a GCE target from the gce_image_bake result that made or found its image."""
    image = result.get("image") or {}
    labels = image.get("labels") or {}
    built = bool(result.get("built"))
    size = image.get("archive_size_bytes")
    entry = {
        "target": target["name"],
        "type": "gce",
        "architecture": target.get("architecture"),
        "status": "built" if built else ("unchanged" if image else "would build"),
        "id": image.get("id"),
        "name": image.get("name"),
        "family": image.get("family"),
        "project": target["options"].get("project"),
        "self_link": image.get("self_link"),
        "disk_size_gb": image.get("disk_size_gb"),
        "size": int(size) if size else None,
        "fingerprint": result.get("fingerprint"),
        "bake_id": labels.get("bakery-bake-id") or (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
    }
    return _with_hygiene(entry, result)


def openstack_artifact(
    result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float
) -> dict:
    """The manifest entry of an openstack target from the openstack_image_bake result that made or found its image."""
    image = result.get("image") or {}
    properties = image.get("properties") or {}
    built = bool(result.get("built"))
    return {
        "target": target["name"],
        "type": "openstack",
        "architecture": target.get("architecture"),
        "status": "built" if built else ("unchanged" if image else "would build"),
        "id": image.get("id"),
        "name": image.get("name") or target["options"].get("name"),
        "disk_format": image.get("disk_format"),
        "visibility": image.get("visibility"),
        "size": image.get("size"),
        "virtual_size": image.get("virtual_size"),
        "os_hash_algo": image.get("os_hash_algo"),
        "os_hash_value": image.get("os_hash_value"),
        "fingerprint": result.get("fingerprint"),
        "bake_id": properties.get("bakery_bake_id") or (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
    }


def digitalocean_artifact(
    result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float
) -> dict:
    """The manifest entry of a digitalocean target from the digitalocean_image_bake result that made or found its
    image (an import, or the snapshot of an instance bake with its hygiene results)."""
    image = result.get("image") or {}
    bake_tag = next((t for t in image.get("tags") or [] if t.startswith("bakery-bake-id:")), "")
    built = bool(result.get("built"))
    entry = {
        "target": target["name"],
        "type": "digitalocean",
        "architecture": target.get("architecture"),
        "status": "built" if built else ("unchanged" if image else "would build"),
        "id": image.get("id"),
        "name": image.get("name") or target["options"].get("name"),
        "distribution": image.get("distribution"),
        "regions": image.get("regions") or [],
        "size_gigabytes": image.get("size_gigabytes"),
        "tags": image.get("tags") or [],
        "fingerprint": result.get("fingerprint"),
        "bake_id": bake_tag.split(":", 1)[1] if bake_tag else (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
    }
    return _with_hygiene(entry, result)


def ami_artifact(result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float) -> dict:
    """The manifest entry of an ami target from the ami_bake result that made, found or published it."""
    image = result.get("image") or {}
    tags = image.get("tags") or {}
    built = bool(result.get("built"))
    size = image.get("size_gib")
    entry = {
        "target": target["name"],
        "type": "ami",
        "architecture": target.get("architecture"),
        "status": "built" if built else ("unchanged" if image else "would build"),
        "id": image.get("image_id"),
        "name": image.get("name") or target["options"]["name"],
        "region": target["options"]["region"],
        "images": result.get("images") or ({target["options"]["region"]: image["image_id"]} if image else {}),
        "size": int(size) * 1024**3 if size else None,
        "fingerprint": result.get("fingerprint"),
        "bake_id": tags.get("bakery-bake-id") or (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
    }
    return _with_hygiene(entry, result)


def qemu_artifact(result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float) -> dict:
    """The manifest entry of a qemu target from the qemu_image result that made or found its disk."""
    built = bool(result.get("changed")) and not result.get("found")
    found = bool(result.get("found"))
    outputs = [
        {key: out.get(key) for key in ("format", "path", "size", "sha256")}
        for out in result.get("outputs") or []
    ]
    entry = {
        "target": target["name"],
        "type": "qemu",
        "architecture": target.get("architecture"),
        "status": "built" if built else ("unchanged" if found else "would build"),
        # the disk's identity, as a box's is its sha256 (the summary shows it; verify compares it)
        "id": result.get("sha256") if outputs else None,
        "path": result.get("path") if outputs else None,
        "format": result.get("format") if outputs else None,
        "size": result.get("size") if outputs else None,
        "virtual_size": result.get("virtual_size") if outputs else None,
        "sha256": result.get("sha256") if outputs else None,
        "fingerprint": result.get("fingerprint"),
        "bake_id": result.get("bake_id") or (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
        "outputs": outputs,
    }
    # the image hygiene results its build recorded (a found disk's, from its sidecar)
    if result.get("hygiene") is not None and outputs:
        entry["hygiene"] = result["hygiene"]
    return entry


def vagrant_artifact(result: Mapping[str, Any], target: Mapping[str, Any], started: Any, now: float) -> dict:
    """The manifest entry of a Vagrant target from the vagrant_box result that made or found its box."""
    built = bool(result.get("built"))
    catalog = result.get("catalog") or {}
    return {
        "target": target["name"],
        "type": "vagrant",
        "architecture": target.get("architecture"),
        "status": "built" if built else ("unchanged" if result.get("found") else "would build"),
        "id": result.get("sha256"),
        "name": result.get("box_name"),
        "version": result.get("version"),
        "provider": result.get("provider"),
        "path": result.get("path"),
        "catalog": catalog.get("path"),
        "url": catalog.get("url"),
        "size": result.get("size"),
        "sha256": result.get("sha256"),
        "fingerprint": result.get("fingerprint"),
        "bake_id": result.get("bake_id") or (target["bake_id"] if built else None),
        "build_seconds": round(now - float(started), 1) if built and started else None,
        "changed_inputs": result.get("changed_inputs") or [],
    }


def _previous_entries(previous: Any) -> dict[str, dict]:
    if isinstance(previous, str):
        try:
            previous = json.loads(previous) if previous.strip() else {}
        except ValueError:
            previous = {}
    if not isinstance(previous, dict):
        return {}
    return {a.get("target"): a for a in previous.get("artifacts") or [] if isinstance(a, dict)}


def verified_before(previous: Any, target: Mapping[str, Any]) -> dict[str, Any] | None:
    """The artifact (``id``, ``fingerprint``) whose checks, the same as the target's now (``verify_digest``),
    passed in an earlier run, as the manifest recorded it; None when there is none. Such an artifact, found
    again unchanged, is published without checking it again."""
    if not target.get("verify_digest"):
        return None
    old = _previous_entries(previous).get(target["name"]) or {}
    verify = old.get("verify") or {}
    if verify.get("status") != "passed" or verify.get("digest") != target["verify_digest"]:
        return None
    return {"id": old.get("id"), "fingerprint": old.get("fingerprint")}


def step_cache_entry(cache: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest records of a builder's per-step cache: from which step it resumed and why, and each
    provisioner's state (``hit``: taken from the cache, ``miss``: run and kept, ``bypassed``)."""
    return {
        "resume": int(cache.get("resume") or 0),
        "reason": cache.get("reason") or "",
        "steps": list(cache.get("steps") or []),
        "image": cache.get("image"),
    }


def step_cache_note(cache: Mapping[str, Any] | None, check_mode: bool) -> str:
    """The summary's words on the per-step cache: where the builder started (or would start), and why."""
    if not cache or not cache.get("steps"):
        return ""
    steps = list(cache["steps"])
    if "bypassed" in steps:
        return ", step cache bypassed (%s)" % cache.get("reason", "")
    hits, misses = steps.count("hit"), steps.count("miss")
    where = (
        ("would resume after provisioner %d" if check_mode else "resumed after provisioner %d")
        % cache.get("resume", 0)
        if cache.get("resume")
        else ("would run every provisioner" if check_mode else "ran every provisioner")
    )
    return ", steps %d hit/%d miss, %s: %s" % (hits, misses, where, cache.get("reason", ""))


def manifest(plan: Mapping[str, Any], results: list[Mapping[str, Any]], previous: Any = None) -> dict:
    """The new manifest: this run's artifacts, plus earlier entries of targets this run did not bake."""
    entries = _previous_entries(previous)
    for result in results:
        artifact = result.get("artifact")
        if not artifact or artifact.get("status") == "would build":
            continue
        entry = {key: value for key, value in artifact.items() if key not in ("status", "changed_inputs")}
        if result.get("downloads"):
            entry["downloads"] = list(result["downloads"])
        if result.get("step_cache"):
            entry["step_cache"] = step_cache_entry(result["step_cache"])
        old = entries.get(entry["target"])
        if artifact.get("status") == "unchanged" and old and old.get("fingerprint") == entry["fingerprint"]:
            entry["build_seconds"] = old.get("build_seconds")
            entry["bake_id"] = entry.get("bake_id") or old.get("bake_id")
            # what the build that made it downloaded is still there
            if old.get("downloads"):
                entry["downloads"] = old["downloads"]
            # and how its builder used the step cache
            if old.get("step_cache"):
                entry["step_cache"] = old["step_cache"]
            # the hygiene checks of the build that made it (a found cloud image has no sidecar to keep them)
            if entry.get("hygiene") is None and old.get("hygiene") is not None:
                entry["hygiene"] = old["hygiene"]
        entries[entry["target"]] = entry
    made = {
        "version": MANIFEST_VERSION,
        "bake": plan["name"],
        "artifacts": [entries[name] for name in sorted(entries)],
    }
    rejected = hygiene_failures(results)
    if rejected:
        made["hygiene_failures"] = rejected
    return made


SHA256SUMS = "SHA256SUMS"


def _hex(value: Any) -> str | None:
    text = str(value or "").split(":", 1)[-1]
    return text if len(text) == 64 else None


def sha256sums(made: Mapping[str, Any], directory: str) -> str:
    """``SHA256SUMS`` of a manifest: the sha256 of every file output (disks, boxes), SBOM document and provenance
    statement its artifacts record, one ``<sha256>  <path>`` line each (``sha256sum -c`` reads it), sorted by path; a path
    inside *directory* (the manifest's) relative to it. Empty when there is no file."""
    found: dict[str, str] = {}
    for entry in made.get("artifacts") or []:
        files = [dict(out) for out in entry.get("outputs") or []]
        if entry.get("type") == "vagrant" and entry.get("path"):
            files.append({"path": entry["path"], "sha256": entry.get("sha256")})
        files += [dict(doc) for doc in (entry.get("sbom") or {}).values() if isinstance(doc, Mapping)]
        if isinstance(entry.get("provenance"), Mapping):
            files.append(dict(entry["provenance"]))
        for item in files:
            digest = _hex(item.get("sha256"))
            if item.get("path") and digest:
                path = os.path.normpath(str(item["path"]))
                relative = os.path.relpath(path, directory)
                found[relative if not relative.startswith("..") else path] = digest
    return "".join("%s  %s\n" % (found[path], path) for path in sorted(found))


def hygiene_failures(results: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The targets of this run that failed an image hygiene check, each with every check's result."""
    rejected = []
    for result in results:
        failure = result.get("failure") or {}
        if isinstance(failure.get("hygiene"), list):
            rejected.append(
                {
                    "target": result["target"],
                    "type": result["type"],
                    "failed": [check["name"] for check in failure["hygiene"] if not check.get("ok", True)],
                    "hygiene": failure["hygiene"],
                }
            )
    return sorted(rejected, key=lambda entry: entry["target"])


def _size(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return "%.1f %s" % (size, unit) if unit != "B" else "%d B" % size
        size /= 1024
    return "-"


def _first_line(text: Any, width: int = 160) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:width] if lines else "(no message)"


def verify_note(target: Mapping[str, Any], artifact: Mapping[str, Any]) -> str:
    """What became of the target's checks (verify), for its summary line: passed (now or in an earlier run),
    or, in check mode, whether they would run."""
    checks = target.get("verify") or []
    if not checks:
        return ""
    verify = artifact.get("verify")
    if verify:
        return ", checks passed" + (" before" if verify.get("checked") == "before" else "")
    verified = target.get("verified") or {}
    if (
        artifact.get("status") == "unchanged"
        and verified.get("fingerprint") == artifact.get("fingerprint")
        and verified.get("id") == artifact.get("id")
    ):
        return ", checks passed before"
    return ", would run %d check%s" % (len(checks), "" if len(checks) == 1 else "s")


def summary(plan: Mapping[str, Any], results: list[Mapping[str, Any]]) -> list[str]:
    """Readable lines: one per target (name, type, architecture, tag or path, id, size, what was done), then where
    the manifest is."""
    planned = {target["name"]: target for target in plan.get("targets") or []}
    counts = {"built": 0, "unchanged": 0, "would build": 0, "failed": 0, "cancelled": 0}
    rows = []
    for result in results:
        artifact = result.get("artifact") or {}
        failure = result.get("failure")
        if failure and failure.get("cancelled"):
            status = "cancelled: %s" % _first_line(failure.get("msg"))
            counts["cancelled"] += 1
            ref = "-"
        elif failure:
            status = "FAILED in %s: %s" % (
                failure.get("phase"),
                _first_line(failure.get("msg")),
            )
            status += step_cache_note(result.get("step_cache"), False)
            counts["failed"] += 1
            ref = "-"
        else:
            state = artifact.get("status", "would build")
            counts[state] = counts.get(state, 0) + 1
            ref = (artifact.get("tags") or [artifact.get("path") or artifact.get("name") or "-"])[0]
            if state == "built":
                status = "built in %.1f s" % (artifact.get("build_seconds") or 0)
            elif state == "unchanged":
                status = "unchanged (fingerprint %s)" % str(artifact.get("fingerprint"))[:12]
            else:
                status = "would build: %s" % (", ".join(artifact.get("changed_inputs") or []) or "forced")
            status += verify_note(planned.get(result["target"]) or {}, artifact)
            status += step_cache_note(result.get("step_cache"), state == "would build")
        ident = str(artifact.get("id") or "-").replace("sha256:", "")[:12]
        architecture = artifact.get("architecture") or (planned.get(result["target"]) or {}).get(
            "architecture"
        )
        rows.append(
            (
                result["target"],
                result["type"],
                architecture or "-",
                ref,
                ident,
                _size(artifact.get("size")),
                status,
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(6)] if rows else []
    lines = [
        "bake %s (%s): %s"
        % (
            plan["name"],
            plan["bake_id"],
            ", ".join("%d %s" % (n, k) for k, n in counts.items() if n) or "nothing",
        )
    ]
    for row in rows:
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:6])) + "  " + row[6])
    lines.extend(index_lines(results))
    if plan.get("skipped_targets"):
        lines.append("not selected: %s" % ", ".join(plan["skipped_targets"]))
    lines.append("manifest: %s" % plan["manifest"])
    return lines


def index_lines(results: list[Mapping[str, Any]]) -> list[str]:
    """A line per multi-architecture image (the index an entry of a docker target with ``architectures`` pushed):
    the target, its first tag, the index's digest and the platforms it lists."""
    lines = []
    for result in results:
        index = (result.get("artifact") or {}).get("index")
        if not index:
            continue
        lines.append(
            "index of %s: %s  %s  %s"
            % (
                index.get("target") or result["target"],
                (index.get("tags") or ["-"])[0],
                str(index.get("digest") or "-").replace("sha256:", "")[:12],
                ", ".join(item.get("platform") or "?" for item in index.get("manifests") or []),
            )
        )
    return lines


JANITOR_PLAYBOOK = "bakery.images.janitor"


def janitor_command(bake_id: str, var_files: list[str] | tuple[str, ...] = ()) -> str:
    """The one command that removes every temporary resource of a bake later: the janitor with the bake
    id and the bake's ``-e @file`` arguments (where its definition and credentials come from; inline
    ``-e`` values are left out, they may hold secrets)."""
    argv = ["ansible-playbook", JANITOR_PLAYBOOK]
    for path in var_files:
        argv += ["-e", "@" + path]
    argv += ["-e", "janitor_bake_id=%s" % bake_id]
    return " ".join(shlex.quote(arg) for arg in argv)


def failed_targets(hosts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the targets among *hosts* (each target host's variables) that failed on their own: a
    ``bake_failure`` that fail_fast's cancellation did not set."""
    names = []
    for host in hosts:
        failure = host.get("bake_failure")
        if isinstance(failure, Mapping) and not failure.get("cancelled"):
            names.append(host["bakery_target"]["name"])
    return names


def builder_access(builder: Mapping[str, Any]) -> dict[str, Any]:
    """How a user reaches a builder that a failed bake kept: a shell command for its connection."""
    connection = str(builder.get("connection") or "")
    host = str(builder.get("host") or "")
    if connection.endswith("docker_api"):
        command = "docker exec -it %s /bin/sh" % shlex.quote(host)
        if builder.get("docker_host"):
            command = "DOCKER_HOST=%s %s" % (shlex.quote(str(builder["docker_host"])), command)
        kind = "container"
    elif connection.endswith("chroot"):
        # the isolated builder's own way in (the same sandbox the roles ran in), else a plain chroot
        enter = str(builder.get("chroot_exe") or "chroot")
        command = "%s %s /bin/sh" % (shlex.quote(enter), shlex.quote(host))
        kind = "chroot directory"
    else:
        argv = ["ssh"]
        if builder.get("private_key"):
            argv += ["-i", str(builder["private_key"])]
        if builder.get("port"):
            argv += ["-p", str(builder["port"])]
        argv += shlex.split(str(builder.get("ssh_common_args") or ""))
        argv.append("%s@%s" % (builder["user"], host) if builder.get("user") else host)
        command = " ".join(shlex.quote(arg) for arg in argv)
        kind = "machine"
    return {"kind": kind, "host": host, "command": command}


def failure_output(result: Any, lines: int = 20) -> dict[str, Any]:
    """``msg`` and the last *lines* of output (stdout, then stderr) of a failed task's result; a loop's
    result holds its items' results, and the last failed item's are taken."""
    if not isinstance(result, Mapping):
        return {"msg": str(result), "output": []}
    items = [item for item in result.get("results") or [] if isinstance(item, Mapping)]
    failed = [item for item in items if item.get("failed")]
    # a loop without a failed item (an error provisioner's scripts that went well): all their output
    found = failed[-1:] or items or [result]
    output = [
        line
        for item in found
        for line in list(item.get("stdout_lines") or []) + list(item.get("stderr_lines") or [])
    ]
    return {"msg": found[-1].get("msg") or result.get("msg"), "output": output[-lines:] if lines else []}


def failures(
    plan: Mapping[str, Any], results: list[Mapping[str, Any]], var_files: list[str] | tuple[str, ...] = ()
) -> str:
    """One message naming every failed target, its phase, task, builder and last output lines, and what
    became of the temporary resources (on_error): removed, kept for debugging, or left for the janitor."""
    parts = []
    cancelled = []
    for result in results:
        failure = result.get("failure")
        if not failure:
            continue
        if failure.get("cancelled"):
            cancelled.append(result["target"])
            continue
        text = "target %s failed in %s" % (result["target"], failure.get("phase"))
        if failure.get("builder"):
            text += " on builder %s" % failure["builder"]
        if failure.get("provisioner"):
            text += ", provisioner %s" % failure["provisioner"]
        if failure.get("task"):
            text += ", %s '%s'" % ("handler" if failure.get("handler") else "task", failure["task"])
        text += ": %s" % failure.get("msg")
        output = failure.get("output") or []
        if output:
            text += "\n  last output:\n    " + "\n    ".join(str(line) for line in output)
        for ran in failure.get("error_provisioners") or []:
            text += "\n  error provisioner %s %s" % (
                ran.get("provisioner"),
                "failed: %s" % ran.get("msg") if ran.get("failed") else "ran",
            )
            if ran.get("output"):
                text += ", last output:\n    " + "\n    ".join(str(line) for line in ran["output"])
        for download in result.get("downloads") or []:
            text += "\n  downloaded %s to %s" % (download.get("source"), download.get("path"))
        kept = result.get("kept")
        if kept:
            text += "\n  its %s %s was kept (on_error=keep); reach it with:\n    %s" % (
                kept.get("kind", "builder"),
                kept.get("host", ""),
                kept.get("command", ""),
            )
        parts.append(text)
    failed = len(parts)
    if cancelled:
        parts.append("not captured because fail_fast is set: %s" % ", ".join(cancelled))
    on_error = plan.get("on_error") or "cleanup"
    janitor = janitor_command(plan["bake_id"], var_files)
    if on_error == "abort":
        fate = "on_error=abort: temporary resources were left"
        parts.append("remove every temporary resource of this bake with:\n    %s" % janitor)
    elif on_error == "keep" and any(result.get("kept") for result in results):
        fate = "on_error=keep: the failed builders were kept, other temporary resources were cleaned up"
        parts.append("remove the kept builders when done with:\n    %s" % janitor)
    else:
        fate = "temporary resources were cleaned up"
    return "bake %s: %d target(s) failed (%s)\n%s" % (plan["name"], failed, fate, "\n".join(parts))
