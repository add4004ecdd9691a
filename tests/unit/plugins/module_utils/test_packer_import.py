"""The Packer importer on templates written from Packer's documentation: each imports to its golden bake
definition and report (fixtures/packer, goldens in fixtures/packer-goldens; BAKERY_UPDATE_GOLDENS=1 rewrites
them), and the importer's errors, check mode and idempotency."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from ansible_collections.bakery.images.plugins.module_utils import _packer_map
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

FIXTURES = Path(__file__).parent / "fixtures" / "packer"
GOLDENS = Path(__file__).parent / "fixtures" / "packer-goldens"
CASES = yaml.safe_load((FIXTURES / "cases.yml").read_text())
NOW = datetime.datetime(2026, 12, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
UUID = "0f6c1b8e-4a57-4b61-9f0e-2d2a7c1c9b11"


def run_import(root: Path, case: dict, **extra) -> dict:
    return _packer_map.import_template(
        str(root / case["template"]),
        var_files=case.get("var_files"),
        values=case.get("vars"),
        only=case.get("only"),
        name=case.get("name"),
        env=case.get("env", {}),
        now=NOW,
        new_uuid=lambda: UUID,
        **extra,
    )


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the fixture templates: the importer writes beside them."""
    root = tmp_path / "packer"
    shutil.copytree(FIXTURES, root)
    return root


def outputs(result: dict, root: Path) -> dict[str, str]:
    """The written files by name, the copy's path replaced by <fixtures>."""
    directory = Path(result["output_dir"])
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(directory))] = path.read_text().replace(str(root), "<fixtures>")
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_template_imports_to_its_golden_definition_and_report(case, templates):
    result = run_import(templates, CASES[case])
    assert result["changed"] is True
    written = outputs(result, templates)
    golden = GOLDENS / case
    if os.environ.get("BAKERY_UPDATE_GOLDENS"):
        shutil.rmtree(golden, ignore_errors=True)
        for name, text in written.items():
            (golden / name).parent.mkdir(parents=True, exist_ok=True)
            (golden / name).write_text(text)
    expected = {
        str(path.relative_to(golden)): path.read_text()
        for path in sorted(golden.rglob("*"))
        if path.is_file()
    }
    assert sorted(written) == sorted(expected)
    for name in expected:
        assert written[name] == expected[name], name
    # the definition is the variable bake, as the bake playbook reads it; the JSON report says the same counts
    definition = yaml.safe_load(Path(result["definition"]).read_text())
    assert definition["bake"] == json.loads(json.dumps(result["bake"]))
    report = json.loads(
        (Path(result["output_dir"]) / ("%s.report.json" % definition["bake"]["name"])).read_text()
    )
    assert sum(report["counts"].values()) == len(report["items"])


def test_the_cases_cover_every_construct_of_the_issue():
    """Every builder, provisioner and post-processor the issue names is in some template."""
    text = "\n".join(path.read_text() for path in FIXTURES.rglob("*") if path.suffix in (".hcl", ".json"))
    for word in (
        '"docker"',
        '"qemu"',
        "disk_image",
        "boot_command",
        "http_directory",
        '"amazon-ebs"',
        '"googlecompute"',
        "virtualbox-iso",
        "vmware-iso",
        "hyperv-iso",
        "amazon-import",
        '"shell"',
        '"file"',
        '"ansible"',
        "ansible-local",
        "shell-local",
        "breakpoint",
        "puppet-masterless",
        '"vagrant"',
        "vagrant-cloud",
        "docker-tag",
        "docker-push",
        "docker-import",
        '"manifest"',
        '"checksum"',
        '"compress"',
        "artifice",
        "dynamic",
        "locals",
        'local "',
        "only",
        "except",
        "post-processors",
        "env(",
        "timestamp()",
        "formatdate(",
        "lower(",
        "upper(",
        "replace(",
        "regex_replace(",
        "split(",
        "join(",
        "format(",
        "coalesce(",
        "try(",
        "lookup(",
        "concat(",
        "abspath(",
        "basename(",
        "path.root",
        "uuidv4()",
        "{{user",
        "{{env",
        "{{timestamp}}",
        "{{isotime",
        "{{template_dir}}",
        "{{build_name}}",
        "{{uuid}}",
        "clean_resource_name",
        "{{ .HTTPIP }}",
        "build.ID",
        "sensitive",
    ):
        assert word in text, word
    directories = [case["template"] for case in CASES.values() if (FIXTURES / case["template"]).is_dir()]
    assert directories, "a directory of .pkr.hcl files"
    assert any(case.get("var_files") for case in CASES.values())


def test_a_second_import_changes_nothing_and_check_mode_writes_nothing(templates):
    case = CASES["docker-hcl"]
    checked = run_import(templates, case, check_mode=True)
    assert checked["changed"] is True
    assert not Path(checked["output_dir"]).exists()
    first = run_import(templates, case)
    assert first["changed"] is True and first["written"]
    stamps = {path: os.stat(path).st_mtime_ns for path in first["files"]}
    again = run_import(templates, case)
    assert again["changed"] is False and again["written"] == []
    assert {path: os.stat(path).st_mtime_ns for path in again["files"]} == stamps
    # a changed template changes the definition, and only the files whose content changed are written
    template = templates / case["template"]
    template.write_text(template.read_text().replace('"1.4.0"', '"1.5.0"'))
    changed = run_import(templates, case)
    assert changed["changed"] is True
    assert changed["definition"] in changed["written"]
    assert "1.5.0" in Path(changed["definition"]).read_text()


def test_check_mode_of_an_unchanged_import_reports_no_change(templates):
    case = CASES["build-overrides"]
    run_import(templates, case)
    assert run_import(templates, case, check_mode=True)["changed"] is False


def test_a_syntax_error_names_file_line_and_column_and_nothing_is_written(tmp_path):
    template = tmp_path / "broken.pkr.hcl"
    template.write_text('source "docker" "x" {\n  image = "debian"\n  commit = = true\n}\n')
    with pytest.raises(BakeryError) as error:
        _packer_map.import_template(str(template), env={}, now=NOW)
    assert "%s:3:" % template in error.value.msg
    assert "syntax error" in error.value.msg
    assert sorted(os.listdir(tmp_path)) == ["broken.pkr.hcl"]


def test_a_json_syntax_error_names_file_line_and_column(tmp_path):
    template = tmp_path / "broken.json"
    template.write_text('{\n  "builders": [\n    {"type": "docker",}\n  ]\n}\n')
    with pytest.raises(BakeryError) as error:
        _packer_map.import_template(str(template), env={}, now=NOW)
    assert error.value.msg.startswith("%s:3:23: JSON syntax error" % template)
    assert sorted(os.listdir(tmp_path)) == ["broken.json"]


def test_an_undefined_variable_is_named_with_where_it_is_used(tmp_path):
    template = tmp_path / "web.pkr.hcl"
    template.write_text(
        'source "docker" "web" {\n  image = "debian:${var.release}"\n  commit = true\n}\n'
        'build {\n  sources = ["source.docker.web"]\n}\n'
    )
    with pytest.raises(BakeryError) as error:
        _packer_map.import_template(str(template), env={}, now=NOW)
    assert "var.release" in error.value.msg
    assert 'web.pkr.hcl: source "docker" "web", image' in error.value.msg
    assert sorted(os.listdir(tmp_path)) == ["web.pkr.hcl"]


def test_a_variable_without_a_value_is_named_and_can_be_given(tmp_path):
    template = tmp_path / "web.pkr.hcl"
    template.write_text(
        'variable "image" {\n  type = string\n}\n'
        'source "docker" "web" {\n  image = var.image\n  commit = true\n}\n'
        'build {\n  sources = ["source.docker.web"]\n  provisioner "shell" {\n    inline = [local.cmd]\n  }\n}\n'
        'locals {\n  cmd = "echo ${var.image}"\n}\n'
    )
    with pytest.raises(BakeryError) as error:
        _packer_map.import_template(str(template), env={}, now=NOW)
    assert "var.image has no value" in error.value.msg
    assert "PKR_VAR_image" in error.value.msg
    result = _packer_map.import_template(str(template), env={"PKR_VAR_image": "debian:bookworm"}, now=NOW)
    assert result["bake"]["targets"][0]["docker"]["base_image"] == "debian:bookworm"
    assert result["bake"]["provisioners"][0]["shell"]["inline"] == ["echo debian:bookworm"]


def test_an_undefined_local_and_a_legacy_user_variable_are_named(tmp_path):
    hcl = tmp_path / "a.pkr.hcl"
    hcl.write_text(
        'source "docker" "a" {\n  image = local.base\n}\nbuild {\n  sources = ["source.docker.a"]\n}\n'
    )
    with pytest.raises(BakeryError) as error:
        _packer_map.import_template(str(hcl), env={}, now=NOW)
    assert "local.base" in error.value.msg and 'source "docker" "a", image' in error.value.msg
    legacy = tmp_path / "b.json"
    legacy.write_text(
        json.dumps({"builders": [{"type": "docker", "image": "{{user `base`}}", "commit": True}]})
    )
    with pytest.raises(BakeryError) as error:
        _packer_map.import_template(str(legacy), env={}, now=NOW)
    assert "undefined variable base" in error.value.msg and "builders[0]" in error.value.msg


def test_a_sensitive_value_is_never_written(templates):
    result = run_import(templates, CASES["docker-legacy"])
    for path in result["files"]:
        assert "s3cr3t-t0ken" not in Path(path).read_text(), path
    result = run_import(templates, CASES["amazon-ebs"])
    for path in result["files"]:
        assert "very-secret" not in Path(path).read_text(), path


def test_jinja_in_values_stays_literal_for_ansible(templates):
    """The definition is templated by Ansible: Packer's {{ ... }} text is kept in raw blocks."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    template = templates / "raw.pkr.hcl"
    template.write_text(
        'source "docker" "a" {\n  image = "debian"\n  commit = true\n}\n'
        'build {\n  sources = ["source.docker.a"]\n'
        '  provisioner "shell" {\n    inline = ["docker inspect -f \'{{ .Id }}\' x"]\n  }\n}\n'
    )
    result = _packer_map.import_template(str(template), env={}, now=NOW)
    bake = yaml.safe_load(Path(result["definition"]).read_text())["bake"]
    line = bake["provisioners"][0]["shell"]["inline"][0]
    assert Templar(loader=DataLoader()).template(trust_as_template(line)) == "docker inspect -f '{{ .Id }}' x"
    assert result["report"]["unknown"][0]["value"] == "{{ .Id }}"


def test_packer_functions_and_go_templates_evaluate_as_packer_documents_them():
    from ansible_collections.bakery.images.plugins.module_utils import _packer, _packer_hcl

    assert _packer_hcl.formatdate("DD MMM YYYY hh:mm ZZZ", "2018-01-02T23:12:01Z") == "02 Jan 2018 23:12 UTC"
    assert _packer_hcl.formatdate("EEEE, h:mm'h'", "2018-01-02T23:12:01Z") == "Tuesday, 23:12h"
    assert (
        _packer_hcl.go_format("Hello, %s! %03d %q %5.1f%%", "Ander", 7, "x", 9.25)
        == 'Hello, Ander! 007 "x"   9.2%'
    )
    assert _packer_hcl.go_replacement("${1}-$2") == "\\g<1>-\\g<2>"
    assert _packer.go_time(NOW, "2006-01-02T15:04:05Z07:00") == "2026-12-04T05:06:07Z"
    assert _packer.go_time(NOW, "Jan _2 03:04PM") == "Dec  4 05:06AM"
    assert _packer.clean_resource_name("mybuild-2017-10-18T02:06:30Z") == "mybuild-2017-10-18t02-06-30z"
    assert _packer_map.seconds("1h2m3s") == 3723
    assert _packer_map.seconds("500ms") == 1
    assert _packer_map.seconds(30) == 30
    with pytest.raises(BakeryError):
        _packer_map.seconds("ten minutes")


def test_the_cloud_images_of_a_template_become_targets_the_plan_accepts(templates):
    """Packer's openstack builder (an instance bake) becomes a proposed qemu disk and its upload; its digitalocean
    builder a digitalocean instance bake (a droplet of the base image, provisioned and snapshotted); the
    digitalocean-import post-processor an upload of the qemu disk. The plan takes every target as imported
    (the disk_image source's base image is made here: the plan checks that it exists)."""
    from ansible_collections.bakery.images.plugins.action.bake_plan import validate_target
    from ansible_collections.bakery.images.plugins.module_utils import _plan

    (templates / "clouds" / "images").mkdir()
    (templates / "clouds" / "images" / "base.qcow2").write_bytes(b"QFI\xfb" + bytes(508))
    result = run_import(templates, CASES["clouds"])
    bake = result["bake"]
    types = {
        t["name"]: next(k for k in t if k not in ("name", "vars", "provisioners", "verify"))
        for t in bake["targets"]
    }
    assert types == {
        "web-openstack-disk": "qemu",
        "web-openstack": "openstack",
        "web-digitalocean": "digitalocean",
        "disk": "qemu",
        "disk-digitalocean": "digitalocean",
    }
    targets = {t["name"]: t for t in bake["targets"]}
    assert targets["web-openstack"]["openstack"]["source"] == "web-openstack-disk"
    assert "password" not in json.dumps(
        targets["web-openstack"]
    ) and "not-in-the-definition" not in json.dumps(bake)
    planned = _plan.make_plan(
        bake,
        validate_target=validate_target,
        role_digest=lambda name: "d",
        cwd=str(templates / "clouds"),
        bake_id="b1",
    )
    # the shell provisioner runs on each disk and on the droplet; each other image is its disk's upload
    assert sorted(t["name"] for t in planned["targets"] if t["provisioners"]) == [
        "disk",
        "web-digitalocean",
        "web-openstack-disk",
    ]
    assert {
        t["name"]: t["source"]["target"]
        for t in planned["targets"]
        if t["type"] != "qemu" and t.get("source")
    } == {
        "web-openstack": "web-openstack-disk",
        "disk-digitalocean": "disk",
    }
    droplet = targets["web-digitalocean"]["digitalocean"]
    assert (droplet["base_image"], droplet["size"], droplet["region"], droplet["regions"]) == (
        "debian-12-x64",
        "s-1vcpu-1gb",
        "nyc3",
        ["ams3"],
    )
