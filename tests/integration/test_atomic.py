"""Atomic outputs: the last step of each capture fails, and a reader still sees the old artifact whole (or
none), never a half-made one. Faults come from outside the code under test: a Docker API proxy that fails
the tagging, a qemu-img on PATH that fails the last conversion, an immutable Vagrant catalog. The AMI and
GCE captures are failed at every call, the last ones included, by test_ami.py and test_gce.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

from conftest import LOCAL, docker_client, remove_repositories, run_playbook
from docker_proxy import DockerFaultProxy

COMMIT_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: start
      bakery.images.docker_image_build:
        action: start
        name: "{{ name }}"
        tags: [latest, stable]
        inputs: {run: "{{ run }}"}
        base_image: "{{ base }}"
        bake_id: "{{ bake_id }}"
        target: web
      register: started
    - name: commit
      bakery.images.docker_image_build:
        action: commit
        name: "{{ name }}"
        tags: [latest, stable]
        inputs: {run: "{{ run }}"}
        container: "{{ started.container.id }}"
        base_image: "{{ base }}"
        bake_id: "{{ bake_id }}"
        target: web
        docker_host: "{{ docker_host | default(omit) }}"
"""


def commit_once(tmp_path: Path, base: str, name: str, run: str, docker_host: str | None = None):
    extra = {"name": name, "run": run, "base": base, "bake_id": "atomic-" + run}
    if docker_host:
        extra["docker_host"] = docker_host
    return run_playbook(COMMIT_PLAY, tmp_path, extra_vars=extra, args=LOCAL)


def test_docker_tags_move_all_or_none_and_a_failed_tag_leaves_no_image(bake_base, tmp_path):
    client = docker_client()
    run_id = uuid.uuid4().hex[:8]
    name = "bakery-test/atomic-%s" % run_id
    # this run's own inputs: an image of another run with the same fingerprint (a killed one's) would be
    # found up to date and adopted, which is right for a bake and not what this test is about
    one, two = "one-" + run_id, "two-" + run_id
    try:
        first = commit_once(tmp_path, bake_base["image"], name, one)
        assert first.rc == 0, first.explain()
        old = client.images.get("%s:latest" % name).id
        assert client.images.get("%s:stable" % name).id == old

        # the second tag of the next commit fails: the first one must come back to the old image
        with DockerFaultProxy(
            str(tmp_path / "docker.sock"), fail=("POST", r"/images/[^/]+/tag\?", 2)
        ) as proxy:
            second = commit_once(tmp_path, bake_base["image"], name, two, docker_host=proxy.url)
        assert second.rc != 0
        assert proxy.failed, proxy.requests
        msg = second.task_result("commit")["msg"]
        assert "docker tag %s:" % name in msg and "injected failure" in msg and "put back" in msg, msg
        assert client.images.get("%s:latest" % name).id == old
        assert client.images.get("%s:stable" % name).id == old
        made = client.images.list(all=True, filters={"label": "org.bakery.bake-id=atomic-" + two})
        assert not made, "the untagged image of the failed commit is left: %s" % made
        for run in (one, two):  # (counted by bake id: the other stream's tests use the engine too)
            left = client.containers.list(all=True, filters={"label": "bakery-bake-id=atomic-" + run})
            assert not left, "build container left: %s" % left
    finally:
        remove_repositories(name)


IMAGE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: outputs
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        disk_size: "{{ size }}"
        outputs: [{path: "{{ dir }}/disk.qcow2"}, {path: "{{ dir }}/disk.vmdk"}]
"""

QEMU_IMG_SHIM = """#!/bin/sh
# fails the conversion to vmdk, the last output; every other call is the real qemu-img
for arg in "$@"; do
    case "$arg" in *disk.vmdk*.partial) echo "qemu-img: injected failure writing $arg" >&2; exit 1;; esac
done
exec /usr/bin/qemu-img "$@"
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_outputs_are_replaced_together_or_not_at_all(tmp_path):
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "src.qcow2"), "32M"], check=True
    )
    first = run_playbook(IMAGE_PLAY, tmp_path, extra_vars={"dir": str(tmp_path), "size": "48M"}, args=LOCAL)
    assert first.rc == 0, first.explain()
    files = ["disk.qcow2", "disk.vmdk", "disk.qcow2.bakery.json", "disk.vmdk.bakery.json"]
    before = {name: digest(tmp_path / name) for name in files}

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "qemu-img").write_text(QEMU_IMG_SHIM)
    (shim / "qemu-img").chmod(0o755)
    env = {"PATH": "%s:%s" % (shim, os.environ["PATH"])}
    failed = run_playbook(
        IMAGE_PLAY, tmp_path, extra_vars={"dir": str(tmp_path), "size": "64M"}, args=LOCAL, env=env
    )
    assert failed.rc != 0
    assert "injected failure" in failed.task_result("outputs")["msg"]
    assert {name: digest(tmp_path / name) for name in files} == before, "an output changed"
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob(".bakery-qemu-*"))

    again = run_playbook(IMAGE_PLAY, tmp_path, extra_vars={"dir": str(tmp_path), "size": "64M"}, args=LOCAL)
    assert again.rc == 0 and again.task_result("outputs")["changed"]
    for output in ("disk.qcow2", "disk.vmdk"):
        assert json.loads((tmp_path / (output + ".bakery.json")).read_text())["virtual_size"] == 64 * 1024**2


BOX_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: box
      bakery.images.vagrant_box:
        path: "{{ dir }}/small-{{ version }}-libvirt.box"
        source: "{{ dir }}/src.qcow2"
        provider: libvirt
        compression: 1
        catalog: "{{ dir }}/small.json"
        box_name: bakery/small
        version: "{{ version }}"
"""


def test_vagrant_catalog_that_cannot_be_written_stays_whole_and_is_fixed_by_the_next_run(tmp_path):
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "src.qcow2"), "32M"], check=True
    )
    catalog = tmp_path / "small.json"
    first = run_playbook(
        BOX_PLAY, tmp_path, extra_vars={"dir": str(tmp_path), "version": "1.0.0"}, args=LOCAL
    )
    assert first.rc == 0, first.explain()
    before = catalog.read_text()
    subprocess.run(["chattr", "+i", str(catalog)], check=True)
    try:
        failed = run_playbook(
            BOX_PLAY, tmp_path, extra_vars={"dir": str(tmp_path), "version": "1.0.1"}, args=LOCAL
        )
    finally:
        subprocess.run(["chattr", "-i", str(catalog)], check=True)
    assert failed.rc != 0
    assert "small.json" in failed.task_result("box")["msg"]
    assert catalog.read_text() == before, "the catalog changed"
    assert not list(tmp_path.glob(".*partial*"))
    again = run_playbook(
        BOX_PLAY, tmp_path, extra_vars={"dir": str(tmp_path), "version": "1.0.1"}, args=LOCAL
    )
    assert again.rc == 0, again.explain()
    versions = {v["version"]: v for v in json.loads(catalog.read_text())["versions"]}
    box = tmp_path / "small-1.0.1-libvirt.box"
    assert versions["1.0.1"]["providers"][0]["checksum"] == digest(box)
