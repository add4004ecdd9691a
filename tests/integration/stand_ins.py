"""Stand-ins for the instances the cloud fakes start but cannot run: the builder of an instance bake
(:func:`instance_playbook`) and the checks of ``verify_instance`` (:func:`playbook`).

moto_server and the fake Compute Engine (fake_compute.py) accept the request that launches an instance from the new
image and report it running, but nothing boots and nothing answers SSH. So that the bake's checks (verify) still run
somewhere real, :func:`playbook` makes a copy of playbooks/bake.yml with test plays (explicit plays of the test, no
branch of the collection's code):

* after each play that starts what the checks run against (role bake's verify_start, where roles ami and gce launch
  the instance of the new image), a play that starts a local Docker container of the bake's base image for each
  target whose verifier is such an instance (type ``cloud``), records the connection the role handed over (task
  ``Record the instance's connection``), and points the verifier's inventory host at the container instead;
* before the report, a play that removes those containers.

The containers carry the label ``bakery-bake-id`` and the host name :data:`HOSTNAME`, so that a check's output tells
where it ran; :func:`remove_containers` removes what a killed run left (a test's ``finally``).

The builder of an instance bake (gce, digitalocean) is the same idea: :func:`instance_playbook` adds a play after
launch that starts a container of the bake's base image and points the builder's inventory host at it (the cloud's
fake reports the instance running and a banner answers its SSH wait), and removes it after the cleanup.

What this does not test: an instance booting from the image on a real cloud, and SSH to it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from conftest import REPO, docker_client, run_playbook
from sbom_checks import DPKG_FORMAT

# the host name of the verifier's stand-in container: a check that prints $(hostname) names it
HOSTNAME = "bakery-verify-stand-in"
CONTAINER = "{{ bakery_target.host }}-verify-{{ bakery_target.bake_id }}"

_CLOUD_VERIFIER = (
    "bakery_verifier is defined and bakery_verifier.type == 'cloud' and stand_in_of is not defined"
)

SWAP_PLAY = {
    "name": "Stand-in verifier (test only): the fake runs no instance, so a local container of the bake's base "
    "image takes the place of the instance launched from the new image",
    "hosts": "bakery_targets",
    "gather_facts": False,
    "tasks": [
        {
            "name": "Start the verifier's stand-in container",
            "community.docker.docker_container": {
                "name": CONTAINER,
                "image": "{{ stand_in_image }}",
                "hostname": HOSTNAME,
                "command": ["sleep", "infinity"],
                "labels": {"bakery-temporary": "true", "bakery-bake-id": "{{ bakery_target.bake_id }}"},
                "state": "started",
            },
            "when": _CLOUD_VERIFIER,
        },
        {
            "name": "Record the instance's connection",
            "ansible.builtin.set_fact": {"stand_in_of": "{{ bakery_verifier }}"},
            "when": _CLOUD_VERIFIER,
        },
        {
            "name": "Point the verifier at the stand-in",
            "ansible.builtin.add_host": {
                "name": "{{ item.bakery_target.host }}-verify",
                "ansible_connection": "community.docker.docker_api",
                "ansible_host": "{{ item.bakery_target.host }}-verify-{{ item.bakery_target.bake_id }}",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_user": "root",
            },
            "loop": "{{ ansible_play_hosts | map('extract', hostvars) | selectattr('stand_in_of', 'defined')"
            " | selectattr('stand_in_swapped', 'undefined') | list }}",
            "loop_control": {"label": "{{ item.bakery_target.name }}"},
            "run_once": True,
            "changed_when": False,
        },
        {
            "name": "Note the swap",
            "ansible.builtin.set_fact": {"stand_in_swapped": True},
            "when": "stand_in_of is defined",
        },
    ],
}

REMOVE_PLAY = {
    "name": "Remove the verifier's stand-in container (test only)",
    "hosts": "bakery_targets",
    "gather_facts": False,
    "tasks": [
        {
            "name": "Remove the stand-in container",
            "community.docker.docker_container": {"name": CONTAINER, "state": "absent", "force_kill": True},
            "when": "stand_in_of is defined",
        }
    ],
}


def playbook(tmp_path: Path) -> Path:
    """playbooks/bake.yml with :data:`SWAP_PLAY` after each play that starts verifiers and :data:`REMOVE_PLAY`
    before the report."""
    plays = yaml.safe_load((REPO / "playbooks" / "bake.yml").read_text())
    out = []
    for play in plays:
        if play["name"] == "Report":
            out.append(REMOVE_PLAY)
        out.append(play)
        if play["name"].startswith("Start what the checks"):
            out.append(SWAP_PLAY)
    assert out.count(SWAP_PLAY) == 2 and REMOVE_PLAY in out, [play["name"] for play in plays]
    path = tmp_path / "bake-with-verify-stand-in.yml"
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return path


STAND_IN_PLAY = {
    "name": "Stand-in builder (test only): the fake Compute Engine runs no VM, so a local container built "
    "from the bakery base image takes the instance's place for provisioning",
    "hosts": "bakery_targets",
    "gather_facts": False,
    "tasks": [
        {
            "name": "Start the stand-in container",
            "community.docker.docker_container": {
                "name": "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}",
                "image": "{{ stand_in_image }}",
                "command": ["sleep", "infinity"],
                "labels": {"bakery-temporary": "true", "bakery-bake-id": "{{ bakery_target.bake_id }}"},
                "state": "started",
            },
            "when": "bakery_builder is defined",
        },
        {
            "name": "Point the builder at the stand-in",
            "ansible.builtin.add_host": {
                "name": "{{ bakery_target.builder }}",
                "groups": "bakery_builders",
                "bakery_builder_of": "{{ inventory_hostname }}",
                "bakery_provisioners": "{{ bakery_target.provisioners }}",
                "ansible_connection": "community.docker.docker_api",
                "ansible_host": "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_user": "root",
            },
            "when": "bakery_builder is defined",
            "changed_when": False,
        },
    ],
}

REMOVE_STAND_IN = {
    "name": "Remove the stand-in container (test only)",
    "hosts": "bakery_targets",
    "gather_facts": False,
    "tasks": [
        {
            # what the SBOM of an image made from the instance must list (test_gce); never in the way of the removal
            "name": "List the packages of the stand-in",
            "ansible.builtin.command": {"argv": ["dpkg-query", "-W", "-f", DPKG_FORMAT]},
            "delegate_to": "{{ bakery_target.builder }}",
            "changed_when": False,
            "ignore_errors": True,
            "when": "bakery_builder is defined",
        },
        {
            "name": "Remove it",
            "community.docker.docker_container": {
                "name": "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}",
                "state": "absent",
            },
        },
    ],
}


def instance_playbook(tmp_path: Path) -> Path:
    """playbooks/bake.yml with the stand-in play after launch, and its container removed after cleanup."""
    plays = yaml.safe_load((REPO / "playbooks" / "bake.yml").read_text())
    names = [play["name"] for play in plays]
    plays.insert(names.index("Launch the builders") + 1, STAND_IN_PLAY)
    plays.insert(len(plays) - 1, REMOVE_STAND_IN)
    plays[0]["vars_files"] = []
    path = tmp_path / "bake-with-stand-in.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    role = tmp_path / "roles" / "marker" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(
        '- name: Leave a mark\n  ansible.builtin.copy:\n    dest: /etc/bakery-marker\n    content: "{{ marker }}\\n"\n'
    )
    return path


class SshBanner:
    """A socket on 127.0.0.1 that answers with an SSH banner: enough for launch's SSH wait, not for Ansible."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-StandIn\r\n")

    def close(self) -> None:
        self.sock.close()


def remove_containers(bake_id: str) -> list[str]:
    """Remove the stand-in containers of *bake_id* (a run that failed or was killed may leave them); their names."""
    names = []
    for container in docker_client().containers.list(
        all=True, filters={"label": "bakery-bake-id=%s" % bake_id}
    ):
        names.append(container.name)
        container.remove(force=True)
    return names


@dataclass
class Cloud:
    """What the shared test needs of a cloud fake: the target's options, and how to look at the fake."""

    kind: str  # the target type: ami or gce
    options: dict[str, Any]  # the target's options (made from source: disk, verify_instance on)
    image_variable: (
        str  # the BAKERY_* variable of a local check that names the image as the verifier starts it
    )
    launched: Callable[
        [], list[tuple[str, str]]
    ]  # every instance launched so far: (instance, image it started from)
    image_exists: Callable[[str], bool]
    image_final: Callable[[str], bool]
    leftovers: Callable[[str], dict]  # what of a bake id is left in the fake
    key_files: str  # a glob (under output_dir) of the temporary private keys and their known_hosts files
    env: dict[str, str] = field(default_factory=dict)


def swapped(run: Any) -> list[dict]:
    """The connections of the instances the stand-in play replaced in *run*."""
    results = run.task_results("Record the instance's connection")
    return [result["ansible_facts"]["stand_in_of"] for result in results if "ansible_facts" in result]


def checks_on_an_instance(
    cloud: Cloud, source_image: Path, disk_size: str, stand_in_image: str, tmp_path: Path
) -> None:
    """verify_instance through playbooks/bake.yml (with :func:`playbook`'s stand-in plays): a qemu target copies
    *source_image* to a raw disk, the cloud target makes an image of it, an instance is launched from that image,
    and its checks run: a local one on the controller, a shell one on the instance (the stand-in). The shell check
    fails: the target fails in verify and the cleanup removes the image, the instance and its keys. Fixed, a second
    bake finds the disk (not made again), makes and checks the image again, and publishes it."""
    seen = tmp_path / "seen"
    check = 'echo "checked on $(hostname)"; test -f /etc/approved || { echo not approved; exit 1; }'
    bake = {
        "name": "%s-verify-instance" % cloud.kind,
        "output_dir": str(tmp_path / "output"),
        "verify": [
            {
                "name": "told",
                "local": {"inline": ['echo "$%s" >> %s' % (cloud.image_variable, seen)]},
                "only": ["web"],
            },
            {"name": "approved", "shell": {"inline": [check]}, "only": [cloud.kind]},
        ],
        "targets": [
            {
                "name": "disk",
                "qemu": {
                    "provision": "none",
                    # a disk without a dpkg database: baked without SBOMs, as asked
                    "sbom_unreadable": "skip",
                    "base_image": str(source_image),
                    "formats": ["raw"],
                    "disk_size": disk_size,
                },
            },
            {"name": "web", "%s" % cloud.kind: dict(cloud.options, source="disk", verify_instance=True)},
        ],
    }
    book = playbook(tmp_path)
    ids = ["20261204t050000-a1a1a1", "20261204t050100-b2b2b2"]
    try:
        first = run_playbook(
            book,
            tmp_path,
            extra_vars={"bake": bake, "bake_id": ids[0], "stand_in_image": stand_in_image},
            env=cloud.env,
        )
        assert first.rc != 0, first.stdout[-3000:]
        report = first.task_result("Write the bake manifest")
        assert report["failed_targets"] == ["web"], report["failures"]
        assert "target web failed in verify" in report["failures"]
        assert "check approved (shell bake.verify[1]) failed" in report["failures"], report["failures"]
        # the shell check ran on the stand-in, after an instance was launched from exactly the new image
        assert "checked on %s" % HOSTNAME in report["failures"] and "not approved" in report["failures"]
        (image,) = seen.read_text().split()
        launched = cloud.launched()
        assert launched[-1][1] == image, (launched, image)
        assert len(launched) == 1, (
            "one instance (of the image; an upload has no builder) was launched: %s" % launched
        )
        (instance,) = swapped(first)
        assert instance["connection"] == "ssh" and instance["private_key"].endswith(".verify"), instance
        # the cleanup removed the image (and its snapshot), the instance, its keys (in the cloud and on disk)
        assert not cloud.image_exists(image)
        assert cloud.leftovers(ids[0]) == {}
        output = tmp_path / "output"
        assert not list(output.glob(cloud.key_files)), list(output.glob(cloud.key_files))
        assert not Path(instance["private_key"]).exists()

        bake["verify"][1]["shell"]["inline"] = ['echo "checked on $(hostname)"']
        second = run_playbook(
            book,
            tmp_path,
            extra_vars={"bake": bake, "bake_id": ids[1], "stand_in_image": stand_in_image},
            env=cloud.env,
        )
        assert second.rc == 0, second.explain()
        assert second.stats["bakery-disk"]["changed"] == 0  # the disk is found, not made again
        manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
        entry = next(a for a in manifest["artifacts"] if a["target"] == "web")
        assert entry["verify"]["status"] == "passed", entry
        image = seen.read_text().split()[1]
        assert cloud.launched()[1:] and cloud.launched()[-1][1] == image
        assert cloud.image_final(image)
        assert cloud.leftovers(ids[1]) == {}
        assert not list(output.glob(cloud.key_files)), list(output.glob(cloud.key_files))
        assert len(swapped(second)) == 1
    finally:
        left = [name for bake_id in ids for name in remove_containers(bake_id)]
    assert left == [], "stand-in containers left: %s" % left


def qcow2_copy(raw: Path, dest: Path) -> Path:
    """A qcow2 copy of *raw* (the qemu target's base image), *raw* removed."""
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(dest)], check=True)
    raw.unlink()
    return dest
