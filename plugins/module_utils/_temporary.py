# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which temporary resources a cleanup removes: the selector shared by the bake's cleanups and the janitor.

Every temporary resource bakery makes is tagged ``bakery-temporary=true`` and ``bakery-bake-id=<id>``.
A cleanup selects among those by bake id (exact), by age (older than a TTL), or both (both must match);
final artifacts never carry ``bakery-temporary=true`` and are never selected. Each backend lists its
temporary resources, asks :meth:`Selector.matches`, and reports every one it handled as a
:func:`record`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# the file that marks a directory bakery made as temporary; it holds the bake id
TEMPORARY_MARKER = ".bakery-temporary"
REMOVED = "removed"
WOULD_REMOVE = "would remove"
FAILED = "failed"
STATES = (REMOVED, WOULD_REMOVE, FAILED)

# a generated bake id (_fingerprint.new_bake_id): its UTC start time and a random part
BAKE_ID_RE = re.compile(r"^\d{8}t\d{6}-[0-9a-f]{6}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TTL = re.compile(r"^(?:\d+[smhdw])+$")
_TTL_PART = re.compile(r"(\d+)([smhdw])")


def parse_ttl(value: Any) -> float:
    """``90s``, ``30m``, ``6h``, ``2d``, ``1w`` or a sum such as ``1h30m``, in seconds; nothing else."""
    text = str(value).strip().lower() if value is not None else ""
    if not _TTL.match(text):
        hint = " (a number needs a unit)" if text.isdigit() else ""
        raise BakeryError(
            "older_than %r is not a duration%s: use a number with a unit s, m, h, d or w, such as 90s, 30m, "
            "6h, 2d or 1h30m" % (value, hint)
        )
    return float(sum(int(number) * _UNITS[unit] for number, unit in _TTL_PART.findall(text)))


def human_duration(seconds: float) -> str:
    """``2d``, ``6h``, ``90s``: the largest unit that divides *seconds*."""
    value = int(seconds)
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if value and value % size == 0:
            return "%d%s" % (value // size, unit)
    return "%ds" % value


def to_epoch(value: Any) -> float | None:
    """A creation time as seconds since the epoch: from an epoch number, a datetime or an ISO 8601 text."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    text = str(value).strip()
    if re.match(r"^\d+(\.\d+)?$", text):
        return float(text)
    text = re.sub(r"Z$", "+00:00", text)
    text = re.sub(r"-00:00$", "+00:00", text)
    # fromisoformat of older Pythons takes 0, 3 or 6 fraction digits only
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(epoch: float | None) -> str | None:
    """UTC ISO 8601 (seconds), as every record shows a creation time."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_name(name: str, bake_id: str | None = None) -> tuple[str | None, str | None]:
    """(bake id, rest) of a temporary resource's name ``bakery-<bake id>-<rest>`` (a builder VM's qemu ``-name``,
    a libvirt domain or volume); a generated bake id is recognised by its form, any other only when *bake_id* is
    given and the name starts with it."""
    if not name.startswith("bakery-"):
        return None, None
    rest = name[len("bakery-") :]
    if bake_id and rest.startswith(bake_id + "-"):
        return bake_id, rest[len(bake_id) + 1 :]
    head = rest[:22]
    if BAKE_ID_RE.match(head) and rest[22:23] == "-":
        return head, rest[23:]
    return None, None


@dataclass
class Selector:
    """A bake id (exact) and/or an age; a resource is selected only when every given criterion matches."""

    bake_id: str | None = None
    older_than: float | None = None
    now: float = field(default_factory=time.time)

    @classmethod
    def from_params(cls, bake_id: Any = None, older_than: Any = None, now: float | None = None) -> Selector:
        """The selector of a sweep; refuses to select everything (no bake id and no age)."""
        ttl = parse_ttl(older_than) if older_than not in (None, "") else None
        wanted = str(bake_id) if bake_id not in (None, "") else None
        if wanted is None and ttl is None:
            raise BakeryError(
                "give bake_id, older_than or both: without either every temporary resource would be "
                "selected, including those of bakes that are running now"
            )
        return cls(wanted, ttl, time.time() if now is None else now)

    def matches(self, bake_id: str | None, created: Any) -> bool:
        """Whether a temporary resource of *bake_id*, made at *created* (any form to_epoch takes), is selected.

        A resource of unknown age is never selected by age: too young to tell is too young to remove.
        """
        if self.bake_id is not None and bake_id != self.bake_id:
            return False
        if self.older_than is not None:
            epoch = to_epoch(created)
            if epoch is None or self.now - epoch < self.older_than:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.bake_id is not None:
            parts.append("of bake %s" % self.bake_id)
        if self.older_than is not None:
            parts.append("older than %s" % human_duration(self.older_than))
        return " and ".join(parts) or "every temporary resource"


def record(
    backend: str,
    kind: str,
    ident: str,
    *,
    name: str | None = None,
    bake_id: str | None = None,
    target: str | None = None,
    created: Any = None,
    location: str | None = None,
) -> dict[str, Any]:
    """One resource as cleanups report it; ``state`` is set by :func:`act`."""
    return {
        "backend": backend,
        "kind": kind,
        "id": ident,
        "name": name if name is not None else ident,
        "bake_id": bake_id,
        "target": target,
        "created": iso(to_epoch(created)),
        "location": location,
        "state": WOULD_REMOVE,
    }


def act(entry: dict[str, Any], check_mode: bool, remove: Callable[[], Any]) -> dict[str, Any]:
    """Remove the resource of *entry* (unless in check mode) and set its state; an error is kept, not raised."""
    if check_mode:
        entry["state"] = WOULD_REMOVE
        return entry
    try:
        remove()
    except BakeryError as exc:
        entry.update(state=FAILED, error=exc.msg)
    except OSError as exc:
        entry.update(state=FAILED, error="%s: %s" % (exc.filename or entry["id"], exc.strerror or exc))
    else:
        entry["state"] = REMOVED
    return entry


def failed(entry: dict[str, Any], error: str) -> dict[str, Any]:
    entry.update(state=FAILED, error=error)
    return entry


def errors_of(entries: list[dict[str, Any]]) -> list[str]:
    return [
        "%s %s %s: %s" % (e["backend"], e["kind"], e["name"], e.get("error"))
        for e in entries
        if e["state"] == FAILED
    ]


def cleanup_problems(
    bake_id: str, failed_removals: list[str], unlooked: list[str], created: Any
) -> str | None:
    """The failure message of a bake's cleanup, or None when it did all it had to.

    *failed_removals*: resources found and not removed; *unlooked*: places (a region, a zone) where the
    resources could not even be listed (credentials refused, a region that does not exist); *created*: whether
    the bake's earlier calls for the target may have made anything (the modules say so in their results). A
    target that made nothing has nothing to leave behind, wherever its cleanup cannot look.
    """
    if failed_removals:
        message = "cleanup of bake %s left resources behind (run it again to finish): %s" % (
            bake_id,
            "; ".join(failed_removals),
        )
        if unlooked:
            message += "; and could not look in %s" % "; ".join(unlooked)
        return message
    if unlooked and created is not False:
        return (
            "cleanup of bake %s could not look for its temporary resources (nothing was removed there; run it again "
            "once this works, or playbooks/janitor.yml): %s" % (bake_id, "; ".join(unlooked))
        )
    return None


def created_nothing(bake_id: str, target: Any, unlooked: list[str]) -> str:
    """What a cleanup says for a target whose calls never got as far as making anything."""
    return (
        "nothing to clean up: target %s of bake %s created nothing (its calls failed before any could make a "
        "resource); the cleanup could not look either: %s" % (target or "?", bake_id, "; ".join(unlooked))
    )
