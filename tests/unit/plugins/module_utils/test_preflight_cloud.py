"""The cloud part of the preflight, with fake clouds: each check failing on its own, credentials that fail
stopping the target's other checks, bounded waits, shared answers asked once, and no secret in any result."""

from __future__ import annotations

import copy
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.bakery.images.plugins.module_utils import (
    _aws,
    _gcp,
    _plan,
    _preflight,
    _preflight_cloud,
)
from ansible_collections.bakery.images.plugins.module_utils._preflight_cloud import Cloud
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError

REPO = Path(__file__).resolve().parents[4]
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "AKIAPREFLIGHTTEST0001"
VARIABLES = {"ami_access_key": ACCESS_KEY, "ami_secret_key": SECRET_KEY}
FILTER = {"owners": ["amazon"], "name": "debian-12-*", "most_recent": True}
IMAGE = {"ImageId": "ami-0aaaaaaaaaaaaaaa1", "Name": "debian-12-amd64", "CreationDate": "2026-11-01"}
REGIONS = [
    {"RegionName": "us-east-1", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "eu-west-1", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "eu-west-2", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "ap-east-1", "OptInStatus": "not-opted-in"},
]


class FakeAws:
    """The AWS of the tests: answers by (service, operation), an AwsError where told, every call recorded."""

    def __init__(self, fail=None, delay=0.0, images=(IMAGE,), parameters=None):
        self.fail = dict(fail or {})  # operation -> AwsError
        self.delay = delay
        self.images = list(images)
        self.parameters = dict(parameters or {"/aws/service/debian/12": IMAGE["ImageId"]})
        self.calls = []
        self.made = []
        self.lock = threading.Lock()

    def __call__(self, params):
        """The factory the preflight calls with ami_bake's parameters."""
        if bool(params.get("access_key")) != bool(params.get("secret_key")):
            raise BakeryError("give both access_key and secret_key, or neither (to use the standard chain)")
        self.made.append(dict(params))
        return FakeAwsClient(self, params["region"])


class FakeAwsClient:
    def __init__(self, fake, region):
        self.fake, self.region = fake, region

    def call(self, service, operation, region=None, **kwargs):
        fake = self.fake
        with fake.lock:
            fake.calls.append((service, operation, region or self.region, kwargs))
        if fake.delay:
            time.sleep(fake.delay)
        if operation in fake.fail:
            raise fake.fail[operation]
        if operation == "get_caller_identity":
            return {"Account": "123456789012", "Arn": "arn:aws:iam::123456789012:user/bakery"}
        if operation == "describe_regions":
            return {"Regions": REGIONS}
        if operation == "get_parameter":
            name = kwargs["Name"]
            if name not in fake.parameters:
                raise _aws.AwsError(
                    "ssm GetParameter in %s failed: ParameterNotFound: Parameter %s not found."
                    % (self.region, name),
                    code="ParameterNotFound",
                )
            return {"Parameter": {"Value": fake.parameters[name]}}
        if operation == "describe_images":
            if "ImageIds" in kwargs:
                return {"Images": [i for i in fake.images if i["ImageId"] in kwargs["ImageIds"]]}
            names = [f["Values"][0] for f in kwargs["Filters"] if f["Name"] == "name"]
            pattern = re.compile(names[0].replace("*", ".*")) if names else re.compile(".*")
            return {"Images": [i for i in fake.images if pattern.fullmatch(i["Name"])]}
        raise AssertionError("unexpected call %s %s" % (service, operation))

    def ec2(self, operation, region=None, **kwargs):
        return self.call("ec2", operation, region, **kwargs)


def ami_target(name="web", **options):
    base = {"region": "us-east-1", "name": "web", "source_ami_filter": dict(FILTER), "max_attempts": 5}
    base.update(options)
    return {"name": name, "type": "ami", "options": {k: v for k, v in base.items() if v is not None}}


def cloud(fake_aws=None, fake_gce=None, timeout=5.0, **kwargs):
    extra = {}
    if fake_aws is not None:
        extra["aws"] = fake_aws
    if fake_gce is not None:
        extra.update(
            gce_credentials=fake_gce.credentials, gce_token=fake_gce.token, gce_client=fake_gce.client
        )
    return Cloud(
        variables=kwargs.pop("variables", VARIABLES), env=kwargs.pop("env", {}), timeout=timeout, **extra
    )


def check(targets, the_cloud):
    return _preflight_cloud.check_targets(targets, the_cloud)


def lines(checks):
    return [(c.check, c.option, c.ok) for c in checks]


# ---------------------------------------------------------------------------------------------- AWS


def test_an_ami_target_that_can_be_built_passes_each_check():
    fake = FakeAws()
    result = check(
        [ami_target(regions=["eu-west-1", {"region": "eu-west-2", "kms_key_id": "k"}])], cloud(fake)
    )
    assert lines(result["web"]) == [
        ("credentials", "credentials (ami_access_key/ami_secret_key)", True),
        ("region", "ami.region=us-east-1", True),
        ("region", "ami.regions=eu-west-1", True),
        ("region", "ami.regions=eu-west-2", True),
        ("source_ami", "ami.source_ami_filter", True),
    ]
    assert result["web"][4].msg == "resolves to ami-0aaaaaaaaaaaaaaa1 (debian-12-amd64) in us-east-1"
    # the module's parameters, bounded: short timeouts, one retry; the role's credentials
    made = fake.made[0]
    assert (made["connect_timeout"], made["read_timeout"], made["max_attempts"]) == (5.0, 15.0, 1)
    assert (made["access_key"], made["secret_key"], made["session_token"]) == (ACCESS_KEY, SECRET_KEY, None)
    assert [c[1] for c in fake.calls] == ["get_caller_identity", "describe_regions", "describe_images"]


def test_rejected_credentials_are_one_problem_and_nothing_else_is_asked():
    error = _aws.AwsError(
        "sts GetCallerIdentity in us-east-1 failed: InvalidClientTokenId: The security token included in the "
        "request is invalid.",
        code="InvalidClientTokenId",
    )
    fake = FakeAws(fail={"get_caller_identity": error})
    result = check([ami_target(regions=["mars-north-9"], source_ami="ami-0bbbbbbbbbbbbbbb2")], cloud(fake))
    assert lines(result["web"]) == [("credentials", "credentials (ami_access_key/ami_secret_key)", False)]
    msg = result["web"][0].msg
    assert msg.startswith("AWS does not accept the credentials (sts GetCallerIdentity in us-east-1 failed: ")
    assert "ami_access_key/ami_secret_key" in msg and "AWS_PROFILE" in msg
    assert [c[1] for c in fake.calls] == ["get_caller_identity"]


def test_no_credentials_anywhere_name_where_they_are_looked_for():
    error = _aws.AwsError("no AWS credentials: ...", code="NoCredentials")
    fake = FakeAws(fail={"get_caller_identity": error})
    result = check([ami_target(profile=None)], cloud(fake, variables={}))
    (only,) = result["web"]
    assert (only.option, only.ok) == (
        "credentials (the standard chain: environment, ~/.aws, instance role)",
        False,
    )
    assert only.msg.startswith("no AWS credentials were found; give valid keys in the role variables")
    # a profile is named as the option
    result = check(
        [ami_target(profile="images")], cloud(FakeAws(fail={"get_caller_identity": error}), variables={})
    )
    assert result["web"][0].option == "ami.profile=images"


def test_half_a_key_pair_is_a_credentials_problem():
    result = check([ami_target()], cloud(FakeAws(), variables={"ami_access_key": ACCESS_KEY}))
    (only,) = result["web"]
    assert only.check == "credentials" and not only.ok
    assert "give both access_key and secret_key" in only.msg


def test_an_unknown_region_skips_the_source_ami_and_says_what_to_use():
    fake = FakeAws()
    result = check([ami_target(region="eu-west-9", regions=["ap-east-1", "venus-1"])], cloud(fake))
    problems = [(c.option, c.msg) for c in result["web"] if not c.ok]
    assert problems == [
        (
            "ami.region=eu-west-9",
            "AWS has no region eu-west-9; did you mean eu-west-1 or eu-west-2? use one of the 4 regions aws ec2 "
            "describe-regions --all-regions lists",
        ),
        (
            "ami.regions=ap-east-1",
            "region ap-east-1 is not enabled for this account; enable it (aws account enable-region --region-name "
            "ap-east-1) or choose another",
        ),
        (
            "ami.regions=venus-1",
            "AWS has no region venus-1; use one of the 4 regions aws ec2 describe-regions "
            "--all-regions lists",
        ),
    ]
    # asked where an endpoint exists (eu-west-9 has none), and no source AMI was looked up in a region that is not
    assert [c[1:3] for c in fake.calls] == [
        ("get_caller_identity", "us-east-1"),
        ("describe_regions", "us-east-1"),
    ]


def test_an_unknown_home_region_is_asked_about_in_us_east_1():
    assert _preflight_cloud.anchor_region("mars-north-9") == "us-east-1"
    assert _preflight_cloud.anchor_region("eu-central-1") == "eu-central-1"
    assert _preflight_cloud.anchor_region("cn-north-1") == "cn-north-1"


@pytest.mark.parametrize(
    ("options", "option", "starts"),
    [
        (
            {"source_ami_filter": None, "source_ami": "ami-0ccccccccccccccc3"},
            "ami.source_ami=ami-0ccccccccccccccc3",
            "source AMI ami-0ccccccccccccccc3 does not exist in us-east-1; give the id of an AMI that exists",
        ),
        (
            {"source_ami_filter": {"owners": ["self"], "name": "nothing-*"}},
            "ami.source_ami_filter",
            "no source AMI matches the filter (owners self, name nothing-*, architecture any) in us-east-1; widen",
        ),
        (
            {"source_ami_filter": None, "source_ami_ssm_parameter": "/bakery/missing"},
            "ami.source_ami_ssm_parameter=/bakery/missing",
            "ssm GetParameter in us-east-1 failed: ParameterNotFound: Parameter /bakery/missing not found.; name an",
        ),
    ],
)
def test_a_source_ami_that_does_not_resolve(options, option, starts):
    result = check([ami_target(**options)], cloud(FakeAws()))
    problems = [c for c in result["web"] if not c.ok]
    assert [(c.check, c.option) for c in problems] == [("source_ami", option)]
    assert problems[0].msg.startswith(starts), problems[0].msg


def test_a_source_ami_by_ssm_parameter_and_an_upload_without_one():
    result = check(
        [ami_target(source_ami_filter=None, source_ami_ssm_parameter="/aws/service/debian/12")],
        cloud(FakeAws()),
    )
    assert (
        result["web"][-1].ok
        and result["web"][-1].option == "ami.source_ami_ssm_parameter=/aws/service/debian/12"
    )
    fake = FakeAws()
    result = check([ami_target(source_ami_filter=None, source="disk")], cloud(fake))
    assert [c.check for c in result["web"]] == ["credentials", "region"]
    assert "describe_images" not in [c[1] for c in fake.calls]


def test_an_endpoint_that_does_not_answer_names_the_endpoint_once():
    error = _aws.AwsError(
        'sts GetCallerIdentity in us-east-1 failed: Could not connect to the endpoint URL: "http://127.0.0.1:9/"',
        code="EndpointConnectionError",
    )
    result = check(
        [ami_target(endpoint_url="http://127.0.0.1:9")], cloud(FakeAws(fail={"get_caller_identity": error}))
    )
    assert lines(result["web"]) == [("credentials", "ami.endpoint_url=http://127.0.0.1:9", False)]
    assert "check that endpoint_url answers" in result["web"][0].msg


def test_targets_of_one_account_share_its_answers_and_run_at_once():
    fake = FakeAws(delay=0.2)
    targets = [ami_target("a"), ami_target("b"), ami_target("c", region="eu-west-1")]
    started = time.monotonic()
    result = check(targets, cloud(fake))
    seconds = time.monotonic() - started
    assert all(c.ok for checks in result.values() for c in checks), result
    operations = [(c[1], c[2]) for c in fake.calls]
    # one identity and one region list per region asked in; the source AMIs in parallel
    assert sorted(operations) == sorted(
        [
            ("get_caller_identity", "us-east-1"),
            ("get_caller_identity", "eu-west-1"),
            ("describe_regions", "us-east-1"),
            ("describe_regions", "eu-west-1"),
            ("describe_images", "us-east-1"),
            ("describe_images", "us-east-1"),
            ("describe_images", "eu-west-1"),
        ]
    )
    assert seconds < 7 * 0.2, "the targets were not checked at once (%.2f s)" % seconds


def test_a_cloud_that_does_not_answer_is_given_up_after_the_deadline():
    fake = FakeAws(delay=5)
    the_cloud = cloud(fake, timeout=0.1)
    started = time.monotonic()
    result = check([ami_target(endpoint_url="http://127.0.0.1:1")], the_cloud)
    assert time.monotonic() - started < the_cloud.deadline() + 0.5
    assert lines(result["web"]) == [("cloud", "ami.endpoint_url=http://127.0.0.1:1", False)]
    assert result["web"][0].msg.startswith("the cloud checks did not finish within 0.6 s")


def test_the_aws_clients_are_bounded():
    aws = _aws.Aws(
        {
            "region": "us-east-1",
            "access_key": "a",
            "secret_key": "b",
            "max_attempts": 1,
            "connect_timeout": 2,
            "read_timeout": 6,
        }
    )
    config = aws.client("sts").meta.config
    # botocore's max_attempts counts the retries: one call and one retry
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (2, 6, 2)
    # the modules' clients keep botocore's defaults
    default = (
        _aws.Aws({"region": "us-east-1", "access_key": "a", "secret_key": "b"}).client("sts").meta.config
    )
    assert (default.connect_timeout, default.read_timeout) == (60, 60)


# ---------------------------------------------------------------------------------------------- GCE


class FakeGce:
    """Credentials, token endpoint and API of the tests; *zones*, *images*, *buckets* say what exists."""

    def __init__(self, token_error=None, status=None, zones=None, images=None, buckets=None):
        self.token_error = token_error
        self.status = dict(status or {})  # path part -> HTTP status the API answers with
        self.zones = {"europe-west1-b": "UP"} if zones is None else zones
        self.images = {"projects/debian-cloud/global/images/family/debian-12": {"name": "debian-12-v1"}}
        self.images.update(images or {})
        self.buckets = {"uploads": list(_gcp.BUCKET_PERMISSIONS)} if buckets is None else buckets
        self.paths = []
        self.tokens = 0
        self.params = None

    def credentials(self, params):
        self.params = dict(params)
        return _gcp.credentials(params) if params.get("service_account_file") == "/missing.json" else object()

    def token(self, creds, timeout):
        self.tokens += 1
        if self.token_error:
            raise BakeryError(self.token_error)

    def client(self, params, creds):
        return FakeGceClient(self, params["project"])


class FakeGceClient:
    storage = "https://storage.example"

    def __init__(self, fake, project):
        self.fake, self.project = fake, project

    def _status(self, path):
        for part, status in self.fake.status.items():
            if part in path:
                raise _gcp.GcpError("GET %s failed: HTTP %d: denied" % (path, status), status=status)

    def compute(self, method, path, what="", missing_ok=False, **kwargs):
        self.fake.paths.append(path)
        self._status(path)
        if "/zones/" in path:
            zone = path.rsplit("/", 1)[-1]
            return {"name": zone, "status": self.fake.zones[zone]} if zone in self.fake.zones else None
        return self.fake.images.get(path)

    def request(self, method, url, params=None, missing_ok=False, what="", **kwargs):
        self.fake.paths.append(url)
        self._status(url)
        bucket = url.split("/b/")[1].split("/")[0]
        if bucket not in self.fake.buckets:
            return None
        granted = [p for p in params["permissions"] if p in self.fake.buckets[bucket]]
        return FakeResponse({"permissions": granted})


class FakeResponse:
    def __init__(self, body):
        self.body, self.content = body, b"{}"

    def json(self):
        return self.body


def gce_target(name="vm", **options):
    base = {
        "project": "bakery-test",
        "zone": "europe-west1-b",
        "name": "web",
        "source_image_family": "debian-12",
        "source_image_project": "debian-cloud",
        "service_account_file": "/keys/sa.json",
    }
    base.update(options)
    return {"name": name, "type": "gce", "options": {k: v for k, v in base.items() if v is not None}}


def test_a_gce_target_that_can_be_built_passes_each_check():
    fake = FakeGce()
    result = check([gce_target(bucket="uploads")], cloud(fake_gce=fake))
    assert lines(result["vm"]) == [
        ("credentials", "gce.service_account_file=/keys/sa.json", True),
        ("zone", "gce.zone=europe-west1-b", True),
        ("source_image", "gce.source_image_family=debian-12 (project debian-cloud)", True),
        ("bucket", "gce.bucket=uploads", True),
    ]
    assert "nothing written" in result["vm"][3].msg
    # the module's parameters and defaults, bounded: one retry, a short pause, the preflight's timeout
    params = fake.params
    assert (params["retries"], params["retry_delay"], params["request_timeout"]) == (1, 0.5, 5.0)
    assert params["api_endpoint"] == _gcp.DEFAULT_API and params["storage_endpoint"] == _gcp.DEFAULT_STORAGE


def test_credentials_without_a_token_are_one_problem_and_nothing_else_is_asked():
    fake = FakeGce(
        token_error="the token endpoint gave no access token: invalid_grant: Invalid JWT Signature."
    )
    result = check([gce_target(zone="mars-north9-z", bucket="missing")], cloud(fake_gce=fake))
    assert lines(result["vm"]) == [("credentials", "gce.service_account_file=/keys/sa.json", False)]
    assert result["vm"][0].msg.startswith("the token endpoint gave no access token: invalid_grant")
    assert "give a service account key that Google accepts" in result["vm"][0].msg
    assert fake.paths == []


def test_a_key_file_that_is_not_there_is_named():
    fake = FakeGce()
    result = check([gce_target(service_account_file="/missing.json")], cloud(fake_gce=fake))
    (only,) = result["vm"]
    assert only.option == "gce.service_account_file=/missing.json"
    assert only.msg.startswith("cannot read service_account_file /missing.json: No such file or directory")
    assert fake.tokens == 0


def test_an_access_token_google_refuses_is_one_problem():
    fake = FakeGce(status={"/zones/": 401})
    env = {"GCP_ACCESS_TOKEN": "ya29.not-valid-any-more"}
    result = check([gce_target(service_account_file=None, bucket="uploads")], cloud(fake_gce=fake, env=env))
    assert lines(result["vm"]) == [("credentials", "credentials (GCP_ACCESS_TOKEN)", False)]
    assert result["vm"][0].msg.startswith("Google does not accept the credentials")
    assert fake.tokens == 0  # a given token cannot be refreshed: the first call tells
    assert fake.params["access_token"] == "ya29.not-valid-any-more"


def test_an_unknown_zone_an_unknown_image_and_a_missing_bucket_are_each_named():
    fake = FakeGce(buckets={})
    result = check(
        [gce_target(zone="mars-north9-z", source_image_family="nope", bucket="missing")], cloud(fake_gce=fake)
    )
    problems = [(c.check, c.option) for c in result["vm"] if not c.ok]
    assert problems == [
        ("zone", "gce.zone=mars-north9-z"),
        ("source_image", "gce.source_image_family=nope (project debian-cloud)"),
        ("bucket", "gce.bucket=missing"),
    ]
    msgs = [c.msg for c in result["vm"] if not c.ok]
    assert msgs[0].startswith("Compute Engine has no zone mars-north9-z in project bakery-test; choose one")
    assert msgs[1].startswith(
        "source image projects/debian-cloud/global/images/family/nope not found; name an"
    )
    assert msgs[2].startswith(
        "bucket gs://missing does not exist (or these credentials cannot see it); create it"
    )


def test_a_zone_that_is_down_and_a_bucket_the_credentials_cannot_write():
    fake = FakeGce(zones={"europe-west1-b": "DOWN"}, buckets={"uploads": ["storage.objects.list"]})
    result = check([gce_target(bucket="uploads", source="disk")], cloud(fake_gce=fake))
    problems = [c.msg for c in result["vm"] if not c.ok]
    assert problems == [
        "zone europe-west1-b is DOWN; choose a zone that is UP",
        "the credentials lack storage.objects.create, storage.objects.delete on gs://uploads (the disk is uploaded "
        "there, then deleted); grant them roles/storage.objectAdmin on the bucket",
    ]
    # an import has no source image to look up
    assert not any("images" in path for path in fake.paths)


def test_the_environment_fallbacks_of_the_module():
    params = _gcp.target_params({"project": "p", "zone": ""}, {"GCP_SERVICE_ACCOUNT_FILE": "/k.json"})
    assert params["service_account_file"] == "/k.json" and params["zone"] is None
    assert params["retries"] == 5 and params["api_endpoint"] == _gcp.DEFAULT_API
    own = _gcp.target_params(
        {"project": "p", "service_account_file": "/own.json"}, {"GCP_SERVICE_ACCOUNT_FILE": "/k"}
    )
    assert own["service_account_file"] == "/own.json"
    assert (
        _preflight_cloud.gce_credentials_option(params, {}, {})
        == "credentials (GCP_SERVICE_ACCOUNT_FILE=/k.json)"
    )


def test_the_token_request_is_bounded():
    seen = {}

    class Creds:
        def refresh(self, request):
            seen["timeout"] = request.keywords["timeout"]

    _gcp.fetch_token(Creds(), 2.5)
    assert seen == {"timeout": 2.5}


# ---------------------------------------------------------------------------------------------- the roles' parameters


def _role_arguments(role, prefix):
    """What role *role* passes its modules: {parameter: option} for every "{{ <prefix>.<option> ... }}"."""
    found = {}
    texts = [(REPO / "roles" / role / "vars" / "main.yml").read_text()]
    texts.append((REPO / "roles" / role / "tasks" / "launch.yml").read_text())
    for text in texts:
        for match in re.finditer(r"^\s+(\w+): \"\{\{ %s\.(\w+)" % re.escape(prefix), text, re.M):
            found[match.group(1)] = match.group(2)
    return found


def test_the_ami_parameters_are_those_the_role_passes():
    passed = _role_arguments("ami", "ami_options")
    for key in _aws.TARGET_OPTIONS:
        assert passed.get(key) == key, "role ami passes %s from %s" % (key, passed.get(key))
    role_vars = yaml.safe_load((REPO / "roles" / "ami" / "vars" / "main.yml").read_text())
    arguments = role_vars["ami_module_arguments"]
    for variable, key in _aws.CREDENTIAL_VARIABLES.items():
        assert arguments[key] == "{{ %s | default(none) }}" % variable
    bake_tasks = (REPO / "roles" / "bake" / "tasks" / "main.yml").read_text()
    for variable in _aws.CREDENTIAL_VARIABLES:
        assert '%s: "{{ %s | default(none) }}"' % (variable, variable) in bake_tasks


def test_the_gce_parameters_are_those_the_role_passes():
    passed = _role_arguments("gce", "bakery_target.options")
    for key in _gcp.TARGET_OPTIONS:
        assert passed.get(key) == key, "role gce passes %s from %s" % (key, passed.get(key))


# ---------------------------------------------------------------------------------------------- secrets and the plan

BAKE = {
    "name": "web",
    "output_dir": "out",
    "provisioners": [{"shell": {"inline": ["true"]}}],
    "targets": [
        {
            "name": "ec2",
            "ami": {
                "region": "us-east-1",
                "name": "web",
                "source_ami_filter": FILTER,
                "endpoint_url": "https://user:pa55-w0rd-secret@aws.example",
            },
        },
        {"name": "vm", "gce": dict(gce_target()["options"])},
    ],
}


def plan_targets():
    # an endpoint that holds a password: a secret option, as a role's argument spec can mark one (no_log)
    return _plan.make_plan(
        BAKE,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: "digest",
        cwd="/work",
        bake_id="b1",
        secrets_of=lambda kind: [["endpoint_url"]] if kind == "ami" else [],
    )["targets"]


def test_secret_options_reach_the_checks_and_no_secret_reaches_the_result():
    targets = plan_targets()
    assert targets[0]["options"]["endpoint_url"] == NO_LOG_MASK  # the plan masks it
    leaky = _aws.AwsError(
        "sts GetCallerIdentity in us-east-1 failed: InvalidClientTokenId: key %s secret %s at %s"
        % (ACCESS_KEY, SECRET_KEY, "https://user:pa55-w0rd-secret@aws.example"),
        code="InvalidClientTokenId",
    )
    fake_aws, fake_gce = FakeAws(fail={"get_caller_identity": leaky}), FakeGce()
    the_cloud = cloud(fake_aws, fake_gce)
    result = _preflight.run(
        copy.deepcopy(targets), host=_preflight.Host(env={}), bake=BAKE, variables=VARIABLES, cloud=the_cloud
    )
    # the checks got the real values
    assert fake_aws.made[0]["endpoint_url"] == "https://user:pa55-w0rd-secret@aws.example"
    assert fake_aws.made[0]["secret_key"] == SECRET_KEY
    # the result holds none of them, even where an error message quoted them
    text = repr(result)
    for secret in (ACCESS_KEY, SECRET_KEY, "pa55-w0rd-secret"):
        assert secret not in text
    assert result["failed"] and len(result["problems"]) == 1
    assert result["problems"][0].startswith(
        "target ec2 (ami), credentials (ami_access_key/ami_secret_key): AWS does not accept the credentials"
    )
    assert NO_LOG_MASK in result["problems"][0]
    # the gce target passed, and --check's summary lists each of its cloud checks
    assert [line for line in result["summary"] if line.startswith("vm (gce)")] == [
        "vm (gce) credentials ok: an access token was obtained",
        "vm (gce) zone ok: zone europe-west1-b exists and is up",
        "vm (gce) source_image ok: resolves to debian-12-v1",
    ]
    # the plan's targets were not changed
    assert targets[0]["options"]["endpoint_url"] == NO_LOG_MASK


def test_a_target_with_secrets_that_is_not_in_the_definition_fails_clearly():
    targets = plan_targets()
    bake = dict(BAKE, targets=[BAKE["targets"][1]])
    with pytest.raises(BakeryError, match="target 'ec2' is not in the bake definition"):
        _preflight.run(targets, host=_preflight.Host(env={}), bake=bake, cloud=cloud(FakeAws(), FakeGce()))


def test_secret_values_and_scrub():
    values = _preflight.secret_values({"a": "abcdef", "b": None, "c": "ab"}, [{"x": {"y": "abcdefgh"}}])
    assert values == ["abcdefgh", "abcdef"]  # longest first; a short text is not scrubbed all over
    assert _preflight.scrub({"m": ["key abcdefgh!", 3]}, values) == {"m": ["key %s!" % NO_LOG_MASK, 3]}


def test_with_secrets_puts_the_real_values_back():
    options = {"registry": {"url": "r", "password": NO_LOG_MASK}, "tags": ["a"]}
    merged = _plan.with_secrets(options, {"registry": {"password": "s3cret"}})
    assert merged == {"registry": {"url": "r", "password": "s3cret"}, "tags": ["a"]}
    assert options["registry"]["password"] == NO_LOG_MASK
