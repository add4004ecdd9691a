"""The bake plan: validation, selection, inputs of each target's fingerprint."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _plan
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BAKE = {
    "name": "web",
    "output_dir": "out",
    "base": {"suite": "bookworm", "packages": ["python3"]},
    "provisioners": [{"role": "bakery.images.example_web", "vars": {"page": "hi"}}],
    "targets": [
        {"name": "img", "docker": {"repository": "bakery/web"}},
        {"name": "df", "docker": {"repository": "bakery/df", "context": "/ctx"}},
    ],
}
ROLES = {"bakery.images.example_web": "role-digest-1"}


def plan(bake=None, roles=None, **kwargs):
    roles = ROLES if roles is None else roles
    return _plan.make_plan(
        bake or BAKE,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: roles[name],
        cwd="/work",
        **kwargs,
    )


def test_targets_become_hosts_with_inputs():
    result = plan(bake_id="b1")
    assert result["bake_id"] == "b1"
    assert result["manifest"] == "/work/out/bake-manifest.json"
    img, df = result["targets"]
    assert img["host"] == "bakery-img" and img["builder"] == "bakery-img-builder"
    assert img["needs_builder"] and not df["needs_builder"]
    assert set(img["inputs"]) == {"role:bakery.images.example_web", "vars", "source"}
    assert img["rootfs"]["path"].startswith("/work/out/cache/rootfs/bookworm-")
    # a Dockerfile build is not provisioned by the roles: their content is no input of it
    assert df["inputs"] == {} and df["provisioners"] == []


def test_inputs_follow_roles_vars_and_base():
    base = plan()["targets"][0]["inputs"]
    assert plan(roles={"bakery.images.example_web": "role-digest-2"})["targets"][0]["inputs"] != base
    other_vars = copy.deepcopy(BAKE)
    other_vars["provisioners"][0]["vars"]["page"] = "bye"
    assert plan(other_vars)["targets"][0]["inputs"]["vars"] != base["vars"]
    other_base = copy.deepcopy(BAKE)
    other_base["base"]["packages"] = ["python3", "curl"]
    assert plan(other_base)["targets"][0]["inputs"]["source"] != base["source"]
    reordered = copy.deepcopy(BAKE)
    reordered["base"] = {"packages": ["python3"], "suite": "bookworm"}
    assert plan(reordered)["targets"][0]["inputs"] == base


def test_selection_by_name_and_type():
    assert [t["name"] for t in plan(only="img")["targets"]] == ["img"]
    assert [t["name"] for t in plan(except_=["img"])["targets"]] == ["df"]
    assert [t["name"] for t in plan(only="docker")["targets"]] == ["img", "df"]
    assert plan(only="img")["skipped_targets"] == ["df"]
    with pytest.raises(BakeryError, match="'nope' is neither a target nor a target type"):
        plan(only="nope")


def test_force_all_or_by_name():
    assert all(t["force"] for t in plan(force=True)["targets"])
    assert [t["force"] for t in plan(force="df")["targets"]] == [False, True]
    assert not any(t["force"] for t in plan(force=False)["targets"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update(name="Bad Name"), "bake name 'Bad Name' is not valid"),
        (lambda b: b.update(targets=[]), "has no targets"),
        (lambda b: b["targets"].append({"name": "img", "docker": {}}), "target name 'img' is used twice"),
        (lambda b: b["targets"].append({"name": "x"}), "must have exactly one of the keys docker"),
        (lambda b: b["targets"][0].update(name="../etc"), "target name '../etc' is not valid"),
        (lambda b: b["provisioners"].append({"role": "../../evil"}), "is not a role name"),
        (lambda b: b["provisioners"].append({"role": "/etc/roles/x"}), "is not a role name"),
        (lambda b: b.pop("base"), "needs a source"),
    ],
)
def test_bad_definitions_fail_with_a_message_naming_the_problem(mutate, message):
    bake = copy.deepcopy(BAKE)
    mutate(bake)
    with pytest.raises(BakeryError, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan(bake)


def test_bake_ids_are_unique_and_label_safe():
    ids = {_plan.new_bake_id() for _index in range(50)}
    assert len(ids) == 50
    for bake_id in ids:
        assert bake_id == bake_id.lower() and len(bake_id) <= 63
