"""QEMU disk logic that needs no root and no tools: options, layout, GRUB's boot sector, the tree, the plan."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _files, _manifest, _plan, _qemu_disk
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

MIB = 1024 * 1024


@pytest.mark.parametrize(
    "text, size",
    [
        ("4G", 4 << 30),
        ("4GiB", 4 << 30),
        ("512M", 512 * MIB),
        ("1.5G", 1536 * MIB),
        (1048576, MIB),
        ("10", 10),
    ],
)
def test_sizes(text, size):
    assert _qemu_disk.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "four", "-1G", "4X", True, "0"])
def test_bad_sizes_say_what_a_size_is(text):
    with pytest.raises(BakeryError, match="disk_size"):
        _qemu_disk.parse_size(text)


def params(tmp_path, **extra):
    base = {"rootfs": str(tmp_path / "root.tar"), "outputs": [{"path": str(tmp_path / "d.qcow2")}]}
    base.update(extra)
    return base


def test_output_formats_from_names_and_errors(tmp_path):
    outs = _qemu_disk.parse_outputs(
        [
            {"path": "/o/a.qcow2", "compress": True},
            {"path": "/o/a.img"},
            {"path": "/o/a.disk", "format": "vmdk"},
        ]
    )
    assert [(o.format, o.compress) for o in outs] == [("qcow2", True), ("raw", False), ("vmdk", False)]
    with pytest.raises(BakeryError, match="unsupported output format 'iso'"):
        _qemu_disk.parse_outputs([{"path": "/o/a.iso", "format": "iso"}])
    with pytest.raises(BakeryError, match="cannot tell the format"):
        _qemu_disk.parse_outputs([{"path": "/o/a.bin"}])
    with pytest.raises(BakeryError, match="compress is for qcow2"):
        _qemu_disk.parse_outputs([{"path": "/o/a.vdi", "compress": True}])
    with pytest.raises(BakeryError, match="exactly one of rootfs"):
        _qemu_disk.parse_options({"outputs": [{"path": "/o/a.qcow2"}]})
    with pytest.raises(BakeryError, match="too small"):
        _qemu_disk.parse_options(params(tmp_path, disk_size="64M"))
    with pytest.raises(BakeryError, match="not a sha256"):
        _qemu_disk.parse_options(
            {"image": "/i.qcow2", "image_checksum": "md5:abc", "outputs": [{"path": "/o.qcow2"}]}
        )


def test_missing_vagrant_key_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(_qemu_disk, "VAGRANT_KEY_GLOBS", (str(tmp_path / "none" / "*.pub"),))
    with pytest.raises(BakeryError, match="Debian package 'vagrant'"):
        _qemu_disk.parse_options(params(tmp_path, vagrant=True))
    key = tmp_path / "k.pub"
    key.write_text("ssh-ed25519 AAAA test\n")
    assert _qemu_disk.parse_options(params(tmp_path, vagrant=True, vagrant_key=str(key))).vagrant_key == str(
        key
    )


def test_fingerprint_follows_inputs_and_disk_options_not_output_names(tmp_path):
    def fp(**extra):
        opts = _qemu_disk.parse_options(params(tmp_path, **dict({"inputs": {"source": "s1"}}, **extra)))
        return _qemu_disk.lookup(opts)["fingerprint"]

    base = fp()
    assert fp(outputs=[{"path": str(tmp_path / "other.vmdk")}]) == base
    assert fp(disk_size="8G") != base
    assert fp(kernel_cmdline="quiet") != base
    assert fp(inputs={"source": "s2"}) != base


def test_layout_is_deterministic_and_fits_the_disk():
    one = _qemu_disk.make_layout(4 << 30, "f" * 64)
    assert one == _qemu_disk.make_layout(4 << 30, "f" * 64)
    assert one.root_uuid != _qemu_disk.make_layout(4 << 30, "e" * 64).root_uuid
    assert _qemu_disk.ROOT_START + one.root_size <= (4 << 30) - _qemu_disk.TAIL
    script = one.sfdisk_script()
    assert "label: gpt" in script and _qemu_disk.GPT_BIOS_BOOT in script and _qemu_disk.GPT_ESP in script
    assert "start=%d" % (_qemu_disk.ROOT_START // 512) in script


def test_grub_config_boots_root_by_uuid_on_the_serial_console():
    layout = _qemu_disk.make_layout(2 << 30, "a" * 64)
    cfg = _qemu_disk.grub_cfg(layout, "/vmlinuz", "/initrd.img", "quiet")
    assert "search --no-floppy --fs-uuid --set=root %s" % layout.root_uuid in cfg
    assert (
        "linux /vmlinuz root=UUID=%s ro console=tty0 console=ttyS0,115200n8 quiet" % layout.root_uuid in cfg
    )
    assert "initrd /initrd.img" in cfg and "serial --unit=0" in cfg
    assert "set prefix=($root)/boot/grub" in _qemu_disk.early_cfg(layout)


def test_bios_boot_code_points_at_core_image_and_keeps_the_partition_table(tmp_path):
    raw = tmp_path / "disk.raw"
    mbr = bytearray(512)
    mbr[0x1BE:0x1CE] = b"\xee" * 16  # protective MBR entry
    mbr[0x1FE:0x200] = b"\x55\xaa"
    raw.write_bytes(bytes(mbr) + bytes(4 * MIB))
    boot = tmp_path / "boot.img"
    boot.write_bytes(b"\xeb\x63" + bytes(510))
    core = tmp_path / "core.img"
    core.write_bytes(bytes(512 * 60 + 100))
    _qemu_disk.embed_bios_boot(str(raw), str(boot), str(core))
    data = raw.read_bytes()
    assert data[:2] == b"\xeb\x63" and data[0x1BE:0x1CE] == b"\xee" * 16 and data[0x1FE:0x200] == b"\x55\xaa"
    assert int.from_bytes(data[0x5C:0x64], "little") == 2048
    block = data[_qemu_disk.BIOS_START + 500 : _qemu_disk.BIOS_START + 512]
    assert int.from_bytes(block[:8], "little") == 2049  # the rest of core.img follows its first sector
    assert int.from_bytes(block[8:10], "little") == 60
    assert int.from_bytes(block[10:12], "little") == 0x820
    too_big = tmp_path / "big.img"
    too_big.write_bytes(bytes(2 * MIB))
    with pytest.raises(BakeryError, match="does not fit"):
        _qemu_disk.embed_bios_boot(str(raw), str(boot), str(too_big))


def fake_tree(root):
    for rel in ("boot", "etc/ssh", "usr/sbin", "var/lib/dbus"):
        os.makedirs(root / rel)
    (root / "boot" / "vmlinuz-6.1.0-9-cloud-amd64").write_text("k")
    (root / "boot" / "initrd.img-6.1.0-9-cloud-amd64").write_text("i")
    (root / "boot" / "vmlinuz-6.1.0-10-cloud-amd64").write_text("k")
    (root / "boot" / "initrd.img-6.1.0-10-cloud-amd64").write_text("i")
    (root / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("secret")
    (root / "etc" / "machine-id").write_text("0123456789abcdef\n")
    (root / "var" / "lib" / "dbus" / "machine-id").write_text("0123456789abcdef\n")
    (root / "usr" / "sbin" / "sshd").write_text("")


def test_tree_becomes_a_machine_image(tmp_path):
    root = tmp_path / "root"
    fake_tree(root)
    opts = _qemu_disk.parse_options(params(tmp_path, dhcp=False, hostname="web1"))
    layout = _qemu_disk.make_layout(opts.disk_size, "b" * 64)
    found = _qemu_disk.prepare_tree(str(root), opts, layout)
    assert found == {
        "kernel": "/boot/vmlinuz-6.1.0-10-cloud-amd64",
        "initrd": "/boot/initrd.img-6.1.0-10-cloud-amd64",
    }
    assert "UUID=%s / ext4" % layout.root_uuid in (root / "etc" / "fstab").read_text()
    assert "/boot/vmlinuz-6.1.0-10-cloud-amd64" in (root / "boot" / "grub" / "grub.cfg").read_text()
    assert not list((root / "etc" / "ssh").glob("ssh_host_*"))
    assert (root / "etc" / "machine-id").read_text() == ""
    assert not (root / "var" / "lib" / "dbus" / "machine-id").exists()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "bakery-ssh-hostkeys.service"
    assert os.readlink(wants) == "../bakery-ssh-hostkeys.service"
    assert (root / "etc" / "hostname").read_text() == "web1\n"


def test_writes_never_follow_links_out_of_the_tree(tmp_path):
    root = tmp_path / "root"
    fake_tree(root)
    outside = tmp_path / "host-fstab"
    outside.write_text("host\n")
    (root / "etc" / "fstab").symlink_to(outside)
    opts = _qemu_disk.parse_options(params(tmp_path, dhcp=False))
    _qemu_disk.prepare_tree(str(root), opts, _qemu_disk.make_layout(opts.disk_size, "c" * 64))
    assert outside.read_text() == "host\n"
    assert not (root / "etc" / "fstab").is_symlink()
    os.symlink(str(tmp_path), root / "linkdir")
    with pytest.raises(BakeryError, match="symlink"):
        _qemu_disk.write_file(str(root), "linkdir/x", "no")


def test_a_tree_without_kernel_says_what_to_install(tmp_path):
    (tmp_path / "root" / "boot").mkdir(parents=True)
    with pytest.raises(BakeryError, match="linux-image-cloud-amd64"):
        _qemu_disk.find_kernel(str(tmp_path / "root"))


def test_chroot_state_is_restored_and_only_marked_workdirs_are_removed(tmp_path):
    workdir = tmp_path / "w"
    root = workdir / "root"
    os.makedirs(root / "etc")
    os.makedirs(root / "usr" / "sbin")
    (root / "etc" / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (workdir / ".bakery-temporary").write_text("b1\n")
    (workdir / "chroot.json").write_text(
        json.dumps(
            {
                "etc/resolv.conf": {"link": "../run/systemd/resolve/stub-resolv.conf"},
                "usr/sbin/policy-rc.d": None,
            }
        )
    )
    os.unlink(root / "etc" / "resolv.conf")
    (root / "etc" / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (root / "usr" / "sbin" / "policy-rc.d").write_text("exit 101\n")
    assert _qemu_disk.restore_chroot(str(root))
    assert os.readlink(root / "etc" / "resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert not (root / "usr" / "sbin" / "policy-rc.d").exists()
    other = tmp_path / "mine"
    other.mkdir()
    with pytest.raises(BakeryError, match="not a bakery work directory"):
        _qemu_disk.remove_workdir(str(other))
    assert _qemu_disk.remove_workdir(str(workdir)) and not workdir.exists()


def test_find_reports_missing_and_up_to_date_outputs(tmp_path):
    opts = _qemu_disk.parse_options(params(tmp_path, inputs={"source": "s1"}))
    missing = _qemu_disk.lookup(opts)
    assert not missing["found"] and missing["outputs"] == []
    disk = tmp_path / "d.qcow2"
    disk.write_bytes(b"x" * 10)
    sidecar = {
        "fingerprint": missing["fingerprint"],
        "format": "qcow2",
        "size": 10,
        "sha256": "s",
        "inputs": {},
    }
    (tmp_path / "d.qcow2.bakery.json").write_text(json.dumps(sidecar))
    found = _qemu_disk.lookup(opts)
    assert found["found"] and found["path"] == str(disk) and found["changed_inputs"] == []
    disk.write_bytes(b"x" * 11)  # changed behind bakery's back
    assert not _qemu_disk.lookup(opts)["found"]


def test_check_mode_creates_nothing(tmp_path):
    result = _qemu_disk.bake_disk(params(tmp_path, inputs={"source": "s1"}), check_mode=True)
    assert result["changed"] and result["msg"].startswith("would build")
    assert os.listdir(tmp_path) == []


QEMU_TARGET = {
    "provision": "chroot",
    "formats": ["qcow2", "vmdk"],
    "system_packages": ["linux-image-cloud-amd64", "openssh-server"],
    "packages": [],
    "disk_size": "4G",
}


def test_plan_gives_a_qemu_target_its_own_rootfs_and_outputs():
    bake = {
        "name": "web",
        "output_dir": "out",
        "base": {"suite": "bookworm", "packages": ["python3"]},
        "provisioners": [{"role": "r", "vars": {}}],
        "targets": [
            {"name": "img", "docker": {"repository": "bakery/web"}},
            {"name": "disk", "qemu": QEMU_TARGET},
        ],
    }
    result = _plan.make_plan(
        bake, validate_target=lambda kind, options, where: dict(options), role_digest=lambda n: "d", cwd="/w"
    )
    img, disk = result["targets"]
    assert disk["rootfs"]["path"] != img["rootfs"]["path"]
    assert disk["rootfs"]["options"]["packages"] == ["python3", "linux-image-cloud-amd64", "openssh-server"]
    assert disk["inputs"]["source"] == disk["rootfs"]["identity"] != img["inputs"]["source"]
    assert _qemu_disk.outputs_for(disk) == [
        {"path": "/w/out/web.qcow2", "format": "qcow2", "compress": False},
        {"path": "/w/out/web.vmdk", "format": "vmdk", "compress": False},
    ]
    assert _qemu_disk.workdir_for(disk) == "/w/out/cache/qemu/%s-disk" % result["bake_id"]
    bad = dict(bake, targets=[{"name": "disk", "qemu": dict(QEMU_TARGET, base_image="/i.qcow2")}])
    with pytest.raises(BakeryError, match="provision: vm"):
        _plan.make_plan(bad, validate_target=lambda k, o, w: dict(o), role_digest=lambda n: "d", cwd="/w")


def test_plan_copies_a_base_image_without_a_builder_when_provision_is_none(tmp_path):
    disk = tmp_path / "made-elsewhere.raw"
    disk.write_bytes(b"")
    copy = dict(QEMU_TARGET, provision="none", base_image=str(disk), formats=["raw"])
    bake = {
        "name": "web",
        "base": {"suite": "bookworm"},
        "provisioners": [{"role": "r", "vars": {}}],
        "targets": [{"name": "disk", "qemu": copy}],
    }
    result = _plan.make_plan(
        bake, validate_target=lambda k, o, w: dict(o), role_digest=lambda n: "d", cwd=str(tmp_path)
    )
    (target,) = result["targets"]
    # no builder: the bake's roles do not apply, no rootfs is built, nothing of theirs is in the fingerprint
    assert not target["needs_builder"] and target["provisioners"] == [] and target["rootfs"] is None
    assert target["inputs"] == {}
    without = dict(bake, targets=[{"name": "disk", "qemu": dict(copy, base_image=None)}])
    with pytest.raises(BakeryError, match="provision: none copies base_image"):
        _plan.make_plan(without, validate_target=lambda k, o, w: dict(o), role_digest=lambda n: "d", cwd="/w")


def test_manifest_entry_of_a_built_disk():
    target = {"name": "disk", "bake_id": "b1"}
    result = {
        "changed": True,
        "found": False,
        "fingerprint": "f" * 64,
        "path": "/o/web.qcow2",
        "format": "qcow2",
        "size": 5,
        "sha256": "s",
        "virtual_size": 9,
        "outputs": [{"format": "qcow2", "path": "/o/web.qcow2", "size": 5, "sha256": "s"}],
        "changed_inputs": ["source"],
    }
    entry = _manifest.qemu_artifact(result, target, 100.0, 112.34)
    assert entry["status"] == "built" and entry["type"] == "qemu" and entry["bake_id"] == "b1"
    assert entry["build_seconds"] == 12.3 and entry["outputs"] == result["outputs"]
    assert entry["id"] == "s"  # the disk's sha256, as a box's
    would = _manifest.qemu_artifact({"found": False, "changed": False, "fingerprint": "f"}, target, None, 1.0)
    assert would["status"] == "would build" and would["path"] is None


def test_checksum_mismatch_and_missing_tools_are_named(tmp_path, monkeypatch):
    image = tmp_path / "src.raw"
    image.write_bytes(b"\0" * 4096)
    opts = _qemu_disk.parse_options(
        {
            "image": str(image),
            "image_checksum": "sha256:" + "0" * 64,
            "outputs": [{"path": str(tmp_path / "o.qcow2")}],
        }
    )
    with pytest.raises(
        BakeryError, match="checksum mismatch for image .*expected sha256 0{64}, got [0-9a-f]{64}"
    ):
        _qemu_disk.verify_image(opts)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_qemu_disk, "SYSTEM_PATH", str(tmp_path))
    with pytest.raises(BakeryError, match="install the Debian package 'dosfstools'"):
        _qemu_disk.which("mkfs.vfat")


def test_hostname_of_the_build_host_is_not_kept(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    monkeypatch.setattr(_qemu_disk.socket, "gethostname", lambda: "buildhost")
    (root / "etc" / "hostname").write_text("buildhost\n")
    _qemu_disk.name_hostname(str(root), None)
    assert (root / "etc" / "hostname").read_text() == "debian\n"
    assert "127.0.1.1\tdebian" in (root / "etc" / "hosts").read_text()
    _qemu_disk.name_hostname(str(root), "web1")
    assert (root / "etc" / "hostname").read_text() == "web1\n"


def test_the_disks_fstab_keeps_the_entries_roles_wrote_and_replaces_the_root():
    tree = (
        "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"
        "proc /proc proc hidepid=2 0 0\n"
        "/dev/sda1 / ext4 defaults 0 1\n"
        "# data disk\n"
        "LABEL=data /srv ext4 defaults,nofail 0 2\n"
    )
    fstab = _qemu_disk.image_fstab(tree, "1234-uuid")
    assert fstab.splitlines() == [
        _qemu_disk.FSTAB_HEADER,
        "UUID=1234-uuid / ext4 rw,errors=remount-ro 0 1",
        "proc /proc proc hidepid=2 0 0",
        "# data disk",
        "LABEL=data /srv ext4 defaults,nofail 0 2",
    ]
    # made again from its own output (a rebuild), nothing is doubled
    assert _qemu_disk.image_fstab(fstab, "5678-uuid") == fstab.replace("1234-uuid", "5678-uuid")
    assert _qemu_disk.image_fstab("", "u").splitlines()[1:] == ["UUID=u / ext4 rw,errors=remount-ro 0 1"]


def _build_from_raw(tmp_path, monkeypatch, formats, digest, made):
    """_qemu_disk.build with a 1 MiB raw source disk in its work directory (its path in made["source"]), *formats*
    as its outputs, convert copying the source (after the format's name) and *digest* as digest_file."""

    def from_image_tree(opts, fp, work, details):
        made["source"] = os.path.join(work, "disk.raw")
        with open(made["source"], "wb") as handle:
            handle.write(b"disk" * (1 << 18))
        return made["source"], "raw"

    def convert(source, source_format, out, target, timeout, backing=None):
        with open(source, "rb") as src, open(target, "wb") as dst:
            dst.write(out.format.encode() + src.read())

    monkeypatch.setattr(_qemu_disk, "check_tools", lambda **kwargs: None)
    monkeypatch.setattr(_qemu_disk, "_disk_from_image_tree", from_image_tree)
    monkeypatch.setattr(_qemu_disk, "convert", convert)
    monkeypatch.setattr(_qemu_disk, "digest_file", digest)
    out = tmp_path / "out"
    opts = _qemu_disk.DiskOptions(
        outputs=[_qemu_disk.Output(path=str(out / ("disk." + fmt)), format=fmt) for fmt in formats],
        disk_size=1 << 20,
        image=str(tmp_path / "image.qcow2"),
        reassemble=True,
    )
    return _qemu_disk.build(opts, "f" * 64, {})


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_the_source_disk_is_unlinked_while_the_outputs_are_digested(tmp_path, monkeypatch):
    """Freeing the raw disk's blocks (0.3-0.5 s for the default bake's) overlaps the outputs' digests: a digest
    that waits for the source to go sees it go, and each output gets its own digest."""
    made, seen = {}, []

    def digest(path):
        deadline = time.monotonic() + 10
        while os.path.exists(made["source"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(os.path.exists(made["source"]))
        return _sha256(path)

    result = _build_from_raw(tmp_path, monkeypatch, ["qcow2", "vdi"], digest, made)
    assert seen == [False, False], "the source disk was not unlinked while the outputs were digested"
    for entry in result["outputs"]:
        assert entry["sha256"] == _sha256(entry["path"])
    assert [entry["format"] for entry in result["outputs"]] == ["qcow2", "vdi"]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "disk.qcow2",
        "disk.qcow2.bakery.json",
        "disk.vdi",
        "disk.vdi.bakery.json",
    ]


def test_a_raw_output_is_the_source_disk_itself_and_is_digested_whole(tmp_path, monkeypatch):
    """Renamed onto the raw output, the source disk is not there to unlink: the output is kept and digested."""
    made = {}
    result = _build_from_raw(tmp_path, monkeypatch, ["qcow2", "raw"], _sha256, made)
    raw = next(entry for entry in result["outputs"] if entry["format"] == "raw")
    assert raw["size"] == 1 << 20 and raw["sha256"] == _sha256(raw["path"])
    assert not os.path.exists(made["source"])


def test_unlinked_beside_removes_the_file_by_the_end_and_never_fails(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 4096)
    with _files.unlinked_beside(str(path)):
        pass
    assert not path.exists()
    with _files.unlinked_beside(str(path)):  # gone already: nothing to say
        pass
    with _files.unlinked_beside(None):
        pass
    (tmp_path / "dir").mkdir()
    with _files.unlinked_beside(str(tmp_path / "dir")):  # not a file: left to whoever removes the directory
        pass
    assert (tmp_path / "dir").is_dir()
