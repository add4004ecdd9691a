"""Packer templates imported by ``playbooks/import_packer.yml`` (module ``bakery.images.packer_import``) bake.

The round trip: a Docker template is imported with its variables, the definition passes the plan
(``--check``), the real bake makes the image, and the image runs with what the template's provisioners put
in it. And every fully mapped template of the unit fixtures (tests/unit/.../fixtures/packer) passes the plan
of the bake playbook in check mode, on this host's engine and tools, with nothing reaching the network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import yaml
from conftest import REPO, docker_client, remove_repositories, run_playbook

IMPORT_PLAYBOOK = REPO / "playbooks" / "import_packer.yml"
BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
ROUNDTRIP = Path(__file__).parent / "files" / "packer" / "roundtrip"
FIXTURES = REPO / "tests" / "unit" / "plugins" / "module_utils" / "fixtures" / "packer"
# the fixture templates' variables that name a base image or disk, by case
BASES = {
    "docker-hcl": ("image",),
    "docker-legacy": ("image",),
    "multi-file": ("image",),
    "build-overrides": ("image",),
    "only-filter": ("image",),
    "provisioners": ("image", "disk"),
    "qemu-disk-image": ("base_image",),
}


def import_template(workdir: Path, extra_vars: dict, *args: str):
    """The import playbook run in *workdir* (relative paths are relative to it, as from a shell there)."""
    return run_playbook(
        IMPORT_PLAYBOOK, workdir, extra_vars=extra_vars, args=list(args), env={"PWD": str(workdir)}
    )


def bake(definition: Path, workdir: Path, *args: str):
    workdir.mkdir(exist_ok=True)
    return run_playbook(BAKE_PLAYBOOK, workdir, args=["-e", "@%s" % definition, *args])


def test_a_docker_template_imports_bakes_and_its_image_runs(bake_base, tmp_path, docker_leftovers):
    work = tmp_path / "packer"
    shutil.copytree(ROUNDTRIP, work)
    repository = "bakery-test/packer-%s" % uuid.uuid4().hex[:8]
    variables = {
        "packer_template": "web.pkr.hcl",
        "packer_vars": {"base_image": bake_base["image"], "repository": repository},
        "packer_output_dir": "imported",
    }
    checked = import_template(work, variables, "--check")
    assert checked.rc == 0, checked.stdout[-3000:]
    assert not (work / "imported").exists(), "check mode wrote files"
    imported = import_template(work, variables)
    assert imported.rc == 0, imported.stdout[-3000:]
    result = imported.task_result("Read, evaluate and map the template; write the definition and the report")
    assert result["changed"] is True
    assert result["fully_mapped"] is True, result["report_lines"]
    definition = work / "imported" / "roundtrip.yml"
    assert Path(result["definition"]) == definition
    report = json.loads((work / "imported" / "roundtrip.report.json").read_text())
    assert [item["status"] for item in report["items"]] == ["mapped"] * 5
    again = import_template(work, variables)
    assert (
        again.task_result("Read, evaluate and map the template; write the definition and the report")[
            "changed"
        ]
        is False
    )

    try:
        checked_bake = bake(definition, tmp_path / "run", "--check")
        assert checked_bake.rc == 0, checked_bake.stdout[-4000:] + checked_bake.stderr[-2000:]
        assert not docker_client().api.images(name=repository), "--check made an image"
        baked = bake(definition, tmp_path / "run")
        assert baked.rc == 0, baked.stdout[-4000:] + baked.stderr[-2000:]
        client = docker_client()
        out = client.containers.run("%s:1.0" % repository, remove=True)
        assert out.decode().splitlines() == ["HELLO from packer", "world"]
        motd = client.containers.run("%s:latest" % repository, ["cat", "/etc/motd"], remove=True)
        assert motd.decode() == (ROUNDTRIP / "files" / "motd").read_text()
        attrs = client.api.inspect_image("%s:latest" % repository)
        assert "GREETING=HELLO" in attrs["Config"]["Env"]
        assert attrs["Config"]["Labels"]["org.example.imported"] == "packer"
        # the same bake again finds the image by its fingerprint
        rebake = bake(definition, tmp_path / "run")
        assert rebake.rc == 0
        assert all(
            stats["changed"] == 0 for host, stats in rebake.stats.items() if host.startswith("bakery-")
        )
    finally:
        remove_repositories(repository)


def test_every_fully_mapped_fixture_template_passes_the_plan(bake_base, tmp_path, docker_leftovers):
    """Each unit fixture the importer calls fully mapped: ``bake.yml --check`` accepts its definition. The
    Docker templates start from the session's base image, the disk template from a qcow2 made here."""
    templates = tmp_path / "packer"
    shutil.copytree(FIXTURES, templates)
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    cases = yaml.safe_load((FIXTURES / "cases.yml").read_text())
    local = {"image": bake_base["image"], "base_image": str(disk), "disk": str(disk)}
    fully_mapped = []
    for name, case in sorted(cases.items()):
        template = templates / case["template"]
        directory = template if template.is_dir() else template.parent
        values = dict(case.get("vars") or {})
        # the variables that name a base: the session's image, the qcow2 made here
        values.update({key: local[key] for key in BASES.get(name, ())})
        out = tmp_path / "imported" / name
        variables = {
            "packer_template": str(template),
            "packer_var_files": [str(directory / file) for file in case.get("var_files", [])],
            "packer_vars": values,
            "packer_only": case.get("only", []),
            "packer_output_dir": str(out),
        }
        if case.get("name"):
            variables["packer_bake_name"] = case["name"]
        env_vars = {**case.get("env", {}), "PWD": str(templates)}
        imported = run_playbook(IMPORT_PLAYBOOK, templates, extra_vars=variables, env=env_vars)
        assert imported.rc == 0, (name, imported.stdout[-3000:])
        result = imported.task_result(
            "Read, evaluate and map the template; write the definition and the report"
        )
        if not result["fully_mapped"]:
            continue
        fully_mapped.append(name)
        checked = bake(Path(result["definition"]), tmp_path / ("run-" + name), "--check")
        assert checked.rc == 0, (name, checked.stdout[-4000:], checked.stderr[-2000:])
    assert fully_mapped == [
        "build-overrides",
        "docker-hcl",
        "docker-legacy",
        "multi-file",
        "only-filter",
        "qemu-disk-image",
    ]
