"""A stand-in of the DigitalOcean API (the custom-image calls bakery makes) on 127.0.0.1 for the digitalocean
target's tests.

Every request it gets and every response it gives is validated with openapi-core against DigitalOcean's own
OpenAPI 3.0 specification (../shared/reference/digitalocean-openapi beside the checkout, entry
specification/DigitalOcean-public.v2.yaml, its relative ``$ref`` files resolved by openapi-core's jsonschema-path);
a request the specification does not accept is answered 400 and, like a response that does not match it, is
recorded in :attr:`StandIn.violations`: the tests' fixture fails the test when any is recorded.

A custom image import (``POST /v2/images``) fetches its ``url`` as DigitalOcean does: the presigned URL of the
Spaces object (moto's S3 in the tests), in a thread; the image is ``NEW`` until the data arrived, then
``available``, and the stand-in keeps the sha256 and size of what it fetched. Transfers (image actions) complete
after one poll. The stand-in runs no droplets.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

# the project's shared reference material: beside the checkout (../shared, as for test_docker's example), else
# at the workspace's /work/shared (a clone elsewhere, such as a CI proof under /tmp)
_SPEC_IN_SHARED = Path("reference", "digitalocean-openapi", "specification", "DigitalOcean-public.v2.yaml")
SPEC = Path(
    os.environ.get("BAKERY_DIGITALOCEAN_OPENAPI")
    or next(
        (
            shared / _SPEC_IN_SHARED
            for shared in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared"))
            if (shared / _SPEC_IN_SHARED).is_file()
        ),
        Path(__file__).resolve().parents[3] / "shared" / _SPEC_IN_SHARED,
    )
)
# the servers entry of the specification: requests are validated as if they had been sent there
SERVER = "https://api.digitalocean.com"
TOKEN = "dop_v1_standin_token"
REGIONS = ("nyc3", "ams3", "sfo3", "fra1")
_api: Any = None
_api_lock = threading.Lock()


def openapi() -> Any:
    """The specification, loaded once per process (about a second). The specification's own ``tags`` entries use
    ``$ref`` where the OpenAPI schema wants text, so the document is not checked as a whole (spec_validator_cls
    None): requests and responses are validated against its operations all the same."""
    global _api
    with _api_lock:
        if _api is None:
            from openapi_core import Config, OpenAPI

            _api = OpenAPI.from_file_path(str(SPEC), config=Config(spec_validator_cls=None))
        return _api


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StandIn:
    """The server in a thread; ``stop()`` stops it. ``images`` maps id to image, ``fetched`` id to (sha256, size)."""

    def __init__(self) -> None:
        openapi()
        self.images: dict[int, dict[str, Any]] = {}
        self.fetched: dict[int, tuple[str, int]] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        self.violations: list[str] = []
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.ids = itertools.count(90000001)
        self.import_delay = 0.0
        handler = type("Handler", (_Handler,), {"standin": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def options(self, **extra: Any) -> dict[str, Any]:
        return dict(token=TOKEN, api_url=self.url, **extra)

    def by_name(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(i)) for i in self.images.values() if i["name"] == name]

    def all_images(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(i)) for i in self.images.values()]

    # -- the import: DigitalOcean fetches the URL
    def fetch(self, image_id: int, url: str) -> None:
        time.sleep(self.import_delay)
        try:
            answer = requests.get(url, timeout=60, stream=True)
            digest = hashlib.sha256()
            size = 0
            for block in answer.iter_content(1 << 20):
                digest.update(block)
                size += len(block)
            error = (
                "" if answer.status_code == 200 else "fetching the image failed: HTTP %d" % answer.status_code
            )
        except requests.RequestException as exc:
            error, digest, size = "fetching the image failed: %s" % exc, hashlib.sha256(), 0
        with self.lock:
            image = self.images.get(image_id)
            if image is None:
                return
            if error:
                image["error_message"] = error
                return
            self.fetched[image_id] = (digest.hexdigest(), size)
            image.update(status="available", size_gigabytes=round(size / 2**30, 4) or 0.01, min_disk_size=1)

    # -- the API
    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        with self.lock:
            return self._handle(method, path, query, body)

    def _handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if (method, path) == ("GET", "/v2/account"):
            account = {
                "droplet_limit": 25,
                "floating_ip_limit": 5,
                "volume_limit": 100,
                "email": "bakery@example.com",
                "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                "email_verified": True,
                "status": "active",
                "status_message": "",
            }
            return 200, {"account": account}
        if (method, path) == ("GET", "/v2/images"):
            found = [
                i for i in self.images.values() if not query.get("tag_name") or query["tag_name"] in i["tags"]
            ]
            per_page, page = int(query.get("per_page", 20)), int(query.get("page", 1))
            chunk = found[(page - 1) * per_page : page * per_page]
            pages: dict[str, Any] = {}
            if page * per_page < len(found):
                pages["next"] = "%s/v2/images?page=%d&per_page=%d" % (SERVER, page + 1, per_page)
            return 200, {"images": chunk, "links": {"pages": pages}, "meta": {"total": len(found)}}
        if (method, path) == ("POST", "/v2/images"):
            image_id = next(self.ids)
            image = {
                "id": image_id,
                "name": body["name"],
                "type": "custom",
                "distribution": body.get("distribution", "Unknown"),
                "slug": None,
                "public": False,
                "regions": [body["region"]],
                "created_at": now(),
                "min_disk_size": None,
                "size_gigabytes": None,
                "description": body.get("description", ""),
                "tags": list(body.get("tags") or []),
                "status": "NEW",
                "error_message": "",
            }
            self.images[image_id] = image
            threading.Thread(target=self.fetch, args=(image_id, body["url"]), daemon=True).start()
            return 202, {"image": image}
        match = re.match(r"^/v2/images/(\d+)$", path)
        if match:
            image = self.images.get(int(match.group(1)))
            if image is None:
                return 404, {"id": "not_found", "message": "The resource you requested could not be found."}
            if method == "GET":
                return 200, {"image": image}
            if method == "DELETE":
                del self.images[image["id"]]
                return 204, None
        match = re.match(r"^/v2/images/(\d+)/actions(?:/(\d+))?$", path)
        if match:
            image = self.images.get(int(match.group(1)))
            if image is None:
                return 404, {"id": "not_found", "message": "The resource you requested could not be found."}
            if method == "POST" and not match.group(2):
                if body["region"] not in REGIONS:
                    return 422, {"id": "unprocessable_entity", "message": "invalid region"}
                action = {
                    "id": next(self.ids),
                    "status": "in-progress",
                    "type": "transfer",
                    "started_at": now(),
                    "completed_at": None,
                    "resource_id": image["id"],
                    "resource_type": "image",
                    "region_slug": body["region"],
                    "polls": 0,
                }
                self.actions[action["id"]] = action
                return 201, {"action": _public(action)}
            if method == "GET" and match.group(2):
                action = self.actions.get(int(match.group(2)))
                if action is None or action["resource_id"] != image["id"]:
                    return 404, {
                        "id": "not_found",
                        "message": "The resource you requested could not be found.",
                    }
                action["polls"] += 1
                if action["polls"] > 1 and action["status"] == "in-progress":
                    action.update(status="completed", completed_at=now())
                    image["regions"].append(action["region_slug"])
                return 200, {"action": _public(action)}
        match = re.match(r"^/v2/tags/([^/]+)/resources$", path)
        if match and method in ("POST", "DELETE"):
            name = urllib.parse.unquote(match.group(1))
            for resource in body["resources"]:
                image = self.images.get(int(resource["resource_id"]))
                if resource["resource_type"] != "image" or image is None:
                    return 404, {
                        "id": "not_found",
                        "message": "The resource you requested could not be found.",
                    }
                if method == "DELETE" and name in image["tags"]:
                    image["tags"].remove(name)
                if method == "POST" and name not in image["tags"]:
                    image["tags"].append(name)
            return 204, None
        return 404, {"id": "not_found", "message": "the stand-in does not serve %s %s" % (method, path)}


def _public(action: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in action.items() if key != "polls"}


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _serve(self) -> None:
        from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        headers = {key: value for key, value in self.headers.items() if key.lower() != "host"}
        prepared = requests.Request(
            self.command, SERVER + parsed.path, params=query, headers=headers, data=raw or None
        ).prepare()
        request = RequestsOpenAPIRequest(prepared)
        what = "%s %s" % (self.command, parsed.path)
        self.standin.calls.append(what)
        try:
            openapi().validate_request(request)
        except Exception as exc:  # noqa: BLE001 - every validation error is a violation
            self.standin.violations.append("request %s: %s" % (what, _details(exc)))
            self._send(400, {"id": "bad_request", "message": "request violates the OpenAPI specification"})
            return
        if self.headers.get("Authorization") != "Bearer %s" % TOKEN:
            status, body = 401, {"id": "unauthorized", "message": "Unable to authenticate you."}
        else:
            status, body = self.standin.handle(
                self.command, parsed.path, query, json.loads(raw) if raw else None
            )
        payload = json.dumps(body).encode() if body is not None else b""
        response = requests.Response()
        response.status_code = status
        response._content = payload
        response.headers.update(self._headers(payload))
        try:
            openapi().validate_response(request, RequestsOpenAPIResponse(response))
        except Exception as exc:  # noqa: BLE001
            self.standin.violations.append("response %d to %s: %s" % (status, what, _details(exc)))
        self._send(status, body)

    @staticmethod
    def _headers(payload: bytes) -> dict[str, str]:
        headers = {
            "ratelimit-limit": "5000",
            "ratelimit-remaining": "4999",
            "ratelimit-reset": str(int(time.time()) + 60),
        }
        if payload:
            headers["Content-Type"] = "application/json"
        return headers

    def _send(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in self._headers(payload).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PUT = _serve


def _details(exc: Exception) -> str:
    causes = [str(exc)]
    for inner in getattr(exc, "schema_errors", None) or []:
        causes.append(str(getattr(inner, "message", inner))[:300])
    cause = exc.__cause__
    while cause is not None:
        causes.append(str(cause)[:300])
        for inner in getattr(cause, "schema_errors", None) or []:
            causes.append(str(getattr(inner, "message", inner))[:300])
        cause = cause.__cause__
    return "; ".join(causes)
