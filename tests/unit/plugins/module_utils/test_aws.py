"""The AMI target's pure parts: names EC2 rejects, the plan's checks, tags, fingerprints, block iteration."""

from __future__ import annotations

import atexit
import os
import tempfile
import time

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _aws, _instance, _manifest, _plan
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BLOCK = _aws.BLOCK_SIZE
# the plan checks that a qemu target's base_image exists (targets build on this host)
BASE_IMAGE = tempfile.mkstemp(prefix="bakery-base-", suffix=".qcow2")[1]
atexit.register(os.unlink, BASE_IMAGE)


@pytest.mark.parametrize("name", ["web", "web-2026.11.27 (x86_64) [prod]", "a/b@c_d'e", "x" * 128])
def test_ami_names_ec2_accepts(name):
    assert _aws.check_ami_name(name) == name


@pytest.mark.parametrize("name", ["ab", "x" * 129, "web:1", "web*", "wéb", "", None])
def test_ami_names_ec2_rejects(name):
    with pytest.raises(BakeryError, match="AMI name .* is not valid"):
        _aws.check_ami_name(name)


def plan_ami(options):
    bake = {
        "name": "web",
        "targets": [
            {"name": "ami", "ami": options},
            {
                "name": "disk",
                "qemu": {"formats": ["raw"], "base_image": BASE_IMAGE, "provision": "vm"},
            },
        ],
    }
    return _plan.make_plan(
        bake,
        validate_target=lambda kind, opts, where: dict(opts),
        role_digest=lambda name: "d",
        cwd="/w",
        bake_id="b1",
        only="ami",
    )


def test_plan_rejects_a_bad_ami_name_and_a_missing_source_before_anything_is_made():
    with pytest.raises(BakeryError, match=r"bake.targets\[0\].ami: AMI name 'web:1' is not valid"):
        plan_ami({"region": "eu-west-1", "name": "web:1", "source_ami": "ami-1"})
    with pytest.raises(BakeryError, match="needs exactly one of source_ami, source_ami_filter"):
        plan_ami({"region": "eu-west-1", "name": "web"})
    with pytest.raises(BakeryError, match="it has source_ami, source_ami_ssm_parameter"):
        plan_ami({"region": "eu-west-1", "name": "web", "source_ami": "a", "source_ami_ssm_parameter": "/p"})


def test_plan_instance_bake_and_upload():
    instance = plan_ami({"region": "eu-west-1", "name": "web", "source_ami": "ami-1"})["targets"][0]
    assert instance["needs_builder"] and instance["rootfs"] is None and instance["source"] is None
    upload = plan_ami({"region": "eu-west-1", "name": "web", "source": "disk"})
    ami = [t for t in upload["targets"] if t["name"] == "ami"][0]
    assert not ami["needs_builder"] and ami["source"]["target"] == "disk"
    assert list(ami["inputs"]) == ["source_target"]
    assert {t["name"] for t in upload["targets"]} == {"ami", "disk"}  # the source is baked too


def test_tags_of_temporary_and_final_resources():
    params = {"bake_id": "b1", "target": "web/ami", "run_tags": {"ci": 7}, "tags": {"team": "web"}}
    assert _aws.temporary_tags(params) == {
        "ci": "7",
        "bakery-bake-id": "b1",
        "bakery-temporary": "true",
        "bakery-target": "web/ami",
    }
    final = _aws.final_tags(params, "f" * 64, {"source_ami": "ami-1", "role:" + "r" * 200: "d"})
    assert final["bakery-fingerprint"] == "f" * 64 and final["team"] == "web"
    assert "bakery-temporary" not in final and "ci" not in final
    assert final["bakery-input:source_ami"] == "ami-1"
    assert all(len(key) <= 128 and len(value) <= 256 for key, value in final.items())


def test_fingerprint_ignores_what_only_distributes_the_image():
    base = {"inputs": {"role:web": "1"}, "instance_type": "t3.micro", "root_volume_size": 8}
    same = _aws.compute_inputs(dict(base, name="other", regions=["us-east-1"], tags={"a": "b"}), {})
    assert same == _aws.compute_inputs(base, {})
    assert _aws.compute_inputs(dict(base, root_volume_size=9), {}) != same
    assert _aws.compute_inputs(base, {"source_ami": "ami-2"})["source_ami"] == "ami-2"


def test_regions_and_launch_permissions():
    params = {
        "region": "eu-west-1",
        "regions": ["eu-west-1", "us-east-1", {"region": "eu-north-1", "kms_key_id": "k"}],
    }
    assert _aws.copy_targets(params) == [
        {"region": "us-east-1", "kms_key_id": None},
        {"region": "eu-north-1", "kms_key_id": "k"},
    ]
    assert _aws.all_regions(params) == ["eu-west-1", "us-east-1", "eu-north-1"]
    with pytest.raises(BakeryError, match="every entry needs a region"):
        _aws.copy_targets({"region": "x", "regions": [{"kms_key_id": "k"}]})
    perms = _aws.wanted_permissions(
        {
            "launch_permissions": {
                "user_ids": ["1"],
                "group_names": ["all"],
                "organizational_unit_arns": ["ou"],
            }
        }
    )
    assert perms == [{"UserId": "1"}, {"Group": "all"}, {"OrganizationalUnitArn": "ou"}]


def test_data_blocks_skip_holes_without_reading(tmp_path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as handle:
        handle.truncate(4 * 1024**3)
        for offset in (0, 3 * BLOCK + 10, 1024**3, 4 * 1024**3 - 1):
            handle.seek(offset)
            handle.write(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        blocks = list(_aws.data_blocks(fd, os.path.getsize(path)))
    finally:
        os.close(fd)
    last = 4 * 1024**3 // BLOCK - 1
    # file systems report data in their own allocation units; every data block is in, holes are not
    assert {0, 3, 1024**3 // BLOCK, last} <= set(blocks)
    assert len(blocks) < 64 and blocks == sorted(set(blocks))


def test_qcow2_disks_are_refused(tmp_path):
    path = tmp_path / "disk.qcow2"
    path.write_bytes(b"QFI\xfb" + bytes(100))
    with pytest.raises(BakeryError, match="is a qcow2 image: the EBS upload needs a raw disk"):
        _aws.source_disk({"disk": str(path)})


def test_manifest_entry_of_an_ami():
    target = {"name": "ami", "bake_id": "b2", "options": {"name": "web", "region": "eu-west-1"}}
    image = {"image_id": "ami-1", "name": "web", "size_gib": 8, "tags": {"bakery-bake-id": "b1"}}
    built = _manifest.ami_artifact(
        {
            "built": True,
            "image": image,
            "images": {"eu-west-1": "ami-1", "us-east-1": "ami-2"},
            "fingerprint": "f",
        },
        target,
        100,
        130,
    )
    assert built["status"] == "built" and built["build_seconds"] == 30 and built["size"] == 8 * 1024**3
    assert built["images"] == {"eu-west-1": "ami-1", "us-east-1": "ami-2"} and built["bake_id"] == "b1"
    found = _manifest.ami_artifact({"found": True, "image": image, "fingerprint": "f"}, target, 100, 130)
    assert found["status"] == "unchanged" and found["images"] == {"eu-west-1": "ami-1"}
    would = _manifest.ami_artifact({"changed_inputs": ["source_ami"]}, target, None, 130)
    assert (
        would["status"] == "would build" and would["id"] is None and would["changed_inputs"] == ["source_ami"]
    )


def test_waits_tolerate_not_found_right_after_create_and_are_bounded():
    answers = iter(["missing", "missing", "pending", "available"])

    def probe():
        state = next(answers)
        if state == "missing":
            raise _aws.AwsError("gone", code="InvalidAMIID.NotFound")
        return {"State": state}

    image = _aws.wait_until("image", probe, lambda i: i["State"] == "available", delay=0.01)
    assert image == {"State": "available"}
    with pytest.raises(BakeryError, match="timed out after 0 s waiting for image"):
        _aws.wait_until("image", lambda: {"State": "pending"}, lambda i: False, timeout=0.05, delay=0.01)
    with pytest.raises(BakeryError, match="image: the image is failed"):
        _aws.wait_until(
            "image",
            lambda: {"State": "failed"},
            lambda i: False,
            failed=lambda i: "the image is %s" % i["State"],
            delay=0.01,
        )

    def denied():
        raise _aws.AwsError("denied", code="AuthFailure")

    with pytest.raises(_aws.AwsError, match="denied"):  # other errors are not waited out
        _aws.wait_until("image", denied, bool)


def test_ssh_wait_needs_the_banner():
    import socket
    import threading

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer():
            conn = server.accept()[0]
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        _instance.wait_ssh("127.0.0.1", port, time.monotonic() + 10)
        thread.join()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]
    with pytest.raises(
        BakeryError, match="the build instance did not answer SSH on 127.0.0.1:%d in time" % free
    ):
        _instance.wait_ssh("127.0.0.1", free, time.monotonic() + 1)


def no_credentials(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _aws._SESSIONS.clear()
    _aws._CLIENTS.clear()


def test_a_target_whose_calls_never_worked_created_nothing_and_its_cleanup_says_so(monkeypatch, tmp_path):
    no_credentials(monkeypatch, tmp_path)
    params = {
        "region": "mars-north-9",
        "endpoint_url": "http://127.0.0.1:9",
        "bake_id": "b1",
        "target": "web/ami",
        "name": "web",
        "source_ami": "ami-12345678",
        "key_file": str(tmp_path / "b1-ami.key"),
    }
    with pytest.raises(BakeryError) as failed:
        _aws.run_action(dict(params, action="launch"), False)
    assert failed.value.details["created"] is False
    assert "credentials" in failed.value.msg.lower()
    # told that nothing was created, a cleanup that cannot look says so and succeeds
    result = _aws.run_action(dict(params, action="cleanup", created=False), False)
    assert result["changed"] is False and result["created"] is False
    assert result["msg"].startswith(
        "nothing to clean up: target web/ami of bake b1 created nothing (its calls failed before any could make "
        "a resource); the cleanup could not look either: mars-north-9: "
    )
    # not told (or told something was made), it fails: it could not look, and never says it left anything behind
    with pytest.raises(BakeryError) as failed:
        _aws.run_action(dict(params, action="cleanup"), False)
    assert failed.value.msg.startswith(
        "cleanup of bake b1 could not look for its temporary resources (nothing was removed there; run it again "
        "once this works, or playbooks/janitor.yml): mars-north-9: "
    )
    assert "left resources behind" not in failed.value.msg


def test_calls_that_make_resources_are_noted_before_they_are_sent(monkeypatch, tmp_path):
    no_credentials(monkeypatch, tmp_path)
    aws = _aws.Aws({"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:9", "max_attempts": 1})
    with pytest.raises(BakeryError):
        aws.ec2("describe_images", Owners=["self"])
    assert aws.created is False
    with pytest.raises(BakeryError):
        aws.ec2("create_key_pair", KeyName="k")
    assert aws.created is True


def test_cleanup_messages_keep_failed_removals_and_places_not_looked_at_apart():
    from ansible_collections.bakery.images.plugins.module_utils import _temporary

    assert _temporary.cleanup_problems("b1", [], [], True) is None
    assert _temporary.cleanup_problems("b1", [], ["eu-west-1: denied"], False) is None
    assert _temporary.cleanup_problems("b1", ["instance i-1: busy"], ["us-east-1: denied"], False) == (
        "cleanup of bake b1 left resources behind (run it again to finish): instance i-1: busy; and could not "
        "look in us-east-1: denied"
    )
    assert _temporary.cleanup_problems("b1", [], ["eu-west-1: denied"], True).startswith(
        "cleanup of bake b1 could not look for its temporary resources"
    )
