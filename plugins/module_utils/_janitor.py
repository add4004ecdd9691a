# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The janitor: every temporary resource of a bake, or older than a TTL, in every backend, removed.

A bake that was killed (or a host that rebooted) leaves behind what its cleanup play would have removed:
build containers, builder VMs, chroot work directories, half-written files, EC2 instances, key pairs,
security groups, snapshots and images, GCE instances, disks and uploaded objects. All of them carry
``bakery-temporary=true`` (or the ``.bakery-temporary`` marker); :func:`sweep` finds those the selector
selects (:class:`~._temporary.Selector`: a bake id and/or an age) with the very functions the bake's
cleanups call, and removes them, or in check mode lists them.

Where to look (a backend's *scopes*) comes from the janitor's options and from a bake definition: its
output and cache directories, the Docker hosts of its docker targets, the regions and endpoint of its ami
targets, the project, zone, bucket and endpoints of its gce targets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils import _aws, _docker, _gcp, _qemu_vm
from ansible_collections.bakery.images.plugins.module_utils._plan import bake_dirs, target_type
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError
from ansible_collections.bakery.images.plugins.module_utils._temporary import (
    FAILED,
    REMOVED,
    WOULD_REMOVE,
    Selector,
)

BACKENDS = ("docker", "qemu", "aws", "gce", "openstack", "digitalocean")
# how _docker.connect says that there is no engine to talk to
DOCKER_UNAVAILABLE = ("cannot reach the Docker engine", "the Python 'docker' SDK is required")
AWS_CREDENTIALS = ("access_key", "secret_key", "session_token")
GCE_CREDENTIALS = ("auth_kind", "service_account_file", "service_account_contents", "access_token")


def _given(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options without the unset ones."""
    return {k: v for k, v in (options or {}).items() if v not in (None, "", [], {})}


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _bake_targets(bake: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    targets = []
    for index, target in enumerate(bake.get("targets") or []):
        if not isinstance(target, Mapping):
            raise BakeryError("bake.targets[%d] is not a mapping" % index)
        kind = target_type(target)
        targets.append((kind, dict(target.get(kind) or {})))
    return targets


def scopes(params: Mapping[str, Any], cwd: str) -> dict[str, list[dict[str, Any]]]:
    """Where each backend looks: from the backend's own options, and from the bake definition."""
    bake = params.get("bake") or {}
    targets = _bake_targets(bake) if bake else []
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in BACKENDS}

    docker = _given(params.get("docker"))
    hosts = [docker.get("docker_host")] if docker else []
    hosts += [options.get("docker_host") or None for kind, options in targets if kind == "docker"]
    for host in dict.fromkeys(hosts or [os.environ.get("DOCKER_HOST") or None]):
        out["docker"].append({"docker_host": host, "timeout": int(docker.get("timeout") or 60)})

    paths = [os.path.join(cwd, path) for path in (_given(params.get("qemu")).get("paths") or [])]
    if bake:
        paths += list(bake_dirs(bake, cwd))
    out["qemu"].append({"paths": list(dict.fromkeys(os.path.normpath(path) for path in paths))})

    aws = _given(params.get("aws"))
    credentials = {key: aws[key] for key in AWS_CREDENTIALS if key in aws}
    accounts: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add_aws(options: Mapping[str, Any], regions: list[str]) -> None:
        key = (options.get("endpoint_url"), options.get("profile"))
        scope = accounts.setdefault(
            key,
            dict(
                credentials,
                endpoint_url=options.get("endpoint_url"),
                profile=options.get("profile"),
                max_attempts=int(_first(options.get("max_attempts"), aws.get("max_attempts"), 5)),
                regions=[],
            ),
        )
        scope["regions"] = list(dict.fromkeys(scope["regions"] + regions))

    if aws.get("regions"):
        add_aws(aws, [str(region) for region in aws["regions"]])
    for kind, options in targets:
        if kind == "ami" and options.get("region"):
            copies = [entry["region"] for entry in _aws.copy_targets(options)]
            add_aws(
                {
                    "endpoint_url": options.get("endpoint_url") or aws.get("endpoint_url"),
                    "profile": options.get("profile") or aws.get("profile"),
                    "max_attempts": options.get("max_attempts"),
                },
                [options["region"], *copies],
            )
    out["aws"] = list(accounts.values())

    gce = _given(params.get("gce"))
    gce_credentials = {key: gce[key] for key in GCE_CREDENTIALS if key in gce}
    projects: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add_gce(options: Mapping[str, Any]) -> None:
        connection = {
            "project": options["project"],
            "api_endpoint": options.get("api_endpoint") or gce.get("api_endpoint") or _gcp.DEFAULT_API,
            "storage_endpoint": options.get("storage_endpoint")
            or gce.get("storage_endpoint")
            or _gcp.DEFAULT_STORAGE,
        }
        own = {key: options[key] for key in GCE_CREDENTIALS if options.get(key)}
        creds = dict(gce_credentials, **own)
        key = tuple(sorted(connection.items())) + (creds.get("service_account_file"), creds.get("auth_kind"))
        scope = projects.setdefault(
            key,
            dict(
                creds,
                **connection,
                retries=int(_first(options.get("retries"), gce.get("retries"), 5)),
                retry_delay=float(_first(options.get("retry_delay"), gce.get("retry_delay"), 1.0)),
                zones=[],
                buckets=[],
            ),
        )
        zones = [str(z) for z in options.get("zones") or []] + (
            [options["zone"]] if options.get("zone") else []
        )
        scope["zones"] = list(dict.fromkeys(scope["zones"] + zones))
        buckets = [options["bucket"]] if options.get("bucket") else []
        scope["buckets"] = list(dict.fromkeys(scope["buckets"] + buckets))

    if gce.get("project"):
        add_gce(gce)
    for kind, options in targets:
        if kind == "gce" and options.get("project"):
            add_gce(options)
    out["gce"] = list(projects.values())
    out["openstack"] = openstack_scopes(_given(params.get("openstack")), targets)
    out["digitalocean"] = digitalocean_scopes(_given(params.get("digitalocean")), targets)
    return out


def bake_secrets(bake: Mapping[str, Any] | None) -> set[str]:
    """The values of the bake's secret target options (an openstack target's ``auth`` and ``headers``
    dictionaries, a digitalocean target's token and Spaces keys): the janitor module masks them in its output, as
    the plan masks them in the bake's."""
    from ansible_collections.bakery.images.plugins.module_utils import _digitalocean, _openstack

    found: set[str] = set()
    secret_options = {"openstack": _openstack.SECRET_OPTIONS, "digitalocean": _digitalocean.SECRET_OPTIONS}
    for kind, options in _bake_targets(bake) if bake else []:
        for key in secret_options.get(kind, ()):
            values = options.get(key)
            values = values.values() if isinstance(values, Mapping) else [values]
            found.update(str(value) for value in values if value not in (None, "") and len(str(value)) > 3)
    return found


def openstack_scopes(
    own: Mapping[str, Any], targets: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The clouds to sweep for temporary Glance images: the janitor's ``openstack`` option and the connection
    options of the bake's openstack targets (one scope per distinct connection)."""
    from ansible_collections.bakery.images.plugins.module_utils import _openstack

    return connection_scopes(
        "openstack",
        own,
        targets,
        _openstack.CONNECTION_OPTIONS,
        ("cloud", "auth", "auth_type", "image_endpoint"),
    )


def digitalocean_scopes(
    own: Mapping[str, Any], targets: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The DigitalOcean accounts (and Spaces buckets) to sweep for temporary images and uploads: the janitor's
    ``digitalocean`` option and the connection options of the bake's digitalocean targets. The token may come from
    the environment, so an API URL or a bucket is enough to look."""
    from ansible_collections.bakery.images.plugins.module_utils import _digitalocean

    return connection_scopes(
        "digitalocean",
        own,
        targets,
        (*_digitalocean.CONNECTION_OPTIONS, "region"),
        ("token", "api_url", "spaces_bucket"),
    )


def connection_scopes(
    backend: str,
    own: Mapping[str, Any],
    targets: list[tuple[str, dict[str, Any]]],
    options_of_scope: tuple[str, ...],
    any_of: tuple[str, ...],
) -> list[dict[str, Any]]:
    """One scope per distinct connection among the janitor's own option of *backend* and the bake's targets of
    that type; a connection without any of *any_of* has nothing to look at."""
    found: dict[str, dict[str, Any]] = {}
    candidates = [own] if own else []
    candidates += [options for kind, options in targets if kind == backend]
    for options in candidates:
        scope = {key: options[key] for key in options_of_scope if options.get(key) is not None}
        if not any(scope.get(key) for key in any_of):
            continue
        key = repr(
            sorted((k, repr(v)) for k, v in scope.items() if k not in ("timeout", "retries", "retry_delay"))
        )
        found.setdefault(key, scope)
    return list(found.values())


def describe_scope(backend: str, scope: Mapping[str, Any]) -> str:
    if backend == "docker":
        return "Docker engine %s" % (scope.get("docker_host") or "at the default socket")
    if backend == "qemu":
        return "this host" + (" (%s)" % ", ".join(scope["paths"]) if scope.get("paths") else "")
    if backend == "aws":
        return "AWS %s%s" % (
            ", ".join(scope["regions"]),
            " at %s" % scope["endpoint_url"] if scope.get("endpoint_url") else "",
        )
    if backend == "openstack":
        from ansible_collections.bakery.images.plugins.module_utils import _openstack

        return "OpenStack %s" % _openstack.describe(scope)
    if backend == "digitalocean":
        from ansible_collections.bakery.images.plugins.module_utils import _digitalocean

        return _digitalocean.describe(scope)
    return "GCE project %s at %s" % (scope["project"], scope["api_endpoint"])


def _sweep_docker(scope: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    return _docker.sweep(scope.get("docker_host"), selector, check_mode, timeout=scope["timeout"])


def _sweep_qemu(scope: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    return _qemu_vm.sweep(selector, check_mode, scope["paths"])


def _sweep_aws(scope: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    return _aws.sweep(scope, selector, check_mode)


def _sweep_gce(scope: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    buckets = list(scope.get("buckets") or []) or [None]
    entries: list[dict[str, Any]] = []
    for index, bucket in enumerate(buckets):
        params = dict(scope, zones=scope["zones"] if index == 0 else [], bucket=bucket)
        entries += _gcp.sweep(params, selector, check_mode)
    return entries


def _sweep_openstack(scope: Mapping[str, Any], selector: Selector, check_mode: bool) -> list[dict[str, Any]]:
    from ansible_collections.bakery.images.plugins.module_utils import _openstack

    return _openstack.sweep(scope, selector, check_mode)


def _sweep_digitalocean(
    scope: Mapping[str, Any], selector: Selector, check_mode: bool
) -> list[dict[str, Any]]:
    from ansible_collections.bakery.images.plugins.module_utils import _digitalocean

    return _digitalocean.sweep(scope, selector, check_mode)


SWEEPERS: dict[str, Callable[[Mapping[str, Any], Selector, bool], list[dict[str, Any]]]] = {
    "docker": _sweep_docker,
    "qemu": _sweep_qemu,
    "aws": _sweep_aws,
    "gce": _sweep_gce,
    "openstack": _sweep_openstack,
    "digitalocean": _sweep_digitalocean,
}


def sweep(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """The janitor module's result: what was (or would be) removed, per resource, and what failed.

    Raises BakeryError (carrying the same result) when a removal failed or a configured backend could not
    be reached; an unreachable Docker engine that was not asked for explicitly is only skipped.
    """
    selector = Selector.from_params(params.get("bake_id"), params.get("older_than"))
    cwd = params.get("cwd") or os.getcwd()
    where = scopes(params, cwd)
    requested = [str(b) for b in params.get("backends") or []]
    for name in requested:
        if name not in BACKENDS:
            raise BakeryError("unknown backend %r (known: %s)" % (name, ", ".join(BACKENDS)))
        if not where[name]:
            raise BakeryError(
                "backend %s has nothing to look at: give the %s option (%s) or a bake with %s targets"
                % (
                    name,
                    name,
                    {
                        "aws": "regions",
                        "openstack": "cloud, auth or image_endpoint",
                        "digitalocean": "token, api_url or spaces_bucket",
                    }.get(name, "project"),
                    {"aws": "ami"}.get(name, name),
                )
            )
    chosen = requested or [name for name in BACKENDS if where[name]]
    docker_explicit = "docker" in requested or bool(_given(params.get("docker")))

    resources: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    errors: list[str] = []
    for backend in chosen:
        for scope in where[backend]:
            label = describe_scope(backend, scope)
            try:
                resources += SWEEPERS[backend](scope, selector, check_mode)
            except BakeryError as exc:
                if backend == "docker" and not docker_explicit and exc.msg.startswith(DOCKER_UNAVAILABLE):
                    skipped.append({"backend": backend, "scope": label, "reason": exc.msg})
                else:
                    errors.append("%s: %s" % (label, exc.msg))

    counts = {
        state: sum(1 for r in resources if r["state"] == state) for state in (REMOVED, WOULD_REMOVE, FAILED)
    }
    result: dict[str, Any] = {
        "changed": counts[REMOVED] + counts[WOULD_REMOVE] > 0,
        "resources": resources,
        "counts": {
            "removed": counts[REMOVED],
            "would_remove": counts[WOULD_REMOVE],
            "failed": counts[FAILED],
        },
        "backends": chosen,
        "not_swept": skipped,
        "errors": errors,
        "selector": {"bake_id": selector.bake_id, "older_than": selector.older_than},
    }
    what = selector.describe()
    if counts[FAILED] or errors:
        problems = [
            "%s %s %s: %s" % (r["backend"], r["kind"], r["name"], r.get("error"))
            for r in resources
            if r["state"] == FAILED
        ]
        raise BakeryError(
            "the janitor could not remove everything %s: %s" % (what, "; ".join(errors + problems)), **result
        )
    if check_mode:
        result["msg"] = "would remove %d temporary resource(s) %s" % (counts[WOULD_REMOVE], what)
    else:
        result["msg"] = "removed %d temporary resource(s) %s" % (counts[REMOVED], what)
    return result
