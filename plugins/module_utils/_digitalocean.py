# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""DigitalOcean images, through pydo (the API) and boto3 (Spaces): custom images made from a qemu target's disk,
and snapshots of a droplet provisioned over SSH (instance bakes, :class:`Droplets`).

The disk is uploaded to a Spaces bucket (the S3 API, boto3's managed transfer: multipart, bounded memory) under
``bakery/<bake id>/<target>/``; DigitalOcean imports it from a presigned URL (``POST /v2/images``), the image is
transferred to the other ``regions`` (the image action ``transfer``), and the Spaces object is deleted in every
case once the import ended.

DigitalOcean tags are names only (``[a-zA-Z0-9_:-]``), so bakery's tags carry their value after a colon: the
image is found by the tag ``bakery-fingerprint:<sha256>`` (the bake's inputs, the image options and the disk's
sha256) and carries ``bakery-bake-id:<id>`` and ``bakery-target:<target>``. Until it is available, in its
regions and its checks passed, it also carries the tag ``bakery-temporary``: no lookup finds it, and the bake's
cleanup or the janitor delete it.

An instance bake adds a temporary SSH key (``POST /v2/account/keys``) and a droplet from the base image (a slug or an
id), both named ``bakery-<bake id>-<target>`` and the droplet tagged ``bakery-temporary`` and
``bakery-bake-id:<id>``; once provisioned the droplet is powered off (droplet action ``power_off``) and snapshotted
(action ``snapshot``) under that same temporary name, which the janitor recognises before the snapshot is tagged.
The snapshot is then tagged like a custom image, transferred, renamed to the image name and made final. The droplet
and the key go in every case; an unfinished snapshot goes when a step fails.
"""

from __future__ import annotations

import os
import re
import time
import traceback
import urllib.parse
from collections.abc import Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils import _instance
from ansible_collections.bakery.images.plugins.module_utils._cloud_image import (
    before_making,
    cleanup_result,
    publish_result,
    run_action,
)
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
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
    split_name,
)

try:
    import pydo
    from azure.core.exceptions import AzureError, HttpResponseError

    HAS_PYDO = True
    PYDO_ERROR = None
except ImportError:  # pragma: no cover - reported by the module
    HAS_PYDO = False
    PYDO_ERROR = traceback.format_exc()

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAS_BOTO3 = True
except ImportError:  # pragma: no cover - reported when Spaces is used
    HAS_BOTO3 = False

API_URL = "https://api.digitalocean.com"
FINGERPRINT_TAG = "bakery-fingerprint"
BAKE_ID_TAG = "bakery-bake-id"
TARGET_TAG = "bakery-target"
TEMPORARY_TAG = "bakery-temporary"
BAKERY_TAG_PREFIX = "bakery-"
# the key prefix of bakery's uploads in a Spaces bucket: bakery/<bake id>/<target>/<file>
SPACES_PREFIX = "bakery/"
TAG_RE = re.compile(r"^[a-zA-Z0-9_:-]{1,255}$")
DISK_FORMATS = ("qcow2", "raw")
# the distributions POST /v2/images takes (the OpenAPI specification's enum of ``distribution``)
DISTRIBUTIONS = (
    "Arch Linux",
    "CentOS",
    "CoreOS",
    "Debian",
    "Fedora",
    "Fedora Atomic",
    "FreeBSD",
    "Gentoo",
    "openSUSE",
    "RancherOS",
    "Rocky Linux",
    "Ubuntu",
    "Unknown",
)
# what makes an image different (its fingerprint): everything that ends up in DigitalOcean
IMAGE_OPTIONS = ("name", "description", "distribution", "disk_format", "region", "regions", "tags")
# what makes a snapshot of an instance bake different (with the base image's id and the plan's inputs)
INSTANCE_OPTIONS = ("name", "description", "region", "regions", "tags", "size", "base_image")
# region and size slugs as DigitalOcean writes them (nyc3, s-1vcpu-1gb): the specification's examples; a slug of
# other characters is refused before any call
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# a droplet's name (the specification's pattern of droplet_single_create's name)
DROPLET_NAME_RE = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
# the connection options of a target and of the module (credentials are among them)
CONNECTION_OPTIONS = (
    "token",
    "api_url",
    "spaces_bucket",
    "spaces_region",
    "spaces_endpoint",
    "spaces_access_key",
    "spaces_secret_key",
    "timeout",
    "retries",
    "retry_delay",
)
SECRET_OPTIONS = ("token", "spaces_access_key", "spaces_secret_key")
TOKEN_VARIABLES = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "DO_API_TOKEN")
SPACES_KEY_VARIABLES = ("SPACES_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
SPACES_SECRET_VARIABLES = ("SPACES_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")


class DigitalOceanError(BakeryError):
    """A DigitalOcean or Spaces call failed (``status`` is the HTTP status, 0 when there was no answer)."""

    def __init__(self, msg: str, status: int = 0, **details: Any) -> None:
        super().__init__(msg, **details)
        self.status = status


def tag(name: str, value: str) -> str:
    """A bakery tag with a value (``bakery-bake-id:<id>``); characters a tag cannot hold become ``-``."""
    return ("%s:%s" % (name, re.sub(r"[^a-zA-Z0-9_:-]", "-", value)))[:255]


def tag_value(tags: list[str] | None, name: str) -> str | None:
    for item in tags or []:
        if item.startswith(name + ":"):
            return item[len(name) + 1 :]
    return None


def temporary(image: Mapping[str, Any]) -> bool:
    return TEMPORARY_TAG in (image.get("tags") or [])


def _first_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def environment_secrets() -> set[str]:
    """The token and Spaces keys the environment holds (the module masks them as it masks its no_log options)."""
    names = TOKEN_VARIABLES + SPACES_KEY_VARIABLES + SPACES_SECRET_VARIABLES
    return {os.environ[name] for name in names if len(os.environ.get(name) or "") > 3}


def _why(exc: Exception) -> str:
    """A message for a pydo/azure-core or botocore error, without the request's headers."""
    if HAS_PYDO and isinstance(exc, HttpResponseError) and exc.response is not None:
        status = exc.response.status_code
        try:
            body = exc.response.json()
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, Mapping) else None
        return "HTTP %s %s" % (status, str(message or exc.reason or "")[:300])
    text = str(exc).strip() or type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text.splitlines()[0][:300])


def _status(exc: Exception) -> int:
    if HAS_PYDO and isinstance(exc, HttpResponseError) and exc.response is not None:
        return int(exc.response.status_code)
    if HAS_BOTO3 and isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def describe(params: Mapping[str, Any]) -> str:
    """Where the calls go, for messages (no secret)."""
    where = "DigitalOcean API %s" % (params.get("api_url") or API_URL)
    if params.get("spaces_bucket"):
        where += ", Spaces bucket %s" % params["spaces_bucket"]
    return where


class DigitalOcean:
    """The DigitalOcean API (pydo) and a Spaces bucket (boto3); every call through :meth:`call`."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        if not HAS_PYDO:
            raise BakeryError("the Python library pydo is required (pip install pydo)")
        token = params.get("token") or _first_env(TOKEN_VARIABLES)
        if not token:
            raise BakeryError(
                "no DigitalOcean API token: give token or set %s" % " or ".join(TOKEN_VARIABLES)
            )
        self.params = params
        self.retries = max(0, int(params.get("retries") if params.get("retries") is not None else 5))
        self.retry_delay = float(params.get("retry_delay") if params.get("retry_delay") is not None else 1.0)
        self.timeout = float(params.get("timeout") or 1800)
        # azure-core's retry policy (pydo's transport) retries 429 and 5xx with backoff and Retry-After
        self.client = pydo.Client(
            token,
            endpoint=(params.get("api_url") or API_URL).rstrip("/"),
            timeout=int(min(self.timeout, 300)),
            retry_total=self.retries,
            retry_backoff_factor=self.retry_delay,
        )
        # azure-core refuses to send a bearer token over plain HTTP; an http:// API URL on the loopback (a local
        # stand-in or proxy) is allowed, any other must be https://
        endpoint = urllib.parse.urlsplit(params.get("api_url") or API_URL)
        self.plain_http = endpoint.scheme == "http" and endpoint.hostname in ("127.0.0.1", "::1", "localhost")
        self.where = describe(params)
        self.created = False
        self._spaces: Any = None
        # tests inject faults here: called before every call with what it does
        self.before: Callable[[str], None] | None = None

    def call(
        self, what: str, function: Callable[..., Any], *args: Any, missing_ok: bool = False, **kwargs: Any
    ) -> Any:
        """One API or Spaces call; its failure as :class:`DigitalOceanError` naming *what*."""
        try:
            if self.before is not None:
                self.before(what)
            return function(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - pydo, azure-core and botocore errors, mapped once here
            if not _known(exc):
                raise
            status = _status(exc)
            if status == 404 and missing_ok:
                return None
            raise DigitalOceanError("%s: %s" % (what, _why(exc)), status=status) from None

    # -- the API
    def api(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One call of a pydo operation."""
        if self.plain_http:
            kwargs["enforce_https"] = False
        return self.call(what, function, *args, **kwargs)

    def images(self, tag_name: str, what: str) -> list[dict[str, Any]]:
        """Every image with the tag, page by page."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.api(what, self.client.images.list, tag_name=tag_name, per_page=200, page=page)
            found += answer.get("images") or []
            pages = (answer.get("links") or {}).get("pages") or {}
            if not pages.get("next") or not answer.get("images"):
                return found
            page += 1

    def get(self, image_id: Any) -> dict[str, Any] | None:
        answer = self.api("look up image %s" % image_id, self.client.images.get, image_id, missing_ok=True)
        return answer.get("image") if answer else None

    def delete(self, image_id: Any) -> None:
        self.api("delete image %s" % image_id, self.client.images.delete, int(image_id), missing_ok=True)

    def untag(self, tag_name: str, image_id: Any) -> None:
        self.api(
            "remove the tag %s from image %s" % (tag_name, image_id),
            self.client.tags.unassign_resources,
            tag_name,
            {"resources": [{"resource_id": str(image_id), "resource_type": "image"}]},
        )

    def pages(self, what: str, function: Callable[..., Any], key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item of a paged list operation (its answer's *key*)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.api(what, function, per_page=200, page=page, **kwargs)
            found += answer.get(key) or []
            pages = (answer.get("links") or {}).get("pages") or {}
            if not pages.get("next") or not answer.get(key):
                return found
            page += 1

    def delete_droplet(self, droplet_id: Any) -> None:
        self.api(
            "delete droplet %s" % droplet_id, self.client.droplets.destroy, int(droplet_id), missing_ok=True
        )

    def delete_key(self, key_id: Any) -> None:
        self.api("delete SSH key %s" % key_id, self.client.ssh_keys.delete, int(key_id), missing_ok=True)

    def ensure_tag(self, tag_name: str) -> None:
        """A tag exists before it is assigned to an image (a droplet's or an import's tags are made with it)."""
        try:
            self.api("create the tag %s" % tag_name, self.client.tags.create, {"name": tag_name})
        except DigitalOceanError as exc:
            if exc.status not in (409, 422):  # it exists already
                raise

    def retag(self, tag_name: str, image_id: Any) -> None:
        self.ensure_tag(tag_name)
        self.api(
            "tag image %s with %s" % (image_id, tag_name),
            self.client.tags.assign_resources,
            tag_name,
            {"resources": [{"resource_id": str(image_id), "resource_type": "image"}]},
        )

    # -- Spaces
    @property
    def spaces(self) -> Any:
        if self._spaces is None:
            if not HAS_BOTO3:
                raise BakeryError("the Python library boto3 is required for Spaces (pip install boto3)")
            params = self.params
            region = params.get("spaces_region") or params.get("region") or "nyc3"
            access = params.get("spaces_access_key") or _first_env(SPACES_KEY_VARIABLES)
            secret = params.get("spaces_secret_key") or _first_env(SPACES_SECRET_VARIABLES)
            if not access or not secret:
                raise BakeryError(
                    "no Spaces access key: give spaces_access_key and spaces_secret_key or set %s and %s"
                    % (SPACES_KEY_VARIABLES[0], SPACES_SECRET_VARIABLES[0])
                )
            self._spaces = boto3.session.Session().client(
                "s3",
                region_name=region,
                endpoint_url=params.get("spaces_endpoint") or "https://%s.digitaloceanspaces.com" % region,
                aws_access_key_id=access,
                aws_secret_access_key=secret,
                config=botocore.config.Config(
                    retries={"max_attempts": self.retries + 1, "mode": "standard"},
                    connect_timeout=30,
                    read_timeout=int(min(self.timeout, 300)),
                    s3={"addressing_style": "path"},
                ),
            )
        return self._spaces

    def spaces_objects(self, prefix: str, what: str) -> list[dict[str, Any]]:
        bucket = self.params["spaces_bucket"]
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self.call(what, self.spaces.list_objects_v2, **kwargs)
            found += page.get("Contents") or []
            if not page.get("IsTruncated"):
                return found
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def delete_object(self, key: str) -> None:
        self.call(
            "delete Spaces object %s" % key,
            self.spaces.delete_object,
            Bucket=self.params["spaces_bucket"],
            Key=key,
        )


def _known(exc: Exception) -> bool:
    if HAS_PYDO and isinstance(exc, AzureError):
        return True
    return HAS_BOTO3 and isinstance(exc, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError))


def user_tags(params: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(str(item) for item in params.get("tags") or []))


def check_params(params: Mapping[str, Any]) -> None:
    """What DigitalOcean would refuse later, refused before any call."""
    if params.get("disk_format") and params["disk_format"] not in DISK_FORMATS:
        raise BakeryError(
            "disk_format must be one of %s, not %r" % (", ".join(DISK_FORMATS), params["disk_format"])
        )
    if params.get("distribution") and params["distribution"] not in DISTRIBUTIONS:
        raise BakeryError(
            "distribution must be one of %s, not %r" % (", ".join(DISTRIBUTIONS), params["distribution"])
        )
    for item in user_tags(params):
        if not TAG_RE.match(item):
            raise BakeryError(
                "tag %r: a DigitalOcean tag has 1 to 255 letters, digits, '_', ':' or '-'" % item
            )
        if item.startswith(BAKERY_TAG_PREFIX):
            raise BakeryError("tag %r: tags starting with bakery- are bakery's own" % item)
    for key in ("retries",):
        value = params.get(key)
        if value is not None and int(value) < 0:
            raise BakeryError("%s must be at least 0, not %r" % (key, value))
    if params.get("timeout") is not None and int(params["timeout"]) < 1:
        raise BakeryError("timeout must be at least 1, not %r" % params["timeout"])
    for key in ("region", "size"):
        value = params.get(key)
        if value and not SLUG_RE.match(str(value)):
            raise BakeryError("%s %r is not a DigitalOcean slug (such as nyc3, s-1vcpu-1gb)" % (key, value))
    for value in params.get("regions") or []:
        if not SLUG_RE.match(str(value)):
            raise BakeryError("regions: %r is not a DigitalOcean region slug (such as ams3)" % value)
    if params.get("base_image") is not None and not str(params["base_image"]).strip():
        raise BakeryError("base_image must name an image (a slug such as debian-12-x64, or an id)")
    name = params.get("name")
    if name is not None and not 1 <= len(str(name)) <= 255:
        raise BakeryError("image name must be 1 to 255 characters")
    if params.get("description") is not None and len(str(params["description"])) > 140:
        raise BakeryError("description must be at most 140 characters")


def image_inputs(params: Mapping[str, Any], disk_sha256: str) -> dict[str, str]:
    inputs = {str(k): str(v) for k, v in (params.get("inputs") or {}).items()}
    inputs["options"] = digest_value({key: params.get(key) for key in IMAGE_OPTIONS})
    inputs["disk"] = disk_sha256
    return inputs


def image_summary(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not image:
        return None
    keys = (
        "id name distribution description regions status size_gigabytes min_disk_size tags type created_at "
        "error_message"
    ).split()
    return {key: image.get(key) for key in keys}


class Images:
    """The bake of one custom image: find, upload, publish, cleanup; an unfinished image in an undo step."""

    def __init__(self, do: DigitalOcean, params: Mapping[str, Any], check_mode: bool = False) -> None:
        self.do = do
        self.params = params
        self.check_mode = check_mode
        self.bake_id = params.get("bake_id") or new_bake_id()
        self.target = params.get("target") or ""
        self.deadline = time.monotonic() + float(params.get("timeout") or 1800)

    def find(self, digest: str) -> dict[str, Any] | None:
        """The newest available, final image with the fingerprint tag."""
        found = self.do.images(
            tag(FINGERPRINT_TAG, digest), "look for an image with the fingerprint %s" % digest[:12]
        )
        ready = sorted(
            (image for image in found if image.get("status") == "available" and not temporary(image)),
            key=lambda image: image.get("created_at") or "",
        )
        return ready[-1] if ready else None

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

    def _disk_inputs(self, action: str) -> tuple[str, dict[str, str], str]:
        disk = self.params.get("disk")
        if not disk or not os.path.isfile(disk):
            raise BakeryError("action=%s needs disk, an existing disk file (got %r)" % (action, disk))
        inputs = image_inputs(self.params, self.params.get("disk_sha256") or digest_file(disk))
        return disk, inputs, fingerprint(inputs)

    def find_only(self) -> dict[str, Any]:
        disk, inputs, digest = self._disk_inputs("find")
        existing = self.find(digest)
        return self.result(
            existing,
            digest,
            inputs,
            changed=False,
            found=existing is not None,
            built=False,
            msg="found image %s" % existing["id"]
            if existing
            else "no image has the fingerprint %s" % digest[:12],
        )

    def upload(self) -> dict[str, Any]:
        """The image of the disk: found by fingerprint, or made (Spaces upload, import, transfer, publish)."""
        params = self.params
        disk, inputs, digest = self._disk_inputs("upload")
        if not params.get("region"):
            raise BakeryError("action=upload needs region, where the image is imported")
        if not params.get("spaces_bucket"):
            raise BakeryError("action=upload needs spaces_bucket, the Spaces bucket the disk is uploaded to")
        existing = self.find(digest)
        would = "would upload %s as image %s%s" % (disk, params["name"], " (forced)" if existing else "")
        done = before_making(
            self.result, existing, digest, inputs, params.get("force"), self.check_mode, would
        )
        if done is not None:
            return done
        started = time.monotonic()
        with Steps() as steps:
            key = self.put_disk(steps, disk)
            image = self.create(steps, key, digest)
            image = self.wait_available(image["id"])
            # imported: the upload goes now (a failure to delete it fails the bake, whose cleanup retries)
            steps.run("delete the upload %s" % key, lambda: self.do.delete_object(key))
            image = self.transfer(image)
            if params.get("publish", True):
                image = self.finalize(image)
        return self.result(
            image,
            digest,
            inputs,
            changed=True,
            found=False,
            built=True,
            upload={
                "bucket": params["spaces_bucket"],
                "key": key,
                "bytes": os.path.getsize(disk),
                "seconds": round(time.monotonic() - started, 1),
            },
            msg="imported %s as image %s (%s)" % (disk, image.get("name"), image["id"]),
        )

    def put_disk(self, steps: Steps, disk: str) -> str:
        """The disk in the Spaces bucket (removed again when a later step fails)."""
        key = "%s%s/%s/%s" % (SPACES_PREFIX, self.bake_id, self.target or "image", os.path.basename(disk))
        bucket = self.params["spaces_bucket"]
        self.do.created = True
        steps.run(
            "upload %s to Spaces" % disk,
            lambda: self.do.call(
                "upload %s to Spaces bucket %s" % (disk, bucket),
                self.do.spaces.upload_file,
                disk,
                bucket,
                key,
                ExtraArgs={"ContentType": "application/octet-stream", "ACL": "private"},
            ),
            undo=lambda _made: self.do.delete_object(key),
        )
        return key

    def create(self, steps: Steps, key: str, digest: str) -> dict[str, Any]:
        params = self.params
        url = self.do.call(
            "presign the Spaces object %s" % key,
            self.do.spaces.generate_presigned_url,
            "get_object",
            Params={"Bucket": params["spaces_bucket"], "Key": key},
            ExpiresIn=int(self.do.timeout),
        )
        tags = user_tags(params) + [
            tag(FINGERPRINT_TAG, digest),
            tag(BAKE_ID_TAG, self.bake_id),
            TEMPORARY_TAG,
        ]
        if self.target:
            tags.append(tag(TARGET_TAG, self.target))
        body: dict[str, Any] = {
            "name": params["name"],
            "url": url,
            "region": params["region"],
            "distribution": params.get("distribution") or "Unknown",
            "tags": tags,
        }
        if params.get("description"):
            body["description"] = params["description"]
        answer = steps.run(
            "import image %s" % params["name"],
            # not retried: a second POST would import a second image
            lambda: self.do.api(
                "import image %s" % params["name"], self.do.client.images.create_custom, body, retry_total=0
            ),
            undo=lambda made: self.do.delete(made["image"]["id"]),
        )
        return answer["image"]

    def wait(self, what: str, poll: Callable[[], tuple[bool, str]]) -> None:
        delay = 0.25
        while True:
            done, state = poll()
            if done:
                return
            if time.monotonic() > self.deadline:
                raise BakeryError("%s: still %s after the timeout" % (what, state))
            time.sleep(delay)
            delay = min(delay * 1.5, 10.0)

    def wait_available(self, image_id: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def poll() -> tuple[bool, str]:
            image = self.do.get(image_id)
            if image is None:
                raise BakeryError("image %s disappeared while it was imported" % image_id)
            if image.get("error_message"):
                raise BakeryError("the import of image %s failed: %s" % (image_id, image["error_message"]))
            if image.get("status") in ("deleted", "retired"):
                raise BakeryError("image %s is %s: the import failed" % (image_id, image["status"]))
            seen["image"] = image
            return image.get("status") == "available", str(image.get("status"))

        self.wait("import of image %s" % image_id, poll)
        return seen["image"]

    def transfer(self, image: dict[str, Any]) -> dict[str, Any]:
        """The image transferred to each of ``regions`` it is not in yet, one transfer action after another."""
        image_id = image["id"]
        for region in self.params.get("regions") or []:
            if region in (image.get("regions") or []):
                continue
            action = self.do.api(
                "transfer image %s to %s" % (image_id, region),
                self.do.client.image_actions.post,
                image_id,
                {"type": "transfer", "region": region},
            )["action"]

            def poll(action_id: Any = action["id"], region: str = region) -> tuple[bool, str]:
                state = self.do.api(
                    "look up the transfer of image %s" % image_id,
                    self.do.client.image_actions.get,
                    image_id,
                    action_id,
                )["action"]
                if state.get("status") == "errored":
                    raise BakeryError("the transfer of image %s to %s failed" % (image_id, region))
                return state.get("status") == "completed", str(state.get("status"))

            self.wait("transfer of image %s to %s" % (image_id, region), poll)
        return self.do.get(image_id) or image

    def finalize(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """Available, in its regions (and checked): the tag bakery-temporary goes."""
        name = self.params.get("name")
        renamed = False
        if name and image.get("name") != name:
            # a snapshot's temporary name (the janitor's mark) becomes the image's name, with its description
            body = {"name": name}
            if self.params.get("description"):
                body["description"] = self.params["description"]
            self.do.api("rename image %s" % image["id"], self.do.client.images.update, image["id"], body)
            renamed = True
        if temporary(image):
            self.do.untag(TEMPORARY_TAG, image["id"])
            renamed = True
        return (self.do.get(image["id"]) or dict(image)) if renamed else dict(image)

    def publish(self) -> dict[str, Any]:
        """Make final the image this bake left temporary (``publish=false``) once its checks passed."""
        return publish_result(
            self.params.get("image"),
            self.bake_id,
            self.check_mode,
            self.do.get,
            lambda image: tag_value(image.get("tags"), BAKE_ID_TAG),
            temporary,
            self.finalize,
            image_summary,
        )

    def cleanup(self) -> dict[str, Any]:
        """Delete every temporary image and Spaces upload of the bake id (and target)."""
        return cleanup_result(
            self.bake_id,
            self.target,
            lambda: sweep_all(self.do, Selector(bake_id=self.bake_id), self.check_mode, self.target),
            self.do.where,
            self.params.get("created", True),
            lambda e: "%s %s" % (e["kind"], e["name"]),
            "nothing: no temporary resource was left",
        )


def temporary_name(bake_id: str, target: str) -> str:
    """The name of an instance bake's droplet, SSH key and unfinished snapshot: ``bakery-<bake id>-<target>``."""
    name = "bakery-%s-%s" % (bake_id, re.sub(r"[^a-zA-Z0-9.-]", "-", target or "image"))
    return name[:255].rstrip("-.") or "bakery"


def droplet_host(droplet: Mapping[str, Any]) -> str | None:
    for network in (droplet.get("networks") or {}).get("v4") or []:
        if network.get("type") == "public":
            return network.get("ip_address")
    return None


class Droplets(Images):
    """An instance bake: the image found by fingerprint, else a droplet from the base image with a temporary SSH key
    (``launch``), provisioned by the bake, then powered off and snapshotted (``capture``)."""

    def __init__(self, do: DigitalOcean, params: Mapping[str, Any], check_mode: bool = False) -> None:
        super().__init__(do, params, check_mode)
        self.name = temporary_name(self.bake_id, self.target)
        self.key_path = os.path.join(params.get("ssh_key_dir") or "/tmp", self.name)

    def base_image(self) -> dict[str, Any]:
        wanted = self.params.get("base_image")
        if not wanted:
            raise BakeryError("action=launch needs base_image (a slug such as debian-12-x64, or an image id)")
        lookup: Any = int(wanted) if str(wanted).isdigit() else str(wanted)
        answer = self.do.api(
            "look up base image %s" % wanted, self.do.client.images.get, lookup, missing_ok=True
        )
        if not answer or not answer.get("image"):
            raise BakeryError("base image %s does not exist (or is not visible to this token)" % wanted)
        image = answer["image"]
        if image.get("status") not in (None, "available"):
            raise BakeryError("base image %s is %s, not available" % (wanted, image.get("status")))
        region = self.params.get("region")
        if region and image.get("regions") and region not in image["regions"]:
            raise BakeryError(
                "base image %s is not in region %s (it is in %s)"
                % (wanted, region, ", ".join(image["regions"]))
            )
        return image

    def instance_inputs(self, base: Mapping[str, Any]) -> dict[str, str]:
        inputs = {str(k): str(v) for k, v in (self.params.get("inputs") or {}).items()}
        inputs["options"] = digest_value({key: self.params.get(key) for key in INSTANCE_OPTIONS})
        inputs["base_image"] = str(base["id"])
        return inputs

    def launch(self) -> dict[str, Any]:
        """The image found by fingerprint; else a droplet of the base image that answers SSH (the builder)."""
        params = self.params
        for key in ("region", "size"):
            if not params.get(key):
                raise BakeryError("action=launch needs %s" % key)
        base = self.base_image()
        inputs = self.instance_inputs(base)
        digest = fingerprint(inputs)
        existing = self.find(digest)
        would = "would start a droplet of %s and snapshot it as image %s%s" % (
            params["base_image"],
            params["name"],
            " (forced)" if existing else "",
        )
        done = before_making(
            self.result, existing, digest, inputs, params.get("force"), self.check_mode, would
        )
        if done is not None:
            return done
        with Steps() as steps:
            public_key = _instance.new_ssh_key(os.path.dirname(self.key_path), self.name)[1]
            steps.add_undo("remove the SSH key file", lambda: _instance.remove_key(self.key_path))
            self.do.created = True
            key = steps.run(
                "add the temporary SSH key",
                lambda: self.do.api(
                    "add the SSH key %s" % self.name,
                    self.do.client.ssh_keys.create,
                    {"name": self.name, "public_key": public_key},
                )["ssh_key"],
                undo=lambda made: self.do.delete_key(made["id"]),
            )
            # registered before the create: a create that failed after making the droplet leaves nothing
            steps.add_undo("delete the droplet", self.delete_droplets)
            body = {
                "name": self.name,
                "region": params["region"],
                "size": params["size"],
                "image": base.get("slug") or base["id"],
                "ssh_keys": [key["id"]],
                "tags": [TEMPORARY_TAG, tag(BAKE_ID_TAG, self.bake_id)]
                + ([tag(TARGET_TAG, self.target)] if self.target else []),
            }
            droplet = self.do.api(
                "create droplet %s" % self.name, self.do.client.droplets.create, body, retry_total=0
            )["droplet"]
            droplet = self.wait_droplet(droplet["id"])
            host = droplet_host(droplet)
            port = int(params.get("ssh_port") or 22)
            deadline = min(self.deadline, time.monotonic() + float(params.get("ssh_timeout") or 300))
            _instance.wait_ssh(str(host), port, deadline, "droplet %s" % self.name)
        return self.result(
            None,
            digest,
            inputs,
            changed=True,
            found=False,
            built=False,
            changed_inputs=["forced"] if existing else [],
            base_image={"id": base["id"], "slug": base.get("slug"), "name": base.get("name")},
            droplet={"id": droplet["id"], "name": self.name, "host": host, "region": params["region"]},
            key={"id": key["id"], "fingerprint": key.get("fingerprint")},
            public_key=public_key,
            builder=_instance.connection(
                str(host), port, params.get("ssh_user") or "root", self.key_path, params.get("python")
            ),
            msg="droplet %s (%s) runs at %s" % (self.name, droplet["id"], host),
        )

    def wait_droplet(self, droplet_id: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def poll() -> tuple[bool, str]:
            answer = self.do.api(
                "look up droplet %s" % droplet_id, self.do.client.droplets.get, droplet_id, missing_ok=True
            )
            if not answer:
                raise BakeryError("droplet %s disappeared while it started" % droplet_id)
            seen["droplet"] = droplet = answer["droplet"]
            return droplet.get("status") == "active" and bool(droplet_host(droplet)), str(
                droplet.get("status")
            )

        self.wait("start of droplet %s" % droplet_id, poll)
        return seen["droplet"]

    def droplet_action(self, droplet_id: Any, body: dict[str, Any]) -> None:
        """A droplet action, waited for until completed."""
        what = "%s droplet %s" % (body["type"].replace("_", " "), droplet_id)
        action = self.do.api(what, self.do.client.droplet_actions.post, droplet_id, body)["action"]

        def poll() -> tuple[bool, str]:
            state = self.do.api(
                "look up the action of " + what, self.do.client.droplet_actions.get, droplet_id, action["id"]
            )["action"]
            if state.get("status") == "errored":
                raise BakeryError("%s: the action failed" % what)
            return state.get("status") == "completed", str(state.get("status"))

        self.wait(what, poll)

    def delete_droplets(self) -> None:
        """The droplets of this bake and target (by tag: also one whose create failed after making it)."""
        for droplet in self.do.pages(
            "list the droplets of bake %s" % self.bake_id,
            self.do.client.droplets.list,
            "droplets",
            tag_name=tag(BAKE_ID_TAG, self.bake_id),
        ):
            if droplet.get("name") == self.name:
                self.do.delete_droplet(droplet["id"])

    def delete_snapshots(self) -> None:
        """The unfinished snapshots of this bake and target (by their temporary name)."""
        for snapshot in self.do.pages(
            "list droplet snapshots", self.do.client.snapshots.list, "snapshots", resource_type="droplet"
        ):
            if snapshot.get("name") == self.name:
                self.do.delete(snapshot["id"])

    def capture(self) -> dict[str, Any]:
        """Power the droplet off, snapshot it, tag and transfer the snapshot; the droplet and key go in any case."""
        params = self.params
        droplet_id = params.get("droplet")
        if not droplet_id:
            raise BakeryError("action=capture needs droplet (the id launch returned)")
        inputs = {str(k): str(v) for k, v in (params.get("inputs") or {}).items()}
        digest = fingerprint(inputs)
        if self.check_mode:
            return self.result(
                None, digest, inputs, changed=True, found=False, built=False, msg="would snapshot"
            )
        self.do.created = True
        with Steps() as steps:
            steps.add_undo(
                "remove the SSH key file", lambda: _instance.remove_key(self.key_path), always=True
            )
            if params.get("ssh_key_id"):
                steps.add_undo(
                    "delete the SSH key", lambda: self.do.delete_key(params["ssh_key_id"]), always=True
                )
            steps.add_undo("delete the droplet", lambda: self.do.delete_droplet(droplet_id), always=True)
            steps.run("power off", lambda: self.droplet_action(droplet_id, {"type": "power_off"}))
            # registered before the action: a snapshot the failure interrupted goes too
            steps.add_undo("delete the unfinished snapshot", self.delete_snapshots)
            steps.run(
                "snapshot", lambda: self.droplet_action(droplet_id, {"type": "snapshot", "name": self.name})
            )
            found = [
                item
                for item in self.do.pages(
                    "list the snapshots of droplet %s" % droplet_id,
                    self.do.client.droplets.list_snapshots,
                    "snapshots",
                    droplet_id=droplet_id,
                )
                if item.get("name") == self.name
            ]
            if not found:
                raise BakeryError(
                    "droplet %s has no snapshot %s after the snapshot action" % (droplet_id, self.name)
                )
            image_id = found[-1]["id"]
            for name in (
                user_tags(params)
                + [
                    tag(FINGERPRINT_TAG, digest),
                    tag(BAKE_ID_TAG, self.bake_id),
                    TEMPORARY_TAG,
                ]
                + ([tag(TARGET_TAG, self.target)] if self.target else [])
            ):
                self.do.retag(name, image_id)
            image = self.do.get(image_id)
            if image is None:
                raise BakeryError("snapshot %s of droplet %s disappeared" % (image_id, droplet_id))
            image = self.transfer(image)
            if params.get("publish", True):
                image = self.finalize(image)
        result = self.result(
            image,
            digest,
            inputs,
            changed=True,
            found=False,
            built=True,
            msg="snapshot %s (%s) of droplet %s" % (image.get("name"), image["id"], droplet_id),
        )
        if steps.undo_errors:
            result["warnings"] = ["could not remove a temporary resource: %s" % e for e in steps.undo_errors]
        return result

    def cleanup(self) -> dict[str, Any]:
        """Delete every temporary image, upload, droplet, SSH key and unfinished snapshot of the bake id (and
        target); the SSH key file too."""
        _instance.remove_key(self.key_path)
        return super().cleanup()


def sweep_images(
    do: DigitalOcean, selector: Selector, check_mode: bool, target: str | None = None
) -> list[dict[str, Any]]:
    """Temporary images (tag ``bakery-temporary``) the selector selects, deleted: an import a killed bake left
    (NEW) as well as an available image that was never transferred, checked or published."""
    entries = []
    for image in do.images(TEMPORARY_TAG, "list temporary images"):
        tags = image.get("tags") or []
        bake_id = tag_value(tags, BAKE_ID_TAG)
        if not temporary(image) or not selector.matches(bake_id, image.get("created_at")):
            continue
        if target and tag_value(tags, TARGET_TAG) != tag(TARGET_TAG, target).split(":", 1)[1]:
            continue
        entry = record(
            "digitalocean",
            "image",
            str(image["id"]),
            name="%s (%s)" % (image.get("name"), image.get("status")),
            bake_id=bake_id,
            target=tag_value(tags, TARGET_TAG),
            created=image.get("created_at"),
            location=do.where,
        )
        entries.append(act(entry, check_mode, lambda i=image["id"]: do.delete(i)))
    return entries


def sweep_uploads(
    do: DigitalOcean, selector: Selector, check_mode: bool, target: str | None = None
) -> list[dict[str, Any]]:
    """bakery's disk uploads in the Spaces bucket (``bakery/<bake id>/<target>/``) the selector selects."""
    if not do.params.get("spaces_bucket"):
        return []
    prefix = SPACES_PREFIX + (selector.bake_id + "/" if selector.bake_id else "")
    if selector.bake_id and target:
        prefix += target + "/"
    entries = []
    for item in do.spaces_objects(
        prefix, "list the uploads in Spaces bucket %s" % do.params["spaces_bucket"]
    ):
        parts = item["Key"].split("/")
        bake_id = parts[1] if len(parts) > 2 else None
        if not selector.matches(bake_id, item.get("LastModified")):
            continue
        entry = record(
            "digitalocean",
            "spaces object",
            item["Key"],
            bake_id=bake_id,
            target=parts[2] if len(parts) > 3 else None,
            created=item.get("LastModified"),
            location="Spaces bucket %s" % do.params["spaces_bucket"],
        )
        entries.append(act(entry, check_mode, lambda k=item["Key"]: do.delete_object(k)))
    return entries


def _target_of(rest: str | None, target: str | None) -> bool:
    return not target or rest == temporary_name("x", target)[len("bakery-x-") :]


def sweep_instances(
    do: DigitalOcean, selector: Selector, check_mode: bool, target: str | None = None
) -> list[dict[str, Any]]:
    """An instance bake's droplets (tag ``bakery-temporary``), SSH keys and snapshots not yet tagged (both by their
    name ``bakery-<bake id>-<target>``) that the selector selects, deleted."""
    entries = []
    for droplet in do.pages(
        "list temporary droplets", do.client.droplets.list, "droplets", tag_name=TEMPORARY_TAG
    ):
        bake_id = tag_value(droplet.get("tags"), BAKE_ID_TAG)
        if not selector.matches(bake_id, droplet.get("created_at")):
            continue
        if not _target_of(split_name(droplet.get("name") or "", bake_id)[1], target):
            continue
        entry = record(
            "digitalocean",
            "droplet",
            str(droplet["id"]),
            name=droplet.get("name"),
            bake_id=bake_id,
            created=droplet.get("created_at"),
            location=do.where,
        )
        entries.append(act(entry, check_mode, lambda i=droplet["id"]: do.delete_droplet(i)))
    for snapshot in do.pages(
        "list droplet snapshots", do.client.snapshots.list, "snapshots", resource_type="droplet"
    ):
        bake_id, rest = split_name(snapshot.get("name") or "", selector.bake_id)
        if bake_id is None or TEMPORARY_TAG in (snapshot.get("tags") or []):
            continue  # a tagged one is swept as a temporary image
        if not selector.matches(bake_id, snapshot.get("created_at")) or not _target_of(rest, target):
            continue
        entry = record(
            "digitalocean",
            "snapshot",
            str(snapshot["id"]),
            name=snapshot.get("name"),
            bake_id=bake_id,
            created=snapshot.get("created_at"),
            location=do.where,
        )
        entries.append(act(entry, check_mode, lambda i=snapshot["id"]: do.delete(i)))
    for key in do.pages("list SSH keys", do.client.ssh_keys.list, "ssh_keys"):
        bake_id, rest = split_name(key.get("name") or "", selector.bake_id)
        # a key has no creation time: the janitor's age comes from its bake id
        if (
            bake_id is None
            or not selector.matches(bake_id, _bake_time(bake_id))
            or not _target_of(rest, target)
        ):
            continue
        entry = record(
            "digitalocean",
            "ssh key",
            str(key["id"]),
            name=key.get("name"),
            bake_id=bake_id,
            location=do.where,
        )
        entries.append(act(entry, check_mode, lambda i=key["id"]: do.delete_key(i)))
    return entries


def _bake_time(bake_id: str) -> str | None:
    match = re.match(r"^(\d{8})t(\d{6})-", bake_id)
    if not match:
        return None
    day, clock = match.groups()
    return "%s-%s-%sT%s:%s:%sZ" % (day[:4], day[4:6], day[6:], clock[:2], clock[2:4], clock[4:])


def sweep_all(
    do: DigitalOcean, selector: Selector, check_mode: bool, target: str | None = None
) -> list[dict]:
    return (
        sweep_instances(do, selector, check_mode, target)
        + sweep_images(do, selector, check_mode, target)
        + sweep_uploads(do, selector, check_mode, target)
    )


def sweep(params: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    """The janitor's sweep of one DigitalOcean account (and its Spaces bucket, when given)."""
    return sweep_all(DigitalOcean(params), selector, check_mode)


def preflight(params: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the token is accepted (the account answers) and the Spaces bucket can be listed."""
    try:
        do = DigitalOcean(dict(params, retries=1, retry_delay=0.5))
        account = do.api("look up the account", do.client.account.get)
        if params.get("spaces_bucket"):
            do.call(
                "look at Spaces bucket %s" % params["spaces_bucket"],
                do.spaces.list_objects_v2,
                Bucket=params["spaces_bucket"],
                MaxKeys=1,
            )
    except BakeryError as exc:
        return False, exc.msg
    status = (account.get("account") or {}).get("status")
    return True, "%s answers (account %s)" % (describe(params), status or "found")


def preflight_base_image(params: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether an instance bake's base image exists (and is in its region): the launch's first call, made before
    anything of the bake is built."""
    try:
        do = DigitalOcean(dict(params, retries=1, retry_delay=0.5))
        image = Droplets(do, params).base_image()
    except BakeryError as exc:
        return False, exc.msg
    return True, "base image %s is image %s (%s)" % (params["base_image"], image["id"], image.get("name"))


def run(
    params: Mapping[str, Any], check_mode: bool = False, do: DigitalOcean | None = None
) -> dict[str, Any]:
    """The module's entry point: one action of an image bake."""
    check_params(params)
    return run_action(
        params,
        lambda: do if do is not None else DigitalOcean(params),
        lambda client: Droplets(client, params, check_mode),
        extra=("launch", "capture"),
    )
