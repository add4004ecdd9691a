"""The final commit of a docker target reads the running build container's files from its overlay directories
(_overlay) and makes the same layer as from its export: on the real engine, a container of the base image and
one of a step image (a commit above the base) are changed in every way a provisioner can change a file system,
and the index, the layer, the package records and the loaded image are compared with the export's.
"""

from __future__ import annotations

import contextlib
import tarfile
import time
import uuid

import docker
import pytest
from conftest import docker_client, note_output

from ansible_collections.bakery.images.plugins.module_utils import _docker, _overlay
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import BAKE_ID_LABEL, TEMPORARY_LABEL
from ansible_collections.bakery.images.plugins.module_utils._layer import index_tar

# a provisioner's changes to the base image's file system; {first} and {link} are the first paths of two hard link
# groups of the base: the first one's copy-up breaks its group (the others show the lower file), the second one
# goes (the next path of its group is then the first)
CHANGES = r"""
set -eu
mkdir -p /opt/new/sub /opt/new/empty
echo new > /opt/new/a
ln /opt/new/a /opt/new/a-link
head -c 3000000 /dev/urandom > /opt/new/big
for i in $(seq 1 300); do echo "$i" > /opt/new/sub/"$i"; done
touch -d '2020-01-01 00:00:00.9' /opt/new/sub/1
echo changed >> /etc/debian_version
ln /etc/debian_version /opt/new/changed-link
ln /usr/bin/dpkg /opt/new/base-link
chmod 0600 /etc/issue
chown 1234:5678 /etc/profile
chmod 4755 /opt/new/a
chmod 1777 /opt/new/empty
rm /etc/issue.net
chmod 0700 {first}
rm {link}
rm -rf /usr/share/doc/debianutils
rm -rf /usr/share/doc/bash && mkdir /usr/share/doc/bash
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: MIT\n' \
    > /usr/share/doc/bash/copyright
rm -rf /usr/share/doc/sed && echo now a file > /usr/share/doc/sed
rm -rf /usr/share/doc/grep && ln -s bash /usr/share/doc/grep
rm /etc/shells && mkdir /etc/shells && echo x > /etc/shells/x
ln -s ../new/a /opt/new/symlink
ln /opt/new/symlink /opt/new/symlink-hard
mkfifo /opt/new/fifo
ln /opt/new/fifo /opt/new/fifo-hard
mknod /opt/new/null c 1 3
python3 - <<'EOF'
import os, socket
v2 = bytes.fromhex("0100000200200000000000000000000000000000")
v3 = bytes.fromhex("0100000300200000000000000000000000000000") + (1000).to_bytes(4, "little")
open("/opt/new/cap2", "w").write("2")
os.setxattr("/opt/new/cap2", "security.capability", v2)
open("/opt/new/cap3", "w").write("3")
os.setxattr("/opt/new/cap3", "security.capability", v3)
os.setxattr("/usr/bin/dpkg-split", "security.capability", v2)
socket.socket(socket.AF_UNIX).bind("/opt/new/socket")
for name in (b"/opt/new/\xff\xfe not utf-8", "/opt/new/é", "/opt/new/with space"):
    open(name, "w").write("odd")
EOF
link=$(find /usr/share -type l | sort | head -n 1)
ln -sfn changed-target "$link"
mkdir -p /usr/local/lib/python3/dist-packages
echo 'VALUE = 1' > /usr/local/lib/python3/dist-packages/ovl_mod.py
python3 -m py_compile /usr/local/lib/python3/dist-packages/ovl_mod.py
printf '\nPackage: fake\nStatus: install ok installed\nArchitecture: all\nVersion: 1.0\nMaintainer: F <f@x>\n' \
    >> /var/lib/dpkg/status
echo 'abc  opt/new/a' > /var/lib/dpkg/info/fake.md5sums
mkdir -p /usr/share/doc/fake && cp /usr/share/doc/bash/copyright /usr/share/doc/fake/copyright
rm -f /var/lib/dpkg/info/sed.md5sums
mkdir -p /var/log/apt && echo varies > /var/log/apt/history.log
echo old > /etc/passwd-
"""

# a provisioner's changes above a step image of CHANGES' container: to the step layer's paths and the base's
STEP_CHANGES = r"""
set -eu
rm /opt/new/sub/2
echo again >> /opt/new/sub/3
ln /opt/new/big /opt/new/big-link
rm -rf /opt/new/empty
rm -rf /opt/new/sub && mkdir /opt/new/sub && echo only > /opt/new/sub/only
mkdir /usr/share/doc/debianutils && echo back > /usr/share/doc/debianutils/README
echo more >> /etc/debian_version
rm /opt/new/fifo /opt/new/symlink
rm -rf /usr/share/doc/tar
ln -sfn elsewhere /opt/new/symlink-new
ln -sfn elsewhere /usr/share/doc/grep
echo 'VALUE = 2' > /usr/local/lib/python3/dist-packages/ovl_mod.py
python3 -m py_compile /usr/local/lib/python3/dist-packages/ovl_mod.py
"""


# every kind of inode with two names (GNU ln links a symbolic link itself, not its target), new ones and a second
# name of a base image's symbolic link; and a base file removed (same_image wants a whiteout)
HARD_LINKED = r"""
set -eu
mkdir /opt/hl && cd /opt/hl
echo x > file
ln -s file symlink && ln symlink symlink-hard
mkfifo fifo && ln fifo fifo-hard
mknod null c 1 3 && ln null null-hard
echo regular > regular && ln regular regular-hard
ln "$(find /usr/share -type l | sort | head -n 1)" base-symlink-hard
rm /etc/issue.net
"""


@pytest.fixture()
def engine(bake_base, docker_leftovers):
    """The engine, a bake id for what the test makes (the janitor's label), and the containers and images it
    made, removed afterwards."""
    client = docker_client()
    bake_id = "overlay-%s" % uuid.uuid4().hex[:8]
    note_output(bake_id)  # docker_leftovers looks for the containers of this bake id
    made: dict[str, list[str]] = {"containers": [], "images": []}
    try:
        yield client, bake_id, made
    finally:
        for cid in made["containers"]:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(cid, force=True)
        for image in reversed(made["images"]):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_image(image)


def running(engine, image: str) -> str:
    client, bake_id, made = engine
    labels = {BAKE_ID_LABEL: bake_id, TEMPORARY_LABEL: "true"}
    cid = client.api.create_container(image, command=["sleep", "infinity"], labels=labels, detach=True)["Id"]
    made["containers"].append(cid)
    client.api.start(cid)
    return cid


def run(client, cid: str, script: str) -> None:
    exec_id = client.api.exec_create(cid, ["sh", "-c", script])["Id"]
    output = client.api.exec_start(exec_id).decode(errors="replace")
    assert client.api.exec_inspect(exec_id)["ExitCode"] == 0, output


def link_groups(base: dict) -> tuple[str, str]:
    """The first paths of two hard link groups of the base image (its index), as paths in the container."""
    groups: dict[str, list[str]] = {}
    for name, entry in base.items():
        if entry.link:
            groups.setdefault(entry.link, [entry.link]).append(name)
    assert len(groups) >= 2, "the base image has fewer than two hard link groups: %s" % groups
    first, second = sorted(groups)[:2]
    return "/" + first, "/" + second


def changes(base: dict) -> str:
    first, second = link_groups(base)
    return CHANGES.replace("{first}", first).replace("{link}", second)


def export_index(client, cid: str) -> dict:
    with tarfile.open(fileobj=_docker._ChunkReader(client.api.export(cid)), mode="r|") as stream:
        return index_tar(stream)


def same_index(engine, cid: str, base_image: dict, cache: str) -> None:
    """The index of the container's files read from its overlay directories is the index of its export."""
    client, bake_id, _made = engine
    base, _from = _docker.base_index(client, base_image["Id"], bake_id, cache)
    tree, why = _docker._merged_tree(client, cid, base_image)
    assert tree is not None, why
    fast = tree.index(base)
    slow = export_index(client, cid)
    assert fast == slow, sorted(
        (name, fast.get(name), slow.get(name))
        for name in set(fast) | set(slow)
        if fast.get(name) != slow.get(name)
    )[:20]
    assert list(fast) == list(slow)


def same_image(engine, cid: str, base_image: dict, cache: str, monkeypatch) -> dict:
    """The image the commit makes reading the overlay directories is the one it makes reading the export: the
    layer, its paths and whiteouts, the package records, the image id. Returns the commit's result."""
    client, bake_id, made = engine
    params = {"bake_id": bake_id, "index_cache": cache}
    conf = {"Labels": {"org.bakery.test": "overlay"}}
    overlay = _docker.reproducible_image(client, cid, base_image["Id"], conf, params)
    made["images"].append(overlay["id"])
    monkeypatch.setenv(_overlay.READ_FROM_ENV, "export")
    export = _docker.reproducible_image(client, cid, base_image["Id"], conf, params)
    monkeypatch.delenv(_overlay.READ_FROM_ENV)
    assert (overlay["read_from"], overlay["read_from_why"]) == ("overlay", "")
    assert export["read_from"] == "export" and _overlay.READ_FROM_ENV in export["read_from_why"]
    for key in ("id", "diff_id", "size", "paths", "whiteouts", "packages", "source_date_epoch"):
        assert overlay[key] == export[key], key
    assert overlay["paths"] > 0 and overlay["whiteouts"] > 0
    return overlay


def test_the_layer_from_the_overlay_is_the_layer_from_the_export(engine, bake_base, tmp_path, monkeypatch):
    client = engine[0]
    base_image = client.api.inspect_image(bake_base["image"])
    cid = running(engine, base_image["Id"])
    base, _from = _docker.base_index(client, base_image["Id"], engine[1], str(tmp_path / "index-cache"))
    run(client, cid, changes(base))
    cache = str(tmp_path / "index-cache")
    same_index(engine, cid, base_image, cache)
    made = same_image(engine, cid, base_image, cache, monkeypatch)
    assert made["paths"] > 300
    packages = {record["name"]: record for record in made["packages"]}
    # what the provisioner changed in the package database: a new package, a removed copyright and md5sums list,
    # a documentation directory replaced, another one now a link to it
    assert (
        packages["fake"]["licenses"]
        == packages["bash"]["licenses"]
        == packages["grep"]["licenses"]
        == ["MIT"]
    )
    assert packages["debianutils"]["licenses"] == [] and packages["sed"]["md5sums_sha256"] is None

    # a container that is not running has no merged view: the export is read
    client.api.stop(cid, timeout=1)
    assert "not running" in _docker._merged_tree(client, cid, base_image)[1]


def test_a_container_of_a_step_image_gives_the_layer_of_its_export(engine, bake_base, tmp_path, monkeypatch):
    client = engine[0]
    base_image = client.api.inspect_image(bake_base["image"])
    first = running(engine, base_image["Id"])
    base, _from = _docker.base_index(client, base_image["Id"], engine[1], str(tmp_path / "index-cache"))
    run(client, first, changes(base))
    step = client.api.commit(first)["Id"]
    engine[2]["images"].append(step)
    client.api.remove_container(first, force=True)
    cid = running(engine, step)
    run(client, cid, STEP_CHANGES)

    data = client.api.inspect_container(cid)["GraphDriver"]["Data"]
    tree, _why = _docker._merged_tree(client, cid, base_image)
    assert tree is not None and len(tree.overlay.layers) == 2 and tree.overlay.layers[0] == data["UpperDir"]
    cache = str(tmp_path / "index-cache")
    same_index(engine, cid, base_image, cache)
    same_image(engine, cid, base_image, cache, monkeypatch)


def test_the_init_layer_and_a_failed_read_of_the_overlay(engine, bake_base, tmp_path, monkeypatch):
    """A container that changed nothing in /etc: its /etc is the one of its init layer (the engine made it when it
    created the container; the base index has another container's). A read of the overlay directories that fails
    midway gives the export's image."""
    client = engine[0]
    base_image = client.api.inspect_image(bake_base["image"])
    cache = str(tmp_path / "index-cache")
    _docker.base_index(client, base_image["Id"], engine[1], cache)
    time.sleep(1.1)  # another second than the base index's container
    cid = running(engine, base_image["Id"])
    run(client, cid, "mkdir -p /opt/x && echo x > /opt/x/y && rm -rf /usr/share/doc/sed")
    same_index(engine, cid, base_image, cache)
    made = same_image(engine, cid, base_image, cache, monkeypatch)

    def unreadable(self, name):
        raise OSError(5, "Input/output error", name)

    monkeypatch.setattr(_overlay.MergedTree, "open", unreadable)
    again = _docker.reproducible_image(
        client,
        cid,
        base_image["Id"],
        {"Labels": {"org.bakery.test": "overlay"}},
        {"bake_id": engine[1], "index_cache": cache},
    )
    assert again["read_from"] == "export" and "Input/output error" in again["read_from_why"]
    assert (again["id"], again["diff_id"], again["packages"]) == (
        made["id"],
        made["diff_id"],
        made["packages"],
    )


def test_hard_linked_symbolic_links_fifos_and_devices_are_in_the_image_as_they_are(
    engine, bake_base, tmp_path, monkeypatch
):
    """A hard link to a symbolic link, a FIFO or a device: the export has the first path as what it is and the
    next as a hard link to it; the image has both names of the same inode (no regular file, and no commit that
    fails asking for a FIFO's content)."""
    client, bake_id, _made = engine
    base_image = client.api.inspect_image(bake_base["image"])
    cid = running(engine, base_image["Id"])
    run(client, cid, HARD_LINKED)
    cache = str(tmp_path / "index-cache")
    same_index(engine, cid, base_image, cache)
    made = same_image(engine, cid, base_image, cache, monkeypatch)

    # each path of /opt/hl: its type, link count, inode and what it links to
    script = "cd /opt/hl && for name in *; do stat -c '%n|%F|%h|%i|%N' \"$name\"; done"

    def listing(output: bytes) -> dict[str, tuple[str, ...]]:
        return {line.split("|")[0]: tuple(line.split("|")[1:]) for line in output.decode().splitlines()}

    labels = {BAKE_ID_LABEL: bake_id, TEMPORARY_LABEL: "true"}
    image = listing(client.containers.run(made["id"], ["sh", "-c", script], remove=True, labels=labels))
    container = listing(client.api.exec_start(client.api.exec_create(cid, ["sh", "-c", script])["Id"]))
    assert set(image) == {
        "base-symlink-hard",
        "file",
        "fifo",
        "fifo-hard",
        "null",
        "null-hard",
        "regular",
        "regular-hard",
        "symlink",
        "symlink-hard",
    }
    for first, kind in (
        ("symlink", "symbolic link"),
        ("fifo", "fifo"),
        ("null", "character special file"),
        ("regular", "regular file"),
    ):
        for name in (first, first + "-hard"):
            assert image[name][:2] == (kind, "2"), (name, image[name])
        assert image[first + "-hard"][2] == image[first][2], "one inode"
    assert image["symlink"][3] == "'symlink' -> 'file'"
    assert image["symlink-hard"][3] == "'symlink-hard' -> 'file'"
    # the base's symbolic link keeps its one name in the image's lower layer: the new name is one of its own
    assert image["base-symlink-hard"][:2] == ("symbolic link", "1")
    assert image["base-symlink-hard"][3] == container["base-symlink-hard"][3]
