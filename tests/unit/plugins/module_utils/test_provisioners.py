"""Provisioners in the plan: selection per target, validation, and what enters each target's fingerprint."""

from __future__ import annotations

import copy
import os

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _plan, _provisioners
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import fingerprint
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError


@pytest.fixture()
def definition(tmp_path):
    """A bake with three docker targets (a, b, c) and a qemu one (disk), scripts and a tree beside it."""
    (tmp_path / "setup.sh").write_text("echo setup\n")
    (tmp_path / "only-b.sh").write_text("echo b\n")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("hello\n")
    bake = {
        "name": "prov",
        "base": {"suite": "bookworm", "packages": ["python3"]},
        "provisioners": [
            {"role": "web", "vars": {"port": 80}},
            {"name": "greet", "shell": {"inline": ["echo hi"]}},
            {"name": "setup", "shell": {"script": "setup.sh"}, "except": ["c"]},
            {"name": "for-b", "shell": {"scripts": ["only-b.sh"]}, "only": ["b"]},
            {"name": "tree", "file": {"src": "tree/", "dest": "/opt/tree"}, "only": ["docker"]},
            {"name": "note", "local": {"inline": ["echo $BAKERY_TARGET_NAME"]}, "except": ["qemu"]},
        ],
        "targets": [
            {"name": "a", "docker": {"repository": "bakery/a"}},
            {"name": "b", "docker": {"repository": "bakery/b"}, "vars": {"port": 8080}},
            {
                "name": "c",
                "docker": {"repository": "bakery/c"},
                "provisioners": [{"name": "last", "shell": {"inline": ["echo c"]}}],
            },
            {"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2", "vmdk"]}},
        ],
    }
    return bake, tmp_path


def make(bake, directory, roles=None, playbook_hosts=None):
    return _plan.make_plan(
        bake,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: (roles or {}).get(name, "digest-of-" + name),
        cwd="/elsewhere",
        bake_id="b1",
        definition_dir=str(directory),
        playbook_digest=lambda path: "digest-of-" + open(path).read(),
        playbook_hosts=playbook_hosts,
    )


def targets(plan):
    return {target["name"]: target for target in plan["targets"]}


def names(target):
    return [entry["name"] or entry["kind"] for entry in target["provisioners"]]


def fingerprints(plan):
    return {name: fingerprint(target["inputs"]) for name, target in targets(plan).items()}


def test_each_target_gets_its_own_ordered_list(definition):
    bake, directory = definition
    found = targets(make(bake, directory))
    assert names(found["a"]) == ["role", "greet", "setup", "tree", "note"]
    assert names(found["b"]) == ["role", "greet", "setup", "for-b", "tree", "note"]
    # a target's own provisioners follow the bake's that select it
    assert names(found["c"]) == ["role", "greet", "tree", "note", "last"]
    assert names(found["disk"]) == ["role", "greet", "setup"]
    assert [entry["position"] for entry in found["b"]["provisioners"]] == list(range(6))


def test_a_targets_vars_override_the_role_variables_for_it_alone(definition):
    bake, directory = definition
    found = targets(make(bake, directory))
    assert found["a"]["provisioners"][0]["vars"] == {"port": 80}
    assert found["b"]["provisioners"][0]["vars"] == {"port": 8080}
    assert found["a"]["inputs"]["vars"] != found["b"]["inputs"]["vars"]


def test_entries_are_named_and_controller_paths_resolved_against_the_definitions_directory(definition):
    bake, directory = definition
    found = targets(make(bake, directory))
    setup = found["a"]["provisioners"][2]
    assert setup["label"] == "setup (shell setup.sh)"
    assert setup["shell"]["scripts"] == [os.path.join(str(directory), "setup.sh")]
    assert setup["shell"]["interpreter"] == ["/bin/sh", "-e"]
    assert setup["shell"]["valid_exit_codes"] == [0]
    # the trailing '/' stays: the tree's contents go into dest, not the tree itself
    assert found["a"]["provisioners"][3]["file"]["src"] == os.path.join(str(directory), "tree") + "/"
    assert found["a"]["provisioners"][0]["label"] == "role web"
    assert found["a"]["provisioners"][1]["shell"]["inline"] == "echo hi\n"


def test_inputs_name_each_entry(definition):
    bake, directory = definition
    inputs = targets(make(bake, directory))["b"]["inputs"]
    assert set(inputs) == {
        "source",
        "role:web",
        "vars",
        "provisioners[1]:shell:greet",
        "provisioners[2]:shell:setup",
        "provisioners[3]:shell:for-b",
        "provisioners[4]:file:tree",
        "provisioners[5]:local:note",
    }


def test_one_byte_in_a_script_changes_only_the_targets_that_run_it(definition):
    bake, directory = definition
    before = fingerprints(make(bake, directory))
    (directory / "only-b.sh").write_text("echo B\n")
    after = fingerprints(make(bake, directory))
    assert {name for name in before if before[name] != after[name]} == {"b"}
    (directory / "setup.sh").write_text("echo setup!\n")
    again = fingerprints(make(bake, directory))
    assert {name for name in after if after[name] != again[name]} == {"a", "b", "disk"}


def test_a_script_mode_and_an_uploaded_files_content_or_mode_count_mtimes_do_not(definition):
    bake, directory = definition
    before = fingerprints(make(bake, directory))
    os.utime(directory / "setup.sh", (0, 0))
    os.utime(directory / "tree" / "etc" / "motd", (0, 0))
    assert fingerprints(make(bake, directory)) == before
    (directory / "tree" / "etc" / "motd").chmod(0o600)
    moded = fingerprints(make(bake, directory))
    assert {name for name in before if before[name] != moded[name]} == {"a", "b", "c"}
    (directory / "tree" / "etc" / "motd").write_text("hello!\n")
    changed = fingerprints(make(bake, directory))
    assert {name for name in moded if moded[name] != changed[name]} == {"a", "b", "c"}


def test_changing_only_changes_only_the_targets_whose_list_changed(definition):
    bake, directory = definition
    before = fingerprints(make(bake, directory))
    changed = copy.deepcopy(bake)
    changed["provisioners"][3]["only"] = ["b", "c"]
    after = fingerprints(make(changed, directory))
    assert {name for name in before if before[name] != after[name]} == {"c"}
    # an only that still selects the same targets changes nothing
    same = copy.deepcopy(bake)
    same["provisioners"][3]["only"] = ["b", "vagrant"]
    assert fingerprints(make(same, directory)) == before


def test_inline_text_environment_and_exit_codes_count_scheduling_does_not(definition):
    bake, directory = definition
    before = targets(make(bake, directory))["a"]["inputs"]
    for key, value, counts in [
        ("inline", ["echo hello"], True),
        ("environment", {"GREETING": "hi"}, True),
        ("valid_exit_codes", [0, 3], True),
        ("interpreter", ["/bin/bash", "-e"], True),
    ]:
        changed = copy.deepcopy(bake)
        changed["provisioners"][1]["shell"][key] = value
        after = targets(make(changed, directory))["a"]["inputs"]
        assert _changed(before, after) == (["provisioners[1]:shell:greet"] if counts else []), key
    scheduled = copy.deepcopy(bake)
    scheduled["provisioners"][1].update(pause_before=5, retries=2, timeout=60)
    assert targets(make(scheduled, directory))["a"]["inputs"] == before


def _changed(before, after):
    from ansible_collections.bakery.images.plugins.module_utils._fingerprint import changed_inputs

    return changed_inputs(before, after)


def test_a_secret_environment_is_masked_and_enters_the_fingerprint_as_a_digest(definition):
    bake, directory = definition
    bake["provisioners"][1].update(no_log=True)
    bake["provisioners"][1]["shell"]["environment"] = {"TOKEN": "s3cret-value"}
    plan = make(bake, directory)
    entry = targets(plan)["a"]["provisioners"][1]
    assert entry["shell"]["environment"] == {"TOKEN": NO_LOG_MASK}
    assert "s3cret-value" not in repr(plan)
    assert _provisioners.real_environment(bake, entry) == {"TOKEN": "s3cret-value"}
    other = copy.deepcopy(bake)
    other["provisioners"][1]["shell"]["environment"]["TOKEN"] = "other"
    assert fingerprints(make(other, directory))["a"] != fingerprints(plan)["a"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b["provisioners"].append({"name": "x"}),
            "provisioners[6] (x): a provisioner has exactly one kind",
        ),
        (
            lambda b: b["provisioners"].append({"shell": {"inline": ["true"]}, "role": "web"}),
            "provisioners[6]: a provisioner has exactly one kind of role, playbook, shell, file, puppet, local "
            "(it has role, shell)",
        ),
        (
            lambda b: b["provisioners"].append({"breakpoint": {"note": "x"}}),
            "provisioners[6]: unknown provisioner kind or key 'breakpoint' (kinds: role, playbook, shell, file, "
            "puppet, local; keys of every entry: name, only, except, pause_before, retries, timeout, no_log); "
            "breakpoint is not supported yet",
        ),
        (
            lambda b: b["provisioners"].append({"playbook": "site.yml"}),
            "bake.provisioners[6]: playbook.file 'site.yml' is not a file",
        ),
        (
            lambda b: b["provisioners"].append({"name": "p", "puppet": {"manifest": "site.pp"}}),
            "bake.provisioners[6] (p): puppet.manifest 'site.pp' is not a file or directory",
        ),
        (
            lambda b: b["provisioners"].append(
                {"puppet": {"manifest": "setup.sh", "module_paths": ["nope"]}}
            ),
            "bake.provisioners[6]: puppet.module_paths 'nope' is not a file or directory",
        ),
        (
            lambda b: b["provisioners"].append({"puppet": {"manifest": "setup.sh", "modulepath": "x"}}),
            "bake.provisioners[6]: unknown puppet option modulepath (known: manifest, module_paths",
        ),
        (
            lambda b: b["provisioners"].append(
                {"name": "logs", "file": {"src": "/var/log", "dest": "../../etc", "direction": "download"}}
            ),
            "bake.provisioners[6] (logs): file.dest '../../etc' is outside the output directory",
        ),
        (
            lambda b: b["provisioners"].append(
                {"file": {"src": "/var/log", "dest": "/tmp/logs", "direction": "download"}}
            ),
            "bake.provisioners[6]: file.dest '/tmp/logs' is outside the output directory",
        ),
        (
            lambda b: b["provisioners"].append(
                {"file": {"src": "var/log", "dest": "logs", "direction": "download"}}
            ),
            "bake.provisioners[6]: file.src 'var/log' must be an absolute path in the builder",
        ),
        (
            lambda b: b["provisioners"].append(
                {"file": {"src": "/var/log", "dest": "logs", "direction": "down"}}
            ),
            "bake.provisioners[6]: file.direction must be upload or download, not 'down'",
        ),
        (
            lambda b: b["provisioners"].append(
                {"name": "reboot", "shell": {"inline": ["reboot"], "expect_disconnect": True}, "only": ["a"]}
            ),
            "bake.provisioners[6] (reboot): shell.expect_disconnect is for builders that are machines "
            "(provision: vm, vagrant, ami, gce); target a is provisioned in a container",
        ),
        (
            lambda b: b["provisioners"].append(
                {
                    "name": "reboot",
                    "shell": {"inline": ["reboot"], "expect_disconnect": True},
                    "only": ["disk"],
                }
            ),
            "target disk is provisioned in a rootfs, which cannot reboot",
        ),
        (
            lambda b: b.update(error_provisioners=[{"shell": {"inline": ["true"]}, "only": ["nothere"]}]),
            "bake.error_provisioners[0]: only names 'nothere'",
        ),
        (
            lambda b: b.update(
                error_provisioners=[{"shell": {"inline": ["true"]}, "except": ["docker", "qemu"]}]
            ),
            "bake.error_provisioners[0] is selected by no target",
        ),
        (
            lambda b: b["provisioners"][2]["shell"].update(script="missing.sh"),
            "bake.provisioners[2] (setup): shell.script 'missing.sh' is not a file",
        ),
        (
            lambda b: b["provisioners"][4]["file"].update(src="nowhere"),
            "bake.provisioners[4] (tree): file.src 'nowhere' does not exist",
        ),
        (
            lambda b: b["provisioners"][3].update(only=["bee"]),
            "bake.provisioners[3] (for-b): only names 'bee', neither a target of this bake",
        ),
        (
            lambda b: b["provisioners"][3].update(only=["vagrant"]),
            "bake.provisioners[3] (for-b) is selected by no target",
        ),
        (
            lambda b: b["provisioners"][1].update({"except": ["docker", "qemu"]}),
            "bake.provisioners[1] (greet) is selected by no target",
        ),
        (
            lambda b: b["provisioners"][1]["shell"].update(script="setup.sh"),
            "bake.provisioners[1] (greet): shell needs exactly one of inline, script or scripts (it has inline, script)",
        ),
        (
            lambda b: b["provisioners"][0].update(timeout=10),
            "bake.provisioners[0]: timeout is for shell, local, puppet, playbook entries",
        ),
        (
            lambda b: b["provisioners"][1].update(retries=-1),
            "bake.provisioners[1] (greet): retries must be a whole number",
        ),
        (
            lambda b: b["provisioners"][4]["file"].update(dest="relative"),
            "file.dest 'relative' must be an absolute path",
        ),
        (
            lambda b: b["targets"][2]["provisioners"].append(
                {"local": {"inline": ["true"]}, "except": ["c"]}
            ),
            "bake.targets[2].provisioners[1] is selected by no target",
        ),
    ],
)
def test_bad_entries_fail_before_anything_is_created_naming_the_entry_and_field(definition, change, message):
    bake, directory = definition
    change(bake)
    with pytest.raises(BakeryError) as error:
        make(bake, directory)
    assert message in error.value.msg


def test_a_target_that_is_not_provisioned_takes_no_provisioners(definition):
    bake, directory = definition
    (directory / "ctx").mkdir()
    (directory / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    bake["targets"].append(
        {
            "name": "df",
            "docker": {"repository": "bakery/df", "context": str(directory / "ctx")},
            "vars": {"x": 1},
        }
    )
    with pytest.raises(BakeryError, match=r"bake.targets\[4\] \(df\) is not provisioned"):
        make(bake, directory)


def test_a_file_mode_written_as_a_yaml_octal_number_stays_octal(definition):
    bake, directory = definition
    bake["provisioners"][4]["file"]["mode"] = 0o644
    entry = targets(make(bake, directory))["a"]["provisioners"][3]
    assert entry["file"]["mode"] == "0644"


def test_a_download_goes_to_the_targets_own_directory_and_counts_by_its_paths(definition):
    bake, directory = definition
    bake["provisioners"].append(
        {"name": "logs", "file": {"src": "/var/log/apt/", "dest": "logs/apt", "direction": "download"}}
    )
    plan = make(bake, directory)
    entry = targets(plan)["b"]["provisioners"][-1]
    assert entry["label"] == "logs (file download /var/log/apt)"
    assert entry["file"] == {
        "src": "/var/log/apt",
        "dest": "logs/apt",
        "direction": "download",
        "local": "/elsewhere/output/downloads/b/logs/apt",
    }
    bake["provisioners"][-1]["file"]["dest"] = "logs/apt2"
    assert _changed(fingerprints(plan), fingerprints(make(bake, directory))) == ["a", "b", "c", "disk"]


def test_puppet_and_playbook_entries_count_by_their_content(definition):
    bake, directory = definition
    (directory / "site.pp").write_text("file { '/etc/puppet-was-here': content => 'yes' }\n")
    modules = directory / "modules" / "motd" / "manifests"
    modules.mkdir(parents=True)
    (modules / "init.pp").write_text("class motd {}\n")
    (directory / "hiera").mkdir()
    (directory / "hiera" / "hiera.yaml").write_text("version: 5\n")
    (directory / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    bake["provisioners"].append(
        {
            "name": "pp",
            "puppet": {
                "manifest": "site.pp",
                "module_paths": ["modules"],
                "hiera_config": "hiera/hiera.yaml",
                "facts": {"role": "web"},
            },
            "only": ["a"],
        }
    )
    bake["provisioners"].append({"playbook": "site.yml", "vars": {"colour": "blue"}, "only": ["b"]})
    plan = make(bake, directory)
    found = targets(plan)
    puppet = found["a"]["provisioners"][-1]
    assert puppet["label"] == "pp (puppet site.pp)"
    assert puppet["puppet"]["module_paths"] == [str(directory / "modules")]
    assert puppet["puppet"]["valid_exit_codes"] == [0, 2]
    assert puppet["puppet"]["package"] == "puppet-agent"
    playbook = found["b"]["provisioners"][-1]
    assert playbook["label"] == "playbook site.yml"
    assert playbook["vars"] == {"colour": "blue", "port": 8080}
    assert "provisioners[7]:playbook" in found["b"]["inputs"]

    (modules / "init.pp").write_text("class motd { }\n")
    assert _changed(fingerprints(plan), fingerprints(make(bake, directory))) == ["a"]
    (directory / "hiera" / "common.yaml").write_text("x: 1\n")
    assert _changed(fingerprints(plan), fingerprints(make(bake, directory))) == ["a"]
    (directory / "site.yml").write_text("- hosts: all\n  tasks: [] \n")
    assert _changed(fingerprints(make(bake, directory)), fingerprints(plan)) == ["a", "b"]
    before = fingerprints(make(bake, directory))
    bake["provisioners"][-1]["vars"]["colour"] = "red"
    assert _changed(before, fingerprints(make(bake, directory))) == ["b"]


def test_a_playbook_whose_plays_match_no_builder_is_refused(definition):
    bake, directory = definition
    (directory / "site.yml").write_text("- hosts: webservers\n  tasks: []\n")
    bake["provisioners"].append({"name": "site", "playbook": {"file": "site.yml"}, "only": ["a", "disk"]})
    asked = []

    def hosts(path, host, groups):
        asked.append((os.path.basename(path), host, groups))
        return "qemu" in groups

    with pytest.raises(BakeryError) as error:
        make(bake, directory, playbook_hosts=hosts)
    assert error.value.msg.startswith(
        "bake.provisioners[6] (site): no play of playbook %s would run on the builder of target a"
        % (directory / "site.yml")
    )
    assert asked[0] == ("site.yml", "bakery-a-builder", ["bakery_builders", "a", "docker", "default"])


def test_error_provisioners_are_planned_per_target_and_are_no_input(definition):
    bake, directory = definition
    before = fingerprints(make(bake, directory))
    bake["error_provisioners"] = [
        {"name": "logs", "file": {"src": "/var/log", "dest": "logs", "direction": "download"}, "only": ["a"]},
        {"name": "journal", "shell": {"inline": ["journalctl -n 50"]}},
    ]
    plan = make(bake, directory)
    found = targets(plan)
    assert [entry["name"] for entry in found["a"]["error_provisioners"]] == ["logs", "journal"]
    assert [entry["name"] for entry in found["b"]["error_provisioners"]] == ["journal"]
    assert found["b"]["error_provisioners"][0]["source"] == "bake.error_provisioners[1]"
    assert fingerprints(plan) == before


def test_a_playbook_is_read_with_the_playbooks_it_imports_and_the_roles_it_names(tmp_path):
    from ansible_collections.bakery.images.plugins.action.bake_plan import read_playbook

    (tmp_path / "site.yml").write_text(
        "- import_playbook: web.yml\n"
        "- hosts: db\n  roles: [common, {role: ns.coll.db}]\n"
        "  tasks:\n    - block:\n        - ansible.builtin.include_role: {name: tuning}\n"
        "    - import_role:\n        name: '{{ later }}'\n"
    )
    (tmp_path / "web.yml").write_text("- hosts: all:!db\n  tasks: []\n")
    found = read_playbook(str(tmp_path / "site.yml"))
    assert found == {
        "hosts": ["all:!db", "db"],
        "files": [str(tmp_path / "site.yml"), str(tmp_path / "web.yml")],
        "roles": ["common", "ns.coll.db", "tuning"],
    }
    (tmp_path / "bad.yml").write_text("hosts: all\n")
    with pytest.raises(BakeryError, match="is not a list of plays"):
        read_playbook(str(tmp_path / "bad.yml"))


@pytest.mark.parametrize(
    ("patterns", "matches"),
    [
        (["all"], True),
        (["bakery_builders"], True),
        (["default"], True),
        (["web"], True),
        (["docker:&web"], True),
        (["all:!docker"], False),
        (["db", "localhost"], False),
        ([["db", "web"]], True),
        (["bakery-web-*"], True),
        (["{{ target_hosts }}"], True),
        ([""], False),
    ],
)
def test_play_hosts_patterns_are_matched_as_ansible_matches_them(patterns, matches):
    from ansible_collections.bakery.images.plugins.action.bake_plan import hosts_match

    groups = _plan.playbook_groups("web", "docker")
    assert hosts_match(patterns, "bakery-web-builder", groups) is matches


def test_the_builder_of_an_architecture_is_in_its_targets_group_for_playbook_plays():
    from ansible_collections.bakery.images.plugins.action.bake_plan import hosts_match

    groups = _plan.playbook_groups("web-arm64", "docker", "web")
    assert hosts_match(["web"], "bakery-web-arm64-builder", groups)
    assert hosts_match(["web-arm64"], "bakery-web-arm64-builder", groups)
    assert not hosts_match(["web-amd64"], "bakery-web-arm64-builder", groups)


def test_a_secret_role_entrys_variables_are_masked_with_the_targets_own(definition):
    bake, directory = definition
    bake["provisioners"][0]["no_log"] = True
    bake["provisioners"][0]["vars"] = {"port": 80, "token": "s3cret-token"}
    bake["targets"][1]["vars"] = {"port": 8080}
    plan = make(bake, directory)
    entry = targets(plan)["b"]["provisioners"][0]
    assert entry["vars"] == {"port": NO_LOG_MASK, "token": NO_LOG_MASK}
    assert "s3cret-token" not in repr(plan)
    assert _provisioners.real_secrets(bake, entry, "b") == {"port": 8080, "token": "s3cret-token"}
    other = copy.deepcopy(bake)
    other["provisioners"][0]["vars"]["token"] = "other"
    assert _changed(fingerprints(plan), fingerprints(make(other, directory))) == ["a", "b", "c", "disk"]


def test_verify_checks_are_planned_per_target_in_order_and_are_no_input_of_the_fingerprint(definition):
    bake, directory = definition
    before = fingerprints(make(bake, directory))
    (directory / "serves.sh").write_text("curl -fsS http://localhost/\n")
    bake["verify"] = [
        {"name": "serves", "shell": {"script": "serves.sh"}, "only": ["docker"]},
        {"name": "goss", "role": "checks", "except": ["b", "qemu"]},
    ]
    bake["targets"][2]["verify"] = [{"name": "runs", "shell": {"inline": ["test -x /usr/sbin/nginx"]}}]
    plan = make(bake, directory)
    found = targets(plan)
    assert [entry["name"] for entry in found["a"]["verify"]] == ["serves", "goss"]
    assert [entry["name"] for entry in found["b"]["verify"]] == ["serves"]
    assert [entry["name"] for entry in found["c"]["verify"]] == ["serves", "goss", "runs"]
    assert found["c"]["verify"][2]["source"] == "bake.targets[2].verify[0]"
    assert found["disk"]["verify"] == [] and found["disk"]["verify_digest"] is None
    assert fingerprints(plan) == before
    digests = {name: target["verify_digest"] for name, target in found.items()}
    assert len(set(digests.values())) == 4
    # one byte in a check changes the digest of the targets that run it, not their fingerprints
    (directory / "serves.sh").write_text("curl -fsS http://localhost:80/\n")
    again = targets(make(bake, directory))
    assert [name for name in digests if again[name]["verify_digest"] != digests[name]] == ["a", "b", "c"]
    assert again["disk"]["verify_digest"] is None
    assert fingerprints(make(bake, directory)) == before
    # a role's content is part of it
    changed = targets(make(bake, directory, roles={"checks": "other"}))
    assert [name for name in digests if changed[name]["verify_digest"] != again[name]["verify_digest"]] == [
        "a",
        "c",
    ]
    # a target's vars reach its role checks, as they reach its role provisioners
    bake["targets"][1]["verify"] = [{"role": "checks", "vars": {"path": "/"}}]
    assert targets(make(bake, directory))["b"]["verify"][-1]["vars"] == {"path": "/", "port": 8080}
    del bake["verify"], bake["targets"][2]["verify"], bake["targets"][1]["verify"]
    assert {t["verify_digest"] for t in targets(make(bake, directory)).values()} == {None}


def test_local_checks_of_boxes_and_cloud_images_are_planned_others_refused(definition):
    bake, directory = definition
    bake["targets"].append({"name": "box", "vagrant": {"source": "disk"}})
    bake["verify"] = [{"local": {"inline": ["vagrant box list | grep -q web"]}, "only": ["box"]}]
    (box,) = [t for t in targets(make(bake, directory)).values() if t["name"] == "box"]
    assert [entry["kind"] for entry in box["verify"]] == ["local"] and box["verify_digest"]
    bake["targets"].append({"name": "cloud", "gce": {"source": "disk", "name": "web", "bucket": "b"}})
    bake["verify"].append({"local": {"inline": ["true"]}, "only": ["cloud"]})
    assert targets(make(bake, directory))["cloud"]["verify_digest"]
    bake["verify"].append({"shell": {"inline": ["true"]}, "only": ["cloud"]})
    with pytest.raises(
        BakeryError, match=r"bake.verify\[2\] selects target cloud: a GCE image's checks are local"
    ):
        make(bake, directory)


def test_checks_of_a_booted_box_are_allowed_with_verify_up_only(definition):
    bake, directory = definition
    bake["targets"].append({"name": "box", "vagrant": {"source": "disk"}})
    bake["verify"] = [
        {"name": "serves", "shell": {"inline": ["curl -s localhost"]}, "only": ["box"]},
        {"name": "bios", "local": {"inline": ["virsh dumpxml $BAKERY_VAGRANT_DOMAIN"]}, "only": ["box"]},
    ]
    # without verify_up the refusal names the option that would allow it
    with pytest.raises(
        BakeryError, match=r"selects target box: .*unless the target sets verify_up: true"
    ) as exc:
        make(bake, directory)
    assert "a shell check needs a running system" in exc.value.msg
    bake["targets"][-1]["vagrant"]["verify_up"] = True
    box = targets(make(bake, directory))["box"]
    assert [entry["kind"] for entry in box["verify"]] == ["shell", "local"]
    # how the box is booted decides whether it is verified again, never whether it is rebuilt
    before = (box["verify_digest"], fingerprint(box["inputs"]))
    bake["targets"][-1]["vagrant"]["verify_vagrantfile"] = ["config.vm.boot_timeout = 900"]
    longer = targets(make(bake, directory))["box"]
    assert longer["verify_digest"] != before[0] and fingerprint(longer["inputs"]) == before[1]
    bake["targets"][-1]["vagrant"]["verify_vagrantfile"] = []
    assert targets(make(bake, directory))["box"]["verify_digest"] == before[0]
    # local checks alone: turning verify_up on checks the box again
    bake["verify"] = bake["verify"][1:]
    up = targets(make(bake, directory))["box"]["verify_digest"]
    bake["targets"][-1]["vagrant"]["verify_up"] = False
    assert targets(make(bake, directory))["box"]["verify_digest"] != up
    # verify_up is a vagrant option: other local-check types still refuse booted checks
    bake["targets"].append(
        {"name": "cloud", "gce": {"source": "disk", "name": "web", "bucket": "b", "verify_up": True}}
    )
    bake["verify"].append({"shell": {"inline": ["true"]}, "only": ["cloud"]})
    with pytest.raises(BakeryError, match="selects target cloud: a GCE image's checks are local"):
        make(bake, directory)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"puppet": {"manifest": "site.pp"}},
            r"bake.verify\[0\]: a verify entry checks the finished artifact with one of role, playbook, shell, local;"
            r" a puppet entry changes it",
        ),
        ({"file": {"src": "tree/", "dest": "/opt"}}, "a file entry changes it"),
        (
            {"shell": {"inline": ["reboot"], "expect_disconnect": True}},
            "expect_disconnect is for provisioners; a verify entry does not reboot",
        ),
        ({"shell": {"inline": ["true"]}, "only": ["nowhere"]}, "only names 'nowhere'"),
        ({"shell": {"inline": ["true"]}, "except": ["docker", "qemu", "vagrant"]}, "leave out every target$"),
        (
            {"shell": {"inline": ["true"]}, "only": ["box"]},
            r"bake.verify\[0\] selects target box: a box's checks are local commands .*a shell check needs a running "
            r"system",
        ),
        (
            {"shell": {"inline": ["true"]}, "only": ["qemu"]},
            r"bake.verify\[0\] selects target disk: verify boots the disk from its qcow2 or raw output, and formats "
            r"\(vmdk\) has neither",
        ),
    ],
)
def test_bad_verify_entries_fail_the_plan(definition, entry, message):
    bake, directory = definition
    (directory / "site.pp").write_text("notify { 'x': }\n")
    bake["targets"][3]["qemu"]["formats"] = ["vmdk"]
    bake["targets"].append({"name": "box", "vagrant": {"source": "disk"}})
    bake["verify"] = [entry]
    with pytest.raises(BakeryError, match=message):
        make(bake, directory)


def test_verify_instance_lets_cloud_images_run_checks_on_an_instance_and_reverifies_without_a_rebuild(
    definition,
):
    bake, directory = definition
    ami = {"source": "disk", "region": "eu-west-1", "name": "web"}
    gce = {"source": "disk", "name": "web", "bucket": "b", "zone": "europe-west1-b"}
    bake["targets"] += [{"name": "ec2", "ami": ami}, {"name": "gcp", "gce": gce}]
    bake["verify"] = [
        {"name": "told", "local": {"inline": ["true"]}, "only": ["ami", "gce"]},
        {"name": "served", "shell": {"inline": ["systemctl is-active nginx"]}, "only": ["ami", "gce"]},
    ]
    for name, options in (("ec2", ami), ("gcp", gce)):  # without the option, the refusal names it
        with pytest.raises(
            BakeryError, match=r"selects target %s: .*set verify_instance: true on the target" % name
        ):
            make(bake, directory)
        options["verify_instance"] = True
    planned = targets(make(bake, directory))
    assert [e["kind"] for e in planned["ec2"]["verify"]] == ["local", "shell"]
    assert [e["kind"] for e in planned["gcp"]["verify"]] == ["local", "shell"]
    # the option counts in the digest of the checks, never in the fingerprint of the image
    bake["verify"].pop()
    with_instance = targets(make(bake, directory))
    ami["verify_instance"] = gce["verify_instance"] = False
    without = targets(make(bake, directory))
    for name in ("ec2", "gcp"):
        assert with_instance[name]["verify_digest"] != without[name]["verify_digest"]
        assert with_instance[name]["inputs"] == without[name]["inputs"]


def test_verify_instance_without_a_check_or_a_gce_zone_is_refused(definition):
    bake, directory = definition
    gce = {"source": "disk", "name": "web", "bucket": "b", "verify_instance": True}
    bake["targets"].append({"name": "gcp", "gce": gce})
    with pytest.raises(BakeryError, match="target gcp sets verify_instance, but no verify entry selects it"):
        make(bake, directory)
    bake["verify"] = [{"shell": {"inline": ["true"]}, "only": ["gcp"]}]
    with pytest.raises(
        BakeryError, match="target gcp sets verify_instance: .* starts in zone, which it does not set"
    ):
        make(bake, directory)
    gce["zone"] = "europe-west1-b"
    assert targets(make(bake, directory))["gcp"]["verify_digest"]
    bake["targets"].append({"name": "ec2", "ami": {"source": "disk", "name": "web", "verify_instance": True}})
    with pytest.raises(BakeryError, match="target ec2 sets verify_instance, but no verify entry selects it"):
        make(bake, directory)
