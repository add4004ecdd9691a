"""The GCE target against a fake Compute Engine and the gcp-storage-emulator.

No Compute Engine emulator exists: tests/integration/fake_compute.py checks every request against the
official discovery document (compute.v1.json from google-api-python-client) and fails the test on any
field or parameter the document does not know. Cloud Storage is gcp-storage-emulator, reached through
the fake (so one numbered call sequence covers both APIs, for fault injection). Credentials go through
google-auth's real service-account flow: a key generated here, whose token_uri is the fake's /token.

The fake runs no VM. In the instance flow the "instance" answers SSH with a banner only, and the bake's
roles provision a stand-in builder instead: a local Docker container of the bakery base image, swapped
in by the test playbook (an explicit play of the test, not a branch of the collection's code).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import LOCAL, REPO, run_playbook
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_compute import GIB, FakeCompute, Server
from gcp_storage_emulator.server import RequestHandler as StorageHandler
from gcp_storage_emulator.server import create_server
from ports import free_port
from provenance_checks import check_statement
from sbom_checks import check_documents, dpkg_query, installed
from stand_ins import Cloud, checks_on_an_instance, instance_playbook, qcow2_copy

from ansible_collections.bakery.images.plugins.module_utils import _gcp, _hygiene, _verify

BUCKET = "bakery-test-uploads"
PROJECT = "bakery-test"
ZONE = "europe-west1-b"
STATIC_TOKEN = "ya29.static-test-token-7d1f0c"


class Env:
    """The fake Compute Engine, the storage emulator, a service-account key and an SSH banner."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        storage_port = free_port()
        # the emulator writes headers and body apart: without TCP_NODELAY each answer waits ~40 ms
        StorageHandler.disable_nagle_algorithm = True
        self.storage = create_server("127.0.0.1", storage_port, in_memory=True, default_bucket=BUCKET)
        self.storage.start()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.fake = FakeCompute(
            storage_url="http://127.0.0.1:%d" % storage_port,
            public_key=key.public_key(),
            access_token=STATIC_TOKEN,
            resumable_received=self.storage._storage.get_resumable_byte_count,
        )
        self.server = Server(self.fake).start()
        self.url = self.server.url
        self.key_info = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "f" * 40,
            "private_key": self.private_pem,
            "client_email": "bakery-test@%s.iam.gserviceaccount.com" % PROJECT,
            "client_id": "1234567890",
            "token_uri": self.url + "/token",
        }
        self.key_file = tmp / "sa-key.json"
        self.key_file.write_text(json.dumps(self.key_info))
        self.key_file.chmod(0o600)
        # the "instance" answers SSH with a banner: enough for launch's SSH wait, not for Ansible
        self.banner = socket.socket()
        self.banner.bind(("127.0.0.1", 0))
        self.banner.listen(8)
        self.ssh_port = self.banner.getsockname()[1]
        threading.Thread(target=self._banner, daemon=True).start()

    def _banner(self) -> None:
        while True:
            try:
                conn = self.banner.accept()[0]
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-FakeCompute\r\n")

    def secrets(self) -> list[str]:
        """Recognisable pieces of every credential; none may appear in any output."""
        body = "".join(self.private_pem.splitlines()[1:-1])
        return [body[40:100], body[-100:-40], STATIC_TOKEN, "ya29.fake-"]

    def objects(self) -> list[str]:
        url = "%s/storage/v1/b/%s/o" % (self.fake.storage_url, BUCKET)
        with urllib.request.urlopen(url, timeout=10) as reply:
            return [item["name"] for item in json.load(reply).get("items") or []]

    def leftovers(self) -> dict[str, list[str]]:
        left = self.fake.temporary()
        left["objects"] = self.objects()
        return {kind: names for kind, names in left.items() if names}

    def options(self, **extra) -> dict:
        """gce target options pointing at the fakes."""
        options = {
            "project": PROJECT,
            "api_endpoint": self.url + "/compute/v1",
            "storage_endpoint": self.url,
            "service_account_file": str(self.key_file),
            "retry_delay": 0.01,
        }
        options.update(extra)
        return options

    def stop(self) -> None:
        self.banner.close()
        self.server.stop()
        self.storage.stop()


def make_raw_disk(path: Path, size: str = "300M", blob: int = 3 << 20, dpkg: str | None = None) -> Path:
    """A raw disk with an ext4 file system holding a small tree (with incompressible data: several chunks);
    with *dpkg*, that dpkg status file (a package database)."""
    tree = path.parent / "tree"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "motd").write_text("baked by bakery\n")
    if dpkg is not None:
        (tree / "var" / "lib" / "dpkg").mkdir(parents=True, exist_ok=True)
        (tree / "var" / "lib" / "dpkg" / "status").write_text(dpkg)
    (tree / "blob").write_bytes(os.urandom(blob))
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), size], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


def assert_no_secrets(env: Env, *texts: str) -> None:
    for secret in env.secrets():
        for text in texts:
            assert secret not in text, "a credential (%s...) appears in the output" % secret[:12]


IMPORT_PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    bakery.images.gce_image_bake: "{{ gce }}"
  tasks:
    - name: import
      bakery.images.gce_image_bake:
        action: import
        disk: "{{ disk }}"
        name: web
        family: web
        labels: {team: images}
        guest_os_features: [UEFI_COMPATIBLE, VIRTIO_SCSI_MULTIQUEUE]
        # what the bake names for an arm64 disk (the plan's unit tests): the request is checked against the API
        architecture: ARM64
        bucket: "{{ bucket }}"
        chunk_size_mb: 1
        bake_id: "{{ bake_id }}"
        target: disk
        deprecate_older: true
"""


CHECK_TASK = """    - name: check
      bakery.images.gce_image_bake:
        action: import
        disk: "{{ disk }}"
        name: web
        family: web
        labels: {team: images}
        guest_os_features: [UEFI_COMPATIBLE, VIRTIO_SCSI_MULTIQUEUE]
        architecture: ARM64
        bucket: "{{ bucket }}"
        bake_id: "{{ bake_id }}"
        target: disk
      check_mode: true
"""


QEMU_IMAGE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Make the raw disk with qemu_image (what a qemu target's capture does)
      bakery.images.qemu_image:
        image: "{{ source_image }}"
        disk_size: 300M
        outputs: [{path: "{{ raw_disk }}"}]
"""


def raw_disk_by_qemu_image(tmp_path: Path) -> Path:
    """The raw output of bakery.images.qemu_image, as the import path gets it from a qemu target, made from a
    qcow2 image that holds an ext4 file system with a small tree."""
    made = make_raw_disk(tmp_path / "made.raw")
    source_image = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(made), str(source_image)], check=True)
    made.unlink()
    disk = tmp_path / "disk.raw"
    extra = {"source_image": str(source_image), "raw_disk": str(disk)}
    run = run_playbook(QEMU_IMAGE_PLAY, tmp_path, extra_vars=extra, args=LOCAL)
    assert run.rc == 0, run.explain()
    return disk


def test_import_raw_disk_checks_the_tarball_and_is_idempotent(gce, tmp_path):
    disk = raw_disk_by_qemu_image(tmp_path)
    gce_args = {
        "project": PROJECT,
        "api_endpoint": gce.url + "/compute/v1",
        "storage_endpoint": gce.url,
        "service_account_file": str(gce.key_file),
        "retry_delay": 0.01,
    }
    extra = {"gce": gce_args, "disk": str(disk), "bucket": BUCKET, "bake_id": "20261127t100000-aaaaaa"}
    first = run_playbook(IMPORT_PLAY, tmp_path, extra_vars=extra, args=LOCAL + ["-vvvv"], json_output=False)
    assert first.rc == 0, first.explain()
    assert_no_secrets(gce, first.stdout, first.stderr)
    image = gce.fake.images[(PROJECT, "web-20261127t100000-aaaaaa")]
    assert image["status"] == "READY" and image["family"] == "web"
    assert (
        image["labels"]["team"] == "images" and image["labels"]["bakery-bake-id"] == "20261127t100000-aaaaaa"
    )
    assert len(image["labels"]["bakery-fingerprint"]) == 63
    assert [f["type"] for f in image["guestOsFeatures"]] == ["UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE"]
    assert image["architecture"] == "ARM64"
    uploads = [c for c in gce.fake.calls if c.startswith("PUT /upload/storage/")]
    assert len(uploads) >= 3, "expected a chunked upload, got %s" % uploads

    # the tarball Compute Engine read back from the storage emulator
    tarball = tmp_path / "imported.tar.gz"
    tarball.write_bytes(gce.fake.imported["web-20261127t100000-aaaaaa"])
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["disk.raw"]
    assert members[0].type == tarfile.GNUTYPE_SPARSE  # old GNU sparse member ('S')
    assert members[0].size == GIB and members[0].size % GIB == 0
    raw_header = subprocess.run(["gzip", "-dc", str(tarball)], capture_output=True, check=True).stdout[:512]
    assert raw_header[257:265] == b"ustar  \0"  # oldgnu magic
    listing = subprocess.run(["tar", "-tvf", str(tarball)], capture_output=True, text=True, check=True).stdout
    assert listing.split()[2] == str(GIB) and listing.strip().endswith("disk.raw")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xSf", str(tarball), "-C", str(out)], check=True)
    extracted = out / "disk.raw"
    size = disk.stat().st_size
    assert extracted.stat().st_size == GIB
    with open(extracted, "rb") as got, open(disk, "rb") as want:
        while True:
            block = want.read(1 << 22)
            if not block:
                break
            assert got.read(len(block)) == block, "disk.raw differs from the disk"
        assert got.read(1 << 20).count(0) == 1 << 20  # the padding is zeros
    assert subprocess.run(["cmp", "-n", str(size), str(disk), str(extracted)], check=False).returncode == 0
    assert gce.leftovers() == {}, "the uploaded object must be deleted"

    # same inputs: found by its fingerprint label, nothing uploaded or inserted
    calls = len(gce.fake.calls)
    again = run_playbook(
        IMPORT_PLAY, tmp_path, extra_vars=dict(extra, bake_id="20261127t110000-bbbbbb"), args=LOCAL
    )
    assert again.rc == 0, again.explain()
    result = again.task_result("import")
    assert not result["changed"] and result["found"]
    assert result["image"]["name"] == "web-20261127t100000-aaaaaa"
    assert all(c.startswith("GET ") for c in gce.fake.calls[calls:]), gce.fake.calls[calls:]

    # a changed disk: check mode names the input and creates nothing; the real run then deprecates the
    # older image of the family
    with open(disk, "r+b") as handle:
        handle.seek(100 << 20)
        handle.write(b"changed")
    play = IMPORT_PLAY.replace("    - name: import\n", CHECK_TASK + "    - name: import\n")
    calls = len(gce.fake.calls)
    rebuilt = run_playbook(
        play, tmp_path, extra_vars=dict(extra, bake_id="20261127t130000-dddddd"), args=LOCAL
    )
    assert rebuilt.rc == 0, rebuilt.explain()
    would = rebuilt.task_result("check")
    assert would["changed"] and not would["built"] and would["changed_inputs"] == ["disk"]
    inserts = [
        c for c in gce.fake.calls[calls:] if c == "POST /compute/v1/projects/%s/global/images" % PROJECT
    ]
    assert len(inserts) == 1, "check mode must create nothing: %s" % gce.fake.calls[calls:]
    assert rebuilt.task_result("import")["deprecated"] == ["web-20261127t100000-aaaaaa"]
    assert gce.fake.images[(PROJECT, "web-20261127t100000-aaaaaa")]["deprecated"]["state"] == "DEPRECATED"
    assert gce.leftovers() == {}


def test_credentials_never_in_output(gce, tmp_path):
    """Key contents and an access token, passed as module arguments, at -vvvv."""
    play = """
    - hosts: localhost
      gather_facts: false
      tasks:
        - name: find with key contents
          bakery.images.gce_image_bake:
            action: find
            project: "{{ project }}"
            name: web
            source_image_family: debian-12
            source_image_project: debian-cloud
            service_account_contents: "{{ key }}"
            api_endpoint: "{{ api }}"
        - name: find with a token
          bakery.images.gce_image_bake:
            action: find
            project: "{{ project }}"
            name: web
            source_image_family: debian-12
            source_image_project: debian-cloud
            access_token: "{{ token }}"
            api_endpoint: "{{ api }}"
    """
    extra = {"project": PROJECT, "key": gce.key_info, "token": STATIC_TOKEN, "api": gce.url + "/compute/v1"}
    run = run_playbook(play, tmp_path, extra_vars=extra, args=LOCAL + ["-vvvv"], json_output=False)
    assert run.rc == 0, run.explain()
    assert "would build image web" in run.stdout
    assert any(c.startswith("GET /compute/v1/") for c in gce.fake.calls)
    assert_no_secrets(gce, run.stdout, run.stderr)


# ------------------------------------------------------------------------------------ instance flow


def test_instance_bake_with_stand_in_builder(gce, bake_base, tmp_path):
    playbook = instance_playbook(tmp_path)
    bake = {
        "name": "gce-instance",
        "provisioners": [{"role": "marker", "vars": {"marker": "provisioned"}}],
        "targets": [
            {
                "name": "vm",
                "gce": gce.options(
                    zone=ZONE,
                    name="web",
                    family="web",
                    source_image_family="debian-12",
                    source_image_project="debian-cloud",
                    ssh_port=gce.ssh_port,
                    disk_size_gb=20,
                    service_account_email="builder@%s.iam.gserviceaccount.com" % PROJECT,
                    guest_os_features=["GVNIC"],
                    description="web image",
                ),
            }
        ],
    }
    extra = {"bake": bake, "stand_in_image": bake_base["image"]}
    first = run_playbook(playbook, tmp_path, extra_vars=extra, args=["-e", "bake_id=20261127t140000-eeeeee"])
    assert first.rc == 0, first.explain()
    inserted = [c for c in gce.fake.calls if c.startswith("POST") and c.endswith("/instances")]
    assert len(inserted) == 1
    mark = first.task_result("Leave a mark")
    assert mark["changed"], "the stand-in builder was not provisioned"
    image = gce.fake.images[(PROJECT, "web-20261127t140000-eeeeee")]
    assert image["status"] == "READY" and image["description"] == "web image"
    assert image["sourceDisk"].endswith("/zones/%s/disks/bakery-20261127t140000-eeeeee-vm" % ZONE)
    assert gce.leftovers() == {}, "build instance or disk left behind"
    manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    entry = manifest["artifacts"][0]
    assert entry["type"] == "gce" and entry["name"] == "web-20261127t140000-eeeeee"
    assert not list((tmp_path / "output" / ".bakery-ssh").glob("*")), "SSH key left behind"
    # the builder was generalized and passed every hygiene check before it was captured
    launched = first.task_result("Find the image, or start the build instance")
    assert launched["public_key"].startswith("ssh-ed25519 AAAA")
    checked = first.task_result(HYGIENE_TASK)
    assert checked["passed"] and checked["generalized"]["cloud_init"] is False
    assert [(c["name"], c["status"]) for c in entry["hygiene"]] == [(n, "passed") for n in _hygiene.CHECKS]
    # the SBOMs list exactly the packages of the instance after provisioning (read there before capture)
    packages = installed(first.task_result("List the packages of the stand-in")["stdout"])
    assert len(packages) > 50
    check_documents(entry, packages)
    # the statement names the image (no disk file: its digest is the fingerprint); the output verifies
    statement = check_statement(entry)
    assert [(s["name"], s["digest"]) for s in statement["subject"]] == [
        (
            "projects/%s/global/images/web-20261127t140000-eeeeee" % PROJECT,
            {"bakery.fingerprint": entry["fingerprint"]},
        )
    ]
    assert statement["subject"][0]["annotations"]["bakery.image-id"] == entry["id"]
    sums = (tmp_path / "output" / "SHA256SUMS").read_text()
    assert sorted(line.split("  ")[1] for line in sums.splitlines()) == sorted(
        os.path.basename(doc["path"]) for doc in [*entry["sbom"].values(), entry["provenance"]]
    )
    assert _verify.check(str(tmp_path / "output" / "bake-manifest.json"), None, None)["mismatches"] == []
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "output").iterdir() if p.is_file()}

    calls = len(gce.fake.calls)
    second = run_playbook(playbook, tmp_path, extra_vars=extra)
    assert second.rc == 0, second.explain()
    assert all(host["changed"] == 0 for host in second.stats.values()), second.stats
    assert all(c.startswith("GET ") for c in gce.fake.calls[calls:]), "the second bake launched something"
    # found unchanged: the manifest keeps the results of the bake that made the image, and its documents
    again = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    assert again["artifacts"][0]["hygiene"] == entry["hygiene"]
    assert again["artifacts"][0]["sbom"] == entry["sbom"]
    assert again["artifacts"][0]["provenance"] == entry["provenance"]
    rewritten = [p.name for p, stamp in written.items() if p.stat().st_mtime_ns != stamp]
    assert rewritten == [], "the second bake rewrote %s" % rewritten


HYGIENE_TASK = "Remove the builder's key and the machine's identity from the build instance, then check the image's hygiene"


def test_an_instance_that_fails_a_hygiene_check_makes_no_image(gce, bake_base, tmp_path):
    """A role leaves a shell history on the build instance: the target fails naming the file, before any image
    exists; the instance and its disk are deleted, and the manifest lists the failure with every check."""
    playbook = instance_playbook(tmp_path)
    role = tmp_path / "roles" / "history" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(
        "- name: Leave a shell history\n  ansible.builtin.copy:\n    dest: /root/.bash_history\n"
        '    content: "export TOKEN=secret\\n"\n'
    )
    bake = {
        "name": "gce-unclean",
        "provisioners": [{"role": "marker", "vars": {"marker": "provisioned"}}, {"role": "history"}],
        "targets": [
            {
                "name": "vm",
                "gce": gce.options(
                    zone=ZONE,
                    name="unclean",
                    source_image_family="debian-12",
                    source_image_project="debian-cloud",
                    ssh_port=gce.ssh_port,
                    hygiene={"skip": ["core_dumps"]},
                ),
            }
        ],
    }
    images = set(gce.fake.images)
    run = run_playbook(playbook, tmp_path, extra_vars={"bake": bake, "stand_in_image": bake_base["image"]})
    assert run.rc != 0, run.explain()
    failed = run.task_result(HYGIENE_TASK)
    assert failed["failed"] and "shell_history: /root/.bash_history" in failed["msg"], failed["msg"]
    assert run.task_results("Capture the image from the build instance") == [], "the capture ran"
    assert set(gce.fake.images) == images, "an image was made"
    assert not any(c.endswith("/images") and c.startswith("POST") for c in gce.fake.calls)
    assert gce.leftovers() == {}, "build instance or disk left behind"
    manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    assert manifest["artifacts"] == []
    (rejected,) = manifest["hygiene_failures"]
    assert (
        rejected["target"] == "vm" and rejected["type"] == "gce" and rejected["failed"] == ["shell_history"]
    )
    statuses = {c["name"]: c["status"] for c in rejected["hygiene"]}
    assert statuses == dict(
        {n: "passed" for n in _hygiene.CHECKS}, shell_history="failed", core_dumps="skipped"
    )


# ------------------------------------------------------------------------------------ fault injection


def flow_params(env: Env, tmp: Path, action: str, bake_id: str, **extra) -> dict:
    params = {
        "action": action,
        "project": PROJECT,
        "zone": ZONE,
        "name": "fault",
        "unique_name": True,
        "family": "fault",
        "labels": {},
        "guest_os_features": [],
        "storage_locations": [],
        "licenses": [],
        "deprecate_older": True,
        "inputs": {"vars": "1"},
        "force": True,
        "bake_id": bake_id,
        "target": "t",
        "source_image_family": "debian-12",
        "source_image_project": "debian-cloud",
        "ssh_user": "bakery",
        "ssh_port": env.ssh_port,
        "ssh_key_dir": str(tmp / "keys"),
        "access_token": STATIC_TOKEN,
        "api_endpoint": env.url + "/compute/v1",
        "storage_endpoint": env.url,
        "bucket": BUCKET,
        "chunk_size_mb": 1,
        "timeout": 60,
        "retries": 2,
        "retry_delay": 0.001,
    }
    params.update(extra)
    return params


def instance_flow(env: Env, tmp: Path, bake_id: str) -> None:
    launched = _gcp.run(flow_params(env, tmp, "launch", bake_id))
    _gcp.run(
        flow_params(
            env, tmp, "capture", bake_id, instance=launched["instance"]["name"], inputs=launched["inputs"]
        )
    )


def import_flow(env: Env, tmp: Path, bake_id: str, disk: Path) -> None:
    _gcp.run(flow_params(env, tmp, "import", bake_id, disk=str(disk), disk_sha256="0" * 64))


@pytest.mark.parametrize("flow", ["instance", "import"])
def test_a_failure_at_any_call_leaves_nothing_behind(gce, tmp_path, flow):
    """Each call of the flow fails in turn (HTTP 403, then 503 which is retried); after the run and the
    cleanup the bake's cleanup play makes, no instance, disk, object, SSH key or unfinished image remains."""
    disk = make_raw_disk(tmp_path / "disk.raw", "64M", 1200 << 10) if flow == "import" else None

    def run_flow(bake_id: str) -> None:
        if flow == "instance":
            instance_flow(gce, tmp_path, bake_id)
        else:
            import_flow(gce, tmp_path, bake_id, disk)

    gce.fake.reset_calls()
    run_flow("20261127t000000-000000")
    total = len(gce.fake.calls)
    assert total >= 10, gce.fake.calls
    if flow == "import":  # faults must also hit an upload between two chunks
        assert sum(c.startswith("PUT /upload/") for c in gce.fake.calls) >= 2, gce.fake.calls
    failed_at = []
    for status in (403, 503):
        for number in range(1, total + 1):
            bake_id = "20261127t%06d-%06d" % (status, number)
            gce.fake.reset_calls()
            gce.fake.fail_at(number, status)
            try:
                run_flow(bake_id)
                ok = True
            except _gcp.BakeryError as exc:
                ok = False
                assert "injected fault" in exc.msg or "HTTP %d" % status in exc.msg, exc.msg
            if status == 503:
                assert ok, "a single 503 at call %d (%s) was not retried" % (
                    number,
                    gce.fake.calls[number - 1],
                )
            else:
                failed_at.append(number)
            _gcp.run(flow_params(gce, tmp_path, "cleanup", bake_id))
            assert gce.leftovers() == {}, "after a fault at call %d: %s" % (number, gce.leftovers())
            assert not list((tmp_path / "keys").glob("*")), "SSH key left after a fault at call %d" % number
            images = [
                i
                for i in gce.fake.images.values()
                if (i.get("labels") or {}).get("bakery-bake-id") == bake_id
            ]
            assert ok or not images, "image of a failed bake left behind (fault at call %d)" % number
            assert all(i["status"] == "READY" for i in gce.fake.images.values())
    assert failed_at, "no injected 403 made the flow fail"


@pytest.fixture(autouse=True)
def _tools():
    for tool in ("qemu-img", "mkfs.ext4", "tar", "gzip"):
        assert shutil.which(tool), "%s is needed (Makefile APT_TEST)" % tool


# ------------------------------------------------------------------------------------ killed at each phase

# (phase, the banner of the task running at the kill, seconds after it, the collection whose operations are slow)
GCE_KILL_POINTS = [
    (
        "launch",
        r"TASK \[bakery\.images\.gce : Find the image, or start the build instance\]",
        1.0,
        "instances",
    ),
    ("provision", r"TASK \[hold : Hold the builder\]", 1.0, None),
    ("capture", r"TASK \[bakery\.images\.gce : Capture the image from the build instance\]", 1.0, "images"),
]


@pytest.mark.parametrize("phase, banner, delay, slow", GCE_KILL_POINTS, ids=[p[0] for p in GCE_KILL_POINTS])
def test_sigkill_at_each_phase_then_the_janitor_leaves_nothing(
    gce, bake_base, tmp_path, phase, banner, delay, slow
):
    """The bake (with the stand-in builder) is killed, its whole process tree, while an operation runs;
    Compute Engine finishes the operation anyway. The janitor then leaves no instance, disk, object, key
    or stand-in container of the bake, and no image of it is final."""
    from conftest import docker_client
    from crash import Run, run_janitor, write_role

    playbook = instance_playbook(tmp_path)
    write_role(tmp_path)
    bake_id = "20261128t020000-%s" % os.urandom(3).hex()
    options = gce.options(
        zone=ZONE,
        name="crash",
        family="crash",
        source_image_family="debian-12",
        source_image_project="debian-cloud",
        ssh_port=gce.ssh_port,
    )
    bake = {
        "name": "gce-crash",
        "provisioners": [{"role": "hold", "vars": {"hold_seconds": 300 if phase == "provision" else 0}}],
        "targets": [{"name": "vm", "gce": options}],
    }
    (tmp_path / "bake.json").write_text(json.dumps({"bake": bake, "stand_in_image": bake_base["image"]}))
    if slow:
        gce.fake.slow[slow] = 4.0
    env = {"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    run = Run([str(playbook), "-e", "@bake.json", "-e", "bake_id=%s" % bake_id], tmp_path, env=env)
    run.wait_for(banner, timeout=300)
    time.sleep(delay)
    run.kill()
    gce.fake.slow.clear()
    gce.fake.finish_all()
    if phase != "launch":
        assert gce.leftovers(), "the build instance should exist at the kill"

    run_janitor(tmp_path, "bake.json", bake_id, env=env)
    assert gce.leftovers() == {}
    final = [
        name
        for (project, name), image in gce.fake.images.items()
        if project == PROJECT and bake_id in name and "bakery-temporary" not in (image.get("labels") or {})
    ]
    assert not final, "a final image of the killed bake: %s" % final
    assert not list((tmp_path / "output" / ".bakery-ssh").glob("*")), "SSH key left behind"
    stand_ins = docker_client().containers.list(all=True, filters={"label": "bakery-bake-id=%s" % bake_id})
    assert not stand_ins, "the stand-in builder is left"


def test_an_image_that_fails_its_checks_is_never_final_and_is_removed(gce, tmp_path):
    """verify on a gce target (playbooks/bake.yml): the raw disk of a qemu target (a copy of a small image) is
    imported, and the image stays labelled temporary while its checks run, local commands told its name. A failing
    check fails the target in verify and the cleanup deletes the image; with the fixed check the disk is found (not
    made again), imported again, and the image is labelled final. The disk's SBOMs are read out of the copied disk
    (its package database: the first 60 packages of this host's), the image's are the disk's, and both validate."""
    status = "\n\n".join(Path("/var/lib/dpkg/status").read_text().split("\n\n")[:60]).strip() + "\n"
    made = make_raw_disk(tmp_path / "made.raw", size="64M", blob=1 << 20, dpkg=status)
    source_image = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(made), str(source_image)], check=True)
    made.unlink()
    seen = tmp_path / "seen"
    bake = {
        "name": "gce-verify",
        "output_dir": str(tmp_path / "output"),
        "verify": [
            {
                "name": "told",
                "local": {"inline": ['echo "$BAKERY_IMAGE_NAME $BAKERY_GCE_PROJECT" >> %s' % seen]},
                "only": ["gce"],
            },
            {"name": "approved", "local": {"inline": ["echo not approved; false"]}, "only": ["gce"]},
        ],
        "targets": [
            {
                "name": "disk",
                "qemu": {
                    "provision": "none",
                    "base_image": str(source_image),
                    "formats": ["raw"],
                    "disk_size": "64M",
                },
            },
            {"name": "web", "gce": gce.options(source="disk", name="web", bucket=BUCKET, chunk_size_mb=1)},
        ],
    }
    first = run_playbook(
        REPO / "playbooks" / "bake.yml",
        tmp_path,
        extra_vars={"bake": bake, "bake_id": "20261203t170000-aaaaaa"},
    )
    assert first.rc != 0, first.stdout[-3000:]
    report = first.task_result("Write the bake manifest")
    assert report["failed_targets"] == ["web"], report["failures"]
    assert "check approved (local bake.verify[1]) failed" in report["failures"]
    assert "not approved" in report["failures"]
    image_name, project = seen.read_text().split()
    assert image_name == "web-20261203t170000-aaaaaa" and project == PROJECT
    # never labelled final, and deleted by the cleanup with the uploaded object
    assert (PROJECT, image_name) not in gce.fake.images
    assert gce.leftovers() == {}

    bake["verify"][1]["local"]["inline"] = ["echo approved"]
    second = run_playbook(
        REPO / "playbooks" / "bake.yml",
        tmp_path,
        extra_vars={"bake": bake, "bake_id": "20261203t170100-bbbbbb"},
    )
    assert second.rc == 0, second.explain()
    assert second.stats["bakery-disk"]["changed"] == 0  # the disk is found
    manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
    assert entry["verify"]["status"] == "passed" and entry["name"] == "web-20261203t170100-bbbbbb", (
        entry,
        sorted(gce.fake.images),
    )
    image = gce.fake.images[(PROJECT, entry["name"])]
    assert image["status"] == "READY" and "bakery-temporary" not in (image.get("labels") or {})
    assert gce.leftovers() == {}
    # the disk copied from an image has SBOMs of its own packages (read out of its file system, never mounted), and
    # so has the image uploaded from it: both validate and list exactly what dpkg-query lists of the disk's tree
    disk = next(a for a in manifest["artifacts"] if a["target"] == "disk")
    raw_sha256 = next(o["sha256"] for o in disk["outputs"] if o["format"] == "raw")
    packages = dpkg_query(status, tmp_path / "dpkg")
    assert len(packages) > 40
    check_documents(disk, packages)
    documents = check_documents(entry, packages)
    # the second bake found the disk and read it again: the same documents, not rewritten (the image is a new one)
    (reread,) = [
        r
        for r in second.task_results("Write the artifact's SBOMs")
        if r.get("action") == "bakery.images.sbom"
        and r["documents"]["spdx"]["path"] == disk["sbom"]["spdx"]["path"]
    ]
    assert (reread["changed"], reread["packages"], reread["documents"]) == (
        False,
        len(packages),
        disk["sbom"],
    )
    assert documents["cyclonedx"]["metadata"]["component"]["hashes"][0]["content"] == raw_sha256
    assert entry["sbom"]["spdx"]["path"] == str(tmp_path / "output" / "gce-verify-web.spdx.json")
    # its statement names the image with the sha256 of the raw disk it was uploaded from; the output verifies
    assert entry["disk_sha256"] == raw_sha256
    statement = check_statement(entry)
    assert [(s["name"], s["digest"]) for s in statement["subject"]] == [
        ("projects/%s/global/images/%s" % (PROJECT, entry["name"]), {"sha256": raw_sha256})
    ]
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"],
        cwd=tmp_path / "output",
        capture_output=True,
        text=True,
        check=False,
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    for document in [*disk["sbom"].values(), *entry["sbom"].values(), entry["provenance"]]:
        assert "%s: OK" % Path(document["path"]).name in sums.stdout, sums.stdout
    assert _verify.check(str(tmp_path / "output" / "bake-manifest.json"), None, None)["mismatches"] == []


def test_verify_instance_runs_the_checks_on_an_instance_of_the_new_image(gce, bake_base, tmp_path):
    """verify_instance on a gce target: an instance is started from the new, still temporary image (its own SSH key)
    and the shell check runs over its connection; a failing check fails the target in verify and the cleanup deletes
    the image, the instance, its disk and its key file; fixed, the image is labelled final without the disk being
    made again (stand_ins.checks_on_an_instance).

    The fake starts no VM (its instance answers SSH with a banner only): the stand-in plays of stand_ins.py run the
    check in a local container of the bake's base image instead. A real instance booting from the image on Compute
    Engine is not tested here."""

    def image(name: str) -> dict | None:
        return gce.fake.images.get((PROJECT, name))

    def final(name: str) -> bool:
        found = image(name) or {}
        return found.get("status") == "READY" and "bakery-temporary" not in (found.get("labels") or {})

    cloud = Cloud(
        kind="gce",
        options=gce.options(zone=ZONE, name="web", bucket=BUCKET, chunk_size_mb=1, ssh_port=gce.ssh_port),
        image_variable="BAKERY_IMAGE_NAME",
        launched=lambda: [
            (item["name"], item["source_image"].split("/", 1)[1]) for item in gce.fake.launched
        ],
        image_exists=lambda name: image(name) is not None,
        image_final=final,
        leftovers=lambda bake_id: gce.leftovers(),
        key_files=".bakery-ssh/*",
    )
    source = qcow2_copy(
        make_raw_disk(tmp_path / "made.raw", size="64M", blob=1 << 20), tmp_path / "source.qcow2"
    )
    checks_on_an_instance(cloud, source, "64M", bake_base["image"], tmp_path)
