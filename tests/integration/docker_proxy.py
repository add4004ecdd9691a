"""A Docker Engine API proxy on a unix socket that fails chosen requests, so that a test can make one step
of a capture fail (tagging, say) with no test hook in the code under test: the module is only given the
proxy's socket as its docker_host. Plain request/response calls only (no attach, no hijacked streams).
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

ENGINE = "/var/run/docker.sock"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=300)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    proxy: DockerFaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        pass

    def address_string(self) -> str:
        return "docker-proxy"

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy = self.server.proxy
        if proxy.should_fail(self.command, self.path):
            payload = b'{"message": "injected failure of %s %s"}' % (
                self.command.encode(),
                self.path.encode(),
            )
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = _UnixConnection(proxy.engine)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request(self.command, self.path, body=body, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _relay


class DockerFaultProxy:
    """``with DockerFaultProxy(path, fail=(method, path regex, nth)) as proxy``: proxy.url is the docker_host."""

    def __init__(self, path: str, fail: tuple[str, str, int], engine: str = ENGINE) -> None:
        self.path = path
        self.engine = engine
        self._method, self._pattern, self._nth = fail[0], re.compile(fail[1]), fail[2]
        self._seen = 0
        self._lock = threading.Lock()
        self.failed: list[str] = []
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return "unix://" + self.path

    def should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests.append("%s %s" % (method, path))
            if method != self._method or not self._pattern.search(path):
                return False
            self._seen += 1
            if self._seen == self._nth:
                self.failed.append("%s %s" % (method, path))
                return True
            return False

    def __enter__(self) -> DockerFaultProxy:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._server = _Server(self.path, _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)
