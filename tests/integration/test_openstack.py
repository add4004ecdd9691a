"""The openstack target against a real Glance (tests/integration/glance.py): glance-api 33 under gunicorn with
sqlite and a filesystem store, without Keystone (the identity comes from request headers; bakery connects through
openstacksdk with auth_type none and the image endpoint override). Glance inspects what it stores: the qcow2 disk
of the bake's qemu target must pass as qcow2.

The disk is the qemu target of the test's own bake (provision: none copies a small qcow2 image made here into the
outputs, as a provisioned disk would be); one such bake is made and reused by the tests of this module.
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
import yaml
from conftest import REPO, run_playbook
from crash import run_janitor

from ansible_collections.bakery.images.plugins.module_utils import _openstack
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

SECRET_TOKEN = "s3cr3t-token-%s" % uuid.uuid4().hex[:12]
MEMBER = "bakery-member-project"


def unique(prefix: str) -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def make_qcow2(tmp: Path) -> Path:
    """A small qcow2 image that holds an ext4 file system with some data (what a qemu target's disk holds)."""
    tree = tmp / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("baked by bakery\n")
    (tree / "data.bin").write_bytes(os.urandom(600 * 1024))
    raw = tmp / "made.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "64M"], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", str(tree), str(raw)], check=True)
    image = tmp / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    raw.unlink()
    return image


def bake_definition(glance, tmp: Path, source_image: Path, name: str, **target) -> dict:
    options = glance.options(
        source="disk",
        name=name,
        disk_format="qcow2",
        hw_disk_bus="virtio",
        hw_qemu_guest_agent=True,
        os_distro="debian",
        os_version="12",
        architecture="x86_64",
        properties={"team": "web"},
        visibility="shared",
        members=[MEMBER],
        tags=["web", "bakery"],
        protected=True,
        min_disk=1,
        min_ram=256,
        chunk_size_mb=1,
    )
    # a token the Glance ignores: a secret that must never be printed
    options["headers"]["X-Auth-Token"] = SECRET_TOKEN
    options.update(target)
    return {
        "name": "os-test",
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
            {"name": "web", "openstack": options},
        ],
    }


def sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def baked(glance, tmp_path_factory):
    """One bake (qemu disk + openstack image), run once for the module; its definition and first run."""
    tmp = tmp_path_factory.mktemp("openstack-bake")
    source = make_qcow2(tmp)
    bake = bake_definition(glance, tmp, source, unique("bakery-web"))
    run = run_playbook(REPO / "playbooks" / "bake.yml", tmp, extra_vars={"bake": bake}, args=["-vvvv"])
    return {"tmp": tmp, "bake": bake, "run": run}


def test_bake_publishes_the_disk_once_with_its_properties(glance, baked):
    """The qemu target's qcow2 disk becomes one active Glance image with the requested metadata and Glance's
    sha512 of the disk; it is final (no bakery_temporary), shared with the member, protected. A second bake
    uploads nothing and changes nothing; the secret header is never printed, even at -vvvv."""
    run, bake, tmp = baked["run"], baked["bake"], baked["tmp"]
    assert run.rc == 0, run.explain()
    name = bake["targets"][1]["openstack"]["name"]
    (image,) = glance.images(name=name)
    manifest = json.loads((tmp / "output" / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
    disk = next(a for a in manifest["artifacts"] if a["target"] == "disk")
    upload = run.task_result("Upload the source target's disk to Glance")
    assert upload["built"] and upload["upload"]["method"] == "glance-direct"  # Glance 33 offers the import
    assert entry["id"] == image["id"] and entry["bake_id"] == image["bakery_bake_id"]
    assert image["status"] == "active"
    assert image["disk_format"] == "qcow2" and image["container_format"] == "bare"
    assert image["os_hash_algo"] == "sha512" and image["os_hash_value"] == sha512(Path(disk["path"]))
    assert entry["os_hash_value"] == image["os_hash_value"]
    assert image["size"] == Path(disk["path"]).stat().st_size
    assert image["virtual_size"] == 64 * 1024 * 1024
    assert image["visibility"] == "shared" and image["protected"] is True
    assert sorted(image["tags"]) == ["bakery", "web"]
    assert (image["min_disk"], image["min_ram"]) == (1, 256)
    assert image["hw_disk_bus"] == "virtio" and image["hw_qemu_guest_agent"] == "yes"
    assert (image["os_distro"], image["os_version"], image["architecture"]) == ("debian", "12", "x86_64")
    assert image["team"] == "web"
    assert image["bakery_fingerprint"] == entry["fingerprint"] and image["bakery_target"] == "web"
    assert "bakery_temporary" not in image
    assert glance.members(image["id"]) == [MEMBER]
    assert glance.data(image["id"]) == Path(disk["path"]).read_bytes()
    assert SECRET_TOKEN not in run.stdout + run.stderr

    again = run_playbook(REPO / "playbooks" / "bake.yml", tmp, extra_vars={"bake": bake}, args=["-vvvv"])
    assert again.rc == 0, again.explain()
    assert again.stats["bakery-web"]["changed"] == 0, again.explain()
    assert glance.images(name=name) == [image]
    manifest = json.loads((tmp / "output" / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
    found = again.task_result("Upload the source target's disk to Glance")
    assert found["found"] and not found["changed"] and "upload" not in found
    assert entry["id"] == image["id"]
    assert SECRET_TOKEN not in again.stdout + again.stderr


def test_check_mode_creates_nothing(glance, baked):
    """--check with a changed image option: the report says the image would be built, Glance holds nothing new."""
    bake = json.loads(json.dumps(baked["bake"]))
    bake["targets"][1]["openstack"]["min_ram"] = 512
    before = glance.images()
    run = run_playbook(
        REPO / "playbooks" / "bake.yml", baked["tmp"], extra_vars={"bake": bake}, args=["--check"]
    )
    assert run.rc == 0, run.explain()
    upload = run.task_result("Upload the source target's disk to Glance")
    assert upload["changed"] and not upload["built"] and upload["changed_inputs"] == ["options"]
    assert "1 would build" in "\n".join(run.task_result("Artifact summary")["msg"])
    assert glance.images() == before


def module_params(glance, disk: Path, bake_id: str, **extra) -> dict:
    params = dict(
        glance.options(),
        action="upload",
        name=unique("bakery-module"),
        disk=str(disk),
        disk_format="qcow2",
        bake_id=bake_id,
        target="web",
        chunk_size_mb=1,
        timeout=300,
        retries=0,
        retry_delay=0.1,
    )
    params.update(extra)
    return params


def leftovers(glance, bake_id: str) -> list[str]:
    return ["%s %s" % (i["id"], i["status"]) for i in glance.images() if i.get("bakery_bake_id") == bake_id]


def fault_at(index: int, seen: list[int], made: list[str] | None = None):
    """A hook that counts the calls in *seen* (and lists them in *made*) and makes call *index* (from 0) fail as
    if nothing answered."""

    def before(verb: str, path: str) -> None:
        seen[0] += 1
        if made is not None:
            made.append("%s %s" % (verb, path))
        if seen[0] == index + 1:
            raise _openstack.ks_exceptions.ConnectFailure("injected fault at %s %s" % (verb, path))

    return before


def same_but_polls(some: list[str], others: list[str]) -> bool:
    """Whether two runs' calls are the same calls, however often each repeated a call in a row (a poll), ids
    aside."""

    def shape(calls: list[str]) -> list[str]:
        out: list[str] = []
        for call in calls:
            general = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", call)
            if not out or out[-1] != general:
                out.append(general)
        return out

    return shape(some) == shape(others)


@pytest.mark.parametrize("method", ["glance-direct", "put"])
def test_a_failure_at_any_call_leaves_nothing_behind(glance, baked, tmp_path, method):
    """Each Glance call of an upload fails in turn (the connection is refused there): the task fails, and no image
    of the bake is left, nor data in the store; without faults the same upload works (both upload paths)."""
    disk = Path(
        next(
            a
            for a in json.loads((baked["tmp"] / "output" / "bake-manifest.json").read_text())["artifacts"]
            if a["target"] == "disk"
        )["path"]
    )
    stored = glance.stored_files()
    calls: list[str] = []

    def count(verb: str, path: str) -> None:
        calls.append("%s %s" % (verb, path))

    bake_id = unique("count")
    glance_client = _openstack.make_glance(module_params(glance, disk, bake_id))
    glance_client.before = count
    result = _openstack.run(module_params(glance, disk, bake_id, import_method=method), glance=glance_client)
    assert result["built"] and result["upload"]["method"] == method
    assert len(calls) >= 6, calls
    glance_client.before = None  # the calls of the upload only
    # the image made without faults goes, so that the faulty runs do not find it
    _openstack.sweep_images(glance_client, _openstack.Selector(bake_id=bake_id), False)
    glance_client.delete(result["image"]["id"])

    for index, call in enumerate(calls):
        bake_id = unique("fault%d" % index)
        client = _openstack.make_glance(module_params(glance, disk, bake_id))
        seen, made = [0], []
        client.before = fault_at(index, seen, made)
        try:
            _openstack.run(module_params(glance, disk, bake_id, import_method=method), glance=client)
        except BakeryError as failure:
            assert "injected fault" in failure.msg, (call, failure.msg)
        else:
            # this run needed fewer calls than the first, so the fault was never reached: the image became active
            # after fewer polls (a busy Glance makes the first run poll more), and only the polls may differ
            assert seen[0] <= index and same_but_polls(made, calls), (index, made, calls)
            client.before = None
            for made in leftovers(glance, bake_id):
                client.delete(made.split()[0])
        # a fault in an undo is reported; the cleanup (what the role runs next) then removes what is left
        if leftovers(glance, bake_id):
            _openstack.run(dict(module_params(glance, disk, bake_id), action="cleanup"))
        assert leftovers(glance, bake_id) == [], call
    assert glance.stored_files() == stored


KILLED_UPLOAD = """
import json, sys, time
from ansible_collections.bakery.images.plugins.module_utils import _openstack
phase, ready = sys.argv[2], sys.argv[3]
def here():
    open(ready, "w").close()
def stop_here(*args, **kwargs):
    here()
    time.sleep(3600)
if phase == "created":  # the image record exists, nothing sent
    _openstack.Images.send = stop_here
elif phase == "uploading":  # slowed, so that the kill lands in the middle of the data
    chunks = _openstack._chunks
    def slow(*args):
        for count, block in enumerate(chunks(*args)):
            if count == 3:
                here()
            time.sleep(0.2)
            yield block
    _openstack._chunks = slow
elif phase == "sent":  # every byte sent (glance-direct: the import asked for), not seen active yet
    _openstack.Images.wait_active = stop_here
elif phase == "verified":  # active and its hash checked, not yet final
    _openstack.Images.finalize = stop_here
_openstack.run(json.loads(sys.argv[1]))
"""

# what Glance may show of an image at each phase of the bake (an import runs on in Glance after the kill)
KILL_STATES = {
    "created": {"queued"},
    "uploading": {"queued", "saving", "uploading"},
    "sent": {"saving", "uploading", "importing", "active"},
    "verified": {"active"},
}


@pytest.mark.parametrize(
    ("method", "phase"),
    [
        ("put", "created"),
        ("glance-direct", "uploading"),
        ("put", "uploading"),
        ("glance-direct", "sent"),
        ("put", "verified"),
    ],
)
def test_sigkill_at_each_phase_then_the_janitor_removes_the_image(glance, baked, tmp_path, method, phase):
    """A bake killed (SIGKILL, no undo runs) after creating its image, in the middle of the upload, once every
    byte is sent (an import then runs on in Glance), or once the image is active and verified but not yet final,
    leaves its image with bakery_temporary=true; playbooks/janitor.yml with the bake definition and bake id
    deletes it (and only it: the published image of the other bake stays)."""
    big = tmp_path / "big.raw"
    with open(big, "wb") as handle:
        handle.write(os.urandom(40 * 1024 * 1024))
    bake_id = unique("killed")
    params = module_params(glance, big, bake_id, disk_format="raw", import_method=method)
    script = tmp_path / "upload.py"
    script.write_text(textwrap.dedent(KILLED_UPLOAD))
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections" / "src"))
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(params), phase, str(ready)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ready.exists():
            assert proc.poll() is None, "the bake ended before the phase %s" % phase
            time.sleep(0.1)
        assert ready.exists(), "the bake did not reach the phase %s" % phase
        assert proc.poll() is None, "the bake ended before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (left,) = [i for i in glance.images() if i.get("bakery_bake_id") == bake_id]
    assert left["status"] in KILL_STATES[phase] and left["bakery_temporary"] == "true", left
    published = [i["id"] for i in glance.images() if "bakery_temporary" not in i]

    bake_file = tmp_path / "bake.yml"
    bake_file.write_text(yaml.safe_dump({"bake": baked["bake"]}))
    check = run_janitor(tmp_path, bake_file, bake_id, "--check")
    assert check.task_result("Find and remove the temporary resources")["counts"]["would_remove"] == 1
    assert leftovers(glance, bake_id) != []
    run = run_janitor(tmp_path, bake_file, bake_id)
    result = run.task_result("Find and remove the temporary resources")
    assert [
        (r["backend"], r["kind"], r["state"]) for r in result["resources"] if r["backend"] == "openstack"
    ] == [("openstack", "image", "removed")], result
    assert leftovers(glance, bake_id) == []
    assert [i["id"] for i in glance.images() if "bakery_temporary" not in i] == published
    assert SECRET_TOKEN not in run.stdout + run.stderr


def test_plan_refuses_what_glance_would(glance, tmp_path):
    """An openstack target without source (instance bakes are not supported), members without visibility shared,
    a property that is bakery's own: the plan refuses each before anything is made."""
    source = tmp_path / "nothing.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True)
    cases = [
        ({"source": None}, "bake.targets[1].openstack: missing required arguments: source"),
        ({"visibility": "private"}, "members share the image with projects: set visibility: shared"),
        ({"properties": {"bakery_fingerprint": "x"}}, "property 'bakery_fingerprint'"),
    ]
    for change, message in cases:
        bake = bake_definition(glance, tmp_path, source, "refused", **change)
        if change.get("source", "") is None:
            del bake["targets"][1]["openstack"]["source"]
        run = run_playbook(REPO / "playbooks" / "bake.yml", tmp_path, extra_vars={"bake": bake})
        assert run.rc != 0
        assert message in run.stdout, (change, run.stdout[-2000:])
    assert glance.images(name="refused") == []


def test_preflight_names_an_unreachable_image_service_before_anything_is_made(glance, tmp_path):
    """The plan play's preflight connects as the upload would: an image endpoint where nothing listens stops the
    bake before the qemu disk is made, naming the target and the option; with the real endpoint the check passes."""
    from conftest import PREFLIGHT_TASK
    from ports import free_port

    source = make_qcow2(tmp_path)
    bake = bake_definition(glance, tmp_path, source, unique("bakery-preflight"))
    bake["targets"][1]["openstack"]["image_endpoint"] = "http://127.0.0.1:%d" % free_port()
    run = run_playbook(REPO / "playbooks" / "bake.yml", tmp_path, extra_vars={"bake": bake})
    assert run.rc != 0
    (web,) = [t for t in run.task_result(PREFLIGHT_TASK)["targets"] if t["name"] == "web"]
    (problem,) = [c for c in web["preflight"] if not c["ok"]]
    assert problem["option"].startswith("openstack.image_endpoint=http://127.0.0.1:"), problem
    assert problem["msg"].startswith("cannot reach the image service"), problem
    assert not (tmp_path / "output").exists() or not list((tmp_path / "output").glob("*.qcow2"))
    assert SECRET_TOKEN not in run.stdout + run.stderr

    bake["targets"][1]["openstack"]["image_endpoint"] = glance.url
    check = run_playbook(
        REPO / "playbooks" / "bake.yml", tmp_path, extra_vars={"bake": bake}, args=["--check"]
    )
    assert check.rc == 0, check.explain()
    (web,) = [t for t in check.task_result(PREFLIGHT_TASK)["targets"] if t["name"] == "web"]
    assert [c["ok"] for c in web["preflight"]] == [True], web
    assert glance.images(name=bake["targets"][1]["openstack"]["name"]) == []


def find_play(params: dict, clouds: Path) -> str:
    task = {
        "name": "find",
        "bakery.images.openstack_image_bake": params,
        "environment": {"OS_CLIENT_CONFIG_FILE": str(clouds)},
    }
    return yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [task]}]) + "\n"


def test_a_cloud_of_clouds_yaml_is_used_as_openstack_cloud_uses_it(glance, baked, tmp_path):
    """cloud: names an entry of clouds.yaml (found through OS_CLIENT_CONFIG_FILE, as openstacksdk finds it): its
    auth_type and image endpoint override connect the module; the image of the bake is found by fingerprint there
    (nothing uploaded), and a cloud that clouds.yaml does not have fails with its name."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        yaml.safe_dump(
            {"clouds": {"bakery-test": {"auth_type": "none", "image_endpoint_override": glance.url}}}
        )
    )
    disk = next(
        a
        for a in json.loads((baked["tmp"] / "output" / "bake-manifest.json").read_text())["artifacts"]
        if a["target"] == "disk"
    )
    options = dict(baked["bake"]["targets"][1]["openstack"])
    headers = options.pop("headers")
    for key in ("auth_type", "image_endpoint", "source"):
        options.pop(key)
    params = dict(
        options, action="find", cloud="bakery-test", headers=headers, disk=disk["path"], target="web"
    )
    # the plan's inputs of the first bake (the module adds the options' digest and the disk's)
    made = baked["run"].task_result("Upload the source target's disk to Glance")["inputs"]
    params["inputs"] = {key: value for key, value in made.items() if key not in ("options", "disk")}
    run = run_playbook(find_play(params, clouds), tmp_path)
    assert run.rc == 0, run.explain()
    found = run.task_result("find")
    (image,) = glance.images(name=options["name"])
    assert found["found"] and found["image"]["id"] == image["id"] and not found["changed"]

    params["cloud"] = "no-such-cloud"
    run = run_playbook(find_play(params, clouds), tmp_path)
    assert run.rc != 0
    assert "cloud no-such-cloud" in run.task_result("find")["msg"]
    assert SECRET_TOKEN not in run.stdout + run.stderr
