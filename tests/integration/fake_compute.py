"""A small fake of the Compute Engine API, checked against the official discovery document.

No Compute Engine emulator exists, so the GCE tests talk to this server. It loads ``compute.v1.json``
from the installed google-api-python-client package and checks every request against it: the method
and path must name a method of the document, path and query parameters must be ones the method takes
(with their types, enums and patterns), and the JSON body is checked field by field, recursively,
against the method's request schema. A field or parameter the document does not know, a wrong type,
or an ``[Output Only]`` field sent by the client is a *violation*: the request gets HTTP 400 and the
violation is recorded, and the test fixture fails the test with the list. Answers are checked against
the response schema the same way (a bug in the fake is a test failure too).

It answers with resources and operations that behave like the real ones (operations go PENDING →
RUNNING → DONE, one step per ``get``/``wait``; their effect happens when they are DONE), serves an OAuth2
token endpoint that verifies the signed JWT of a service-account key, and forwards ``/storage/``,
``/upload/storage/`` and ``/download/storage/`` to a gcp-storage-emulator, so that one numbered
sequence of calls covers both APIs. ``fail_at(n)`` makes call number *n* fail (fault injection).

What it does not do: run VMs. An instance gets a RUNNING status and an IP address, nothing more.
"""

from __future__ import annotations

import base64
import copy
import gzip
import http.client
import io
import itertools
import json
import re
import tarfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import googleapiclient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "compute.v1.json"
SERVICE = "/compute/v1/"
GIB = 1 << 30


class Violation(Exception):
    """A request the discovery document does not allow."""


def load_discovery() -> dict:
    return json.loads(DISCOVERY.read_text())


def _methods(resources: dict) -> list[dict]:
    found = []
    for resource in resources.values():
        found.extend((resource.get("methods") or {}).values())
        found.extend(_methods(resource.get("resources") or {}))
    return found


class Schema:
    """Checks JSON values against the document's schemas."""

    def __init__(self, doc: dict) -> None:
        self.schemas = doc["schemas"]

    def check(self, value: Any, schema: dict, where: str, request: bool) -> None:
        if "$ref" in schema:
            name = schema["$ref"]
            self.check(value, self.schemas[name], where, request)
            return
        kind = schema.get("type")
        if kind == "object":
            if not isinstance(value, dict):
                raise Violation("%s: expected an object, got %r" % (where, value))
            properties = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                if key in properties:
                    prop = properties[key]
                    if request and str(prop.get("description", "")).startswith("[Output Only]"):
                        raise Violation("%s.%s is [Output Only]: a client must not send it" % (where, key))
                    self.check(item, prop, "%s.%s" % (where, key), request)
                elif extra is not None:
                    self.check(item, extra, "%s[%r]" % (where, key), request)
                else:
                    raise Violation(
                        "%s: unknown field %r (the schema knows: %s)"
                        % (where, key, ", ".join(sorted(properties)))
                    )
        elif kind == "array":
            if not isinstance(value, list):
                raise Violation("%s: expected a list, got %r" % (where, value))
            for index, item in enumerate(value):
                self.check(item, schema.get("items") or {}, "%s[%d]" % (where, index), request)
        elif kind == "string":
            fmt = schema.get("format")
            if fmt in ("int64", "uint64") and isinstance(value, int) and not isinstance(value, bool):
                return
            if not isinstance(value, str):
                raise Violation("%s: expected a string, got %r" % (where, value))
            if fmt in ("int64", "uint64") and not re.fullmatch(r"-?\d+", value):
                raise Violation("%s: expected an %s string, got %r" % (where, fmt, value))
            if "enum" in schema and value not in schema["enum"]:
                raise Violation("%s: %r is not one of %s" % (where, value, schema["enum"]))
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise Violation("%s: expected an integer, got %r" % (where, value))
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise Violation("%s: expected a boolean, got %r" % (where, value))
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Violation("%s: expected a number, got %r" % (where, value))
        elif kind == "any" or kind is None:
            return
        else:
            raise Violation("%s: the fake does not know schema type %r" % (where, kind))


class Route:
    def __init__(self, method: dict) -> None:
        self.method = method
        self.id = method["id"]
        self.http = method["httpMethod"]
        pattern = re.sub(r"\{([A-Za-z0-9_]+)\}", r"(?P<\1>[^/]+)", method["path"])
        self.regex = re.compile("^%s$" % pattern)
        self.params = method.get("parameters") or {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())


class FakeCompute:
    """State and behaviour of the fake; ``serve()`` binds it to 127.0.0.1."""

    def __init__(
        self,
        storage_url: str | None = None,
        public_key: Any = None,
        access_token: str = "",
        resumable_received: Any = None,
    ) -> None:
        self.doc = load_discovery()
        self.revision = self.doc["revision"]
        self.schema = Schema(self.doc)
        self.routes = [Route(m) for m in _methods(self.doc["resources"])]
        self.global_params = self.doc.get("parameters") or {}
        self.storage_url = storage_url
        # gcp-storage-emulator answers a status query of an upload that has no byte yet with
        # "Range: bytes=0-0" (one byte); Cloud Storage sends no Range header then. Given the emulator's
        # byte count, the forwarder corrects that answer.
        self.resumable_received = resumable_received
        self.public_key = public_key
        self.tokens = {access_token} if access_token else set()
        self.lock = threading.RLock()
        self.violations: list[str] = []
        self.calls: list[str] = []  # "METHOD id-or-path", numbered from 1 in order
        self.faults: dict[int, int] = {}
        self.ids = itertools.count(1000)
        self.instances: dict[tuple[str, str, str], dict] = {}
        # every instance inserted, in order: name, project, zone, source image (project/name), labels
        self.launched: list[dict[str, Any]] = []
        self.disks: dict[tuple[str, str, str], dict] = {}
        self.images: dict[tuple[str, str], dict] = {}
        self.operations: dict[str, dict] = {}
        self.effects: dict[str, Any] = {}
        self.imported: dict[str, bytes] = {}  # image name -> the tarball read from storage
        self.instance_ip = "127.0.0.1"
        # collection ("instances", "images") -> seconds that finishing one of its operations takes
        self.slow: dict[str, float] = {}
        self.url = ""
        self.add_image("debian-cloud", "debian-12-bookworm-v20261101", family="debian-12")
        # the zones every project has (a few of Compute Engine's); zone name -> status
        self.zones: dict[str, str] = {
            "europe-west1-b": "UP",
            "europe-west1-c": "UP",
            "europe-west1-d": "UP",
            "us-central1-a": "UP",
            "us-central1-b": "UP",
            "us-east1-b": "UP",
        }

    # ------------------------------------------------------------------ control (for tests)
    def fail_at(self, number: int, status: int = 403) -> None:
        """Make call *number* (counted from 1, over Compute and Storage) fail with *status*."""
        self.faults[number] = status

    def finish_all(self) -> None:
        """Finish every pending operation, as Compute Engine does whether or not anyone waits for it."""
        with self.lock:
            for name in list(self.operations):
                while self.operations[name]["status"] != "DONE":
                    self.advance(name)

    def reset_calls(self) -> None:
        with self.lock:
            self.calls = []
            self.faults = {}

    def temporary(self) -> dict[str, list[str]]:
        """What a test must find gone: instances, disks (and, through storage, objects)."""
        with self.lock:
            return {
                "instances": sorted(i["name"] for i in self.instances.values()),
                "disks": sorted(d["name"] for d in self.disks.values()),
            }

    # ------------------------------------------------------------------ resources
    def link(self, path: str) -> str:
        return "%s%s%s" % (self.url or "https://compute.googleapis.com", SERVICE, path)

    def add_image(self, project: str, name: str, family: str = "", **extra: Any) -> dict:
        image = {
            "kind": "compute#image",
            "id": str(next(self.ids)),
            "creationTimestamp": _now(),
            "name": name,
            "status": "READY",
            "sourceType": "RAW",
            "diskSizeGb": "10",
            "archiveSizeBytes": str(400 << 20),
            "selfLink": self.link("projects/%s/global/images/%s" % (project, name)),
            "labelFingerprint": "42WmSpB8rSM=",
        }
        if family:
            image["family"] = family
        image.update(extra)
        self.images[(project, name)] = image
        return image

    def operation(self, project: str, zone: str | None, kind: str, target: str, effect: Any) -> dict:
        name = "operation-%d-%s" % (next(self.ids), kind)
        scope = "projects/%s/zones/%s" % (project, zone) if zone else "projects/%s/global" % project
        op = {
            "kind": "compute#operation",
            "id": str(next(self.ids)),
            "name": name,
            "operationType": kind,
            "targetLink": self.link(target),
            "targetId": str(next(self.ids)),
            "status": "PENDING",
            "progress": 0,
            "insertTime": _now(),
            "user": "bakery-test@fake.iam.gserviceaccount.com",
            "selfLink": self.link("%s/operations/%s" % (scope, name)),
        }
        if zone:
            op["zone"] = self.link("projects/%s/zones/%s" % (project, zone))
        self.operations[name] = op
        self.effects[name] = effect
        return copy.deepcopy(op)

    def advance(self, name: str) -> dict:
        op = self.operations.get(name)
        if op is None:
            raise KeyError(name)
        if op["status"] == "PENDING":
            op.update(status="RUNNING", progress=50, startTime=_now())
        elif op["status"] == "RUNNING":
            op.update(status="DONE", progress=100, endTime=_now())
            effect = self.effects.pop(name, None)
            error = effect() if effect else None
            if error:
                op["error"] = {"errors": [{"code": error[0], "message": error[1]}]}
                op["httpErrorStatusCode"] = 400
                op["httpErrorMessage"] = "BAD REQUEST"
        return copy.deepcopy(op)

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, verb: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        rel = path[len(SERVICE) :]
        candidates = [r for r in self.routes if r.http == verb and r.regex.match(rel)]
        if not candidates:
            raise Violation("%s %s is not a method of compute v1 (revision %s)" % (verb, path, self.revision))
        route = min(candidates, key=lambda r: len(r.regex.groupindex))
        args = route.regex.match(rel).groupdict()
        args = {key: urllib.parse.unquote(value) for key, value in args.items()}
        for name, value in args.items():
            pattern = route.params.get(name, {}).get("pattern")
            if pattern and not re.fullmatch(pattern, value):
                raise Violation(
                    "%s: path parameter %s=%r does not match %s" % (route.id, name, value, pattern)
                )
        for name, values in query.items():
            spec = route.params.get(name) or self.global_params.get(name)
            if spec is None or spec.get("location") != "query":
                raise Violation("%s: unknown query parameter %r" % (route.id, name))
            for value in values:
                kind = spec.get("type")
                if kind == "integer" and not re.fullmatch(r"\d+", value):
                    raise Violation("%s: %s=%r is not an integer" % (route.id, name, value))
                if kind == "boolean" and value not in ("true", "false"):
                    raise Violation("%s: %s=%r is not a boolean" % (route.id, name, value))
                if "enum" in spec and value not in spec["enum"]:
                    raise Violation("%s: %s=%r is not one of %s" % (route.id, name, value, spec["enum"]))
        request_schema = route.method.get("request")
        if request_schema:
            if body is None:
                raise Violation("%s needs a %s body" % (route.id, request_schema["$ref"]))
            self.schema.check(body, request_schema, request_schema["$ref"], request=True)
        elif body not in (None, {}):
            raise Violation("%s takes no body, got %r" % (route.id, body))
        handler = getattr(self, "do_" + route.id.replace("compute.", "").replace(".", "_"), None)
        if handler is None:
            raise Violation("%s is valid but the fake does not implement it" % route.id)
        status, answer = handler(args, {k: v[0] for k, v in query.items()}, body)
        response_schema = route.method.get("response")
        if status == 200 and response_schema:
            try:
                self.schema.check(answer, response_schema, "answer " + response_schema["$ref"], request=False)
            except Violation as exc:
                self.violations.append("the fake answered badly (a bug of the fake): %s" % exc)
                return 500, {"error": {"code": 500, "message": "fake answered badly: %s" % exc}}
        return status, answer

    @staticmethod
    def not_found(what: str) -> tuple[int, Any]:
        return 404, {
            "error": {"code": 404, "message": "The resource '%s' was not found" % what, "errors": []}
        }

    # ------------------------------------------------------------------ operations
    def do_zoneOperations_wait(self, a, q, body):
        return self._op(a)

    def do_zoneOperations_get(self, a, q, body):
        return self._op(a)

    def do_globalOperations_wait(self, a, q, body):
        return self._op(a)

    def do_globalOperations_get(self, a, q, body):
        return self._op(a)

    def _op(self, a):
        op = self.operations.get(a["operation"])
        if op is not None and op["status"] == "RUNNING":
            # a slow Compute Engine: the answer that would finish the operation takes this long
            for collection, seconds in self.slow.items():
                if "/%s/" % collection in op["targetLink"]:
                    time.sleep(seconds)
        try:
            return 200, self.advance(a["operation"])
        except KeyError:
            return self.not_found(a["operation"])

    # ------------------------------------------------------------------ instances and disks
    def _filter(self, items: list[dict], text: str | None) -> list[dict]:
        if not text:
            return items
        terms = [t.strip().strip("()").strip() for t in re.split(r"\)\s*(?:AND\s*)?\(|\s+AND\s+", text)]
        checks = []
        for term in terms:
            match = re.fullmatch(r'([a-zA-Z.\-_]+)\s*=\s*"?([^"]*)"?', term)
            if not match:
                raise Violation("the fake cannot read the filter term %r of %r" % (term, text))
            checks.append(match.groups())

        def value(item: dict, field: str) -> Any:
            for part in field.split("."):
                item = item.get(part) if isinstance(item, dict) else None
            return item

        return [i for i in items if all(str(value(i, f)) == v for f, v in checks)]

    def do_instances_insert(self, a, q, body):
        project, zone, name = a["project"], a["zone"], body["name"]
        if (project, zone, name) in self.instances:
            return 409, {"error": {"code": 409, "message": "instance %s already exists" % name}}
        boot = body["disks"][0]
        init = boot.get("initializeParams") or {}
        source = init.get("sourceImage", "")
        src = re.search(r"projects/([^/]+)/global/images/([^/]+)$", source)
        if not src or (src.group(1), src.group(2)) not in self.images:
            return 400, {"error": {"code": 400, "message": "source image %r not found" % source}}
        disk_name = init.get("diskName") or name
        self.launched.append(
            {
                "name": name,
                "project": project,
                "zone": zone,
                "source_image": "%s/%s" % (src.group(1), src.group(2)),
                "labels": dict(body.get("labels") or {}),
            }
        )
        path = "projects/%s/zones/%s/instances/%s" % (project, zone, name)
        interfaces = []
        for index, nic in enumerate(body.get("networkInterfaces") or []):
            item = {
                "kind": "compute#networkInterface",
                "name": "nic%d" % index,
                "networkIP": self.instance_ip,
            }
            item["network"] = self.link(
                "projects/%s/%s" % (project, nic.get("network", "global/networks/default"))
            )
            if nic.get("accessConfigs"):
                item["accessConfigs"] = [
                    dict(c, kind="compute#accessConfig", natIP=self.instance_ip) for c in nic["accessConfigs"]
                ]
            interfaces.append(item)
        instance = {
            "kind": "compute#instance",
            "id": str(next(self.ids)),
            "creationTimestamp": _now(),
            "name": name,
            "zone": self.link("projects/%s/zones/%s" % (project, zone)),
            "machineType": self.link("projects/%s/%s" % (project, body["machineType"])),
            "status": "PROVISIONING",
            "labels": body.get("labels") or {},
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": "abc=",
                "items": (body.get("metadata") or {}).get("items") or [],
            },
            "networkInterfaces": interfaces,
            "disks": [
                {
                    "kind": "compute#attachedDisk",
                    "boot": True,
                    "autoDelete": bool(boot.get("autoDelete")),
                    "deviceName": disk_name,
                    "source": self.link("projects/%s/zones/%s/disks/%s" % (project, zone, disk_name)),
                }
            ],
            "selfLink": self.link(path),
        }
        self.instances[(project, zone, name)] = instance
        self.disks[(project, zone, disk_name)] = {
            "kind": "compute#disk",
            "id": str(next(self.ids)),
            "creationTimestamp": _now(),
            "name": disk_name,
            "zone": instance["zone"],
            "sizeGb": str(init.get("diskSizeGb") or 10),
            "sourceImage": source,
            "status": "READY",
            "labels": init.get("labels") or {},
            "users": [instance["selfLink"]],
            "selfLink": self.link("projects/%s/zones/%s/disks/%s" % (project, zone, disk_name)),
        }

        def started():
            instance["status"] = "RUNNING"

        return 200, self.operation(project, zone, "insert", path, started)

    def do_instances_get(self, a, q, body):
        instance = self.instances.get((a["project"], a["zone"], a["instance"]))
        return (200, copy.deepcopy(instance)) if instance else self.not_found(a["instance"])

    def do_instances_list(self, a, q, body):
        items = [i for key, i in self.instances.items() if key[:2] == (a["project"], a["zone"])]
        return 200, {
            "kind": "compute#instanceList",
            "id": "list",
            "items": copy.deepcopy(self._filter(items, q.get("filter"))),
        }

    def do_instances_stop(self, a, q, body):
        key = (a["project"], a["zone"], a["instance"])
        if key not in self.instances:
            return self.not_found(a["instance"])

        def stopped():
            self.instances[key]["status"] = "TERMINATED"

        self.instances[key]["status"] = "STOPPING"
        return 200, self.operation(
            a["project"], a["zone"], "stop", "projects/%s/zones/%s/instances/%s" % key, stopped
        )

    def do_instances_delete(self, a, q, body):
        key = (a["project"], a["zone"], a["instance"])
        if key not in self.instances:
            return self.not_found(a["instance"])

        def deleted():
            instance = self.instances.pop(key, None)
            for disk in (instance or {}).get("disks") or []:
                dkey = (key[0], key[1], disk["source"].rsplit("/", 1)[-1])
                if disk.get("autoDelete"):
                    self.disks.pop(dkey, None)
                elif dkey in self.disks:
                    self.disks[dkey]["users"] = []

        return 200, self.operation(
            a["project"], a["zone"], "delete", "projects/%s/zones/%s/instances/%s" % key, deleted
        )

    def do_disks_get(self, a, q, body):
        disk = self.disks.get((a["project"], a["zone"], a["disk"]))
        return (200, copy.deepcopy(disk)) if disk else self.not_found(a["disk"])

    def do_disks_list(self, a, q, body):
        items = [d for key, d in self.disks.items() if key[:2] == (a["project"], a["zone"])]
        return 200, {
            "kind": "compute#diskList",
            "id": "list",
            "items": copy.deepcopy(self._filter(items, q.get("filter"))),
        }

    def do_disks_delete(self, a, q, body):
        key = (a["project"], a["zone"], a["disk"])
        disk = self.disks.get(key)
        if disk is None:
            return self.not_found(a["disk"])
        if disk.get("users") and any(
            u.rsplit("/", 1)[-1] in [k[2] for k in self.instances] for u in disk["users"]
        ):
            return 400, {
                "error": {"code": 400, "message": "The disk resource '%s' is already being used" % a["disk"]}
            }
        return 200, self.operation(
            a["project"],
            a["zone"],
            "delete",
            "projects/%s/zones/%s/disks/%s" % key,
            lambda: self.disks.pop(key, None) and None,  # an effect's result is an error
        )

    # ------------------------------------------------------------------ zones
    def do_zones_get(self, a, q, body):
        status = self.zones.get(a["zone"])
        if status is None:
            return self.not_found("projects/%s/zones/%s" % (a["project"], a["zone"]))
        region = a["zone"].rsplit("-", 1)[0]
        return 200, {
            "kind": "compute#zone",
            "id": str(2000 + sorted(self.zones).index(a["zone"])),
            "creationTimestamp": "2014-05-30T18:35:16.575-07:00",
            "name": a["zone"],
            "description": a["zone"],
            "status": status,
            "region": self.link("projects/%s/regions/%s" % (a["project"], region)),
            "selfLink": self.link("projects/%s/zones/%s" % (a["project"], a["zone"])),
            "supportsPzs": False,
        }

    # ------------------------------------------------------------------ images
    def do_images_get(self, a, q, body):
        image = self.images.get((a["project"], a["image"]))
        return (200, copy.deepcopy(image)) if image else self.not_found(a["image"])

    def do_images_getFromFamily(self, a, q, body):
        found = [
            i
            for key, i in self.images.items()
            if key[0] == a["project"]
            and i.get("family") == a["family"]
            and i["status"] == "READY"
            and not i.get("deprecated")
        ]
        if not found:
            return self.not_found("family " + a["family"])
        return 200, copy.deepcopy(max(found, key=lambda i: i["creationTimestamp"] + i["id"]))

    def do_images_list(self, a, q, body):
        items = [i for key, i in self.images.items() if key[0] == a["project"]]
        return 200, {
            "kind": "compute#imageList",
            "id": "list",
            "items": copy.deepcopy(self._filter(items, q.get("filter"))),
        }

    def do_images_insert(self, a, q, body):
        project, name = a["project"], body["name"]
        if (project, name) in self.images:
            return 409, {"error": {"code": 409, "message": "The resource 'images/%s' already exists" % name}}
        extra = {
            k: v
            for k, v in body.items()
            if k
            in (
                "family",
                "description",
                "labels",
                "guestOsFeatures",
                "storageLocations",
                "licenses",
                "architecture",
            )
        }
        image = self.add_image(project, name, status="PENDING", **extra)
        image.pop("archiveSizeBytes", None)
        path = "projects/%s/global/images/%s" % (project, name)
        if "sourceDisk" in body:
            match = re.search(r"projects/([^/]+)/zones/([^/]+)/disks/([^/]+)$", body["sourceDisk"])
            image["sourceDisk"] = self.link(body["sourceDisk"])
            image["sourceType"] = "RAW"

            def captured():
                disk = self.disks.get(match.groups()) if match else None
                if disk is None:
                    self.images.pop((project, name), None)
                    return ("RESOURCE_NOT_FOUND", "disk %s not found" % body["sourceDisk"])
                for user in disk.get("users") or []:
                    owner = self.instances.get((match.group(1), match.group(2), user.rsplit("/", 1)[-1]))
                    if owner and owner["status"] != "TERMINATED":
                        self.images.pop((project, name), None)
                        return (
                            "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
                            "disk is used by running instance %s" % owner["name"],
                        )
                image.update(status="READY", diskSizeGb=disk["sizeGb"], archiveSizeBytes=str(123 << 20))
                return None

            return 200, self.operation(project, None, "insert", path, captured)
        source = body["rawDisk"]["source"]
        image["rawDisk"] = {"source": source, "containerType": "TAR"}

        def imported():
            problem = self.read_import(name, source)
            if problem:
                self.images.pop((project, name), None)
                return ("INVALID_IMAGE", problem)
            data = self.imported[name]
            size = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[0].size
            image.update(status="READY", diskSizeGb=str(size // GIB), archiveSizeBytes=str(len(data)))
            return None

        return 200, self.operation(project, None, "insert", path, imported)

    def read_import(self, name: str, source: str) -> str | None:
        """Read the object as Compute Engine would and check it; a message when it cannot be imported."""
        match = re.fullmatch(r"https://storage\.googleapis\.com/([^/]+)/(.+)", source)
        if not match or not self.storage_url:
            return "rawDisk.source %r is not a Cloud Storage URL" % source
        bucket, obj = match.group(1), urllib.parse.unquote(match.group(2))
        url = urllib.parse.urlsplit(self.storage_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.request(
            "GET", "/download/storage/v1/b/%s/o/%s?alt=media" % (bucket, urllib.parse.quote(obj, safe=""))
        )
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        if reply.status != 200:
            return "cannot read %s: HTTP %d" % (source, reply.status)
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
                raw = handle.read(1024)
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
            members = archive.getmembers()
        except (OSError, tarfile.TarError) as exc:
            return "the object is not a gzip-compressed tar archive: %s" % exc
        if len(raw) < 512 or [m.name for m in members] != ["disk.raw"]:
            return "the archive must hold exactly one file, disk.raw (it holds %s)" % [
                m.name for m in members
            ]
        if members[0].size % GIB:
            return "disk.raw is %d bytes, not a whole number of GiB" % members[0].size
        self.imported[name] = data
        return None

    def do_images_delete(self, a, q, body):
        key = (a["project"], a["image"])
        if key not in self.images:
            return self.not_found(a["image"])
        return 200, self.operation(
            a["project"],
            None,
            "delete",
            "projects/%s/global/images/%s" % key,
            lambda: self.images.pop(key, None) and None,  # an effect's result is an error
        )

    def do_images_deprecate(self, a, q, body):
        key = (a["project"], a["image"])
        if key not in self.images:
            return self.not_found(a["image"])

        def deprecated():
            self.images[key]["deprecated"] = dict(body) if body.get("state") != "ACTIVE" else {}
            if not self.images[key]["deprecated"]:
                del self.images[key]["deprecated"]

        return 200, self.operation(
            a["project"], None, "deprecate", "projects/%s/global/images/%s" % key, deprecated
        )

    def do_images_setLabels(self, a, q, body):
        key = (a["project"], a["resource"])
        if key not in self.images:
            return self.not_found(a["resource"])
        if body.get("labelFingerprint") != self.images[key].get("labelFingerprint"):
            return 412, {
                "error": {
                    "code": 412,
                    "message": "Labels fingerprint either invalid or resource labels have changed",
                }
            }

        def relabelled():
            self.images[key]["labels"] = dict(body.get("labels") or {})
            self.images[key]["labelFingerprint"] = "%s=" % next(self.ids)

        return 200, self.operation(
            a["project"], None, "setlabels", "projects/%s/global/images/%s" % key, relabelled
        )

    # ------------------------------------------------------------------ token endpoint
    def token(self, form: dict[str, list[str]]) -> tuple[int, Any]:
        grant = (form.get("grant_type") or [""])[0]
        assertion = (form.get("assertion") or [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or assertion.count(".") != 2:
            raise Violation("token endpoint: expected a JWT bearer grant, got grant_type=%r" % grant)
        head, claims, signature = assertion.split(".")

        def unb64(text: str) -> bytes:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

        if self.public_key is None:
            raise Violation("token endpoint: no service-account key configured")
        try:
            self.public_key.verify(
                unb64(signature), ("%s.%s" % (head, claims)).encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:  # noqa: BLE001
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        payload = json.loads(unb64(claims))
        if "cloud-platform" not in payload.get("scope", ""):
            raise Violation("token endpoint: scope %r lacks cloud-platform" % payload.get("scope"))
        token = "ya29.fake-%d" % next(self.ids)
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}


class Handler(BaseHTTPRequestHandler):
    server_version = "FakeCompute/1"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    @property
    def fake(self) -> FakeCompute:
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def reply(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> None:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if raw is None and body is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(self.path)
        fake = self.fake
        if split.path == "/token":
            with fake.lock:
                try:
                    status, answer = fake.token(urllib.parse.parse_qs(data.decode()))
                except Violation as exc:
                    fake.violations.append(str(exc))
                    status, answer = 400, {"error": "invalid_request", "error_description": str(exc)}
            self.reply(status, answer)
            return
        auth = self.headers.get("Authorization", "")
        with fake.lock:
            fake.calls.append("%s %s" % (self.command, split.path))
            number = len(fake.calls)
            fault = fake.faults.pop(number, None)
            known = auth.startswith("Bearer ") and auth[7:] in fake.tokens
        if not known:
            with fake.lock:
                fake.violations.append(
                    "call %d %s %s without a valid bearer token" % (number, self.command, split.path)
                )
            self.reply(
                401,
                {"error": {"code": 401, "message": "Request is missing valid authentication credentials."}},
            )
            return
        if fault:
            self.reply(
                fault,
                {"error": {"code": fault, "message": "injected fault at call %d" % number, "errors": []}},
            )
            return
        if split.path.startswith(("/storage/", "/upload/storage/", "/download/storage/")):
            self.forward(data)
            return
        if not split.path.startswith(SERVICE):
            with fake.lock:
                fake.violations.append("%s %s is not under %s" % (self.command, split.path, SERVICE))
            self.reply(404, {"error": {"code": 404, "message": "not found"}})
            return
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = None
        with fake.lock:
            try:
                status, answer = fake.dispatch(self.command, split.path, query, body)
            except Violation as exc:
                fake.violations.append(str(exc))
                status, answer = (
                    400,
                    {"error": {"code": 400, "message": "fake compute: %s" % exc, "errors": []}},
                )
        self.reply(status, answer)

    def forward(self, data: bytes) -> None:
        """Pass a Cloud Storage call on to the emulator; its Location header keeps pointing at us."""
        target = urllib.parse.urlsplit(self.fake.storage_url)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "connection")}
        conn.request(self.command, self.path, body=data or None, headers=headers)
        reply = conn.getresponse()
        body = reply.read()
        out = {}
        for key, value in reply.getheaders():
            if key.lower() in ("content-length", "connection", "transfer-encoding", "server", "date"):
                continue
            out[key] = value
        conn.close()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if reply.status == 308 and self.fake.resumable_received and "upload_id" in query:
            if self.fake.resumable_received(query["upload_id"][0]) == 0:
                out = {k: v for k, v in out.items() if k.lower() != "range"}
        self.reply(reply.status, headers=out, raw=body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class Server:
    """The fake on 127.0.0.1 in a thread; ``url`` is its base URL."""

    def __init__(self, fake: FakeCompute) -> None:
        self.fake = fake
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = fake  # type: ignore[attr-defined]
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        fake.url = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
