"""Upload of a sparse 4 GiB qcow2 to a real Glance by openstack_image_bake, against `curl -T` of the same file.

Makes a qcow2 disk of --size-gib (default 4) whose file is that large and sparse (qemu-img convert with
preallocation=metadata from a raw disk holding --data-mib of data, spread over it), starts Glance as the tests do
(tests/integration/glance.py: glance-api under gunicorn, sqlite, filesystem store), then times
  - `curl -T disk.qcow2` to /v2/images/<id>/file (the image data PUT) of a new image, until it is active, and
  - openstack_image_bake's upload with import_method put (streamed in 8 MiB chunks, sha512 of the bytes sent,
    wait until active, compare Glance's os_hash_value), in a child process whose peak RSS is measured with wait4;
    and, for information, the same with glance-direct (stage, then import: Glance copies the data once more).
Prints one JSON line: the times, the ratio PUT/curl (goal <= 1.2) and the peak RSS of the upload (goal: bounded,
independent of the disk size).
Run from the repository: .venv/bin/python bench/openstack_upload.py [--size-gib 4] [--data-mib 256]
Measured on the 2-core development machine (2026-12-04, 4 GiB file, 256 MiB data): curl -T 61.3 s, bakery PUT
45.5 s (ratio 0.74; curl runs first and reads the file from disk, bakery then partly from the page cache), peak RSS
70 MiB; glance-direct 85.5 s (Glance copies the staged data into the store).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".collections" / "src"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

CHILD = r"""
import sys, json, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.bakery.images.plugins.module_utils import _openstack
params = json.loads(sys.argv[2])
started = time.monotonic()
result = _openstack.run(params)
print(json.dumps({"seconds": time.monotonic() - started, "upload": result["upload"], "id": result["image"]["id"]}))
"""


def make_disk(tmp: Path, size_gib: int, data_mib: int) -> Path:
    raw = tmp / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(size_gib << 30)
        pieces = 32
        piece = (data_mib << 20) // pieces
        for index in range(pieces):
            handle.seek(index * ((size_gib << 30) // pieces))
            handle.write(os.urandom(piece))
    disk = tmp / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-O", "qcow2", "-o", "preallocation=metadata", str(raw), str(disk)],
        check=True,
    )
    raw.unlink()
    return disk


def run_child(params: dict) -> tuple[float, int, dict]:
    """The upload in a child process: its wall time, its peak RSS (KiB, from wait4) and its result."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO / ".collections" / "src"), json.dumps(params)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit("the upload failed: %s" % err[-2000:])
    return seconds, usage.ru_maxrss, json.loads(out.strip().splitlines()[-1])


def curl_upload(glance, disk: Path) -> float:
    """A new image record, `curl -T` of the disk to its data, until active: the seconds from the PUT on."""
    from glance import HEADERS

    made = requests.post(
        glance.url + "/v2/images",
        headers=HEADERS,
        json={"name": "curl", "disk_format": "qcow2", "container_format": "bare"},
        timeout=30,
    )
    made.raise_for_status()
    image_id = made.json()["id"]
    headers = [arg for key, value in HEADERS.items() for arg in ("-H", "%s: %s" % (key, value))]
    started = time.monotonic()
    subprocess.run(
        ["curl", "-sS", "--fail", "-T", str(disk), *headers, "-H", "Content-Type: application/octet-stream"]
        + ["%s/v2/images/%s/file" % (glance.url, image_id)],
        check=True,
    )
    while glance.get("/images/%s" % image_id)["status"] != "active":
        time.sleep(0.2)
    seconds = time.monotonic() - started
    requests.delete(glance.url + "/v2/images/%s" % image_id, headers=HEADERS, timeout=60)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--data-mib", type=int, default=256)
    args = parser.parse_args()
    from glance import Glance

    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        disk = make_disk(Path(tmp), args.size_gib, args.data_mib)
        glance = Glance(Path(tmp) / "glance")
        try:
            curl_s = curl_upload(glance, disk)
            results = {}
            for method in ("put", "glance-direct"):
                params = dict(
                    glance.options(),
                    action="upload",
                    name="bench-%s" % method,
                    disk=str(disk),
                    disk_format="qcow2",
                    import_method=method,
                    bake_id="bench-%s" % method,
                    target="bench",
                    chunk_size_mb=8,
                    timeout=3600,
                    force=True,
                )
                seconds, rss_kib, out = run_child(params)
                requests.delete(
                    glance.url + "/v2/images/%s" % out["id"], headers=params["headers"], timeout=60
                ).raise_for_status()
                results[method] = (seconds, rss_kib, out)
        finally:
            glance.stop()
    put_s, put_rss, put = results["put"]
    ratio = put_s / curl_s
    print(
        json.dumps(
            {
                "benchmark": "openstack_upload",
                "disk_gib": args.size_gib,
                "data_mib": args.data_mib,
                "file_bytes": put["upload"]["bytes"],
                "curl_T_s": round(curl_s, 2),
                "bakery_put_s": round(put_s, 2),
                "ratio": round(ratio, 2),
                "goal": "<= 1.2",
                "met": ratio <= 1.2,
                "peak_rss_mib": round(put_rss / 1024, 1),
                "bakery_glance_direct_s": round(results["glance-direct"][0], 2),
                "glance_direct_peak_rss_mib": round(results["glance-direct"][1] / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
