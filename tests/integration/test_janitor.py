"""The janitor against real engines: dockerd, processes and directories of this host, moto_server, the fake
Compute Engine with gcp-storage-emulator.

Leftovers are made as a killed bake leaves them, tagged and labelled as bakery tags them: build containers
(the labels docker_image_build's start gives), builder VMs (a process started as ``qemu-system-x86_64 ...
-name bakery-<bake id>-<target>`` in a work directory with the state file qemu_vm writes: what the janitor
keys on; a real qemu boot would take a minute), chroot work directories with their marker, ``.partial``
files, EC2 and GCE resources created through the APIs. Ages are made by backdating what records them (file
times, the state file's start time, the ``bakery-created`` tag, the fake's creationTimestamp).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from aws import CREDENTIALS, REGION, MotoServer, free_port
from conftest import LOCAL, REPO, docker_client, run_playbook
from test_gce import BUCKET, PROJECT, ZONE, Env

from ansible_collections.bakery.images.plugins.module_utils import _gcp, _qemu_vm
from ansible_collections.bakery.images.plugins.module_utils._docker import KEEPALIVE
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import new_bake_id

HOUR = 3600
OLD = time.time() - 5 * 86400  # five days ago: what the TTL runs (3d) select
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": REGION,
}


def bake_ids() -> tuple[str, str, str, str]:
    """A, B: bakes that started an hour ago; C: five days ago; Z: one that left nothing."""
    now = time.time()
    return new_bake_id(now - HOUR), new_bake_id(now - HOUR), new_bake_id(OLD), new_bake_id(now)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def backdate(path: Path, epoch: float) -> None:
    os.utime(path, (epoch, epoch))


def mark(workdir: Path, bake_id: str, when: float | None = None) -> Path:
    """A work directory as qemu_image unpack or the qemu role's launch_vm makes it."""
    (workdir / "root" / "etc").mkdir(parents=True)
    (workdir / "root" / "etc" / "hostname").write_text("builder\n")
    marker = workdir / ".bakery-temporary"
    marker.write_text(bake_id + "\n")
    if when:
        backdate(marker, when)
    return workdir


def fake_vm(workdir: Path, bake_id: str, target: str, started: float | None = None, state: bool = True):
    """A builder VM as the janitor sees one: its argv (program, -name) and its work directory's state file."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = _qemu_vm.vm_name(bake_id, target)
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-c", "import time; time.sleep(600)", "-name", name, "-display", "none"],
        executable=sys.executable,
        cwd=workdir,
    )
    if state:
        while _qemu_vm.start_ticks(proc.pid) is None:
            time.sleep(0.01)
        (workdir / "state.json").write_text(
            json.dumps(
                {
                    "bake_id": bake_id,
                    "target": target,
                    "name": name,
                    "pid": proc.pid,
                    "pid_start": _qemu_vm.start_ticks(proc.pid),
                    "started_at": iso(started or time.time()),
                    "keep_workdir": False,
                }
            )
        )
    return proc


def running(proc: subprocess.Popen) -> bool:
    return _qemu_vm.start_ticks(proc.pid) is not None


def by_kind(result: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for entry in result["resources"]:
        out.setdefault((entry["backend"], entry["kind"]), set()).add(entry["id"])
    return out


LOCAL_PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    bakery.images.janitor:
      bake: "{{ bake }}"
      backends: [docker, qemu]
  tasks:
    - name: check
      bakery.images.janitor:
        bake_id: "{{ a }}"
      check_mode: true
    - name: other
      bakery.images.janitor:
        bake_id: "{{ z }}"
    - name: young
      bakery.images.janitor:
        bake_id: "{{ a }}"
        older_than: 1d
    - name: ttl
      bakery.images.janitor:
        older_than: 3d
        backends: [qemu]
    - name: byid
      bakery.images.janitor:
        bake_id: "{{ a }}"
    - name: again
      bakery.images.janitor:
        bake_id: "{{ a }}"
    - name: no engine
      bakery.images.janitor:
        bake_id: "{{ a }}"
        bake: "{{ {} }}"
        backends: "{{ omit }}"
        docker:
          docker_host: "unix://{{ nowhere }}"
      ignore_errors: true
"""


def test_local_leftovers_of_a_killed_bake(bake_base, tmp_path):
    """Build containers and images, builder VMs, work directories and .partial files: check mode lists, another
    bake id removes nothing, the bake id removes exactly its own, a TTL removes the old, finals stay."""
    a, b, c, z = bake_ids()
    out = tmp_path / "out"
    cache = out / "cache"
    (cache / "qemu").mkdir(parents=True)
    (cache / "rootfs").mkdir()
    client = docker_client()
    made_containers, made_images, procs = [], [], []
    try:
        # --- docker: build containers as docker_image_build's start labels them, a temporary and a final image
        def container(bake_id, temporary, start=True, target="docker"):
            labels = {"bakery-bake-id": bake_id, "bakery-temporary": temporary, "org.bakery.target": target}
            made = client.api.create_container(
                bake_base["image"],
                entrypoint=KEEPALIVE,
                labels=labels,
                name="bakery-%s-%s" % (bake_id, target),
            )
            made_containers.append(made["Id"])
            if start:
                client.api.start(made["Id"])
            return made["Id"]

        running_a = container(a, "true")
        stopped_a = container(a, "true", start=False, target="stopped")
        running_b = container(b, "true")
        user_a = container(a, "false", start=False, target="user")
        temp_image = client.api.commit(
            stopped_a, conf={"Labels": {"bakery-temporary": "true", "bakery-bake-id": a}}
        )
        final_image = client.api.commit(
            user_a,
            repository="bakery-janitor-test/final",
            tag=a,
            conf={"Labels": {"bakery-temporary": "false", "bakery-bake-id": a}},
        )
        made_images += [temp_image["Id"], final_image["Id"]]

        # --- qemu: builder VMs, chroot work directories, a build's temporary directory
        vm_a = fake_vm(mark(cache / "qemu" / ("%s-vm" % a), a) / "vm", a, "vm")
        vm_a_nostate = fake_vm(tmp_path / "nostate", a, "nostate", state=False)
        vm_b = fake_vm(tmp_path / ("bakery-vm-%s-vm" % b), b, "vm")
        vm_c = fake_vm(mark(cache / "qemu" / ("%s-vm" % c), c, OLD) / "vm", c, "vm", started=OLD)
        procs += [vm_a, vm_a_nostate, vm_b, vm_c]
        disk_a = mark(cache / "qemu" / ("%s-disk" % a), a)
        disk_b = mark(cache / "qemu" / ("%s-disk" % b), b)
        build_a = mark(out / ".bakery-qemu-k2j4", a)
        not_ours = cache / "qemu" / ("%s-keep" % a)  # no marker: never bakery's to remove
        (not_ours / "root").mkdir(parents=True)

        # --- .partial files of interrupted writes, and a final artifact
        final = out / "web.qcow2"
        final.write_bytes(b"QFI\xfb")
        (out / "web.qcow2.bakery.json").write_text("{}")
        partial = out / ".web.qcow2.abc123.partial"
        rootfs_partial = cache / "rootfs" / ".bookworm.tar.x1y2.partial.tar"
        ancient = out / ".old.raw.q9.partial"
        fresh = out / ".new.raw.w8.partial"
        held = out / ".held.raw.e7.partial"
        for path in (partial, rootfs_partial, ancient, fresh, held):
            path.write_bytes(b"half")
        for path in (partial, rootfs_partial, held):
            backdate(path, time.time() - 60)
        backdate(ancient, OLD)
        backdate(fresh, time.time() + 600)  # being written now, for as long as this test runs
        # builders' private keys as the ami and gce roles keep them
        (out / ".bakery-tmp").mkdir()
        (out / ".bakery-ssh").mkdir()
        keys_a = [
            out / ".bakery-tmp" / ("%s-ami.key" % a),
            out / ".bakery-tmp" / ("%s-ami.key.known_hosts" % a),
            out / ".bakery-ssh" / ("bakery-%s-gce" % a),
        ]
        key_c = out / ".bakery-tmp" / ("%s-ami.key" % c)
        for path in (*keys_a, key_c):
            path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        backdate(key_c, OLD)
        holder = open(held, "rb")  # noqa: SIM115 - held open across the janitor's runs

        bake = {
            "name": "janitor-test",
            "output_dir": str(out),
            "targets": [{"name": "docker", "docker": {"repository": "x/y"}}, {"name": "disk", "qemu": {}}],
        }
        started = time.monotonic()
        run = run_playbook(
            LOCAL_PLAY,
            tmp_path,
            extra_vars={"a": a, "z": z, "bake": bake, "nowhere": str(tmp_path / "no.sock")},
            args=LOCAL,
        )
        seconds = time.monotonic() - started
        holder.close()
        assert run.rc == 0, run.explain()

        expected = {
            ("docker", "container"): {running_a, stopped_a},
            ("docker", "image"): {temp_image["Id"]},
            ("qemu", "vm"): {str(vm_a.pid), str(vm_a_nostate.pid)},
            ("qemu", "workdir"): {str(cache / "qemu" / ("%s-vm" % a)), str(disk_a), str(build_a)},
            ("qemu", "partial file"): {str(partial), str(rootfs_partial)},
            ("qemu", "key file"): {str(path) for path in keys_a},
        }
        check = run.task_result("check")
        assert check["changed"] and by_kind(check) == expected, check["resources"]
        assert {e["state"] for e in check["resources"]} == {"would remove"}
        vm_entry = next(e for e in check["resources"] if e["id"] == str(vm_a.pid))
        assert (
            vm_entry["bake_id"] == a and vm_entry["target"] == "vm" and vm_entry["name"] == "bakery-%s-vm" % a
        )
        nostate = next(e for e in check["resources"] if e["id"] == str(vm_a_nostate.pid))
        assert nostate["bake_id"] == a and nostate["target"] == "nostate"
        container_entry = next(e for e in check["resources"] if e["id"] == running_a)
        assert container_entry["name"] == "bakery-%s-docker" % a and container_entry["target"] == "docker"

        other = run.task_result("other")
        assert not other["changed"] and other["resources"] == [], other["resources"]
        young = run.task_result("young")
        assert not young["changed"] and young["resources"] == [], young["resources"]

        ttl = run.task_result("ttl")
        assert by_kind(ttl) == {
            ("qemu", "vm"): {str(vm_c.pid)},
            ("qemu", "workdir"): {str(cache / "qemu" / ("%s-vm" % c))},
            ("qemu", "partial file"): {str(ancient)},
            ("qemu", "key file"): {str(key_c)},
        }, ttl["resources"]

        byid = run.task_result("byid")
        assert byid["changed"] and by_kind(byid) == expected, byid["resources"]
        assert {e["state"] for e in byid["resources"]} == {"removed"}
        again = run.task_result("again")
        assert not again["changed"] and again["resources"] == []

        nowhere = run.task_result("no engine")
        assert nowhere["failed"] and "cannot reach the Docker engine at unix://" in nowhere["msg"], nowhere[
            "msg"
        ]

        # what the runs removed is gone; everything else is there
        live = {c["Id"] for c in client.api.containers(all=True)}
        assert running_a not in live and stopped_a not in live
        assert running_b in live and user_a in live
        images = {i["Id"] for i in client.api.images(all=True)}
        assert temp_image["Id"] not in images and final_image["Id"] in images
        for proc in (vm_a, vm_a_nostate, vm_c):
            assert not running(proc)
        assert running(vm_b)
        for path in (
            cache / "qemu" / ("%s-vm" % a),
            disk_a,
            build_a,
            partial,
            rootfs_partial,
            ancient,
            key_c,
            *keys_a,
        ):
            assert not path.exists(), path
        for path in (disk_b, not_ours, final, out / "web.qcow2.bakery.json", fresh, held):
            assert path.exists(), path
        assert seconds < 90, "the janitor's local runs took %.1f s" % seconds

        # --- the playbook, end to end, for bake B: --check lists, then it removes; a table is printed
        bake_file = tmp_path / "bake.yml"
        # relative to where ansible-playbook starts, as the bake resolves it
        bake_file.write_text(yaml.safe_dump({"bake": dict(bake, output_dir="out")}))
        playbook = REPO / "playbooks" / "janitor.yml"
        args = ["-e", "@%s" % bake_file, "-e", "janitor_bake_id=%s" % b]
        dry = run_playbook(playbook, tmp_path, args=[*args, "--check"], json_output=False)
        assert dry.rc == 0, dry.explain()
        # B's container, VM and chroot work directory, and the .partial file the test held open before
        assert "would remove 4 temporary resource(s) of bake %s" % b in dry.stdout, dry.stdout
        assert running(vm_b) and disk_b.exists() and held.exists()
        real = run_playbook(playbook, tmp_path, args=args, json_output=False)
        assert real.rc == 0, real.explain()
        assert "removed 4 temporary resource(s) of bake %s" % b in real.stdout, real.stdout
        for line in ("STATE", "removed      docker container", "removed      qemu   vm", "bakery-%s-vm" % b):
            assert line in real.stdout, real.stdout
        assert not running(vm_b) and not disk_b.exists() and not held.exists() and fresh.exists()
        assert not (tmp_path / ("bakery-vm-%s-vm" % b)).exists()
        assert running_b not in {c["Id"] for c in client.api.containers(all=True)}
        assert final.exists() and not_ours.exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for cid in made_containers:
            try:
                client.api.remove_container(cid, force=True)
            except Exception:  # noqa: BLE001 - already removed by the janitor
                pass
        for image in made_images:
            try:
                client.api.remove_image(image, force=True)
            except Exception:  # noqa: BLE001 - already removed by the janitor
                pass


# ------------------------------------------------------------------------------------------------ clouds


def aws_leftovers(moto: MotoServer, bake_id: str) -> dict[str, list[str]]:
    """The bake's resources in moto, as the janitor would see them (instances that are not terminated)."""
    ec2 = moto.client("ec2")
    tag = [{"Name": "tag:bakery-bake-id", "Values": [bake_id]}]
    return {
        "instance": [
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=tag)["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ],
        "image": [i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=tag)["Images"]],
        "snapshot": [
            s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=tag)["Snapshots"]
        ],
        "key pair": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]],
        "security group": [g["GroupId"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]],
    }


def make_aws(moto: MotoServer, bake_id: str, created: float, builder: bool = True) -> dict[str, list[str]]:
    """What a killed instance bake and upload leave: key pair and group (with ``bakery-created``), and with
    *builder* the instance, a snapshot, an unfinished image and the final image an earlier capture made."""
    ec2 = moto.client("ec2")
    tags = [
        {"Key": "bakery-bake-id", "Value": bake_id},
        {"Key": "bakery-temporary", "Value": "true"},
        {"Key": "bakery-target", "Value": "web/ami"},
    ]
    stamped = [*tags, {"Key": "bakery-created", "Value": iso(created)}]
    name = "bakery-%s-ami" % bake_id
    ec2.create_key_pair(
        KeyName=name, KeyType="ed25519", TagSpecifications=[{"ResourceType": "key-pair", "Tags": stamped}]
    )
    group = ec2.create_security_group(
        GroupName=name,
        Description="test",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": stamped}],
    )["GroupId"]
    made = {"key pair": [name], "security group": [group]}
    if not builder:
        return made
    instance = ec2.run_instances(
        ImageId="ami-04681a1dbd79675a5",
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        KeyName=name,
        SecurityGroupIds=[group],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]
    volume = ec2.create_volume(AvailabilityZone=REGION + "a", Size=1)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    image = ec2.register_image(
        Name="%s-upload" % name,
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    ec2.create_tags(Resources=[snapshot, image], Tags=tags)
    final = ec2.create_image(InstanceId=instance, Name="web-%s" % bake_id)["ImageId"]
    ec2.create_tags(
        Resources=[final],
        Tags=[{"Key": "bakery-bake-id", "Value": bake_id}, {"Key": "bakery-fingerprint", "Value": "f" * 64}],
    )
    made.update(instance=[instance], snapshot=[snapshot], image=[image], final=[final])
    return made


def make_gce(
    env: Env,
    bake_id: str,
    disk: Path,
    created: str | None = None,
    temporary: bool = True,
    target: str = "gce",
) -> dict:
    """A build instance (with its disk) made as launch makes it, and an upload as import makes it."""
    client = _gcp.make_client(dict(env.options(), retries=1))
    params = {"project": PROJECT, "zone": ZONE, "bake_id": bake_id, "target": target, "ssh_user": "bakery"}
    images = _gcp.Images(client, params)
    source = client.compute("GET", "projects/debian-cloud/global/images/debian-12-bookworm-v20261101")
    name = _gcp.temporary_name(bake_id, target)
    body = images.instance_body(name, source, "ssh-ed25519 AAAA test")
    if not temporary:
        body["labels"] = dict(body["labels"], **{"bakery-temporary": "false"})
        body["disks"][0]["initializeParams"]["labels"] = body["labels"]
    op = client.compute("POST", images.zone_path("instances"), body=body)
    client.wait(op, time.monotonic() + 60)
    if created:
        for table in (env.fake.instances, env.fake.disks):
            table[(PROJECT, ZONE, name)]["creationTimestamp"] = created
    made = {"instance": [name], "disk": [name]}
    if temporary:
        obj = "%s.tar.gz" % name
        images.upload(str(disk), BUCKET, obj)
        made["object"] = ["gs://%s/%s" % (BUCKET, obj)]
    return made


CLOUD_PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    bakery.images.janitor:
      backends: [aws, gce]
      aws: {regions: ["{{ region }}"], endpoint_url: "{{ moto }}"}
      gce: "{{ gce }}"
  tasks:
    - name: check
      bakery.images.janitor:
        bake_id: "{{ a }}"
      check_mode: true
    - name: byid
      bakery.images.janitor:
        bake_id: "{{ a }}"
    - name: ttl
      bakery.images.janitor:
        older_than: 3d
    - name: again
      bakery.images.janitor:
        bake_id: "{{ a }}"
    - name: unreachable
      bakery.images.janitor:
        bake_id: "{{ a }}"
        backends: [aws]
        aws: {regions: ["{{ region }}"], endpoint_url: "{{ closed }}", max_attempts: 1}
      ignore_errors: true
"""


def test_cloud_leftovers_of_a_killed_bake(moto, tmp_path):
    """EC2 (moto) and Compute Engine (fake + storage emulator): listed in check mode, removed by bake id and by
    age, the other bake's and the final image left alone; an unreachable endpoint fails and names it."""
    a, b, c, _z = bake_ids()
    env = Env(tmp_path)
    try:
        disk = tmp_path / "disk.raw"
        disk.write_bytes(os.urandom(4096) + bytes(1 << 20))
        aws_a = make_aws(moto, a, time.time() - 60)
        aws_b = make_aws(moto, b, time.time() - 60, builder=False)
        aws_c = make_aws(moto, c, OLD, builder=False)
        gce_a = make_gce(env, a, disk)
        gce_b = make_gce(env, b, disk)
        gce_c = make_gce(env, c, disk, created="2026-01-01T00:00:00.000-08:00")
        gce_final = make_gce(env, a, disk, temporary=False, target="final")
        gce = dict(env.options(), zones=[ZONE], bucket=BUCKET, retries=1)
        started = time.monotonic()
        run = run_playbook(
            CLOUD_PLAY,
            tmp_path,
            extra_vars={
                "a": a,
                "region": REGION,
                "moto": moto.url,
                "gce": gce,
                "closed": "http://127.0.0.1:%d" % free_port(),
            },
            args=LOCAL,
            env=AWS_ENV,
        )
        seconds = time.monotonic() - started
        assert run.rc == 0, run.explain()

        check = run.task_result("check")
        got = by_kind(check)
        for kind in ("instance", "image", "snapshot", "key pair", "security group"):
            assert got[("aws", kind)] == set(aws_a[kind]), (kind, check["resources"])
        gce_names = {(e["kind"], e["name"]) for e in check["resources"] if e["backend"] == "gce"}
        assert gce_names == {
            ("instance", gce_a["instance"][0]),
            ("disk", gce_a["disk"][0]),
            ("object", gce_a["object"][0].split("/", 3)[-1]),
        }, check["resources"]
        assert {e["state"] for e in check["resources"]} == {"would remove"}
        assert all(e["bake_id"] == a and e["created"] for e in check["resources"]), check["resources"]

        byid = run.task_result("byid")
        # the build instance's boot disk goes with it (autoDelete): it is not listed again
        assert byid["changed"] and {(e["backend"], e["kind"], e["name"]) for e in byid["resources"]} == {
            (e["backend"], e["kind"], e["name"]) for e in check["resources"]
        } - {("gce", "disk", gce_a["disk"][0])}
        assert {e["state"] for e in byid["resources"]} == {"removed"}

        ttl = run.task_result("ttl")
        old = {
            (e["backend"], e["kind"], e["id"] if e["backend"] == "aws" else e["name"])
            for e in ttl["resources"]
        }
        assert old == {
            ("aws", "key pair", aws_c["key pair"][0]),
            ("aws", "security group", aws_c["security group"][0]),
            ("gce", "instance", gce_c["instance"][0]),
        }, ttl["resources"]
        again = run.task_result("again")
        assert not again["changed"] and again["resources"] == []

        unreachable = run.task_result("unreachable")
        assert unreachable["failed"] and "127.0.0.1" in unreachable["msg"], unreachable["msg"]
        assert "AWS %s at http://127.0.0.1:" % REGION in unreachable["msg"], unreachable["msg"]

        # gone: bake A's temporary resources (and C's old key pair and group); there: B's, C's young ones, finals
        assert aws_leftovers(moto, a) == {
            "instance": [],
            "image": aws_a["final"],
            "snapshot": [],
            "key pair": [],
            "security group": [],
        }
        assert {k: v for k, v in aws_leftovers(moto, b).items() if v} == aws_b
        assert {k: v for k, v in aws_leftovers(moto, c).items() if v} == {}
        final = moto.client("ec2").describe_images(ImageIds=aws_a["final"])["Images"][0]
        assert final["State"] == "available"
        left = env.leftovers()
        assert sorted(left["instances"]) == sorted(gce_b["instance"] + gce_final["instance"]), left
        assert sorted(left["disks"]) == sorted(gce_b["disk"] + gce_final["disk"]), left
        # C's upload is young (the emulator stamps it now): the age run leaves it
        assert sorted(left["objects"]) == sorted(
            o.split("/", 3)[-1] for o in gce_b["object"] + gce_c["object"]
        )
        assert seconds < 90, "the janitor's cloud runs took %.1f s" % seconds
    finally:
        env.stop()


def test_the_janitor_finds_the_instances_of_verify_instance_by_bake_id(moto, tmp_path):
    """The instance that action=verifier starts for an image's checks, with its key pair and security group (ami)
    or its disk (gce), carries the bake id as the builder does: the janitor's sweeps of a killed bake select and
    remove them by it alone."""
    from ansible_collections.bakery.images.plugins.module_utils import _aws
    from ansible_collections.bakery.images.plugins.module_utils._temporary import Selector

    bake_id = new_bake_id()
    ec2 = moto.client("ec2")
    ami = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])[
        "Images"
    ][0]["ImageId"]
    aws = dict(
        access_key="testing", secret_key="testing", region=REGION, endpoint_url=moto.url, wait_timeout=60
    )
    aws.update(bake_id=bake_id, target="b/web", ssh_cidrs=["192.0.2.0/24"])
    started = _aws.run_action(
        dict(aws, action="verifier", image_id=ami, key_file=str(tmp_path / "web.key"), ssh_timeout=0),
        False,
    )
    assert started["instance"]["image_id"] == ami and started["key_pair"].endswith("-verify")
    assert os.stat(tmp_path / "web.key.verify").st_mode & 0o777 == 0o600
    swept = _aws.sweep(dict(aws, regions=[REGION]), Selector(bake_id=bake_id), False)
    assert sorted((e["kind"], e["state"]) for e in swept) == [
        ("instance", "removed"),
        ("key pair", "removed"),
        ("security group", "removed"),
    ], swept
    assert {e["id"] for e in swept} >= {started["instance"]["instance_id"], started["security_group"]}

    env = Env(tmp_path)
    try:
        env.fake.add_image(PROJECT, "web-%s" % bake_id)
        gce = dict(env.options(), zone=ZONE, bake_id=bake_id, target="web", ssh_port=env.ssh_port)
        gce.update(ssh_user="bakery", ssh_key_dir=str(tmp_path / "keys"), timeout=60, access_token=None)
        started = _gcp.run(dict(gce, action="verifier", image="web-%s" % bake_id))
        name = started["instance"]["name"]
        assert name == _gcp.verifier_name(bake_id, "web") and env.fake.launched[-1]["source_image"].endswith(
            "/web-%s" % bake_id
        )
        assert env.fake.temporary() == {"instances": [name], "disks": [name]}
        swept = _gcp.sweep(dict(gce, zones=[ZONE]), Selector(bake_id=bake_id), False)
        # the disk goes with its instance (auto-delete), before the sweep lists disks
        assert [(e["kind"], e["name"], e["state"]) for e in swept] == [("instance", name, "removed")], swept
        assert env.fake.temporary() == {"instances": [], "disks": []}
    finally:
        env.stop()
