# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compute Engine images over the REST API: instance bakes, raw-disk imports, cleanup by bake id.

Every call goes through :class:`Client`: one ``AuthorizedSession`` (google-auth), bounded retries with
exponential backoff on 429 and 5xx answers and on broken connections, and mutating calls carry a
``requestId`` so that a retried insert cannot create a second resource. Operations are waited for with
``.../operations/{op}/wait`` in a loop under a deadline; a finished operation's ``error`` becomes a
:class:`GcpError`. Temporary resources (build instance and its disk, uploaded object, SSH key file) are
labelled ``bakery-bake-id`` and ``bakery-temporary=true`` and are removed by undo steps, also when a step
fails; ``cleanup`` removes whatever of a bake id is left.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Callable
from urllib.parse import quote, urlsplit

try:
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.credentials
    import google.oauth2.service_account
    import requests
    from google.auth.transport.requests import AuthorizedSession

    HAS_GOOGLE_AUTH = True
    GOOGLE_AUTH_ERROR = ""
except ImportError as exc:  # reported by the module with missing_required_lib
    HAS_GOOGLE_AUTH = False
    GOOGLE_AUTH_ERROR = str(exc)

from ansible_collections.bakery.images.plugins.module_utils import _instance
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    BAKE_ID_LABEL,
    TEMPORARY_LABEL,
    changed_inputs,
    digest_file,
    digest_value,
    fingerprint,
)
from ansible_collections.bakery.images.plugins.module_utils._sparsetar import (
    gzip_stream,
    padded_size,
    tar_stream,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    Selector,
    act,
    cleanup_problems,
    created_nothing,
    errors_of,
    record,
)

DEFAULT_API = "https://compute.googleapis.com/compute/v1"
DEFAULT_STORAGE = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
FINGERPRINT_LABEL = "bakery-fingerprint"
TARGET_LABEL = "bakery-target"
INPUT_LABEL_PREFIX = "bakery-in-"
# GCE label values hold at most 63 characters: the label keeps the first 63 hex digits of the fingerprint
LABEL_VALUE_MAX = 63
RETRY_STATUS = (429, 500, 502, 503, 504)
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# options that decide the image, part of its fingerprint
IMAGE_OPTIONS = (
    "name",
    "unique_name",
    "family",
    "description",
    "labels",
    "guest_os_features",
    "storage_locations",
    "licenses",
    "source_image",
    "source_image_family",
    "source_image_project",
    "disk_size_gb",
    "disk_type",
)
# a bake id: <UTC time>-<random>, as the bake plan makes it; a name suffix of an image is "-" + this
BAKE_ID_LENGTH = 22


class GcpError(BakeryError):
    """An API call or operation that failed; ``status`` is the HTTP status (0 for operation errors)."""

    def __init__(self, msg: str, status: int = 0, **details: Any) -> None:
        super().__init__(msg, **details)
        self.status = status


def check_name(kind: str, name: str) -> str:
    """Compute Engine names follow RFC 1035: lowercase letters, digits and '-', 1 to 63 characters."""
    if not isinstance(name, str) or not NAME.match(name):
        raise BakeryError(
            "%s %r is not a valid Compute Engine name: use 1 to 63 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-'" % (kind, name)
        )
    return name


def check_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in (labels or {}).items():
        text = str(value)
        if not LABEL_KEY.match(str(key)) or not LABEL_VALUE.match(text):
            raise BakeryError(
                "label %s=%s is not valid on Compute Engine: keys start with a lowercase letter; keys and "
                "values use at most 63 lowercase letters, digits, '_' or '-'" % (key, text)
            )
        out[str(key)] = text
    return out


def new_bake_id() -> str:
    return "%s-%s" % (time.strftime("%Y%m%dt%H%M%S", time.gmtime()), secrets.token_hex(3))


def label_safe(text: str, limit: int = LABEL_VALUE_MAX) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:limit]


def temporary_name(bake_id: str, target: str) -> str:
    """``bakery-<bake id>-<target>``, shortened to a valid resource name."""
    name = re.sub(r"[^a-z0-9-]", "-", ("bakery-%s-%s" % (bake_id, target or "image")).lower())[:63]
    return name.rstrip("-")


# the verify instance's name and key file: the build instance's with this suffix
VERIFY_SUFFIX = ".verify"


def verifier_name(bake_id: str, target: str) -> str:
    """``bakery-<bake id>-<target>-verify``: the build instance's name, shortened to leave room for the suffix."""
    return temporary_name(bake_id, target)[: 63 - len("-verify")].rstrip("-") + "-verify"


def image_name(params: Mapping[str, Any]) -> str:
    name = params["name"]
    if params.get("unique_name", True):
        unique = "%s-%s" % (name, params["bake_id"])
        if not isinstance(name, str) or not NAME.match(unique):
            raise BakeryError(
                "image name %r is not a valid Compute Engine name: use lowercase letters, digits or '-', "
                "starting with a letter; with unique_name the bake id is appended (%s), and the whole is at most 63"
                % (name, unique)
            )
        return unique
    return check_name("image name", name)


# ---------------------------------------------------------------------------------------------- a bake target

# The options of a gce target that role bakery.images.gce hands to gce_image_bake under the same name (vars/main.yml,
# tasks/launch.yml), with their defaults: what reaching the APIs, the zone, the source image and the bucket take.
# tests/unit checks the role against this table.
TARGET_OPTIONS: dict[str, Any] = {
    "project": None,
    "zone": None,
    "auth_kind": None,
    "service_account_file": None,
    "api_endpoint": DEFAULT_API,
    "storage_endpoint": DEFAULT_STORAGE,
    "retries": 5,
    "retry_delay": 1.0,
    "bucket": None,
    "source_image": None,
    "source_image_family": None,
    "source_image_project": None,
}
# gce_image_bake's parameters that fall back to an environment variable (its argument_spec uses this table)
ENV_FALLBACKS = {
    "service_account_file": "GCP_SERVICE_ACCOUNT_FILE",
    "service_account_contents": "GCP_SERVICE_ACCOUNT_CONTENTS",
    "access_token": "GCP_ACCESS_TOKEN",
}


def target_params(options: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The parameters of gce_image_bake for a gce target's *options*, as role bakery.images.gce passes them (unset
    and empty options left out), with the module's environment fallbacks read from *env*."""
    params = {
        key: default if options.get(key) in (None, "") else options[key]
        for key, default in TARGET_OPTIONS.items()
    }
    for key, variable in ENV_FALLBACKS.items():
        if params.get(key) in (None, "") and env.get(variable):
            params[key] = env[variable]
    return params


# ---------------------------------------------------------------------------------------------- auth


def credentials(params: Mapping[str, Any]) -> Any:
    """Credentials from a service-account key (file or contents), an access token, or the environment."""
    if not HAS_GOOGLE_AUTH:
        raise BakeryError("gce_image_bake needs the Python package google-auth: %s" % GOOGLE_AUTH_ERROR)
    kind = params.get("auth_kind")
    if not kind:
        if params.get("access_token"):
            kind = "accesstoken"
        elif params.get("service_account_file") or params.get("service_account_contents"):
            kind = "serviceaccount"
        else:
            kind = "application"
    scopes = list(params.get("auth_scopes") or SCOPES)
    if kind == "accesstoken":
        if not params.get("access_token"):
            raise BakeryError("auth_kind=accesstoken needs access_token (or GCP_ACCESS_TOKEN)")
        return google.oauth2.credentials.Credentials(params["access_token"])
    if kind == "serviceaccount":
        info = params.get("service_account_contents")
        if info is None and params.get("service_account_file"):
            path = params["service_account_file"]
            try:
                with open(path, encoding="utf-8") as handle:
                    info = handle.read()
            except OSError as exc:
                raise BakeryError("cannot read service_account_file %s: %s" % (path, exc.strerror)) from None
        if info is None:
            raise BakeryError(
                "auth_kind=serviceaccount needs service_account_file or service_account_contents"
            )
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                raise BakeryError("the service account key is not JSON (its content is not shown)") from None
        try:
            return google.oauth2.service_account.Credentials.from_service_account_info(info, scopes=scopes)
        except (ValueError, KeyError) as exc:
            # the message names missing fields; the key itself is never part of it
            raise BakeryError(
                "the service account key is not usable: %s" % type(exc).__name__,
                reason=str(exc)[:200] if "PRIVATE KEY" not in str(exc) else "",
            ) from None
    try:
        creds, _project = google.auth.default(scopes=scopes)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise BakeryError("no application default credentials: %s" % exc) from None
    return creds


def fetch_token(creds: Any, timeout: float) -> None:
    """Get an access token for *creds* now, every request bounded by *timeout* seconds: credentials that yield
    none fail here, with the token endpoint's reason (never the key), not in the first API call."""
    request = google.auth.transport.requests.Request()
    try:
        creds.refresh(functools.partial(request, timeout=timeout))
    except google.auth.exceptions.RefreshError as exc:
        reason = exc.args[0] if exc.args else exc
        raise BakeryError("the token endpoint gave no access token: %s" % str(reason)[:300]) from None
    except google.auth.exceptions.TransportError as exc:
        where = getattr(creds, "_token_uri", None) or "the token endpoint"
        raise BakeryError("no answer from %s: %s" % (where, _connection_reason(exc))) from None
    finally:
        request.session.close()


# ---------------------------------------------------------------------------------------------- client


class Client:
    """Compute Engine and Cloud Storage REST calls with bounded retries."""

    def __init__(
        self,
        session: Any,
        project: str,
        api_endpoint: str | None = None,
        storage_endpoint: str | None = None,
        retries: int = 5,
        retry_delay: float = 1.0,
        request_timeout: float = 120.0,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.session = session
        self.project = project
        self.api = (api_endpoint or DEFAULT_API).rstrip("/")
        self.storage = (storage_endpoint or DEFAULT_STORAGE).rstrip("/")
        self.retries = max(0, retries)
        self.retry_delay = max(0.0, retry_delay)
        self.request_timeout = request_timeout
        self.sleep = sleep
        self.calls = 0
        # whether a call that may make a resource was sent (POST, PUT, PATCH): a bake whose calls never got that
        # far made nothing for its cleanup to remove
        self.created = False
        # whether any endpoint has answered yet: until one has, a connection failure is not retried for long
        self.answered = False

    def backoff(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.retry_delay * (2**attempt) * (0.5 + random.random() / 2)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 60.0))
        self.sleep(min(delay, 60.0))

    def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        what: str = "",
    ) -> Any:
        """One call; 429/5xx and broken connections are retried. A 404 gives None when *missing_ok*."""
        attempt = 0
        if method.upper() in ("POST", "PUT", "PATCH"):
            self.created = True  # before the call: one that fails may still have made the resource
        while True:
            self.calls += 1
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    data=data,
                    headers=dict(headers or {}),
                    timeout=self.request_timeout,
                )
            except google.auth.exceptions.RefreshError as exc:
                raise GcpError("%s: could not get an access token: %s" % (what or url, exc)) from None
            except (requests.ConnectionError, requests.Timeout, google.auth.exceptions.TransportError) as exc:
                # an endpoint that never answered is most likely wrong or down: one quick retry, not minutes
                limit = self.retries if self.answered else min(self.retries, 1)
                if attempt >= limit:
                    raise GcpError(
                        "%s: no answer from %s after %d attempt(s)%s: %s"
                        % (
                            what or url,
                            _endpoint(url),
                            attempt + 1,
                            "" if self.answered else " (check api_endpoint/storage_endpoint and the network)",
                            _connection_reason(exc),
                        )
                    ) from None
                self.backoff(attempt if self.answered else 0)
                attempt += 1
                continue
            self.answered = True
            if response.status_code in RETRY_STATUS and attempt < self.retries:
                self.backoff(attempt, response.headers.get("Retry-After"))
                attempt += 1
                continue
            if response.status_code == 404 and missing_ok:
                return None
            if response.status_code >= 400:
                raise GcpError(
                    "%s failed: HTTP %d: %s"
                    % (what or "%s %s" % (method, url), response.status_code, _reason(response)),
                    status=response.status_code,
                )
            return response

    def compute(self, method: str, path: str, what: str = "", **kwargs: Any) -> Any:
        """A Compute Engine call on *path* (relative to ``.../compute/v1/``); the JSON answer, or None."""
        # setLabels takes no requestId: the label fingerprint makes a retried call harmless
        if method in ("POST", "DELETE") and not path.endswith(("/wait", "/setLabels")):
            kwargs["params"] = dict(kwargs.get("params") or {}, requestId=str(uuid.uuid4()))
        response = self.request(
            method, "%s/%s" % (self.api, path), what=what or "%s %s" % (method, path), **kwargs
        )
        if response is None:
            return None
        return response.json() if response.content else {}

    def list(self, path: str, filter_: str | None = None, what: str = "") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"filter": filter_} if filter_ else {}
        while True:
            page = self.compute("GET", path, params=dict(params), what=what)
            items.extend(page.get("items") or [])
            token = page.get("nextPageToken")
            if not token:
                return items
            params["pageToken"] = token

    def wait(self, operation: Mapping[str, Any], deadline: float, what: str = "") -> dict[str, Any]:
        """Wait for an operation with ``operations/{op}/wait`` until DONE or *deadline*; raise its error."""
        op = dict(operation)
        scope = "zones/%s" % op["zone"].rsplit("/", 1)[-1] if op.get("zone") else "global"
        path = "projects/%s/%s/operations/%s/wait" % (self.project, scope, op["name"])
        while op.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise GcpError(
                    "%s: operation %s still %s when the time ran out"
                    % (what or op.get("operationType", "operation"), op["name"], op.get("status"))
                )
            op = self.compute("POST", path, what="wait for %s" % (what or op["name"]))
        error = op.get("error")
        if error:
            messages = "; ".join(
                "%s: %s" % (item.get("code", "ERROR"), item.get("message", ""))
                for item in error.get("errors") or []
            )
            raise GcpError(
                "%s failed: %s" % (what or op.get("operationType", "operation"), messages or error)
            )
        return op


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return "%s://%s" % (parts.scheme, parts.netloc)


def _connection_reason(exc: Exception) -> str:
    """The innermost reason of a failed connection ("[Errno 111] Connection refused"), not urllib3's chain."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\][^'\")]*", text)
    if found:
        return found[-1].strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text[:300]


def _reason(response: Any) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") or error)[:500]
    except ValueError:
        return response.text[:300]


def make_client(params: Mapping[str, Any], creds: Any = None) -> Client:
    """A client for *params* (its credentials, unless *creds* are given; ``request_timeout`` bounds each request)."""
    session = AuthorizedSession(creds if creds is not None else credentials(params))
    return Client(
        session,
        params["project"],
        api_endpoint=params.get("api_endpoint"),
        storage_endpoint=params.get("storage_endpoint"),
        retries=params.get("retries", 5),
        retry_delay=params.get("retry_delay", 1.0),
        request_timeout=float(params.get("request_timeout") or 120.0),
    )


def get_zone(client: Client, zone: str) -> dict[str, Any] | None:
    """The zone *zone* of the client's project (``zones.get``), None when Compute Engine knows none."""
    return client.compute(
        "GET", "projects/%s/zones/%s" % (client.project, zone), missing_ok=True, what="look up zone %s" % zone
    )


# what a disk import does in its bucket: upload the packed disk, delete it after the import; cleanup lists objects
BUCKET_PERMISSIONS = ("storage.objects.create", "storage.objects.delete", "storage.objects.list")


def missing_bucket_permissions(
    client: Client, bucket: str, permissions: tuple[str, ...] = BUCKET_PERMISSIONS
) -> list[str] | None:
    """Which of *permissions* the credentials lack on *bucket* (Cloud Storage's ``testIamPermissions``, which
    answers without writing anything); None when the bucket does not exist."""
    response = client.request(
        "GET",
        "%s/storage/v1/b/%s/iam/testPermissions" % (client.storage, quote(bucket, safe="")),
        params={"permissions": list(permissions)},
        missing_ok=True,
        what="test the permissions on gs://%s" % bucket,
    )
    if response is None:
        return None
    granted = set((response.json() if response.content else {}).get("permissions") or [])
    return [permission for permission in permissions if permission not in granted]


# ---------------------------------------------------------------------------------------------- images


def image_summary(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not image:
        return None
    return {
        "name": image.get("name"),
        "id": image.get("id"),
        "self_link": image.get("selfLink"),
        "family": image.get("family"),
        "status": image.get("status"),
        "labels": image.get("labels") or {},
        "disk_size_gb": int(image["diskSizeGb"]) if image.get("diskSizeGb") else None,
        "archive_size_bytes": int(image["archiveSizeBytes"]) if image.get("archiveSizeBytes") else None,
        "creation_timestamp": image.get("creationTimestamp"),
        "deprecated": (image.get("deprecated") or {}).get("state"),
    }


def _input_labels(inputs: Mapping[str, str]) -> dict[str, str]:
    return {
        (INPUT_LABEL_PREFIX + label_safe(name, 63 - len(INPUT_LABEL_PREFIX))): str(digest)[:16]
        for name, digest in inputs.items()
    }


def image_inputs(params: Mapping[str, Any], extra: Mapping[str, str]) -> dict[str, str]:
    """The plan's inputs, the image options and what the module resolved (source image id, disk digest)."""
    inputs = {str(k): str(v) for k, v in (params.get("inputs") or {}).items()}
    options = {key: params.get(key) for key in IMAGE_OPTIONS}
    if params.get("architecture"):
        # only when named: the images of earlier bakes, which named none, keep their fingerprints
        options["architecture"] = params["architecture"]
    inputs["options"] = digest_value(options)
    inputs.update(extra)
    return inputs


class Images:
    """The bake of one image: find, launch/capture or import, deprecate; temporary resources in undo steps."""

    def __init__(self, client: Client, params: Mapping[str, Any], check_mode: bool = False) -> None:
        self.client = client
        self.params = params
        self.check_mode = check_mode
        self.project = params["project"]
        self.zone = params.get("zone")
        self.bake_id = params.get("bake_id") or new_bake_id()
        self.target = params.get("target") or ""
        self.deadline = time.monotonic() + float(params.get("timeout") or 1800)
        self.actions: list[str] = []

    # -- paths and labels
    def global_path(self, kind: str, name: str = "") -> str:
        return "projects/%s/global/%s%s" % (self.project, kind, "/" + name if name else "")

    def zone_path(self, kind: str, name: str = "") -> str:
        if not self.zone:
            raise BakeryError("zone is required for an instance bake")
        return "projects/%s/zones/%s/%s%s" % (self.project, self.zone, kind, "/" + name if name else "")

    def temporary_labels(self) -> dict[str, str]:
        labels = {BAKE_ID_LABEL: self.bake_id, TEMPORARY_LABEL: "true"}
        if self.target:
            labels[TARGET_LABEL] = label_safe(self.target)
        return labels

    def temporary_filter(self) -> str:
        return " AND ".join('(labels.%s = "%s")' % item for item in sorted(self.temporary_labels().items()))

    # -- finding
    def find(self, inputs: Mapping[str, str]) -> tuple[dict[str, Any] | None, list[str]]:
        """The newest READY image with the fingerprint, and the inputs that changed since the last image."""
        digest = fingerprint(inputs)
        found = self.client.list(
            self.global_path("images"),
            '(labels.%s = "%s")' % (FINGERPRINT_LABEL, digest[:LABEL_VALUE_MAX]),
            what="look for an image with the fingerprint",
        )
        ready = sorted(
            (image for image in found if image.get("status") == "READY" and not _temporary(image)),
            key=lambda image: image.get("creationTimestamp") or "",
        )
        if ready:
            return ready[-1], []
        previous = self.previous_image()
        if previous is None:
            return None, sorted(inputs)
        old = {
            key[len(INPUT_LABEL_PREFIX) :]: value
            for key, value in (previous.get("labels") or {}).items()
            if key.startswith(INPUT_LABEL_PREFIX)
        }
        current = {key[len(INPUT_LABEL_PREFIX) :]: value for key, value in _input_labels(inputs).items()}
        return None, changed_inputs(old, current)

    def previous_image(self) -> dict[str, Any] | None:
        if self.target:
            filter_ = '(labels.%s = "%s")' % (TARGET_LABEL, label_safe(self.target))
        elif self.params.get("family"):
            filter_ = '(family = "%s")' % self.params["family"]
        else:
            return None
        images = self.client.list(self.global_path("images"), filter_, what="look for earlier images")
        images = [
            image
            for image in images
            if (image.get("labels") or {}).get(FINGERPRINT_LABEL) and not _temporary(image)
        ]
        return max(images, key=lambda image: image.get("creationTimestamp") or "") if images else None

    def unchanged(self, image: Mapping[str, Any], digest: str, inputs: Mapping[str, str]) -> dict[str, Any]:
        return {
            "changed": False,
            "found": True,
            "built": False,
            "image": image_summary(image),
            "fingerprint": digest,
            "inputs": dict(inputs),
            "changed_inputs": [],
            "bake_id": self.bake_id,
            "msg": "image %s has the fingerprint %s: nothing to do" % (image.get("name"), digest[:12]),
        }

    def would_build(self, digest: str, inputs: Mapping[str, str], changed: list[str]) -> dict[str, Any]:
        return {
            "changed": True,
            "found": False,
            "built": False,
            "image": None,
            "fingerprint": digest,
            "inputs": dict(inputs),
            "changed_inputs": changed,
            "bake_id": self.bake_id,
            "msg": "would build image %s (%s)"
            % (self.params["name"], "forced" if self.params.get("force") else ", ".join(changed) or "new"),
        }

    # -- the source image
    def source_image(self) -> dict[str, Any]:
        params = self.params
        project = params.get("source_image_project") or self.project
        if params.get("source_image"):
            ref = params["source_image"]
            if "/" in ref:
                path = ref.split("/compute/v1/", 1)[-1]
            else:
                path = "projects/%s/global/images/%s" % (project, ref)
        elif params.get("source_image_family"):
            path = "projects/%s/global/images/family/%s" % (project, params["source_image_family"])
        else:
            raise BakeryError("an instance bake needs source_image or source_image_family")
        image = self.client.compute("GET", path, missing_ok=True, what="look up the source image")
        if image is None:
            raise BakeryError("source image %s not found" % path)
        return image

    # -- instances
    def instance_body(self, name: str, source: Mapping[str, Any], public_key: str) -> dict[str, Any]:
        params = self.params
        zone = self.zone
        region = zone.rsplit("-", 1)[0] if zone else ""
        labels = self.temporary_labels()
        disk: dict[str, Any] = {
            "diskName": name,
            "sourceImage": source["selfLink"],
            "diskType": "zones/%s/diskTypes/%s" % (zone, params.get("disk_type") or "pd-balanced"),
            "labels": labels,
        }
        if params.get("disk_size_gb"):
            disk["diskSizeGb"] = str(params["disk_size_gb"])
        network = params.get("network") or "default"
        interface: dict[str, Any] = {"network": network if "/" in network else "global/networks/%s" % network}
        if params.get("subnetwork"):
            sub = params["subnetwork"]
            interface["subnetwork"] = sub if "/" in sub else "regions/%s/subnetworks/%s" % (region, sub)
        if params.get("external_ip", True):
            interface["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
        body: dict[str, Any] = {
            "name": name,
            "machineType": "zones/%s/machineTypes/%s" % (zone, params.get("machine_type") or "e2-medium"),
            "labels": labels,
            "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": disk}],
            "networkInterfaces": [interface],
            "metadata": {"items": [{"key": "ssh-keys", "value": "%s:%s" % (params["ssh_user"], public_key)}]},
        }
        if params.get("service_account_email"):
            body["serviceAccounts"] = [
                {"email": params["service_account_email"], "scopes": list(params.get("scopes") or SCOPES)}
            ]
        return body

    def delete_instance(self, name: str) -> bool:
        """Delete the build instance and its boot disk; True when something was deleted."""
        deleted = False
        op = self.client.compute(
            "DELETE", self.zone_path("instances", name), missing_ok=True, what="delete instance %s" % name
        )
        if op is not None:
            self.client.wait(op, self.deadline + 600, what="delete instance %s" % name)
            self.actions.append("deleted instance %s" % name)
            deleted = True
        op = self.client.compute(
            "DELETE", self.zone_path("disks", name), missing_ok=True, what="delete disk %s" % name
        )
        if op is not None:
            self.client.wait(op, self.deadline + 600, what="delete disk %s" % name)
            self.actions.append("deleted disk %s" % name)
            deleted = True
        return deleted

    def wait_status(self, path: str, wanted: str, failed: tuple[str, ...], what: str) -> dict[str, Any]:
        delay = 0.5
        while True:
            resource = self.client.compute("GET", path, what=what)
            status = resource.get("status")
            if status == wanted:
                return resource
            if status in failed:
                raise GcpError("%s: status %s" % (what, status))
            if time.monotonic() > self.deadline:
                raise GcpError("%s: still %s when the time ran out" % (what, status))
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def wait_ssh(self, host: str, port: int) -> None:
        deadline = min(self.deadline, time.monotonic() + float(self.params.get("ssh_timeout") or 300))
        _instance.wait_ssh(host, port, deadline)

    def ssh_key(self, name: str) -> tuple[str, str]:
        return _instance.new_ssh_key(self.params.get("ssh_key_dir") or "/tmp", name)

    def launch(self) -> dict[str, Any]:
        """Find the image; else start a build instance from the source image and wait for SSH."""
        source = self.source_image()
        inputs = image_inputs(self.params, {"source_image": str(source.get("id"))})
        digest = fingerprint(inputs)
        existing, changed = self.find(inputs)
        if existing and not self.params.get("force"):
            return self.unchanged(existing, digest, inputs)
        if self.check_mode:
            return self.would_build(digest, inputs, changed)
        started = self.start_instance(temporary_name(self.bake_id, self.target), source, "build instance")
        return {
            "changed": True,
            "found": False,
            "built": False,
            "fingerprint": digest,
            "inputs": inputs,
            "changed_inputs": ["forced"] if existing else changed,
            "bake_id": self.bake_id,
            "source_image": {
                "name": source.get("name"),
                "id": source.get("id"),
                "self_link": source.get("selfLink"),
            },
            "instance": started["instance"],
            "builder": started["connection"],
            "public_key": started["public_key"],
            "actions": self.actions,
            "msg": "build instance %s runs at %s"
            % (started["instance"]["name"], started["instance"]["host"]),
        }

    def start_instance(
        self, name: str, source: Mapping[str, Any], what: str, key_name: str | None = None
    ) -> dict[str, Any]:
        """An instance *name* of the image *source* with a new temporary SSH key (file *key_name*, else *name*, in
        ``ssh_key_dir``) in its metadata; waits until it runs and answers SSH. What it made goes when a step
        fails. The build instance of ``launch`` and the instance ``verifier`` starts from a new image share it."""
        with Steps() as steps:
            key_path, public_key = self.ssh_key(key_name or name)
            steps.add_undo("remove the SSH key", lambda: _remove(key_path, key_path + ".known_hosts"))
            # registered before the insert: an insert that failed after creating the instance leaves nothing
            steps.add_undo("delete the %s" % what, lambda: self.delete_instance(name))
            op = self.client.compute(
                "POST",
                self.zone_path("instances"),
                body=self.instance_body(name, source, public_key),
                what="create %s %s" % (what, name),
            )
            self.client.wait(op, self.deadline, what="create %s %s" % (what, name))
            self.actions.append("created instance %s" % name)
            instance = self.wait_status(
                self.zone_path("instances", name),
                "RUNNING",
                ("TERMINATED", "STOPPED"),
                "start instance %s" % name,
            )
            interface = (instance.get("networkInterfaces") or [{}])[0]
            access = (interface.get("accessConfigs") or [{}])[0]
            host = access.get("natIP") if self.params.get("external_ip", True) else interface.get("networkIP")
            if not host:
                raise GcpError(
                    "instance %s has no %s IP address"
                    % (name, "external" if self.params.get("external_ip", True) else "internal")
                )
            port = int(self.params.get("ssh_port") or 22)
            self.wait_ssh(host, port)
        return {
            "instance": {
                "name": name,
                "zone": self.zone,
                "id": instance.get("id"),
                "host": host,
                "source_image": source.get("selfLink"),
            },
            # the image hygiene checks look for it in the builder's authorized_keys before capture
            "public_key": public_key,
            "connection": _instance.connection(
                host, port, self.params["ssh_user"], key_path, self.params.get("python")
            ),
        }

    def verifier(self) -> dict[str, Any]:
        """An instance of the new, still temporary image (``image``) for the bake's checks (``verify_instance``),
        started as the build instance is (the same instance options) with its own SSH key: instance and disk
        ``bakery-<bake id>-<target>-verify``, key file the build instance's with ``.verify`` appended. The cleanup
        of the bake removes them."""
        wanted = self.params.get("image")
        if not wanted:
            raise BakeryError("action=verifier needs image (the name of the new image to check)")
        image = self.client.compute(
            "GET",
            self.global_path("images", wanted),
            missing_ok=True,
            what="look up image %s" % wanted,
        )
        if image is None:
            raise BakeryError(
                "image %s does not exist in project %s: nothing to check" % (wanted, self.project)
            )
        if self.check_mode:
            return {
                "changed": True,
                "image": image_summary(image),
                "bake_id": self.bake_id,
                "msg": "would start an instance of image %s for its checks" % wanted,
            }
        name = verifier_name(self.bake_id, self.target)
        started = self.start_instance(
            name, image, "verify instance", temporary_name(self.bake_id, self.target) + VERIFY_SUFFIX
        )
        return {
            "changed": True,
            "image": image_summary(image),
            "instance": started["instance"],
            "verifier": started["connection"],
            "bake_id": self.bake_id,
            "actions": self.actions,
            "msg": "verify instance %s of image %s runs at %s" % (name, wanted, started["instance"]["host"]),
        }

    def capture(self) -> dict[str, Any]:
        """Stop the build instance, make the image from its boot disk; the instance and disk go in any case."""
        name = self.params.get("instance")
        if not name:
            raise BakeryError("action=capture needs instance (the name launch returned)")
        inputs = {str(k): str(v) for k, v in (self.params.get("inputs") or {}).items()}
        digest = fingerprint(inputs)
        if self.check_mode:
            return self.would_build(digest, inputs, [])
        with Steps() as steps:
            key_path = os.path.join(self.params.get("ssh_key_dir") or "/tmp", name)
            steps.add_undo(
                "remove the SSH key", lambda: _remove(key_path, key_path + ".known_hosts"), always=True
            )
            steps.add_undo("delete the build instance", lambda: self.delete_instance(name), always=True)
            op = self.client.compute(
                "POST", self.zone_path("instances", name) + "/stop", what="stop instance %s" % name
            )
            self.client.wait(op, self.deadline, what="stop instance %s" % name)
            self.actions.append("stopped instance %s" % name)
            image = self.insert_image(steps, digest, inputs, {"sourceDisk": self.zone_path("disks", name)})
            image, deprecated = self.finish(image)
        return _warn_undo_errors(steps, self.built(image, digest, inputs, deprecated))

    def import_disk(self) -> dict[str, Any]:
        """Pack a raw disk as GCE wants it, upload it, and make the image from the object."""
        params = self.params
        disk = params.get("disk")
        if not disk or not os.path.isfile(disk):
            raise BakeryError("action=import needs disk, an existing raw disk file (got %r)" % disk)
        if not params.get("bucket"):
            raise BakeryError("action=import needs bucket, the Cloud Storage bucket to upload the disk to")
        disk_digest = params.get("disk_sha256") or digest_file(disk)
        inputs = image_inputs(params, {"disk": disk_digest})
        digest = fingerprint(inputs)
        existing, changed = self.find(inputs)
        if existing and not params.get("force"):
            return self.unchanged(existing, digest, inputs)
        if self.check_mode:
            return self.would_build(digest, inputs, changed)
        bucket = params["bucket"]
        object_name = params.get("object_name") or "%s.tar.gz" % temporary_name(self.bake_id, self.target)
        with Steps() as steps:
            steps.add_undo(
                "delete the uploaded object",
                lambda: self.delete_object(bucket, object_name),
                always=not params.get("keep_object"),
            )
            uploaded = self.upload(disk, bucket, object_name)
            source = "https://storage.googleapis.com/%s/%s" % (bucket, quote(object_name, safe="/"))
            image = self.insert_image(
                steps, digest, inputs, {"rawDisk": {"source": source, "containerType": "TAR"}}
            )
            image, deprecated = self.finish(image)
        result = self.built(image, digest, inputs, deprecated)
        result["changed_inputs"] = ["forced"] if existing else changed
        result["upload"] = dict(uploaded, kept=bool(params.get("keep_object")))
        return _warn_undo_errors(steps, result)

    def insert_image(
        self, steps: Steps, digest: str, inputs: Mapping[str, str], source: Mapping[str, Any]
    ) -> dict[str, Any]:
        params = self.params
        name = image_name(dict(params, bake_id=self.bake_id))
        labels = check_labels(params.get("labels") or {})
        labels.update(_input_labels(inputs))
        labels[FINGERPRINT_LABEL] = digest[:LABEL_VALUE_MAX]
        labels[BAKE_ID_LABEL] = self.bake_id
        if self.target:
            labels[TARGET_LABEL] = label_safe(self.target)
        # temporary until finalize_image: an image a killed bake made is not final, and the janitor removes it
        labels[TEMPORARY_LABEL] = "true"
        body: dict[str, Any] = dict(source, name=name, labels=labels)
        if params.get("family"):
            body["family"] = params["family"]
        if params.get("description"):
            body["description"] = params["description"]
        if params.get("architecture"):
            body["architecture"] = params["architecture"]
        if params.get("guest_os_features"):
            body["guestOsFeatures"] = [{"type": feature} for feature in params["guest_os_features"]]
        if params.get("storage_locations"):
            body["storageLocations"] = list(params["storage_locations"])
        if params.get("licenses"):
            body["licenses"] = list(params["licenses"])
        op = steps.run(
            "create image %s" % name,
            lambda: self.client.compute(
                "POST", self.global_path("images"), body=body, what="create image %s" % name
            ),
            # only after our insert was accepted: an image of that name made by someone else stays
            undo=lambda _op: self.delete_image(name),
        )
        self.client.wait(op, self.deadline, what="create image %s" % name)
        image = self.wait_status(self.global_path("images", name), "READY", ("FAILED",), "image %s" % name)
        self.actions.append("created image %s" % name)
        return image

    def finish(self, image: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Label the new image final and deprecate older ones, unless ``publish`` is false: then the image stays
        temporary (found by no lookup, removed by the bake's cleanup) until action ``publish``."""
        if not self.params.get("publish", True):
            return dict(image), []
        image = self.finalize_image(image)
        return image, self.deprecate_older(image)

    def publish(self) -> dict[str, Any]:
        """Label final the image of this bake that action ``capture`` or ``import`` left temporary
        (``publish=false``), once its checks passed; an image that is final already is left as it is."""
        name = self.params.get("image")
        if not name:
            raise BakeryError("action=publish needs image (the name capture or import returned)")
        image = self.client.compute(
            "GET", self.global_path("images", name), missing_ok=True, what="image %s" % name
        )
        if image is None:
            raise BakeryError(
                "image %s does not exist in project %s: nothing to publish" % (name, self.client.project)
            )
        labels = image.get("labels") or {}
        temporary = labels.get(TEMPORARY_LABEL) == "true"
        if temporary and labels.get(BAKE_ID_LABEL) != self.bake_id:
            raise BakeryError(
                "image %s is a temporary image of bake %s, not of this bake (%s): not publishing it"
                % (name, labels.get(BAKE_ID_LABEL), self.bake_id)
            )
        result = {
            "found": True,
            "built": False,
            "image": image_summary(image),
            "bake_id": self.bake_id,
            "deprecated": [],
            "changed": temporary,
            "msg": ("would publish image %s" if self.check_mode else "published image %s") % name
            if temporary
            else "image %s is published already" % name,
        }
        if temporary and not self.check_mode:
            # (publish=false is for capture and import, whatever this call's module defaults say)
            image = self.finalize_image(image)
            result.update(image=image_summary(image), deprecated=self.deprecate_older(image))
        return result

    def finalize_image(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """The image is complete: drop its ``bakery-temporary`` label (only now does a lookup find it)."""
        name = image["name"]
        labels = {k: v for k, v in (image.get("labels") or {}).items() if k != TEMPORARY_LABEL}
        op = self.client.compute(
            "POST",
            self.global_path("images", name) + "/setLabels",
            body={"labels": labels, "labelFingerprint": image.get("labelFingerprint")},
            what="label image %s final" % name,
        )
        self.client.wait(op, self.deadline, what="label image %s final" % name)
        return self.client.compute("GET", self.global_path("images", name), what="image %s" % name)

    def delete_image(self, name: str) -> None:
        op = self.client.compute(
            "DELETE", self.global_path("images", name), missing_ok=True, what="delete image %s" % name
        )
        if op is not None:
            self.client.wait(op, self.deadline + 600, what="delete image %s" % name)

    def deprecate_older(self, image: Mapping[str, Any]) -> list[str]:
        family = self.params.get("family")
        if not self.params.get("deprecate_older") or not family:
            return []
        done = []
        for other in self.client.list(self.global_path("images"), '(family = "%s")' % family):
            if other.get("name") == image.get("name") or (other.get("deprecated") or {}).get("state"):
                continue
            op = self.client.compute(
                "POST",
                self.global_path("images", other["name"]) + "/deprecate",
                body={"state": "DEPRECATED", "replacement": image["selfLink"]},
                what="deprecate image %s" % other["name"],
            )
            self.client.wait(op, self.deadline, what="deprecate image %s" % other["name"])
            done.append(other["name"])
        return done

    def built(
        self, image: Mapping[str, Any], digest: str, inputs: Mapping[str, str], deprecated: list[str]
    ) -> dict[str, Any]:
        return {
            "changed": True,
            "found": False,
            "built": True,
            "image": image_summary(image),
            "fingerprint": digest,
            "inputs": dict(inputs),
            "changed_inputs": [],
            "bake_id": self.bake_id,
            "deprecated": deprecated,
            "actions": self.actions,
            "msg": "built image %s" % image.get("name"),
        }

    # -- storage
    def upload(self, disk: str, bucket: str, name: str) -> dict[str, Any]:
        """Resumable upload of the packed disk in chunks; the packing runs in a thread one chunk ahead."""
        chunk = max(1, int(self.params.get("chunk_size_mb") or 8)) * (1 << 20)
        start = self.client.request(
            "POST",
            "%s/upload/storage/v1/b/%s/o" % (self.client.storage, quote(bucket, safe="")),
            params={"uploadType": "resumable", "name": name},
            body={
                "name": name,
                "contentType": "application/gzip",
                "metadata": self.temporary_labels(),
            },
            headers={"X-Upload-Content-Type": "application/gzip"},
            what="start the upload of gs://%s/%s" % (bucket, name),
        )
        session_url = start.headers.get("Location")
        if not session_url:
            raise GcpError("the upload of gs://%s/%s got no session URL" % (bucket, name))
        offset = 0
        started = time.monotonic()
        pieces = _ahead(gzip_stream(tar_stream(disk), size=chunk), depth=1)
        try:
            current = next(pieces, None)
            while current is not None:
                following = next(pieces, None)
                offset = self.put_chunk(session_url, current, offset, last=following is None)
                current = following
        finally:
            pieces.close()
        self.actions.append("uploaded gs://%s/%s (%d bytes)" % (bucket, name, offset))
        return {
            "bucket": bucket,
            "object": name,
            "size": offset,
            "disk_size": padded_size(os.path.getsize(disk)),
            "seconds": round(time.monotonic() - started, 2),
        }

    def put_chunk(self, url: str, data: bytes, start: int, last: bool) -> int:
        """Send one chunk, resending from where the server stopped after a failure; the next offset."""
        total = start + len(data)
        position = start
        attempt = 0
        while True:
            remaining = data[position - start :]
            if remaining:
                content_range = "bytes %d-%d/%s" % (position, total - 1, total if last else "*")
            elif last:
                content_range = "bytes */%d" % total
            else:
                return total
            response = self._put(url, remaining, content_range)
            if response is not None and response.status_code in (200, 201):
                return total
            if response is not None and response.status_code == 308:
                position = self._resume_at(response, start, position)
            elif response is not None and response.status_code not in RETRY_STATUS:
                raise GcpError(
                    "upload at byte %d failed: HTTP %d: %s"
                    % (position, response.status_code, _reason(response)),
                    status=response.status_code,
                )
            else:
                if attempt >= self.client.retries:
                    raise GcpError("upload at byte %d failed after %d attempts" % (position, attempt + 1))
                self.client.backoff(attempt)
                status = self._put(url, b"", "bytes */%s" % (total if last else "*"))
                if status is not None and status.status_code in (200, 201):
                    return total
                if status is not None and status.status_code == 308:
                    position = self._resume_at(status, start, position)
            attempt += 1
            if attempt > self.client.retries + 1 and position < total:
                raise GcpError("upload at byte %d made no progress after %d attempts" % (position, attempt))

    @staticmethod
    def _resume_at(response: Any, start: int, position: int) -> int:
        committed = _committed(response)
        if committed < start:
            raise GcpError("the upload session lost data it had confirmed (it has %d bytes)" % committed)
        return committed

    def _put(self, url: str, data: bytes, content_range: str) -> Any:
        self.client.calls += 1
        try:
            return self.client.session.request(
                "PUT",
                url,
                data=data,
                headers={"Content-Range": content_range, "Content-Type": "application/gzip"},
                timeout=self.client.request_timeout,
            )
        except (requests.ConnectionError, requests.Timeout):
            return None

    def object_url(self, bucket: str, name: str = "") -> str:
        url = "%s/storage/v1/b/%s/o" % (self.client.storage, quote(bucket, safe=""))
        return url + ("/" + quote(name, safe="") if name else "")

    def delete_object(self, bucket: str, name: str) -> bool:
        response = self.client.request(
            "DELETE",
            self.object_url(bucket, name),
            missing_ok=True,
            what="delete gs://%s/%s" % (bucket, name),
        )
        if response is not None:
            self.actions.append("deleted gs://%s/%s" % (bucket, name))
        return response is not None

    # -- cleanup
    def cleanup(self) -> dict[str, Any]:
        """Remove every temporary resource of the bake id (and target): instances, disks, objects, keys.

        The same :func:`sweep_project` serves the janitor, which selects by age as well.
        """
        if not self.params.get("bake_id"):
            raise BakeryError("action=cleanup needs bake_id")
        keep = self.params.get("object_name") if self.params.get("keep_object") else None
        unlooked: list[str] = []
        try:
            entries = sweep_project(
                self.client,
                Selector(bake_id=self.bake_id),
                self.check_mode,
                zones=[self.zone] if self.zone else [],
                bucket=self.params.get("bucket"),
                target=self.target,
                deadline=self.deadline,
                keep_object=keep,
            )
        except BakeryError as exc:
            entries = []
            unlooked.append("project %s: %s" % (self.client.project, exc.msg))
        removed = ["%s %s" % (e["kind"], e["id"] if e["kind"] == "object" else e["name"]) for e in entries]
        key = os.path.join(
            self.params.get("ssh_key_dir") or "/tmp", temporary_name(self.bake_id, self.target)
        )
        for path in (key, key + ".known_hosts", key + VERIFY_SUFFIX, key + VERIFY_SUFFIX + ".known_hosts"):
            if not os.path.lexists(path):
                continue
            if not self.check_mode:
                _remove(path)
            removed.append("ssh key %s" % path)
        message = cleanup_problems(
            self.bake_id, errors_of(entries), unlooked, self.params.get("created", True)
        )
        if message:
            raise BakeryError(message, removed=removed)
        if unlooked:
            msg = created_nothing(self.bake_id, self.target, unlooked)
        else:
            msg = "removed %s" % (
                ", ".join(removed) if removed else "nothing: no temporary resource was left"
            )
        return {"changed": bool(removed), "removed": removed, "bake_id": self.bake_id, "msg": msg}

    def find_only(self) -> dict[str, Any]:
        if self.params.get("disk"):
            extra = {"disk": self.params.get("disk_sha256") or digest_file(self.params["disk"])}
        else:
            extra = {"source_image": str(self.source_image().get("id"))}
        inputs = image_inputs(self.params, extra)
        digest = fingerprint(inputs)
        existing, changed = self.find(inputs)
        if existing and not self.params.get("force"):
            return self.unchanged(existing, digest, inputs)
        result = self.would_build(digest, inputs, changed)
        result["changed"] = False
        return result


def sweep_project(
    client: Client,
    selector: Selector,
    check_mode: bool,
    zones: list[str],
    bucket: str | None = None,
    target: str | None = None,
    deadline: float | None = None,
    keep_object: str | None = None,
) -> list[dict[str, Any]]:
    """Temporary resources (label ``bakery-temporary=true``) the selector selects, removed: build instances,
    then disks (listed after the instances went, which may have taken their disks along), images not yet
    labelled final, then uploaded objects (metadata ``bakery-temporary=true``) in *bucket*. Ages:
    creationTimestamp and timeCreated."""
    project = client.project
    until = deadline if deadline is not None else time.monotonic() + 1800
    labels = {TEMPORARY_LABEL: "true"}
    if selector.bake_id is not None:
        labels[BAKE_ID_LABEL] = selector.bake_id
    if target:
        labels[TARGET_LABEL] = label_safe(target)
    filter_ = " AND ".join('(labels.%s = "%s")' % item for item in sorted(labels.items()))
    entries: list[dict[str, Any]] = []

    def delete(path: str, what: str) -> None:
        op = client.compute("DELETE", path, missing_ok=True, what="delete %s" % what)
        if op is not None:
            client.wait(op, until, what="delete %s" % what)

    for kind, collection in (("instance", "instances"), ("disk", "disks")):
        for zone in zones:
            where = "projects/%s/zones/%s/%s" % (project, zone, collection)
            for item in client.list(where, filter_, what="list %s in %s" % (collection, zone)):
                item_labels = item.get("labels") or {}
                if not selector.matches(item_labels.get(BAKE_ID_LABEL), item.get("creationTimestamp")):
                    continue
                entry = record(
                    "gce",
                    kind,
                    item.get("id") or item["name"],
                    name=item["name"],
                    bake_id=item_labels.get(BAKE_ID_LABEL),
                    target=item_labels.get(TARGET_LABEL),
                    created=item.get("creationTimestamp"),
                    location="%s/%s" % (project, zone),
                )
                path = "%s/%s" % (where, item["name"])
                entries.append(
                    act(entry, check_mode, lambda p=path, k=kind, n=item["name"]: delete(p, "%s %s" % (k, n)))
                )
    # images a killed capture or import made before they were labelled final
    where = "projects/%s/global/images" % project
    for item in client.list(where, filter_, what="list unfinished images"):
        item_labels = item.get("labels") or {}
        if not selector.matches(item_labels.get(BAKE_ID_LABEL), item.get("creationTimestamp")):
            continue
        entry = record(
            "gce",
            "image",
            item.get("id") or item["name"],
            name=item["name"],
            bake_id=item_labels.get(BAKE_ID_LABEL),
            target=item_labels.get(TARGET_LABEL),
            created=item.get("creationTimestamp"),
            location="%s/global" % project,
        )
        path = "%s/%s" % (where, item["name"])
        entries.append(act(entry, check_mode, lambda p=path, n=item["name"]: delete(p, "image %s" % n)))
    if bucket:
        base = "%s/storage/v1/b/%s/o" % (client.storage, quote(bucket, safe=""))
        params: dict[str, Any] = {}
        if selector.bake_id is not None and target:
            params["prefix"] = temporary_name(selector.bake_id, target)
        while True:
            page = client.request(
                "GET", base, params=dict(params), what="list objects of gs://%s" % bucket
            ).json()
            for item in page.get("items") or []:
                metadata = item.get("metadata") or {}
                if metadata.get(TEMPORARY_LABEL) != "true" or item.get("name") == keep_object:
                    continue
                if not selector.matches(metadata.get(BAKE_ID_LABEL), item.get("timeCreated")):
                    continue
                name = item["name"]
                entry = record(
                    "gce",
                    "object",
                    "gs://%s/%s" % (bucket, name),
                    name=name,
                    bake_id=metadata.get(BAKE_ID_LABEL),
                    target=metadata.get(TARGET_LABEL),
                    created=item.get("timeCreated"),
                    location="gs://%s" % bucket,
                )
                url = "%s/%s" % (base, quote(name, safe=""))
                entries.append(
                    act(
                        entry,
                        check_mode,
                        lambda u=url, n=name: client.request(
                            "DELETE", u, missing_ok=True, what="delete gs://%s/%s" % (bucket, n)
                        ),
                    )
                )
            token = page.get("nextPageToken")
            if not token:
                return entries
            params["pageToken"] = token
    return entries


def sweep(params: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    """The janitor's Compute Engine sweep: the zones and bucket of one project."""
    if not params.get("project"):
        raise BakeryError("the gce sweep needs project")
    client = make_client(params)
    return sweep_project(
        client,
        selector,
        check_mode,
        zones=[str(z) for z in params.get("zones") or []],
        bucket=params.get("bucket"),
    )


def _temporary(resource: Mapping[str, Any]) -> bool:
    return (resource.get("labels") or {}).get(TEMPORARY_LABEL) == "true"


def _warn_undo_errors(steps: Steps, result: dict[str, Any]) -> dict[str, Any]:
    """Temporary resources that could not be removed after a success: warn (the cleanup play retries)."""
    if steps.undo_errors:
        result["warnings"] = ["could not remove a temporary resource: %s" % e for e in steps.undo_errors]
    return result


def _committed(response: Any) -> int:
    """The next offset a 308 answer asks for (its ``Range: bytes=0-N`` header), 0 when it has none."""
    match = re.match(r"bytes=0-(\d+)", response.headers.get("Range") or "")
    return int(match.group(1)) + 1 if match else 0


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)


class _ahead:
    """Iterate *source* in a thread, at most *depth* items ahead: packing overlaps uploading."""

    _END = object()

    def __init__(self, source: Iterator[bytes], depth: int = 1) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(source,), daemon=True)
        self.thread.start()

    def _run(self, source: Iterator[bytes]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _ahead:
        return self

    def __next__(self) -> bytes:
        item = self.queue.get()
        if item is self._END:
            self.queue.put(item)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def check_params(params: Mapping[str, Any]) -> None:
    """Names, labels and numbers Compute Engine would refuse, checked before any call (a find would otherwise
    look up the source image first, and a launch create things before the image name is refused)."""
    if params.get("name") and params["action"] != "cleanup":
        image_name(dict(params, bake_id=params.get("bake_id") or new_bake_id()))
    if params.get("family"):
        check_name("image family", params["family"])
    check_labels(params.get("labels") or {})
    for key, low in (("disk_size_gb", 1), ("retries", 0), ("chunk_size_mb", 1), ("timeout", 1)):
        value = params.get(key)
        if value is not None and int(value) < low:
            raise BakeryError("%s must be at least %d, not %r" % (key, low, value))


def run(params: Mapping[str, Any], check_mode: bool = False, client: Client | None = None) -> dict[str, Any]:
    """The module's entry point: one action of an image bake."""
    check_params(params)
    if client is None:
        try:
            client = make_client(params)
        except BakeryError as exc:
            # without credentials nothing could be made: a cleanup of a bake that never got further says so
            if params["action"] == "cleanup" and params.get("created", True) is False:
                unlooked = ["project %s: %s" % (params.get("project"), exc.msg)]
                return {
                    "changed": False,
                    "removed": [],
                    "bake_id": params.get("bake_id"),
                    "created": False,
                    "msg": created_nothing(params.get("bake_id") or "?", params.get("target"), unlooked),
                }
            exc.details.setdefault("created", False)
            raise
    images = Images(client, params, check_mode)
    try:
        result = _run(images, params["action"])
    except BakeryError as exc:
        exc.details.setdefault("created", images.client.created)
        raise
    result.setdefault("created", images.client.created)
    return result


def _run(images: Images, action: str) -> dict[str, Any]:
    if action == "find":
        return images.find_only()
    if action == "launch":
        return images.launch()
    if action == "capture":
        return images.capture()
    if action == "import":
        return images.import_disk()
    if action == "cleanup":
        return images.cleanup()
    if action == "publish":
        return images.publish()
    if action == "verifier":
        return images.verifier()
    raise BakeryError("unknown action %r" % action)
