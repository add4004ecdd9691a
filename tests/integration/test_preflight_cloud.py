"""The preflight of cloud targets against the project's stand-ins: moto_server (STS, EC2, SSM) and the fake Compute
Engine with gcp-storage-emulator behind it. A bake whose ami or gce targets cannot be made fails in its plan play,
in under 10 s, naming target and option of every problem at once, and creates nothing in either cloud nor in
Docker. A bake whose cloud targets can be made passes, and --check lists their cloud checks.

Credentials: moto accepts any keys unless its IAM authentication is switched on (``POST /moto-api/reset-auth``
with ``0``: every later request is checked against the access keys moto's IAM knows, none here), which the
rejected-credentials case does on a moto_server of its own. Missing AWS credentials: an environment with no keys,
no shared files and no instance metadata lookup. GCE credentials that yield no token: a service-account key the
fake's token endpoint does not know (it checks the JWT's signature).
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

from aws import CREDENTIALS, REGION, MotoServer
from conftest import PREFLIGHT_TASK, REPO, docker_client, run_playbook
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_gce import BUCKET, ZONE, Env

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
SUMMARY_TASK = "Show the preflight of each target (check mode)"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service (only 127.0.0.1 is used)
}
SOURCE_FILTER = {"owners": ["amazon"], "name": "amzn2-ami-hvm-*-x86_64-gp2", "most_recent": True}
REGIONS = [REGION, "eu-west-1"]


def aws_resources(moto: MotoServer) -> dict[str, int]:
    """How many of each kind of resource a bake could make exist (also warms moto's backends up)."""
    out = {}
    for region in REGIONS:
        ec2 = moto.client("ec2", region)
        out[region + "/instances"] = sum(
            len(r["Instances"]) for r in ec2.describe_instances()["Reservations"]
        )
        out[region + "/images"] = len(ec2.describe_images(Owners=["self"])["Images"])
        out[region + "/snapshots"] = len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])
        out[region + "/volumes"] = len(ec2.describe_volumes()["Volumes"])
        out[region + "/key_pairs"] = len(ec2.describe_key_pairs()["KeyPairs"])
        out[region + "/security_groups"] = len(ec2.describe_security_groups()["SecurityGroups"])
        ec2.describe_regions(AllRegions=True)
    # moto makes a service's backend on its first request, which takes seconds on a busy host: not the preflight's
    moto.client("sts").get_caller_identity()
    moto.client("ssm").describe_parameters()
    moto.client("ec2").describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-*"]}])
    s3 = moto.client("s3")
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets") or []]
    out["s3/buckets"] = len(buckets)
    out["s3/objects"] = sum(s3.list_objects_v2(Bucket=b).get("KeyCount", 0) for b in buckets)
    return out


def gce_resources(env: Env) -> dict[str, int]:
    with env.fake.lock:
        out = {
            "instances": len(env.fake.instances),
            "disks": len(env.fake.disks),
            "images": len(env.fake.images),
            "operations": len(env.fake.operations),
        }
    out["objects"] = len(env.objects())
    return out


def docker_resources(bake_id: str) -> tuple[int, int]:
    client = docker_client()
    containers = client.api.containers(all=True, filters={"label": "bakery-bake-id=%s" % bake_id})
    return len(containers), len(client.api.images(filters={"label": "bakery-bake-id=%s" % bake_id}))


def bake(tmp_path, targets, extra=None, env=None, check=False):
    """Run playbooks/bake.yml with *targets*; (result, seconds, bake id)."""
    bake_id = "preflight-%s" % uuid.uuid4().hex[:8]
    definition = {"name": "cloud-preflight", "output_dir": str(tmp_path / "output"), "targets": targets}
    path = tmp_path / ("bake-%s.json" % bake_id)
    path.write_text(json.dumps(dict(extra or {}, bake=definition)))
    args = ["-e", "@%s" % path, "-e", "bake_id=%s" % bake_id] + (["--check"] if check else [])
    started = time.monotonic()
    run = run_playbook(BAKE_PLAYBOOK, tmp_path, args=args, env=env)
    return run, time.monotonic() - started, bake_id


def failed_in_plan(run, seconds):
    """The problems of a bake that must have stopped in its plan play, in under 10 s."""
    assert run.rc != 0, run.stdout[-3000:]
    result = run.task_result(PREFLIGHT_TASK)
    assert result.get("failed"), result
    assert set(run.stats) == {"localhost"} and run.stats["localhost"]["failures"] == 1, run.stats
    print("bake: %.1f s, of which the preflight %.2f s" % (seconds, result["duration"]))
    # the cloud checks themselves are bounded far below the bake's 10 s (ansible-playbook's start is the rest)
    assert result["duration"] < 5, "the preflight took %.1f s" % result["duration"]
    assert seconds < 10, "the failing bake took %.1f s (the preflight %.1f s)" % (seconds, result["duration"])
    return result["problems"], result["msg"]


def ami(name, moto, **options):
    base = {
        "region": REGION,
        "endpoint_url": moto.url,
        "name": "bakery-%s" % name,
        "source_ami_filter": SOURCE_FILTER,
    }
    base.update(options)
    return {"name": name, "ami": {k: v for k, v in base.items() if v is not None}}


def test_ami_targets_that_cannot_be_made_stop_the_bake_in_its_plan(moto, tmp_path):
    moto.client("ssm").put_parameter(
        Name="/bakery/preflight/not-an-ami", Value="ami-0ddddddddddddddd4", Type="String"
    )
    before = aws_resources(moto)
    targets = [
        ami("mars", moto, region="mars-north-9"),
        ami("copies", moto, regions=["eu-west-1", "venus-1"]),
        ami("byid", moto, source_ami_filter=None, source_ami="ami-0123456789abcdef0"),
        ami("byfilter", moto, source_ami_filter={"owners": ["self"], "name": "nothing-*"}),
        ami("byssm", moto, source_ami_filter=None, source_ami_ssm_parameter="/bakery/preflight/missing"),
        ami("ssmbad", moto, source_ami_filter=None, source_ami_ssm_parameter="/bakery/preflight/not-an-ami"),
    ]
    run, seconds, bake_id = bake(tmp_path, targets, env=AWS_ENV)
    problems, msg = failed_in_plan(run, seconds)
    assert msg.startswith("preflight: 6 problem(s)"), msg
    assert [p.split(": ", 1)[0] for p in problems] == [
        "target mars (ami), ami.region=mars-north-9",
        "target copies (ami), ami.regions=venus-1",
        "target byid (ami), ami.source_ami=ami-0123456789abcdef0",
        "target byfilter (ami), ami.source_ami_filter",
        "target byssm (ami), ami.source_ami_ssm_parameter=/bakery/preflight/missing",
        "target ssmbad (ami), ami.source_ami_ssm_parameter=/bakery/preflight/not-an-ami",
    ]
    assert "AWS has no region mars-north-9; use one of the" in problems[0]
    assert "AWS has no region venus-1" in problems[1]
    assert (
        "source AMI ami-0123456789abcdef0 does not exist in us-east-1; give the id of an AMI" in problems[2]
    )
    assert "no source AMI matches the filter (owners self, name nothing-*, architecture any)" in problems[3]
    assert "ParameterNotFound" in problems[4] and "name an SSM parameter of us-east-1" in problems[4]
    assert "names ami-0ddddddddddddddd4, which does not exist in us-east-1" in problems[5]
    # the checks that passed are listed too: credentials of every target, eu-west-1 of "copies"
    checks = {t["name"]: t["preflight"] for t in run.task_result(PREFLIGHT_TASK)["targets"]}
    assert all(c["ok"] for c in checks["byid"] if c["check"] in ("credentials", "region"))
    assert [c["option"] for c in checks["copies"] if c["ok"] and c["check"] == "region"] == [
        "ami.region=us-east-1",
        "ami.regions=eu-west-1",
    ]
    # an unknown home region: no source AMI looked up there
    assert [c["check"] for c in checks["mars"]] == ["credentials", "region"]
    assert aws_resources(moto) == before
    assert docker_resources(bake_id) == (0, 0)


def test_missing_aws_credentials_are_one_problem_per_target(moto, tmp_path):
    before = aws_resources(moto)
    env = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SESSION_TOKEN": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # an unknown region and a bad source too: credentials come first, the rest is not asked
    targets = [
        ami("web", moto, region="mars-north-9", source_ami_filter=None, source_ami="ami-0123456789abcdef0")
    ]
    run, seconds, bake_id = bake(tmp_path, targets, env=env)
    problems, _msg = failed_in_plan(run, seconds)
    assert problems == [
        "target web (ami), credentials (the standard chain: environment, ~/.aws, instance role): no AWS credentials "
        "were found; give valid keys in the role variables ami_access_key/ami_secret_key (and ami_session_token), set "
        "ami.profile to a profile that has them, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for "
        "ansible-playbook"
    ]
    assert aws_resources(moto) == before
    assert docker_resources(bake_id) == (0, 0)


def test_rejected_aws_credentials_are_one_problem_and_never_shown(tmp_path):
    server = MotoServer(tmp_path / "moto-auth.log")
    try:
        before = aws_resources(server)
        # from now on moto checks every request's access key against its IAM, which knows none
        request = urllib.request.Request(
            server.url + "/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.load(reply)["status"] == "ok"
        secret = "preflight-secret-%s" % uuid.uuid4().hex
        keys = {"ami_access_key": "AKIAPREFLIGHT%s" % uuid.uuid4().hex[:7].upper(), "ami_secret_key": secret}
        targets = [ami("web", server), ami("web2", server, regions=["venus-1"])]
        run, seconds, bake_id = bake(tmp_path, targets, extra=keys, env={"AWS_EC2_METADATA_DISABLED": "true"})
        problems, _msg = failed_in_plan(run, seconds)
        assert len(problems) == 2, problems
        for name, problem in zip(("web", "web2"), problems):
            assert problem.startswith(
                "target %s (ami), credentials (ami_access_key/ami_secret_key): AWS does not accept the credentials "
                "(sts GetCallerIdentity in us-east-1 failed: InvalidClientTokenId: " % name
            ), problem
        text = run.stdout + run.stderr
        assert secret not in text and keys["ami_access_key"] not in text
        server_auth_off = urllib.request.Request(
            server.url + "/moto-api/reset-auth",
            data=b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(server_auth_off, timeout=10).close()
        assert aws_resources(server) == before
        assert docker_resources(bake_id) == (0, 0)
    finally:
        server.stop()


def test_gce_targets_that_cannot_be_made_stop_the_bake_in_its_plan(gce, tmp_path):
    # a key the fake's token endpoint does not know: google-auth signs a JWT that the fake refuses
    stranger = dict(
        gce.key_info,
        private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode(),
    )
    stranger_file = tmp_path / "stranger.json"
    stranger_file.write_text(json.dumps(stranger))
    stranger_file.chmod(0o600)
    before = gce_resources(gce)

    def target(name, **options):
        base = dict(
            zone=ZONE, name="web", source_image_family="debian-12", source_image_project="debian-cloud"
        )
        base.update(options)
        return {"name": name, "gce": gce.options(**base)}

    targets = [
        target("nokey", service_account_file=str(stranger_file), zone="mars-north9-z", bucket="missing"),
        target("zone", zone="mars-north9-z"),
        target("image", source_image_family="debian-99"),
        target("bucket", bucket="bakery-preflight-missing"),
    ]
    run, seconds, bake_id = bake(tmp_path, targets)
    problems, msg = failed_in_plan(run, seconds)
    assert msg.startswith("preflight: 4 problem(s)"), msg
    assert [p.split(": ", 1)[0] for p in problems] == [
        "target nokey (gce), gce.service_account_file=%s" % stranger_file,
        "target zone (gce), gce.zone=mars-north9-z",
        "target image (gce), gce.source_image_family=debian-99 (project debian-cloud)",
        "target bucket (gce), gce.bucket=bakery-preflight-missing",
    ]
    assert "the token endpoint gave no access token: invalid_grant" in problems[0]
    assert "Compute Engine has no zone mars-north9-z in project bakery-test" in problems[1]
    assert "source image projects/debian-cloud/global/images/family/debian-99 not found" in problems[2]
    assert "bucket gs://bakery-preflight-missing does not exist" in problems[3]
    # the key that got no token: nothing else was asked for that target
    checks = {t["name"]: t["preflight"] for t in run.task_result(PREFLIGHT_TASK)["targets"]}
    assert [c["check"] for c in checks["nokey"]] == ["credentials"]
    text = run.stdout + run.stderr
    for secret in gce.secrets() + ["".join(stranger["private_key"].splitlines()[1:-1])[40:100]]:
        assert secret not in text
    assert gce_resources(gce) == before
    assert docker_resources(bake_id) == (0, 0)


def test_cloud_targets_that_can_be_made_pass_and_check_mode_lists_their_checks(moto, gce, tmp_path):
    before_aws, before_gce = aws_resources(moto), gce_resources(gce)
    targets = [
        ami("ec2", moto, regions=["eu-west-1"]),
        {
            "name": "vm",
            "gce": gce.options(
                zone=ZONE,
                name="web",
                source_image_family="debian-12",
                source_image_project="debian-cloud",
                bucket=BUCKET,
            ),
        },
    ]
    run, seconds, bake_id = bake(tmp_path, targets, env=AWS_ENV, check=True)
    assert run.rc == 0, run.explain()
    result = run.task_result(PREFLIGHT_TASK)
    assert not result.get("failed") and result["problems"] == []
    summary = run.task_result(SUMMARY_TASK)["msg"]
    assert summary == [
        "ec2 (ami) credentials ok: AWS accepts them (account 123456789012)",
        "ec2 (ami) region ok: region us-east-1 exists and is enabled",
        "ec2 (ami) region ok: region eu-west-1 exists and is enabled",
        "ec2 (ami) source_ami ok: resolves to %s (amzn2-ami-hvm-2.0.20260930.0-x86_64-gp2) in us-east-1"
        % summary[3].split("resolves to ")[1].split(" ")[0],
        "vm (gce) credentials ok: an access token was obtained",
        "vm (gce) zone ok: zone %s exists and is up" % ZONE,
        "vm (gce) source_image ok: resolves to debian-12-bookworm-v20261101",
        "vm (gce) bucket ok: gs://%s exists and the credentials may create, delete and list objects in it (asked "
        "with testIamPermissions, nothing written)" % BUCKET,
    ], summary
    assert summary[3].split("resolves to ")[1].startswith("ami-")
    assert result["duration"] < 10
    assert aws_resources(moto) == before_aws and gce_resources(gce) == before_gce
    assert docker_resources(bake_id) == (0, 0)
