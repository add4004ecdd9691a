"""The pieces of a multi-architecture image's index that need no registry (the push is tested on a real one)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _docker


@pytest.mark.parametrize(
    ("name", "host", "loopback"),
    [
        ("127.0.0.1:5000/team/web", "127.0.0.1:5000", True),
        ("localhost/web", "localhost", True),
        ("[::1]:5000/web", "[::1]:5000", True),
        ("127.1.2.3:80/web", "127.1.2.3:80", True),
        ("registry.example.com/team/web", "registry.example.com", False),
        ("team/web", "docker.io", False),
        ("web", "docker.io", False),
    ],
)
def test_the_registry_of_a_repository_and_whether_the_engine_talks_plain_http_to_it(name, host, loopback):
    assert _docker.registry_host(name) == host
    assert _docker.loopback_registry(host) is loopback


def test_an_index_lists_its_images_with_their_platforms_and_an_image_manifest_lists_none():
    # in the registry's order (by digest), listed by platform
    index = {
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"digest": "sha256:11", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:aa", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:bb", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        ],
    }
    assert _docker.index_entries(index) == [
        {"digest": "sha256:aa", "platform": "linux/amd64"},
        {"digest": "sha256:bb", "platform": "linux/arm/v7"},
        {"digest": "sha256:11", "platform": "linux/arm64"},
    ]
    assert _docker.index_entries({"mediaType": "application/vnd.docker.distribution.manifest.v2+json"}) == []
    assert _docker.index_entries(None) == []


def test_the_manifest_cli_keeps_the_credentials_in_its_own_directory_and_removes_it():
    cli = _docker._ManifestCli("127.0.0.1:5000/team/web", {"username": "u", "password": "p"})
    directory = cli.directory
    try:
        assert cli.insecure == ["--insecure"]
        config = os.path.join(directory, "config.json")
        assert os.stat(config).st_mode & 0o777 == 0o600
        with open(config, encoding="utf-8") as handle:
            assert '"127.0.0.1:5000": {"auth": "dTpw"}' in handle.read()
    finally:
        cli.close()
    assert not os.path.exists(directory)
    other = _docker._ManifestCli("registry.example.com/web", None)
    other.close()
    assert other.insecure == [] and not os.path.exists(other.directory)
