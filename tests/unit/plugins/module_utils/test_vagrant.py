"""Vagrant boxes and their catalog: box content, idempotency, catalog versions and conflicts.

The disk is a hand-made qcow2 header (a standalone qcow2 goes into a libvirt box as it is, without
qemu-img); `vagrant box add` of real boxes is in tests/integration/test_vagrant.py.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _manifest, _plan, _vagrant
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

GIB = 1024**3
SUM_A = "a" * 64
SUM_B = "b" * 64
CAT = _vagrant.CatalogOptions(
    path="/c/web.json", box_name="bakery/web", version="1.0.0", description="web", base_url=None
)


def qcow2(path: Path, virtual_size: int, backing: bool = False, payload: bytes = b"") -> Path:
    header = struct.pack(">4sIQIIQ", b"QFI\xfb", 3, 512 if backing else 0, 0, 16, virtual_size)
    path.write_bytes(header + b"\0" * (104 - len(header)) + payload)
    return path


def members(box: Path) -> dict[str, bytes]:
    with tarfile.open(box) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def params(tmp_path: Path, **extra):
    base = {
        "path": str(tmp_path / "out" / "web-1.0.0-libvirt.box"),
        "source": str(tmp_path / "disk.qcow2"),
        "provider": "libvirt",
        "compression": 1,
        "catalog": str(tmp_path / "out" / "web.json"),
        "box_name": "bakery/web",
        "version": "1.0.0",
    }
    base.update(extra)
    return base


# --------------------------------------------------------------------------- disk and metadata


def test_qcow2_header_gives_size_and_whether_it_stands_alone(tmp_path):
    info = _vagrant.disk_info(str(qcow2(tmp_path / "a.qcow2", 3 * GIB)), "qemu-img")
    assert (info.format, info.virtual_size, info.standalone) == ("qcow2", 3 * GIB, True)
    overlay = _vagrant.disk_info(str(qcow2(tmp_path / "b.qcow2", GIB, backing=True)), "qemu-img")
    assert not overlay.standalone


@pytest.mark.parametrize(
    ("size", "gib"), [(1, 1), (GIB, 1), (2 * GIB, 2), (2 * GIB + 1, 3), (int(2.5 * GIB), 3)]
)
def test_libvirt_virtual_size_is_whole_gib_rounded_up(size, gib):
    info = _vagrant.DiskInfo("qcow2", size, True)
    assert _vagrant.box_metadata("libvirt", info) == {
        "provider": "libvirt",
        "architecture": "amd64",
        "format": "qcow2",
        "virtual_size": gib,
    }
    assert _vagrant.box_metadata("virtualbox", info, "arm64") == {
        "provider": "virtualbox",
        "architecture": "arm64",
    }


@pytest.mark.parametrize(
    ("debian", "vagrant"),
    [(None, "amd64"), ("amd64", "amd64"), ("arm64", "arm64"), ("armhf", "arm"), ("ppc64el", "ppc64le")],
)
def test_vagrant_names_of_debian_architectures(debian, vagrant):
    assert _vagrant.vagrant_architecture(debian) == vagrant


def test_an_architecture_that_is_no_debian_one_is_refused():
    with pytest.raises(BakeryError, match="'aarch64' is not a Debian architecture"):
        _vagrant.vagrant_architecture("aarch64")


@pytest.mark.parametrize("version", ["1", "1.0.0", "2024.6.1", "1.0.0.rc1"])
def test_versions_vagrant_accepts(version):
    assert _vagrant.check_version(version) == version


@pytest.mark.parametrize("version", ["", "v1.0", "1..0", "1.0 beta", "latest"])
def test_versions_vagrant_refuses(version):
    with pytest.raises(BakeryError, match="not a version Vagrant accepts"):
        _vagrant.check_version(version)


def test_ovf_references_the_disk_with_its_size_and_capacity():
    import xml.etree.ElementTree as ET

    ovf = _vagrant.ovf_descriptor("web", 1234, 3 * GIB, 2048, 2, "080027ABCDEF")
    root = ET.fromstring(ovf)
    ns = {"o": "http://schemas.dmtf.org/ovf/envelope/1"}
    file_ = root.find("o:References/o:File", ns)
    disk = root.find("o:DiskSection/o:Disk", ns)
    attr = "{http://schemas.dmtf.org/ovf/envelope/1}"
    assert file_.get(attr + "href") == "box-disk001.vmdk" and file_.get(attr + "size") == "1234"
    assert disk.get(attr + "capacity") == str(3 * GIB) and disk.get(attr + "format").endswith(
        "#streamOptimized"
    )
    assert "<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>" in ovf and "080027ABCDEF" in ovf


# --------------------------------------------------------------------------- catalog


def test_a_new_catalog_lists_the_box():
    new, change = _vagrant.add_to_catalog(None, CAT, "libvirt", "file:///b.box", SUM_A)
    assert change == "added version 1.0.0"
    assert new == {
        "name": "bakery/web",
        "description": "web",
        "versions": [
            {
                "version": "1.0.0",
                "providers": [
                    {
                        "name": "libvirt",
                        "architecture": "amd64",
                        "default_architecture": True,
                        "url": "file:///b.box",
                        "checksum_type": "sha256",
                        "checksum": SUM_A,
                    }
                ],
            }
        ],
    }


def test_same_box_again_changes_nothing_and_other_versions_are_kept():
    first, _change = _vagrant.add_to_catalog(None, CAT, "libvirt", "u1", SUM_A)
    again, change = _vagrant.add_to_catalog(first, CAT, "libvirt", "u1", SUM_A)
    assert change == "" and again == first
    v110 = dataclasses.replace(CAT, version="1.10.0")
    v19 = dataclasses.replace(CAT, version="1.9.0")
    second, change = _vagrant.add_to_catalog(first, v110, "libvirt", "u3", SUM_B)
    third, _change = _vagrant.add_to_catalog(second, v19, "libvirt", "u2", SUM_B)
    assert change == "added version 1.10.0"
    assert [v["version"] for v in third["versions"]] == ["1.0.0", "1.9.0", "1.10.0"]
    assert third["versions"][0] == first["versions"][0]


def test_a_second_provider_joins_the_version():
    first, _change = _vagrant.add_to_catalog(None, CAT, "virtualbox", "u-vb", SUM_B)
    both, change = _vagrant.add_to_catalog(first, CAT, "libvirt", "u-lv", SUM_A)
    assert change == "added provider libvirt (amd64) to version 1.0.0"
    assert [p["name"] for p in both["versions"][0]["providers"]] == ["libvirt", "virtualbox"]


def test_same_version_with_another_checksum_is_refused_unless_forced():
    first, _change = _vagrant.add_to_catalog(None, CAT, "libvirt", "u1", SUM_A)
    with pytest.raises(
        BakeryError, match=r"already lists version 1\.0\.0 of bakery/web for libvirt \(amd64\)"
    ):
        _vagrant.add_to_catalog(first, CAT, "libvirt", "u1", SUM_B)
    forced, change = _vagrant.add_to_catalog(first, CAT, "libvirt", "u1", SUM_B, force=True)
    assert change == "replaced libvirt (amd64) of version 1.0.0"
    assert forced["versions"][0]["providers"][0]["checksum"] == SUM_B


def test_a_version_lists_a_provider_once_per_architecture_amd64_first_and_default():
    arm, change = _vagrant.add_to_catalog(None, CAT, "libvirt", "u-arm", SUM_B, architecture="arm64")
    assert change == "added version 1.0.0"
    assert arm["versions"][0]["providers"][0]["default_architecture"] is True, "the only one is the default"
    both, change = _vagrant.add_to_catalog(arm, CAT, "libvirt", "u-amd", SUM_A)
    assert change == "added provider libvirt (amd64) to version 1.0.0"
    listed = [
        (p["architecture"], p["url"], p["default_architecture"]) for p in both["versions"][0]["providers"]
    ]
    # Vagrant 2.3 keeps the last entry of a provider; 2.4 takes the host's, else the default
    assert listed == [("arm64", "u-arm", False), ("amd64", "u-amd", True)]
    again, change = _vagrant.add_to_catalog(both, CAT, "libvirt", "u-arm", SUM_B, architecture="arm64")
    assert change == "" and again == both
    # another checksum for arm64 is a conflict of arm64 alone
    with pytest.raises(BakeryError, match=r"for libvirt \(arm64\) with another checksum"):
        _vagrant.add_to_catalog(both, CAT, "libvirt", "u-arm", SUM_A, architecture="arm64")
    assert _vagrant.catalog_entry(both, "1.0.0", "libvirt", "arm64")["url"] == "u-arm"


def test_an_entry_without_an_architecture_is_the_amd64_box_of_an_older_catalog():
    old = {
        "name": "bakery/web",
        "description": "web",
        "versions": [
            {
                "version": "1.0.0",
                "providers": [{"name": "libvirt", "url": "u1", "checksum_type": "sha256", "checksum": SUM_A}],
            }
        ],
    }
    assert _vagrant.catalog_entry(old, "1.0.0", "libvirt")["url"] == "u1"
    assert _vagrant.catalog_entry(old, "1.0.0", "libvirt", "arm64") is None
    named, change = _vagrant.add_to_catalog(old, CAT, "libvirt", "u1", SUM_A)
    assert change == "named the architecture of libvirt (amd64) in version 1.0.0"
    assert named["versions"][0]["providers"] == [
        {
            "name": "libvirt",
            "architecture": "amd64",
            "default_architecture": True,
            "url": "u1",
            "checksum_type": "sha256",
            "checksum": SUM_A,
        }
    ]
    with pytest.raises(BakeryError, match="another checksum"):
        _vagrant.add_to_catalog(old, CAT, "libvirt", "u1", SUM_B)


def test_a_catalog_of_another_box_is_refused():
    other = {"name": "someone/else", "versions": []}
    with pytest.raises(BakeryError, match="lists box 'someone/else'"):
        _vagrant.add_to_catalog(other, CAT, "libvirt", "u1", SUM_A)


# --------------------------------------------------------------------------- boxes


def test_libvirt_box_holds_the_disk_metadata_and_vagrantfile(tmp_path):
    disk = qcow2(tmp_path / "disk.qcow2", 5 * GIB // 2, payload=b"bakery disk")
    result = _vagrant.make_box(params(tmp_path))
    assert result["changed"] and result["built"]
    box = Path(result["path"])
    content = members(box)
    assert list(content) == ["metadata.json", "Vagrantfile", "box.img"]
    assert json.loads(content["metadata.json"]) == {
        "provider": "libvirt",
        "architecture": "amd64",
        "format": "qcow2",
        "virtual_size": 3,
    }
    assert content["box.img"] == disk.read_bytes()
    assert b"config.vm.provider :libvirt" in content["Vagrantfile"]
    catalog = json.loads(Path(tmp_path / "out" / "web.json").read_text())
    provider = catalog["versions"][0]["providers"][0]
    assert provider["url"] == box.as_uri() and provider["checksum"] == _vagrant.digest_file(str(box))
    sidecar = json.loads(Path(str(box) + ".bakery.json").read_text())
    assert sidecar["fingerprint"] == result["fingerprint"] and sidecar["sha256"] == provider["checksum"]


def test_second_run_changes_nothing_and_check_mode_writes_nothing(tmp_path):
    qcow2(tmp_path / "disk.qcow2", GIB)
    would = _vagrant.make_box(params(tmp_path), check_mode=True)
    assert would["changed"] and not (tmp_path / "out").exists()
    first = _vagrant.make_box(params(tmp_path))
    box = Path(first["path"])
    stamp = box.stat().st_mtime_ns
    second = _vagrant.make_box(params(tmp_path))
    assert not second["changed"] and second["found"] and second["sha256"] == first["sha256"]
    assert box.stat().st_mtime_ns == stamp
    assert not _vagrant.make_box(params(tmp_path), check_mode=True)["changed"]
    found = _vagrant.make_box(params(tmp_path, action="find", source=None, inputs={"source": "x"}))
    assert not found["found"] and found["changed_inputs"] == ["source"]


def test_boxes_are_reproducible(tmp_path):
    qcow2(tmp_path / "disk.qcow2", GIB, payload=b"x" * 100000)
    first = _vagrant.make_box(params(tmp_path))
    again = _vagrant.make_box(params(tmp_path, force=True))
    assert again["built"] and again["sha256"] == first["sha256"]


def test_new_disk_for_a_published_version_is_refused_and_the_box_kept(tmp_path):
    qcow2(tmp_path / "disk.qcow2", GIB, payload=b"first")
    first = _vagrant.make_box(params(tmp_path))
    qcow2(tmp_path / "disk.qcow2", GIB, payload=b"second")
    with pytest.raises(BakeryError, match="give the new box a new version, or set force"):
        _vagrant.make_box(params(tmp_path))
    assert _vagrant.digest_file(first["path"]) == first["sha256"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")) == []
    bumped = _vagrant.make_box(
        params(tmp_path, version="1.0.1", path=str(tmp_path / "out" / "web-1.0.1.box"))
    )
    assert bumped["catalog"]["change"] == "added version 1.0.1"
    versions = json.loads((tmp_path / "out" / "web.json").read_text())["versions"]
    assert [v["version"] for v in versions] == ["1.0.0", "1.0.1"]
    assert versions[0]["providers"][0]["checksum"] == first["sha256"]


def test_plain_tar_and_vagrantfile_override(tmp_path):
    qcow2(tmp_path / "disk.qcow2", GIB)
    result = _vagrant.make_box(params(tmp_path, compression=0, vagrantfile="# mine\n"))
    raw = Path(result["path"]).read_bytes()
    assert raw[257:262] == b"ustar"  # a tar header, not gzip
    assert members(Path(result["path"]))["Vagrantfile"] == b"# mine\n"


def test_clean_removes_what_a_killed_build_left(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".web.box.x1y2.partial").write_bytes(b"half a box")
    (out / ".web.box.z3.partial").mkdir()
    (out / ".other.box.q.partial").write_bytes(b"not ours")
    result = _vagrant.make_box({"action": "clean", "path": str(out / "web.box")})
    assert result["changed"] and len(result["removed"]) == 2
    assert sorted(p.name for p in out.iterdir() if "partial" in p.name) == [".other.box.q.partial"]
    assert not _vagrant.make_box({"action": "clean", "path": str(out / "web.box")})["changed"]


def test_missing_source_is_named(tmp_path):
    with pytest.raises(BakeryError, match="source disk .*disk.qcow2 does not exist"):
        _vagrant.make_box(params(tmp_path))


# --------------------------------------------------------------------------- plan and manifest


def test_plan_refuses_a_bad_version_before_anything_is_made():
    with pytest.raises(BakeryError, match=r"targets\[1\]\.vagrant: box version 'latest'"):
        _plan.check_target("vagrant", {"source": "disk", "version": "latest"}, "bake.targets[1].vagrant")
    _plan.check_target("vagrant", {"source": "disk", "version": "1.2.3", "box_name": "a/b"}, "t")


def test_manifest_entry_of_a_box():
    result = {
        "built": True,
        "found": False,
        "path": "/o/web-1.0.0-libvirt.box",
        "provider": "libvirt",
        "box_name": "bakery/web",
        "version": "1.0.0",
        "sha256": SUM_A,
        "size": 10,
        "fingerprint": "f1",
        "catalog": {"path": "/o/web.json", "url": "file:///o/web-1.0.0-libvirt.box"},
        "changed_inputs": ["source_target"],
    }
    entry = _manifest.vagrant_artifact(
        result, {"name": "box", "bake_id": "b1", "architecture": "arm64"}, 100.0, 112.5
    )
    assert entry["status"] == "built" and entry["build_seconds"] == 12.5 and entry["bake_id"] == "b1"
    assert (entry["name"], entry["version"], entry["catalog"]) == ("bakery/web", "1.0.0", "/o/web.json")
    unchanged = _manifest.vagrant_artifact(
        dict(result, built=False, found=True), {"name": "box", "bake_id": "b2"}, 1, 2
    )
    assert unchanged["status"] == "unchanged" and unchanged["bake_id"] is None
    assert _manifest.summary(
        {"name": "web", "bake_id": "b1", "manifest": "/o/m.json"},
        [{"target": "box", "type": "vagrant", "artifact": entry}],
    )[1].startswith("box  vagrant  arm64  /o/web-1.0.0-libvirt.box")


# --------------------------------------------------------------------------- the box booted for its checks

# Vagrant.configure as a recorder: Ruby itself reads the Vagrantfile, and prints what it set as JSON
RUBY_VAGRANT = r"""
require "json"
class Recorder
  def initialize(path = []); @path = path; $seen ||= {}; end
  def method_missing(name, *args, &block)
    key = name.to_s
    if key.end_with?("=")
      $seen[(@path + [key.chomp("=")]).join(".")] = args[0]
      return
    end
    if key == "provider" || key == "synced_folder"
      $seen[(@path + [key]).join(".")] = args.map(&:to_s)
      block.call(Recorder.new([args[0].to_s])) if block
      return
    end
    Recorder.new(@path + [key])
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  def self.configure(version)
    yield Recorder.new
  end
end
load ARGV[0]
puts JSON.generate($seen)
"""


def ruby_reads(vagrantfile: str, tmp_path) -> dict:
    (tmp_path / "Vagrantfile").write_text(vagrantfile)
    (tmp_path / "recorder.rb").write_text(RUBY_VAGRANT)
    out = subprocess.run(
        ["ruby", str(tmp_path / "recorder.rb"), str(tmp_path / "Vagrantfile")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_vagrantfile_names_the_box_and_domain_and_keeps_the_network(tmp_path):
    text = _vagrant.verify_vagrantfile(
        "bakery-20261204t040000-a1b2c3-box",
        "bakery-20261204t040000-a1b2c3-box-default",
        ["config.vm.provider :libvirt do |libvirt| libvirt.memory = 2048 end"],
    )
    seen = ruby_reads(text, tmp_path)
    assert seen["vm.box"] == "bakery-20261204t040000-a1b2c3-box"
    assert seen["libvirt.default_prefix"] == "bakery-20261204t040000-a1b2c3-box-"
    assert seen["libvirt.management_network_keep"] is True
    assert seen["libvirt.driver"] == "qemu" and seen["libvirt.uri"] == "qemu:///system"
    assert seen["ssh.insert_key"] is False
    assert seen["vm.synced_folder"] == [".", "/vagrant", "{:disabled=>true}"]
    # the user's lines come last, so they win
    assert seen["libvirt.memory"] == 2048
    assert text.index("libvirt.memory = 2048") > text.index("management_network_keep")


@pytest.mark.parametrize(
    "name",
    ["it's", 'say "#{`touch /tmp/pwned`}"', "back\\slash\\", "#{1+1}", "end'; system('id'); '"],
)
def test_names_reach_vagrant_as_written_never_interpolated(tmp_path, name):
    seen = ruby_reads(_vagrant.verify_vagrantfile(name, name + "-default", []), tmp_path)
    assert seen["vm.box"] == name
    assert seen["libvirt.default_prefix"] == name + "-"
    assert _vagrant.ruby_string(name).startswith("'")


@pytest.mark.parametrize("name", ["box", "default", "a b-default", "x'-default", "", None])
def test_a_domain_name_must_be_vagrant_libvirts_own(name):
    with pytest.raises(BakeryError, match="domain_name"):
        _vagrant.check_domain_name(name)
    assert _vagrant.check_domain_name("bakery-b1-box-default") == "bakery-b1-box-default"


SSH_CONFIG = """\
Host default
  HostName 192.168.122.14
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/var/cache/bakery/qemu/b1-box/vagrant.d/insecure private key"
  IdentityFile /var/cache/bakery/qemu/b1-box/vagrant.d/insecure_private_keys/vagrant.key.ed25519
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

"""


def test_ssh_config_becomes_the_verifiers_connection():
    ssh = _vagrant.parse_ssh_config(SSH_CONFIG)
    assert ssh["host"] == "192.168.122.14" and ssh["port"] == 22 and ssh["user"] == "vagrant"
    assert ssh["private_key"] == "/var/cache/bakery/qemu/b1-box/vagrant.d/insecure private key"
    pairs = dict(zip(ssh["ssh_args"][1::2], ssh["ssh_args"][::2]))
    assert set(pairs.values()) == {"-o"}
    options = list(pairs)
    assert "PubkeyAcceptedKeyTypes=+ssh-rsa" in options and "LogLevel=FATAL" in options
    assert (
        "IdentityFile=/var/cache/bakery/qemu/b1-box/vagrant.d/insecure_private_keys/vagrant.key.ed25519"
        in options
    )
    # host key checking stays off once, as vagrant said it
    assert (
        options.count("StrictHostKeyChecking=no") == 1 and options.count("UserKnownHostsFile=/dev/null") == 1
    )
    assert not [o for o in options if o.split("=")[0] in ("HostName", "User", "Port")]
    # a minimal config: the port defaults, host key checking is turned off by bakery
    bare = _vagrant.parse_ssh_config("Host default\n  HostName 10.0.0.2\n  IdentityFile /k\n")
    assert bare["port"] == 22 and bare["user"] == "vagrant" and bare["private_key"] == "/k"
    assert (
        "StrictHostKeyChecking=no" in bare["ssh_args"] and "UserKnownHostsFile=/dev/null" in bare["ssh_args"]
    )
    # the first machine only
    two = SSH_CONFIG + "Host other\n  HostName 10.9.9.9\n  IdentityFile /other\n"
    assert _vagrant.parse_ssh_config(two)["host"] == "192.168.122.14"
    with pytest.raises(BakeryError, match="named no host or no key"):
        _vagrant.parse_ssh_config("Host default\n  User vagrant\n")


def test_machine_up_in_check_mode_makes_nothing(tmp_path):
    opts = _vagrant.parse_machine_options(
        {
            "action": "up",
            "project": str(tmp_path / "machine"),
            "box": "bakery-b1-box",
            "vagrant_home": str(tmp_path / "vagrant.d"),
            "domain_name": "bakery-b1-box-default",
            "vagrant": "/bin/true",
        }
    )
    result = _vagrant.machine_up(opts, check_mode=True)
    assert (
        result["changed"] and "would boot box bakery-b1-box as domain bakery-b1-box-default" in result["msg"]
    )
    assert not (tmp_path / "machine").exists()
