"""The per-step cache: chain keys in the plan, and the least-recently-used eviction of step images."""

from __future__ import annotations

import copy
import json

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _docker, _plan
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import chain_keys
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BAKE = {
    "name": "steps",
    "output_dir": "out",
    "base": {"suite": "bookworm", "packages": ["python3"]},
    "provisioners": [
        {"role": "one", "vars": {"a": 1}},
        {"shell": {"inline": ["echo two"]}},
        {"role": "three", "vars": {"c": 3}},
    ],
    "targets": [
        {"name": "img", "docker": {"repository": "bakery/steps"}},
        {"name": "other", "docker": {"repository": "bakery/other"}},
    ],
}
ROLES = {"one": "digest-one", "three": "digest-three"}


def keys(bake=None, roles=None, target=0, **kwargs):
    roles = ROLES if roles is None else roles
    made = _plan.make_plan(
        bake or BAKE,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: roles[name],
        cwd="/work",
        **kwargs,
    )
    return made["targets"][target]["step_keys"]


def changed(bake):
    return [a != b for a, b in zip(keys(), keys(bake))]


def test_a_key_per_step_chained():
    found = keys()
    assert len(found) == 4 and len(set(found)) == 4  # after the start, after each of the 3 provisioners
    assert found == keys(), "the same definition gives the same keys"
    # a role may act on the target's name (bakery_target_name, the builder's host name): targets share no step
    assert not set(keys(target=1)) & set(found)


def test_changing_the_last_step_changes_only_its_key():
    bake = copy.deepcopy(BAKE)
    bake["provisioners"][2]["vars"]["c"] = 4
    assert changed(bake) == [False, False, False, True]


def test_a_changed_earlier_step_changes_every_later_key():
    bake = copy.deepcopy(BAKE)
    bake["provisioners"][1]["shell"]["inline"] = ["echo deux"]
    assert changed(bake) == [False, False, True, True]
    assert changed(BAKE) == [False] * 4
    other_role = dict(ROLES, one="digest-one-changed")
    assert [a != b for a, b in zip(keys(), keys(roles=other_role))] == [False, True, True, True]


def test_vars_of_the_target_and_the_selection_count():
    bake = copy.deepcopy(BAKE)
    bake["targets"][0]["vars"] = {"a": 2}
    # a target's vars override the role entries' variables: both role steps change, and all after the first
    assert changed(bake) == [False, True, True, True]
    left_out = copy.deepcopy(BAKE)
    left_out["provisioners"][1]["except"] = ["img"]
    shorter = keys(left_out)
    assert len(shorter) == 3 and shorter[1] == keys()[1] and shorter[2] != keys()[3]
    assert keys(left_out, target=1) == keys(target=1), "the other target still runs the entry"


def test_the_start_is_key_zero():
    bake = copy.deepcopy(BAKE)
    bake["base"]["packages"] = ["python3", "curl"]
    assert changed(bake) == [True] * 4
    lists = copy.deepcopy(BAKE)
    lists["package_lists"] = "keep"
    assert changed(lists) == [True] * 4
    # what the commit applies (changes, labels) decides no step: the steps are shared
    committed = copy.deepcopy(BAKE)
    committed["targets"][0]["docker"]["changes"] = {"cmd": ["/bin/true"]}
    assert changed(committed) == [False] * 4


def test_scheduling_and_names_decide_no_step():
    bake = copy.deepcopy(BAKE)
    bake["provisioners"][1].update(name="the second", pause_before=1, retries=2)
    assert changed(bake) == [False] * 4


def test_chain_keys_helper():
    first = chain_keys({"r": 1}, ["a", "b"])
    assert chain_keys({"r": 1}, ["a", "c"])[:2] == first[:2]
    assert chain_keys({"r": 2}, ["a", "b"])[1] != first[1]
    # a step's position is part of its key: the same digests at other positions are other states
    assert chain_keys({"r": 1}, ["b", "a"])[2] != first[2]


def test_cache_settings_and_force():
    made = _plan.make_plan(
        dict(BAKE, cache_max_size="512M"),
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: ROLES[name],
        cwd="/work",
        force="img",
    )
    img, other = made["targets"]
    assert img["step_cache"] == {
        "enabled": False,
        "max_size": 512 * 1024**2,
        "dir": "/work/out/cache",
        "max_resume": 3,
    }
    assert other["step_cache"]["enabled"] is True
    off = _plan.make_plan(
        dict(BAKE, step_cache=False),
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: ROLES[name],
        cwd="/work",
    )
    assert not off["targets"][0]["step_cache"]["enabled"]
    with pytest.raises(BakeryError, match="cache_max_size"):
        _plan.cache_settings({"cache_max_size": "lots"}, "/c")


def entry(image, used, size, position=1):
    return {"id": image, "key": "k" + image, "position": position, "size": size, "used": used}


def test_eviction_least_recently_used_first():
    entries = [entry("a", 30, 100), entry("b", 10, 100), entry("c", 20, 100)]
    assert _docker.eviction_order(entries, 300) == []
    assert _docker.eviction_order(entries, 250) == ["b"]
    assert _docker.eviction_order(entries, 100) == ["b", "c"]
    assert _docker.eviction_order(entries, 0) == ["b", "c", "a"]
    # what was just made stays, even beyond the size
    assert _docker.eviction_order(entries, 0, keep={"a"}) == ["b", "c"]


def test_eviction_of_steps_used_together_goes_deepest_first():
    entries = [entry("s1", 5, 10, 1), entry("s2", 5, 10, 2), entry("s3", 5, 10, 3)]
    assert _docker.eviction_order(entries, 15) == ["s3", "s2"]


def test_the_index_records_use(tmp_path):
    _docker.touch_steps(str(tmp_path), ["sha256:a"], now=1.0)
    _docker.touch_steps(str(tmp_path), ["sha256:b"], now=2.0)
    _docker.touch_steps(str(tmp_path), ["sha256:a"], now=3.0)
    data = json.loads((tmp_path / _docker.STEP_INDEX).read_text())
    assert data == {"used": {"sha256:a": 3.0, "sha256:b": 2.0}}
    assert [p.name for p in tmp_path.iterdir()] == [_docker.STEP_INDEX], "written atomically, no lock left"


def test_resume_states_and_reason():
    assert _docker.step_states(2, 3, True) == ["hit", "hit", "miss"]
    assert _docker.step_states(0, 2, False) == ["bypassed", "bypassed"]
    assert "provisioner 3 has no cached state" in _docker.resume_reason(2, 3, True, False)
    assert _docker.resume_reason(0, 3, True, True).startswith("forced")


def test_step_base_reads_the_base_a_step_image_records():
    base = {"Id": "sha256:base", "Config": {"Cmd": ["bash"], "Labels": {"x": "1"}}}
    assert _docker.step_base(base) is base
    step = {
        "Id": "sha256:step",
        "Config": {
            "Cmd": ["sleep"],
            "Labels": {
                _docker.STEP_LABEL: json.dumps(
                    {"position": 1, "base": "sha256:base", "config": base["Config"]}
                )
            },
        },
    }
    assert _docker.step_base(step) == base


def test_a_step_that_acts_outside_the_builder_runs_in_every_bake():
    bake = copy.deepcopy(BAKE)
    bake["provisioners"].insert(2, {"local": {"inline": ["echo on the controller"]}})
    made = _plan.make_plan(
        bake,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda name: ROLES[name],
        cwd="/work",
    )
    assert made["targets"][0]["step_cache"]["max_resume"] == 2
    assert "provisioner 3 acts outside the builder" in _docker.resume_reason(2, 4, True, False, 2)


def test_the_manifest_keeps_the_step_cache_of_an_unchanged_artifact():
    from ansible_collections.bakery.images.plugins.module_utils import _manifest

    plan = {"name": "steps", "bake_id": "b", "manifest": "/m.json", "targets": []}
    built = {
        "target": "img",
        "type": "docker",
        "status": "built",
        "fingerprint": "f",
        "id": "sha256:1",
        "build_seconds": 3.0,
        "bake_id": "b",
    }
    cache = {"resume": 1, "reason": "r", "steps": ["hit", "miss"], "image": "sha256:s", "keys": ["k"]}
    first = _manifest.manifest(
        plan, [{"target": "img", "type": "docker", "artifact": built, "step_cache": cache}]
    )
    assert first["artifacts"][0]["step_cache"] == {
        "resume": 1,
        "reason": "r",
        "steps": ["hit", "miss"],
        "image": "sha256:s",
    }
    unchanged = dict(built, status="unchanged")
    again = _manifest.manifest(plan, [{"target": "img", "type": "docker", "artifact": unchanged}], first)
    assert again == first
    lines = _manifest.summary(
        plan, [{"target": "img", "type": "docker", "artifact": built, "step_cache": cache}]
    )
    assert "steps 1 hit/1 miss, resumed after provisioner 1: r" in lines[1]
