"""Vagrant boxes, checked by Vagrant itself: Debian's `vagrant` adds the boxes and their catalog, refuses a
catalog entry whose checksum is wrong, and (with vagrant-libvirt and a libvirtd that scripts/libvirtd starts)
boots the box of the default bake for its checks (verify_up) and reaches nginx in it over SSH.

Vagrant keeps its state in VAGRANT_HOME, a temporary directory per test; nothing goes to ~/.vagrant.d.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, run_playbook

LOCAL = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter={{ ansible_playbook_python }}"]

BOX_PLAY = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: box
      bakery.images.vagrant_box:
        path: "{{ out }}/small-1.0.0-{{ item.0 }}-{{ item.1 }}.box"
        source: "{{ disk }}"
        provider: "{{ item.0 }}"
        architecture: "{{ item.1 }}"
        compression: 1
        catalog: "{{ out }}/small.json"
        box_name: bakery/small
        version: 1.0.0
        description: a small disk, boxed
      # the amd64 box first: the catalog still lists it last, which Vagrant 2.3 (no architectures) takes
      loop: [[libvirt, amd64], [libvirt, arm64], [virtualbox, amd64]]
"""


def vagrant(
    args: list[str], home: Path, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = dict(os.environ, VAGRANT_HOME=str(home), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    return subprocess.run(
        ["vagrant", *args],
        cwd=cwd or home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture()
def vagrant_home(tmp_path: Path) -> Path:
    home = tmp_path / "vagrant.d"
    home.mkdir()
    return home


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small qcow2 with some data in it (no system: `vagrant box add` does not boot it)."""
    base = tmp_path_factory.mktemp("small-disk")
    raw = base / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(1536 * 1024 * 1024)
        handle.seek(1024 * 1024)
        handle.write(b"bakery " * 100000)
    disk = base / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    return disk


@pytest.fixture(scope="module")
def small_boxes(small_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """libvirt boxes for arm64 and amd64 and a virtualbox box of the small disk (data, no system) in one catalog,
    made twice (the second time unchanged)."""
    tmp = tmp_path_factory.mktemp("small-boxes")
    out = tmp / "boxes"
    extra = {"out": str(out), "disk": str(small_disk)}
    first = run_playbook(BOX_PLAY, tmp, extra_vars=extra, args=LOCAL)
    assert first.rc == 0, first.explain()
    second = run_playbook(BOX_PLAY, tmp, extra_vars=extra, args=LOCAL)
    assert second.rc == 0, second.explain()
    return {
        "out": out,
        "catalog": out / "small.json",
        "first": first.task_result("box")["results"],
        "second": second.task_result("box")["results"],
    }


def test_boxes_are_made_once_and_listed_in_the_catalog(small_boxes: dict) -> None:
    first, second = small_boxes["first"], small_boxes["second"]
    assert [r["changed"] for r in first] == [True, True, True]
    assert [r["changed"] for r in second] == [False, False, False], (
        "a second run rebuilt a box or rewrote the catalog"
    )
    assert [r["sha256"] for r in second] == [r["sha256"] for r in first]
    catalog = json.loads(small_boxes["catalog"].read_text())
    assert catalog["name"] == "bakery/small" and catalog["description"] == "a small disk, boxed"
    (version,) = catalog["versions"]
    assert version["version"] == "1.0.0"
    # one entry per provider and architecture; amd64 is the default of its provider (Vagrant 2.4) and its
    # last entry (Vagrant 2.3 keeps the last entry of a provider's name)
    assert [(p["name"], p["architecture"], p["default_architecture"]) for p in version["providers"]] == [
        ("libvirt", "arm64", False),
        ("libvirt", "amd64", True),
        ("virtualbox", "amd64", True),
    ]
    listed = {(p["name"], p["architecture"]): p for p in version["providers"]}
    for result in first:
        entry = listed[result["provider"], result["metadata"]["architecture"]]
        assert entry["checksum_type"] == "sha256" and entry["checksum"] == result["sha256"]
        assert entry["url"] == Path(result["path"]).as_uri()
    assert first[0]["metadata"] == {
        "provider": "libvirt",
        "architecture": "amd64",
        "format": "qcow2",
        "virtual_size": 2,
    }
    assert first[0]["sha256"] != first[1]["sha256"], "the boxes of two architectures are two boxes"
    assert not [p.name for p in small_boxes["out"].iterdir() if ".partial" in p.name]


def test_vagrant_adds_both_boxes_from_the_catalog(small_boxes: dict, vagrant_home: Path) -> None:
    url = small_boxes["catalog"].as_uri()
    for provider in ("libvirt", "virtualbox"):
        added = vagrant(["box", "add", "--provider", provider, url], vagrant_home)
        assert added.returncode == 0, added.stdout + added.stderr
        assert "Successfully added box 'bakery/small' (v1.0.0) for '%s'" % provider in added.stdout
    boxes = vagrant_home / "boxes" / "bakery-VAGRANTSLASH-small" / "1.0.0"
    assert sorted(p.name for p in boxes.iterdir()) == ["libvirt", "virtualbox"]
    libvirt_box = boxes / "libvirt"
    # Vagrant 2.3 knows no architectures: it took the last libvirt entry of the version, the amd64 box
    assert json.loads((libvirt_box / "metadata.json").read_text()) == {
        "provider": "libvirt",
        "architecture": "amd64",
        "format": "qcow2",
        "virtual_size": 2,
    }
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(libvirt_box / "box.img")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 1536 * 1024 * 1024
    vbox = boxes / "virtualbox"
    assert sorted(p.name for p in vbox.iterdir()) == [
        "Vagrantfile",
        "box-disk001.vmdk",
        "box.ovf",
        "metadata.json",
    ]
    vmdk = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(vbox / "box-disk001.vmdk")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert vmdk["format"] == "vmdk" and vmdk["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert vmdk["virtual-size"] == 1536 * 1024 * 1024
    # the disk's data made it through the conversion
    copy = vbox.parent / "back.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(vbox / "box-disk001.vmdk"), str(copy)], check=True
    )
    with open(copy, "rb") as handle:
        handle.seek(1024 * 1024)
        assert handle.read(7 * 3) == b"bakery " * 3


def test_vagrant_refuses_a_catalog_entry_with_a_wrong_checksum(small_boxes: dict, vagrant_home: Path) -> None:
    catalog = json.loads(small_boxes["catalog"].read_text())
    # the entry Vagrant 2.3 takes: the last of the provider (amd64, the default)
    entry = [p for p in catalog["versions"][0]["providers"] if p["name"] == "libvirt"][-1]
    assert entry["architecture"] == "amd64"
    entry["checksum"] = "0" * 64
    bad = vagrant_home / "bad.json"
    bad.write_text(json.dumps(catalog))
    added = vagrant(["box", "add", "--provider", "libvirt", bad.as_uri()], vagrant_home)
    assert added.returncode != 0
    assert "The checksum of the downloaded box did not match the expected" in added.stderr
    assert "Expected: " + "0" * 64 in added.stderr
    assert "Received: " + small_boxes["first"][0]["sha256"] in added.stderr
    assert not (vagrant_home / "boxes" / "bakery-VAGRANTSLASH-small").exists(), "vagrant kept the bad box"


# --------------------------------------------------------------------------- vagrant up of the default bake

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def pool_volumes() -> set[str]:
    return {line.split()[0] for line in virsh("vol-list", "default").splitlines() if line.strip()}


def domains() -> set[str]:
    return {name.strip() for name in virsh("list", "--all", "--name").splitlines() if name.strip()}


def rebake(default_bake: dict):
    return run_playbook(
        BAKE_PLAYBOOK,
        default_bake["tmp"],
        args=["-e", "@%s" % (default_bake["tmp"] / "bake.json"), "-e", "bake_only=box"],
    )


def test_default_bake_box_boots_with_vagrant_up_for_its_checks_and_leaves_nothing(
    default_bake: dict, libvirtd: str, tmp_path: Path
) -> None:
    """verify_up: the default bake's box (found, not made again) is booted by `vagrant up` under TCG for its
    checks; a shell check runs in the machine over SSH, local checks on the controller with the machine's
    project and domain; afterwards libvirt holds nothing of the bake and the work directory is gone."""
    (box_target,) = [t for t in default_bake["definition"]["targets"] if "vagrant" in t]
    box = box_target["vagrant"]
    assert box["provider"] == "libvirt"
    manifest_path = default_bake["output"] / "bake-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = {a["target"]: a for a in manifest["artifacts"]}
    assert set(entries) == {box["source"], box_target["name"]}
    disk, made = entries[box["source"]], entries[box_target["name"]]
    assert disk["path"].endswith(".qcow2") and made["path"].endswith("-libvirt.box")
    assert made["sha256"] == made["id"] and made["name"] == box["box_name"] and made["build_seconds"] > 0
    summary = default_bake["first"].task_result("Artifact summary")["msg"]
    assert any(line.startswith(box_target["name"] + " ") and "built in" in line for line in summary), summary
    catalog = Path(made["catalog"])
    listed = json.loads(catalog.read_text())["versions"][0]["providers"][0]
    assert listed["checksum"] == made["sha256"] and listed["url"] == Path(made["path"]).as_uri()

    # the same bake again: nothing is rebuilt, the catalog and the manifest are not rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (catalog, Path(made["path"]))}
    manifest_text = manifest_path.read_text()
    second = rebake(default_bake)
    assert second.rc == 0, second.explain()
    changed = {host: s["changed"] for host, s in second.stats.items() if host.startswith("bakery-")}
    assert changed == {"bakery-%s" % box["source"]: 0, "bakery-%s" % box_target["name"]: 0}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert manifest_path.read_text() == manifest_text

    # the bake with verify_up, in an output directory of its own holding copies of the disk and the box
    out = tmp_path / "output"
    out.mkdir()
    box_file = Path(made["path"]).name
    for name in (
        Path(disk["path"]).name,
        Path(disk["path"]).name + ".bakery.json",
        box_file,
        box_file + ".bakery.json",
        catalog.name,
    ):
        subprocess.run(
            [
                "cp",
                "--reflink=auto",
                "--preserve=timestamps",
                str(default_bake["output"] / name),
                str(out / name),
            ],
            check=True,
        )
    box_mtime = (out / box_file).stat().st_mtime_ns
    seen = tmp_path / "seen"
    seen.mkdir()
    definition = json.loads(json.dumps(default_bake["definition"]))
    target = next(t for t in definition["targets"] if t["name"] == box_target["name"])
    target["vagrant"]["verify_up"] = True
    target["verify"] = [
        {
            "name": "serves",
            "shell": {
                "inline": [
                    "curl -s localhost | tee /dev/stderr | grep -q 'nginx on Debian'",
                    # the base box convention: vagrant's sudo needs no password
                    'test "$(sudo -n id -u)" = 0',
                    'test "$(id -un)" = vagrant',
                ]
            },
        },
        {
            "name": "bios",
            "local": {
                "inline": [
                    'virsh -c qemu:///system dumpxml "$BAKERY_VAGRANT_DOMAIN" > %s/domain.xml' % seen,
                    'echo "$BAKERY_VAGRANT_DOMAIN" > %s/domain' % seen,
                    # the project of the machine: vagrant ssh works from a local check
                    "vagrant ssh -c 'curl -s localhost; sudo -n id -u' > %s/page" % seen,
                ]
            },
        },
    ]
    # first a check that fails (the cleanup must remove the machine all the same), then the checks that pass
    target["verify"].append(
        {"name": "signed", "shell": {"inline": ["echo no signature; test -e /etc/signed"]}}
    )
    path = tmp_path / "bake.json"
    cache = Path(definition["cache_dir"])
    networks = virsh("net-list", "--all")
    volumes_before = pool_volumes()
    stamp = time.strftime("%Y%m%dt%H%M%S", time.gmtime())
    bake_ids = ["%s-%06x" % (stamp, (os.getpid() * 2 + n) & 0xFFFFFF) for n in (0, 1)]
    runs = []
    for bake_id in bake_ids:
        path.write_text(json.dumps({"bake": definition}))
        try:
            runs.append(
                run_playbook(
                    BAKE_PLAYBOOK,
                    tmp_path,
                    args=["-e", "@%s" % path, "-e", "bake_only=box", "-e", "bake_id=" + bake_id],
                    timeout=2400,
                )
            )
        finally:
            left = leftovers(bake_id, volumes_before)
        assert left == {"domains": [], "volumes": []}, "the bake left these in libvirt: %s" % left
        assert virsh("net-list", "--all") == networks, "the networks changed"
        assert not list(cache.glob("qemu/%s-*" % bake_id)), "the bake left its work directory"
        target["verify"].pop()

    failed, passed = runs
    assert failed.rc != 0, failed.stdout[-4000:]
    report = failed.task_result("Write the bake manifest")
    assert report["failed_targets"] == [box_target["name"]], report["failures"]
    assert "check signed (shell bake.targets[2].verify[2]) failed" in report["failures"]
    assert "no signature" in report["failures"]

    assert passed.rc == 0, passed.explain()
    # the disk and the box are found, not made again
    for run in runs:
        assert "bakery-%s-builder" % box["source"] not in run.stats
    assert (out / box_file).stat().st_mtime_ns == box_mtime
    result = json.loads((out / "bake-manifest.json").read_text())
    entry = next(a for a in result["artifacts"] if a["target"] == box_target["name"])
    assert entry["sha256"] == made["sha256"] and entry["bake_id"] == made["bake_id"]
    assert entry["verify"]["status"] == "passed" and entry["verify"]["checked"] == "now"
    assert entry["verify"]["checks"] == [
        "serves (shell bake.targets[2].verify[0])",
        "bios (local bake.targets[2].verify[1])",
    ]
    # the machine was the bake's: its domain carries the bake id, and it booted by BIOS (libvirt's default
    # firmware; the disks' UEFI boot is test_qemu's provision: vm bake)
    assert (seen / "domain").read_text().strip() == "bakery-%s-%s-default" % (bake_ids[1], box_target["name"])
    xml = (seen / "domain.xml").read_text()
    assert "<name>bakery-%s-" % bake_ids[1] in xml and "<loader" not in xml
    # vagrant ssh from a local check, as the vagrant user: nginx serves, sudo needs no password
    assert (seen / "page").read_text().split() == ["nginx", "on", "Debian", "0"]


def leftovers(bake_id: str, volumes_before: set[str]) -> dict[str, list[str]]:
    """What libvirt still holds of the bake (its domains, volumes that were not there before), removed so that a
    failed test leaves the host clean."""
    left = {
        "domains": sorted(d for d in domains() if d.startswith("bakery-%s-" % bake_id)),
        # another test may make volumes meanwhile: those of this bake carry its id
        "volumes": sorted(v for v in pool_volumes() - volumes_before if bake_id in v),
    }
    for name in left["domains"]:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True, check=False)
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "undefine", name, "--remove-all-storage", "--nvram"],
            capture_output=True,
            check=False,
        )
    for name in left["volumes"]:
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", name],
            capture_output=True,
            check=False,
        )
    return left


def test_a_box_that_fails_its_checks_stays_out_of_the_catalog(default_bake, tmp_path: Path) -> None:
    """verify on a box: post-processing makes the box, its checks (local commands, VAGRANT_HOME holding the box)
    run, and only a box that passed goes into the catalog. The default bake's disk is found, not made again; the
    box is version 1.0.1 beside the catalog's 1.0.0."""
    out = tmp_path / "output"
    out.mkdir()
    for name in ("example-web.qcow2", "example-web.qcow2.bakery.json", "bakery-example-web.json"):
        subprocess.run(
            ["cp", "--reflink=auto", str(default_bake["output"] / name), str(out / name)], check=True
        )
    catalog = (out / "bakery-example-web.json").read_text()
    definition = json.loads(json.dumps(default_bake["definition"]))
    box_target = next(t for t in definition["targets"] if t["name"] == "box")
    box_target["vagrant"]["version"] = "1.0.1"
    definition["verify"] = [
        {
            "name": "listed",
            "local": {
                "inline": ['vagrant box list | tee /dev/stderr | grep -q "^$BAKERY_VAGRANT_BOX (libvirt"']
            },
            "only": ["box"],
        },
        {
            "name": "signed",
            "local": {"inline": ['echo no signature; test -e "$VAGRANT_HOME/signed"']},
            "only": ["box"],
        },
    ]
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    ids = ["verify-box-%s" % n for n in (1, 2)]

    first = run_playbook(
        REPO / "playbooks" / "bake.yml",
        tmp_path,
        args=["-e", "@%s" % path, "-e", "bake_only=box", "-e", "bake_id=" + ids[0]],
    )
    assert first.rc != 0, first.stdout[-4000:]
    report = first.task_result("Write the bake manifest")
    assert report["failed_targets"] == ["box"], report["failures"]
    assert "target box failed in verify" in report["failures"]
    assert "check signed (local bake.verify[1]) failed" in report["failures"]
    assert "no signature" in report["failures"]
    assert "bakery-disk-builder" not in first.stats  # the disk is found
    # the box is made, and kept for the next run, but the catalog does not list it
    box = out / "bakery-example-web-1.0.1-libvirt.box"
    assert box.is_file() and (out / "bakery-example-web.json").read_text() == catalog
    mtime = box.stat().st_mtime_ns

    # the fixed check: the same box (not made again) passes and goes into the catalog
    definition["verify"][1]["local"]["inline"] = ['echo checking; test -d "$VAGRANT_HOME/boxes"']
    path.write_text(json.dumps({"bake": definition}))
    second = run_playbook(
        REPO / "playbooks" / "bake.yml",
        tmp_path,
        args=["-e", "@%s" % path, "-e", "bake_only=box", "-e", "bake_id=" + ids[1]],
    )
    assert second.rc == 0, second.explain()
    assert box.stat().st_mtime_ns == mtime
    versions = json.loads((out / "bakery-example-web.json").read_text())["versions"]
    assert [v["version"] for v in versions] == ["1.0.0", "1.0.1"]
    manifest = json.loads((out / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "box")
    assert entry["verify"]["status"] == "passed" and entry["catalog"] == str(out / "bakery-example-web.json")
    assert versions[1]["providers"][0]["checksum"] == entry["sha256"]
    # each run's temporary VAGRANT_HOME is gone
    cache = Path(definition["cache_dir"])
    for bake_id in ids:
        assert not list(cache.glob("qemu/%s-*" % bake_id)), bake_id


JANITOR_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: check
      bakery.images.janitor:
        bake_id: "{{ bake_id }}"
        backends: [qemu]
      check_mode: true
    - name: sweep
      bakery.images.janitor:
        bake_id: "{{ bake_id }}"
        backends: [qemu]
    - name: again
      bakery.images.janitor:
        bake_id: "{{ bake_id }}"
        backends: [qemu]
"""

DOMAIN_XML = """<domain type='qemu'>
  <name>%(name)s</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def test_the_janitor_removes_what_libvirt_holds_of_a_killed_bakes_box(libvirtd: str, tmp_path: Path) -> None:
    """A bake killed while its box was booted for its checks leaves a domain (shut off, say), its disk and the box
    image vagrant-libvirt uploaded: the janitor removes the three by bake id, and nothing else."""
    bake_id = "%s-%06x" % (time.strftime("%Y%m%dt%H%M%S", time.gmtime()), (os.getpid() * 2 + 7) & 0xFFFFFF)
    other_id = "%s-%06x" % (time.strftime("%Y%m%dt%H%M%S", time.gmtime()), (os.getpid() * 2 + 9) & 0xFFFFFF)
    networks = virsh("net-list", "--all")
    domain = "bakery-%s-box-default" % bake_id
    made = [domain + ".img", "bakery-%s-box_vagrant_box_image_0_1796357804_box.img" % bake_id]
    made.append("bakery-%s-box_vagrant_box_image_0_1796357804_box.img" % other_id)
    try:
        for name in made:
            virsh("vol-create-as", "default", name, "1M", "--format", "qcow2")
        disk = virsh("vol-path", "--pool", "default", made[0]).strip()
        (tmp_path / "domain.xml").write_text(DOMAIN_XML % {"name": domain, "disk": disk})
        virsh("define", str(tmp_path / "domain.xml"))
        run = run_playbook(JANITOR_PLAY, tmp_path, extra_vars={"bake_id": bake_id}, args=LOCAL)
        assert run.rc == 0, run.explain()
        check = run.task_result("check")
        libvirt = sorted(
            (r["kind"], r["name"], r["state"]) for r in check["resources"] if r["backend"] == "libvirt"
        )
        assert libvirt == [
            ("box image", made[1], "would remove"),
            ("domain", domain, "would remove"),
        ]
        swept = run.task_result("sweep")
        assert swept["changed"] and sorted(
            (r["kind"], r["name"], r["state"]) for r in swept["resources"] if r["backend"] == "libvirt"
        ) == [("box image", made[1], "removed"), ("domain", domain, "removed")]
        again = run.task_result("again")
        assert not again["changed"] and not [r for r in again["resources"] if r["backend"] == "libvirt"]
        assert domain not in domains()
        # the domain's disk went with it; the other bake's box image stays
        assert {v for v in pool_volumes() if bake_id in v or other_id in v} == {made[2]}
        assert virsh("net-list", "--all") == networks
    finally:
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "undefine", domain], capture_output=True, check=False
        )
        for name in set(made) & pool_volumes():
            subprocess.run(
                ["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", name],
                capture_output=True,
                check=False,
            )
