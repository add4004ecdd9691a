"""Secrets never leak: one bake at -vvvv with every credential a target can take, and a failing target.

One ``playbooks/bake.yml`` run bakes, side by side:

* ``app``: a docker Dockerfile build (a small image) pushed to a local registry that wants a password (the password is a
  target option, so the plan, the manifest and every task result that shows the target must mask it);
* ``broken``: a docker container bake with the same credentials whose provisioning fails (error paths print more);
* ``ec2``: an AMI instance bake against moto_server, with AWS credentials given as the ami role's variables
  (an access key id, a secret key and a session token); moto's instances do not boot, so a stand-in builder
  (a local container from the bake's base image) is provisioned instead, as in test_ami.py;
* ``vm``: a GCE instance bake against the fake Compute Engine, authenticated with a service-account key file
  whose private key is a real throwaway RSA key (google-auth signs with it; the fake hands out tokens),
  with the same kind of stand-in builder as in test_gce.py.

A qemu target needs a bootable rootfs and minutes under TCG, so the qemu builder's secret, its SSH key, is
covered by ``bakery.images.qemu_vm`` (``action=keygen`` after launch, ``stop`` before the report) in the test
plays of the same run. Vagrant targets take no secret (a box is packed from a disk, with Vagrant's public
insecure key). A second run, ``--check --diff`` at -vvvv, shows what would be baked: no secret there either.

While the run goes, a watcher reads every builder private key (the ami launch key, the gce SSH key, the qemu_vm
key): each must be 0600 while it exists, its contents must appear nowhere, and it must be gone afterwards.
Nothing may show any secret: stdout, stderr, the manifest, any file under the output directory (sidecars
included), the pushed image's labels and history, the AMI's and its snapshots' tags, the GCE image's labels.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml
from aws import REGION, MotoServer
from conftest import REPO, docker_client, remove_repositories, run_playbook
from test_gce import ZONE

AWS_KEY_ID = "AKIABAKERYSECRET0001"
MASK = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


def encodings(secret: str) -> set[str]:
    """The secret as it could leak: plain, URL-encoded, base64 (also as part of a longer base64 text)."""
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for shift in range(3):  # base64 of a text that holds the secret at any offset mod 3
        encoded = base64.b64encode(b"x" * shift + secret.encode()).decode()
        forms.add(encoded[4 if shift else 0 : -4])
    return {form for form in forms if len(form) >= 12}


@pytest.fixture()
def moto(tmp_path):
    server = MotoServer(tmp_path / "moto.log")
    try:
        yield server
    finally:
        server.stop()


class KeyWatcher(threading.Thread):
    """Reads every builder private key under *roots* while the bake runs: its mode and its contents."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.seen: dict[str, tuple[int, str]] = {}
        self.done = threading.Event()

    @staticmethod
    def is_private_key(path: Path) -> bool:
        return (
            path.is_file()
            and (path.suffix == ".key" or path.name == "id_ed25519" or ".bakery-ssh" in path.parts)
            and not path.name.endswith((".pub", ".known_hosts"))
        )

    def run(self) -> None:
        while not self.done.is_set():
            for root in self.roots:
                for path in root.rglob("*") if root.is_dir() else []:
                    try:
                        if str(path) in self.seen or not self.is_private_key(path):
                            continue
                        mode = stat.S_IMODE(path.stat().st_mode)
                        text = path.read_text()
                    except (OSError, UnicodeDecodeError):
                        continue
                    if "PRIVATE KEY" in text:
                        self.seen[str(path)] = (mode, text)
            time.sleep(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def key_pieces(pem: str) -> list[str]:
    """Recognisable pieces of a PEM private key's body."""
    lines = [line for line in pem.strip().splitlines() if "-----" not in line]
    body = "".join(lines)
    return [body[20:80], body[-80:-20], *[line for line in lines if len(line) >= 40][:3]]


PROVISIONER = """\
- name: Leave a mark
  ansible.builtin.copy:
    dest: /etc/bakery-marker
    content: "baked\\n"
- name: Fail on the broken target
  ansible.builtin.command: sh -c 'echo provisioning went wrong; exit 3'
  changed_when: false
  when: inventory_hostname == 'bakery-broken-builder'
"""

STAND_IN_PLAY = {
    "name": "Stand-in builders (test only): the cloud fakes run no VM, so a local container from the bake's "
    "base image takes each cloud builder's place for provisioning",
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
            "when": ["bakery_builder is defined", "bakery_target.type in ['ami', 'gce']"],
        },
        {
            "name": "Make a qemu_vm key pair (the qemu builder's SSH key, removed with its work directory later)",
            "bakery.images.qemu_vm": {
                "action": "keygen",
                "workdir": "{{ qemu_workdir }}",
                "bake_id": "{{ bake_id }}",
            },
            "when": ["not ansible_check_mode", "bakery_target.name == 'app'"],
        },
        {
            "name": "Point the builders at the stand-ins",
            "ansible.builtin.add_host": {
                "name": "{{ item.builder }}",
                "groups": "bakery_builders",
                "bakery_builder_of": "{{ item.host }}",
                "bakery_provisioners": "{{ item.provisioners }}",
                "ansible_connection": "community.docker.docker_api",
                "ansible_host": "{{ item.builder }}-{{ item.bake_id }}",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_user": "root",
            },
            "loop": "{{ ansible_play_hosts | map('extract', hostvars) | selectattr('bakery_builder', 'defined')"
            " | map(attribute='bakery_target') | selectattr('type', 'in', ['ami', 'gce']) }}",
            "loop_control": {"label": "{{ item.name }}"},
            "changed_when": False,
        },
    ],
}

REMOVE_STAND_IN = {
    "name": "Remove the stand-in containers and the qemu_vm work directory (test only)",
    "hosts": "bakery_targets",
    "gather_facts": False,
    "tasks": [
        {
            "name": "Remove it",
            "community.docker.docker_container": {
                "name": "{{ bakery_target.builder }}-{{ bakery_target.bake_id }}",
                "state": "absent",
                "force_kill": True,
            },
            "when": ["not ansible_check_mode", "bakery_target.type in ['ami', 'gce']"],
        },
        {
            "name": "Remove the qemu_vm work directory with its key",
            "bakery.images.qemu_vm": {"action": "stop", "workdir": "{{ qemu_workdir }}"},
            "when": ["not ansible_check_mode", "bakery_target.name == 'app'"],
        },
    ],
}


def playbook(tmp_path: Path) -> Path:
    """playbooks/bake.yml with test plays: stand-in builders for the cloud targets after launch (their
    instances run nothing) and a qemu_vm key pair, both removed before the report."""
    plays = yaml.safe_load((REPO / "playbooks" / "bake.yml").read_text())
    names = [play["name"] for play in plays]
    plays.insert(names.index("Launch the builders") + 1, STAND_IN_PLAY)
    plays.insert(len(plays) - 1, REMOVE_STAND_IN)
    path = tmp_path / "bake-secrets.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    role = tmp_path / "roles" / "secretive" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(PROVISIONER)
    context = tmp_path / "app"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello /hello\n")
    (context / "hello").write_text("hello from bakery\n")
    return path


def test_no_secret_anywhere_at_vvvv(moto, gce, bake_base, tmp_path):
    from registry import start_registry

    tag = uuid.uuid4().hex[:8]
    bake_id = "20261128t000000-%s" % tag[:6]
    registry_password = "bakery-secret-registry-%s/+=&?" % uuid.uuid4().hex
    aws_secret = "bakery-secret-aws-%s/+Zz" % uuid.uuid4().hex
    aws_token = "bakery-secret-session-%s" % uuid.uuid4().hex
    # a recognisable service-account key: key id and the RSA key google-auth signs the token request with
    gce.key_info["private_key_id"] = "bakerysecretgce" + uuid.uuid4().hex
    gce.key_file.write_text(json.dumps(gce.key_info))
    url, stop_registry = start_registry(tmp_path / "registry", user="pusher", password=registry_password)
    output = tmp_path / "output"
    qemu_workdir = output / "qemu-vm"
    client = docker_client()
    registry = {"username": "pusher", "password": registry_password}
    bake = {
        "name": "secrets",
        "output_dir": str(output),
        "provisioners": [{"role": "secretive"}],
        "targets": [
            {
                "name": "app",
                "docker": {
                    "repository": "%s/bakery-secrets/app" % url,
                    "tags": [tag],
                    "context": str(tmp_path / "app"),
                    "push": True,
                    "registry": registry,
                    "labels": {"team": "images"},
                },
            },
            {
                "name": "broken",
                "docker": {
                    "repository": "%s/bakery-secrets/broken" % url,
                    "tags": [tag],
                    "base_image": bake_base["image"],
                    "push": True,
                    "registry": registry,
                },
            },
            {
                "name": "ec2",
                "ami": {
                    "region": REGION,
                    "endpoint_url": moto.url,
                    "name": "bakery-secrets-%s" % tag,
                    "source_ami_filter": {
                        "owners": ["amazon"],
                        "name": "amzn2-ami-hvm-*-x86_64-gp2",
                        "most_recent": True,
                    },
                    "ssh_timeout": 0,  # moto's instances never answer SSH: the stand-in is provisioned
                    "tags": {"team": "images"},
                },
            },
            {
                "name": "vm",
                "gce": gce.options(
                    zone=ZONE,
                    name="web",
                    source_image_family="debian-12",
                    source_image_project="debian-cloud",
                    ssh_port=gce.ssh_port,
                    labels={"team": "images"},
                ),
            },
        ],
    }
    extra = {
        "bake": bake,
        "bake_id": bake_id,
        "stand_in_image": bake_base["image"],
        "qemu_workdir": str(qemu_workdir),
        "ami_access_key": AWS_KEY_ID,
        "ami_secret_key": aws_secret,
        "ami_session_token": aws_token,
    }
    book = playbook(tmp_path)
    watcher = KeyWatcher([output])
    watcher.start()
    started = time.monotonic()
    try:
        run = run_playbook(book, tmp_path, extra_vars=extra, args=["-vvvv"], json_output=False)
        seconds = time.monotonic() - started
    finally:
        watcher.stop()
        stop_registry()
    text = run.stdout + run.stderr
    print("bake at -vvvv: %.1f s, %d characters of output" % (seconds, len(text)))

    try:
        # the run did what it says: app, ec2 and vm baked, broken failed in provisioning, and it was verbose
        assert run.rc != 0, run.stdout[-3000:]
        assert "provisioning went wrong" in text and "<bakery-app> EXEC" in text, text[-3000:]
        manifest_text = (output / "bake-manifest.json").read_text()
        manifest = json.loads(manifest_text)
        made = {a["target"]: a for a in manifest["artifacts"]}
        assert sorted(made) == ["app", "ec2", "vm"], run.stdout[-5000:]
        # the plan still shows which option is secret, masked; the labels of its loops stay readable
        assert "secret_options" in run.stdout and "app (docker)" in run.stdout

        # the builder keys: 0600 while they existed, and gone now
        seen = watcher.seen
        assert any(path.endswith(".key") for path in seen), "the ami launch key was not seen: %s" % list(seen)
        assert any(".bakery-ssh" in path for path in seen), "the gce SSH key was not seen: %s" % list(seen)
        assert any(path.endswith("id_ed25519") for path in seen), "the qemu_vm key was not seen: %s" % list(
            seen
        )
        for path, (mode, _text) in seen.items():
            assert mode == 0o600, "%s was %o" % (path, mode)
            assert not os.path.exists(path), "%s is left behind" % path

        # again in check mode with --diff: what would be baked and why (the found targets report unchanged)
        check = run_playbook(
            book, tmp_path, extra_vars=extra, args=["-vvvv", "--check", "--diff"], json_output=False
        )
        assert "would build" in check.stdout and "3 unchanged" in check.stdout, check.stdout[-3000:]
        print("again with --check --diff: %.1f s" % (time.monotonic() - started - seconds))

        # what a user, a log or a registry could show
        shown = {"stdout": run.stdout, "stderr": run.stderr, "manifest": manifest_text}
        shown.update({"check stdout": check.stdout, "check stderr": check.stderr})
        for path in output.rglob("*"):
            if path.is_file():
                shown[str(path)] = path.read_text(errors="replace")
        image = client.images.get("%s/bakery-secrets/app:%s" % (url, tag))
        shown["app image"] = json.dumps(image.attrs) + json.dumps(image.history())
        ec2 = moto.client("ec2", REGION)
        amis = ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "tag:bakery-bake-id", "Values": [bake_id]}]
        )
        assert [i["ImageId"] for i in amis["Images"]] == [made["ec2"]["id"]]
        snapshots = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        shown["ami"] = json.dumps(amis, default=str) + json.dumps(snapshots, default=str)
        shown["gce image"] = json.dumps(list(gce.fake.images.values()), default=str)

        secrets = {
            "AWS access key id": encodings(AWS_KEY_ID),
            "AWS secret key": encodings(aws_secret),
            "AWS session token": encodings(aws_token),
            "registry password": encodings(registry_password)
            | encodings("pusher:" + registry_password)
            | {json.dumps(registry_password)[1:-1]},
            "GCE key id": {gce.key_info["private_key_id"]},
            "GCE private key": set(key_pieces(gce.private_pem)),
            "GCE access token": set(gce.secrets()[2:]),
        }
        for path, (_mode, pem) in seen.items():
            secrets["builder key %s" % Path(path).name] = set(key_pieces(pem))
        leaks = [
            "%s in %s" % (what, where)
            for what, forms in secrets.items()
            for where, content in shown.items()
            if any(form in content for form in forms)
        ]
        assert not leaks, "secrets leaked: %s" % leaks
        assert gce.leftovers() == {}
        # no build or stand-in container of this bake is left (other bakes share the engine: only ours count)
        assert not client.containers.list(all=True, filters={"label": "bakery-bake-id=%s" % bake_id})
    finally:  # the pushed image's tags are this test's own: remove them from the shared engine
        remove_repositories("%s/bakery-secrets/app" % url)
