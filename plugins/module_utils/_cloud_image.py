# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules that make a cloud image from a disk (openstack_image_bake, digitalocean_image_bake) do the
same way: the dispatch of their actions (find, upload, publish, cleanup), with ``created`` in every result and
failure, and the result of a bake's cleanup. Each cloud's module_utils keeps only its API: a client with a
``created`` attribute (whether a call may have made anything) and an object with one method an action."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    cleanup_problems,
    created_nothing,
    errors_of,
)

ACTIONS = ("find", "upload", "publish", "cleanup")


def run_action(
    params: Mapping[str, Any],
    connect: Callable[[], Any],
    images_of: Callable[[Any], Any],
    extra: tuple[str, ...] = (),
) -> dict:
    """Connect, then run the action of *params* on ``images_of(client)`` (methods ``find_only``, ``upload``,
    ``publish``, ``cleanup``, and one of the name of each action of *extra*, such as an instance bake's ``launch``).
    A cleanup told that nothing was created (``created: false``) succeeds when it cannot even connect: the bake's
    calls failed before any could make a resource."""
    action = params["action"]
    try:
        client = connect()
    except BakeryError as exc:
        if action == "cleanup" and params.get("created", True) is False:
            return {
                "changed": False,
                "removed": [],
                "bake_id": params.get("bake_id"),
                "created": False,
                "msg": created_nothing(params.get("bake_id") or "?", params.get("target"), [exc.msg]),
            }
        exc.details.setdefault("created", False)
        raise
    images = images_of(client)
    try:
        if action not in ACTIONS + extra:
            raise BakeryError("unknown action %r" % action)
        if action == "cleanup" and not params.get("bake_id"):
            raise BakeryError("action=cleanup needs bake_id")
        method = {
            "find": images.find_only,
            "upload": images.upload,
            "publish": images.publish,
            "cleanup": images.cleanup,
            **{name: getattr(images, name) for name in extra},
        }[action]
        result = method()
    except BakeryError as exc:
        exc.details.setdefault("created", client.created)
        raise
    result.setdefault("created", client.created)
    return result


def cleanup_result(
    bake_id: str,
    target: str,
    sweep: Callable[[], list[dict[str, Any]]],
    where: str,
    created: Any,
    label: Callable[[dict[str, Any]], str],
    nothing: str,
) -> dict[str, Any]:
    """The result of a bake's cleanup: *sweep* removes its temporary resources (records of _temporary); a sweep
    that cannot look (*where* it looked) fails unless the bake *created* nothing; a removal that failed fails."""
    unlooked: list[str] = []
    try:
        entries = sweep()
    except BakeryError as exc:
        entries = []
        unlooked.append("%s: %s" % (where, exc.msg))
    removed = [label(entry) for entry in entries if entry["state"] != "failed"]
    message = cleanup_problems(bake_id, errors_of(entries), unlooked, created)
    if message:
        raise BakeryError(message, removed=removed)
    if unlooked:
        msg = created_nothing(bake_id, target, unlooked)
    else:
        msg = "removed %s" % (", ".join(removed) if removed else nothing)
    return {"changed": bool(removed), "removed": removed, "bake_id": bake_id, "msg": msg}


def publish_result(
    image_id: Any,
    bake_id: str,
    check_mode: bool,
    get: Callable[[Any], Mapping[str, Any] | None],
    owner: Callable[[Mapping[str, Any]], str | None],
    temporary: Callable[[Mapping[str, Any]], bool],
    finalize: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    summary: Callable[[Mapping[str, Any] | None], Any],
) -> dict[str, Any]:
    """Make final the image a bake left temporary (``publish=false``) once its checks passed; an image that is
    temporary for another bake (*owner* of the image) is refused, a final one is left as it is."""
    if not image_id:
        raise BakeryError("action=publish needs image (the id upload returned)")
    image = get(image_id)
    if image is None:
        raise BakeryError("image %s does not exist: nothing to publish" % image_id)
    if temporary(image) and owner(image) != bake_id:
        raise BakeryError(
            "image %s is a temporary image of bake %s, not of this bake (%s): not publishing it"
            % (image_id, owner(image), bake_id)
        )
    result: dict[str, Any] = {"found": True, "built": False, "bake_id": bake_id, "changed": temporary(image)}
    if temporary(image) and not check_mode:
        image = finalize(image)
    result["image"] = summary(image)
    result["msg"] = (
        ("would publish image %s" if check_mode else "published image %s") % image_id
        if result["changed"]
        else "image %s is published already" % image_id
    )
    return result


def before_making(
    result: Callable[..., dict],
    existing: Mapping[str, Any] | None,
    digest: str,
    inputs: Mapping[str, Any],
    force: bool,
    check_mode: bool,
    would: str,
    **extra: Any,
) -> dict | None:
    """The result of an action that makes an image, when nothing is to be made: the image *existing* with the
    fingerprint *digest* (unless *force*), or in check mode what would be made (*would*, which says "forced" when an
    image exists). None: the action goes on. *result* is the cloud's ``result(image, digest, inputs, **fields)``;
    *extra* are more fields of both results (a value that is a pair gives the found and the planned value)."""

    def fields(which: int) -> dict[str, Any]:
        return {k: v[which] if isinstance(v, tuple) else v for k, v in extra.items()}

    if existing and not force:
        return result(
            existing,
            digest,
            inputs,
            changed=False,
            found=True,
            built=False,
            msg="image %s (%s) has the fingerprint %s: nothing to do"
            % (existing.get("name"), existing["id"], digest[:12]),
            **fields(0),
        )
    if check_mode:
        return result(None, digest, inputs, changed=True, found=False, built=False, msg=would, **fields(1))
    return None
