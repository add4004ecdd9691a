"""Checks that make hostile input fail before anything is made, with a message naming the problem."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading

import pytest
import requests

from ansible_collections.bakery.images.plugins.action.bake_plan import validate_bake, validate_target
from ansible_collections.bakery.images.plugins.module_utils import (
    _aws,
    _files,
    _gcp,
    _plan,
    _qemu_disk,
    _qemu_vm,
)
from ansible_collections.bakery.images.plugins.module_utils._docker import check_context, check_dockerfile
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize(
    "text",
    [
        "FROM debian:bookworm\nRUN true\n",
        "# escape=`\nFROM debian\nRUN echo a `\n  && echo b\n",
        "ARG BASE=debian\nfrom ${BASE}\nrun true\n",
        "FROM debian\nRUN apt-get update \\\n# a comment inside\n  && true\n",
        'FROM debian\nRUN <<EOF\nnot an instruction\nEOF\nCMD ["sh"]\n',
        "\n# comment\nFROM scratch AS base\nCOPY --from=0 / /\n",
    ],
)
def test_dockerfiles_docker_accepts(text):
    check_dockerfile(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("# x\nFROM debian\nFORM scratch\n", "line 3: unknown instruction FORM"),
        ("RUN true\nFROM debian\n", "line 1: the first instruction must be FROM"),
        ("# only a comment\n", "has no FROM"),
        ("", "has no FROM"),
        ("root:x:0:0:root:/root:/bin/bash\n", "line 1: unknown instruction root:x:0:0"),
    ],
)
def test_dockerfiles_docker_rejects(text, words):
    with pytest.raises(BakeryError, match=words):
        check_dockerfile(text)


def test_build_context_checks(tmp_path):
    with pytest.raises(BakeryError, match="is not a directory"):
        check_context(str(tmp_path / "missing"), None)
    with pytest.raises(BakeryError, match="Dockerfile.nope' not found"):
        check_context(str(tmp_path), "Dockerfile.nope")
    (tmp_path / "Dockerfile").write_bytes(b"\xff\xfe not text")
    with pytest.raises(BakeryError, match="cannot read Dockerfile"):
        check_context(str(tmp_path), None)


# ---------------------------------------------------------------- files: tarballs, raw disks, locks


def tarball(path, compress=False):
    data = os.urandom(3000)
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        info = tarfile.TarInfo("etc/data.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_tarballs_whole_and_damaged(tmp_path):
    _files.check_tarball(str(tarball(tmp_path / "ok.tar")))
    _files.check_tarball(str(tarball(tmp_path / "ok.tar.gz", compress=True)))
    text = tmp_path / "text.tar"
    text.write_text("not a tarball\n" * 100)
    with pytest.raises(BakeryError, match="text.tar is not a tar archive"):
        _files.check_tarball(str(text))
    whole = tarball(tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[:2048])
    with pytest.raises(
        BakeryError, match="cut.tar is a damaged or truncated tar archive: member etc/data.bin is cut"
    ):
        _files.check_tarball(str(tmp_path / "cut.tar"))
    packed = tarball(tmp_path / "whole.tar.gz", compress=True).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(BakeryError, match="cut.tar.gz is a damaged or truncated tar archive"):
        _files.check_tarball(str(tmp_path / "cut.tar.gz"))
    (tmp_path / "empty.tar.gz").write_bytes(gzip.compress(b"\0" * 1024))
    with pytest.raises(BakeryError, match="empty tar archive"):
        _files.check_tarball(str(tmp_path / "empty.tar.gz"))
    with pytest.raises(BakeryError, match="does not exist"):
        _files.check_tarball(str(tmp_path / "missing.tar"))


def test_raw_disks_are_whole_sectors(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(4096))
    _files.check_raw_disk(str(disk))
    disk.write_text("hello\n")
    with pytest.raises(BakeryError, match="6 bytes is not a whole number of 512-byte sectors"):
        _files.check_raw_disk(str(disk))


def test_file_lock_leaves_no_lock_file_and_excludes(tmp_path):
    path = str(tmp_path / "out.qcow2")
    inside = []

    def worker(number):
        with _files.file_lock(path):
            inside.append(number)
            assert len(inside) == 1
            inside.remove(number)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- module arguments


def test_qemu_image_sources_are_checked_before_anything_is_made(tmp_path):
    text = tmp_path / "not-a-disk.qcow2"
    text.write_text("text\n" * 10)
    outputs = [{"path": str(tmp_path / "out" / "disk.qcow2")}]
    with pytest.raises(BakeryError, match="is not a disk image"):
        _qemu_disk.bake_disk({"image": str(text), "outputs": outputs})
    with pytest.raises(BakeryError, match="is not a qcow2 image"):
        _qemu_disk.bake_disk({"image": str(text), "image_format": "qcow2", "outputs": outputs})
    with pytest.raises(BakeryError, match="rootfs .*missing.tar does not exist"):
        _qemu_disk.bake_disk({"rootfs": str(tmp_path / "missing.tar"), "outputs": outputs})
    with pytest.raises(BakeryError, match="not-a-disk.qcow2 is not a tar archive"):
        _qemu_disk.bake_disk({"rootfs": str(text), "outputs": outputs})
    with pytest.raises(BakeryError, match="'99999T' is too large"):
        _qemu_disk.parse_size("99999T")
    assert sorted(os.listdir(tmp_path)) == ["not-a-disk.qcow2"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"cpus": 0}, "cpus must be at least 1"),
        ({"memory": 0}, "memory is in MiB"),
        ({"boot_timeout": 0}, "boot_timeout"),
    ],
)
def test_qemu_vm_zero_is_refused_not_defaulted(tmp_path, extra, words):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(4096))
    with pytest.raises(BakeryError, match=words):
        _qemu_vm.parse_options(dict({"disk": str(disk), "workdir": str(tmp_path / "vm")}, **extra))


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"root_volume_size": -8}, "root_volume_size must be 1 to 65536"),
        ({"root_volume_size": 0}, "root_volume_size must be 1 to 65536"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"ssh_port": 70000}, "ssh_port"),
    ],
)
def test_aws_numbers_out_of_range(params, words):
    with pytest.raises(BakeryError, match=words):
        _aws.check_numbers(params)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"name": "Web"}, "image name 'Web' is not a valid Compute Engine name"),
        ({"name": "web", "family": "-web"}, "image family '-web'"),
        ({"name": "web", "labels": {"Team": "x"}}, "label Team=x"),
        ({"name": "web", "disk_size_gb": 0}, "disk_size_gb must be at least 1"),
    ],
)
def test_gce_params_checked_before_any_call(params, words):
    with pytest.raises(BakeryError, match=words):
        _gcp.check_params(dict(params, action="find", project="p"))


class Refused:
    """A session whose every request finds nobody listening."""

    def __init__(self):
        self.calls = 0

    def request(self, *args, **kwargs):
        self.calls += 1
        raise requests.ConnectionError(
            "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by NewConnectionError("
            '"Failed to establish a new connection: [Errno 111] Connection refused"))'
        )


def test_gce_endpoint_that_never_answered_fails_fast():
    session, slept = Refused(), []
    client = _gcp.Client(
        session, "p", api_endpoint="http://127.0.0.1:1/compute/v1", retries=5, sleep=slept.append
    )
    with pytest.raises(BakeryError) as failed:
        client.compute("GET", "projects/p/global/images", what="list images")
    assert session.calls == 2 and len(slept) == 1 and slept[0] <= 1.0
    assert failed.value.msg == (
        "list images: no answer from http://127.0.0.1:1 after 2 attempt(s) (check api_endpoint/storage_endpoint "
        "and the network): [Errno 111] Connection refused"
    )
    client.answered = True  # once an endpoint has answered, a broken connection is retried as configured
    session.calls = 0
    with pytest.raises(BakeryError, match="after 6 attempt"):
        client.compute("GET", "projects/p/global/images", what="list images")
    assert session.calls == 6


# ---------------------------------------------------------------- the plan


def test_bake_definition_types_are_strict():
    with pytest.raises(BakeryError, match=r"^bake: output_dir must be a string, not a list"):
        validate_bake({"name": "b", "targets": [{"name": "t", "docker": {}}], "output_dir": ["a"]})
    with pytest.raises(BakeryError, match=r"^bake: targets\[0\].name must be a string, not a dictionary"):
        validate_bake({"name": "b", "targets": [{"name": {"a": 1}, "docker": {}}]})
    with pytest.raises(BakeryError, match="unsupported option colour"):
        validate_bake({"name": "b", "targets": [], "colour": "red"})
    with pytest.raises(BakeryError, match="bake must be a dictionary"):
        validate_bake(["name"])
    # the failing options alone, once each: not the validator's parse errors or the spec
    for bake, message in (
        ({"name": "b", "targets": "web"}, "bake: targets must be a list of dictionaries, not a string"),
        ({"name": "b", "targets": ["web"]}, "bake: targets[0] must be a dictionary, not a string"),
        (
            {"name": "b", "base": "bookworm", "targets": [{"name": "t", "docker": {}}]},
            "bake: base must be a dictionary, not a string",
        ),
        ({"name": "b", "targets": 3}, "bake: targets must be a list of dictionaries, not a number"),
        ({"name": "b", "targets": [True]}, "bake: targets[0] must be a dictionary, not a boolean"),
    ):
        with pytest.raises(BakeryError) as failed:
            validate_bake(bake)
        assert failed.value.msg == message
    message = ""
    try:
        validate_target("docker", {"repository": "r", "tags": {"a": 1}}, "t")
    except BakeryError as exc:
        message = exc.msg
    assert "tags" in message and "<class" not in message and "_AnsibleTagged" not in message
    with pytest.raises(BakeryError, match="unsupported option vm.memmory"):
        validate_target("qemu", {"provision": "vm", "vm": {"memmory": 1}}, "t")


def test_output_names_and_paths_stay_in_the_output_directory():
    for name in ("web", "web-1.0", "Web_Image+x"):
        assert _plan.check_file_name("output name", name) == name
    for name in ("../x", "/etc/passwd", "a/b", ".hidden", "", "x" * 201, None):
        with pytest.raises(BakeryError, match="is not a file name"):
            _plan.check_file_name("output name", name)
    for path in ("web.box", "boxes/web.box", "/srv/boxes/web.box", None):
        _plan.check_relative_path("output", path)
    for path in ("../web.box", "boxes/../../web.box"):
        with pytest.raises(BakeryError, match="leaves the output directory"):
            _plan.check_relative_path("output", path)


@pytest.mark.parametrize(
    ("kind", "options", "words"),
    [
        ("qemu", {"disk_size": "99999T"}, "'99999T' is too large"),
        ("qemu", {"name": "../../etc/x"}, "output name '../../etc/x' is not a file name"),
        ("qemu", {"provision": "vm", "base_image": "/nonexistent/base.qcow2"}, "base_image .* is not a file"),
        ("vagrant", {"source": "d", "output": "../x.box"}, "output '../x.box' leaves the output directory"),
        ("vagrant", {"source": "d", "catalog": "../x.json"}, "catalog '../x.json' leaves"),
        (
            "ami",
            {"name": "web", "source_ami": "ami-1", "root_volume_size": 0},
            "root_volume_size must be 1 to",
        ),
        (
            "gce",
            {"name": "web", "zone": "z", "source_image_family": "f", "disk_size_gb": -1},
            "disk_size_gb must be 1 to",
        ),
        (
            "docker",
            {"repository": "r", "context": "/nonexistent/context"},
            "build context .* is not a directory",
        ),
    ],
)
def test_plan_refuses_what_would_fail_later(kind, options, words):
    with pytest.raises(BakeryError, match=words):
        _plan.check_target(kind, options, "t", cwd="/")


def test_plan_checks_the_dockerfile_of_a_context(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM debian\nFORM x\n")
    with pytest.raises(BakeryError, match="line 2: unknown instruction FORM"):
        _plan.check_target(
            "docker", {"repository": "r", "context": tmp_path.name}, "t", cwd=str(tmp_path.parent)
        )
    (tmp_path / "Dockerfile").write_text("FROM debian\n")
    _plan.check_target("docker", {"repository": "r", "context": tmp_path.name}, "t", cwd=str(tmp_path.parent))
    with pytest.raises(BakeryError, match="base_image is for a container bake"):
        _plan.check_target(
            "docker", {"repository": "r", "context": str(tmp_path), "base_image": "debian"}, "t", cwd="/"
        )
