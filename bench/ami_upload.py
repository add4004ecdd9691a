"""Upload of a raw disk through the EBS direct APIs, against moto_server on 127.0.0.1.

1. Throughput: bakery's upload (holes and all-zero blocks skipped, WORKERS blocks in flight) against a
   sequential loop that sends every 512 KiB block, one at a time, on the same disk and the same endpoint.
   The disk is DISK_MIB MiB with a quarter of its blocks holding data, the rest holes and written zeros, as a
   freshly installed OS disk roughly is. Prints the seconds of each and `ratio` = sequential / bakery (how
   many times faster bakery is; goal >= 2), and `ratio_dense` for a disk where every block holds data (what
   the parallelism alone gives; moto answers on this host's CPUs, so expect less than on AWS).
2. Memory: a fresh process uploads a SPARSE_GIB GiB sparse disk (256 MiB of data scattered over it, and
   256 MiB of written zeros); its RSS is sampled every 5 ms. Prints the RSS before the upload, the most during it, their
   difference (what the upload holds: at most 2 * WORKERS blocks in flight, plus thread stacks and
   connections, whatever the disk size) and the process's lifetime peak (boto3's model loading included).

Run: .venv/bin/python bench/ami_upload.py [DISK_MIB [SPARSE_GIB]]   (defaults 128 and 8)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / ".collections" / "src"))

BLOCK = 512 * 1024
WORKERS = 8


def make_disk(path: Path, mib: int, dense: bool) -> None:
    blocks = mib * 1024 * 1024 // BLOCK
    with open(path, "wb") as handle:
        handle.truncate(blocks * BLOCK)
        for index in range(blocks):
            if dense or index % 4 == 0:
                handle.seek(index * BLOCK)
                handle.write(os.urandom(BLOCK))
            elif index % 4 == 1:  # written zeros: read, then skipped
                handle.seek(index * BLOCK)
                handle.write(bytes(BLOCK))


def params(url: str) -> dict:
    return {
        "region": "us-east-1",
        "endpoint_url": url,
        "access_key": "testing",
        "secret_key": "testing",
        "bake_id": "bench",
        "upload_workers": WORKERS,
        "wait_timeout": 600,
    }


def bakery_upload(url: str, disk: Path) -> tuple[float, dict]:
    from ansible_collections.bakery.images.plugins.module_utils import _aws
    from ansible_collections.bakery.images.plugins.module_utils._steps import Steps

    aws = _aws.Aws(params(url))
    gib = max(1, -(-disk.stat().st_size // _aws.GIB))
    started = time.perf_counter()
    with Steps() as steps:
        result = _aws.upload_snapshot(
            aws, str(disk), gib, {"bench": "1"}, "bench", WORKERS, steps, params(url)
        )
    return time.perf_counter() - started, result


def sequential_upload(url: str, disk: Path) -> float:
    """The plain loop: every block, one request at a time."""
    import boto3
    from aws import CREDENTIALS

    ebs = boto3.client("ebs", region_name="us-east-1", endpoint_url=url, **CREDENTIALS)
    size = disk.stat().st_size
    started = time.perf_counter()
    snap = ebs.start_snapshot(VolumeSize=max(1, -(-size // 1024**3)))["SnapshotId"]
    count = 0
    with open(disk, "rb") as handle:
        for index in range(-(-size // BLOCK)):
            data = handle.read(BLOCK).ljust(BLOCK, b"\0")
            digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
            ebs.put_snapshot_block(
                SnapshotId=snap,
                BlockIndex=index,
                BlockData=data,
                DataLength=BLOCK,
                Checksum=digest,
                ChecksumAlgorithm="SHA256",
            )
            count += 1
    ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=count)
    return time.perf_counter() - started


RSS_CHILD = r"""
import json, os, resource, sys, threading, time
sys.path.insert(0, %(src)r)
from ansible_collections.bakery.images.plugins.module_utils import _aws
from ansible_collections.bakery.images.plugins.module_utils._steps import Steps
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE // 1024
params = json.loads(%(params)r)
aws = _aws.Aws(params)
aws.client("ebs"); aws.client("ec2")
before = rss()
samples = [before]
stop = threading.Event()
def sample():
    while not stop.is_set():
        samples.append(rss())
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
with Steps() as steps:
    result = _aws.upload_snapshot(aws, %(disk)r, %(gib)d, {}, "bench", params["upload_workers"], steps, params)
stop.set(); sampler.join()
print(json.dumps({"before_kib": before, "during_max_kib": max(samples),
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "result": result}))
"""


def upload_rss(url: str, disk: Path, gib: int) -> dict:
    """RSS of a fresh process (KiB): before the upload, the most sampled during it, its lifetime peak."""
    code = RSS_CHILD % {
        "src": str(REPO / ".collections" / "src"),
        "params": json.dumps(params(url)),
        "disk": str(disk),
        "gib": gib,
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    from aws import MotoServer

    disk_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    sparse_gib = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        work = Path(tmp)
        moto = MotoServer(work / "moto.log")
        try:
            mixed, dense = work / "mixed.raw", work / "dense.raw"
            make_disk(mixed, disk_mib, dense=False)
            make_disk(dense, disk_mib // 4, dense=True)
            # warm up moto's EBS backend and the clients
            bakery_upload(moto.url, dense)
            seq = sequential_upload(moto.url, mixed)
            ours, result = bakery_upload(moto.url, mixed)
            seq_dense = sequential_upload(moto.url, dense)
            ours_dense = bakery_upload(moto.url, dense)[0]

            sparse = work / "sparse.raw"
            with open(sparse, "wb") as handle:
                handle.truncate(sparse_gib * 1024**3)
                for i in range(512):  # 512 data blocks (256 MiB) scattered over the disk
                    handle.seek(i * (sparse_gib * 1024**3 // 512))
                    handle.write(os.urandom(BLOCK))
                handle.seek(sparse_gib * 1024**3 // 3 + BLOCK)  # 256 MiB of written zeros: read, skipped
                handle.write(bytes(512 * BLOCK))
            started = time.perf_counter()
            busy = upload_rss(moto.url, sparse, sparse_gib)
            sparse_seconds = time.perf_counter() - started
        finally:
            moto.stop()
    report = {
        "disk_mib": disk_mib,
        "blocks": result["blocks_total"],
        "blocks_sent": result["blocks_sent"],
        "blocks_zero_skipped": result["blocks_zero"],
        "sequential_s": round(seq, 2),
        "bakery_s": round(ours, 2),
        "ratio": round(seq / ours, 2),
        "sequential_mib_s": round(disk_mib / seq, 1),
        "bakery_mib_s": round(disk_mib / ours, 1),
        "dense_mib": disk_mib // 4,
        "ratio_dense": round(seq_dense / ours_dense, 2),
        "sparse_gib": sparse_gib,
        "sparse_blocks_sent": busy["result"]["blocks_sent"],
        "sparse_blocks_zero_skipped": busy["result"]["blocks_zero"],
        "sparse_upload_s": round(sparse_seconds, 2),
        "rss_before_upload_mib": round(busy["before_kib"] / 1024, 1),
        "rss_max_during_upload_mib": round(busy["during_max_kib"] / 1024, 1),
        "rss_upload_extra_mib": round((busy["during_max_kib"] - busy["before_kib"]) / 1024, 1),
        "rss_process_peak_mib": round(busy["peak_kib"] / 1024, 1),
        "rss_bound_blocks_mib": 2 * WORKERS * BLOCK / 1024**2,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
