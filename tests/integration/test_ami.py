"""The ami target against moto_server on 127.0.0.1: uploads, instance bakes, publishing, faults, secrets.

moto does not implement import_snapshot/import_image; it does the EBS direct APIs, which is what the upload
path uses. moto's instances do not boot, so nothing can SSH into them: the instance-bake test provisions a
stand-in builder (a local Docker container from the bake's base image) between the role's launch and
capture phases, and says so below.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aws import COPY_REGIONS, CREDENTIALS, REGION, FaultProxy, MotoServer, counts, leftovers
from conftest import REPO, docker_client, run_playbook
from crash import Run, run_janitor
from provenance_checks import check_statement
from sbom_checks import DPKG_FORMAT, check_documents, dpkg_query, installed
from stand_ins import Cloud, checks_on_an_instance, qcow2_copy

from ansible_collections.bakery.images.plugins.action.bake_plan import validate_target
from ansible_collections.bakery.images.plugins.module_utils import _aws, _hygiene, _manifest, _verify
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BLOCK = 512 * 1024
ALL_REGIONS = [REGION, *COPY_REGIONS]
ACCOUNT = "111122223333"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": REGION,
}


def unique(prefix: str) -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def make_raw_disk(path: Path, size_mib: int = 96, dpkg: bool = False) -> Path:
    """A raw disk that is mostly holes: an ext4 file system made from a small tree, then more data far in; with
    *dpkg*, the tree has a package database (the first 80 packages of this host's dpkg status file: its SBOMs
    are made and checked several times, and a thousand packages would cost a minute)."""
    tree = path.parent / ("%s-tree" % path.name)
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("baked by bakery\n")
    if dpkg:
        (tree / "var" / "lib" / "dpkg").mkdir(parents=True)
        paragraphs = Path("/var/lib/dpkg/status").read_text().split("\n\n")
        (tree / "var" / "lib" / "dpkg" / "status").write_text("\n\n".join(paragraphs[:80]).strip() + "\n")
    (tree / "data.bin").write_bytes(os.urandom(700 * 1024))
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "%dM" % size_mib], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", str(tree), str(path), "64M"],
        check=True,
        env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"),
    )
    with open(path, "r+b") as handle:  # data past the file system, and an explicit all-zero block
        handle.seek(80 * 1024 * 1024 + 12345)
        handle.write(os.urandom(4096))
        handle.seek(90 * 1024 * 1024)
        handle.write(bytes(BLOCK))
    return path


def nonzero_blocks(path: Path) -> dict[int, bytes]:
    out = {}
    with open(path, "rb") as handle:
        index = 0
        while True:
            data = handle.read(BLOCK)
            if not data:
                return out
            data = data.ljust(BLOCK, b"\0")
            if data.count(0) != len(data):
                out[index] = data
            index += 1


def ami_target(moto_url: str, name: str, bake_id: str, output_dir: Path, **options) -> dict:
    """A bakery_target as the plan makes it, options validated against the role's argument spec."""
    base = {"region": REGION, "endpoint_url": moto_url, "name": name}
    base.update(options)
    return {
        "name": "ami",
        "type": "ami",
        "host": "bakery-ami",
        "builder": "bakery-ami-builder",
        "bake_id": bake_id,
        "bake_name": "aws-test",
        "output_dir": str(output_dir),
        "force": False,
        "inputs": {"source_target": hashlib.sha256(name.encode()).hexdigest()},
        "rootfs": None,
        "needs_builder": "source" not in options,
        "provisioners": [],
        "source": {"target": "disk", "type": "qemu", "host": "bakery-disk"} if "source" in options else None,
        "options": validate_target("ami", base, "test"),
    }


# ---------------------------------------------------------------- upload through the role


UPLOAD_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Make the raw disk with qemu_image (what the qemu target's capture does)
      bakery.images.qemu_image:
        image: "{{ source_image }}"
        disk_size: 96M
        outputs: [{path: "{{ raw_disk }}"}]
      register: qemu_made
    - name: Record the source target's artifact
      ansible.builtin.set_fact:
        bakery_source_artifact: "{{ qemu_made | bakery.images.qemu_artifact(source_target) }}"
    - name: Write the source target's SBOMs (what role bake does after the qemu target's capture)
      bakery.images.sbom:
        root: "{{ source_tree }}"
        spdx_path: "{{ source_sbom_dir }}/disk.spdx.json"
        cyclonedx_path: "{{ source_sbom_dir }}/disk.cdx.json"
        name: disk
        type: qemu
        fingerprint: "{{ bakery_source_artifact.fingerprint }}"
        bake_id: "{{ source_target.bake_id }}"
      register: source_sbom
    - name: Record the source target's SBOMs
      ansible.builtin.set_fact:
        bakery_source_artifact: "{{ bakery_source_artifact | combine({'sbom': source_sbom.documents}) }}"
    - name: upload
      block:
        - name: Post-process with the ami role
          ansible.builtin.include_role:
            name: bakery.images.ami
            tasks_from: postprocess
        - name: Write the image's SBOMs (role bake, after post-processing)
          ansible.builtin.include_role:
            name: bakery.images.bake
            tasks_from: sbom
        - name: Write the image's provenance (role bake's provenance play)
          ansible.builtin.include_role:
            name: bakery.images.bake
            tasks_from: provenance
      always:
        - name: Clean up with the ami role
          ansible.builtin.include_role:
            name: bakery.images.ami
            tasks_from: cleanup
    - name: artifact
      ansible.builtin.debug:
        var: bakery_artifact
"""


def test_upload_publishes_once_and_keeps_secrets(moto, tmp_path):
    """A raw disk becomes an AMI in three regions, shared, tagged; again: nothing new; secrets never shown.

    The role's post-process phase is driven as the bake's post-process play drives it: the source target's
    artifact is the raw disk qemu_image made from a qcow2 image holding an ext4 file system.
    """
    made = make_raw_disk(tmp_path / "made.raw", dpkg=True)
    source_image = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(made), str(source_image)], check=True)
    made.unlink()
    disk = tmp_path / "disk.raw"
    name = unique("bakery-upload")
    bake_id = unique("bake")
    target = ami_target(
        moto.url,
        name,
        bake_id,
        tmp_path / "output",
        source="disk",
        regions=COPY_REGIONS[:1] + [{"region": COPY_REGIONS[1], "kms_key_id": "alias/bakery"}],
        launch_permissions={"user_ids": [ACCOUNT], "group_names": ["all"]},
        tags={"team": "images"},
        run_tags={"ci-run": "42"},
        boot_mode="uefi",
        upload_workers=4,
    )
    extra = {
        "bakery_target": target,
        "source_target": {"name": "disk", "bake_id": bake_id, "options": {}},
        "source_image": str(source_image),
        "raw_disk": str(disk),
        "source_tree": str(tmp_path / "made.raw-tree"),
        "source_sbom_dir": str(tmp_path / "source-sbom"),
    }
    local = [
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        "ansible_python_interpreter={{ ansible_playbook_python }}",
    ]

    first = run_playbook(UPLOAD_PLAY, tmp_path, extra_vars=extra, args=local, env=AWS_ENV)
    assert first.rc == 0, first.explain()
    assert (
        first.task_result("Record the source target's artifact")["ansible_facts"]["bakery_source_artifact"][
            "outputs"
        ][0]["format"]
        == "raw"
    )
    uploaded = first.task_result("Upload the disk as an AMI")
    assert uploaded["changed"] and uploaded["built"]
    artifact = first.task_result("artifact")["bakery_artifact"]
    assert artifact["status"] == "built" and artifact["id"] == uploaded["image"]["image_id"]
    assert sorted(artifact["images"]) == sorted(ALL_REGIONS)

    # the snapshot holds exactly the disk's non-zero blocks
    expected = nonzero_blocks(disk)
    snap = uploaded["snapshot"]
    assert snap["blocks_sent"] == len(expected) < snap["blocks_total"]
    ebs = moto.client("ebs")
    listed = ebs.list_snapshot_blocks(SnapshotId=snap["snapshot_id"])["Blocks"]
    assert sorted(b["BlockIndex"] for b in listed) == sorted(expected)
    for block in listed:
        got = ebs.get_snapshot_block(
            SnapshotId=snap["snapshot_id"], BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"]
        )
        assert got["BlockData"].read() == expected[block["BlockIndex"]], block["BlockIndex"]

    # every region has the image, final (fingerprint, user tags, no temporary tag), with its permissions
    fp = uploaded["fingerprint"]
    for region in ALL_REGIONS:
        ec2 = moto.client("ec2", region)
        images = ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "tag:bakery-fingerprint", "Values": [fp]}]
        )
        assert [i["ImageId"] for i in images["Images"]] == [artifact["images"][region]], region
        image = images["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        assert tags["team"] == "images" and tags["bakery-bake-id"] == bake_id
        assert "bakery-temporary" not in tags and "ci-run" not in tags
        assert image["Name"] == name and image["State"] == "available"
        perms = ec2.describe_image_attribute(ImageId=image["ImageId"], Attribute="launchPermission")
        assert {"UserId": ACCOUNT} in perms["LaunchPermissions"]
        assert {"Group": "all"} in perms["LaunchPermissions"]
    home = moto.client("ec2").describe_images(ImageIds=[artifact["id"]])["Images"][0]
    assert home["BootMode"] == "uefi"
    snap_tags = moto.client("ec2").describe_snapshots(SnapshotIds=[snap["snapshot_id"]])["Snapshots"][0][
        "Tags"
    ]
    assert {"Key": "bakery-fingerprint", "Value": fp} in snap_tags
    assert leftovers(moto, bake_id, ALL_REGIONS) == {}

    # the image's SBOMs are the source disk's packages (its CycloneDX document, read once by the source target),
    # and its statement names the image of each region with the uploaded disk's sha256
    disk_sha256 = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert artifact["disk_sha256"] == disk_sha256
    status = subprocess.run(
        ["debugfs", "-R", "cat /var/lib/dpkg/status", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    packages = dpkg_query(status, tmp_path)
    assert len(packages) > 50
    check_documents(artifact, packages)
    statement = check_statement(artifact)
    assert [(s["name"], s["digest"]) for s in statement["subject"]] == [
        ("%s/%s" % (region, artifact["images"][region]), {"sha256": disk_sha256})
        for region in sorted(ALL_REGIONS)
    ]
    # the manifest's SHA256SUMS lists the documents, and verify_artifacts finds them as the manifest says
    output = Path(target["output_dir"])
    written = _manifest.manifest(
        {"name": "aws-test"}, [{"target": "ami", "type": "ami", "artifact": artifact}]
    )
    (output / "bake-manifest.json").write_text(json.dumps(written))
    (output / "SHA256SUMS").write_text(_manifest.sha256sums(written, str(output)))
    assert len((output / "SHA256SUMS").read_text().splitlines()) == 3
    assert _verify.check(str(output / "bake-manifest.json"), None, None)["mismatches"] == []
    stamps = {p: p.stat().st_mtime_ns for p in output.glob("*.json")}

    # second run, at -vvvv with credentials given as role variables: nothing is created, nothing leaks
    before = counts(moto, ALL_REGIONS)
    secret, token = "SeCrEt-" + uuid.uuid4().hex, "ToKeN-" + uuid.uuid4().hex
    keys = {"ami_access_key": "AKIABAKERYFAKE000001", "ami_secret_key": secret, "ami_session_token": token}
    again = run_playbook(
        UPLOAD_PLAY, tmp_path, extra_vars=dict(extra, **keys), args=local + ["-vvvv"], env=AWS_ENV
    )
    assert again.rc == 0, again.explain()
    assert again.task_result("Upload the disk as an AMI")["changed"] is False
    assert again.task_result("artifact")["bakery_artifact"]["status"] == "unchanged"
    assert counts(moto, ALL_REGIONS) == before
    # nor is any document rewritten
    assert again.task_result("Write the artifact's SBOMs")["changed"] is False
    assert again.task_result("Write the artifact's provenance statement")["changed"] is False
    assert {p: p.stat().st_mtime_ns for p in output.glob("*.json")} == stamps
    output = again.stdout + again.stderr
    assert "ami_bake" in output and len(output) > 10000  # it really was verbose
    assert secret not in output and token not in output


# ---------------------------------------------------------------- instance bake through the role


# a key of the image's own (an operator's) that generalizing the builder keeps
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnOperatorsKeyThatStaysInTheImage operator@example"
INSTANCE_PLAY = """
- name: Launch the builder instance (role bakery.images.ami, phase launch)
  hosts: localhost
  gather_facts: false
  tasks:
    - name: launch
      ansible.builtin.include_role:
        name: bakery.images.ami
        tasks_from: launch
    - name: Start the stand-in builder
      community.docker.docker_container:
        name: "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}"
        image: "{{ stand_in_image }}"
        command: [sleep, infinity]
        labels: {bakery-temporary: "true", bakery-bake-id: "{{ bakery_target.bake_id }}"}
        state: started
      register: stand_in
      when: ami_launch.instance is defined
    - name: Add the stand-in builder under the builder's name (as role bake adds the instance)
      ansible.builtin.add_host:
        name: "{{ bakery_target.builder }}"
        groups: builders
        ansible_connection: community.docker.docker_api
        ansible_host: "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}"
        ansible_user: root
        ansible_python_interpreter: /usr/bin/python3
        builder_key: "{{ ami_launch.public_key }}"
      when: ami_launch.instance is defined
      changed_when: false

# moto's instance cannot be reached over SSH: this play provisions a local container instead
- name: Provision the stand-in builder
  hosts: builders
  gather_facts: false
  vars:
    other_key: "@OTHER_KEY@"
  tasks:
    - name: provision
      ansible.builtin.copy:
        dest: /etc/bakery-provisioned
        content: "provisioned by the test\\n"
    # what a booted cloud instance has: its identity, host keys, and the builder's key (cloud-init put it there)
    - name: Give the builder an identity, a host key and the builder's key
      ansible.builtin.shell: |
        set -e
        echo 0123456789abcdef0123456789abcdef > /etc/machine-id
        mkdir -p /etc/ssh /root/.ssh
        echo 'not a real key' > /etc/ssh/ssh_host_ed25519_key
        printf '%s\\n%s\\n' "$BUILDER_KEY" "$OTHER_KEY" > /root/.ssh/authorized_keys
      environment:
        BUILDER_KEY: "{{ builder_key }}"
        OTHER_KEY: "{{ other_key }}"
      changed_when: true
    - name: Leave a shell history
      ansible.builtin.copy:
        dest: /root/.bash_history
        content: "export TOKEN=secret\\n"
      when: leave_history | default(false)
    - name: hold
      ansible.builtin.command: sleep {{ hold_seconds | default(0) }}
      changed_when: false

- name: Capture the instance (role bakery.images.ami, phase capture) and clean up
  hosts: localhost
  gather_facts: false
  tasks:
    - name: capture and clean up
      block:
        - name: capture
          ansible.builtin.include_role:
            name: bakery.images.ami
            tasks_from: capture
        - name: Write the image's SBOMs (role bake, after capture)
          ansible.builtin.include_role:
            name: bakery.images.bake
            tasks_from: sbom
        - name: Write the image's provenance (role bake's provenance play)
          ansible.builtin.include_role:
            name: bakery.images.bake
            tasks_from: provenance
      always:
        - name: cleanup
          ansible.builtin.include_role:
            name: bakery.images.ami
            tasks_from: cleanup
        - name: Look at the stand-in builder after capture
          ansible.builtin.shell: |
            echo "host keys: $(ls -A /etc/ssh)"
            echo "machine-id: $(cat /etc/machine-id)"
            echo "keys: $(cat /root/.ssh/authorized_keys)"
          delegate_to: "{{ bakery_target.builder }}"
          changed_when: false
          when: stand_in is not skipped
        - name: List the packages of the stand-in builder
          ansible.builtin.command:
            argv: [dpkg-query, -W, -f, "@DPKG_FORMAT@"]
          delegate_to: "{{ bakery_target.builder }}"
          changed_when: false
          when: stand_in is not skipped
        - name: Remove the stand-in builder
          community.docker.docker_container:
            name: "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}"
            state: absent
          when: stand_in is not skipped
    - name: artifact
      ansible.builtin.debug:
        var: bakery_artifact
""".replace("@OTHER_KEY@", OTHER_KEY).replace("@DPKG_FORMAT@", DPKG_FORMAT.replace("\\", "\\\\"))


def test_instance_bake_then_nothing_to_do(moto, bake_base, docker_leftovers, tmp_path):
    """launch → provision → capture → cleanup; the second run launches nothing and changes nothing."""
    name = unique("bakery-instance")
    bake_id = unique("bake")
    target = ami_target(
        moto.url,
        name,
        bake_id,
        tmp_path / "output",
        source_ami_filter={"owners": ["amazon"], "name": "amzn2-ami-hvm-*-x86_64-gp2", "most_recent": True},
        ssh_timeout=0,  # moto's instances never answer SSH
        ssh_cidrs=["192.0.2.0/24"],
        regions=[COPY_REGIONS[0]],
        launch_permissions={
            "organization_arns": ["arn:aws:organizations::%s:organization/o-bakery" % ACCOUNT]
        },
        tags={"role": "web"},
        root_volume_size=9,
        root_volume_encrypted=True,
        spot=False,
    )
    extra = {"bakery_target": target, "stand_in_image": bake_base["image"]}
    regions = [REGION, COPY_REGIONS[0]]
    first = run_playbook(INSTANCE_PLAY, tmp_path, extra_vars=extra, env=AWS_ENV)
    assert first.rc == 0, first.explain()
    launched = first.task_result("Find the image by fingerprint, or launch the builder")
    assert launched["changed"] and launched["builder"]["connection"] == "ssh"
    assert first.task_result("provision")["changed"]
    captured = first.task_result("Create the image from the builder")
    artifact = first.task_result("artifact")["bakery_artifact"]
    assert artifact["status"] == "built" and sorted(artifact["images"]) == sorted(regions)
    assert not os.path.exists(launched["builder"]["private_key"]), "private key left behind"

    # before capture, the builder was generalized: the builder's key (the public half of the key pair EC2 made),
    # the host key and the machine id went, the operator's key stayed; then every hygiene check passed
    assert launched["public_key"].startswith("ssh-ed25519 AAAA")
    assert launched["public_key"].endswith(" " + launched["key_pair"])
    generalized = first.task_result(HYGIENE_TASK)
    assert generalized["changed"] and generalized["generalized"] == {
        "builder_key": ["/root/.ssh/authorized_keys"],
        "ssh_host_keys": ["/etc/ssh/ssh_host_ed25519_key"],
        "machine_id": ["/etc/machine-id"],
        "cloud_init": False,
    }
    after = first.task_result("Look at the stand-in builder after capture")["stdout_lines"]
    assert after == ["host keys: ", "machine-id: ", "keys: " + OTHER_KEY]
    assert [check["status"] for check in artifact["hygiene"]] == ["passed"] * 9
    assert [check["name"] for check in artifact["hygiene"]] == list(_hygiene.CHECKS)
    # the manifest entry holds the results
    plan = {"name": "aws-test", "bake_id": bake_id}
    manifest = _manifest.manifest(plan, [{"target": "ami", "type": "ami", "artifact": artifact}])
    assert manifest["artifacts"][0]["hygiene"] == artifact["hygiene"]

    ec2 = moto.client("ec2")
    instance = ec2.describe_instances(InstanceIds=[launched["instance"]["instance_id"]])["Reservations"][0][
        "Instances"
    ][0]
    assert instance["State"]["Name"] == "terminated"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["bakery-bake-id"] == bake_id and tags["bakery-temporary"] == "true"
    for region in regions:
        image = moto.client("ec2", region).describe_images(ImageIds=[artifact["images"][region]])["Images"][0]
        image_tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert image_tags["bakery-fingerprint"] == captured["fingerprint"] and image_tags["role"] == "web"
        assert "bakery-temporary" not in image_tags
        perms = moto.client("ec2", region).describe_image_attribute(
            ImageId=image["ImageId"], Attribute="launchPermission"
        )["LaunchPermissions"]
        assert perms == [{"OrganizationArn": target["options"]["launch_permissions"]["organization_arns"][0]}]
    assert leftovers(moto, bake_id, regions) == {}
    # the SBOMs list exactly the packages of the builder after provisioning (read there before the image was
    # made); the statement names the image of each region, with the fingerprint as digest (no disk file)
    packages = installed(first.task_result("List the packages of the stand-in builder")["stdout"])
    assert len(packages) > 50
    check_documents(artifact, packages)
    statement = check_statement(artifact)
    assert [(s["name"], s["digest"]) for s in statement["subject"]] == [
        ("%s/%s" % (region, artifact["images"][region]), {"bakery.fingerprint": artifact["fingerprint"]})
        for region in sorted(regions)
    ]
    stamps = {p: p.stat().st_mtime_ns for p in Path(target["output_dir"]).glob("*.json")}
    assert len(stamps) == 3

    before = counts(moto, regions)
    again = run_playbook(
        INSTANCE_PLAY,
        tmp_path,
        extra_vars=dict(extra, bakery_target=dict(target, bake_id=unique("bake"))),
        env=AWS_ENV,
    )
    assert again.rc == 0, again.explain()
    assert again.task_result("Find the image by fingerprint, or launch the builder")["found"]
    assert again.task_result("Publish the image found by fingerprint")["changed"] is False
    found = again.task_result("artifact")["bakery_artifact"]
    assert found["status"] == "unchanged"
    assert again.stats["localhost"]["changed"] == 0
    assert counts(moto, regions) == before
    # the documents of the bake that made the image are kept as they are
    assert found["sbom"] == artifact["sbom"] and found["provenance"] == artifact["provenance"]
    assert {p: p.stat().st_mtime_ns for p in Path(target["output_dir"]).glob("*.json")} == stamps
    # nothing was checked this time: the manifest keeps the results of the bake that made the image
    assert "hygiene" not in found
    kept = _manifest.manifest(plan, [{"target": "ami", "type": "ami", "artifact": found}], manifest)
    assert kept["artifacts"][0]["hygiene"] == artifact["hygiene"]


HYGIENE_TASK = (
    "Remove the builder's key and the machine's identity from the builder, then check the image's hygiene"
)


def test_an_instance_that_fails_a_hygiene_check_makes_no_image(moto, bake_base, docker_leftovers, tmp_path):
    """A provisioner leaves a shell history on the builder: the target fails naming the file before an image or
    snapshot exists, and the cleanup terminates the instance."""
    name = unique("bakery-unclean")
    bake_id = unique("bake")
    target = ami_target(
        moto.url,
        name,
        bake_id,
        tmp_path / "output",
        source_ami_filter={"owners": ["amazon"], "name": "amzn2-ami-hvm-*-x86_64-gp2", "most_recent": True},
        ssh_timeout=0,  # moto's instances never answer SSH
    )
    extra = {
        "bakery_target": target,
        "stand_in_image": bake_base["image"],
        "leave_history": True,
    }
    images_before = {i["ImageId"] for i in moto.client("ec2").describe_images(Owners=["self"])["Images"]}
    snapshots_before = {
        s["SnapshotId"] for s in moto.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }
    run = run_playbook(INSTANCE_PLAY, tmp_path, extra_vars=extra, env=AWS_ENV)
    assert run.rc != 0, run.explain()
    failed = run.task_result(HYGIENE_TASK)
    assert failed["failed"] and not failed["passed"]
    assert failed["msg"].startswith("hygiene: 1 check failed for / (shell_history)"), failed["msg"]
    assert "shell_history: /root/.bash_history" in failed["msg"]
    # it was generalized before the checks ran; only the history is left to the user
    assert failed["generalized"]["builder_key"] == ["/root/.ssh/authorized_keys"]
    statuses = {check["name"]: check["status"] for check in failed["hygiene"]}
    assert statuses == dict({n: "passed" for n in _hygiene.CHECKS}, shell_history="failed")
    assert run.task_results("Create the image from the builder") == [], "the capture ran"

    ec2 = moto.client("ec2")
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == images_before
    assert {
        s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    } == snapshots_before
    launched = run.task_result("Find the image by fingerprint, or launch the builder")
    instance = ec2.describe_instances(InstanceIds=[launched["instance"]["instance_id"]])["Reservations"][0][
        "Instances"
    ][0]
    assert instance["State"]["Name"] == "terminated"
    assert leftovers(moto, bake_id, [REGION]) == {}


# ---------------------------------------------------------------- fault injection, in process


def flow_params(proxy: FaultProxy, tmp_path: Path, kind: str) -> dict:
    bake_id = unique("fault")
    params = {
        "region": REGION,
        "endpoint_url": proxy.url,
        "access_key": "testing",
        "secret_key": "testing",
        "max_attempts": 2,
        "wait_timeout": 60,
        "bake_id": bake_id,
        "target": "faults/%s" % kind,
        "name": unique("bakery-fault"),
        "inputs": {"run": bake_id},
        "tags": {"team": "faults"},
        "run_tags": {},
        "regions": [COPY_REGIONS[0]],
        "launch_permissions": {"user_ids": [ACCOUNT]},
        "key_file": str(tmp_path / ("%s.key" % bake_id)),
        "ssh_cidrs": ["192.0.2.0/24"],
        "ssh_timeout": 0,
        "upload_workers": 3,
    }
    if kind == "instance":
        params["source_ami_filter"] = {
            "owners": ["amazon"],
            "name": "amzn2-ami-hvm-*-x86_64-gp2",
            "most_recent": True,
        }
    else:
        params["disk"] = str(tmp_path / "fault.raw")
    return params


def run_flow(params: dict) -> dict:
    """What the role does, in process: launch and capture (or upload); the caller cleans up."""
    if "disk" in params:
        return _aws.run_action(dict(params, action="upload"), False)
    else:
        launched = _aws.run_action(dict(params, action="launch"), False)
        assert os.stat(launched["builder"]["private_key"]).st_mode & 0o777 == 0o600
        _aws.run_action(
            dict(params, action="capture", instance_id=launched["instance"]["instance_id"]), False
        )


def cleanup(params: dict) -> str | None:
    try:
        _aws.run_action(dict(params, action="cleanup"), False)
    except BakeryError as exc:
        return exc.msg
    return None


def fault_plan(calls: list[str], kind: str) -> list[tuple[str, int]]:
    """Which requests to fail: every operation once, every mutating one each time it is made.

    The upload flow shares publish and cleanup with the instance flow; its own calls are those before the
    first copy (snapshot, blocks, completion, registration).
    """
    if kind == "upload":
        calls = calls[: calls.index("CopyImage")]
    faults, seen = [], {}
    for op in calls:
        seen[op] = seen.get(op, 0) + 1
        if seen[op] == 1 or not op.startswith(("Describe", "List", "Get")):
            faults.append((op, seen[op]))
    return faults


def fail_once(moto: MotoServer, tmp_path: Path, kind: str, op: str, nth: int) -> str | None:
    """Run the flow with request *nth* of *op* failing; None when everything was cleaned up, else why not."""
    proxy = FaultProxy(moto.url)
    try:
        params = flow_params(proxy, tmp_path, kind)
        proxy.arm(op, nth)
        errors = []
        try:
            run_flow(params)
        except BakeryError as exc:
            errors.append(exc.msg)
        first = cleanup(params)
        if first:  # the failure hit the cleanup itself: a later run finishes it
            errors.append(first)
            if "run it again" not in first:
                return "cleanup failed without saying it can be finished: %s" % first
            again = cleanup(params)
            if again:
                return "a second cleanup did not finish: %s" % again
        if proxy.failed != [op]:
            return "the fault was not hit (calls: %s)" % proxy.calls
        if not any("injected failure of %s" % op in e for e in errors):
            return "the injected error was not reported: %s" % errors
        left = leftovers(moto, params["bake_id"], ALL_REGIONS)
        if left:
            return "left behind: %s (errors: %s)" % (left, errors)
        if os.path.exists(params["key_file"]):
            return "private key file left behind"
        return None
    finally:
        proxy.stop()


def test_each_failing_call_leaves_nothing(moto, tmp_path):
    """Every AWS call of both flows fails in turn (instance: launch, capture, publish, cleanup; upload:
    snapshot, blocks, completion, registration). The flow fails with the injected error, its own undo and the
    cleanup (run again when the failure hit the cleanup, as a later run would) leave no instance running and
    nothing tagged temporary. Cases run four at a time, each through its own fault proxy.
    """
    with open(tmp_path / "fault.raw", "wb") as handle:  # three data blocks, one written zero block, holes
        handle.truncate(8 * BLOCK)
        for index in (0, 3, 7):
            handle.seek(index * BLOCK)
            handle.write(os.urandom(1000))
        handle.seek(5 * BLOCK)
        handle.write(bytes(BLOCK))
    cases = []
    for kind in ("instance", "upload"):
        proxy = FaultProxy(moto.url)
        try:
            params = flow_params(proxy, tmp_path, kind)
            made = run_flow(params)
            if kind == "upload":  # the written zero block is read and skipped, the holes are not even read
                assert (made["snapshot"]["blocks_sent"], made["snapshot"]["blocks_zero"]) == (3, 1)
            assert cleanup(params) is None
            assert leftovers(moto, params["bake_id"], ALL_REGIONS) == {}
            cases += [(kind, op, nth) for op, nth in fault_plan(list(proxy.calls), kind)]
        finally:
            proxy.stop()
    ops = {case[1] for case in cases}
    assert {"RunInstances", "CreateImage", "CopyImage", "TerminateInstances", "DeleteSecurityGroup"} <= ops
    assert {"StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot", "RegisterImage"} <= ops
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda case: (case, fail_once(moto, tmp_path, *case)), cases))
    problems = ["%s %s #%d: %s" % (*case, why) for case, why in outcomes if why]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- sources and names


def test_source_ami_choices_fail_clearly(moto):
    base = {"region": REGION, "endpoint_url": moto.url, **{"access_key": "testing", "secret_key": "testing"}}
    aws = _aws.Aws(base)
    ambiguous = {"source_ami_filter": {"owners": ["amazon"], "name": "amzn2-ami-hvm-*", "most_recent": False}}
    with pytest.raises(BakeryError, match="source AMIs match the filter .* set most_recent"):
        _aws.resolve_source_ami(aws, ambiguous)
    with pytest.raises(BakeryError, match="no source AMI matches the filter"):
        _aws.resolve_source_ami(aws, {"source_ami_filter": {"owners": ["self"], "name": "nothing-*"}})
    with pytest.raises(BakeryError, match="source AMI ami-0123456789abcdef0 does not exist"):
        _aws.resolve_source_ami(aws, {"source_ami": "ami-0123456789abcdef0"})
    newest = _aws.resolve_source_ami(
        aws, dict(ambiguous, source_ami_filter=dict(ambiguous["source_ami_filter"], most_recent=True))
    )
    moto.client("ssm").put_parameter(
        Name="/bakery/test/ami", Value=newest["ImageId"], Type="String", Overwrite=True
    )
    by_ssm = _aws.resolve_source_ami(aws, {"source_ami_ssm_parameter": "/bakery/test/ami"})
    assert by_ssm["ImageId"] == newest["ImageId"]
    with pytest.raises(BakeryError, match="ssm GetParameter in us-east-1 failed: ParameterNotFound"):
        _aws.resolve_source_ami(aws, {"source_ami_ssm_parameter": "/bakery/missing"})


def test_bake_check_mode_creates_nothing(moto, tmp_path):
    """playbooks/bake.yml --check with an ami target: the plan validates it, launch resolves the source AMI
    and looks for the fingerprint, the report says what would be made; nothing exists afterwards."""
    bake = {
        "name": "aws-check",
        "output_dir": str(tmp_path / "output"),
        "targets": [
            {
                "name": "web",
                "ami": {
                    "region": REGION,
                    "endpoint_url": moto.url,
                    "name": unique("bakery-check"),
                    "source_ami_filter": {
                        "owners": ["amazon"],
                        "name": "amzn2-ami-hvm-*-x86_64-gp2",
                        "most_recent": True,
                    },
                },
            }
        ],
    }
    before = counts(moto, [REGION])
    run = run_playbook(
        REPO / "playbooks" / "bake.yml", tmp_path, extra_vars={"bake": bake}, args=["--check"], env=AWS_ENV
    )
    assert run.rc == 0, run.explain()
    launch = run.task_result("Find the image by fingerprint, or launch the builder")
    assert launch["changed"] and not launch["found"] and "instance" not in launch
    assert launch["source_ami"]["name"] == "amzn2-ami-hvm-2.0.20260930.0-x86_64-gp2"
    summary = "\n".join(run.task_result("Artifact summary")["msg"])
    assert "1 would build" in summary, summary
    assert counts(moto, [REGION]) == before
    assert not list((tmp_path / "output").glob(".bakery-tmp/*"))


# ---------------------------------------------------------------- killed at each phase


def everything(moto: MotoServer) -> set[str]:
    """Every live instance, own image, own snapshot, key pair and security group in REGION."""
    ec2 = moto.client("ec2", REGION)
    found = {
        "instance " + i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    }
    found |= {"image " + i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    found |= {"snapshot " + i["SnapshotId"] for i in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    found |= {"key pair " + k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    found |= {"security group " + g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    return found


# (phase, the banner of the task that is running at the kill, seconds after it, a slow AWS operation)
AMI_KILL_POINTS = [
    (
        "launch",
        r"TASK \[bakery\.images\.ami : Find the image by fingerprint, or launch the builder\]",
        1.0,
        "RunInstances",
    ),
    ("provision", r"TASK \[hold\]", 1.0, None),
    ("capture", r"TASK \[bakery\.images\.ami : Create the image from the builder\]", 1.0, "CreateImage"),
]


@pytest.mark.parametrize("phase, banner, delay, slow", AMI_KILL_POINTS, ids=[p[0] for p in AMI_KILL_POINTS])
def test_sigkill_at_each_phase_then_the_janitor_leaves_nothing(
    moto, bake_base, tmp_path, phase, banner, delay, slow
):
    """The run is killed (its whole process tree) while a call to AWS is under way; AWS still carries the
    call out after the kill, as it would. Whatever it made must carry the bake's tags, so the janitor finds
    it; afterwards nothing of the bake is left, and no image of it is final."""
    proxy = FaultProxy(moto.url)
    try:
        if slow:
            proxy.delays[slow] = 3.0
        bake_id = unique("crash-%s" % phase)
        name = unique("bakery-crash")
        target = ami_target(
            proxy.url,
            name,
            bake_id,
            tmp_path / "output",
            source_ami_filter={
                "owners": ["amazon"],
                "name": "amzn2-ami-hvm-*-x86_64-gp2",
                "most_recent": True,
            },
            ssh_timeout=0,
            ssh_cidrs=["192.0.2.0/24"],
        )
        extra = {
            "bakery_target": target,
            "stand_in_image": bake_base["image"],
            "hold_seconds": 300 if phase == "provision" else 0,
        }
        (tmp_path / "vars.json").write_text(json.dumps(extra))
        (tmp_path / "playbook.yml").write_text(INSTANCE_PLAY)
        before = everything(moto)
        run = Run(["playbook.yml", "-e", "@vars.json"], tmp_path, env=AWS_ENV)
        run.wait_for(banner, timeout=300)
        time.sleep(delay)
        run.kill()
        time.sleep(3.5)  # the held call reaches moto
    finally:
        proxy.stop()
    if phase != "launch":
        assert leftovers(moto, bake_id, [REGION]), "the builder should exist at the kill"

    bake = {
        "name": "crash",
        "output_dir": str(tmp_path / "output"),
        "targets": [{"name": "ami", "ami": {"region": REGION, "endpoint_url": moto.url, "name": name}}],
    }
    (tmp_path / "bake.json").write_text(json.dumps({"bake": bake}))
    run_janitor(tmp_path, "bake.json", bake_id, env=AWS_ENV)
    assert leftovers(moto, bake_id, [REGION]) == {}
    # nothing the killed run made is left, tagged or not
    assert everything(moto) - before == set()
    assert not os.path.exists(target["options"].get("key_file") or str(tmp_path / "none"))
    stand_ins = docker_client().containers.list(all=True, filters={"label": "bakery-bake-id=%s" % bake_id})
    assert not stand_ins, "the stand-in builder is left"


# ---------------------------------------------------------------- verify: published only when the checks pass


def test_an_ami_that_fails_its_checks_is_never_final_and_is_removed(moto, tmp_path):
    """verify on an ami target (playbooks/bake.yml): the disk of a qemu target (a copy of a small image) is uploaded,
    and the AMI stays temporary (not copied, not tagged final) while its checks run: local commands told the image
    id. A failing check fails the target in verify and the cleanup removes the image; with the fixed check the disk
    is found (not made again), uploaded again, and the image is published: copied and tagged final."""
    made = make_raw_disk(tmp_path / "made.raw")
    source_image = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(made), str(source_image)], check=True)
    made.unlink()
    name = unique("bakery-verified")
    seen = tmp_path / "seen"
    bake = {
        "name": "aws-verify",
        "output_dir": str(tmp_path / "output"),
        "verify": [
            {
                "name": "told",
                "local": {"inline": ['echo "$BAKERY_IMAGE_ID $BAKERY_AWS_REGION" >> %s' % seen]},
                "only": ["ami"],
            },
            {"name": "approved", "local": {"inline": ["echo not approved; false"]}, "only": ["ami"]},
        ],
        "targets": [
            {
                "name": "disk",
                "qemu": {
                    "provision": "none",
                    # a disk without a dpkg database: baked without SBOMs, as asked
                    "sbom_unreadable": "skip",
                    "base_image": str(source_image),
                    "formats": ["raw"],
                    "disk_size": "96M",
                },
            },
            {
                "name": "web",
                "ami": {
                    "source": "disk",
                    "region": REGION,
                    "endpoint_url": moto.url,
                    "name": name,
                    "regions": COPY_REGIONS[:1],
                },
            },
        ],
    }
    before = counts(moto, ALL_REGIONS)
    ids = [unique("verify"), unique("verify")]
    first = run_playbook(
        REPO / "playbooks" / "bake.yml",
        tmp_path,
        extra_vars={"bake": bake, "bake_id": ids[0]},
        env=AWS_ENV,
    )
    assert first.rc != 0, first.stdout[-3000:]
    report = first.task_result("Write the bake manifest")
    assert report["failed_targets"] == ["web"], report["failures"]
    assert "check approved (local bake.verify[1]) failed" in report["failures"]
    assert "not approved" in report["failures"]
    # the copied disk has no dpkg database: as asked (sbom_unreadable: skip), it and the AMI have no SBOMs, and
    # a warning says why
    sboms = [
        r
        for r in first.task_results("Write the artifact's SBOMs")
        if r.get("action") == "bakery.images.sbom" and not r.get("skipped")
    ]
    assert [(r["documents"], r["packages"]) for r in sboms] == [({}, 0), ({}, 0)], sboms
    warned = [w for r in sboms for w in r.get("warnings") or []]
    assert len(warned) == 1 and "no dpkg database (/var/lib/dpkg/status)" in warned[0], sboms
    image_id, region = seen.read_text().split()
    assert region == REGION and image_id.startswith("ami-")
    # never final, never copied, and gone with the cleanup: nothing of the bake is left in any region
    assert counts(moto, ALL_REGIONS) == before
    assert leftovers(moto, ids[0], ALL_REGIONS) == {}
    for each in ALL_REGIONS:
        tagged = moto.client("ec2", each).describe_images(
            Owners=["self"], Filters=[{"Name": "tag:bakery-target", "Values": ["aws-verify/web"]}]
        )["Images"]
        assert tagged == [], each

    bake["verify"][1]["local"]["inline"] = ["echo approved"]
    second = run_playbook(
        REPO / "playbooks" / "bake.yml",
        tmp_path,
        extra_vars={"bake": bake, "bake_id": ids[1]},
        env=AWS_ENV,
    )
    assert second.rc == 0, second.explain()
    assert second.stats["bakery-disk"]["changed"] == 0  # the disk is found
    manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
    assert entry["verify"]["status"] == "passed" and sorted(entry["images"]) == sorted(
        [REGION, *COPY_REGIONS[:1]]
    )
    for each, image in entry["images"].items():
        (found,) = moto.client("ec2", each).describe_images(ImageIds=[image])["Images"]
        tags = {t["Key"]: t["Value"] for t in found.get("Tags", [])}
        assert tags["bakery-fingerprint"] == entry["fingerprint"] and "bakery-temporary" not in tags, each
    assert seen.read_text().split()[2] == entry["id"]
    assert leftovers(moto, ids[1], ALL_REGIONS) == {}
    assert "sbom" not in entry and "sbom" not in next(
        a for a in manifest["artifacts"] if a["target"] == "disk"
    )


def test_verify_instance_runs_the_checks_on_an_instance_of_the_new_ami(moto, bake_base, tmp_path):
    """verify_instance on an ami target: an instance is launched from the new, still temporary AMI (its own key
    pair and security group) and the shell check runs over its connection; a failing check fails the target in
    verify and the cleanup removes the AMI, its snapshot, the instance, its key pair, security group and key file;
    fixed, the AMI is published without the disk being made again (stand_ins.checks_on_an_instance).

    moto's instance boots nothing: the stand-in plays of stand_ins.py run the check in a local container of the
    bake's base image instead. A real instance booting from the AMI on AWS is not tested here."""
    ec2 = moto.client("ec2")

    def launched() -> list[tuple[str, str]]:
        reservations = ec2.describe_instances(
            Filters=[{"Name": "tag:bakery-target", "Values": ["ami-verify-instance/web"]}]
        )["Reservations"]
        instances = sorted((i for r in reservations for i in r["Instances"]), key=lambda i: i["LaunchTime"])
        return [(i["InstanceId"], i["ImageId"]) for i in instances]

    def image(image_id: str) -> dict | None:
        images = ec2.describe_images(Owners=["self"])["Images"]
        return next((i for i in images if i["ImageId"] == image_id), None)

    def final(image_id: str) -> bool:
        tags = {t["Key"]: t["Value"] for t in (image(image_id) or {}).get("Tags", [])}
        return "bakery-fingerprint" in tags and "bakery-temporary" not in tags

    cloud = Cloud(
        kind="ami",
        options={
            "region": REGION,
            "endpoint_url": moto.url,
            "name": unique("bakery-verify-instance"),
            "ssh_user": "admin",
            "ssh_timeout": 0,
        },  # moto's instances never answer SSH
        image_variable="BAKERY_IMAGE_ID",
        launched=launched,
        image_exists=lambda image_id: image(image_id) is not None,
        image_final=final,
        leftovers=lambda bake_id: leftovers(moto, bake_id, [REGION]),
        key_files=".bakery-tmp/*.key*",
        env=AWS_ENV,
    )
    source = qcow2_copy(make_raw_disk(tmp_path / "made.raw"), tmp_path / "source.qcow2")
    checks_on_an_instance(cloud, source, "96M", bake_base["image"], tmp_path)
