# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cloud part of the preflight: what the ami and gce targets of a bake need of their cloud, checked read-only.

* **ami**: the credentials are accepted (STS ``GetCallerIdentity``); ``region`` and every copy region of
  ``regions`` exist and are enabled (EC2 ``DescribeRegions``); an instance bake's source AMI resolves, by id, filter
  or SSM parameter, as ``ami_bake`` resolves it (:func:`_aws.resolve_source_ami`). An ami target has no bucket: its
  uploads go through the EBS direct APIs.
* **gce**: the credentials yield an access token; ``zone`` exists and is up (``zones.get``); an instance bake's
  ``source_image`` or ``source_image_family`` resolves as ``gce_image_bake`` resolves it; ``bucket`` exists and the
  credentials may create, delete and list objects in it (Cloud Storage's ``testIamPermissions``, which writes
  nothing).

The parameters are those the roles hand the modules (:func:`_aws.target_params`, :func:`_gcp.target_params`).
Credentials that fail make one problem, and that target's other cloud checks are skipped (they could only fail
for the same reason). Every call is bounded (the preflight's timeout to connect, three times that to read, at
most one retry); the targets are checked at once, each in a thread (what they share, such as the regions of one
account, is asked once), and one that has not finished after :meth:`Cloud.deadline` seconds fails with that.
Nothing is created. No message holds a secret: the results are scrubbed of the values of the secret options
and credential variables (``_preflight.scrub``).
"""

from __future__ import annotations

import difflib
import functools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils import _aws, _gcp
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# botocore's retries max_attempts for the preflight's AWS calls: it counts the retries (total_max_attempts is one
# more), so 1 is one call and at most one retry (standard mode)
AWS_RETRIES = 1
# retries per Compute Engine or Cloud Storage call in the preflight, and the longest pause before one
GCE_RETRIES = 1
GCE_RETRY_DELAY = 0.5
# AWS error codes that mean the credentials themselves are not accepted
AWS_CREDENTIAL_CODES = frozenset(
    (
        "NoCredentials",
        "PartialCredentialsError",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "AuthFailure",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidToken",
        "AccessDenied",
    )
)
# botocore's names for an endpoint that does not answer
AWS_UNREACHABLE = frozenset(
    ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError")
)


@dataclass
class Check:
    """One cloud check of one target: passed, or a problem (what is wrong; how to fix it)."""

    check: str
    option: str
    ok: bool
    msg: str


class _Problem(Exception):
    """A problem after which the target's other cloud checks could only fail for the same reason: they are skipped."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.msg)
        self.check = check


@dataclass
class Cloud:
    """What the cloud checks use: the role variables that hold credentials (``ami_access_key``, ...), the
    environment, the per-call timeout, and the ways to reach the clouds (the unit tests give fakes)."""

    variables: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0
    # ami_bake's parameters -> an _aws.Aws (call(service, operation, region, **kwargs), ec2(...), region)
    aws: Callable[[Mapping[str, Any]], Any] = _aws.Aws
    # gce_image_bake's parameters -> credentials
    gce_credentials: Callable[[Mapping[str, Any]], Any] = _gcp.credentials
    # (credentials, timeout) -> None once a token is there
    gce_token: Callable[[Any, float], None] = _gcp.fetch_token
    # (parameters, credentials) -> an _gcp.Client
    gce_client: Callable[[Mapping[str, Any], Any], Any] = _gcp.make_client

    # answers several targets share (same account, endpoint and region), asked once
    _answers: dict[tuple[Any, ...], tuple[bool, Any]] = field(default_factory=dict, repr=False)
    _locks: dict[tuple[Any, ...], threading.Lock] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def deadline(self) -> float:
        """Seconds all targets' checks may take together: a few bounded calls each, in parallel."""
        return 6 * self.timeout

    def read_timeout(self) -> float:
        """Seconds a call may wait for its answer (an emulator's first answer can take a few seconds)."""
        return 3 * self.timeout

    def once(self, key: tuple[Any, ...], ask: Callable[[], Any]) -> Any:
        """*ask()*'s answer (or its exception), asked once for all targets that share *key*."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._answers:
                try:
                    self._answers[key] = (True, ask())
                except Exception as exc:  # noqa: BLE001 - every target that shares the key gets it
                    self._answers[key] = (False, exc)
            ok, answer = self._answers[key]
        if not ok:
            raise answer
        return answer


# --------------------------------------------------------------------------- AWS


def aws_credentials_option(params: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """Where the credentials of an ami target come from, as ami_bake's session finds them (never their value)."""
    if params.get("access_key") or params.get("secret_key"):
        return "credentials (ami_access_key/ami_secret_key)"
    if params.get("profile"):
        return "ami.profile=%s" % params["profile"]
    if env.get("AWS_ACCESS_KEY_ID"):
        return "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    if env.get("AWS_PROFILE"):
        return "credentials (AWS_PROFILE=%s)" % env["AWS_PROFILE"]
    return "credentials (the standard chain: environment, ~/.aws, instance role)"


AWS_CREDENTIALS_FIX = (
    "give valid keys in the role variables ami_access_key/ami_secret_key (and ami_session_token), set ami.profile "
    "to a profile that has them, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for ansible-playbook"
)


_KNOWN_LOCK = threading.Lock()


def known_regions() -> frozenset[str]:
    """The EC2 regions of every partition in botocore's endpoint data (empty without botocore); read once, by
    one thread (reading it takes a while, and the targets' threads all ask at once)."""
    with _KNOWN_LOCK:
        return _known_regions()


@functools.lru_cache(maxsize=1)
def _known_regions() -> frozenset[str]:
    try:
        import botocore.session

        session = botocore.session.get_session()
        return frozenset(
            region
            for partition in session.get_available_partitions()
            for region in session.get_available_regions("ec2", partition)
        )
    except Exception:  # noqa: BLE001 - without botocore's endpoint data, every region is asked as it is
        return frozenset()


def anchor_region(home: str) -> str:
    """The region to ask STS and EC2 in: *home* when botocore knows it, else us-east-1 (an unknown region has
    no endpoint to ask; ``DescribeRegions`` there tells whether it exists)."""
    known = known_regions()
    return home if not known or home in known else "us-east-1"


def _aws_unreachable(params: Mapping[str, Any], region: str, exc: _aws.AwsError) -> tuple[str, str]:
    if params.get("endpoint_url"):
        return "ami.endpoint_url=%s" % params["endpoint_url"], (
            "%s; check that endpoint_url answers (it is used for every AWS call of the target)" % exc.msg
        )
    return (
        "ami.region=%s" % region,
        "%s; check the region name and this host's network access to AWS" % exc.msg,
    )


def _account_key(params: Mapping[str, Any], region: str, what: str) -> tuple[Any, ...]:
    keys = ("endpoint_url", "access_key", "secret_key", "session_token", "profile")
    return (what, region) + tuple(params.get(key) for key in keys)


def check_ami_credentials(aws: Any, params: Mapping[str, Any], region: str, cloud: Cloud) -> Check:
    option = aws_credentials_option(params, cloud.env)
    try:
        who = cloud.once(
            _account_key(params, region, "sts"), lambda: aws.call("sts", "get_caller_identity", region)
        )
    except _aws.AwsError as exc:
        if exc.code in AWS_UNREACHABLE:
            where, msg = _aws_unreachable(params, region, exc)
            raise _Problem(Check("credentials", where, False, msg)) from None
        if exc.code == "NoCredentials":
            msg = "no AWS credentials were found; %s" % AWS_CREDENTIALS_FIX
        elif exc.code in AWS_CREDENTIAL_CODES:
            msg = "AWS does not accept the credentials (%s); %s" % (exc.msg, AWS_CREDENTIALS_FIX)
        else:
            msg = "cannot check the credentials: %s; %s" % (exc.msg, AWS_CREDENTIALS_FIX)
        raise _Problem(Check("credentials", option, False, msg)) from None
    return Check("credentials", option, True, "AWS accepts them (account %s)" % who.get("Account"))


def check_ami_regions(
    aws: Any, params: Mapping[str, Any], copies: Sequence[str], anchor: str, cloud: Cloud
) -> list[Check]:
    """``region`` and the copy regions of ``regions``: each exists and is enabled for the account."""
    try:
        listed = cloud.once(
            _account_key(params, anchor, "regions"),
            lambda: aws.call("ec2", "describe_regions", anchor, AllRegions=True)["Regions"],
        )
    except _aws.AwsError as exc:
        if exc.code in AWS_UNREACHABLE:
            option, msg = _aws_unreachable(params, anchor, exc)
            raise _Problem(Check("region", option, False, msg)) from None
        raise _Problem(
            Check(
                "region",
                "ami.region=%s" % params["region"],
                False,
                "cannot list the regions: %s; let the credentials call ec2:DescribeRegions" % exc.msg,
            )
        ) from None
    status = {item["RegionName"]: item.get("OptInStatus") or "" for item in listed}
    checks = []
    for option, region in [("ami.region", params["region"])] + [("ami.regions", r) for r in copies]:
        shown = "%s=%s" % (option, region)
        if region not in status:
            near = sorted(difflib.get_close_matches(region, sorted(status), n=3, cutoff=0.7))
            msg = (
                "AWS has no region %s; %suse one of the %d regions aws ec2 describe-regions --all-regions lists"
                % (
                    region,
                    "did you mean %s? " % " or ".join(near) if near else "",
                    len(status),
                )
            )
            checks.append(Check("region", shown, False, msg))
        elif status[region] == "not-opted-in":
            msg = (
                "region %s is not enabled for this account; enable it (aws account enable-region --region-name %s) "
                "or choose another" % (region, region)
            )
            checks.append(Check("region", shown, False, msg))
        else:
            checks.append(Check("region", shown, True, "region %s exists and is enabled" % region))
    return checks


def _source_ami_option(params: Mapping[str, Any]) -> tuple[str, str]:
    """(option, how to fix it) of the source AMI an instance bake starts from."""
    region = params["region"]
    if (
        params.get("source_ami_ssm_parameter")
        and not params.get("source_ami")
        and not params.get("source_ami_filter")
    ):
        return (
            "ami.source_ami_ssm_parameter=%s" % params["source_ami_ssm_parameter"],
            "name an SSM parameter of %s that holds an AMI id (such as /aws/service/debian/release/12/latest/amd64)"
            % region,
        )
    if params.get("source_ami_filter") and not params.get("source_ami"):
        return (
            "ami.source_ami_filter",
            "widen the filter (owners, name pattern, architecture) to images that exist in %s" % region,
        )
    if params.get("source_ami"):
        return (
            "ami.source_ami=%s" % params["source_ami"],
            "give the id of an AMI that exists in %s (AMI ids differ per region)" % region,
        )
    return "ami.source_ami", "give one of source_ami, source_ami_filter and source_ami_ssm_parameter"


def check_source_ami(aws: Any, params: Mapping[str, Any]) -> Check:
    option, fix = _source_ami_option(params)
    try:
        image = _aws.resolve_source_ami(aws, params)
    except _aws.AwsError as exc:
        if exc.code in AWS_UNREACHABLE:
            where, msg = _aws_unreachable(params, params["region"], exc)
            return Check("source_ami", where, False, msg)
        return Check("source_ami", option, False, "%s; %s" % (exc.msg, fix))
    except BakeryError as exc:
        # the message of several matches already says how to narrow them
        return Check(
            "source_ami", option, False, exc.msg if "most_recent" in exc.msg else "%s; %s" % (exc.msg, fix)
        )
    return Check(
        "source_ami",
        option,
        True,
        "resolves to %s (%s) in %s" % (image["ImageId"], image.get("Name"), params["region"]),
    )


def check_ami(target: Mapping[str, Any], cloud: Cloud, out: list[Check]) -> None:
    """Every cloud check of an ami target, appended to *out* as they finish."""
    options = target.get("options") or {}
    params = _aws.target_params(options, cloud.variables)
    params.update(
        max_attempts=AWS_RETRIES,
        connect_timeout=cloud.timeout,
        read_timeout=cloud.read_timeout(),
    )
    try:
        copies = [entry["region"] for entry in _aws.copy_targets(params)]
    except BakeryError as exc:
        out.append(Check("region", "ami.regions", False, exc.msg))
        copies = []
    anchor = anchor_region(params["region"])
    try:
        aws = cloud.aws(params)
        out.append(check_ami_credentials(aws, params, anchor, cloud))
        regions = check_ami_regions(aws, params, copies, anchor, cloud)
    except _Problem as problem:
        out.append(problem.check)
        return
    except BakeryError as exc:  # no client or no session (a profile that does not exist, say)
        option = aws_credentials_option(params, cloud.env)
        out.append(Check("credentials", option, False, "%s; %s" % (exc.msg, AWS_CREDENTIALS_FIX)))
        return
    out.extend(regions)
    if not regions[0].ok:  # the source AMI is looked up in the home region
        return
    if not options.get("source"):  # an instance bake (an upload has no source AMI)
        out.append(check_source_ami(aws, params))


# --------------------------------------------------------------------------- GCE


def gce_credentials_option(
    params: Mapping[str, Any], options: Mapping[str, Any], env: Mapping[str, str]
) -> str:
    """Where the credentials of a gce target come from, as gce_image_bake finds them (never their value)."""
    kind = params.get("auth_kind")
    prefix = "gce.auth_kind=%s, " % kind if kind else ""
    if kind in (None, "accesstoken") and params.get("access_token"):
        return prefix + "credentials (%s)" % _gcp.ENV_FALLBACKS["access_token"]
    if kind in (None, "serviceaccount"):
        if options.get("service_account_file"):
            return prefix + "gce.service_account_file=%s" % options["service_account_file"]
        if params.get("service_account_file"):
            return prefix + "credentials (%s=%s)" % (
                _gcp.ENV_FALLBACKS["service_account_file"],
                params["service_account_file"],
            )
        if params.get("service_account_contents"):
            return prefix + "credentials (%s)" % _gcp.ENV_FALLBACKS["service_account_contents"]
    if kind:
        return "gce.auth_kind=%s" % kind
    return "gce.auth_kind (unset: application default credentials)"


GCE_CREDENTIALS_FIX = (
    "give a service account key that Google accepts (service_account_file, or GCP_SERVICE_ACCOUNT_FILE / "
    "GCP_SERVICE_ACCOUNT_CONTENTS), a valid GCP_ACCESS_TOKEN, or application default credentials "
    "(gcloud auth application-default login)"
)


def _stop_on(exc: _gcp.GcpError, params: Mapping[str, Any], cred_option: str) -> None:
    """Raise :class:`_Problem` when *exc* ends the target's checks: an endpoint that does not answer, or
    credentials Compute Engine or Cloud Storage do not accept (an access token is only tried by a call)."""
    if exc.status == 401:
        msg = "Google does not accept the credentials (%s); %s" % (exc.msg, GCE_CREDENTIALS_FIX)
        raise _Problem(Check("credentials", cred_option, False, msg))
    if exc.status or "no answer from" not in exc.msg:
        return
    option = "gce.api_endpoint=%s" % params["api_endpoint"]
    storage, api = params["storage_endpoint"].rstrip("/"), params["api_endpoint"].rstrip("/")
    if storage in exc.msg and api not in exc.msg:
        option = "gce.storage_endpoint=%s" % params["storage_endpoint"]
    raise _Problem(Check("endpoint", option, False, exc.msg))


def check_zone(client: Any, params: Mapping[str, Any], cred_option: str) -> Check:
    zone, project = params["zone"], params["project"]
    option = "gce.zone=%s" % zone
    try:
        found = _gcp.get_zone(client, zone)
    except _gcp.GcpError as exc:
        _stop_on(exc, params, cred_option)
        raise _Problem(
            Check(
                "zone",
                "gce.project=%s" % project,
                False,
                "cannot look up zone %s: %s; check the project id and that the credentials may use Compute Engine "
                "in it (roles/compute.instanceAdmin.v1)" % (zone, exc.msg),
            )
        ) from None
    if found is None:
        return Check(
            "zone",
            option,
            False,
            "Compute Engine has no zone %s in project %s; choose one of gcloud compute zones list --project %s "
            "(and check that project %s exists)" % (zone, project, project, project),
        )
    if found.get("status") not in (None, "UP"):
        return Check(
            "zone", option, False, "zone %s is %s; choose a zone that is UP" % (zone, found["status"])
        )
    return Check("zone", option, True, "zone %s exists and is up" % zone)


def _source_image_option(params: Mapping[str, Any]) -> tuple[str, str]:
    project = params.get("source_image_project") or params["project"]
    where = " (project %s)" % project
    if params.get("source_image") and not params.get("source_image_family"):
        option = "gce.source_image=%s" % params["source_image"]
    elif params.get("source_image_family") and not params.get("source_image"):
        option = "gce.source_image_family=%s" % params["source_image_family"]
    else:
        return "gce.source_image", "give one of source_image and source_image_family"
    return option + where, (
        "name an image or image family that exists in project %s (gcloud compute images list --project %s), or set "
        "source_image_project to the project that holds it (debian-cloud, ubuntu-os-cloud, ...)"
        % (project, project)
    )


def check_source_image(client: Any, params: Mapping[str, Any], cred_option: str) -> Check:
    option, fix = _source_image_option(params)
    if option == "gce.source_image":
        return Check("source_image", option, False, fix)
    try:
        image = _gcp.Images(client, params).source_image()
    except _gcp.GcpError as exc:
        _stop_on(exc, params, cred_option)
        return Check("source_image", option, False, "%s; %s" % (exc.msg, fix))
    except BakeryError as exc:
        return Check("source_image", option, False, "%s; %s" % (exc.msg, fix))
    return Check("source_image", option, True, "resolves to %s" % image.get("name"))


def check_bucket(client: Any, params: Mapping[str, Any], cred_option: str) -> Check:
    bucket = params["bucket"]
    option = "gce.bucket=%s" % bucket
    try:
        missing = _gcp.missing_bucket_permissions(client, bucket)
    except _gcp.GcpError as exc:
        _stop_on(exc, params, cred_option)
        return Check(
            "bucket",
            option,
            False,
            "cannot check bucket %s: %s; check its name and the credentials" % (bucket, exc.msg),
        )
    if missing is None:
        return Check(
            "bucket",
            option,
            False,
            "bucket gs://%s does not exist (or these credentials cannot see it); create it (gcloud storage buckets "
            "create gs://%s --project %s) or name an existing one" % (bucket, bucket, params["project"]),
        )
    if missing:
        return Check(
            "bucket",
            option,
            False,
            "the credentials lack %s on gs://%s (the disk is uploaded there, then deleted); grant them "
            "roles/storage.objectAdmin on the bucket" % (", ".join(missing), bucket),
        )
    return Check(
        "bucket",
        option,
        True,
        "gs://%s exists and the credentials may create, delete and list objects in it (asked with testIamPermissions, "
        "nothing written)" % bucket,
    )


def check_gce(target: Mapping[str, Any], cloud: Cloud, out: list[Check]) -> None:
    """Every cloud check of a gce target, appended to *out* as they finish."""
    options = target.get("options") or {}
    params = _gcp.target_params(options, cloud.env)
    params.update(
        retries=min(int(params.get("retries") or 0), GCE_RETRIES),
        retry_delay=min(float(params.get("retry_delay") or 0), GCE_RETRY_DELAY),
        request_timeout=cloud.timeout,
    )
    cred_option = gce_credentials_option(params, options, cloud.env)
    if params.get("service_account_file") and params.get("service_account_contents"):
        out.append(
            Check(
                "credentials",
                cred_option,
                False,
                "gce_image_bake takes service_account_file or service_account_contents, not both; unset one",
            )
        )
        return
    try:
        creds = cloud.gce_credentials(params)
        kind = params.get("auth_kind") or ("accesstoken" if params.get("access_token") else "")
        if kind != "accesstoken":  # a given access token cannot be refreshed: the first call tells
            cloud.gce_token(creds, cloud.timeout)
        client = cloud.gce_client(params, creds)
    except BakeryError as exc:
        out.append(Check("credentials", cred_option, False, "%s; %s" % (exc.msg, GCE_CREDENTIALS_FIX)))
        return
    token = Check("credentials", cred_option, True, "an access token was obtained")
    out.append(token)
    try:
        if params.get("zone"):
            out.append(check_zone(client, params, cred_option))
        if not options.get("source"):  # an instance bake (an import has no source image)
            out.append(check_source_image(client, params, cred_option))
        if params.get("bucket"):
            out.append(check_bucket(client, params, cred_option))
    except _Problem as problem:
        if problem.check.check == "credentials":  # a token, but not one Google accepts: one problem, not two
            out.remove(token)
        out.append(problem.check)


# --------------------------------------------------------------------------- OpenStack


def check_openstack(target: Mapping[str, Any], cloud: Cloud, out: list[Check]) -> None:
    """The cloud checks of an openstack target: a connection is made (clouds.yaml, auth, OS_* variables), and the
    image service answers a list of one image (credentials accepted, endpoint reachable)."""
    from ansible_collections.bakery.images.plugins.module_utils import _openstack

    options = dict(target.get("options") or {})
    params = {key: options.get(key) for key in _openstack.CONNECTION_OPTIONS}
    params["timeout"] = max(1, int(cloud.read_timeout()))
    option = (
        "openstack.cloud=%s" % options["cloud"]
        if options.get("cloud")
        else "openstack.image_endpoint=%s" % options["image_endpoint"]
        if options.get("image_endpoint")
        else "openstack.auth"
    )
    ok, msg = _openstack.preflight(params)
    if not ok:
        msg += (
            "; check the cloud's entry in clouds.yaml (cloud), the auth dictionary or the OS_* variables, and the "
            "image endpoint"
        )
    out.append(Check("credentials", option, ok, msg))


# --------------------------------------------------------------------------- DigitalOcean


def check_digitalocean(target: Mapping[str, Any], cloud: Cloud, out: list[Check]) -> None:
    """The cloud checks of a digitalocean target: the token is accepted (the account answers) and the Spaces bucket
    the disk goes to can be listed with the Spaces keys; an instance bake's base image exists in its region."""
    from ansible_collections.bakery.images.plugins.module_utils import _digitalocean

    options = dict(target.get("options") or {})
    params = {key: options.get(key) for key in (*_digitalocean.CONNECTION_OPTIONS, "region")}
    params["timeout"] = max(1, int(cloud.read_timeout()))
    ok, msg = _digitalocean.preflight(params)
    if not ok:
        msg += "; check the token (or DIGITALOCEAN_TOKEN), api_url, the Spaces bucket and the Spaces keys"
    out.append(Check("credentials", _endpoint_option(target), ok, msg))
    if ok and options.get("base_image") and not options.get("source"):
        found, why = _digitalocean.preflight_base_image(dict(params, base_image=options["base_image"]))
        out.append(Check("base image", "digitalocean.base_image=%s" % options["base_image"], found, why))


# --------------------------------------------------------------------------- all targets

CHECKERS: dict[str, Callable[[Mapping[str, Any], Cloud, list[Check]], None]] = {
    "ami": check_ami,
    "gce": check_gce,
    "openstack": check_openstack,
    "digitalocean": check_digitalocean,
}


def _endpoint_option(target: Mapping[str, Any]) -> str:
    options = target.get("options") or {}
    if target["type"] == "ami":
        if options.get("endpoint_url"):
            return "ami.endpoint_url=%s" % options["endpoint_url"]
        return "ami.region=%s" % options.get("region")
    if target["type"] == "digitalocean":
        return "digitalocean.api_url=%s" % (options.get("api_url") or "https://api.digitalocean.com")
    if target["type"] == "openstack":
        return "openstack.image_endpoint=%s" % (options.get("image_endpoint") or "(service catalog)")
    return "gce.api_endpoint=%s" % (options.get("api_endpoint") or _gcp.DEFAULT_API)


def check_targets(targets: Sequence[Mapping[str, Any]], cloud: Cloud) -> dict[str, list[Check]]:
    """The cloud checks of every ami and gce target, all at once; a target whose checks have not finished by the
    deadline gets the checks it finished and a problem saying so."""
    results: dict[str, list[Check]] = {}
    done: set[str] = set()

    def run(target: Mapping[str, Any]) -> None:
        out = results[target["name"]]
        try:
            CHECKERS[target["type"]](target, cloud, out)
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure is this target's problem, not the bake's
            out.append(
                Check(
                    "cloud",
                    target["type"],
                    False,
                    "the cloud checks failed: %s: %s" % (type(exc).__name__, exc),
                )
            )
        done.add(target["name"])

    chosen = [t for t in targets if t["type"] in CHECKERS]
    threads = []
    for target in chosen:
        results[target["name"]] = []
        threads.append(threading.Thread(target=run, args=(target,), daemon=True))
    for thread in threads:
        thread.start()
    limit = cloud.deadline()
    deadline = time.monotonic() + limit
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    out: dict[str, list[Check]] = {}
    for target in chosen:
        checks = list(results[target["name"]])
        if target["name"] not in done:
            checks.append(
                Check(
                    "cloud",
                    _endpoint_option(target),
                    False,
                    "the cloud checks did not finish within %g s; check the endpoint and this host's network "
                    "access to it" % limit,
                )
            )
        out[target["name"]] = checks
    return out
