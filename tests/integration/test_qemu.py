"""QEMU disk target, end to end, under TCG (never KVM).

The session's one bake of the default definition (``conftest.default_bake``: the ``disk`` target and the box
made from it; its Docker image is test_default_image's, in the cloud stream), into a temporary output
directory, with the shared test cache for the rootfs: its disk, its manifest entry, nothing left behind, a
second bake that changes nothing. The disks boot twice in the suite,
once per firmware: with UEFI here, as the builder VM of a ``provision: vm`` bake (provisioned over SSH,
its stamp records the firmware); with BIOS in test_vagrant, where vagrant-libvirt boots the default bake's
box (SeaBIOS), logs in as vagrant with the insecure key and checks nginx and sudo.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import LOCAL, PREFLIGHT_TASK, REPO, loops_and_mounts, run_playbook, shadow_path
from package_lists import check_seeded_refresh
from provenance_checks import check_statement
from sbom_checks import check_documents, dpkg_query

from ansible_collections.bakery.images.plugins.module_utils._hygiene import CHECKS as HYGIENE_CHECKS

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
BOOT_TIMEOUT = 900


def default_bake(cache_dir: Path) -> dict:
    with open(REPO / "playbooks" / "vars" / "default_bake.yml", encoding="utf-8") as handle:
        bake = yaml.safe_load(handle)["bake"]
    bake["cache_dir"] = str(cache_dir)
    return bake


def bake(tmp: Path, definition: dict, *args: str):
    path = tmp / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    return run_playbook(BAKE_PLAYBOOK, tmp, args=["-e", "@%s" % path, "-e", "bake_only=disk", *args])


@pytest.fixture(scope="module")
def baked(default_bake):
    """The session's one bake of the default definition (disk and box, see conftest.default_bake)."""
    return default_bake


def test_default_bake_makes_the_disk_and_its_manifest_entry(baked, tmp_path):
    out = baked["tmp"] / "output"
    disk = out / "example-web.qcow2"
    sidecar = json.loads((out / "example-web.qcow2.bakery.json").read_text())
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * 1024**3
    assert info["actual-size"] < 1024**3  # sparse
    manifest = json.loads((out / "bake-manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["target"] == "disk"]
    assert entry["type"] == "qemu" and entry["path"] == str(disk) and entry["format"] == "qcow2"
    assert entry["fingerprint"] == sidecar["fingerprint"] and entry["sha256"] == sidecar["sha256"]
    assert entry["outputs"] == [
        {"format": "qcow2", "path": str(disk), "size": disk.stat().st_size, "sha256": sidecar["sha256"]}
    ]
    assert entry["bake_id"] and entry["build_seconds"] > 0
    # the default bake's disk passes every image hygiene check, recorded in the manifest and the sidecar
    assert {check["name"]: check["status"] for check in entry["hygiene"]} == {
        name: "passed" for name in HYGIENE_CHECKS
    }, entry["hygiene"]
    assert sidecar["hygiene"] == entry["hygiene"]
    # the box made from the disk inherits its results
    (box,) = [a for a in manifest["artifacts"] if a["target"] == "box"]
    assert box["hygiene"] == entry["hygiene"]
    # both run on what the base was built for: this host's architecture
    host_arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert entry["architecture"] == box["architecture"] == host_arch
    # this bake's chroot work directory is gone (other bakes of the shared cache have theirs meanwhile), and
    # nothing temporary is left beside the output
    assert not list((Path(baked["definition"]["cache_dir"]) / "qemu").glob("%s-*" % entry["bake_id"]))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    # its times are the bake's epoch, and Python still takes the bytecode Debian compiled as valid
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    assert stale_bytecode(raw) == []
    check_seeded_package_lists(baked, raw)


def check_seeded_package_lists(baked: dict, raw: Path) -> None:
    """The chroot builder started with the package lists kept with the rootfs
    (package_lists.check_seeded_refresh); the image has no lists."""
    first = baked["first"]
    (unpacked,) = [
        r
        for r in first.task_results("Unpack the root filesystem into the chroot work directory")
        if not r.get("skipped")
    ]
    base = baked["definition"]["base"]
    check_seeded_refresh(first, unpacked, "chroot builder", base["mirror"], base["suite"])
    # ls -p: /inode/mode/uid/gid/name/size/
    listing = debugfs(raw, "ls -p /var/lib/apt/lists").stdout.splitlines()
    names = {line.split("/")[5] for line in listing if line.startswith("/")}
    assert "lock" in names and names <= {".", "..", "lock", "partial", "auxfiles"}, listing


def test_sboms_of_the_disk_and_its_box_list_what_dpkg_lists_in_the_disk(baked, tmp_path):
    """Both SBOMs of the disk and of the box made from it are valid and list exactly the installed packages of
    the disk's own dpkg database, read out of the disk with debugfs (never mounted)."""
    out = baked["tmp"] / "output"
    manifest = json.loads((out / "bake-manifest.json").read_text())
    entries = {a["target"]: a for a in manifest["artifacts"]}
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out / "example-web.qcow2"), str(raw)], check=True)
    try:
        status = debugfs(raw, "cat /var/lib/dpkg/status")
    finally:
        raw.unlink()
    assert status.returncode == 0 and "Package: nginx" in status.stdout, status.stderr
    packages = dpkg_query(status.stdout, tmp_path)
    # the base, the kernel, the disk's own packages and the role's
    assert {"nginx", "curl", "python3", "systemd"} <= {package[0] for package in packages}
    disk = check_documents(entries["disk"], packages)
    box = check_documents(entries["box"], packages)
    assert entries["disk"]["sbom"]["spdx"]["path"] == str(out / "example-web-disk.spdx.json")
    assert entries["box"]["sbom"]["cyclonedx"]["path"] == str(out / "example-web-box.cdx.json")
    # each describes its own artifact (digest, fingerprint), with the provisioning inputs of the disk
    assert disk["cyclonedx"]["metadata"]["component"]["hashes"][0]["content"] == entries["disk"]["sha256"]
    assert box["cyclonedx"]["metadata"]["component"]["hashes"][0]["content"] == entries["box"]["sha256"]
    inputs = {
        c["name"] for c in disk["cyclonedx"]["components"] if "bakery:input" in str(c.get("properties"))
    }
    assert "role:bakery.images.example_web" in inputs
    assert inputs <= {c["name"] for c in box["cyclonedx"]["components"]}
    # each has a provenance statement (it validates) whose subjects are its files' sha256
    for target in ("disk", "box"):
        statement = check_statement(entries[target])
        assert [s["digest"]["sha256"] for s in statement["subject"]] == [entries[target]["sha256"]]
    # SHA256SUMS beside the manifest: the disk, the box, their four SBOMs and two statements, as sha256sum checks them
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True, check=False
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert sorted(line.rsplit(": ", 1)[0] for line in sums.stdout.splitlines()) == sorted(
        ["example-web.qcow2", Path(entries["box"]["path"]).name]
        + [
            "example-web-%s.%s.json" % (target, kind)
            for target in ("disk", "box")
            for kind in ("spdx", "cdx", "intoto")
        ]
    )


def test_second_bake_changes_nothing(baked):
    out = baked["tmp"] / "output"
    manifest = (out / "bake-manifest.json").read_text()
    mtime = (out / "example-web.qcow2").stat().st_mtime_ns
    # its two SBOMs and its provenance statement
    sbom_mtimes = [path.stat().st_mtime_ns for path in sorted(out.glob("example-web-disk.*.json"))]
    assert len(sbom_mtimes) == 3
    second = bake(baked["tmp"], baked["definition"])
    assert second.rc == 0, second.explain()
    assert second.stats["bakery-disk"]["changed"] == 0, second.stats
    assert "bakery-disk-builder" not in second.stats
    assert (out / "example-web.qcow2").stat().st_mtime_ns == mtime
    assert (out / "bake-manifest.json").read_text() == manifest
    assert [path.stat().st_mtime_ns for path in sorted(out.glob("example-web-disk.*.json"))] == sbom_mtimes


def test_a_found_disk_needs_no_build_tool(baked, tmp_path):
    """The preflight looks a disk up as its launch does: found, a missing build tool is no problem."""
    env = {"PATH": shadow_path(tmp_path, {"bwrap"})}
    path = baked["tmp"] / "bake.json"
    path.write_text(json.dumps({"bake": baked["definition"]}))
    checked = run_playbook(
        BAKE_PLAYBOOK, baked["tmp"], args=["-e", "@%s" % path, "-e", "bake_only=disk", "--check"], env=env
    )
    assert checked.rc == 0, checked.explain()
    preflight = checked.task_result(PREFLIGHT_TASK)
    disk = next(t for t in preflight["targets"] if t["name"] == "disk")
    assert disk["artifact_found"] is True
    assert any(
        c["ok"] and c["msg"].startswith("not needed, the artifact is found (else: bwrap")
        for c in disk["preflight"]
    )
    # --check says that deb.debian.org moves: a later bake will not reproduce the disk
    said = checked.task_result("Show whether the artifacts can be reproduced later (check mode)")["msg"]
    assert re.search(r"source_date_epoch \d+ \(from base identity\)", said), said
    assert "the base mirror http://deb.debian.org/debian is not a snapshot mirror" in said, said


def test_a_forced_bake_from_the_same_cache_reproduces_the_disk_and_the_box_bit_for_bit(
    baked, tmp_path_factory
):
    """The default bake again, forced (the base from the same cache, provisioned again, no step cache), into
    another output directory: the disk and the box have the same sha256 as the first bake's; the box catalog
    differs only by the directory in the box's URL, and their SBOMs are the same. (The manifest, the sidecars and the
    provenance statements record the bake's id, paths and times: they differ, as the checksums file that lists
    them.)"""
    tmp = tmp_path_factory.mktemp("reproduced")
    (tmp / "bake.json").write_text(json.dumps({"bake": baked["definition"]}))
    started = time.monotonic()
    again = run_playbook(
        BAKE_PLAYBOOK,
        tmp,
        args=["-e", "@%s" % (tmp / "bake.json"), "-e", "bake_only=box", "-e", "bake_force=true"],
    )
    print("the forced bake of the disk and the box took %.1f s" % (time.monotonic() - started))
    assert again.rc == 0, again.explain()
    assert again.stats["bakery-disk"]["changed"] > 0 and again.stats["bakery-box"]["changed"] > 0, again.stats
    first, second = baked["output"], tmp / "output"
    manifests = [json.loads((out / "bake-manifest.json").read_text()) for out in (first, second)]
    # the second bake made them again (another bake id), it did not find the first's
    bake_ids = [{a["bake_id"] for a in manifest["artifacts"]} for manifest in manifests]
    assert len(bake_ids[0]) == len(bake_ids[1]) == 1 and bake_ids[0] != bake_ids[1], bake_ids
    outputs = [
        {Path(a["path"]).name: a["sha256"] for a in manifest["artifacts"] if a["target"] in ("disk", "box")}
        for manifest in manifests
    ]
    assert len(outputs[1]) == 2 and "example-web.qcow2" in outputs[1], outputs
    assert outputs[0] == outputs[1]
    for name in outputs[1]:
        assert sha256_of(first / name) == sha256_of(second / name) == outputs[1][name], name
    catalogs = [(out / "bakery-example-web.json").read_text() for out in (first, second)]
    assert catalogs[0].replace(str(first), str(second)) == catalogs[1]
    # their SBOMs too (made at the bake's epoch); the provenance statements record each bake's id and times
    documents = [
        {
            Path(doc["path"]).name: Path(doc["path"]).read_bytes()
            for a in manifest["artifacts"]
            if a["target"] in ("disk", "box")
            for doc in a["sbom"].values()
        }
        for manifest in manifests
    ]
    assert len(documents[1]) == 4 and documents[0] == documents[1]


IMAGE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: copy
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        image_checksum: "sha256:{{ checksum }}"
        disk_size: 96M
        outputs: "{{ outputs }}"
      register: copied
    # the SBOMs of a copy, read out of its root file system (a vmdk: through a temporary raw copy beside it; a raw
    # disk is read in place, as the unit tests and the gce upload test check)
    - name: sbom
      bakery.images.sbom:
        disk: "{{ dir }}/copy.vmdk"
        spdx_path: "{{ dir }}/sbom/copy.spdx.json"
        cyclonedx_path: "{{ dir }}/sbom/copy.cdx.json"
        name: copy
        type: qemu
        fingerprint: "{{ copied.fingerprint }}"
        bake_id: 20261205t000000-c0c0c0
        inputs: "{{ copied.inputs }}"
    - name: again
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        image_checksum: "{{ checksum }}"
        disk_size: 96M
        outputs: "{{ outputs }}"
    - name: overlay
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        backing: true
        disk_size: 128M
        outputs: [{path: "{{ dir }}/overlay.qcow2"}]
    - name: mismatch
      bakery.images.qemu_image:
        image: "{{ dir }}/src.qcow2"
        image_checksum: "{{ '0' * 64 }}"
        outputs: [{path: "{{ dir }}/bad.qcow2"}]
      ignore_errors: true
"""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_base_image(tmp_path: Path) -> tuple[Path, str]:
    """A qcow2 disk bakery did not make: a GPT with an ESP and an x86-64 root partition holding an ext4 file
    system made from a small tree (mkfs -d, no mount) with a dpkg database - the first 60 packages of this host's
    status file and their copyright files - and data written past the file system; and its dpkg status."""
    tree = tmp_path / "tree"
    (tree / "var/lib/dpkg").mkdir(parents=True)
    status = "\n\n".join(Path("/var/lib/dpkg/status").read_text().split("\n\n")[:60]).strip() + "\n"
    (tree / "var/lib/dpkg/status").write_text(status)
    for name in (
        line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Package:")
    ):
        copyright_file = Path("/usr/share/doc") / name / "copyright"
        if copyright_file.is_file():
            (tree / "usr/share/doc" / name).mkdir(parents=True, exist_ok=True)
            (tree / "usr/share/doc" / name / "copyright").write_bytes(copyright_file.read_bytes())
    raw = tmp_path / "src.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "64M"], check=True)
    subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", str(raw)],
        input="label: gpt\nstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
        "start=8192, size=98304, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n",
        text=True,
        check=True,
    )
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "offset=%d" % (4 * 1024**2), "-d", str(tree), str(raw), "48M"],
        check=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 58M 1M", str(raw)], check=True, capture_output=True
    )
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(src)], check=True)
    raw.unlink()
    return src, status


def test_existing_image_copied_to_every_format_grown_and_checked(tmp_path):
    src, status = make_base_image(tmp_path)
    checksum = subprocess.run(
        ["sha256sum", str(src)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    outputs = [{"path": str(tmp_path / ("copy." + fmt))} for fmt in ("qcow2", "raw", "vmdk", "vdi", "vhdx")]
    run = run_playbook(
        IMAGE_PLAY,
        tmp_path,
        extra_vars={"dir": str(tmp_path), "checksum": checksum, "outputs": outputs},
        args=LOCAL,
    )
    assert run.rc == 0, run.explain()
    copy, again = run.task_result("copy"), run.task_result("again")
    assert copy["changed"] and not again["changed"] and again["found"]
    for fmt in ("qcow2", "raw", "vmdk", "vdi", "vhdx"):
        path = tmp_path / ("copy." + fmt)
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
            ).stdout
        )
        assert info["format"] == fmt and info["virtual-size"] == 96 * 1024**2, info
        sidecar = json.loads((tmp_path / ("copy.%s.bakery.json" % fmt)).read_text())
        assert sidecar["format"] == fmt and sidecar["fingerprint"] == copy["fingerprint"]
        if fmt == "vmdk":
            assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
            # its descriptor names the output, not the temporary file it was written to, and it still checks
            descriptor = path.read_bytes()[512:1536]
            assert b'SPARSE "copy.vmdk"' in descriptor, descriptor
            assert (
                subprocess.run(["qemu-img", "check", str(path)], capture_output=True, check=False).returncode
                == 0
            )
    # the data survived the trip through every format
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "vhdx", str(src), str(tmp_path / "copy.vhdx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Images are identical" in compare.stdout or "size" in compare.stdout
    overlay = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(tmp_path / "overlay.qcow2")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert overlay["backing-filename"] == str(src) and overlay["virtual-size"] == 128 * 1024**2
    mismatch = run.task_result("mismatch")
    assert mismatch["failed"] and "checksum mismatch" in mismatch["msg"] and checksum in mismatch["msg"]
    assert not (tmp_path / "bad.qcow2").exists()
    # the copy's SBOMs are valid and list exactly what dpkg-query lists of the disk's tree (the temporary raw copy
    # of the vmdk is gone: no dot file below)
    packages = dpkg_query(status, tmp_path / "dpkg")
    assert len(packages) > 40
    made = run.task_result("sbom")
    assert made["changed"] and made["packages"] == len(packages)
    documents = check_documents({"sbom": made["documents"], "fingerprint": copy["fingerprint"]}, packages)
    licensed = [c for c in documents["cyclonedx"]["components"] if c.get("licenses")]
    assert licensed, "no license read from the disk's copyright files"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


STAMP_ROLE = """\
- name: Read what runs as PID 1 (systemd in a booted VM; a chroot has no /proc), the firmware, the kernel's command line
  ansible.builtin.shell: |
    set -e
    cat /proc/1/comm
    if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi
    cat /proc/cmdline
  register: stamp_boot
  changed_when: false
- name: Leave a stamp
  ansible.builtin.copy:
    content: "{{ stamp_boot.stdout }}\\n"
    dest: /etc/bakery-stamp
    mode: "0644"
"""

# the test run's id: the role's steps are this run's own (not another run's, kept in a shared cache), and the same in
# each of its bakes (a forced one makes the bytes of one that resumed)
STAMP_TOKEN = """\
- name: Leave the test run's token
  ansible.builtin.copy:
    content: "%s\\n"
    dest: /etc/bakery-token
    mode: "0644"
"""


def debugfs(disk: Path, request: str, text: bool = True) -> subprocess.CompletedProcess:
    """Read the root file system of a raw disk made by qemu_image, at its offset, without mounting it (*text*
    False: the output as bytes)."""
    return subprocess.run(
        ["debugfs", "-R", request, "%s?offset=%d" % (disk, 66 * 1024**2)],
        capture_output=True,
        text=text,
        check=False,
    )


def stale_bytecode(disk: Path, modules=("base64", "json/__init__", "subprocess", "zipfile")) -> list[str]:
    """The modules of the raw disk's Python 3.11 whose timestamp-based bytecode Python would not use: it records
    another time or size than its source has (the disk's times are the bake's epoch, its bytecode was compiled
    when the packages were installed, or in a builder VM when Ansible ran)."""
    stale = []
    for module in modules:
        source = "/usr/lib/python3.11/%s.py" % module
        pyc = "%s/__pycache__/%s.cpython-311.pyc" % (posixpath.dirname(source), posixpath.basename(module))
        st = debugfs(disk, "stat %s" % source).stdout
        mtime, size = (
            int(re.search(r"\bmtime: 0x([0-9a-f]+)", st).group(1), 16),
            int(re.search(r"Size: (\d+)", st).group(1)),
        )
        read = debugfs(disk, "cat %s" % pyc, text=False)
        assert read.returncode == 0, read.stderr
        header = read.stdout[:16]
        flags, recorded, recorded_size = struct.unpack("<III", header[4:16])
        if flags == 0 and (recorded, recorded_size) != (mtime, size):
            stale.append("%s (source %d %d, bytecode %d %d)" % (module, mtime, size, recorded, recorded_size))
    return stale


# the reassembled disk's check in verify: it booted from the root file system its fstab and kernel command line name
BOOTED_CHECK = (
    'uuid="$(findmnt -no UUID /)"; echo "root $uuid"; test -s /etc/bakery-stamp'
    ' && grep -q "^UUID=$uuid / " /etc/fstab && grep -q "root=UUID=$uuid " /proc/cmdline'
)


def test_vm_provisioning_boots_the_disk_and_provisions_it_over_ssh(cache_dir, tmp_path):
    """A provision: vm bake (UEFI, TCG) keeps its builder's disk after each provisioner (per-step cache, a qcow2
    overlay chain); the same bake with only its last provisioner changed boots from the layer kept after the first
    and runs only the last; that second definition again, forced (no cache), into another directory makes the same
    bytes, and its verify boots the disk. Every disk is made again from the powered-off builder's tree."""
    run_id = uuid.uuid4().hex
    role = tmp_path / "roles" / "stamp" / "tasks"
    role.mkdir(parents=True)
    # the run's id makes the role's steps this test's own; the token shows whether the role ran again
    (role / "main.yml").write_text(STAMP_ROLE + STAMP_TOKEN % run_id)
    definition = {
        "name": "vmbake",
        "cache_dir": str(cache_dir),
        "base": default_bake(cache_dir)["base"],
        "provisioners": [
            {"role": "stamp"},
            {"name": "last", "shell": {"inline": ["echo one > /etc/bakery-last"]}},
        ],
        "targets": [
            {
                "name": "vmdisk",
                "qemu": {
                    "provision": "vm",
                    "formats": ["raw", "qcow2"],
                    "disk_size": "2G",
                    # UEFI (OVMF): the disks' UEFI boot; their BIOS boot is test_vagrant's vagrant up
                    "vm": {
                        "accelerator": "tcg",
                        "memory": 768,
                        "cpus": 1,
                        "firmware": "uefi",
                        "boot_timeout": BOOT_TIMEOUT,
                    },
                },
            }
        ],
    }
    steps_dir = cache_dir / "vm-steps"
    keys: list[str] = []

    def vm_bake(directory: Path, *args: str):
        (directory / "bake.json").write_text(json.dumps({"bake": definition}))
        started = time.monotonic()
        result = run_playbook(
            BAKE_PLAYBOOK,
            directory,
            args=["-e", "@%s" % (directory / "bake.json"), *args],
            env={"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")},
            timeout=2400,
        )
        print("bake %s: %.1f s" % (" ".join(args) or "", time.monotonic() - started))
        return result

    try:
        run = vm_bake(tmp_path)
        assert run.rc == 0, run.explain()
        assert run.stats["bakery-vmdisk-builder"]["failures"] == 0
        disk = tmp_path / "output" / "vmbake.raw"
        # provisioned in the booted VM (systemd is PID 1), which booted with UEFI, its console on the serial port
        init, firmware, cmdline = debugfs(disk, "cat /etc/bakery-stamp").stdout.splitlines()
        assert (init, firmware) == ("systemd", "uefi")
        assert any(arg.startswith("console=ttyS0") for arg in cmdline.split()), cmdline
        # the builder's key and the host keys made at its first boot are not in the image
        assert "authorized_keys" not in debugfs(disk, "ls -l /root/.ssh").stdout
        assert "ssh_host_" not in debugfs(disk, "ls -l /etc/ssh").stdout
        (entry,) = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"]
        bake_id = entry["bake_id"]
        first_outputs = {Path(output["path"]).name: output["sha256"] for output in entry["outputs"]}
        # checked in the guest before it powered off, the builder's key among the checks
        checks = {check["name"]: check for check in entry["hygiene"]}
        assert {name: check["status"] for name, check in checks.items()} == {
            name: "passed" for name in HYGIENE_CHECKS
        }
        assert checks["builder_key"]["detail"] == "", "the builder's key was not looked for"
        # the SBOMs list the packages of the disk's own database, read in the guest before it powered off
        packages = dpkg_query(debugfs(disk, "cat /var/lib/dpkg/status").stdout, tmp_path)
        assert len(packages) > 50
        check_documents(entry, packages)
        assert {s["name"]: s["digest"] for s in check_statement(entry)["subject"]} == {
            name: {"sha256": sha256} for name, sha256 in first_outputs.items()
        }
        left = subprocess.run(
            ["pgrep", "-f", "bakery-%s" % bake_id], capture_output=True, text=True, check=False
        )
        assert left.stdout == "", "qemu left running: %s" % left.stdout
        assert not list((cache_dir / "qemu").glob("%s-*" % bake_id))
        # made again from the builder's tree: a root file system of its own (fstab and grub.cfg name it, not the
        # builder's), with the tree's hard links and set-user-ID bits
        builder_uuid = re.search(r"root=UUID=(\S+)", cmdline).group(1)
        fstab = debugfs(disk, "cat /etc/fstab").stdout
        fstab_uuid = re.search(r"^UUID=(\S+) / ", fstab, re.MULTILINE).group(1)
        assert fstab_uuid != builder_uuid
        assert "root=UUID=%s " % fstab_uuid in debugfs(disk, "cat /boot/grub/grub.cfg").stdout
        assert "Links: 2" in debugfs(disk, "stat /usr/bin/perl").stdout
        assert "Mode:  04755" in debugfs(disk, "stat /usr/bin/su").stdout
        # Python uses the image's bytecode: the epoch the times were clamped to is what it records of its sources
        assert stale_bytecode(disk) == []

        # the builder's disk got the package lists kept with the rootfs (when it has them: one built before they
        # were kept has none), for the refresh before the first provisioner
        seeded = run.task_result("Make the disk the builder VM boots").get("apt_lists")
        (_refreshed,) = [
            r
            for r in run.task_results("Refresh the package lists before the first provisioner")
            if not r.get("skipped")
        ]
        print(
            "refresh in the builder VM (%s): %.1f s"
            % (
                "seeded" if seeded else "not seeded",
                run.task_seconds("Refresh the package lists before the first provisioner"),
            )
        )
        rootfs = run.task_result("Build the target's root filesystem (the base with a kernel)")["path"]
        if Path(rootfs + ".apt-lists.tar").exists():
            assert seeded and seeded["files"] >= 2 and "error" not in seeded, seeded

        # the per-step cache: the disk after each provisioner is a sealed layer, each over the one before
        assert entry["step_cache"]["steps"] == ["miss", "miss"] and entry["step_cache"]["resume"] == 0
        saves = run.task_results("Keep the builder VM's disk after the provisioner (per-step cache)")
        print(
            "steps kept: %s"
            % [(r["frozen"], r["snapshot_duration"], r["duration"], r["size"]) for r in saves]
        )
        keys = run.task_result("Look up where the per-step cache starts the builder VM")["step_cache"]["keys"]
        assert len(keys) == 3
        for position, key in enumerate(keys[1:], 1):
            layer = steps_dir / ("%s.qcow2" % key)
            seal = json.loads((steps_dir / ("%s.qcow2.seal" % key)).read_text())
            assert seal["position"] == position and seal["size"] == layer.stat().st_size
            assert seal["sha256"] == hashlib.sha256(layer.read_bytes()).hexdigest()
            info = json.loads(
                subprocess.run(
                    ["qemu-img", "info", "--output=json", str(layer)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            assert info.get("backing-filename") == (
                None if position == 1 else "%s.qcow2" % keys[position - 1]
            )
        token = debugfs(disk, "cat /etc/bakery-token").stdout
        assert token == run_id + "\n", token

        # only the last provisioner changes: --check says where the bake would resume, then it resumes there
        definition["provisioners"][1]["shell"]["inline"] = ["echo two > /etc/bakery-last"]
        check = vm_bake(tmp_path, "--check")
        assert check.rc == 0, check.explain()
        line = [line for line in check.task_result("Artifact summary")["msg"] if "vmdisk" in line]
        assert line and "would resume after provisioner 1" in line[0], line
        second = vm_bake(tmp_path)
        keys += second.task_result("Look up where the per-step cache starts the builder VM")["step_cache"][
            "keys"
        ]
        assert second.rc == 0, second.explain()
        (entry,) = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"]
        assert entry["step_cache"]["steps"] == ["hit", "miss"] and entry["step_cache"]["resume"] == 1
        assert entry["step_cache"]["image"] == str(steps_dir / ("%s.qcow2" % keys[1]))
        summary = second.task_result("Artifact summary")["msg"]
        assert any("steps 1 hit/1 miss, resumed after provisioner 1" in line for line in summary), summary
        # the role did not run again; both provisioners' effects are in the disk
        assert not second.task_results("Leave a stamp")
        assert debugfs(disk, "cat /etc/bakery-token").stdout == token
        assert debugfs(disk, "cat /etc/bakery-stamp").stdout.splitlines()[:2] == ["systemd", "uefi"]
        assert debugfs(disk, "cat /etc/bakery-last").stdout == "two\n"
        checks = {check["name"]: check["status"] for check in entry["hygiene"]}
        assert checks == {name: "passed" for name in HYGIENE_CHECKS}

        second_outputs = {Path(output["path"]).name: output["sha256"] for output in entry["outputs"]}

        # the second definition again, forced (no cache), into another directory: the disk made from the first
        # bake's layer and a resumed second step has the bytes of the one made without the cache; each bake boots
        # the same builder disk (its identifiers and times follow from step 0), and a forced bake reproduces the
        # disk bit for bit (issues 15 and 19). Its verify boots the qcow2 (from the root file system its fstab
        # and grub.cfg name)
        definition["verify"] = [{"name": "booted", "shell": {"inline": [BOOTED_CHECK]}}]
        again_dir = tmp_path / "again"
        again_dir.mkdir()
        again = vm_bake(again_dir, "-e", "bake_force=true")
        assert again.rc == 0, again.explain()
        assert again.stats["bakery-vmdisk-verify"]["failures"] == 0, again.stats
        (third,) = json.loads((again_dir / "output" / "bake-manifest.json").read_text())["artifacts"]
        assert third["bake_id"] != entry["bake_id"] and third["step_cache"]["resume"] == 0
        assert third["verify"]["status"] == "passed", third.get("verify")
        assert again.task_results("Leave a stamp")
        assert {Path(output["path"]).name: output["sha256"] for output in third["outputs"]} == second_outputs
        for name, sha256 in second_outputs.items():
            assert sha256_of(again_dir / "output" / name) == sha256, name
    finally:
        for key in set(keys[1:]):
            for name in ("%s.qcow2" % key, "%s.qcow2.seal" % key):
                (steps_dir / name).unlink(missing_ok=True)


def test_verify_boots_the_disk_and_a_failed_check_publishes_nothing(baked, tmp_path):
    """verify: the session's default disk, found by fingerprint (the checks are no input of it), booted under TCG
    through an overlay and checked over SSH. A failing check fails the disk in verify and the box made from it is
    not made; the fixed check passes on the same disk, not made again. Two boots."""
    out = tmp_path / "output"
    out.mkdir()
    for name in ("example-web.qcow2", "example-web.qcow2.bakery.json", "bakery-example-web.json"):
        subprocess.run(["cp", "--reflink=auto", str(baked["output"] / name), str(out / name)], check=True)
    catalog = (out / "bakery-example-web.json").read_text()
    disk_sha256 = json.loads((out / "example-web.qcow2.bakery.json").read_text())["sha256"]
    definition = json.loads(json.dumps(baked["definition"]))
    disk_target = next(t for t in definition["targets"] if t["name"] == "disk")
    disk_target["qemu"]["vm"] = {"accelerator": "tcg", "memory": 768, "cpus": 1, "boot_timeout": BOOT_TIMEOUT}
    box_target = next(t for t in definition["targets"] if t["name"] == "box")
    box_target["vagrant"]["version"] = "1.0.1"
    definition["verify"] = [
        {
            "name": "serves",
            "shell": {"inline": ["curl -sf http://127.0.0.1/ | grep -qi nginx"]},
            "only": ["disk"],
        },
        {"name": "marker", "shell": {"inline": ["echo looking; test -e /srv/marker"]}, "only": ["disk"]},
    ]
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    args = ["-e", "@%s" % path]

    ids = ["verify-%s-%s" % (uuid.uuid4().hex[:8], n) for n in (1, 2)]
    first = run_playbook(
        BAKE_PLAYBOOK, tmp_path, args=[*args, "-e", "bake_only=box", "-e", "bake_id=" + ids[0]], timeout=2400
    )
    assert first.rc != 0, first.stdout[-4000:]
    report = first.task_result("Write the bake manifest")
    assert sorted(report["failed_targets"]) == ["box", "disk"], report["failures"]
    assert "target disk failed in verify" in report["failures"]
    assert "check marker (shell bake.verify[1]) failed" in report["failures"]
    assert "looking" in report["failures"]
    assert "source target disk of box failed" in report["failures"]
    assert "bakery-disk-builder" not in first.stats  # found, not made again
    # nothing published: no box 1.0.1, the catalog as it was; the disk is kept for the next run
    assert not list(out.glob("*1.0.1*")) and (out / "bakery-example-web.json").read_text() == catalog
    manifest = json.loads((out / "bake-manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "disk")
    assert entry["id"] == disk_sha256 and entry["verify"]["status"] == "failed"
    assert entry["verify"]["checks"] == ["serves (shell bake.verify[0])", "marker (shell bake.verify[1])"]

    # the fixed check: the same disk, checked again (the digest changed), passes; the disk was not changed
    definition["verify"][1]["shell"]["inline"] = ["echo looking; test -e /etc/nginx/nginx.conf"]
    path.write_text(json.dumps({"bake": definition}))
    second = run_playbook(
        BAKE_PLAYBOOK, tmp_path, args=[*args, "-e", "bake_only=disk", "-e", "bake_id=" + ids[1]], timeout=2400
    )
    assert second.rc == 0, second.explain()
    assert "bakery-disk-builder" not in second.stats
    assert second.stats["bakery-disk-verify"]["failures"] == 0
    entry = next(
        a for a in json.loads((out / "bake-manifest.json").read_text())["artifacts"] if a["target"] == "disk"
    )
    assert entry["verify"]["status"] == "passed" and entry["verify"]["checked"] == "now"
    assert entry["id"] == disk_sha256
    assert json.loads((out / "example-web.qcow2.bakery.json").read_text())["sha256"] == disk_sha256
    # the verify VM is gone, and so is its work directory
    for bake_id in ids:
        left = subprocess.run(
            ["pgrep", "-f", "bakery-%s" % bake_id], capture_output=True, text=True, check=False
        )
        assert left.stdout == "", "qemu left running: %s" % left.stdout
        assert not list((Path(definition["cache_dir"]) / "qemu").glob("%s-*" % bake_id))


def test_no_loop_device_or_mount_left(baked):
    assert loops_and_mounts(*baked["watched"]) == baked["before"] == (set(), set())
