"""AWS test doubles that are real servers: moto_server on 127.0.0.1, and a proxy in front of it that fails
chosen requests, so that a test can make each AWS call of a flow fail in turn without any test hook in
the code under test (it only sees its endpoint_url answer with an error).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError
from ports import free_port, wait_listening

REGION = "us-east-1"
COPY_REGIONS = ["eu-west-1", "us-west-2"]
# a handful of source AMIs instead of moto's ~1300 per region: every describe_images is then fast
AMIS = Path(__file__).parent / "files" / "moto-amis.json"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# EBS direct API paths, named as botocore names the operations
_EBS = [
    ("POST", re.compile(r"^/snapshots$"), "StartSnapshot"),
    ("PUT", re.compile(r"^/snapshots/[^/]+/blocks/\d+$"), "PutSnapshotBlock"),
    ("POST", re.compile(r"^/snapshots/completion/[^/]+$"), "CompleteSnapshot"),
    ("GET", re.compile(r"^/snapshots/[^/]+/blocks$"), "ListSnapshotBlocks"),
    ("GET", re.compile(r"^/snapshots/[^/]+/blocks/\d+$"), "GetSnapshotBlock"),
]


class MotoServer:
    """``moto_server`` on 127.0.0.1 and a free port; ``stop()`` ends it."""

    def __init__(self, log: Path) -> None:
        binary = shutil.which("moto_server") or str(Path(os.sys.executable).parent / "moto_server")
        self._log = open(log, "wb")
        # a port another process took between free_port() and moto's bind: moto exits, and the next try
        # has another port (the port's answer alone could come from another stream's moto_server)
        for _attempt in range(3):
            self.port = free_port()
            self.url = "http://127.0.0.1:%d" % self.port
            self.proc = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, MOTO_AMIS_PATH=str(AMIS)),
            )
            if wait_listening(self.proc, self.port, 30):
                return
            if self.proc.poll() is None:  # no bind in 30 s: no other port will help
                break
        self.stop()
        raise RuntimeError("moto_server did not start; see %s" % log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def client(self, service: str, region: str = REGION):
        return boto3.client(service, region_name=region, endpoint_url=self.url, **CREDENTIALS)


def operation_of(method: str, path: str, headers, body: bytes) -> str:
    """The AWS operation a request is: EC2's Action, an EBS path, or the JSON protocol's target."""
    target = headers.get("X-Amz-Target")
    if target:
        return target.split(".")[-1]
    if body and b"Action=" in body:
        return urllib.parse.parse_qs(body.decode("ascii", "replace")).get("Action", ["?"])[0]
    for verb, pattern, name in _EBS:
        if method == verb and pattern.match(path.split("?")[0]):
            return name
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    return query.get("Action", ["%s %s" % (method, path)])[0]


class FaultProxy:
    """Forwards to moto; records every operation; fails the ``nth`` request of operation ``fail``, and holds
    the requests of the operations in ``delays`` for that many seconds.

    The failure is an HTTP 400 with an error code botocore does not retry (``InjectedFault``), in the
    protocol's own error format, so the code under test sees an ordinary AWS error.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.calls: list[str] = []
        self.fail: str | None = None
        self.nth = 1
        self.failed: list[str] = []
        # seconds to hold a request of an operation before it is forwarded
        self.delays: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                op = operation_of(self.command, self.path, self.headers, body)
                if proxy.should_fail(op):
                    return self._error(op)
                if proxy.delays.get(op):  # a slow AWS: the call arrives late, whatever became of its caller
                    time.sleep(proxy.delays[op])
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                    self.send_response(reply.status)
                    for key, value in reply.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            def _error(self, op):
                message = "injected failure of %s" % op
                if self.headers.get("X-Amz-Target") or op in {entry[2] for entry in _EBS}:
                    data = json.dumps({"message": message}).encode()
                    ctype = "application/x-amz-json-1.1"
                else:
                    data = (
                        "<Response><Errors><Error><Code>InjectedFault</Code><Message>%s</Message></Error>"
                        "</Errors><RequestID>injected</RequestID></Response>" % message
                    ).encode()
                    ctype = "text/xml"
                self.send_response(400)
                self.send_header("Content-Type", ctype)
                self.send_header("x-amzn-ErrorType", "InjectedFault")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def should_fail(self, op: str) -> bool:
        with self._lock:
            self.calls.append(op)
            self._seen[op] = self._seen.get(op, 0) + 1
            if op == self.fail and self._seen[op] == self.nth:
                self.failed.append(op)
                return True
            return False

    def arm(self, op: str | None, nth: int = 1) -> None:
        with self._lock:
            self.fail, self.nth = op, nth
            self.calls, self.failed, self._seen = [], [], {}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read(call, *args, **kwargs):
    """The test's own read of moto's state, asked again when moto answers it with a server error: its backends
    are not safe for threads, and a read while other flows write (test_ami runs four fault cases at a time) has
    been seen to end in its "500 Internal Server Error" page, which botocore cannot parse. Only a read of what is
    there, never a call of the flow under test."""
    for pause in (0.2, 0.4, 0.6, 0.8):
        try:
            return call(*args, **kwargs)
        except (ResponseParserError, ClientError) as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if not (isinstance(exc, ResponseParserError) or (status or 0) >= 500):
                raise
            time.sleep(pause)
    return call(*args, **kwargs)  # the fifth time: its error is the test's


def leftovers(moto: MotoServer, bake_id: str, regions: list[str]) -> dict[str, list[str]]:
    """What of a bake is still there: live instances, and anything tagged temporary."""
    found: dict[str, list[str]] = {}
    temp = [
        {"Name": "tag:bakery-bake-id", "Values": [bake_id]},
        {"Name": "tag:bakery-temporary", "Values": ["true"]},
    ]
    for region in regions:
        ec2 = moto.client("ec2", region)
        live = [
            i["InstanceId"]
            for r in _read(
                ec2.describe_instances, Filters=[{"Name": "tag:bakery-bake-id", "Values": [bake_id]}]
            )["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ]
        items = {
            "instances": live,
            "images": [
                i["ImageId"] for i in _read(ec2.describe_images, Owners=["self"], Filters=temp)["Images"]
            ],
            "snapshots": [
                s["SnapshotId"]
                for s in _read(ec2.describe_snapshots, OwnerIds=["self"], Filters=temp)["Snapshots"]
            ],
            "key_pairs": [k["KeyName"] for k in _read(ec2.describe_key_pairs, Filters=temp)["KeyPairs"]],
            "security_groups": [
                g["GroupId"] for g in _read(ec2.describe_security_groups, Filters=temp)["SecurityGroups"]
            ],
        }
        for kind, ids in items.items():
            if ids:
                found["%s/%s" % (region, kind)] = ids
    return found


def counts(moto: MotoServer, regions: list[str]) -> dict[str, int]:
    """Instances (any state), own images and own snapshots per region: a second run must not change them."""
    out = {}
    for region in regions:
        ec2 = moto.client("ec2", region)
        out[region + "/instances"] = sum(
            len(r["Instances"]) for r in ec2.describe_instances()["Reservations"]
        )
        out[region + "/images"] = len(ec2.describe_images(Owners=["self"])["Images"])
        out[region + "/snapshots"] = len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])
    return out
