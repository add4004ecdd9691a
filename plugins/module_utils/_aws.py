# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWS AMIs through boto3: instance bakes, EBS direct uploads, publishing and cleanup by bake id.

Two ways to an AMI, both idempotent by the ``bakery-fingerprint`` tag:

* ``launch`` + ``capture``: a builder instance from a source AMI (temporary ed25519 key pair and
  security group), provisioned over SSH by a later play, stopped and captured with create_image;
* ``upload``: a local raw disk written block by block to a new snapshot with the EBS direct APIs
  (zero blocks skipped, several blocks in flight, memory bounded) and registered as an AMI.

Both end in ``publish``: copies to other regions, launch permissions, deprecation, and only then the
final tags. An image is final when it carries ``bakery-fingerprint`` and no ``bakery-temporary`` tag;
until then it is temporary and ``cleanup`` (by bake id, from any later run) removes it.

Every AWS call goes through :func:`Aws.call` (botocore standard retry mode, one error type with a
clear message); every wait through :func:`wait_until` (bounded, tolerant of not-found right after
create).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils import _instance
from ansible_collections.bakery.images.plugins.module_utils._files import atomic_output, openssh_public_key
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import (
    BAKE_ID_LABEL,
    TEMPORARY_LABEL,
    changed_inputs,
    digest_file,
    digest_value,
    fingerprint,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError, Steps
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    FAILED,
    REMOVED,
    WOULD_REMOVE,
    Selector,
    act,
    cleanup_problems,
    created_nothing,
    failed,
    record,
)

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - reported by the module
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = str(_exc)
    BotoCoreError = ClientError = NoCredentialsError = NoRegionError = Exception  # type: ignore[misc,assignment]

FINGERPRINT_TAG = "bakery-fingerprint"
TARGET_TAG = "bakery-target"
CREATED_TAG = "bakery-created"
INPUT_TAG_PREFIX = "bakery-input:"
BLOCK_SIZE = 512 * 1024
GIB = 1024**3
ACTIONS = ("find", "launch", "capture", "upload", "publish", "verifier", "cleanup")
# AMI names as EC2 accepts them
_AMI_NAME = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
_NOT_FOUND = re.compile(r"(NotFound|\.Malformed$|^InvalidAMIID\.Unavailable$)")


class AwsError(BakeryError):
    """An AWS call failed; ``code`` is the AWS error code (``InvalidAMIID.NotFound``, ...)."""

    def __init__(self, msg: str, code: str = "", operation: str = "", **details: Any) -> None:
        super().__init__(msg, **details)
        self.code = code
        self.operation = operation

    @property
    def not_found(self) -> bool:
        return bool(_NOT_FOUND.search(self.code))


def check_ami_name(name: Any) -> str:
    """Fail early on names EC2 would reject: 3 to 128 letters, digits, ( ) [ ] space . / - ' @ _."""
    if not isinstance(name, str) or not _AMI_NAME.match(name):
        raise BakeryError(
            "AMI name %r is not valid: use 3 to 128 letters, digits, spaces and ( ) [ ] . / - ' @ _" % (name,)
        )
    return name


# ---------------------------------------------------------------- connection and calls


# boto3 sessions are costly to make (they load the service models) and clients are thread-safe: one session
# per set of credentials and one client per (service, region, endpoint, retry settings) serve a process
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_SESSIONS: dict[tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


# the calls that make a resource a cleanup or the janitor would have to remove
CREATING_OPERATIONS = frozenset(
    (
        "run_instances",
        "create_key_pair",
        "create_security_group",
        "create_image",
        "register_image",
        "copy_image",
        "start_snapshot",
    )
)


class Aws:
    """boto3 clients for one account and endpoint, one per (service, region); every call goes via call()."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        if not HAS_BOTO3:
            raise BakeryError(
                "boto3 and botocore are required on the host that runs the AMI target (pip install boto3): %s"
                % BOTO3_IMPORT_ERROR
            )
        if bool(params.get("access_key")) != bool(params.get("secret_key")):
            raise BakeryError("give both access_key and secret_key, or neither (to use the standard chain)")
        self.region: str = params["region"]
        self.endpoint_url: str | None = params.get("endpoint_url") or None
        self.max_attempts = int(params.get("max_attempts") or 5)
        self.pool = max(10, int(params.get("upload_workers") or 8) + 2)
        # whether a call that may create a resource was made (cleanup: a bake that never got that far made nothing)
        self.created = False
        # seconds to connect and to wait for an answer (botocore's default, 60, when unset); the preflight sets
        # them short
        self.timeouts: tuple[float | None, float | None] = (
            float(params["connect_timeout"]) if params.get("connect_timeout") else None,
            float(params["read_timeout"]) if params.get("read_timeout") else None,
        )
        self.credentials = (
            params.get("access_key") or None,
            params.get("secret_key") or None,
            params.get("session_token") or None,
            params.get("profile") or None,
        )

    def _session(self) -> Any:
        if self.credentials not in _SESSIONS:
            access_key, secret_key, token, profile = self.credentials
            try:
                _SESSIONS[self.credentials] = boto3.Session(
                    aws_access_key_id=access_key,
                    aws_secret_access_key=secret_key,
                    aws_session_token=token,
                    profile_name=profile,
                )
            except BotoCoreError as exc:
                raise BakeryError("cannot set up the AWS session: %s" % exc) from None
        return _SESSIONS[self.credentials]

    def client(self, service: str, region: str | None = None) -> Any:
        key = (
            self.credentials,
            service,
            region or self.region,
            self.endpoint_url,
            self.max_attempts,
            self.pool,
            self.timeouts,
        )
        with _CACHE_LOCK:
            if key not in _CLIENTS:
                connect, read = self.timeouts
                config = Config(
                    retries={"mode": "standard", "max_attempts": self.max_attempts},
                    max_pool_connections=self.pool,
                    user_agent_extra="bakery.images",
                    **({"connect_timeout": connect} if connect else {}),
                    **({"read_timeout": read} if read else {}),
                )
                _CLIENTS[key] = self._session().client(
                    service, region_name=key[2], endpoint_url=self.endpoint_url, config=config
                )
            return _CLIENTS[key]

    def call(self, service: str, operation: str, region: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """One AWS API call; any failure becomes an AwsError naming the call, region and AWS's reason."""
        where = region or self.region
        if operation in CREATING_OPERATIONS:
            self.created = True  # before the call: one that fails may still have made the resource
        try:
            return getattr(self.client(service, where), operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, service, operation, where) from None

    def ec2(self, operation: str, region: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.call("ec2", operation, region, **kwargs)

    def paged(self, operation: str, key: str, region: str | None = None, **kwargs: Any) -> list[dict]:
        """Every item of a paginated EC2 describe call."""
        items: list[dict] = []
        token = None
        while True:
            page = self.ec2(operation, region, **dict(kwargs, **({"NextToken": token} if token else {})))
            items.extend(page.get(key) or [])
            token = page.get("NextToken")
            if not token:
                return items


def aws_error(exc: Exception, service: str, operation: str, where: str) -> AwsError:
    """One message for every way a botocore call fails: the call, the region, AWS's code and reason."""
    if isinstance(exc, NoCredentialsError):
        return AwsError(
            "no AWS credentials: give access_key/secret_key, a profile, or set them in the environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or an instance role",
            code="NoCredentials",
            operation=operation,
        )
    if isinstance(exc, NoRegionError):
        return AwsError("no AWS region given", code="NoRegion", operation=operation)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or exc)
        return AwsError(
            "%s %s in %s failed: %s: %s" % (service, _camel(operation), where, code, message),
            code=code,
            operation=operation,
        )
    return AwsError(
        "%s %s in %s failed: %s" % (service, _camel(operation), where, exc),
        code=type(exc).__name__,
        operation=operation,
    )


def _camel(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


def wait_until(
    what: str,
    probe: Callable[[], Any],
    done: Callable[[Any], bool],
    failed: Callable[[Any], str | None] = lambda value: None,
    timeout: float = 1800.0,
    delay: float = 2.0,
    grace: float = 60.0,
) -> Any:
    """Poll *probe* until *done*; bounded by *timeout*, tolerant of not-found for *grace* seconds.

    EC2 is eventually consistent: a resource just created may not be described yet. *failed* returns
    a reason when the resource reached a state it will not leave (an image ``failed``).
    """
    started = time.monotonic()
    pause = min(delay, 0.5)
    while True:
        elapsed = time.monotonic() - started
        try:
            value = probe()
        except AwsError as exc:
            if not exc.not_found or elapsed > grace:
                raise
            value = None
        if value is not None:
            reason = failed(value)
            if reason:
                raise BakeryError("%s: %s" % (what, reason))
            if done(value):
                return value
        if elapsed > timeout:
            raise BakeryError("timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(pause)
        pause = min(pause * 1.5, delay)


# ---------------------------------------------------------------- tags and fingerprints


def tag_list(tags: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"Key": str(key), "Value": str(value)} for key, value in sorted(tags.items())]


def tag_dict(resource: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags") or []}


def temporary_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """What every temporary resource carries: the user's run tags, the bake id, ``bakery-temporary``."""
    tags = {str(k): str(v) for k, v in (params.get("run_tags") or {}).items()}
    tags.update({BAKE_ID_LABEL: bake_id(params), TEMPORARY_LABEL: "true"})
    if params.get("target"):
        tags[TARGET_TAG] = params["target"]
    return tags


def final_tags(params: Mapping[str, Any], fp: str, inputs: Mapping[str, str]) -> dict[str, str]:
    """Tags of a finished image: the user's tags, the fingerprint and its inputs, the bake that made it."""
    tags = {str(k): str(v) for k, v in (params.get("tags") or {}).items()}
    tags.update({FINGERPRINT_TAG: fp, BAKE_ID_LABEL: bake_id(params)})
    if params.get("target"):
        tags[TARGET_TAG] = params["target"]
    for name, digest in inputs.items():
        tags[(INPUT_TAG_PREFIX + name)[:128]] = str(digest)[:256]
    return tags


def bake_id(params: Mapping[str, Any]) -> str:
    value = params.get("bake_id")
    if not value:
        raise BakeryError("bake_id is required for this action (it tags every temporary resource)")
    return str(value)


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"Name": "tag:%s" % key, "Values": [value]} for key, value in tags.items()]


# the options that decide the content of an image; names, tags, regions and sharing only distribute it
IMAGE_OPTIONS = (
    "instance_type",
    "user_data",
    "root_volume_size",
    "root_volume_type",
    "root_volume_encrypted",
    "root_volume_kms_key_id",
    "root_device_name",
    "boot_mode",
    "ena_support",
    "imds_v2",
    "architecture",
)


def compute_inputs(params: Mapping[str, Any], source: Mapping[str, str]) -> dict[str, str]:
    """The bake's inputs plus the source (AMI id or disk) and the image-deciding options."""
    inputs = {str(k): str(v) for k, v in (params.get("inputs") or {}).items()}
    inputs.update(source)
    inputs["options"] = digest_value({key: params.get(key) for key in IMAGE_OPTIONS})
    return inputs


def image_summary(image: Mapping[str, Any], region: str) -> dict[str, Any]:
    mappings = image.get("BlockDeviceMappings") or []
    snapshots = [m["Ebs"]["SnapshotId"] for m in mappings if (m.get("Ebs") or {}).get("SnapshotId")]
    size = sum(int((m.get("Ebs") or {}).get("VolumeSize") or 0) for m in mappings)
    return {
        "image_id": image["ImageId"],
        "name": image.get("Name"),
        "region": region,
        "state": image.get("State"),
        "creation_date": image.get("CreationDate"),
        "architecture": image.get("Architecture"),
        "boot_mode": image.get("BootMode"),
        "root_device_name": image.get("RootDeviceName"),
        "snapshot_ids": snapshots,
        "size_gib": size or None,
        "tags": tag_dict(image),
    }


def is_final(image: Mapping[str, Any]) -> bool:
    tags = tag_dict(image)
    return (
        image.get("State") == "available" and tags.get(TEMPORARY_LABEL) != "true" and FINGERPRINT_TAG in tags
    )


def find_image(aws: Aws, fp: str, region: str | None = None) -> dict[str, Any] | None:
    """The newest final image with fingerprint *fp* in *region* (none when absent or still temporary)."""
    images = aws.ec2(
        "describe_images",
        region,
        Owners=["self"],
        Filters=[
            {"Name": "tag:%s" % FINGERPRINT_TAG, "Values": [fp]},
            {"Name": "state", "Values": ["available"]},
        ],
    )["Images"]
    final = [image for image in images if is_final(image)]
    return max(final, key=lambda image: image.get("CreationDate") or "") if final else None


def previous_inputs(aws: Aws, target: str | None) -> dict[str, str]:
    """The inputs recorded on the newest final image of this target, to say which input changed."""
    if not target:
        return {}
    images = aws.ec2(
        "describe_images", Owners=["self"], Filters=[{"Name": "tag:%s" % TARGET_TAG, "Values": [target]}]
    )["Images"]
    final = [image for image in images if is_final(image)]
    if not final:
        return {}
    newest = max(final, key=lambda image: image.get("CreationDate") or "")
    return {
        key[len(INPUT_TAG_PREFIX) :]: value
        for key, value in tag_dict(newest).items()
        if key.startswith(INPUT_TAG_PREFIX)
    }


def images_named(aws: Aws, name: str, region: str | None = None) -> list[dict[str, Any]]:
    return aws.ec2("describe_images", region, Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])[
        "Images"
    ]


def check_name_free(aws: Aws, params: Mapping[str, Any], fp: str) -> list[dict[str, Any]]:
    """Images that hold the name in a region the bake writes to; fail unless ``force_deregister``."""
    taken = []
    for region in all_regions(params):
        for image in images_named(aws, params["name"], region):
            if tag_dict(image).get(TEMPORARY_LABEL) == "true" and tag_dict(image).get(
                BAKE_ID_LABEL
            ) == params.get("bake_id"):
                continue
            taken.append(dict(image, _region=region))
    if taken and not params.get("force_deregister"):
        image = taken[0]
        raise BakeryError(
            "an image named %r already exists in %s (%s, fingerprint %s): choose another name (a version or "
            "date in it) or set force_deregister to replace it"
            % (
                params["name"],
                image["_region"],
                image["ImageId"],
                tag_dict(image).get(FINGERPRINT_TAG, "none"),
            )
        )
    return taken


def all_regions(params: Mapping[str, Any]) -> list[str]:
    regions = [params["region"]]
    for entry in copy_targets(params):
        if entry["region"] not in regions:
            regions.append(entry["region"])
    return regions


def copy_targets(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``regions`` as dicts ``{region, kms_key_id}``; the home region is never a copy target."""
    out = []
    for entry in params.get("regions") or []:
        item = {"region": entry, "kms_key_id": None} if isinstance(entry, str) else dict(entry)
        if not item.get("region"):
            raise BakeryError("regions: every entry needs a region (got %r)" % (entry,))
        if item["region"] != params["region"]:
            out.append({"region": item["region"], "kms_key_id": item.get("kms_key_id")})
    return out


# ---------------------------------------------------------------- a bake target's parameters

# The options of an ami target that role bakery.images.ami hands to ami_bake under the same name (vars/main.yml,
# tasks/launch.yml), with their defaults: what reaching AWS and resolving the source AMI take. tests/unit checks the
# role against this table.
TARGET_OPTIONS: dict[str, Any] = {
    "region": None,
    "profile": None,
    "endpoint_url": None,
    "max_attempts": 5,
    "regions": [],
    "source_ami": None,
    "source_ami_filter": None,
    "source_ami_ssm_parameter": None,
}
# the role's (no_log) credential variables -> ami_bake's parameters
CREDENTIAL_VARIABLES = {
    "ami_access_key": "access_key",
    "ami_secret_key": "secret_key",
    "ami_session_token": "session_token",
}


def target_params(options: Mapping[str, Any], variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of ami_bake for an ami target's *options* and the role's credential *variables*
    (``ami_access_key``, ...), as role bakery.images.ami passes them: connection, copy regions, source AMI."""
    params = {
        key: default if options.get(key) is None else options[key] for key, default in TARGET_OPTIONS.items()
    }
    for variable, key in CREDENTIAL_VARIABLES.items():
        params[key] = (variables or {}).get(variable) or None
    return params


# ---------------------------------------------------------------- source AMI


def resolve_source_ami(aws: Aws, params: Mapping[str, Any]) -> dict[str, Any]:
    """The source AMI by id, by SSM parameter, or by filter (exactly one match, or the newest)."""
    given = [k for k in ("source_ami", "source_ami_filter", "source_ami_ssm_parameter") if params.get(k)]
    if len(given) != 1:
        raise BakeryError(
            "give exactly one of source_ami, source_ami_filter and source_ami_ssm_parameter (got %s)"
            % (", ".join(given) or "none")
        )
    if params.get("source_ami_ssm_parameter"):
        name = params["source_ami_ssm_parameter"]
        value = aws.call("ssm", "get_parameter", Name=name)["Parameter"]["Value"]
        try:
            images = aws.ec2("describe_images", ImageIds=[value])["Images"]
        except AwsError as exc:
            if not exc.not_found:
                raise
            images = []
        if not images:
            raise BakeryError(
                "SSM parameter %s names %s, which does not exist in %s" % (name, value, aws.region)
            )
        return images[0]
    if params.get("source_ami"):
        try:
            images = aws.ec2("describe_images", ImageIds=[params["source_ami"]])["Images"]
        except AwsError as exc:
            if exc.not_found:
                images = []
            else:
                raise
        if not images:
            raise BakeryError("source AMI %s does not exist in %s" % (params["source_ami"], aws.region))
        return images[0]
    spec = dict(params["source_ami_filter"])
    filters = [{"Name": "state", "Values": ["available"]}]
    if spec.get("name"):
        filters.append({"Name": "name", "Values": [spec["name"]]})
    if spec.get("architecture"):
        filters.append({"Name": "architecture", "Values": [spec["architecture"]]})
    for key, value in (spec.get("filters") or {}).items():
        filters.append({"Name": key, "Values": value if isinstance(value, list) else [str(value)]})
    kwargs: dict[str, Any] = {"Filters": filters}
    if spec.get("owners"):
        kwargs["Owners"] = list(spec["owners"])
    images = aws.ec2("describe_images", **kwargs)["Images"]
    described = "owners %s, name %s, architecture %s" % (
        ",".join(spec.get("owners") or ["any"]),
        spec.get("name") or "any",
        spec.get("architecture") or "any",
    )
    if not images:
        raise BakeryError("no source AMI matches the filter (%s) in %s" % (described, aws.region))
    if len(images) > 1 and not spec.get("most_recent"):
        names = ", ".join(
            "%s (%s)" % (i["ImageId"], i.get("Name"))
            for i in sorted(images, key=lambda i: i.get("CreationDate") or "")[-5:]
        )
        raise BakeryError(
            "%d source AMIs match the filter (%s) in %s, for example %s: narrow the filter or set "
            "most_recent: true" % (len(images), described, aws.region, names)
        )
    return max(images, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]))


# ---------------------------------------------------------------- find


def lookup(aws: Aws, params: Mapping[str, Any], fp: str, inputs: dict[str, str]) -> dict[str, Any]:
    """The image with this fingerprint in the home region (found), or what would be made and why."""
    existing = None if params.get("force") else find_image(aws, fp)
    if existing is not None:
        return dict(
            changed=False,
            found=True,
            built=False,
            fingerprint=fp,
            inputs=inputs,
            changed_inputs=[],
            image=image_summary(existing, aws.region),
            msg="%s (%s) is up to date (fingerprint %s)"
            % (existing["ImageId"], existing.get("Name"), fp[:12]),
        )
    changed = changed_inputs(previous_inputs(aws, params.get("target")), inputs)
    reason = "forced" if params.get("force") else "inputs changed: %s" % ", ".join(changed)
    return dict(
        changed=True,
        found=False,
        built=False,
        fingerprint=fp,
        inputs=inputs,
        changed_inputs=changed,
        msg="would make AMI %s (%s)" % (params.get("name"), reason),
    )


def upload_source(params: Mapping[str, Any]) -> dict[str, str]:
    """An upload's source: the bake's inputs name the disk's own target; alone, the disk's content."""
    if params.get("inputs"):
        return {}
    return {"disk": digest_file(source_disk(params))}


def source_inputs(aws: Aws, params: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Fingerprint source: the disk (uploads) or the source AMI, resolved unless its id is given."""
    if params.get("disk"):
        return upload_source(params), None
    if params.get("source_ami_id"):
        return {"source_ami": params["source_ami_id"]}, None
    source = resolve_source_ami(aws, params)
    return {"source_ami": source["ImageId"]}, source


def find(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    source, image = source_inputs(aws, params)
    inputs = compute_inputs(params, source)
    result = lookup(aws, params, fingerprint(inputs), inputs)
    result["changed"] = False
    if image is not None:
        result["source_ami"] = {"image_id": image["ImageId"], "name": image.get("Name")}
    return result


# ---------------------------------------------------------------- launch


def resource_name(params: Mapping[str, Any]) -> str:
    target = re.sub(r"[^A-Za-z0-9-]+", "-", str(params.get("target") or "ami")).strip("-")
    return ("bakery-%s-%s" % (bake_id(params), target))[:255]


def default_vpc(aws: Aws, params: Mapping[str, Any]) -> str:
    if params.get("subnet_id"):
        subnets = aws.ec2("describe_subnets", SubnetIds=[params["subnet_id"]])["Subnets"]
        return subnets[0]["VpcId"]
    if params.get("vpc_id"):
        return params["vpc_id"]
    vpcs = aws.ec2("describe_vpcs", Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise BakeryError("region %s has no default VPC: give subnet_id (or vpc_id)" % aws.region)
    return vpcs[0]["VpcId"]


def write_private_key(path: str, material: str) -> None:
    with atomic_output(path, mode=0o600) as tmp:
        os.chmod(tmp, 0o600)
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(material if material.endswith("\n") else material + "\n")


def remove_file(path: str | None) -> bool:
    if path and os.path.lexists(path):
        os.unlink(path)
        return True
    return False


def launch(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Start the builder instance (after checking nothing with the fingerprint exists)."""
    source_image = resolve_source_ami(aws, params)
    inputs = compute_inputs(params, {"source_ami": source_image["ImageId"]})
    fp = fingerprint(inputs)
    looked = lookup(aws, params, fp, inputs)
    looked["source_ami"] = {"image_id": source_image["ImageId"], "name": source_image.get("Name")}
    if looked["found"]:
        return looked
    check_name_free(aws, params, fp)
    if check_mode:
        return looked
    if not params.get("key_file"):
        raise BakeryError("action=launch needs key_file (where the temporary private key is written)")
    started = start_instance(aws, params, source_image, resource_name(params), params["key_file"], "builder")
    return dict(
        looked,
        changed=True,
        instance=started["instance"],
        key_pair=started["key_pair"],
        security_group=started["security_group"],
        builder=started["connection"],
        public_key=started["public_key"],
        msg="launched %s from %s (%s)"
        % (started["instance"]["instance_id"], source_image["ImageId"], source_image.get("Name")),
    )


def start_instance(
    aws: Aws, params: Mapping[str, Any], image: Mapping[str, Any], name: str, key_file: str, purpose: str
) -> dict[str, Any]:
    """An instance of *image* with its own temporary ed25519 key pair (private key written to *key_file*) and
    security group (SSH from ``ssh_cidrs``), all named *name* and tagged with the bake id; waits until it runs
    (and SSH answers, unless ``ssh_timeout`` is 0). What it made is removed when a step fails.

    The builder of ``launch`` and the instance that ``verifier`` starts from a new image share it; *purpose*
    names it in the security group's description."""
    tags = temporary_tags(params)
    with Steps() as steps:
        key = steps.run(
            "create key pair",
            lambda: aws.ec2(
                "create_key_pair",
                KeyName=name,
                KeyType="ed25519",
                TagSpecifications=[
                    {"ResourceType": "key-pair", "Tags": tag_list(dict(tags, **created_tag()))}
                ],
            ),
            undo=lambda _: aws.ec2("delete_key_pair", KeyName=name),
        )
        steps.run(
            "write private key",
            lambda: write_private_key(key_file, key["KeyMaterial"]),
            undo=lambda _: remove_file(key_file),
        )
        vpc = default_vpc(aws, params)
        group = steps.run(
            "create security group",
            lambda: aws.ec2(
                "create_security_group",
                GroupName=name,
                Description="bakery %s %s (temporary)" % (purpose, name),
                VpcId=vpc,
                TagSpecifications=[
                    {"ResourceType": "security-group", "Tags": tag_list(dict(tags, **created_tag()))}
                ],
            )["GroupId"],
            undo=lambda group_id: delete_group(aws, group_id, aws.region),
        )
        port = int(params.get("ssh_port") or 22)
        aws.ec2(
            "authorize_security_group_ingress",
            GroupId=group,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": port,
                    "ToPort": port,
                    "IpRanges": [
                        {"CidrIp": cidr, "Description": "bakery SSH"} for cidr in params["ssh_cidrs"] or []
                    ],
                }
            ],
        )
        request = run_request(params, image, name, group, tags)
        instance = steps.run(
            "run instance",
            lambda: aws.ec2("run_instances", **request)["Instances"][0],
            undo=lambda inst: terminate(aws, [inst["InstanceId"]], wait=True),
        )
        instance = wait_instance(aws, instance["InstanceId"], "running", params)
        connection = builder_connection(instance, params, key_file)
        if params.get("ssh_timeout"):
            deadline = time.monotonic() + float(params["ssh_timeout"])
            _instance.wait_ssh(
                connection["host"], port, deadline, "the builder instance %s" % instance["InstanceId"]
            )
    return {
        "instance": {
            "instance_id": instance["InstanceId"],
            "image_id": instance.get("ImageId"),
            "state": instance["State"]["Name"],
            "public_ip": instance.get("PublicIpAddress"),
            "private_ip": instance.get("PrivateIpAddress"),
            "public_dns": instance.get("PublicDnsName"),
            "private_dns": instance.get("PrivateDnsName"),
            "spot": instance.get("InstanceLifecycle") == "spot",
        },
        "key_pair": name,
        "security_group": group,
        "connection": connection,
        # the image hygiene checks look for it in the builder's authorized_keys before capture
        "public_key": openssh_public_key(key["KeyMaterial"], name),
    }


def verifier(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """An instance of the new, still temporary image (``image_id``) for the bake's checks (``verify_instance``),
    started as the builder is (``start_instance``, the same instance options) with its own key pair and security
    group, named ``bakery-<bake id>-<target>-verify``, and its own key file, ``key_file`` + ``.verify``.
    The cleanup of the bake removes it all."""
    image_id = params.get("image_id")
    if not image_id:
        raise BakeryError("action=verifier needs image_id (the new image to check)")
    if not params.get("key_file"):
        raise BakeryError("action=verifier needs key_file (its private key is written to key_file.verify)")
    images = aws.ec2("describe_images", ImageIds=[image_id])["Images"]
    if not images:
        raise BakeryError("image %s does not exist in %s: nothing to check" % (image_id, aws.region))
    image = wait_image(aws, image_id, None, params)
    if check_mode:
        return dict(
            changed=True,
            image=image_summary(image, aws.region),
            msg="would start an instance of %s" % image_id,
        )
    name = verifier_name(params)
    started = start_instance(aws, params, image, name, verifier_key_file(params["key_file"]), "verifier")
    return dict(
        changed=True,
        image=image_summary(image, aws.region),
        instance=started["instance"],
        key_pair=started["key_pair"],
        security_group=started["security_group"],
        verifier=started["connection"],
        msg="started %s from %s for its checks" % (started["instance"]["instance_id"], image_id),
    )


def verifier_name(params: Mapping[str, Any]) -> str:
    """The verifier's key pair, security group and instance: the builder's name with ``-verify``."""
    return resource_name(params)[: 255 - len("-verify")] + "-verify"


def verifier_key_file(key_file: str) -> str:
    return key_file + ".verify"


def run_request(
    params: Mapping[str, Any], source: Mapping[str, Any], name: str, group: str, tags: Mapping[str, str]
) -> dict[str, Any]:
    root = source.get("RootDeviceName") or "/dev/xvda"
    ebs: dict[str, Any] = {"DeleteOnTermination": True, "VolumeType": params.get("root_volume_type") or "gp3"}
    source_root = [m for m in source.get("BlockDeviceMappings") or [] if m.get("DeviceName") == root]
    size = params.get("root_volume_size") or (
        (source_root[0].get("Ebs") or {}).get("VolumeSize") if source_root else 0
    )
    if size:
        ebs["VolumeSize"] = int(size)
    if params.get("root_volume_encrypted"):
        ebs["Encrypted"] = True
        if params.get("root_volume_kms_key_id"):
            ebs["KmsKeyId"] = params["root_volume_kms_key_id"]
    request: dict[str, Any] = {
        "ImageId": source["ImageId"],
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": params.get("instance_type") or "t3.micro",
        "KeyName": name,
        "BlockDeviceMappings": [{"DeviceName": root, "Ebs": ebs}],
        "MetadataOptions": {
            "HttpTokens": "required" if params.get("imds_v2", True) else "optional",
            "HttpEndpoint": "enabled",
        },
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list(dict(tags, Name=name))},
            {"ResourceType": "volume", "Tags": tag_list(tags)},
        ],
        "InstanceInitiatedShutdownBehavior": "stop",
    }
    if params.get("subnet_id"):
        request["NetworkInterfaces"] = [
            {
                "DeviceIndex": 0,
                "SubnetId": params["subnet_id"],
                "Groups": [group],
                "AssociatePublicIpAddress": params.get("ssh_interface", "public_ip").startswith("public"),
            }
        ]
    else:
        request["SecurityGroupIds"] = [group]
    if params.get("iam_instance_profile"):
        profile = params["iam_instance_profile"]
        request["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
    if params.get("user_data"):
        request["UserData"] = params["user_data"]
    if params.get("spot"):
        request["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
        }
    return request


def describe_instance(aws: Aws, instance_id: str, region: str | None = None) -> dict[str, Any] | None:
    reservations = aws.ec2("describe_instances", region, InstanceIds=[instance_id])["Reservations"]
    for reservation in reservations:
        for instance in reservation.get("Instances") or []:
            return instance
    return None


def wait_instance(aws: Aws, instance_id: str, state: str, params: Mapping[str, Any]) -> dict[str, Any]:
    def failed(instance: dict[str, Any]) -> str | None:
        current = instance["State"]["Name"]
        if state != "terminated" and current in ("shutting-down", "terminated"):
            reason = (instance.get("StateReason") or {}).get("Message") or "no reason given"
            return "the instance is %s (%s)" % (current, reason)
        return None

    return wait_until(
        "instance %s to be %s" % (instance_id, state),
        lambda: describe_instance(aws, instance_id),
        lambda instance: instance["State"]["Name"] == state,
        failed,
        timeout=float(params.get("wait_timeout") or 1800),
        delay=5.0,
    )


def builder_connection(
    instance: Mapping[str, Any], params: Mapping[str, Any], key_file: str
) -> dict[str, Any]:
    interface = params.get("ssh_interface") or "public_ip"
    field = {
        "public_ip": "PublicIpAddress",
        "private_ip": "PrivateIpAddress",
        "public_dns": "PublicDnsName",
        "private_dns": "PrivateDnsName",
    }[interface]
    host = instance.get(field)
    if not host:
        raise BakeryError(
            "instance %s has no %s: choose another ssh_interface, or a subnet that gives one"
            % (instance["InstanceId"], interface)
        )
    known_hosts = key_file + ".known_hosts"
    return {
        "connection": "ssh",
        "host": host,
        "port": int(params.get("ssh_port") or 22),
        "user": params.get("ssh_user") or "ec2-user",
        "private_key": key_file,
        "known_hosts": known_hosts,
        "ssh_common_args": "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s" % known_hosts,
    }


# ---------------------------------------------------------------- capture


def capture(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Stop the provisioned builder, create the image, wait for it, then publish it."""
    instance_id = params.get("instance_id")
    if not instance_id:
        raise BakeryError("action=capture needs instance_id (the builder that action=launch started)")
    instance = describe_instance(aws, instance_id)
    if instance is None:
        raise BakeryError("builder instance %s does not exist in %s" % (instance_id, aws.region))
    inputs = compute_inputs(params, {"source_ami": instance["ImageId"]})
    fp = fingerprint(inputs)
    looked = lookup(aws, params, fp, inputs)
    if looked["found"] or check_mode:
        return looked
    started = time.monotonic()
    taken = check_name_free(aws, params, fp)
    tags = temporary_tags(params)
    spot = instance.get("InstanceLifecycle") == "spot"
    with Steps() as steps:
        if not spot:  # a one-time spot instance cannot be stopped; create_image reboots it instead
            aws.ec2("stop_instances", InstanceIds=[instance_id])
            wait_instance(aws, instance_id, "stopped", params)
        deregister_images(aws, taken)
        request: dict[str, Any] = {
            "InstanceId": instance_id,
            "Name": params["name"],
            "Description": params.get("description") or "",
            "TagSpecifications": [{"ResourceType": "image", "Tags": tag_list(tags)}],
        }
        image_id = steps.run(
            "create image",
            lambda: aws.ec2("create_image", **request)["ImageId"],
            undo=lambda iid: delete_image(aws, iid, None),
        )
        image = wait_image(aws, image_id, None, params)
        tag_snapshots(aws, image, tags, None)
        result = finish(aws, params, image, fp, inputs, steps)
    return dict(
        result,
        changed=True,
        built=True,
        found=False,
        changed_inputs=looked["changed_inputs"],
        duration=round(time.monotonic() - started, 3),
        msg="captured %s as %s (%s)" % (instance_id, image_id, params["name"]),
    )


def wait_image(aws: Aws, image_id: str, region: str | None, params: Mapping[str, Any]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        images = aws.ec2("describe_images", region, ImageIds=[image_id])["Images"]
        return images[0] if images else None

    def failed(image: dict[str, Any]) -> str | None:
        if image.get("State") in ("failed", "error", "invalid", "deregistered"):
            return "the image is %s (%s)" % (image["State"], (image.get("StateReason") or {}).get("Message"))
        return None

    return wait_until(
        "image %s in %s to be available" % (image_id, region or aws.region),
        probe,
        lambda image: image.get("State") == "available",
        failed,
        timeout=float(params.get("wait_timeout") or 1800),
        delay=10.0,
    )


def snapshot_ids(image: Mapping[str, Any]) -> list[str]:
    return [
        m["Ebs"]["SnapshotId"]
        for m in image.get("BlockDeviceMappings") or []
        if (m.get("Ebs") or {}).get("SnapshotId")
    ]


def tag_snapshots(aws: Aws, image: Mapping[str, Any], tags: Mapping[str, str], region: str | None) -> None:
    snaps = snapshot_ids(image)
    if snaps:
        aws.ec2("create_tags", region, Resources=snaps, Tags=tag_list(tags))


def delete_image(aws: Aws, image_id: str, region: str | None) -> None:
    """Deregister an image and delete its snapshots (an image already gone is fine)."""
    try:
        images = aws.ec2("describe_images", region, ImageIds=[image_id])["Images"]
    except AwsError as exc:
        if not exc.not_found:
            raise
        images = []
    for image in images:
        if image.get("State") != "deregistered":
            aws.ec2("deregister_image", region, ImageId=image_id)
        for snap in snapshot_ids(image):
            delete_snapshot(aws, snap, region)


def delete_snapshot(aws: Aws, snapshot_id: str, region: str | None) -> None:
    try:
        aws.ec2("delete_snapshot", region, SnapshotId=snapshot_id)
    except AwsError as exc:
        if not exc.not_found:
            raise


def deregister_images(aws: Aws, images: list[dict[str, Any]]) -> None:
    """``force_deregister``: the older images holding the name go, with their snapshots."""
    for image in images:
        delete_image(aws, image["ImageId"], image.get("_region"))


# ---------------------------------------------------------------- publish: copies, sharing, final tags


def publish_image(
    aws: Aws,
    params: Mapping[str, Any],
    image: dict[str, Any],
    fp: str,
    inputs: Mapping[str, str],
    steps: Steps | None,
    extra_snapshots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Copy to every region, share, deprecate; then tag every copy and the image final (last).

    *extra_snapshots* are the home image's snapshots that describe_images may not list (an uploaded one).
    """
    changed = False
    images = {aws.region: image}
    for entry in copy_targets(params):
        region = entry["region"]
        existing = find_image(aws, fp, region)
        if existing is not None:
            images[region] = existing
            continue
        images[region] = copy_image(aws, params, image, entry, steps)
        changed = True
    for region, each in images.items():
        changed |= share(aws, params, each["ImageId"], region)
        changed |= deprecate(aws, params, each, region)
    final = final_tags(params, fp, inputs)
    # what only temporary resources carry: the temporary marker and the run tags the final tags lack
    dropped = [{"Key": key} for key in sorted(temporary_tags(params)) if key not in final]
    for region, each in sorted(images.items(), key=lambda item: item[0] == aws.region):
        if is_final(each):
            continue
        resources = [each["ImageId"]] + snapshot_ids(each)
        if region == aws.region:
            resources += [snap for snap in extra_snapshots if snap not in resources]
        aws.ec2("create_tags", region, Resources=resources, Tags=tag_list(final))
        aws.ec2("delete_tags", region, Resources=resources, Tags=dropped)
        changed = True
    home = aws.ec2("describe_images", ImageIds=[image["ImageId"]])["Images"][0]
    return dict(
        changed=changed,
        fingerprint=fp,
        inputs=dict(inputs),
        image=image_summary(home, aws.region),
        images={region: each["ImageId"] for region, each in sorted(images.items())},
    )


def copy_image(
    aws: Aws,
    params: Mapping[str, Any],
    image: Mapping[str, Any],
    entry: Mapping[str, Any],
    steps: Steps | None,
) -> dict[str, Any]:
    region = entry["region"]
    request: dict[str, Any] = {
        "Name": image.get("Name") or params["name"],
        "Description": image.get("Description") or params.get("description") or "",
        "SourceImageId": image["ImageId"],
        "SourceRegion": aws.region,
        "TagSpecifications": [{"ResourceType": "image", "Tags": tag_list(temporary_tags(params))}],
    }
    if entry.get("kms_key_id"):
        request.update(Encrypted=True, KmsKeyId=entry["kms_key_id"])
    copy_id = aws.ec2("copy_image", region, **request)["ImageId"]
    if steps is not None:
        steps.add_undo("copy to %s" % region, lambda: delete_image(aws, copy_id, region))
    # not every endpoint honours TagSpecifications on copy_image: tag it again, explicitly
    aws.ec2("create_tags", region, Resources=[copy_id], Tags=tag_list(temporary_tags(params)))
    copied = wait_image(aws, copy_id, region, params)
    tag_snapshots(aws, copied, temporary_tags(params), region)
    return copied


def wanted_permissions(params: Mapping[str, Any]) -> list[dict[str, str]]:
    spec = params.get("launch_permissions") or {}
    wanted = [{"UserId": str(user)} for user in spec.get("user_ids") or []]
    wanted += [{"Group": group} for group in spec.get("group_names") or []]
    wanted += [{"OrganizationArn": arn} for arn in spec.get("organization_arns") or []]
    wanted += [{"OrganizationalUnitArn": arn} for arn in spec.get("organizational_unit_arns") or []]
    return wanted


def share(aws: Aws, params: Mapping[str, Any], image_id: str, region: str) -> bool:
    """Add the launch permissions the image lacks (others are left alone); True when some were added."""
    wanted = wanted_permissions(params)
    if not wanted:
        return False
    current = aws.ec2("describe_image_attribute", region, ImageId=image_id, Attribute="launchPermission")
    have = [dict(p) for p in current.get("LaunchPermissions") or []]
    missing = [p for p in wanted if p not in have]
    if missing:
        aws.ec2("modify_image_attribute", region, ImageId=image_id, LaunchPermission={"Add": missing})
    return bool(missing)


def deprecate(aws: Aws, params: Mapping[str, Any], image: Mapping[str, Any], region: str) -> bool:
    when = params.get("deprecate_at")
    if not when or str(image.get("DeprecationTime") or "")[:19] == str(when)[:19]:
        return False
    aws.ec2("enable_image_deprecation", region, ImageId=image["ImageId"], DeprecateAt=when)
    return True


def finish(
    aws: Aws,
    params: Mapping[str, Any],
    image: dict[str, Any],
    fp: str,
    inputs: Mapping[str, str],
    steps: Steps | None,
    extra_snapshots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Publish the new image (copies, sharing, final tags), unless ``publish`` is false: then it stays temporary
    in the home region (found by no lookup, removed by the bake's cleanup) until action ``publish``."""
    if params.get("publish", True):
        return publish_image(aws, params, image, fp, inputs, steps, extra_snapshots)
    return dict(
        changed=True,
        fingerprint=fp,
        inputs=dict(inputs),
        image=image_summary(image, aws.region),
        images={aws.region: image["ImageId"]},
        published=False,
    )


def publish_temporary(
    aws: Aws, params: Mapping[str, Any], fp: str, inputs: Mapping[str, str], check_mode: bool
) -> dict[str, Any] | None:
    """Action ``publish`` with ``image_id``: the image this bake left temporary (``publish=false``), published
    once its checks passed. None when it is final already (then it is converged as any found image)."""
    images = aws.ec2("describe_images", ImageIds=[params["image_id"]])["Images"]
    if not images:
        raise BakeryError(
            "image %s does not exist in %s: nothing to publish" % (params["image_id"], aws.region)
        )
    image = images[0]
    if is_final(image):
        return None
    made_by = tag_dict(image).get(BAKE_ID_LABEL)
    if made_by != bake_id(params):
        raise BakeryError(
            "image %s is a temporary image of bake %s, not of this bake (%s): not publishing it"
            % (image["ImageId"], made_by, bake_id(params))
        )
    if check_mode:
        return dict(
            changed=True, found=True, built=False, fingerprint=fp, image=image_summary(image, aws.region),
            msg="would publish %s" % image["ImageId"],
        )  # fmt: skip
    extra = tuple(str(snap) for snap in params.get("snapshot_ids") or [])
    result = publish_image(aws, params, image, fp, inputs, None, extra)
    return dict(result, changed=True, found=True, built=False, msg="published %s" % image["ImageId"])


def publish(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Converge the image with this fingerprint: copies in every region, launch permissions, deprecation.
    With ``image_id``, a temporary image of this bake is published first (it then carries the fingerprint)."""
    source = source_inputs(aws, params)[0]
    inputs = compute_inputs(params, source)
    fp = fingerprint(inputs)
    if params.get("image_id"):
        published = publish_temporary(aws, params, fp, inputs, check_mode)
        if published is not None:
            return published
    image = find_image(aws, fp)
    if image is None:
        raise BakeryError("no image with fingerprint %s in %s to publish" % (fp[:12], aws.region))
    if check_mode:
        missing = [e["region"] for e in copy_targets(params) if find_image(aws, fp, e["region"]) is None]
        return dict(
            changed=bool(missing),
            found=True,
            built=False,
            fingerprint=fp,
            image=image_summary(image, aws.region),
            msg="would copy to %s" % ", ".join(missing) if missing else "published",
        )
    result = publish_image(aws, params, image, fp, inputs, None)
    return dict(result, found=True, built=False, changed_inputs=[], msg="%s is published" % image["ImageId"])


# ---------------------------------------------------------------- upload (EBS direct APIs)


def data_blocks(fd: int, size: int, block: int = BLOCK_SIZE) -> Iterator[int]:
    """Indexes of the blocks that may hold data: holes of a sparse file are skipped without reading."""
    count = (size + block - 1) // block
    seek_data = getattr(os, "SEEK_DATA", None)
    if seek_data is None:
        yield from range(count)
        return
    index = 0
    while index < count:
        try:
            start = os.lseek(fd, index * block, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                return
            if exc.errno == errno.EINVAL:  # the file system cannot tell: read everything
                yield from range(index, count)
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        first, last = start // block, (end + block - 1) // block
        yield from range(max(first, index), min(last, count))
        index = max(last, index + 1)


def disk_size(path: str) -> int:
    with open(path, "rb") as handle:
        return handle.seek(0, os.SEEK_END)


def upload_snapshot(
    aws: Aws,
    path: str,
    volume_gib: int,
    tags: Mapping[str, str],
    description: str,
    workers: int,
    steps: Steps,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the raw disk at *path* to a new EBS snapshot; only non-zero blocks are sent.

    At most ``2 * workers`` blocks are held in memory: the reader waits for uploads to finish before
    reading more, however large the disk.
    """
    snapshot = steps.run(
        "start snapshot",
        lambda: aws.call(
            "ebs",
            "start_snapshot",
            VolumeSize=volume_gib,
            Description=description,
            Tags=tag_list(tags),
            Timeout=60,
        ),
        undo=lambda snap: delete_snapshot(aws, snap["SnapshotId"], None),
    )
    snapshot_id = snapshot["SnapshotId"]
    block = BLOCK_SIZE  # the EBS direct APIs always use 512 KiB blocks (emulators may report otherwise)
    zero = bytes(block)
    size = disk_size(path)
    sent = skipped_zero = 0
    slots = threading.BoundedSemaphore(max(1, workers) * 2)
    pending: set[Future] = set()

    def put(index: int, data: bytes) -> None:
        try:
            aws.call(
                "ebs",
                "put_snapshot_block",
                SnapshotId=snapshot_id,
                BlockIndex=index,
                BlockData=data,
                DataLength=len(data),
                Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode("ascii"),
                ChecksumAlgorithm="SHA256",
            )
        finally:
            slots.release()

    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="bakery-ebs") as pool:
            for index in data_blocks(fd, size, block):
                data = os.pread(fd, block, index * block)
                if len(data) < block:
                    data += bytes(block - len(data))
                if data == zero:
                    skipped_zero += 1
                    continue
                slots.acquire()
                failed = [f for f in pending if f.done() and f.exception() is not None]
                if failed:
                    slots.release()
                    raise failed[0].exception()  # type: ignore[misc]
                pending = {f for f in pending if not f.done()}
                pending.add(pool.submit(put, index, data))
                sent += 1
            done = wait(pending, return_when=FIRST_EXCEPTION).done
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()  # type: ignore[misc]
    finally:
        os.close(fd)
    aws.call("ebs", "complete_snapshot", SnapshotId=snapshot_id, ChangedBlocksCount=sent)
    completed = wait_until(
        "snapshot %s to complete" % snapshot_id,
        lambda: (aws.ec2("describe_snapshots", SnapshotIds=[snapshot_id])["Snapshots"] or [None])[0],
        lambda snap: snap.get("State") == "completed",
        lambda snap: (
            "the snapshot is %s (%s)" % (snap["State"], snap.get("StateMessage"))
            if snap.get("State") == "error"
            else None
        ),
        timeout=float(params.get("wait_timeout") or 1800),
        delay=5.0,
    )
    return {
        "snapshot_id": snapshot_id,
        "volume_size_gib": volume_gib,
        "block_size": block,
        "blocks_total": (size + block - 1) // block,
        "blocks_sent": sent,
        "blocks_zero": skipped_zero,
        "state": completed.get("State"),
    }


def source_disk(params: Mapping[str, Any]) -> str:
    path = params.get("disk")
    if not path:
        raise BakeryError(
            "action=upload needs disk (a raw disk image, such as one made by bakery.images.qemu_image)"
        )
    if not os.path.isfile(path):
        raise BakeryError("disk %s does not exist" % path)
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"QFI\xfb":
        raise BakeryError("disk %s is a qcow2 image: the EBS upload needs a raw disk (format: raw)" % path)
    return path


def upload(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """A local raw disk as an AMI: EBS direct snapshot, register_image, publish."""
    path = source_disk(params)
    inputs = compute_inputs(params, upload_source(params))
    fp = fingerprint(inputs)
    looked = lookup(aws, params, fp, inputs)
    if looked["found"]:
        if check_mode:
            return looked
        published = publish_image(aws, params, find_image(aws, fp) or {}, fp, inputs, None)
        return dict(looked, changed=published["changed"], images=published["images"])
    taken = check_name_free(aws, params, fp)
    if check_mode:
        return looked
    started = time.monotonic()
    size = disk_size(path)
    volume_gib = max(int(params.get("root_volume_size") or 0), (size + GIB - 1) // GIB, 1)
    tags = temporary_tags(params)
    root = params.get("root_device_name") or "/dev/xvda"
    with Steps() as steps:
        snapshot = upload_snapshot(
            aws,
            path,
            volume_gib,
            tags,
            params.get("description") or "bakery upload of %s" % os.path.basename(path),
            int(params.get("upload_workers") or 8),
            steps,
            params,
        )
        deregister_images(aws, taken)
        request: dict[str, Any] = {
            "Name": params["name"],
            "Description": params.get("description") or "",
            "Architecture": params.get("architecture") or "x86_64",
            "RootDeviceName": root,
            "VirtualizationType": "hvm",
            "EnaSupport": bool(params.get("ena_support", True)),
            "BlockDeviceMappings": [
                {
                    "DeviceName": root,
                    "Ebs": {
                        "SnapshotId": snapshot["snapshot_id"],
                        "VolumeSize": volume_gib,
                        "VolumeType": params.get("root_volume_type") or "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": [{"ResourceType": "image", "Tags": tag_list(tags)}],
        }
        if params.get("boot_mode"):
            request["BootMode"] = params["boot_mode"]
        if params.get("imds_v2", True):
            request["ImdsSupport"] = "v2.0"
        image_id = steps.run(
            "register image",
            lambda: aws.ec2("register_image", **request)["ImageId"],
            undo=lambda iid: delete_image(aws, iid, None),
        )
        aws.ec2("create_tags", Resources=[image_id], Tags=tag_list(tags))
        image = wait_image(aws, image_id, None, params)
        result = finish(aws, params, image, fp, inputs, steps, (snapshot["snapshot_id"],))
    return dict(
        result,
        changed=True,
        built=True,
        found=False,
        changed_inputs=looked["changed_inputs"],
        snapshot=snapshot,
        duration=round(time.monotonic() - started, 3),
        msg="uploaded %s (%d of %d blocks sent) as %s (%s)"
        % (path, snapshot["blocks_sent"], snapshot["blocks_total"], image_id, params["name"]),
    )


# ---------------------------------------------------------------- cleanup by bake id


def terminate(aws: Aws, instance_ids: list[str], wait: bool, region: str | None = None) -> None:
    if not instance_ids:
        return
    aws.ec2("terminate_instances", region, InstanceIds=instance_ids)
    if wait:
        for instance_id in instance_ids:
            wait_until(
                "instance %s to terminate" % instance_id,
                lambda iid=instance_id: describe_instance(aws, iid, region),
                lambda inst: inst["State"]["Name"] == "terminated",
                timeout=600,
                delay=5.0,
            )


CLEANUP_KINDS = ("instances", "images", "snapshots", "key_pairs", "security_groups", "files")
# kind of a swept resource -> the key of ``removed`` in cleanup's result
_KIND_KEYS = {
    "instance": "instances",
    "image": "images",
    "snapshot": "snapshots",
    "key pair": "key_pairs",
    "security group": "security_groups",
}


def cleanup(aws: Aws, params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Remove every temporary resource of a bake (and target), in every region it used; errors are collected.

    The same :func:`sweep_region` serves the janitor, which selects by age as well.
    """
    selector = Selector(bake_id=bake_id(params))
    removed: dict[str, list[str]] = {kind: [] for kind in CLEANUP_KINDS}
    errors: list[str] = []
    unlooked: list[str] = []
    for region in all_regions(params):
        try:
            entries = sweep_region(aws, region, selector, check_mode, target=params.get("target"))
        except BakeryError as exc:
            unlooked.append("%s: %s" % (region, exc.msg))
            continue
        for entry in entries:
            removed[_KIND_KEYS[entry["kind"]]].append(entry["id"])
            if entry["state"] == FAILED:
                errors.append("%s %s: %s" % (_KIND_KEYS[entry["kind"]], entry["id"], entry.get("error")))
    key_file = params.get("key_file")
    keys = [key_file, verifier_key_file(key_file)] if key_file else []
    for path in [each for key in keys for each in (key, key + ".known_hosts")]:
        if os.path.lexists(path):
            if not check_mode:
                remove_file(path)
            removed["files"].append(path)
    count = sum(len(items) for items in removed.values())
    message = cleanup_problems(bake_id(params), errors, unlooked, params.get("created", True))
    if message:
        raise BakeryError(message, removed=removed)
    if unlooked:
        msg = created_nothing(bake_id(params), params.get("target"), unlooked)
    elif count:
        msg = "removed %d temporary resource(s) of bake %s" % (count, bake_id(params))
    else:
        msg = "nothing to clean up"
    return dict(changed=count > 0, removed=removed, msg=msg)


def created_tag() -> dict[str, str]:
    """``bakery-created``: when a key pair or security group (which EC2 gives no time) was made."""
    return {CREATED_TAG: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def sweep_region(
    aws: Aws, region: str, selector: Selector, check_mode: bool, target: str | None = None
) -> list[dict[str, Any]]:
    """Temporary resources (tag ``bakery-temporary=true``) in *region* that the selector selects, removed:
    instances first (they hold the key pair, group and volumes), then images, snapshots, key pairs, groups.

    Ages: LaunchTime, CreationDate, StartTime; key pairs and groups by their ``bakery-created`` tag (or a
    key pair's CreateTime). A removal that fails is reported in its entry; a failed listing raises.
    """
    wanted = {TEMPORARY_LABEL: "true"}
    if selector.bake_id is not None:
        wanted[BAKE_ID_LABEL] = selector.bake_id
    if target:
        wanted[TARGET_TAG] = target
    filters = tag_filters(wanted)
    location = "%s%s" % (region, " at %s" % aws.endpoint_url if aws.endpoint_url else "")

    def entry(kind: str, ident: str, item: Mapping[str, Any], created: Any, name: str | None = None) -> dict:
        tags = tag_dict(item)
        return record(
            "aws",
            kind,
            ident,
            name=name or tags.get("Name") or ident,
            bake_id=tags.get(BAKE_ID_LABEL),
            target=tags.get(TARGET_TAG),
            created=created,
            location=location,
        )

    def chosen(item: Mapping[str, Any], created: Any) -> bool:
        return selector.matches(tag_dict(item).get(BAKE_ID_LABEL), created)

    entries: list[dict[str, Any]] = []
    instances = [
        i
        for i in _all_instances(aws, region, filters)
        if i["State"]["Name"] != "terminated" and chosen(i, i.get("LaunchTime"))
    ]
    if instances:
        found = [entry("instance", i["InstanceId"], i, i.get("LaunchTime")) for i in instances]
        ids = [i["InstanceId"] for i in instances]
        error = None
        if not check_mode:
            try:
                terminate(aws, ids, True, region)
            except BakeryError as exc:
                error = exc.msg
        for item in found:
            if error:
                failed(item, error)
            else:
                item["state"] = WOULD_REMOVE if check_mode else REMOVED
        entries += found
    for image in aws.ec2("describe_images", region, Owners=["self"], Filters=filters)["Images"]:
        if chosen(image, image.get("CreationDate")):
            item = entry("image", image["ImageId"], image, image.get("CreationDate"), image.get("Name"))
            entries.append(act(item, check_mode, lambda i=image: delete_image(aws, i["ImageId"], region)))
    for snap in aws.paged("describe_snapshots", "Snapshots", region, OwnerIds=["self"], Filters=filters):
        if chosen(snap, snap.get("StartTime")):
            item = entry("snapshot", snap["SnapshotId"], snap, snap.get("StartTime"))
            entries.append(
                act(item, check_mode, lambda s=snap: delete_snapshot(aws, s["SnapshotId"], region))
            )
    for key in aws.ec2("describe_key_pairs", region, Filters=filters)["KeyPairs"]:
        created = tag_dict(key).get(CREATED_TAG) or key.get("CreateTime")
        if chosen(key, created):
            item = entry("key pair", key["KeyName"], key, created, key["KeyName"])
            entries.append(
                act(item, check_mode, lambda k=key: aws.ec2("delete_key_pair", region, KeyName=k["KeyName"]))
            )
    for group in aws.ec2("describe_security_groups", region, Filters=filters)["SecurityGroups"]:
        created = tag_dict(group).get(CREATED_TAG)
        if chosen(group, created):
            item = entry("security group", group["GroupId"], group, created, group.get("GroupName"))
            entries.append(act(item, check_mode, lambda g=group: delete_group(aws, g["GroupId"], region)))
    return entries


def sweep(params: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    """The janitor's AWS sweep: every region of *params* (``region`` and ``regions``)."""
    regions = [str(r) for r in params.get("regions") or []]
    if not regions:
        raise BakeryError("the aws sweep needs regions")
    aws = Aws(dict(params, region=regions[0]))
    entries: list[dict[str, Any]] = []
    for region in regions:
        entries += sweep_region(aws, region, selector, check_mode)
    return entries


def _all_instances(aws: Aws, region: str, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for reservation in aws.paged("describe_instances", "Reservations", region, Filters=filters):
        out.extend(reservation.get("Instances") or [])
    return out


def delete_group(aws: Aws, group_id: str, region: str) -> None:
    """Security groups stay in use a little while after their instance terminated: retry that."""

    def probe() -> bool | None:
        try:
            aws.ec2("delete_security_group", region, GroupId=group_id)
        except AwsError as exc:
            if exc.code == "DependencyViolation":
                return None
            if exc.not_found:
                return True
            raise
        return True

    wait_until("security group %s to be deletable" % group_id, probe, bool, timeout=300, delay=5.0, grace=0)


# ---------------------------------------------------------------- entry point


# numeric options and their ranges: checked before any call, so that nothing is made with a value EC2 or the
# upload would refuse halfway
_RANGES = {
    "root_volume_size": (1, 65536),  # GiB, the largest EBS volume
    "max_attempts": (1, 20),
    "upload_workers": (1, 64),
    "ssh_port": (1, 65535),
    "wait_timeout": (1, 86400),
}


def check_numbers(params: Mapping[str, Any]) -> None:
    for key, (low, high) in _RANGES.items():
        value = params.get(key)
        if value is not None and not low <= int(value) <= high:
            raise BakeryError("%s must be %d to %d, not %r" % (key, low, high, value))


def run_action(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Entry point of the ami_bake module."""
    action = params["action"]
    if action in ("launch", "capture", "upload", "publish", "find"):
        if not params.get("name"):
            raise BakeryError("action=%s needs name (the AMI name)" % action)
        check_ami_name(params["name"])
    check_numbers(params)
    copy_targets(params)
    try:
        aws = Aws(params)
    except BakeryError as exc:
        exc.details.setdefault("created", False)
        raise
    try:
        result = _handle(aws, params, check_mode)
    except BakeryError as exc:
        exc.details.setdefault("created", aws.created)
        raise
    result.setdefault("created", aws.created)
    return result


def _handle(aws: Aws, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    action = params["action"]
    handlers: dict[str, Callable[[Aws, Mapping[str, Any], bool], dict[str, Any]]] = {
        "find": find,
        "launch": launch,
        "capture": capture,
        "upload": upload,
        "publish": publish,
        "verifier": verifier,
        "cleanup": cleanup,
    }
    return handlers[action](aws, params, check_mode)
