"""Packing + upload of a multi-GiB sparse raw disk for a GCE import, against plain `tar -Sczf` of the same file.

Makes a sparse raw disk (default 4 GiB, 256 MiB of data: half random, half compressible text, spread over
the disk), then times
  - `tar -Sczf out.tar.gz disk.raw` (GNU tar and gzip, packing only, to a local file), and
  - gce_image_bake's packing (oldgnu sparse tar, padded to a whole GiB, gzip) streamed in 8 MiB chunks
    as a resumable upload to a local gcp-storage-emulator (in this process; the upload runs in a child
    process whose peak RSS is measured with wait4).
Prints one JSON line: both times, their ratio (goal <= 1.5: the upload is extra work) and the peak RSS of
the packing+upload process (goal: bounded, independent of the disk size).
Run from the repository: .venv/bin/python bench/gce_import.py [--size-gib 4] [--data-mib 256]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".collections" / "src"))

CHILD = r"""
import sys, json, time
sys.path.insert(0, sys.argv[1])
import requests
from ansible_collections.bakery.images.plugins.module_utils import _gcp
session = requests.Session()
client = _gcp.Client(session, "bench", storage_endpoint=sys.argv[2], retries=2, retry_delay=0.1)
images = _gcp.Images(client, {"project": "bench", "chunk_size_mb": 8, "bake_id": "bench", "target": "bench"})
started = time.monotonic()
result = images.upload(sys.argv[3], "bench", "bench.tar.gz")
result["seconds"] = time.monotonic() - started
print(json.dumps(result))
"""


def make_disk(path: Path, size_gib: int, data_mib: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size_gib << 30)
        pieces = 32
        piece = (data_mib << 20) // pieces
        text = (b"bakery bakes images; " * 4096)[: 1 << 20]
        for index in range(pieces):
            handle.seek(index * ((size_gib << 30) // pieces))
            if index % 2:
                handle.write(os.urandom(piece))
            else:
                handle.write((text * (piece // len(text) + 1))[:piece])


def timed(cmd: list[str]) -> tuple[float, int, str]:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    status, usage = os.wait4(proc.pid, 0)[1:]
    seconds = time.monotonic() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit("%s failed: %s" % (cmd[0], err[-2000:]))
    return seconds, usage.ru_maxrss, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--data-mib", type=int, default=256)
    args = parser.parse_args()
    from gcp_storage_emulator.server import RequestHandler, create_server

    RequestHandler.disable_nagle_algorithm = True
    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        disk = Path(tmp) / "disk.raw"
        make_disk(disk, args.size_gib, args.data_mib)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bench")
        server.start()
        try:
            ours, rss_kib, out = timed(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(REPO / ".collections" / "src"),
                    "http://127.0.0.1:%d" % port,
                    str(disk),
                ]
            )
            upload = json.loads(out)
        finally:
            server.stop()
        tar_s = timed(["tar", "-Sczf", str(Path(tmp) / "plain.tar.gz"), "-C", tmp, "disk.raw"])[0]
        plain_size = (Path(tmp) / "plain.tar.gz").stat().st_size
    ratio = ours / tar_s
    print(
        json.dumps(
            {
                "benchmark": "gce_import",
                "disk_gib": args.size_gib,
                "data_mib": args.data_mib,
                "tar_Sczf_s": round(tar_s, 2),
                "pack_upload_s": round(ours, 2),
                "ratio": round(ratio, 2),
                "goal": "<= 1.5",
                "met": ratio <= 1.5,
                "peak_rss_mib": round(rss_kib / 1024, 1),
                "tarball_bytes": upload["size"],
                "plain_tar_gz_bytes": plain_size,
                "padded_disk_bytes": upload["disk_size"],
            }
        )
    )


if __name__ == "__main__":
    main()
