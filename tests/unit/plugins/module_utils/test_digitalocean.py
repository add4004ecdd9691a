"""The digitalocean target's pure parts: what DigitalOcean would refuse, bakery's tags, the fingerprint's inputs,
the janitor's scopes and secrets from a bake definition, the manifest entry. The calls are tested against the
OpenAPI-validating stand-in in tests/integration/test_digitalocean.py."""

from __future__ import annotations

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _digitalocean, _janitor, _manifest, _plan
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


@pytest.mark.parametrize(
    "params, message",
    [
        ({"disk_format": "vmdk"}, "disk_format must be one of qcow2, raw"),
        ({"distribution": "Plan9"}, "distribution must be one of"),
        ({"tags": ["with space"]}, "a DigitalOcean tag has 1 to 255 letters"),
        ({"tags": ["bakery-fingerprint:x"]}, "tags starting with bakery- are bakery's own"),
        ({"retries": -1}, "retries must be at least 0"),
        ({"timeout": 0}, "timeout must be at least 1"),
        ({"name": "x" * 256}, "image name must be 1 to 255 characters"),
        ({"description": "x" * 141}, "description must be at most 140 characters"),
        ({"region": "NYC 3"}, "region 'NYC 3' is not a DigitalOcean slug"),
        ({"size": "s_1vcpu"}, "size 's_1vcpu' is not a DigitalOcean slug"),
        ({"regions": ["ams3", "Frankfurt"]}, "regions: 'Frankfurt' is not a DigitalOcean region slug"),
        ({"base_image": " "}, "base_image must name an image"),
    ],
)
def test_check_params_refuses_what_digitalocean_would(params, message):
    with pytest.raises(BakeryError, match=message):
        _digitalocean.check_params(params)


def test_tags_carry_their_value_after_a_colon():
    assert _digitalocean.tag("bakery-target", "web/eu 1") == "bakery-target:web-eu-1"
    tags = ["web", "bakery-bake-id:20261204t100000-abcdef", "bakery-temporary"]
    assert _digitalocean.tag_value(tags, "bakery-bake-id") == "20261204t100000-abcdef"
    assert _digitalocean.tag_value(tags, "bakery-target") is None
    assert _digitalocean.temporary({"tags": tags}) and not _digitalocean.temporary({"tags": ["web"]})


def test_the_fingerprint_changes_with_the_disk_and_each_image_option():
    base = {"name": "web", "region": "nyc3", "regions": ["ams3"], "tags": ["web"], "inputs": {"source": "s1"}}
    inputs = _digitalocean.image_inputs(base, "d1")
    assert inputs["source"] == "s1" and inputs["disk"] == "d1"
    assert _digitalocean.image_inputs(base, "d2") != inputs
    for key, value in [("regions", ["fra1"]), ("tags", []), ("distribution", "Debian"), ("description", "x")]:
        assert _digitalocean.image_inputs(dict(base, **{key: value}), "d1")["options"] != inputs["options"], (
            key
        )
    # connection options are no input: another token or bucket finds the same image
    assert _digitalocean.image_inputs(dict(base, token="t", spaces_bucket="b"), "d1") == inputs


def test_plan_check_needs_a_source_or_a_base_image():
    with pytest.raises(BakeryError, match="needs base_image .* or source"):
        _plan.check_digitalocean({"name": "web"}, "bake.targets[1].digitalocean")
    with pytest.raises(BakeryError, match="uploads it to a Spaces bucket: set spaces_bucket"):
        _plan.check_digitalocean({"source": "disk", "name": "web"}, "here")
    with pytest.raises(BakeryError, match="base_image is for an instance bake"):
        _plan.check_digitalocean(
            {"source": "disk", "spaces_bucket": "b", "base_image": "debian-12-x64"}, "here"
        )
    _plan.check_digitalocean({"source": "disk", "name": "web", "tags": ["web"], "spaces_bucket": "b"}, "here")
    _plan.check_digitalocean({"base_image": "debian-12-x64", "name": "web", "size": "s-1vcpu-1gb"}, "here")


def test_instance_inputs_and_temporary_names():
    """An instance bake's fingerprint changes with the base image's id and each droplet or image option; its droplet,
    key and unfinished snapshot share one name, which the janitor reads the bake id and target from."""
    params = {
        "name": "web",
        "base_image": "debian-12-x64",
        "size": "s-1vcpu-1gb",
        "region": "nyc3",
        "inputs": {"a": "1"},
    }
    droplets = _digitalocean.Droplets.__new__(_digitalocean.Droplets)
    droplets.params = params
    inputs = droplets.instance_inputs({"id": 7})
    assert inputs["a"] == "1" and inputs["base_image"] == "7"
    assert droplets.instance_inputs({"id": 8}) != inputs
    for key, value in [("size", "s-2vcpu-2gb"), ("regions", ["ams3"]), ("base_image", "ubuntu-24-04-x64")]:
        droplets.params = dict(params, **{key: value})
        assert droplets.instance_inputs({"id": 7})["options"] != inputs["options"], key
    droplets.params = dict(params, token="t")
    assert droplets.instance_inputs({"id": 7}) == inputs
    name = _digitalocean.temporary_name("20261204t100000-abcdef", "web_eu")
    assert name == "bakery-20261204t100000-abcdef-web-eu"
    assert _digitalocean.DROPLET_NAME_RE.match(name)
    assert _digitalocean._bake_time("20261204t100000-abcdef") == "2026-12-04T10:00:00Z"


def test_janitor_scopes_and_secrets_from_a_bake():
    bake = {
        "targets": [
            {"name": "disk", "qemu": {}},
            {
                "name": "a",
                "digitalocean": {
                    "source": "disk",
                    "name": "a",
                    "token": "dop-token-1",
                    "spaces_bucket": "b1",
                },
            },
            {
                "name": "b",
                "digitalocean": {
                    "source": "disk",
                    "name": "b",
                    "token": "dop-token-1",
                    "spaces_bucket": "b1",
                },
            },
            {"name": "c", "digitalocean": {"source": "disk", "name": "c", "spaces_secret_key": "sp-secret"}},
        ]
    }
    scopes = _janitor.scopes({"bake": bake}, "/tmp")["digitalocean"]
    assert [scope.get("spaces_bucket") for scope in scopes] == ["b1"]
    assert "name" not in scopes[0] and "source" not in scopes[0]
    assert {"dop-token-1", "sp-secret"} <= _janitor.bake_secrets(bake)
    assert _janitor.scopes({"digitalocean": {"timeout": 300, "retries": 5}}, "/tmp")["digitalocean"] == []
    assert _janitor.describe_scope("digitalocean", scopes[0]).endswith("Spaces bucket b1")


def test_manifest_entry():
    result = {
        "built": True,
        "fingerprint": "f" * 64,
        "image": {
            "id": 7,
            "name": "web",
            "regions": ["nyc3", "ams3"],
            "tags": ["web", "bakery-bake-id:b1"],
        },
    }
    target = {"name": "do", "bake_id": "b2", "options": {"name": "web"}}
    entry = _manifest.digitalocean_artifact(result, target, 100.0, 112.34)
    assert (entry["type"], entry["status"], entry["id"], entry["bake_id"]) == (
        "digitalocean",
        "built",
        7,
        "b1",
    )
    assert entry["regions"] == ["nyc3", "ams3"] and entry["build_seconds"] == 12.3
    would = _manifest.digitalocean_artifact({"changed": True}, target, None, 1.0)
    assert (would["status"], would["id"], would["name"]) == ("would build", None, "web")
