"""The bake plan: validation, selection, inputs of each target's fingerprint."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _plan
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

# the plan checks a Dockerfile build's context (targets build on this host): a real one
CONTEXT = tempfile.mkdtemp(prefix="bakery-plan-context-")
atexit.register(shutil.rmtree, CONTEXT, True)
with open(os.path.join(CONTEXT, "Dockerfile"), "w", encoding="utf-8") as _handle:
    _handle.write("FROM debian:bookworm\nRUN true\n")

BAKE = {
    "name": "web",
    "output_dir": "out",
    "base": {"suite": "bookworm", "packages": ["python3"]},
    "provisioners": [{"role": "bakery.images.example_web", "vars": {"page": "hi"}}],
    "targets": [
        {"name": "img", "docker": {"repository": "bakery/web"}},
        {"name": "df", "docker": {"repository": "bakery/df", "context": CONTEXT}},
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
        # the controller's SOURCE_DATE_EPOCH would make it an input: the tests give their own environment
        **dict({"environ": {}}, **kwargs),
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


@pytest.fixture()
def disk_types(monkeypatch):
    """A disk-producing type and a consumer of it, as the qemu and vagrant targets are."""
    monkeypatch.setattr(_plan, "TARGET_TYPES", ("docker", "qemu", "vagrant"))
    monkeypatch.setattr(_plan, "SOURCE_TYPES", ("qemu",))


def disk_bake(**vagrant):
    bake = copy.deepcopy(BAKE)
    bake["targets"] = [
        {"name": "img", "docker": {"repository": "bakery/web"}},
        {"name": "disk", "qemu": {"format": "qcow2"}},
        {"name": "box", "vagrant": dict({"source": "disk"}, **vagrant)},
    ]
    return bake


def test_a_target_made_from_another_targets_disk(disk_types):
    targets = {t["name"]: t for t in plan(disk_bake(), bake_id="b1")["targets"]}
    box, disk = targets["box"], targets["disk"]
    assert box["source"] == {"target": "disk", "type": "qemu", "host": "bakery-disk"}
    assert not box["needs_builder"] and box["provisioners"] == []
    assert list(box["inputs"]) == ["source_target"]
    assert disk["source"] is None and disk["needs_builder"]


def test_a_new_disk_means_a_new_box(disk_types):
    before = {t["name"]: t for t in plan(disk_bake())["targets"]}["box"]["inputs"]
    roles = dict(ROLES, **{"bakery.images.example_web": "role-digest-2"})
    after = {t["name"]: t for t in plan(disk_bake(), roles=roles)["targets"]}["box"]["inputs"]
    assert before != after


def test_selecting_a_consumer_selects_its_source(disk_types):
    result = plan(disk_bake(), only="box")
    assert sorted(t["name"] for t in result["targets"]) == ["box", "disk"]
    assert result["skipped_targets"] == ["img"]


@pytest.mark.parametrize(
    ("source", "message"),
    [("nope", "source 'nope' is not a target of this bake"), ("img", "source 'img' is a docker target")],
)
def test_a_source_must_be_a_disk_target_of_the_bake(disk_types, source, message):
    with pytest.raises(BakeryError, match=message):
        plan(disk_bake(source=source))


# ---------------------------------------------------------------- secret options


SECRET = "bakery-secret-registry-0f3c"


def secret_bake():
    registry = {"username": "pusher", "password": SECRET}
    return dict(
        BAKE,
        targets=[
            {"name": "img", "docker": {"repository": "bakery/web", "push": True, "registry": registry}},
            {"name": "df", "docker": {"repository": "bakery/df", "context": CONTEXT}},
        ],
    )


def test_secret_paths_are_the_no_log_options_of_the_role_specs():
    from ansible_collections.bakery.images.plugins.action.bake_plan import secret_options

    assert secret_options("docker") == [["registry", "password"]]
    for kind in ("qemu", "vagrant", "ami", "gce"):
        assert secret_options(kind) == [], kind  # their credentials are role variables or the environment
    spec = {
        "a": {"type": "str", "no_log": True},
        "b": {"type": "dict", "options": {"c": {"type": "str"}, "d": {"type": "str", "no_log": True}}},
        "e": {"type": "list", "elements": "dict", "options": {"f": {"no_log": True}}},
        "g": {"type": "str", "no_log": False},
    }
    assert _plan.secret_paths(spec) == [["a"], ["b", "d"], ["e", "f"]]


def test_mask_secrets_masks_a_copy_and_leaves_empty_values():
    options = {"registry": {"username": "u", "password": SECRET}, "token": None, "items": [{"f": "x"}, {}]}
    before = copy.deepcopy(options)
    masked = _plan.mask_secrets(options, [["registry", "password"], ["token"], ["items", "f"], ["nope", "x"]])
    assert masked == {
        "registry": {"username": "u", "password": _plan.MASK},
        "token": None,
        "items": [{"f": _plan.MASK}, {}],
    }
    assert options == before, "the input must not change"
    assert SECRET not in repr(masked)


def test_pick_secrets_and_combine_give_the_real_options_back():
    options = {"registry": {"username": "u", "password": SECRET}, "push": True}
    paths = [["registry", "password"], ["other"]]
    picked = _plan.pick_secrets(options, paths)
    assert picked == {"registry": {"password": SECRET}}
    masked = _plan.mask_secrets(options, paths)
    masked["registry"].update(picked["registry"])  # what combine(recursive=true) does in role docker
    assert masked == options
    assert _plan.present_secrets(options, paths) == [["registry", "password"]]
    assert _plan.pick_secrets({"registry": None}, paths) == {}


def test_the_plan_shows_secret_options_masked_and_names_them():
    result = plan(bake=secret_bake(), bake_id="b1", secrets_of=lambda kind: [["registry", "password"]])
    img, df = result["targets"]
    assert img["options"]["registry"] == {"username": "pusher", "password": _plan.MASK}
    assert img["secret_options"] == [["registry", "password"]] and df["secret_options"] == []
    assert SECRET not in repr(result)


def test_target_secrets_filter_takes_the_real_values_from_the_bake():
    from ansible.errors import AnsibleFilterError

    from ansible_collections.bakery.images.plugins.filter.bake import target_secrets

    bake = secret_bake()
    img, df = plan(bake=bake, bake_id="b1", secrets_of=lambda kind: [["registry", "password"]])["targets"]
    assert target_secrets(bake, img) == {"registry": {"password": SECRET}}
    assert target_secrets(bake, df) == {}
    with pytest.raises(AnsibleFilterError, match="not in the bake definition"):
        target_secrets(dict(bake, targets=[]), img)


def test_a_module_refuses_the_masked_copy_of_a_password():
    from ansible_collections.bakery.images.plugins.module_utils import _docker

    with pytest.raises(BakeryError, match="masked copy"):
        _docker._auth({"registry": {"username": "u", "password": _plan.MASK}})
    assert _docker._auth({"registry": {"username": "u", "password": SECRET}}) == {
        "username": "u",
        "password": SECRET,
    }


def test_unset_sub_options_stay_out_of_the_planned_options():
    """The qemu role validates bakery_target again at include time: a None there fails its choices."""
    from ansible_collections.bakery.images.plugins.action.bake_plan import validate_target

    options = validate_target("qemu", {"formats": ["qcow2"], "vm": {"memory": 2048}}, "bake.targets[0].qemu")
    assert options["vm"] == {"memory": 2048}
    assert "firmware" not in validate_target("qemu", {}, "t")["vm"]


def test_relative_controller_paths_become_absolute_against_the_playbook_directory():
    """The modules that read a build context, a base image or a key file do not run in the directory
    ansible-playbook was started in: the plan hands them absolute paths."""
    parent, name = os.path.split(CONTEXT)
    bake = copy.deepcopy(BAKE)
    bake["targets"] = [
        {"name": "df", "docker": {"repository": "bakery/df", "context": name}},
        {
            "name": "cloud",
            "gce": {
                "project": "p",
                "name": "img",
                "source_image": "debian-12",
                "zone": "europe-west1-b",
                "service_account_file": "keys/sa.json",
            },
        },
    ]
    df, cloud = _plan.make_plan(
        bake,
        validate_target=lambda kind, options, where: dict(options),
        role_digest=lambda role: ROLES[role],
        cwd=parent,
    )["targets"]
    assert df["options"]["context"] == CONTEXT
    assert cloud["options"]["service_account_file"] == os.path.join(parent, "keys", "sa.json")
    assert _plan.with_local_paths("qemu", {"base_image": "/abs/disk.qcow2", "vagrant_key": None}, "/w") == {
        "base_image": "/abs/disk.qcow2",
        "vagrant_key": None,
    }
    assert _plan.with_local_paths("qemu", {"base_image": "d/disk.raw"}, "/w") == {
        "base_image": "/w/d/disk.raw"
    }


def test_hygiene_settings_of_a_qemu_target_take_the_bakes_where_it_has_none():
    bake = copy.deepcopy(BAKE)
    bake["hygiene"] = {"skip": ["world_writable"], "var_log_max": "32M"}
    bake["targets"] = [
        {"name": "own", "qemu": {"hygiene": {"skip": ["core_dumps", "apt_lists"], "var_log_max": None}}},
        {"name": "plain", "qemu": {}},
    ]
    own, plain = plan(bake)["targets"]
    assert own["options"]["hygiene"] == {"skip": ["apt_lists", "core_dumps"], "var_log_max": "32M"}
    assert plain["options"]["hygiene"] == {"skip": ["world_writable"], "var_log_max": "32M"}
    del bake["hygiene"]
    assert plan(bake)["targets"][1]["options"]["hygiene"] == {"skip": [], "var_log_max": "64M"}


def test_unknown_hygiene_checks_and_bad_sizes_are_refused_when_planned():
    bake = copy.deepcopy(BAKE)
    bake["targets"] = [{"name": "disk", "qemu": {"hygiene": {"skip": ["history"]}}}]
    with pytest.raises(BakeryError, match=r"^bake.targets\[0\].qemu.hygiene: skip: unknown check history; "):
        plan(bake)
    bake["targets"] = [{"name": "disk", "qemu": {}}]
    bake["hygiene"] = {"var_log_max": "a lot"}
    with pytest.raises(BakeryError, match=r"^bake.hygiene: var_log_max 'a lot' is not a size"):
        plan(bake)


def cloud_bake(**own_hygiene) -> dict:
    """A bake with an ami and a gce instance bake and an upload of each from a qemu target."""
    bake = copy.deepcopy(BAKE)
    gce = {"project": "p", "name": "web", "source_image": "debian-12", "zone": "europe-west1-b"}
    bake["targets"] = [
        {"name": "disk", "qemu": {"formats": ["raw"]}},
        {
            "name": "ami",
            "ami": dict({"region": "eu-west-1", "name": "web", "source_ami": "ami-1"}, **own_hygiene),
        },
        {"name": "gce", "gce": dict(gce, **own_hygiene)},
        {"name": "ami-up", "ami": {"region": "eu-west-1", "name": "web-disk", "source": "disk"}},
        {"name": "gce-up", "gce": {"project": "p", "name": "disk", "source": "disk", "bucket": "b"}},
    ]
    return bake


def test_instance_bakes_take_hygiene_settings_as_qemu_targets_do_and_they_are_fingerprint_inputs():
    bake = cloud_bake()
    bake["hygiene"] = {"skip": ["world_writable"], "var_log_max": "32M"}
    planned = {target["name"]: target for target in plan(bake)["targets"]}
    for name in ("ami", "gce"):
        assert planned[name]["options"]["hygiene"] == {"skip": ["world_writable"], "var_log_max": "32M"}, name
        assert "hygiene" in planned[name]["inputs"], name
    # an upload has the checks of the disk it uploads: no settings, no input of its own
    for name in ("ami-up", "gce-up"):
        assert planned[name]["options"].get("hygiene") is None, name
        assert set(planned[name]["inputs"]) == {"source_target"}, name

    # the bake's default applies where the target sets nothing; the target's own setting wins
    own = plan(cloud_bake(hygiene={"skip": ["core_dumps"]}))["targets"]
    assert [t["options"]["hygiene"] for t in own if t["name"] in ("ami", "gce")] == [
        {"skip": ["core_dumps"], "var_log_max": "64M"}
    ] * 2
    default = {t["name"]: t for t in plan(cloud_bake())["targets"]}
    assert default["ami"]["options"]["hygiene"] == {"skip": [], "var_log_max": "64M"}

    # a change of the settings is a change of the fingerprint inputs (a rebuild); the same limit written
    # otherwise is not
    inputs = default["ami"]["inputs"]
    tighter = {t["name"]: t for t in plan(cloud_bake(hygiene={"var_log_max": "16M"}))["targets"]}
    assert tighter["ami"]["inputs"]["hygiene"] != inputs["hygiene"]
    assert {k: v for k, v in tighter["ami"]["inputs"].items() if k != "hygiene"} == {
        k: v for k, v in inputs.items() if k != "hygiene"
    }
    same = {t["name"]: t for t in plan(cloud_bake(hygiene={"var_log_max": "64MiB"}))["targets"]}
    assert same["ami"]["inputs"] == inputs and same["gce"]["inputs"] == default["gce"]["inputs"]


def test_an_upload_refuses_hygiene_settings_of_its_own():
    for index, kind in ((3, "ami"), (4, "gce")):
        bake = cloud_bake()
        bake["targets"][index][kind]["hygiene"] = {"skip": ["core_dumps"]}
        with pytest.raises(
            BakeryError,
            match=r"^bake.targets\[%d\].%s.hygiene: this target uploads the disk of qemu target disk, whose "
            r"hygiene checks apply" % (index, kind),
        ):
            plan(bake)
    bake = cloud_bake(hygiene={"skip": ["tmp"]})
    with pytest.raises(BakeryError, match=r"^bake.targets\[1\].ami.hygiene: skip: unknown check tmp; "):
        plan(bake)


def test_each_target_knows_its_architecture_where_the_plan_can():
    """The base's architecture (the host's when unset), and a box's is its disk's; a Dockerfile build's is read
    from the image it makes."""
    from ansible_collections.bakery.images.plugins.module_utils import _rootfs

    img, df = plan()["targets"]
    assert img["architecture"] == _rootfs.host_architecture() and df["architecture"] is None
    bake = copy.deepcopy(BAKE)
    bake["base"]["architecture"] = "arm64"
    bake["targets"] = [
        {"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2"]}},
        {"name": "box", "vagrant": {"source": "disk", "provider": "libvirt", "box_name": "b/x"}},
    ]
    disk, box = plan(bake)["targets"]
    assert disk["architecture"] == box["architecture"] == "arm64"


def arm_images(ami=None, gce=None):
    bake = copy.deepcopy(BAKE)
    bake["base"]["architecture"] = "arm64"
    bake["targets"] = [
        {"name": "disk", "qemu": {"provision": "chroot", "formats": ["raw"]}},
        {"name": "ami", "ami": dict({"region": "eu-west-1", "name": "web", "source": "disk"}, **(ami or {}))},
        {
            "name": "gce",
            "gce": dict({"project": "p", "name": "web", "source": "disk", "bucket": "b"}, **(gce or {})),
        },
    ]
    return bake


def test_an_image_of_an_arm64_disk_is_an_arm64_image_that_boots_with_uefi():
    _disk, ami, gce = plan(arm_images())["targets"]
    assert (ami["architecture"], ami["options"]["architecture"], ami["options"]["boot_mode"]) == (
        "arm64",
        "arm64",
        "uefi",
    )
    assert gce["options"]["architecture"] == "ARM64"
    # the same, said explicitly
    _disk, ami, gce = plan(
        arm_images({"architecture": "arm64", "boot_mode": "uefi"}, {"architecture": "ARM64"})
    )["targets"]
    assert ami["options"]["boot_mode"] == "uefi" and gce["options"]["architecture"] == "ARM64"
    # an amd64 disk keeps the x86_64 default and its boot mode (BIOS and UEFI both boot it)
    amd = arm_images({"boot_mode": "legacy-bios"})
    amd["base"]["architecture"] = "amd64"
    _disk, ami, gce = plan(amd)["targets"]
    assert (ami["options"]["architecture"], ami["options"]["boot_mode"]) == ("x86_64", "legacy-bios")
    assert gce["options"]["architecture"] == "X86_64"


@pytest.mark.parametrize(
    ("ami", "gce", "message"),
    [
        (
            {"architecture": "x86_64"},
            None,
            "target 'ami': architecture x86_64, but its source disk is arm64",
        ),
        ({"boot_mode": "legacy-bios"}, None, "an arm64 AMI boots with UEFI only"),
        (
            None,
            {"architecture": "X86_64"},
            "target 'gce': architecture X86_64, but its source disk is arm64",
        ),
        (
            None,
            {"architecture": "aarch64"},
            "target 'gce': architecture 'aarch64' is not one of ARM64, X86_64",
        ),
    ],
)
def test_an_image_that_would_not_boot_its_disk_is_refused(ami, gce, message):
    with pytest.raises(BakeryError, match=message):
        plan(arm_images(ami, gce))


def instance_bakes(ami=None, gce=None):
    bake = cloud_bake()
    bake["targets"] = [
        {
            "name": "ami",
            "ami": dict({"region": "eu-west-1", "name": "web", "source_ami": "ami-1"}, **(ami or {})),
        },
        {
            "name": "gce",
            "gce": dict(
                {"project": "p", "name": "web", "source_image": "debian-12", "zone": "europe-west1-b"},
                **(gce or {}),
            ),
        },
    ]
    return bake


def test_an_arm64_instance_bake_starts_an_arm64_machine_from_an_arm64_source():
    """The architecture of an instance bake chooses its source image (an AMI filter's architecture) and its build
    machine (t4g.micro, t2a-standard-1 unless given); an x86_64 bake keeps the defaults; both are recorded."""
    ami, gce = plan(instance_bakes({"architecture": "arm64"}, {"architecture": "ARM64"}))["targets"]
    assert (ami["architecture"], ami["options"]["architecture"], ami["options"]["instance_type"]) == (
        "arm64",
        "arm64",
        "t4g.micro",
    )
    assert (gce["architecture"], gce["options"]["architecture"], gce["options"]["machine_type"]) == (
        "arm64",
        "ARM64",
        "t2a-standard-1",
    )
    # the filter's architecture says it too, and the filter gets the named one
    named = {"source_ami_filter": {"owners": ["136693071363"], "name": "debian-12-*"}}
    (ami, _gce) = plan(instance_bakes(dict(named, architecture="arm64", source_ami=None)))["targets"]
    assert ami["options"]["source_ami_filter"]["architecture"] == "arm64"
    named["source_ami_filter"]["architecture"] = "arm64"
    (ami, _gce) = plan(instance_bakes(dict(named, source_ami=None, instance_type="c7g.large")))["targets"]
    assert (ami["architecture"], ami["options"]["instance_type"]) == ("arm64", "c7g.large")
    # x86_64, given or not: the module's and the role's defaults, as before
    ami, gce = plan(instance_bakes({"architecture": "x86_64"}))["targets"]
    assert (ami["architecture"], ami["options"].get("instance_type")) == ("amd64", None)
    assert gce["options"].get("machine_type") in (None, "e2-medium") and gce["architecture"] is None


@pytest.mark.parametrize(
    ("ami", "gce", "message"),
    [
        ({"architecture": "arm64", "instance_type": "t3.small"}, None, "instance_type t3.small runs x86_64"),
        (
            {"architecture": "x86_64", "instance_type": "m7g.large"},
            None,
            "instance_type m7g.large runs arm64",
        ),
        (
            {"architecture": "x86_64", "source_ami": None, "source_ami_filter": {"architecture": "arm64"}},
            None,
            "architecture x86_64, but source_ami_filter.architecture is arm64",
        ),
        (None, {"architecture": "ARM64", "machine_type": "e2-medium"}, "machine_type e2-medium runs X86_64"),
        (
            None,
            {"architecture": "X86_64", "machine_type": "t2a-standard-2"},
            "machine_type t2a-standard-2 runs ARM64",
        ),
    ],
)
def test_an_instance_bake_on_a_machine_of_another_architecture_is_refused(ami, gce, message):
    with pytest.raises(BakeryError, match=message):
        plan(instance_bakes(ami, gce))


def test_machine_types_are_told_apart_by_their_family():
    from ansible_collections.bakery.images.plugins.module_utils._plan import machine_architecture

    arm = [
        "t4g.micro",
        "m6gd.large",
        "c6gn.xlarge",
        "x2gd.medium",
        "g5g.xlarge",
        "hpc7g.4xlarge",
        "a1.large",
        "is4gen.large",
        "im4gn.large",
    ]
    x86 = [
        "t3.micro",
        "g5.xlarge",
        "m7i-flex.large",
        "p4d.24xlarge",
        "inf2.xlarge",
        "u-6tb1.metal",
        "mac1.metal",
    ]
    assert {machine_architecture("ami", t) for t in arm} == {"arm64"}
    assert {machine_architecture("ami", t) for t in x86} == {"x86_64"}
    assert machine_architecture("gce", "c4a-standard-4") == "ARM64"
    assert (
        machine_architecture("gce", "n2-standard-2")
        == machine_architecture("gce", "custom-2-4096")
        == "X86_64"
    )


# ---------------------------------------------------------------- architectures: one entry per architecture


def multi_arch_bake(**base) -> dict:
    bake = copy.deepcopy(BAKE)
    bake["base"].update(base)
    bake["targets"] = [
        {
            "name": "img",
            "architectures": ["amd64", "arm64"],
            "docker": {"repository": "127.0.0.1:5000/web", "tags": ["v1", "latest"], "push": True},
        },
        {
            "name": "disk",
            "architectures": ["amd64", "arm64"],
            "qemu": {"provision": "chroot", "formats": ["qcow2"]},
        },
        {"name": "df", "docker": {"repository": "bakery/df", "context": CONTEXT}},
    ]
    return bake


def test_a_target_with_architectures_is_one_entry_per_architecture_each_from_its_own_base():
    result = plan(multi_arch_bake(), bake_id="b1")
    targets = {t["name"]: t for t in result["targets"]}
    assert list(targets) == ["img-amd64", "img-arm64", "disk-amd64", "disk-arm64", "df"]
    for name in ("img", "disk"):
        amd, arm = targets[name + "-amd64"], targets[name + "-arm64"]
        assert (amd["host"], arm["host"]) == ("bakery-%s-amd64" % name, "bakery-%s-arm64" % name)
        assert (amd["architecture"], arm["architecture"]) == ("amd64", "arm64")
        assert amd["definition"] == arm["definition"] == name
        # each its own rootfs (the cache keeps them apart by identity), fingerprint inputs and step keys
        assert amd["rootfs"]["path"] != arm["rootfs"]["path"]
        assert arm["rootfs"]["options"]["architecture"] == arm["rootfs"]["source"]["architecture"] == "arm64"
        assert amd["inputs"]["source"] != arm["inputs"]["source"]
        assert not set(amd["step_keys"]) & set(arm["step_keys"])
    # what they make is named apart
    assert targets["img-arm64"]["options"]["tags"] == ["v1-arm64", "latest-arm64"]
    assert targets["img-amd64"]["options"]["tags"] == ["v1-amd64", "latest-amd64"]
    assert targets["disk-arm64"]["options"]["name"] == "web-arm64"
    # a Dockerfile build is not expanded
    assert targets["df"]["definition"] == "df" and targets["df"]["expanded_architecture"] is None
    # one multi-architecture image of the pushed docker target, under its own tags
    assert result["indexes"] == [
        {
            "name": "img",
            "repository": "127.0.0.1:5000/web",
            "tags": ["v1", "latest"],
            "entries": [
                {"name": "img-amd64", "host": "bakery-img-amd64", "architecture": "amd64"},
                {"name": "img-arm64", "host": "bakery-img-arm64", "architecture": "arm64"},
            ],
            "selected": True,
        }
    ]


def test_base_architectures_expand_every_target_built_from_the_base_and_a_target_may_override_them():
    bake = multi_arch_bake(architectures=["amd64", "arm64"])
    del bake["targets"][0]["architectures"]
    bake["targets"][1]["architectures"] = ["arm64"]
    names = [t["name"] for t in plan(bake)["targets"]]
    assert names == ["img-amd64", "img-arm64", "disk-arm64", "df"]


def test_an_arm64_entry_is_what_a_bake_whose_base_is_arm64_gives_a_target():
    """The entry of a qemu target for arm64 has the rootfs and options a single-architecture arm64 bake gives it
    (its output name apart), so what builds arm64 disks composes with the expansion."""
    single = copy.deepcopy(BAKE)
    single["base"]["architecture"] = "arm64"
    single["targets"] = [
        {"name": "disk", "qemu": {"provision": "chroot", "formats": ["qcow2"], "packages": ["curl"]}}
    ]
    expanded = copy.deepcopy(single)
    del expanded["base"]["architecture"]
    expanded["targets"][0]["architectures"] = ["amd64", "arm64"]
    (one,) = plan(single)["targets"]
    arm = {t["name"]: t for t in plan(expanded)["targets"]}["disk-arm64"]
    assert arm["rootfs"] == one["rootfs"]
    assert arm["architecture"] == one["architecture"] == "arm64"
    assert dict(arm["options"], name=None) == dict(one["options"], name=None)
    assert arm["options"]["name"] == "web-arm64"


def test_the_targets_name_selects_forces_and_provisions_all_its_architectures():
    bake = multi_arch_bake()
    bake["provisioners"].append({"shell": {"inline": ["true"]}, "only": ["disk"]})
    bake["provisioners"].append({"shell": {"inline": ["false"]}, "except": ["img-arm64"]})
    result = plan(bake, only="img")
    assert [t["name"] for t in result["targets"]] == ["img-amd64", "img-arm64"]
    assert result["indexes"][0]["selected"]
    # one architecture: the index is not pushed (it would drop the other)
    result = plan(bake, only="img-arm64")
    assert [t["name"] for t in result["targets"]] == ["img-arm64"]
    assert not result["indexes"][0]["selected"]
    assert [t["name"] for t in plan(bake, except_="disk")["targets"]] == ["img-amd64", "img-arm64", "df"]
    forced = {t["name"]: t["force"] for t in plan(bake, force="disk")["targets"]}
    assert forced == {
        "img-amd64": False,
        "img-arm64": False,
        "disk-amd64": True,
        "disk-arm64": True,
        "df": False,
    }
    kinds = {t["name"]: [p["kind"] for p in t["provisioners"]] for t in plan(bake)["targets"]}
    assert kinds["disk-amd64"] == kinds["disk-arm64"] == ["role", "shell", "shell"]
    assert kinds["img-amd64"] == ["role", "shell"] and kinds["img-arm64"] == ["role"]


def test_a_target_made_from_an_expanded_disk_is_made_for_each_architecture_from_its_disk(disk_types):
    bake = disk_bake(provider="libvirt")
    bake["targets"][1]["architectures"] = ["amd64", "arm64"]
    targets = {t["name"]: t for t in plan(bake)["targets"]}
    assert sorted(targets) == ["box-amd64", "box-arm64", "disk-amd64", "disk-arm64", "img"]
    for arch in ("amd64", "arm64"):
        box = targets["box-" + arch]
        assert box["source"] == {"target": "disk-" + arch, "type": "qemu", "host": "bakery-disk-" + arch}
        assert box["architecture"] == arch and box["options"]["source"] == "disk-" + arch
    assert targets["box-amd64"]["inputs"] != targets["box-arm64"]["inputs"]
    # a box file given by name is named apart too
    bake["targets"][2]["vagrant"]["output"] = "boxes/web.box"
    outputs = {t["name"]: t["options"]["output"] for t in plan(bake)["targets"] if t["type"] == "vagrant"}
    assert outputs == {"box-amd64": "boxes/web-amd64.box", "box-arm64": "boxes/web-arm64.box"}
    # selecting the box by its name selects both boxes and both disks
    chosen = sorted(t["name"] for t in plan(bake, only="box")["targets"])
    assert chosen == ["box-amd64", "box-arm64", "disk-amd64", "disk-arm64"]
    # the same list on the consumer is accepted, another is refused
    bake["targets"][2]["architectures"] = ["arm64", "amd64"]
    assert len(plan(bake)["targets"]) == 5
    bake["targets"][2]["architectures"] = ["arm64"]
    with pytest.raises(
        BakeryError, match=r"\(box\): architectures arm64, but its source disk is baked for amd64, arm64"
    ):
        plan(bake)


def test_images_of_expanded_disks_are_named_apart_with_their_architecture():
    bake = arm_images()
    del bake["base"]["architecture"]
    bake["targets"][0]["architectures"] = ["amd64", "arm64"]
    targets = {t["name"]: t for t in plan(bake)["targets"]}
    assert (targets["ami-arm64"]["options"]["name"], targets["ami-amd64"]["options"]["name"]) == (
        "web-arm64",
        "web-amd64",
    )
    assert targets["ami-arm64"]["options"]["architecture"] == "arm64"
    assert targets["ami-arm64"]["options"]["boot_mode"] == "uefi"
    assert targets["ami-amd64"]["options"]["architecture"] == "x86_64"
    assert (
        targets["gce-arm64"]["options"]["architecture"],
        targets["gce-amd64"]["options"]["architecture"],
    ) == (
        "ARM64",
        "X86_64",
    )


def test_the_secret_options_of_an_expanded_entry_come_from_its_target():
    bake = multi_arch_bake()
    bake["targets"][0]["docker"]["registry"] = {"username": "u", "password": SECRET}
    result = plan(bake, secrets_of=lambda kind: [["registry", "password"]] if kind == "docker" else [])
    arm = result["targets"][1]
    assert arm["options"]["registry"]["password"] == _plan.MASK
    assert _plan.target_secrets(bake, arm) == {"registry": {"password": SECRET}}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda b: b["targets"][0].update(architectures=["arm64", "amd64", "arm64"]),
            r"^bake.targets\[0\].architectures lists arm64 twice$",
        ),
        (
            lambda b: b["targets"][0].update(architectures=["aarch64"]),
            r"^bake.targets\[0\].architectures: 'aarch64' is not a Debian architecture bakery builds for \(one of amd64, arm64",
        ),
        (lambda b: b["targets"][0].update(architectures=[]), r"must be a list of Debian architectures"),
        (
            lambda b: b["base"].update(architecture="arm64", architectures=["amd64"]),
            r"^bake.base: give architecture \(one\) or architectures \(a list of them\), not both$",
        ),
        (lambda b: b["base"].update(architectures=["x86_64"]), r"^bake.base.architectures: 'x86_64' is not"),
        (
            lambda b: b["targets"][2].update(architectures=["arm64"]),
            r"^bake.targets\[2\] \(df\): architectures is for a target built from bake.base .* starts from its "
            r"Dockerfile$",
        ),
        (
            lambda b: b["targets"].append({"name": "img-arm64", "docker": {"repository": "x/y"}}),
            r"^target img baked for arm64 is named img-arm64, the name of another target",
        ),
    ],
)
def test_bad_architectures_are_refused_naming_the_problem(mutate, message):
    bake = multi_arch_bake()
    mutate(bake)
    with pytest.raises(BakeryError, match=message):
        plan(bake)
