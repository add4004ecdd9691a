"""Which facts a builder gathers: min and the subsets whose facts the roles name, or all when they could read any."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _facts

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize(
    "text",
    [
        "when: ansible_facts['service_mgr'] == 'systemd' and ansible_facts.os_family == 'Debian'",
        "{{ ansible_distribution }} {{ ansible_distribution_major_version }} {{ ansible_hostname }}",
        # magic and connection variables are no facts
        "{{ ansible_check_mode }} {{ ansible_managed }} {{ ansible_python_interpreter }} {{ ansible_ssh_user }}",
        "{{ ansible_play_hosts | length }} {{ ansible_version.full }} {{ ansible_become_user }}",
        # facts a module of the role sets (package_facts), not setup
        "update_cache: \"{{ 'nginx' not in ansible_facts.packages }}\"",
        "hostvars[inventory_hostname]['my_var'] and hostvars[item].other_var",
        "my_ansible_var: 1  # no ansible_ fact in a longer name",
        "lookup('vars', 'my_setting')",
    ],
)
def test_only_min_facts(text):
    assert _facts.subsets_for(text) == (set(), None)


@pytest.mark.parametrize(
    ("text", "subsets"),
    [
        ('workers: "{{ ansible_processor_vcpus * 2 }}"', {"hardware"}),
        ("{{ (ansible_memtotal_mb * 0.25) | int }}MB", {"hardware"}),
        ("{{ hostvars[inventory_hostname]['ansible_mounts'] }}", {"hardware"}),
        ("listen {{ ansible_default_ipv4.address }}:80;", {"network"}),
        (
            "when: ansible_facts['virtualization_type'] != 'docker' and not ansible_facts.is_chroot",
            {"virtual", "chroot"},
        ),
    ],
)
def test_subsets_of_the_facts_named(text, subsets):
    assert _facts.subsets_for(text) == (subsets, None)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{{ ansible_eth0.ipv4.address }}", "ansible_eth0, a fact of no subset known here"),
        ("{{ ansible_facts[item] }}", "ansible_facts whole or by a computed key"),
        ("{{ ansible_facts | to_nice_json }}", "ansible_facts whole"),
        ("{{ hostvars[inventory_hostname]['ansible_' ~ iface] }}", "together from 'ansible_'"),
        ("{{ hostvars[inventory_hostname] | to_json }}", "hostvars[inventory_hostname] whole"),
        ("{{ vars | dict2items }}", "vars whole"),
        ("{{ lookup('vars', 'ansible_' + name) }}", "together from 'ansible_'"),
        ("{{ lookup('ansible.builtin.vars', setting) }}", "the vars lookup"),
        # a role's own variable named like a fact: not known, so everything
        ("ansible_role_setting: 3", "ansible_role_setting"),
    ],
)
def test_a_role_that_could_read_any_fact_gets_them_all(text, why):
    _subsets, found = _facts.subsets_for(text)
    assert found and why in found, found


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_role_is_read_in_its_templates_and_variables_not_in_its_files(tmp_path):
    role = write(
        tmp_path / "web",
        {
            "tasks/main.yml": "- ansible.builtin.include_role:\n    name: common\n",
            "defaults/main.yml": 'web_workers: "{{ ansible_processor_vcpus }}"\n',
            "templates/site.conf": "listen {{ ansible_default_ipv4.address }};\n",
            # copied as they are: no template, not read
            "files/notes.txt": "{{ ansible_eth0 }}\n",
            "library/thing.py": "ansible_facts = module.params\n",
            "meta/main.yml": "dependencies:\n  - role: base\n",
        },
    )
    seen = []

    def included(path, text):
        seen.append(Path(path).relative_to(role).as_posix())
        return ["common"] if path.endswith("tasks/main.yml") else ["base"] if "meta" in path else []

    needed, why, roles = _facts.role_subsets(str(role), included)
    assert (needed, why) == ({"hardware", "network"}, None)
    assert sorted(roles) == ["base", "common"]
    assert "files/notes.txt" not in seen and "tasks/main.yml" in seen


def test_the_gather_subset_of_a_target():
    def role_facts(name):
        return {
            "web": ({"virtual"}, None),
            "plain": (set(), None),
            "wild": (set(), "tasks/main.yml: it reads x"),
        }[name]

    shell = {"kind": "shell"}
    assert _facts.gather_subset([shell, {"kind": "role", "role": "plain", "vars": {}}], role_facts)[0] == [
        "min"
    ]
    assert _facts.gather_subset([{"kind": "role", "role": "web", "vars": {}}], role_facts)[0] == [
        "min",
        "virtual",
    ]
    # the variables an entry gives its role are read too
    entry = {"kind": "role", "role": "plain", "vars": {"n": "{{ ansible_processor_count }}"}}
    assert _facts.gather_subset([entry], role_facts)[0] == ["min", "hardware"]
    subset, why = _facts.gather_subset([{"kind": "role", "role": "wild", "vars": {}}], role_facts)
    assert subset == ["all"] and "role wild: tasks/main.yml" in why
    assert _facts.gather_subset([entry], role_facts, ["all"]) == (["all"], "bake.gather_subset")
    assert _facts.gather_subset([entry], None)[0] == ["all"]
    # playbooks gather their own facts, shell and file entries see none
    assert _facts.gather_subset([shell, {"kind": "playbook"}], role_facts)[0] == ["min"]


def test_a_builder_needs_facts_until_its_last_role():
    role = {"kind": "role", "role": "web", "vars": {}}
    shell = {"kind": "shell", "shell": {"inline": ["echo hi"], "environment": {}}}
    playbook = {"kind": "playbook", "playbook": "site.yml", "vars": {}}
    # a role's tasks get the facts: a resume after it gathers none for the shell entries that follow
    assert _facts.facts_until([role, shell, shell], []) == 1
    assert _facts.facts_until([shell, role, shell], []) == 2
    assert _facts.facts_until([shell, role, role], []) == 3
    # no role (a playbook gathers its own): no position needs them
    assert _facts.facts_until([shell, playbook], []) == 0
    assert _facts.facts_until([], []) == 0
    # an error provisioner may run after any of them; a subset the bake chose is gathered: always
    assert _facts.facts_until([shell, shell], [role]) == 3
    assert _facts.facts_until([shell], [], ["min"]) == 2
    assert _facts.facts_until([shell], [shell]) == 0


def test_the_example_role_needs_the_virtual_and_chroot_facts_only():
    needed, why, _roles = _facts.role_subsets(str(REPO / "roles" / "example_web"), lambda path, text: [])
    assert (needed, why) == ({"virtual", "chroot"}, None)


def test_the_plan_reads_the_roles_a_role_includes_or_depends_on(tmp_path):
    from ansible_collections.bakery.images.plugins.action.bake_plan import ActionModule

    roles = tmp_path / "roles"
    write(roles / "outer", {"tasks/main.yml": "- ansible.builtin.include_role:\n    name: inner\n"})
    write(roles / "inner", {"templates/x.j2": "{{ ansible_processor_count }}\n", "tasks/main.yml": "[]\n"})
    write(roles / "dynamic", {"tasks/main.yml": '- ansible.builtin.import_role:\n    name: "{{ which }}"\n'})
    write(roles / "needy", {"meta/main.yml": "dependencies:\n  - role: nowhere\n"})
    plan = object.__new__(ActionModule)  # only its role lookup is used
    assert plan._role_facts("outer", str(tmp_path), set()) == ({"hardware"}, None)
    _needed, why = plan._role_facts("dynamic", str(tmp_path), set())
    assert "templated name" in why
    _needed, why = plan._role_facts("needy", str(tmp_path), set())
    assert "nowhere (included): role nowhere was not found" in why
