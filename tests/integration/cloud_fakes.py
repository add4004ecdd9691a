"""The cloud stand-ins as one long-running process, for what cannot hold them in-process (Molecule's cloud
scenario): moto_server (EC2, S3, EBS direct APIs) and the Google fakes (the fake Compute Engine of
fake_compute.py in front of gcp-storage-emulator, with a throwaway service-account key whose token_uri is
the fake's /token), all on 127.0.0.1 and free ports.

    python tests/integration/cloud_fakes.py --dir DIR

writes DIR/fakes.json (the state: URLs, ports, key file, pids) once everything answers, and runs until
SIGTERM or SIGINT, then stops everything it started and removes the state file. Requests the Compute API
would not accept are written to DIR/gce-violations.json as they happen (an empty list while there are none).
The process leads its own process group, and moto_server is in it: killing the group leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

from aws import CREDENTIALS, REGION, MotoServer, free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_compute import FakeCompute, Server
from gcp_storage_emulator.server import RequestHandler as StorageHandler
from gcp_storage_emulator.server import create_server

PROJECT = "bakery-molecule"
BUCKET = "bakery-molecule-uploads"


def write_json(path: Path, value: object) -> None:
    """Write atomically (readers never see half a file), readable by its owner only."""
    partial = path.with_name("." + path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    partial.chmod(0o600)
    partial.replace(path)


class GoogleFakes:
    """The fake Compute Engine, the storage emulator behind it, and a service-account key for them."""

    def __init__(self, workdir: Path, project: str = PROJECT, bucket: str = BUCKET) -> None:
        self.project, self.bucket = project, bucket
        storage_port = free_port()
        # the emulator writes headers and body apart: without TCP_NODELAY each answer waits ~40 ms
        StorageHandler.disable_nagle_algorithm = True
        self.storage = create_server("127.0.0.1", storage_port, in_memory=True, default_bucket=bucket)
        self.storage.start()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # a token for direct queries (a test's verify step); the bake gets its own through the key
        self.access_token = "ya29.cloud-fakes-" + os.urandom(8).hex()
        self.fake = FakeCompute(
            storage_url="http://127.0.0.1:%d" % storage_port,
            public_key=key.public_key(),
            access_token=self.access_token,
            resumable_received=self.storage._storage.get_resumable_byte_count,
        )
        self.server = Server(self.fake).start()
        self.url = self.server.url
        self.key_file = workdir / "gce-service-account.json"
        write_json(
            self.key_file,
            {
                "type": "service_account",
                "project_id": project,
                "private_key_id": "f" * 40,
                "private_key": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "client_email": "bakery-molecule@%s.iam.gserviceaccount.com" % project,
                "client_id": "1234567890",
                "token_uri": self.url + "/token",
            },
        )

    def state(self) -> dict:
        return {
            "url": self.url,
            "api_endpoint": self.url + "/compute/v1",
            "storage_endpoint": self.url,
            "project": self.project,
            "bucket": self.bucket,
            "service_account_file": str(self.key_file),
            "access_token": self.access_token,
        }

    def stop(self) -> None:
        self.server.stop()
        self.storage.stop()
        self.key_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dir", required=True, type=Path, help="where the state, key and logs go")
    args = parser.parse_args()
    workdir = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    state_file = workdir / "fakes.json"
    violations_file = workdir / "gce-violations.json"
    try:
        os.setsid()  # lead a process group of our own: moto_server joins it
    except OSError:
        pass  # already a group leader
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    started: list = []
    try:
        moto = MotoServer(workdir / "moto.log")
        started.append(moto)
        google = GoogleFakes(workdir)
        started.append(google)
        write_json(violations_file, [])
        write_json(
            state_file,
            {
                "pid": os.getpid(),
                "aws": {
                    "url": moto.url,
                    "port": moto.port,
                    "pid": moto.proc.pid,
                    "region": REGION,
                    "access_key": CREDENTIALS["aws_access_key_id"],
                    "secret_key": CREDENTIALS["aws_secret_access_key"],
                },
                "gce": dict(google.state(), violations_file=str(violations_file)),
            },
        )
        print("cloud fakes ready: %s" % state_file, flush=True)
        seen = 0
        while not stop.wait(0.2):
            with google.fake.lock:
                violations = list(google.fake.violations)
            if len(violations) != seen:
                write_json(violations_file, violations)
                seen = len(violations)
    finally:
        state_file.unlink(missing_ok=True)
        for service in reversed(started):
            service.stop()
        print("cloud fakes stopped", flush=True)


if __name__ == "__main__":
    main()
