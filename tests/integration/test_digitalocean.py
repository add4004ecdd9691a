"""The digitalocean target against a stand-in of the DigitalOcean API (tests/integration/digitalocean.py) that
validates every request and every response against DigitalOcean's official OpenAPI specification (a violation
fails the test), and moto's S3 as the Spaces bucket. The stand-in imports a custom image by fetching its presigned
URL from moto, as DigitalOcean fetches it from Spaces.

The disk is the qemu target of the test's own bake (provision: none copies a small qcow2 image made here into the
outputs, as a provisioned disk would be); one such bake is made and reused by the tests of this module.

Instance bakes: the stand-in keeps droplets, SSH keys, droplet actions and snapshots as records, but no droplet
boots. So a local container of the bake's base image stands in for the droplet while it is provisioned
(stand_ins.instance_playbook, the same test play as the gce instance bake's) and a socket answers the droplet's
SSH wait with a banner. What this does not test: a real droplet booting, SSH to it, and a real snapshot's content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from conftest import REPO, run_playbook
from crash import run_janitor
from stand_ins import SshBanner, instance_playbook
from test_openstack import make_qcow2

from ansible_collections.bakery.images.plugins.module_utils import _digitalocean
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import new_bake_id
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BUCKET = "bakery-spaces"
SPACES_SECRET = "spaces-s3cr3t-%s" % uuid.uuid4().hex[:12]


def unique(prefix: str) -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def standin():
    """The OpenAPI-validating stand-in, one per test module, stopped after it."""
    from digitalocean import StandIn

    server = StandIn()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_violations(standin):
    """Every request and response of the test matched the OpenAPI specification."""
    standin.violations.clear()
    yield
    assert standin.violations == [], standin.violations


@pytest.fixture(scope="module")
def spaces(moto):
    """moto's S3 as the Spaces bucket: the bucket, and the Spaces options of a target (moto takes any secret)."""
    moto.client("s3").create_bucket(Bucket=BUCKET)
    return {
        "spaces_bucket": BUCKET,
        "spaces_endpoint": moto.url,
        "spaces_access_key": "testing",
        "spaces_secret_key": SPACES_SECRET,
    }


def objects(moto) -> list[str]:
    return [item["Key"] for item in moto.client("s3").list_objects_v2(Bucket=BUCKET).get("Contents") or []]


def bake_definition(standin, spaces, tmp: Path, source_image: Path, name: str, **target) -> dict:
    options = standin.options(
        source="disk",
        name=name,
        description="web server, baked by bakery",
        distribution="Debian",
        disk_format="qcow2",
        region="nyc3",
        regions=["ams3"],
        tags=["web", "team:platform"],
        retries=1,
        retry_delay=0.1,
        **spaces,
    )
    options.update(target)
    return {
        "name": "do-test",
        "output_dir": str(tmp / "output"),
        "targets": [
            {
                "name": "disk",
                "qemu": {
                    "provision": "none",
                    # a disk without a dpkg database: baked without SBOMs, as asked
                    "sbom_unreadable": "skip",
                    "base_image": str(source_image),
                    "formats": ["qcow2"],
                    "disk_size": "64M",
                },
            },
            {"name": "web", "digitalocean": options},
        ],
    }


@pytest.fixture(scope="module")
def baked(standin, spaces, tmp_path_factory):
    """One bake (qemu disk + custom image), run once for the module; its definition and first run."""
    tmp = tmp_path_factory.mktemp("digitalocean-bake")
    source = make_qcow2(tmp)
    bake = bake_definition(standin, spaces, tmp, source, unique("bakery-web"))
    run = run_playbook(REPO / "playbooks" / "bake.yml", tmp, extra_vars={"bake": bake}, args=["-vvvv"])
    return {"tmp": tmp, "bake": bake, "run": run}


def disk_of(baked) -> Path:
    manifest = json.loads((baked["tmp"] / "output" / "bake-manifest.json").read_text())
    return Path(next(a for a in manifest["artifacts"] if a["target"] == "disk")["path"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bake_imports_the_disk_once_with_its_tags(standin, moto, baked):
    """The qemu target's qcow2 disk becomes one available custom image, imported from Spaces (the stand-in fetched
    exactly the disk's bytes), in nyc3 and ams3, with its tags and the fingerprint tag, final (no
    bakery-temporary); the Spaces upload is gone. A second bake imports nothing and changes nothing; neither run
    prints the token or the Spaces secret, even at -vvvv."""
    run, bake, tmp = baked["run"], baked["bake"], baked["tmp"]
    assert run.rc == 0, run.explain()
    name = bake["targets"][1]["digitalocean"]["name"]
    (image,) = standin.by_name(name)
    manifest = json.loads((tmp / "output" / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
    upload = run.task_result("Import the source target's disk as a custom image")
    assert upload["built"] and upload["upload"]["key"].startswith("bakery/%s/web/" % entry["bake_id"])
    assert entry["id"] == image["id"] and entry["type"] == "digitalocean"
    assert image["status"] == "available" and image["type"] == "custom"
    assert (image["distribution"], image["description"]) == ("Debian", "web server, baked by bakery")
    assert sorted(image["regions"]) == ["ams3", "nyc3"]
    assert sorted(image["tags"]) == sorted(
        [
            "web",
            "team:platform",
            "bakery-fingerprint:%s" % entry["fingerprint"],
            "bakery-bake-id:%s" % entry["bake_id"],
            "bakery-target:web",
        ]
    )
    disk = disk_of(baked)
    assert standin.fetched[image["id"]] == (sha256(disk), disk.stat().st_size)
    assert objects(moto) == []
    for text in (run.stdout + run.stderr,):
        assert _digitalocean_token(standin) not in text and SPACES_SECRET not in text

    again = run_playbook(REPO / "playbooks" / "bake.yml", tmp, extra_vars={"bake": bake}, args=["-vvvv"])
    assert again.rc == 0, again.explain()
    assert again.stats["bakery-web"]["changed"] == 0, again.explain()
    assert standin.by_name(name) == [image]
    found = again.task_result("Import the source target's disk as a custom image")
    assert found["found"] and not found["changed"] and "upload" not in found
    assert objects(moto) == []
    assert _digitalocean_token(standin) not in again.stdout + again.stderr
    assert SPACES_SECRET not in again.stdout + again.stderr


def _digitalocean_token(standin) -> str:
    return standin.options()["token"]


def test_check_mode_creates_nothing(standin, moto, baked):
    """--check with a changed image option: the report says the image would be built; the stand-in holds no new
    image and the bucket no upload."""
    bake = json.loads(json.dumps(baked["bake"]))
    bake["targets"][1]["digitalocean"]["regions"] = ["ams3", "fra1"]
    before = standin.all_images()
    run = run_playbook(
        REPO / "playbooks" / "bake.yml", baked["tmp"], extra_vars={"bake": bake}, args=["--check"]
    )
    assert run.rc == 0, run.explain()
    upload = run.task_result("Import the source target's disk as a custom image")
    assert upload["changed"] and not upload["built"] and upload["image"] is None
    assert "1 would build" in "\n".join(run.task_result("Artifact summary")["msg"])
    assert standin.all_images() == before
    assert objects(moto) == []


def module_params(standin, spaces, disk: Path, bake_id: str, **extra) -> dict:
    params = standin.options(
        action="upload",
        name=unique("bakery-module"),
        disk=str(disk),
        region="nyc3",
        regions=["sfo3"],
        bake_id=bake_id,
        target="web",
        timeout=120,
        retries=0,
        retry_delay=0.1,
        **spaces,
    )
    params.update(extra)
    return params


def leftovers(standin, moto, bake_id: str) -> list[str]:
    images = [
        "image %s %s" % (i["id"], i["status"])
        for i in standin.all_images()
        if "bakery-bake-id:%s" % bake_id in i["tags"]
    ]
    return images + ["object %s" % key for key in objects(moto) if key.startswith("bakery/%s/" % bake_id)]


def test_a_failure_at_any_call_leaves_nothing_behind(standin, moto, spaces, baked):
    """Each call of an import (API and Spaces) fails in turn: the task fails, and no image and no upload of the
    bake is left; without faults the same import works."""
    disk = disk_of(baked)
    calls: list[str] = []
    bake_id = unique("count")
    client = _digitalocean.DigitalOcean(module_params(standin, spaces, disk, bake_id))
    client.before = calls.append
    result = _digitalocean.run(module_params(standin, spaces, disk, bake_id), do=client)
    assert result["built"] and sorted(result["image"]["regions"]) == ["nyc3", "sfo3"]
    assert len(calls) >= 8, calls
    client.before = None
    client.delete(result["image"]["id"])

    for index, call in enumerate(calls):
        bake_id = unique("fault%d" % index)
        client = _digitalocean.DigitalOcean(module_params(standin, spaces, disk, bake_id))
        seen = [0]
        client.before = fault_at(index, seen)
        try:
            _digitalocean.run(module_params(standin, spaces, disk, bake_id), do=client)
        except BakeryError as failure:
            assert "injected fault" in failure.msg, (call, failure.msg)
        else:
            # this run needed fewer calls (the import ended after fewer polls): the fault was never reached
            assert seen[0] <= index, (index, calls)
            client.before = None
            for made in leftovers(standin, moto, bake_id):
                if made.startswith("image"):
                    client.delete(made.split()[1])
        # a fault in an undo is reported; the cleanup (what the role runs next) then removes what is left
        if leftovers(standin, moto, bake_id):
            _digitalocean.run(dict(module_params(standin, spaces, disk, bake_id), action="cleanup"))
        assert leftovers(standin, moto, bake_id) == [], call


def fault_at(index: int, seen: list[int]):
    """A hook that counts the calls in *seen* and makes call *index* (from 0) fail as a dropped connection fails
    under pydo (azure-core's ServiceRequestError; a Spaces call's fault is reported the same way)."""
    from azure.core.exceptions import ServiceRequestError

    def before(what: str) -> None:
        seen[0] += 1
        if seen[0] == index + 1:
            raise ServiceRequestError("injected fault at %s" % what)

    return before


KILLED_IMPORT = """
import json, sys
from ansible_collections.bakery.images.plugins.module_utils import _digitalocean
_digitalocean.run(json.loads(sys.argv[1]))
"""


def test_sigkill_during_the_import_then_the_janitor_removes_it(standin, moto, spaces, baked, tmp_path):
    """A bake killed (SIGKILL, no undo runs) while DigitalOcean imports its image leaves the image (NEW, tagged
    bakery-temporary) and the Spaces upload; playbooks/janitor.yml with the bake definition and bake id deletes
    both, and only them: the published image of the other bake stays."""
    bake_id = unique("killed")
    params = module_params(standin, spaces, disk_of(baked), bake_id)
    script = tmp_path / "import.py"
    script.write_text(textwrap.dedent(KILLED_IMPORT))
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections" / "src"))
    standin.import_delay = 60
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(params)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            m.startswith("image") for m in leftovers(standin, moto, bake_id)
        ):
            assert proc.poll() is None, "the import ended before the kill"
            time.sleep(0.2)
        assert proc.poll() is None, "the import ended before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        standin.import_delay = 0.0
    left = leftovers(standin, moto, bake_id)
    assert (
        len(left) == 2 and left[0].endswith(" NEW") and left[1].startswith("object bakery/%s/web/" % bake_id)
    ), left
    published = [i["id"] for i in standin.all_images() if "bakery-temporary" not in i["tags"]]
    assert published

    bake_file = tmp_path / "bake.yml"
    bake_file.write_text(yaml.safe_dump({"bake": baked["bake"]}))
    run = run_janitor(tmp_path, bake_file, bake_id)
    result = run.task_result("Find and remove the temporary resources")
    assert sorted(
        (r["backend"], r["kind"], r["state"]) for r in result["resources"] if r["backend"] == "digitalocean"
    ) == [("digitalocean", "image", "removed"), ("digitalocean", "spaces object", "removed")], result
    assert leftovers(standin, moto, bake_id) == []
    assert [i["id"] for i in standin.all_images() if "bakery-temporary" not in i["tags"]] == published
    assert _digitalocean_token(standin) not in run.stdout + run.stderr
    assert SPACES_SECRET not in run.stdout + run.stderr


# ------------------------------------------------------------------------------------ instance bakes

INSTANCE_BAKE_ID = "20261204t210000-d0d0d0"


@pytest.fixture(scope="module")
def banner():
    server = SshBanner()
    yield server
    server.close()


def instance_bake(standin, banner, name: str, **target) -> dict:
    options = standin.options(
        name=name,
        description="web droplet, baked by bakery",
        base_image="debian-12-x64",
        size="s-1vcpu-1gb",
        region="nyc3",
        regions=["ams3", "fra1"],
        tags=["web"],
        ssh_port=banner.port,
        retries=0,
        retry_delay=0.1,
        timeout=120,
    )
    options.update(target)
    return {
        "name": "do-instance",
        "provisioners": [{"role": "marker", "vars": {"marker": "provisioned"}}],
        "targets": [{"name": "vm", "digitalocean": options}],
    }


def test_instance_bake_then_nothing_to_do(standin, banner, bake_base, tmp_path):
    """A droplet of debian-12-x64 (a container stands in for it, see the module's docstring) is provisioned by the
    bake's role, passes the hygiene checks, is powered off and snapshotted; the snapshot is in nyc3, ams3 and fra1,
    named and tagged as an imported image is, final; the droplet, the SSH key (in the account and on disk) are gone.
    A second run finds the image by fingerprint and makes nothing; --check with another size would build and makes
    nothing. No run shows the token."""
    playbook = instance_playbook(tmp_path)
    name = unique("bakery-droplet")
    bake = instance_bake(standin, banner, name)
    extra = {"bake": bake, "stand_in_image": bake_base["image"]}
    started = time.monotonic()
    first = run_playbook(playbook, tmp_path, extra_vars=extra, args=["-e", "bake_id=%s" % INSTANCE_BAKE_ID])
    assert first.rc == 0, first.explain()
    first_seconds = time.monotonic() - started
    assert first.task_result("Leave a mark")["changed"], "the stand-in droplet was not provisioned"
    launched = first.task_result("Find the image, or start the droplet")
    assert launched["droplet"]["name"] == "bakery-%s-vm" % INSTANCE_BAKE_ID
    assert launched["public_key"].startswith("ssh-ed25519 AAAA")
    checked = first.task_result(
        "Remove the builder's key and the machine's identity from the droplet, then check the image's hygiene"
    )
    assert checked["passed"]
    (image,) = standin.by_name(name)
    manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert (entry["type"], entry["id"], entry["bake_id"]) == ("digitalocean", image["id"], INSTANCE_BAKE_ID)
    assert [c["status"] for c in entry["hygiene"]] and all(c["status"] == "passed" for c in entry["hygiene"])
    assert image["type"] == "snapshot" and image["status"] == "available"
    assert image["description"] == "web droplet, baked by bakery"
    assert sorted(image["regions"]) == ["ams3", "fra1", "nyc3"]
    assert sorted(image["tags"]) == sorted(
        [
            "web",
            "bakery-fingerprint:%s" % entry["fingerprint"],
            "bakery-bake-id:%s" % INSTANCE_BAKE_ID,
            "bakery-target:vm",
        ]
    )
    assert standin.leftovers() == {}, "droplet, key or unfinished snapshot left behind"
    assert not list((tmp_path / "output" / ".bakery-ssh").glob("*")), "SSH key file left behind"
    posted = [c for c in standin.calls if c.startswith("POST /v2/droplets")]
    assert (
        len([c for c in posted if c == "POST /v2/droplets"]) == 1 and len(posted) == 3
    )  # create, power_off, snapshot

    calls = len(standin.calls)
    second = run_playbook(playbook, tmp_path, extra_vars=extra)
    assert second.rc == 0, second.explain()
    assert all(host["changed"] == 0 for host in second.stats.values()), second.stats
    assert all(c.startswith("GET ") for c in standin.calls[calls:]), standin.calls[calls:]
    assert standin.by_name(name) == [image]
    again = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    assert again["artifacts"][0]["hygiene"] == entry["hygiene"]

    calls = len(standin.calls)
    bake["targets"][0]["digitalocean"]["size"] = "s-2vcpu-2gb"
    check = run_playbook(playbook, tmp_path, extra_vars=extra, args=["--check"])
    assert check.rc == 0, check.explain()
    assert "1 would build" in "\n".join(check.task_result("Artifact summary")["msg"])
    assert all(c.startswith("GET ") for c in standin.calls[calls:]), standin.calls[calls:]
    assert standin.leftovers() == {}
    token = _digitalocean_token(standin)
    assert all(token not in run.stdout + run.stderr for run in (first, second, check))
    print("instance bake: first run %.1f s" % first_seconds)


def test_preflight_refuses_a_missing_base_image_and_the_plan_a_bad_size(standin, banner, tmp_path):
    """An instance bake of a base image DigitalOcean does not have: the preflight names it before any droplet or
    key is made; a size that is no slug: the plan refuses it before any call."""
    from conftest import PREFLIGHT_TASK

    playbook = instance_playbook(tmp_path)  # also the provisioner's role
    bake = instance_bake(standin, banner, unique("bakery-missing"), base_image="debian-99-x64")
    calls = len(standin.calls)
    run = run_playbook(playbook, tmp_path, extra_vars={"bake": bake, "stand_in_image": "none"})
    assert run.rc != 0
    (vm,) = run.task_result(PREFLIGHT_TASK)["targets"]
    (problem,) = [c for c in vm["preflight"] if not c["ok"]]
    assert problem["option"] == "digitalocean.base_image=debian-99-x64", problem
    assert "base image debian-99-x64 does not exist" in problem["msg"], problem
    assert all(c.startswith("GET ") for c in standin.calls[calls:]), standin.calls[calls:]
    assert standin.leftovers() == {}

    bake = instance_bake(standin, banner, unique("bakery-size"), size="1 vCPU")
    calls = len(standin.calls)
    run = run_playbook(playbook, tmp_path, extra_vars={"bake": bake, "stand_in_image": "none"})
    assert run.rc != 0
    assert "bake.targets[0].digitalocean: size '1 vCPU' is not a DigitalOcean slug" in run.stdout, run.stdout[
        -2000:
    ]
    assert standin.calls[calls:] == []


def instance_params(standin, banner, bake_id: str, key_dir: Path, **extra) -> dict:
    params = standin.options(
        name=unique("bakery-instance"),
        base_image="debian-12-x64",
        size="s-1vcpu-1gb",
        region="nyc3",
        regions=["ams3"],
        tags=["web"],
        bake_id=bake_id,
        target="web",
        ssh_port=banner.port,
        ssh_key_dir=str(key_dir),
        timeout=60,
        retries=0,
        retry_delay=0.1,
    )
    params.update(extra)
    return params


def launch_and_capture(params: dict, client) -> dict:
    """What the role does: launch, (provisioning,) capture; the cleanup after a failure."""
    launched = _digitalocean.run(dict(params, action="launch"), do=client)
    return _digitalocean.run(
        dict(
            params,
            action="capture",
            droplet=str(launched["droplet"]["id"]),
            ssh_key_id=str(launched["key"]["id"]),
            inputs=launched["inputs"],
        ),
        do=client,
    )


def test_a_failure_at_any_call_of_an_instance_bake_leaves_nothing(standin, banner, tmp_path):
    """Each call of an instance bake (launch: base image, lookup, key, droplet, its start; capture: power_off,
    snapshot, tags, transfer, rename, publish, and the deletions) fails in turn: no droplet, SSH key (in the account
    or on disk) or unfinished snapshot is left; a fault in a deletion is reported and the role's cleanup removes
    what it left. Without faults the same bake makes the image."""
    calls: list[str] = []
    params = instance_params(standin, banner, unique("count"), tmp_path)
    client = _digitalocean.DigitalOcean(params)
    client.before = calls.append
    result = launch_and_capture(params, client)
    assert result["built"] and sorted(result["image"]["regions"]) == ["ams3", "nyc3"]
    assert any(c.startswith("snapshot droplet") for c in calls) and any(
        c.startswith("delete SSH key") for c in calls
    )
    assert len(calls) >= 20, calls
    client.before = None
    client.delete(result["image"]["id"])

    failed = 0
    for index, call in enumerate(calls):
        params = instance_params(standin, banner, unique("fault%d" % index), tmp_path)
        client = _digitalocean.DigitalOcean(params)
        seen = [0]
        client.before = fault_at(index, seen)
        try:
            result = launch_and_capture(params, client)
        except BakeryError as failure:
            assert "injected fault" in failure.msg, (call, failure.msg)
            failed += 1
        else:
            client.before = None
            if result.get(
                "warnings"
            ):  # a deletion failed after the snapshot was made: the role's cleanup follows
                _digitalocean.run(dict(params, action="cleanup"))
            client.delete(result["image"]["id"])
            assert seen[0] > index and result["warnings"], (index, call, result)
        if standin.leftovers():
            _digitalocean.run(dict(params, action="cleanup"))
        assert standin.leftovers() == {}, (index, call)
        assert not list(tmp_path.glob("bakery-*")), (index, call)
    assert failed >= len(calls) - 3, (failed, calls)


KILLED_INSTANCE_BAKE = """
import json, sys
from ansible_collections.bakery.images.plugins.module_utils import _digitalocean
params = json.loads(sys.argv[1])
launched = _digitalocean.run(dict(params, action="launch"))
_digitalocean.run(dict(params, action="capture", droplet=str(launched["droplet"]["id"]),
                       ssh_key_id=str(launched["key"]["id"]), inputs=launched["inputs"]))
"""


# (phase, the call the stand-in holds: the bake is killed once it made it, what the bake has made by then with
# the kind of resource the janitor reports for it: a snapshot not yet tagged is found by its name, a tagged one by
# its bakery-temporary tag, as an image)
INSTANCE_KILL_POINTS = [
    ("booting", r"GET /v2/droplets/\d+", {"droplets": "droplet", "keys": "ssh key"}),
    ("powering-off", r"POST /v2/droplets/\d+/actions", {"droplets": "droplet", "keys": "ssh key"}),
    ("snapshotted", r"POST /v2/tags", {"droplets": "droplet", "keys": "ssh key", "images": "snapshot"}),
    (
        "transferring",
        r"POST /v2/images/\d+/actions",
        {"droplets": "droplet", "keys": "ssh key", "images": "image"},
    ),
]


@pytest.mark.parametrize(
    ("phase", "held", "made"), INSTANCE_KILL_POINTS, ids=[p[0] for p in INSTANCE_KILL_POINTS]
)
def test_sigkill_at_each_phase_then_the_janitor_removes_everything(
    standin, banner, tmp_path, phase, held, made
):
    """An instance bake killed (SIGKILL, no undo runs) while its droplet boots, once it was provisioned (powering
    off), once it was snapshotted (the snapshot not yet tagged) and while the snapshot is transferred leaves what
    it made by then under its temporary name: the droplet, the SSH key, the snapshot; playbooks/janitor.yml with
    the bake definition and bake id deletes them, and nothing else (the images of the other tests stay)."""
    bake_id = new_bake_id()  # the form the janitor recognises in a name
    params = instance_params(standin, banner, bake_id, tmp_path)
    script = tmp_path / "instance.py"
    script.write_text(textwrap.dedent(KILLED_INSTANCE_BAKE))
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections" / "src"))
    pattern = re.compile(held)  # a call as the stand-in records it: "<method> <path>"
    standin.hold[held] = 60.0
    published = sorted(i["id"] for i in standin.all_images())
    seen = len(standin.calls)
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(params)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            pattern.fullmatch(call) for call in standin.calls[seen:]
        ):
            assert proc.poll() is None, "the bake ended before the phase %s" % phase
            time.sleep(0.1)
        assert any(pattern.fullmatch(call) for call in standin.calls[seen:]), (
            "the bake never got to %s" % phase
        )
        assert proc.poll() is None, "the bake ended before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        del standin.hold[held]
    name = _digitalocean.temporary_name(bake_id, "web")
    assert standin.leftovers() == {kind: [name] for kind in sorted(made)}

    bake_file = tmp_path / "bake.yml"
    bake = instance_bake(standin, banner, "web")
    bake["targets"][0]["name"] = "web"
    bake_file.write_text(yaml.safe_dump({"bake": bake}))
    run = run_janitor(tmp_path, bake_file, bake_id)
    result = run.task_result("Find and remove the temporary resources")
    assert sorted(
        (r["kind"], r["state"]) for r in result["resources"] if r["backend"] == "digitalocean"
    ) == sorted((kind, "removed") for kind in made.values()), result
    assert standin.leftovers() == {}
    assert sorted(i["id"] for i in standin.all_images()) == published
    assert _digitalocean_token(standin) not in run.stdout + run.stderr


def test_the_stand_in_refuses_what_the_specification_does(standin):
    """The stand-in checks requests against the specification: an import without url or region is answered 400
    and recorded as a violation (which fails a test), and so is an image action of an unknown type."""
    headers = {"Authorization": "Bearer %s" % _digitalocean_token(standin)}
    answer = requests.post(standin.url + "/v2/images", json={"name": "x"}, headers=headers, timeout=10)
    assert answer.status_code == 400
    answer = requests.post(
        standin.url + "/v2/images/1/actions", json={"type": "explode"}, headers=headers, timeout=10
    )
    assert answer.status_code == 400
    assert len(standin.violations) == 2 and all(
        v.startswith("request POST /v2/images") for v in standin.violations
    )
    standin.violations.clear()


def test_plan_refuses_what_digitalocean_would(standin, spaces, tmp_path):
    """A tag that is bakery's own: the plan refuses it (naming the target) before anything is made, the qemu
    disk included. (The other refusals of check_params are unit tests: tests/unit/.../test_digitalocean.py.)"""
    source = tmp_path / "nothing.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True)
    bake = bake_definition(standin, spaces, tmp_path, source, "refused", tags=["bakery-temporary"])
    calls = len(standin.calls)
    run = run_playbook(REPO / "playbooks" / "bake.yml", tmp_path, extra_vars={"bake": bake})
    assert run.rc != 0
    assert (
        "bake.targets[1].digitalocean: tag 'bakery-temporary': tags starting with bakery- are bakery's own"
        in (run.stdout)
    ), run.stdout[-2000:]
    assert standin.calls[calls:] == [] and not (tmp_path / "output").exists()


def test_preflight_names_a_refused_token_before_anything_is_made(standin, spaces, tmp_path):
    """The plan play's preflight calls the API as the import would: a token DigitalOcean refuses (401) stops the
    bake before the qemu disk is made, naming the target and the option, without showing the token; nothing is
    imported or uploaded."""
    from conftest import PREFLIGHT_TASK

    source = make_qcow2(tmp_path)
    wrong = "dop_v1_wrong_%s" % uuid.uuid4().hex[:12]
    bake = bake_definition(standin, spaces, tmp_path, source, unique("bakery-preflight"), token=wrong)
    before = standin.all_images()
    run = run_playbook(REPO / "playbooks" / "bake.yml", tmp_path, extra_vars={"bake": bake})
    assert run.rc != 0
    (web,) = [t for t in run.task_result(PREFLIGHT_TASK)["targets"] if t["name"] == "web"]
    (problem,) = [c for c in web["preflight"] if not c["ok"]]
    assert problem["option"] == "digitalocean.api_url=%s" % standin.url, problem
    assert problem["msg"].startswith("look up the account: HTTP 401 Unable to authenticate you"), problem
    assert not any((tmp_path / "output").glob("**/*.qcow2"))
    assert standin.all_images() == before
    assert wrong not in run.stdout + run.stderr
