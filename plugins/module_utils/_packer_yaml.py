# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The importer's outputs: the bake definition as commented YAML, the report as Markdown and JSON, and
writing them (all computed first, so that nothing is written when anything fails; each file atomically and
only when its content changes)."""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from collections.abc import Mapping
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    yaml = None

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def _block_text(value: str, indent: str) -> list[str] | None:
    """A multi-line text as a literal block (``|``), when YAML reads it back unchanged."""
    if (
        "\n" not in value
        or value.endswith("\n\n")
        or any(line != line.rstrip() for line in value.split("\n"))
    ):
        return None
    if value.startswith((" ", "\t")) or "\t" in value or "\r" in value:
        return None
    chomp = "" if value.endswith("\n") else "-"
    lines = value[:-1].split("\n") if value.endswith("\n") else value.split("\n")
    return ["|" + chomp] + [indent + line if line else "" for line in lines]


def _comment(lines: list[str], comments: Mapping[tuple, str], path: tuple, indent: str) -> None:
    text = comments.get(path)
    if text:
        for line in str(text).split("\n"):
            for part in textwrap.wrap(line, width=max(40, 108 - len(indent)), break_on_hyphens=False) or [""]:
                lines.append("%s# %s" % (indent, part))


def _emit(value: Any, comments: Mapping[tuple, str], path: tuple, level: int, lines: list[str]) -> None:
    indent = "  " * level
    if isinstance(value, Mapping):
        for key, item in value.items():
            _comment(lines, comments, path + (key,), indent)
            head = "%s%s:" % (indent, _scalar(key))
            _value(head, item, comments, path + (key,), level, lines)
    else:
        for index, item in enumerate(value):
            _comment(lines, comments, path + (index,), indent)
            if isinstance(item, Mapping) and item:
                sub: list[str] = []
                _emit(item, comments, path + (index,), level + 1, sub)
                first = next(i for i, line in enumerate(sub) if not line.lstrip().startswith("#"))
                lines.extend(sub[:first])
                lines.append("%s- %s" % (indent, sub[first][len(indent) + 2 :]))
                lines.extend(sub[first + 1 :])
            else:
                _value("%s-" % indent, item, comments, path + (index,), level, lines)


def _value(
    head: str, item: Any, comments: Mapping[tuple, str], path: tuple, level: int, lines: list[str]
) -> None:
    if isinstance(item, (Mapping, list)) and item:
        if (
            isinstance(item, list)
            and all(not isinstance(v, (Mapping, list)) for v in item)
            and not any(path + (i,) in comments for i in range(len(item)))
        ):
            flow = "%s [%s]" % (
                head,
                ", ".join(_scalar(v) if not isinstance(v, str) or "\n" not in v else "\x00" for v in item),
            )
            if len(flow) <= 110 and "\x00" not in flow:
                lines.append(flow)
                return
        lines.append(head)
        _emit(item, comments, path, level + 1, lines)
        return
    if isinstance(item, str):
        block = _block_text(item, "  " * (level + 1))
        if block:
            lines.append("%s %s" % (head, block[0]))
            lines.extend(block[1:])
            return
    lines.append("%s %s" % (head, _scalar(item)))


def to_yaml(definition: Mapping[str, Any], comments: Mapping[tuple, str], header: list[str]) -> str:
    """*definition* as block-style YAML with *comments* (by path) above their keys and list items."""
    lines = ["---"] + ["# " + line if line else "#" for line in header]
    _emit(definition, comments, (), 0, lines)
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != json.loads(json.dumps(definition)):
        raise BakeryError("internal error: the written definition does not read back as it was made")
    return text


def report_markdown(report: Mapping[str, Any]) -> str:
    counts = report["counts"]
    out = [
        "# Packer import: %s" % report["bake"],
        "",
        "Template: `%s` (%s). Bake definition: `%s.yml`."
        % (report["template"], report["format"], report["bake"]),
        "",
        "%d mapped, %d partly mapped, %d not mapped.%s"
        % (
            counts["mapped"],
            counts["partly mapped"],
            counts["not mapped"],
            " Fully mapped." if report["fully_mapped"] else "",
        ),
        "",
        "| kind | name | status | becomes |",
        "|---|---|---|---|",
    ]
    for item in report["items"]:
        out.append(
            "| %s | `%s` | %s | %s |"
            % (item["kind"], item["name"], item["status"], "; ".join(item.get("to", [])) or "-")
        )
    for item in report["items"]:
        details = []
        if item.get("why"):
            details.append("- not mapped: %s" % item["why"])
            details.append("- instead: %s" % item["instead"])
        for dropped in item.get("dropped", []):
            details.append("- dropped `%s`: %s" % (dropped["option"], dropped["why"]))
        for note in item.get("notes", []):
            details.append("- note: %s" % note)
        for skipped in item.get("not_needed", []):
            details.append("- not needed `%s`: %s" % (skipped["option"], skipped["why"]))
        if details:
            out += [
                "",
                "## %s `%s` (%s)" % (item["kind"], item["name"], item["status"]),
                "",
                "At %s." % item["where"],
                "",
            ]
            out += details
    if report["unknown"]:
        out += ["", "## Values known only during a Packer build", ""]
        for unknown in report["unknown"]:
            out.append(
                "- %s, `%s`: `%s` (%s)"
                % (unknown["where"], unknown["option"], unknown["value"], unknown["why"])
            )
    if report["warnings"]:
        out += ["", "## Warnings", ""]
        out += ["- %s" % warning for warning in report["warnings"]]
    if report["variables"]:
        out += ["", "## Variables (as evaluated)", ""]
        for name, value in report["variables"].items():
            out.append("- `%s` = `%s`" % (name, json.dumps(value)))
    return "\n".join(out) + "\n"


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """The report as printed: one line per item, then the values left unknown and the warnings."""
    counts = report["counts"]
    lines = [
        "%s: %d mapped, %d partly mapped, %d not mapped%s"
        % (
            report["bake"],
            counts["mapped"],
            counts["partly mapped"],
            counts["not mapped"],
            " (fully mapped)" if report["fully_mapped"] else "",
        )
    ]
    for item in report["items"]:
        line = "%-14s %-13s %s" % (item["status"], item["kind"], item["name"])
        if item.get("to"):
            line += " -> " + "; ".join(item["to"])
        lines.append(line)
        if item.get("why"):
            lines.append("    why: %s; instead: %s" % (item["why"], item["instead"]))
        for dropped in item.get("dropped", []):
            lines.append("    dropped %s: %s" % (dropped["option"], dropped["why"]))
    for unknown in report["unknown"]:
        lines.append(
            "unknown until the build: %s %s = %s" % (unknown["where"], unknown["option"], unknown["value"])
        )
    lines += ["warning: %s" % warning for warning in report["warnings"]]
    return lines


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def plan_writes(directory: str, files: Mapping[str, str]) -> list[str]:
    """The files (relative paths) whose content differs from what is in *directory*."""
    return [name for name, content in files.items() if read_text(os.path.join(directory, name)) != content]


def write_files(directory: str, files: Mapping[str, str], changed: list[str]) -> None:
    """Write *changed* of *files* into *directory*, each under a temporary name then renamed."""
    for name in changed:
        path = os.path.join(directory, name)
        if os.path.islink(path):
            raise BakeryError("%s is a symbolic link: the importer does not write through it" % path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=".%s." % os.path.basename(name), dir=os.path.dirname(path)
        )
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(files[name])
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
