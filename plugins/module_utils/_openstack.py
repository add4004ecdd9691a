# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OpenStack Glance images made from a qemu target's disk, through openstacksdk.

The connection is made as the ``openstack.cloud`` collection makes it: ``openstack.connect`` with a named
cloud of ``clouds.yaml`` (``cloud``), or an ``auth`` dictionary and ``auth_type``, the ``OS_*`` environment
variables, and an ``image_endpoint`` override. The image API calls are plain REST calls on the SDK's image
proxy (so that the upload streams from the file in bounded chunks and the server's choice of upload path is
followed): create the image record, then either stage the data and import it (``glance-direct``, when the
server advertises it) or ``PUT`` it, wait until the image is ``active``, and compare Glance's
``os_hash_value`` with the hash of the bytes sent.

Images carry the properties ``bakery_fingerprint`` (the bake's inputs, the image options and the disk's
sha256), ``bakery_target`` and ``bakery_bake_id``; until the image is active, verified (and its checks
passed) it also carries ``bakery_temporary=true``, is private and unprotected: no lookup finds it, and the
bake's cleanup or the janitor delete it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils._cloud_image import (
    before_making,
    cleanup_result,
    publish_result,
    run_action,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    changed_inputs,
    digest_file,
    digest_value,
    fingerprint,
    new_bake_id,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    Selector,
    act,
    record,
)

try:
    import openstack
    import openstack.exceptions
    from keystoneauth1 import exceptions as ks_exceptions

    HAS_OPENSTACKSDK = True
    OPENSTACKSDK_ERROR = None
except ImportError:  # pragma: no cover - reported by the module
    HAS_OPENSTACKSDK = False
    OPENSTACKSDK_ERROR = traceback.format_exc()

FINGERPRINT_PROPERTY = "bakery_fingerprint"
BAKE_ID_PROPERTY = "bakery_bake_id"
TARGET_PROPERTY = "bakery_target"
TEMPORARY_PROPERTY = "bakery_temporary"
INPUT_PROPERTY_PREFIX = "bakery_in_"
BAKERY_PROPERTIES = (FINGERPRINT_PROPERTY, BAKE_ID_PROPERTY, TARGET_PROPERTY, TEMPORARY_PROPERTY)
DISK_FORMATS = ("qcow2", "raw")
VISIBILITIES = ("private", "shared", "community", "public")
IMPORT_METHODS = ("auto", "glance-direct", "put")
# image properties bakery knows by name (the others go in ``properties``)
NAMED_PROPERTIES = (
    "hw_firmware_type",
    "hw_machine_type",
    "hw_disk_bus",
    "hw_qemu_guest_agent",
    "os_distro",
    "os_version",
    "architecture",
)
# what makes an image different (its fingerprint): everything that ends up in Glance
IMAGE_OPTIONS = (
    "name",
    "disk_format",
    "container_format",
    "properties",
    "visibility",
    "tags",
    "protected",
    "members",
    "min_disk",
    "min_ram",
    *NAMED_PROPERTIES,
)
# image fields Glance owns: never a user property
RESERVED = frozenset(
    (
        "id name status visibility protected tags min_disk min_ram disk_format container_format owner size "
        "virtual_size checksum os_hash_algo os_hash_value created_at updated_at locations direct_url self file "
        "schema os_hidden stores"
    ).split()
)
RETRY_STATUS = (429, 500, 502, 503, 504)
# Glance's states of an image that will not become active any more
DEAD = ("killed", "deleted", "pending_delete", "deactivated")
# the connection options of a target and of the module (credentials are among them)
CONNECTION_OPTIONS = (
    "cloud",
    "auth",
    "auth_type",
    "region_name",
    "interface",
    "image_endpoint",
    "validate_certs",
    "ca_cert",
    "headers",
    "timeout",
    "retries",
    "retry_delay",
)
SECRET_OPTIONS = ("auth", "headers")


class OpenStackError(BakeryError):
    """A Glance call failed (``status`` is the HTTP status, 0 when there was no answer)."""

    def __init__(self, msg: str, status: int = 0, **details: Any) -> None:
        super().__init__(msg, **details)
        self.status = status


def _why(exc: Exception) -> str:
    """A message for an SDK or keystoneauth error, without the request's headers or body."""
    text = str(exc).strip() or type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text.splitlines()[0][:300])


def connect(params: Mapping[str, Any]) -> Any:
    """An ``openstack.connection.Connection`` as ``openstack.cloud`` makes one (clouds.yaml, OS_* variables)."""
    if not HAS_OPENSTACKSDK:
        raise BakeryError("the Python library openstacksdk is required (pip install openstacksdk)")
    kwargs: dict[str, Any] = {}
    if params.get("auth"):
        kwargs["auth"] = dict(params["auth"])
    for option, key in (
        ("auth_type", "auth_type"),
        ("region_name", "region_name"),
        ("interface", "interface"),
    ):
        if params.get(option):
            kwargs[key] = params[option]
    if params.get("image_endpoint"):
        kwargs["image_endpoint_override"] = params["image_endpoint"]
    if params.get("validate_certs") is not None:
        kwargs["verify"] = bool(params["validate_certs"])
    if params.get("ca_cert"):
        kwargs["cacert"] = params["ca_cert"]
    if params.get("timeout"):
        kwargs["api_timeout"] = int(params["timeout"])
    try:
        conn = openstack.connect(cloud=params.get("cloud") or None, **kwargs)
        if params.get("headers"):
            # a Glance behind a trusted proxy (or without Keystone) takes the identity from headers
            conn.session.additional_headers.update({str(k): str(v) for k, v in params["headers"].items()})
    except (openstack.exceptions.SDKException, ks_exceptions.ClientException) as exc:
        raise OpenStackError("cannot connect to OpenStack (%s): %s" % (describe(params), _why(exc))) from None
    return conn


def describe(params: Mapping[str, Any]) -> str:
    """Where a connection goes, for messages (no secret)."""
    if params.get("cloud"):
        where = "cloud %s" % params["cloud"]
    elif (params.get("auth") or {}).get("auth_url"):
        where = "auth_url %s" % params["auth"]["auth_url"]
    else:
        where = "auth from the OS_* variables"
    if params.get("image_endpoint"):
        where += ", image endpoint %s" % params["image_endpoint"]
    return where


class Glance:
    """The image API v2 on one connection: requests with retries, errors as :class:`OpenStackError`."""

    def __init__(self, conn: Any, retries: int = 5, retry_delay: float = 1.0, timeout: float = 1800) -> None:
        self.conn = conn
        self.retries = max(0, int(retries))
        self.retry_delay = float(retry_delay)
        self.timeout = float(timeout)
        self.created = False
        self.where = ""
        # tests inject faults here: called before every request with (method, path)
        self.before: Callable[[str, str], None] | None = None

    @property
    def proxy(self) -> Any:
        try:
            return self.conn.image
        except (openstack.exceptions.SDKException, ks_exceptions.ClientException) as exc:
            raise OpenStackError("cannot reach the image service: %s" % _why(exc)) from None

    def request(
        self,
        method: str,
        path: str,
        what: str,
        missing_ok: bool = False,
        retry: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One call; 429/5xx and connection failures are retried (only when *retry*: not for a streamed body)."""
        attempt = 0
        while True:
            try:
                if self.before is not None:
                    self.before(method, path)
                response = self.proxy.request(path, method, raise_exc=False, **kwargs)
            except ks_exceptions.ClientException as exc:
                if retry and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.retry_delay * 2 ** (attempt - 1))
                    continue
                raise OpenStackError("%s: %s" % (what, _why(exc))) from None
            status = response.status_code
            if status in RETRY_STATUS and retry and attempt < self.retries:
                attempt += 1
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            if status == 404 and missing_ok:
                return None
            if status >= 400:
                raise OpenStackError("%s: HTTP %d %s" % (what, status, _reason(response)), status=status)
            return response

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = self.request(method, path, what, **kwargs)
        if response is None:
            return None
        return response.json() if response.content else {}

    def images(self, filters: Mapping[str, str], what: str) -> list[dict[str, Any]]:
        """Every image the filters select (property filters are Glance's ``?name=value``), page by page."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = dict(filters, limit=100)
        while True:
            page = self.json("GET", "/images", what, params=params)
            found += page.get("images") or []
            following = page.get("next")
            if not following or not page.get("images"):
                return found
            params = dict(filters, limit=100, marker=page["images"][-1]["id"])

    def get(self, image_id: str) -> dict[str, Any] | None:
        return self.json("GET", "/images/%s" % image_id, "look up image %s" % image_id, missing_ok=True)

    def patch(self, image_id: str, ops: list[dict[str, Any]], what: str) -> dict[str, Any]:
        return self.json(
            "PATCH",
            "/images/%s" % image_id,
            what,
            data=json.dumps(ops),
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )

    def delete(self, image_id: str, settle: float = 120.0) -> None:
        """Delete an image; one whose import is still running is first given up to *settle* seconds to end:
        Glance accepts the DELETE at once, but its import task then still writes the data into the store,
        where nothing refers to it any more (an orphaned file no sweep can find). An import runs from the
        import call (Glance sets the image's ``os_glance_import_task`` lock then, before the status is
        ``importing``) until its task ends, well or not (the lock is dropped)."""
        image = self.get(image_id)
        if image is None:
            return
        deadline = time.monotonic() + settle
        while importing(image) and time.monotonic() < deadline:
            time.sleep(0.5)
            image = self.get(image_id)
            if image is None:
                return
        if image.get("protected"):
            self.patch(
                image_id, [{"op": "replace", "path": "/protected", "value": False}], "unprotect %s" % image_id
            )
        self.request("DELETE", "/images/%s" % image_id, "delete image %s" % image_id, missing_ok=True)

    def import_methods(self) -> list[str]:
        info = self.json("GET", "/info/import", "look up the import methods", missing_ok=True) or {}
        return list((info.get("import-methods") or {}).get("value") or [])


def importing(image: Mapping[str, Any]) -> bool:
    """Whether an import of the image is running (asked for, not ended)."""
    return image.get("status") == "importing" or bool(image.get("os_glance_import_task"))


def _reason(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        text = " ".join((response.text or "").split())
        return text[:300]
    if isinstance(body, Mapping):
        for value in body.values():
            if isinstance(value, Mapping) and value.get("message"):
                return str(value["message"])[:300]
        if body.get("message"):
            return str(body["message"])[:300]
    return json.dumps(body)[:300]


def properties_of(params: Mapping[str, Any]) -> dict[str, str]:
    """The image's own properties: the named ones and ``properties``, as strings (Glance stores strings)."""
    props: dict[str, str] = {}
    for key, value in (params.get("properties") or {}).items():
        key = str(key)
        if key in RESERVED or key.startswith("bakery_"):
            raise BakeryError("property %r is Glance's or bakery's own: it cannot be set in properties" % key)
        props[key] = _text(value)
    for key in NAMED_PROPERTIES:
        if params.get(key) not in (None, ""):
            value = params[key]
            if key == "hw_qemu_guest_agent" and isinstance(value, bool):
                value = "yes" if value else "no"
            props[key] = _text(value)
    return props


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def image_inputs(params: Mapping[str, Any], disk_sha256: str) -> dict[str, str]:
    inputs = {str(k): str(v) for k, v in (params.get("inputs") or {}).items()}
    inputs["options"] = digest_value({key: params.get(key) for key in IMAGE_OPTIONS})
    inputs["disk"] = disk_sha256
    return inputs


def image_summary(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not image:
        return None
    keys = (
        "id name status disk_format container_format size virtual_size checksum os_hash_algo os_hash_value "
        "visibility protected tags min_disk min_ram owner created_at updated_at"
    ).split()
    summary = {key: image.get(key) for key in keys}
    summary["properties"] = {
        key: value for key, value in image.items() if key not in RESERVED and isinstance(value, str)
    }
    return summary


def temporary(image: Mapping[str, Any]) -> bool:
    return str(image.get(TEMPORARY_PROPERTY, "")).lower() == "true"


def check_params(params: Mapping[str, Any]) -> None:
    """What Glance would refuse later, refused before any call."""
    if params.get("disk_format") and params["disk_format"] not in DISK_FORMATS:
        raise BakeryError(
            "disk_format must be one of %s, not %r" % (", ".join(DISK_FORMATS), params["disk_format"])
        )
    if params.get("visibility") and params["visibility"] not in VISIBILITIES:
        raise BakeryError(
            "visibility must be one of %s, not %r" % (", ".join(VISIBILITIES), params["visibility"])
        )
    if params.get("members") and params.get("visibility", "private") != "shared":
        raise BakeryError("members share the image with projects: set visibility: shared")
    for key in ("min_disk", "min_ram", "retries"):
        value = params.get(key)
        if value is not None and int(value) < 0:
            raise BakeryError("%s must be at least 0, not %r" % (key, value))
    for key in ("chunk_size_mb", "timeout"):
        value = params.get(key)
        if value is not None and int(value) < 1:
            raise BakeryError("%s must be at least 1, not %r" % (key, value))
    name = params.get("name")
    if name is not None and not 1 <= len(str(name)) <= 255:
        raise BakeryError("image name must be 1 to 255 characters")
    for tag in params.get("tags") or []:
        if not 1 <= len(str(tag)) <= 255:
            raise BakeryError("tag %r must be 1 to 255 characters" % tag)
    properties_of(params)


def _chunks(path: str, size: int, hasher: Any, counter: list[int]) -> Iterator[bytes]:
    """The file in chunks of *size* bytes (bounded memory), hashed and counted as they are sent."""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(size)
            if not block:
                return
            hasher.update(block)
            counter[0] += len(block)
            yield block


class Images:
    """The bake of one Glance image: find, upload, publish, cleanup; an unfinished image in an undo step."""

    def __init__(self, glance: Glance, params: Mapping[str, Any], check_mode: bool = False) -> None:
        self.glance = glance
        self.params = params
        self.check_mode = check_mode
        self.bake_id = params.get("bake_id") or new_bake_id()
        self.target = params.get("target") or ""
        self.deadline = time.monotonic() + float(params.get("timeout") or 1800)

    # -- finding
    def find(self, inputs: Mapping[str, str]) -> tuple[dict[str, Any] | None, list[str]]:
        """The newest active, final image with the fingerprint, and the inputs changed since the last image."""
        digest = fingerprint(inputs)
        found = self.glance.images(
            {FINGERPRINT_PROPERTY: digest}, "look for an image with the fingerprint %s" % digest[:12]
        )
        ready = sorted(
            (image for image in found if image.get("status") == "active" and not temporary(image)),
            key=lambda image: image.get("created_at") or "",
        )
        if ready:
            return ready[-1], []
        if not self.target:
            return None, sorted(inputs)
        earlier = [
            image
            for image in self.glance.images({TARGET_PROPERTY: self.target}, "look for earlier images")
            if image.get(FINGERPRINT_PROPERTY) and not temporary(image)
        ]
        if not earlier:
            return None, sorted(inputs)
        previous = max(earlier, key=lambda image: image.get("created_at") or "")
        old = {
            key[len(INPUT_PROPERTY_PREFIX) :]: value
            for key, value in previous.items()
            if key.startswith(INPUT_PROPERTY_PREFIX)
        }
        return None, changed_inputs(old, {key: value[:16] for key, value in inputs.items()})

    def result(
        self, image: Mapping[str, Any] | None, digest: str, inputs: Mapping[str, str], **extra: Any
    ) -> dict:
        out = {
            "image": image_summary(image),
            "fingerprint": digest,
            "inputs": dict(inputs),
            "bake_id": self.bake_id,
        }
        out.update(extra)
        return out

    # -- upload
    def upload(self) -> dict[str, Any]:
        """The image of the disk: found by fingerprint, or made (create, upload, wait, verify, publish)."""
        params = self.params
        disk = params.get("disk")
        if not disk or not os.path.isfile(disk):
            raise BakeryError("action=upload needs disk, an existing disk file (got %r)" % disk)
        inputs = image_inputs(params, params.get("disk_sha256") or digest_file(disk))
        digest = fingerprint(inputs)
        existing, changed = self.find(inputs)
        changed = ["forced"] if existing else changed
        would = "would upload %s as image %s (%s)" % (disk, params["name"], ", ".join(changed) or "new")
        done = before_making(
            self.result,
            existing,
            digest,
            inputs,
            params.get("force"),
            self.check_mode,
            would,
            changed_inputs=([], changed),
        )
        if done is not None:
            return done
        with Steps() as steps:
            image = self.create(steps, digest, inputs)
            upload = self.send(image["id"], disk)
            image = self.wait_active(image["id"])
            self.verify(image, upload)
            if params.get("publish", True):
                image = self.finalize(image)
        return self.result(
            image,
            digest,
            inputs,
            changed=True,
            found=False,
            built=True,
            changed_inputs=changed,
            upload=upload,
            msg="uploaded %s as image %s (%s)" % (disk, image.get("name"), image["id"]),
        )

    def create(self, steps: Steps, digest: str, inputs: Mapping[str, str]) -> dict[str, Any]:
        params = self.params
        body: dict[str, Any] = {
            "name": params["name"],
            "disk_format": params.get("disk_format") or "qcow2",
            "container_format": params.get("container_format") or "bare",
            # private and unprotected until final: nobody else sees it, the cleanup can delete it
            "visibility": "private",
            "protected": False,
            "tags": list(dict.fromkeys(str(tag) for tag in params.get("tags") or [])),
            "min_disk": int(params.get("min_disk") or 0),
            "min_ram": int(params.get("min_ram") or 0),
        }
        body.update(properties_of(params))
        body.update({INPUT_PROPERTY_PREFIX + key: value[:16] for key, value in inputs.items()})
        body.update(
            {
                FINGERPRINT_PROPERTY: digest,
                BAKE_ID_PROPERTY: self.bake_id,
                TEMPORARY_PROPERTY: "true",
            }
        )
        if self.target:
            body[TARGET_PROPERTY] = self.target
        image = steps.run(
            "create image %s" % params["name"],
            lambda: self.glance.json(
                "POST", "/images", "create image %s" % params["name"], json=body, retry=False
            ),
            undo=lambda made: self.glance.delete(made["id"]),
        )
        self.glance.created = True
        return image

    def send(self, image_id: str, disk: str) -> dict[str, Any]:
        """Stream the disk: staged and imported (glance-direct) when the server offers it, else PUT."""
        method = self.params.get("import_method") or "auto"
        offered = self.glance.import_methods()
        if method == "auto":
            method = "glance-direct" if "glance-direct" in offered else "put"
        elif method == "glance-direct" and "glance-direct" not in offered:
            raise BakeryError(
                "import_method glance-direct: the image service does not offer it (it offers %s)"
                % (", ".join(offered) or "no import method")
            )
        hasher = hashlib.sha512()
        counter = [0]
        chunk = int(self.params.get("chunk_size_mb") or 8) * 1024 * 1024
        started = time.monotonic()
        headers = {"Content-Type": "application/octet-stream"}
        data = _chunks(disk, chunk, hasher, counter)
        if method == "glance-direct":
            self.glance.request(
                "PUT",
                "/images/%s/stage" % image_id,
                "stage the data of image %s" % image_id,
                data=data,
                headers=headers,
                retry=False,
            )
            self.glance.request(
                "POST",
                "/images/%s/import" % image_id,
                "import image %s" % image_id,
                json={"method": {"name": "glance-direct"}},
                retry=False,
            )
        else:
            self.glance.request(
                "PUT",
                "/images/%s/file" % image_id,
                "upload the data of image %s" % image_id,
                data=data,
                headers=headers,
                retry=False,
            )
        return {
            "method": method,
            "bytes": counter[0],
            "sha512": hasher.hexdigest(),
            "seconds": round(time.monotonic() - started, 1),
            "disk": disk,
        }

    def wait_active(self, image_id: str) -> dict[str, Any]:
        """The image once it is active and its import has ended. Glance's import task saves the whole image
        again after it made it active (it reads the image, then writes every field back) and only then drops
        its lock (``os_glance_import_task``): a change made in between, such as the visibility, would be
        written over, and a member added then would be refused (only shared images have members)."""
        delay = 0.5
        while True:
            image = self.glance.get(image_id)
            if image is None:
                raise BakeryError("image %s disappeared while it was being made" % image_id)
            status = image.get("status")
            if status == "active" and not importing(image):
                return image
            failed = image.get("os_glance_failed_import")
            # an active image is only waited on until its import ends: a store that failed does not undo the
            # activation (an import that need not succeed in every store), and an active image was always taken
            if status != "active" and (status in DEAD or failed):
                raise BakeryError(
                    "image %s did not become active: status %s%s"
                    % (image_id, status, ", the import failed in store %s" % failed if failed else "")
                )
            if time.monotonic() > self.deadline:
                state = "active, its import not ended" if status == "active" else status
                raise BakeryError("image %s is still %s after the timeout" % (image_id, state))
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def verify(self, image: Mapping[str, Any], upload: Mapping[str, Any]) -> None:
        """Glance's hash of what it stored is the hash of the disk sent, and so is the size."""
        algo = image.get("os_hash_algo") or ""
        want = upload["sha512"]
        if algo != "sha512":
            if not algo or algo not in hashlib.algorithms_available:
                raise BakeryError(
                    "image %s has no hash bakery can check (os_hash_algo %r)" % (image["id"], algo or None)
                )
            hasher = hashlib.new(algo)
            with open(upload["disk"], "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
            want = hasher.hexdigest()
        if image.get("os_hash_value") != want:
            raise BakeryError(
                "image %s: Glance's %s of the stored data (%s) is not the disk's (%s): the upload was damaged"
                % (image["id"], algo, image.get("os_hash_value"), want)
            )
        if image.get("size") is not None and int(image["size"]) != int(upload["bytes"]):
            raise BakeryError(
                "image %s holds %s bytes, the disk has %s" % (image["id"], image.get("size"), upload["bytes"])
            )

    def finalize(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """Active and verified (and checked): final visibility, protection and members, then not temporary."""
        params = self.params
        image_id = image["id"]
        visibility = params.get("visibility") or "private"
        ops: list[dict[str, Any]] = []
        if image.get("visibility") != visibility:
            ops.append({"op": "replace", "path": "/visibility", "value": visibility})
        if ops:
            self.glance.patch(image_id, ops, "set the visibility of image %s" % image_id)
        members = [str(member) for member in params.get("members") or []]
        if members:
            listed = self.glance.json("GET", "/images/%s/members" % image_id, "list members of %s" % image_id)
            have = {member.get("member_id") for member in listed.get("members") or []}
            for member in members:
                if member not in have:
                    self.glance.json(
                        "POST",
                        "/images/%s/members" % image_id,
                        "share image %s with project %s" % (image_id, member),
                        json={"member": member},
                    )
        ops = [{"op": "remove", "path": "/" + TEMPORARY_PROPERTY}] if temporary(image) else []
        if params.get("protected") and not image.get("protected"):
            ops.append({"op": "replace", "path": "/protected", "value": True})
        if ops:
            return self.glance.patch(image_id, ops, "mark image %s final" % image_id)
        return dict(image)

    def publish(self) -> dict[str, Any]:
        """Make final the image this bake left temporary (``publish=false``) once its checks passed."""
        return publish_result(
            self.params.get("image"),
            self.bake_id,
            self.check_mode,
            self.glance.get,
            lambda image: image.get(BAKE_ID_PROPERTY),
            temporary,
            self.finalize,
            image_summary,
        )

    def cleanup(self) -> dict[str, Any]:
        """Delete every temporary image of the bake id (and target); the janitor's sweep does the same by age."""
        return cleanup_result(
            self.bake_id,
            self.target,
            lambda: sweep_images(self.glance, Selector(bake_id=self.bake_id), self.check_mode, self.target),
            describe(self.params),
            self.params.get("created", True),
            lambda e: "image %s (%s)" % (e["name"], e["id"]),
            "nothing: no temporary image was left",
        )

    def find_only(self) -> dict[str, Any]:
        disk = self.params.get("disk")
        if not disk or not os.path.isfile(disk):
            raise BakeryError("action=find needs disk, an existing disk file (got %r)" % disk)
        inputs = image_inputs(self.params, self.params.get("disk_sha256") or digest_file(disk))
        digest = fingerprint(inputs)
        existing, changed = self.find(inputs)
        return self.result(
            existing,
            digest,
            inputs,
            changed=False,
            found=existing is not None,
            built=False,
            changed_inputs=[] if existing else changed,
            msg="found image %s" % existing["id"]
            if existing
            else "no image has the fingerprint %s" % digest[:12],
        )


def sweep_images(
    glance: Glance, selector: Selector, check_mode: bool, target: str | None = None
) -> list[dict[str, Any]]:
    """Temporary images (``bakery_temporary=true``) the selector selects, deleted: an image whose upload was
    killed (queued, saving, importing) as well as an active one that was never verified or published."""
    filters = {TEMPORARY_PROPERTY: "true"}
    if selector.bake_id is not None:
        filters[BAKE_ID_PROPERTY] = selector.bake_id
    if target:
        filters[TARGET_PROPERTY] = target
    entries = []
    for image in glance.images(filters, "list temporary images"):
        if not temporary(image) or not selector.matches(image.get(BAKE_ID_PROPERTY), image.get("created_at")):
            continue
        entry = record(
            "openstack",
            "image",
            image["id"],
            name="%s (%s)" % (image.get("name"), image.get("status")),
            bake_id=image.get(BAKE_ID_PROPERTY),
            target=image.get(TARGET_PROPERTY),
            created=image.get("created_at"),
            location=glance.where,
        )
        entry["name"] = image.get("name") or image["id"]
        entries.append(act(entry, check_mode, lambda i=image["id"]: glance.delete(i)))
    return entries


def make_glance(params: Mapping[str, Any]) -> Glance:
    glance = Glance(
        connect(params),
        retries=int(params.get("retries") if params.get("retries") is not None else 5),
        retry_delay=float(params.get("retry_delay") if params.get("retry_delay") is not None else 1.0),
        timeout=float(params.get("timeout") or 1800),
    )
    glance.where = describe(params)
    return glance


def sweep(params: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    """The janitor's Glance sweep of one cloud."""
    return sweep_images(make_glance(params), selector, check_mode)


def preflight(params: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the credentials are accepted and the image service answers (a list of one image)."""
    try:
        glance = make_glance(dict(params, retries=1, retry_delay=0.5))
        glance.json("GET", "/images", "list images", params={"limit": 1})
        methods = glance.import_methods()
    except BakeryError as exc:
        return False, exc.msg
    return True, "the image service at %s answers (%s)" % (
        describe(params),
        "import methods: %s" % ", ".join(methods) if methods else "image data PUT",
    )


def run(params: Mapping[str, Any], check_mode: bool = False, glance: Glance | None = None) -> dict[str, Any]:
    """The module's entry point: one action of an image bake."""
    check_params(params)
    return run_action(
        params,
        lambda: glance if glance is not None else make_glance(params),
        lambda client: Images(client, params, check_mode),
    )
