"""A throw-away local Docker registry for push tests.

Starts Debian's ``docker-registry`` (the CNCF distribution registry) with a configuration file of
our own, bound to 127.0.0.1 on a free port, storing blobs in a temporary directory.  The Docker
engine treats registries on 127.0.0.0/8 as insecure-allowed, so plain http works for push and pull.

From Python (integration tests)::

    url, stop = start_registry(tmp_path)                           # no authentication
    url, stop = start_registry(tmp_path, user="u", password="p")   # htpasswd (bcrypt) authentication
    ...
    stop()

``url`` is ``host:port`` (what goes in front of an image name, e.g. ``127.0.0.1:40123/team/app``).

From a shell, through ``scripts/registry``::

    scripts/registry start DIR [--user USER --password PASSWORD]   # prints host:port, keeps running
    scripts/registry stop DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ports import free_port, listens

REGISTRY_BINARY = os.environ.get("BAKERY_REGISTRY_BINARY", "/usr/bin/docker-registry")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: bakery-test-registry
"""

AUTH_TEMPLATE = """\
auth:
  htpasswd:
    realm: bakery-test-registry
    path: {htpasswd}
"""


class RegistryError(RuntimeError):
    """The registry could not be started."""


def _htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the only hash the registry accepts), made by apache2-utils' htpasswd."""
    tool = shutil.which("htpasswd")
    if tool is None:
        raise RegistryError("registry authentication needs htpasswd: apt-get install apache2-utils")
    proc = subprocess.run(
        [tool, "-B", "-i", "-n", user], input=password, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RegistryError("htpasswd failed: %s" % proc.stderr.strip())
    return proc.stdout.strip() + "\n"


def _answers(url: str, timeout: float = 2.0) -> bool:
    """True when the registry answers /v2/ (200, or 401 when authentication is on)."""
    try:
        with urllib.request.urlopen("http://%s/v2/" % url, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, process: subprocess.Popen | None = None) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if process is not None:
        process.wait()


def start_registry(
    tmp_dir: str | os.PathLike[str],
    user: str | None = None,
    password: str | None = None,
) -> tuple[str, Callable[[], None]]:
    """Start a registry whose config, storage, log and pid file live in *tmp_dir*.

    Returns ``(url, stop)``: ``url`` is ``127.0.0.1:<port>`` and ``stop()`` ends the registry
    (calling it twice is harmless).  With *user* and *password* the registry requires them.
    """
    if (user is None) != (password is None):
        raise ValueError("give both user and password, or neither")
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise RegistryError("%s not found: apt-get install docker-registry" % REGISTRY_BINARY)
    base = Path(tmp_dir)
    base.mkdir(parents=True, exist_ok=True)
    storage = base / "storage"
    storage.mkdir(exist_ok=True)

    last_error = ""
    for _attempt in range(3):
        port = free_port()
        url = "127.0.0.1:%d" % port
        config = CONFIG_TEMPLATE.format(storage=storage, addr=url)
        if user is not None and password is not None:
            htpasswd = base / "htpasswd"
            htpasswd.write_text(_htpasswd_line(user, password))
            config += AUTH_TEMPLATE.format(htpasswd=htpasswd)
        config_path = base / "config.yml"
        config_path.write_text(config)
        log_path = base / "registry.log"
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_path)],
                stdin=devnull,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (base / "registry.pid").write_text("%d\n" % process.pid)
        (base / "registry.url").write_text(url + "\n")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            # our registry, not another that took the port first (another stream's, say)
            if listens(process.pid, port) and _answers(url):

                def stop(process: subprocess.Popen = process) -> None:
                    _stop_pid(process.pid, process)
                    (base / "registry.pid").unlink(missing_ok=True)

                return url, stop
            time.sleep(0.1)
        _stop_pid(process.pid, process)
        last_error = log_path.read_text(errors="replace")[-2000:]
        if "address already in use" not in last_error:
            break
    raise RegistryError(
        "docker-registry did not start; its log (%s):\n%s" % (base / "registry.log", last_error)
    )


def stop_registry(tmp_dir: str | os.PathLike[str]) -> bool:
    """Stop the registry that ``start_registry``/``scripts/registry start`` left in *tmp_dir*."""
    pid_path = Path(tmp_dir) / "registry.pid"
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        cmdline = Path("/proc/%d/cmdline" % pid).read_bytes()
    except OSError:
        cmdline = b""
    if b"docker-registry" in cmdline:
        _stop_pid(pid)
    pid_path.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/registry", description=__doc__.partition("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a registry; print its host:port")
    start.add_argument("dir", help="directory for its config, storage, log and pid file")
    start.add_argument("--user")
    start.add_argument("--password")
    stop = sub.add_parser("stop", help="stop the registry started in DIR")
    stop.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            url, _stop = start_registry(args.dir, user=args.user, password=args.password)
        except (RegistryError, ValueError) as exc:
            print("registry: %s" % exc, file=sys.stderr)
            return 1
        print(url)
        return 0
    if not stop_registry(args.dir):
        print("registry: no registry pid file in %s" % args.dir, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
