"""A real OpenStack Glance (image API v2) on 127.0.0.1 for the openstack target's tests.

Glance comes from PyPI into a virtualenv of its own (its dependencies would clash with the test environment's),
made once under tests/output/cache/glance-venv and reused; this module makes it when it is missing, under a lock.
Each server gets its own configuration directory: a sqlite database (``glance-manage db_sync``), a filesystem
store, staging and task directories under the test's temporary directory, and a paste pipeline without Keystone
whose context middleware takes the identity from request headers (``X-Identity-Status: Confirmed``,
``X-Project-Id``, ``X-User-Id``, ``X-Roles``), as a Glance behind a trusted proxy does. The API runs under
gunicorn (``glance.wsgi.api:application``); Glance 33 serves API v2.15 and offers the interoperable image import
(glance-direct, web-download, copy-image). bakery connects through openstacksdk with ``auth_type: none``, the
image endpoint override and those headers (the module's ``headers`` option).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from ports import free_port, wait_listening

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("BAKERY_GLANCE_VENV") or REPO / "tests" / "output" / "cache" / "glance-venv")
# the versions checked to work together here (Glance 33.0.0 serves API v2.15; gunicorn 27 has --no-control-socket)
PACKAGES = ["glance==33.0.0", "gunicorn==27.0.1"]
# and every package under them, at the versions the tests passed with
CONSTRAINTS = Path(__file__).parent / "files" / "glance-constraints.txt"
PROJECT = "bakery-test-project"
HEADERS = {
    "X-Identity-Status": "Confirmed",
    "X-Project-Id": PROJECT,
    "X-User-Id": "bakery-test-user",
    "X-Roles": "admin,member,reader",
}

PIPELINE = "trusted = cors http_proxy_to_wsgi versionnegotiation osprofiler context rootapp\n"
COMPOSITE = """
[composite:glance-api-trusted]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck
"""


def ensure_venv() -> Path:
    """The Glance virtualenv: made (python3 -m venv, pip install) when missing, under a lock; its bin directory."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    ready = VENV / ".bakery-ready"
    with open(str(VENV) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        want = PACKAGES + [hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()]
        if not ready.exists() or ready.read_text().split() != want:
            if VENV.exists() and not VENV.is_symlink():
                shutil.rmtree(VENV)
            if not VENV.exists():
                subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
            subprocess.run(
                [
                    str(VENV / "bin" / "pip"),
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--constraint",
                    str(CONSTRAINTS),
                    *PACKAGES,
                ],
                check=True,
                timeout=1500,
            )
            ready.write_text(" ".join(want) + "\n")
    return VENV / "bin"


class Glance:
    """glance-api under gunicorn, its database and store under *root*; stop() stops it (and what it started)."""

    def __init__(self, root: Path) -> None:
        bin_dir = ensure_venv()
        self.root = root
        conf = root / "conf"
        for name in ("conf", "store", "staging", "tasks", "locks"):
            (root / name).mkdir(parents=True, exist_ok=True)
        paste = (VENV / "etc" / "glance" / "glance-api-paste.ini").read_text()
        marker = "keystone = "
        paste = paste.replace(marker, PIPELINE + marker, 1) + COMPOSITE
        (conf / "glance-api-paste.ini").write_text(paste)
        (conf / "glance-api.conf").write_text(
            "\n".join(
                [
                    "[DEFAULT]",
                    "enabled_backends = fs:file",
                    "log_file = %s" % (root / "glance-api.log"),
                    "[glance_store]",
                    "default_backend = fs",
                    "[fs]",
                    "filesystem_store_datadir = %s" % (root / "store"),
                    "[os_glance_staging_store]",
                    "filesystem_store_datadir = %s" % (root / "staging"),
                    "[os_glance_tasks_store]",
                    "filesystem_store_datadir = %s" % (root / "tasks"),
                    "[database]",
                    "connection = sqlite:///%s" % (root / "glance.sqlite"),
                    "[oslo_concurrency]",
                    "lock_path = %s" % (root / "locks"),
                    "[paste_deploy]",
                    "config_file = %s" % (conf / "glance-api-paste.ini"),
                    "flavor = trusted",
                    "",
                ]
            )
        )
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=str(conf))
        env.pop("PYTHONPATH", None)
        subprocess.run(
            [str(bin_dir / "glance-manage"), "--config-dir", str(conf), "db_sync"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.proc: subprocess.Popen | None = None
        self.log = open(root / "gunicorn.log", "ab")  # noqa: SIM115 - closed in stop()
        for _attempt in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    str(bin_dir / "gunicorn"),
                    "--no-control-socket",
                    # threads: the tests look at images while an upload streams
                    "--workers",
                    "1",
                    "--threads",
                    "8",
                    "--timeout",
                    "600",
                    "-b",
                    "127.0.0.1:%d" % self.port,
                    "glance.wsgi.api:application",
                ],
                env=env,
                cwd=str(root),
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if wait_listening(self.proc, self.port, 60) and self._answers():
                break
            self._kill()
        else:
            raise RuntimeError("glance-api did not start; see %s" % (root / "gunicorn.log"))
        self.url = "http://127.0.0.1:%d" % self.port

    def _answers(self) -> bool:
        """gunicorn listens before its worker loaded Glance: wait until the API answers."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                if requests.get("http://127.0.0.1:%d/versions" % self.port, timeout=5).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.5)
        return False

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self._kill()
        self.log.close()

    # -- what the tests look at
    def options(self, **extra: Any) -> dict[str, Any]:
        """The connection options of a target or module call: no Keystone, the endpoint and identity headers."""
        return dict({"auth_type": "none", "image_endpoint": self.url, "headers": dict(HEADERS)}, **extra)

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(self.url + "/v2" + path, headers=HEADERS, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def images(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/images", limit=1000, **filters)["images"]

    def members(self, image_id: str) -> list[str]:
        return sorted(m["member_id"] for m in self.get("/images/%s/members" % image_id)["members"])

    def data(self, image_id: str) -> bytes:
        response = requests.get(self.url + "/v2/images/%s/file" % image_id, headers=HEADERS, timeout=60)
        response.raise_for_status()
        return response.content

    def stored_files(self) -> list[str]:
        """Files in the store and staging area (a deleted image leaves none)."""
        return sorted(
            str(path.relative_to(self.root))
            for area in ("store", "staging")
            for path in (self.root / area).rglob("*")
            if path.is_file()
        )
