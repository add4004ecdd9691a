"""Provenance statements (in-toto Statement v1, SLSA Provenance v1), detached OpenPGP signatures, and the check of
a bake's output against its manifest (verify_artifacts)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement

from ansible_collections.bakery.images.plugins.module_utils import (
    _manifest,
    _plan,
    _provenance,
    _sbom,
    _signature,
    _verify,
)
from ansible_collections.bakery.images.plugins.module_utils._steps import NO_LOG_MASK, BakeryError

ROLES = {"bakery.images.example_web": "a" * 64}
IMAGE_ID = "sha256:" + "1" * 64
PUSHED = "localhost:5000/bakery/web@sha256:" + "2" * 64
VERSIONS = {"bakery": "0.3.0", "ansible-core": "2.19.0"}


def planned(kind: str = "docker", secret: str = "s3cret") -> dict:
    """A target of a real plan: a docker target with a registry password (a secret option), or a qemu target."""
    options = (
        {
            "repository": "bakery/web",
            "registry": {"url": "localhost:5000", "username": "u", "password": secret},
        }
        if kind == "docker"
        else {"formats": ["qcow2"], "disk_size": 4}
    )
    bake = {
        "name": "example",
        "output_dir": "out",
        "base": {"suite": "bookworm", "packages": ["python3"]},
        "provisioners": [{"role": "bakery.images.example_web", "vars": {"page": "hi"}}],
        "targets": [{"name": "web", kind: options}],
    }
    plan = _plan.make_plan(
        bake,
        validate_target=lambda k, opts, where: dict(opts),
        role_digest=lambda name: ROLES[name],
        cwd="/work",
        bake_id="20261204t101500-abcdef",
        secrets_of=lambda k: [["registry", "password"]] if k == "docker" else [],
    )
    (target,) = plan["targets"]
    return target


def docker_artifact(**changes) -> dict:
    artifact = {
        "target": "web",
        "type": "docker",
        "status": "built",
        "id": IMAGE_ID,
        "name": "bakery/web",
        "tags": ["latest"],
        "repo_digests": [PUSHED],
        "fingerprint": "f" * 64,
        "bake_id": "20261204t101500-abcdef",
    }
    artifact.update(changes)
    return artifact


def parse(document: dict) -> tuple:
    """The statement and its predicate parsed into the official protobuf messages (in-toto-attestation):
    ParseDict refuses unknown fields and wrong types."""
    message = json_format.ParseDict(document, statement_pb2.Statement())
    Statement.copy_from_pb(message).validate()
    predicate = json_format.ParseDict(document["predicate"], provenance_pb2.Provenance())
    return message, predicate


def test_statement_of_an_image_names_its_digests_its_definition_and_its_builder():
    target = planned()
    document = _provenance.statement(target, docker_artifact(), VERSIONS, finished=1796386000)
    message, predicate = parse(document)
    assert message.type == "https://in-toto.io/Statement/v1"
    assert message.predicate_type == "https://slsa.dev/provenance/v1"
    assert [(s.name, dict(s.digest)) for s in message.subject] == [
        ("bakery/web", {"sha256": "1" * 64}),
        ("localhost:5000/bakery/web", {"sha256": "2" * 64}),
    ]
    definition = predicate.build_definition
    assert definition.build_type == _provenance.BUILD_TYPE
    params = json_format.MessageToDict(definition.external_parameters)
    assert params["bake"] == "example" and params["target"]["name"] == "web"
    # the secret option is masked, as the plan holds it; its value is nowhere in the statement
    assert params["target"]["options"]["registry"]["password"] == NO_LOG_MASK
    assert "s3cret" not in json.dumps(document)
    assert params["target"]["provisioners"][0]["role"] == "bakery.images.example_web"
    dependencies = {d.name: d for d in definition.resolved_dependencies}
    assert set(dependencies) == {"rootfs", "role:bakery.images.example_web", "vars"}
    rootfs = dependencies["rootfs"]
    assert dict(rootfs.digest) == {"sha256": target["rootfs"]["identity"]}
    assert rootfs.uri == "http://deb.debian.org/debian"
    assert json_format.MessageToDict(rootfs.annotations)["suite"] == "bookworm"
    assert dict(dependencies["role:bakery.images.example_web"].digest) == {"sha256": "a" * 64}
    assert dict(dependencies["vars"].digest) == {"sha256": target["inputs"]["vars"]}
    run = predicate.run_details
    assert run.builder.id == _provenance.BUILDER_ID
    assert run.builder.version["bakery"] == "0.3.0" and run.builder.version["ansible-core"] == "2.19.0"
    assert run.metadata.invocation_id == "20261204t101500-abcdef"
    assert run.metadata.started_on.ToJsonString() == "2026-12-04T10:15:00Z"
    assert run.metadata.finished_on.seconds == 1796386000
    assert json_format.MessageToDict(definition.internal_parameters) == {"fingerprint": "f" * 64}


def test_statement_of_a_disk_has_one_subject_per_output_and_is_deterministic():
    target = planned("qemu")
    artifact = {
        "target": "web",
        "type": "qemu",
        "status": "unchanged",
        "id": "3" * 64,
        "fingerprint": "e" * 64,
        "bake_id": "20261204t101500-abcdef",
        "outputs": [
            {"format": "raw", "path": "/work/out/web.raw", "sha256": "4" * 64},
            {"format": "qcow2", "path": "/work/out/web.qcow2", "sha256": "3" * 64},
        ],
    }
    first = _provenance.statement(target, artifact, VERSIONS)
    parse(first)
    assert [(s["name"], s["digest"]["sha256"]) for s in first["subject"]] == [
        ("web.qcow2", "3" * 64),
        ("web.raw", "4" * 64),
    ]
    assert "finishedOn" not in first["predicate"]["runDetails"]["metadata"]
    again = _provenance.statement(copy.deepcopy(target), copy.deepcopy(artifact), dict(VERSIONS))
    assert _provenance.dumps(again) == _provenance.dumps(first)
    with pytest.raises(_provenance.ProvenanceError):
        _provenance.statement(target, dict(artifact, outputs=[]), VERSIONS)


def test_problems_refuse_what_is_not_our_statement():
    good = _provenance.statement(planned(), docker_artifact(), VERSIONS)
    assert _provenance.problems(good) == []
    wrong = copy.deepcopy(good)
    wrong["predicateType"] = "https://slsa.dev/provenance/v0.2"
    wrong["subject"][0]["digest"] = {}
    wrong["extra"] = 1
    found = _provenance.problems(wrong)
    assert any("predicateType" in p for p in found)
    assert any("subject[0] has no digest" in p for p in found)
    assert "unknown field extra" in found
    # the official bindings refuse the unknown field too
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(wrong, statement_pb2.Statement())


def params(tmp_path: Path, artifact: dict, target: dict | None = None) -> dict:
    return {
        "path": str(tmp_path / "example-web.intoto.json"),
        "target": target or planned(),
        "artifact": artifact,
        "versions": VERSIONS,
    }


def test_an_unchanged_artifact_keeps_its_statement_and_a_new_one_gets_another(tmp_path):
    built = _provenance.run(params(tmp_path, docker_artifact()), False, now=1796386000.0)
    path = Path(built["statement"]["path"])
    assert built["changed"] and built["statement"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    written = path.read_bytes()
    # found unchanged by a later bake (other host versions, later time): the statement of the bake that made it
    later = dict(VERSIONS, **{"ansible-core": "2.20.0"})
    again = _provenance.run(
        dict(params(tmp_path, docker_artifact(status="unchanged")), versions=later), False, now=1796390000.0
    )
    assert not again["changed"] and path.read_bytes() == written
    assert again["statement"] == built["statement"]
    # check mode writes nothing
    other = docker_artifact(id="sha256:" + "9" * 64, bake_id="20261205t080000-fedcba")
    would = _provenance.run(params(tmp_path, other), True, now=1796400000.0)
    assert would["changed"] and path.read_bytes() == written
    # a new image: a new statement, of its bake
    rebuilt = _provenance.run(params(tmp_path, other), False, now=1796400000.0)
    assert rebuilt["changed"]
    document = json.loads(path.read_text())
    assert document["subject"][0]["digest"]["sha256"] == "9" * 64
    assert document["predicate"]["runDetails"]["metadata"]["invocationId"] == "20261205t080000-fedcba"


def test_an_unchanged_image_pushed_again_gets_its_new_digests_and_keeps_its_times(tmp_path):
    _provenance.run(params(tmp_path, docker_artifact(repo_digests=[])), False, now=1796386000.0)
    pushed = _provenance.run(params(tmp_path, docker_artifact(status="unchanged")), False, now=1796390000.0)
    assert pushed["changed"]
    document = json.loads(Path(pushed["statement"]["path"]).read_text())
    assert len(document["subject"]) == 2
    # when the bake that made it finished it, not now
    assert document["predicate"]["runDetails"]["metadata"]["finishedOn"] == _provenance.timestamp(
        1796386000.0
    )


def test_collection_version_from_a_checkout_and_an_installed_collection(tmp_path):
    (tmp_path / "galaxy.yml").write_text("namespace: bakery\nversion: 1.2.3\n")
    assert _provenance.collection_version(str(tmp_path)) == "1.2.3"
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"collection_info": {"version": "1.2.4"}}))
    assert _provenance.collection_version(str(tmp_path)) == "1.2.4"
    assert _provenance.collection_version(str(tmp_path / "none")) == "unknown"


# ---------------------------------------------------------------- signatures


def make_key(home: str, name: str, passphrase: str | None = None) -> str:
    """A throwaway ed25519 signing key in *home* (batch mode; %no-protection without a passphrase); its
    fingerprint."""
    protection = "Passphrase: %s\n" % passphrase if passphrase else "%no-protection\n"
    batch = (
        "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: %s\nName-Email: %s@example.org\n"
        "Expire-Date: 0\n%s%%commit\n" % (name, name, protection)
    )
    subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--gen-key"],
        input=batch,
        text=True,
        capture_output=True,
        check=True,
    )
    return _signature.key_fingerprint("%s@example.org" % name, home)


@pytest.fixture(scope="module")
def gnupg():
    """A GnuPG home with two keys (one with a passphrase), short enough for gpg-agent's socket path; its agent is
    stopped and the home removed at the end."""
    if not shutil.which("gpg"):
        pytest.skip("gpg (gnupg) is not installed")
    home = tempfile.mkdtemp(prefix="bk-gpg-", dir="/tmp")
    os.chmod(home, 0o700)
    try:
        keys = {
            "plain": make_key(home, "plain"),
            "locked": make_key(home, "locked", passphrase="open sesame"),
        }
        yield home, keys
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_sign_round_trip_kept_when_good_and_redone_when_the_file_changed(gnupg, tmp_path):
    home, keys = gnupg
    path = tmp_path / "SHA256SUMS"
    path.write_text("%s  a.qcow2\n" % ("1" * 64))
    changed, made = _signature.sign(str(path), "plain@example.org", home)
    assert changed and made["key"] == keys["plain"] and made["path"] == str(path) + ".asc"
    assert Path(made["path"]).read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    checked = _signature.verify(str(path), made["path"], home)
    assert checked.good and keys["plain"] in checked.fingerprints
    signed = Path(made["path"]).read_bytes()
    # a good signature by the same key stays
    assert _signature.sign(str(path), keys["plain"], home) == (False, made)
    assert Path(made["path"]).read_bytes() == signed
    # another key: signed again
    changed, other = _signature.sign(str(path), keys["locked"], home, passphrase="open sesame")
    assert changed and other["key"] == keys["locked"]
    # a changed file no longer verifies, and is signed again
    path.write_text("%s  a.qcow2\n" % ("2" * 64))
    bad = _signature.verify(str(path), made["path"], home)
    assert not bad.good and "BAD signature" in bad.message
    assert _signature.sign(str(path), keys["locked"], home, passphrase="open sesame", check_mode=True)[0]
    assert not _signature.verify(str(path), made["path"], home).good


def test_sign_refuses_a_missing_key_a_wrong_passphrase_and_an_ambiguous_name(gnupg, tmp_path):
    home, _keys = gnupg
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(BakeryError, match="no secret key"):
        _signature.sign(str(path), "nobody@example.org", home)
    # the agent forgets the passphrase an earlier test gave it
    subprocess.run(["gpgconf", "--homedir", home, "--reload", "gpg-agent"], check=True, capture_output=True)
    with pytest.raises(BakeryError, match="could not sign"):
        _signature.sign(str(path), "locked@example.org", home, passphrase="wrong")
    with pytest.raises(BakeryError, match="names 2 secret keys"):
        _signature.sign(str(path), "example.org", home)
    assert not (tmp_path / "f.asc").exists()


def test_sign_option_is_checked_in_the_plan():
    bake = {
        "name": "example",
        "targets": [{"name": "web", "docker": {"repository": "bakery/web", "base_image": "debian:bookworm"}}],
    }

    def plan_with(sign):
        return _plan.make_plan(
            dict(bake, sign=sign),
            validate_target=lambda k, opts, where: dict(opts),
            role_digest=lambda name: ROLES[name],
            cwd="/work",
        )

    assert plan_with(None)["sign"] is None
    signed = plan_with({"key": "ABCD", "gnupg_home": "keys", "passphrase": "pw"})["sign"]
    assert signed == {"key": "ABCD", "gnupg_home": "/work/keys", "passphrase": NO_LOG_MASK}
    with pytest.raises(BakeryError, match="bake.sign.key"):
        plan_with({"key": "--homedir"})
    with pytest.raises(BakeryError, match="unknown option"):
        plan_with({"key": "ABCD", "keyring": "x"})


# ---------------------------------------------------------------- verify_artifacts


def write(path: Path, text: str) -> dict:
    path.write_text(text)
    return {"path": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest()}


# the package the SBOMs of bake_output list
BASH = _sbom.DebPackage(
    name="bash",
    version="5.2.15-2+b7",
    architecture="amd64",
    source="bash",
    source_version="5.2.15-2",
    maintainer="Matthias Klose <doko@debian.org>",
    licenses=["GPL-3+"],
    md5sums_sha256="a" * 64,
)


def bake_output(tmp_path: Path, home: str | None = None) -> Path:
    """A bake's output as a bake writes it: a disk and an image, their SBOMs and statements, SHA256SUMS and the
    manifest; signed with the "plain" key when *home* is given."""
    out = tmp_path / "out"
    out.mkdir()
    disk = write(out / "example-disk.qcow2", "disk bytes")
    disk_entry = {
        "target": "disk",
        "type": "qemu",
        "id": disk["sha256"],
        "fingerprint": "d" * 64,
        "bake_id": "20261204t101500-abcdef",
        "outputs": [dict(disk, format="qcow2")],
    }
    image_entry = docker_artifact(target="img")
    entries = []
    for entry, kind in ((disk_entry, "qemu"), (image_entry, "docker")):
        stem = "example-%s" % entry["target"]
        subject = _sbom.Subject(
            name=stem,
            kind=kind,
            fingerprint=entry["fingerprint"],
            bake_id=entry["bake_id"],
            digest=entry["id"],
        )
        documents = _sbom.documents(subject, [BASH], {"role:web": "e" * 64})
        entry["sbom"] = {
            "spdx": write(out / (stem + ".spdx.json"), documents["spdx"]),
            "cyclonedx": write(out / (stem + ".cdx.json"), documents["cyclonedx"]),
        }
        statement = _provenance.statement(planned(kind), dict(entry, status="built"), VERSIONS, 1796386000)
        entry["provenance"] = write(out / (stem + ".intoto.json"), _provenance.dumps(statement))
        if home:
            entry["provenance"]["signature"] = _signature.sign(
                entry["provenance"]["path"], "plain@example.org", home
            )[1]
        entries.append(entry)
    manifest = {"version": 1, "bake": "example", "artifacts": entries}
    (out / "bake-manifest.json").write_text(json.dumps(manifest))
    (out / "SHA256SUMS").write_text(_manifest.sha256sums(manifest, str(out)))
    if home:
        _signature.sign(str(out / "SHA256SUMS"), "plain@example.org", home)
    return out / "bake-manifest.json"


def engine(*known: str):
    """An engine's image lookup that knows the image IMAGE_ID as bakery/web:latest (and by id)."""
    images = {IMAGE_ID: IMAGE_ID, "bakery/web:latest": IMAGE_ID}
    images.update({ref: "sha256:" + "8" * 64 for ref in known})
    return images.get


def by_target(mismatch: tuple) -> tuple:
    return (mismatch[0] or "", mismatch[1], mismatch[2])


def kinds(found: dict) -> list[tuple]:
    return sorted(
        ((m["target"], m["kind"], os.path.basename(m["path"])) for m in found["mismatches"]), key=by_target
    )


def test_verify_finds_nothing_wrong_with_an_untouched_output(gnupg, tmp_path):
    home, _keys = gnupg
    manifest = bake_output(tmp_path, home)
    found = _verify.check(str(manifest), home, engine())
    assert found["mismatches"] == []
    # outputs, SBOMs, statements, their signatures, the image, SHA256SUMS and its signature
    assert found["checked"] == 1 + 4 + 2 + 2 + 1 + 1 + 1


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("output", [("disk", "output", "example-disk.qcow2"), (None, "sha256sums", "example-disk.qcow2")]),
        ("sbom", [("img", "sbom", "example-img.cdx.json"), (None, "sha256sums", "example-img.cdx.json")]),
        (
            "statement",
            [
                ("disk", "provenance", "example-disk.intoto.json"),
                ("disk", "signature", "example-disk.intoto.json.asc"),
                (None, "sha256sums", "example-disk.intoto.json"),
            ],
        ),
        ("signature", [("img", "signature", "example-img.intoto.json.asc")]),
        ("sums", [(None, "sha256sums", "SHA256SUMS"), (None, "signature", "SHA256SUMS.asc")]),
        ("image", [("img", "image", IMAGE_ID)]),
        ("tag", [("img", "image", "web:latest")]),
    ],
)
def test_verify_reports_each_kind_of_tampering(gnupg, tmp_path, tamper, expected):
    home, _keys = gnupg
    manifest = bake_output(tmp_path, home)
    out = manifest.parent
    images = engine()
    if tamper == "output":
        (out / "example-disk.qcow2").write_text("other bytes")
    elif tamper == "sbom":
        (out / "example-img.cdx.json").write_text("{}")
    elif tamper == "statement":
        document = json.loads((out / "example-disk.intoto.json").read_text())
        document["subject"][0]["digest"]["sha256"] = "0" * 64
        (out / "example-disk.intoto.json").write_text(_provenance.dumps(document))
    elif tamper == "signature":
        shutil.copy(out / "example-disk.intoto.json.asc", out / "example-img.intoto.json.asc")
    elif tamper == "sums":
        with open(out / "SHA256SUMS", "a", encoding="utf-8") as handle:
            handle.write("%s  extra.bin\n" % ("0" * 64))
    elif tamper == "image":
        images = {}.get
    elif tamper == "tag":
        images = engine("bakery/web:latest")
    found = _verify.check(str(manifest), home, images)
    assert kinds(found) == sorted(expected, key=by_target), found["mismatches"]


def test_verify_reports_a_statement_that_names_another_artifact_and_unsigned_sums(gnupg, tmp_path):
    home, _keys = gnupg
    manifest = bake_output(tmp_path, home)
    out = manifest.parent
    # a valid statement of another image, recorded with its own sha256: its subjects are not the artifact's
    data = json.loads(manifest.read_text())
    other = _provenance.statement(
        planned(), docker_artifact(id="sha256:" + "7" * 64, repo_digests=[]), VERSIONS
    )
    data["artifacts"][1]["provenance"] = write(out / "example-img.intoto.json", _provenance.dumps(other))
    manifest.write_text(json.dumps(data))
    (out / "SHA256SUMS").write_text(_manifest.sha256sums(data, str(out)))
    os.remove(out / "SHA256SUMS.asc")
    found = _verify.check(str(manifest), home, None)
    messages = {(m["target"], m["kind"]): m["msg"] for m in found["mismatches"]}
    assert "not the artifact's digests" in messages[("img", "provenance")]
    assert "no signature" in messages[(None, "signature")]


def test_verify_run_fails_and_never_changes_anything(tmp_path):
    manifest = bake_output(tmp_path)
    ok = _verify.run({"manifest": str(manifest), "docker": "never"})
    assert ok["changed"] is False and not ok.get("failed") and ok["images_checked"] is False
    (manifest.parent / "example-disk.spdx.json").write_text("not json")
    bad = _verify.run({"manifest": str(manifest), "docker": "never"})
    assert bad["failed"] and bad["changed"] is False
    assert "disk sbom" in bad["msg"] and "1 mismatch" not in bad["msg"]
    with pytest.raises(BakeryError, match="not a bake manifest"):
        (tmp_path / "x.json").write_text("[]")
        _verify.run({"manifest": str(tmp_path / "x.json"), "docker": "never"})


def rerecord(manifest: Path, target: str, form: str, document: dict) -> str:
    """Write *document* as the target's SBOM of *form* and record its sha256 in the manifest and SHA256SUMS (an
    SBOM that is what the manifest says, whatever it holds); its path."""
    data = json.loads(manifest.read_text())
    entry = next(e for e in data["artifacts"] if e["target"] == target)
    path = Path(entry["sbom"][form]["path"])
    entry["sbom"][form] = write(path, json.dumps(document, indent=2))
    manifest.write_text(json.dumps(data))
    (manifest.parent / "SHA256SUMS").write_text(_manifest.sha256sums(data, str(manifest.parent)))
    return str(path)


def test_verify_validates_each_sbom_in_full_and_names_each_violation(tmp_path):
    """An SBOM whose header is right (format, version) but whose body violates its schema is a mismatch, one per
    violation, each saying where: the CycloneDX document against the official 1.6 JSON schema, the SPDX document
    by spdx-tools' SPDX 2.3 validator. The untouched SBOMs of bake_output are valid in full."""
    manifest = bake_output(tmp_path)
    assert _verify.check(str(manifest), None, None)["mismatches"] == []
    out = manifest.parent
    bom = json.loads((out / "example-img.cdx.json").read_text())
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    package = next(c for c in bom["components"] if c["name"] == "bash")
    package["type"] = "deb-package"  # not one of the schema's component types
    del next(c for c in bom["components"] if c["name"] == "role:web")["hashes"][0]["content"]
    cdx = rerecord(manifest, "img", "cyclonedx", bom)
    spdx = json.loads((out / "example-disk.spdx.json").read_text())
    assert spdx["spdxVersion"] == "SPDX-2.3"
    bash = next(p for p in spdx["packages"] if p["name"] == "bash")
    bash["checksums"] = [{"algorithm": "SHA256", "checksumValue": "not-hex"}]
    spdx["relationships"].append(
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-gone",
        }
    )
    spdx_path = rerecord(manifest, "disk", "spdx", spdx)
    found = _verify.check(str(manifest), None, None)["mismatches"]
    assert {(m["target"], m["kind"], m["path"]) for m in found} == {
        ("img", "sbom", cdx),
        ("disk", "sbom", spdx_path),
    }
    messages = sorted(m["msg"] for m in found)
    cyclonedx = [m for m in messages if "CycloneDX" in m]
    assert len(cyclonedx) == 2, messages
    index = next(i for i, c in enumerate(bom["components"]) if c["name"] == "bash")
    assert any(
        m.startswith("violates the CycloneDX 1.6 JSON schema at $.components[%d].type: " % index)
        for m in cyclonedx
    )
    assert any("'content' is a required property" in m for m in cyclonedx), cyclonedx
    spdx_messages = [m for m in messages if "SPDX" in m]
    assert len(spdx_messages) == 2, messages
    assert any(
        m.startswith("violates SPDX 2.3 in CHECKSUM of SPDXRef-deb-bash") and "not-hex" in m
        for m in spdx_messages
    ), spdx_messages
    assert any("SPDXRef-gone" in m for m in spdx_messages), spdx_messages
    # the module's message lists each of them
    run = _verify.run({"manifest": str(manifest), "docker": "never"})
    assert run["failed"] and run["msg"].startswith("4 mismatches: ")
    # many violations: the first 20, then how many more
    bom["components"] = [dict(c, type="deb-package") for c in bom["components"]] * 30
    rerecord(manifest, "img", "cyclonedx", bom)
    many = [m["msg"] for m in _verify.check(str(manifest), None, None)["mismatches"] if m["target"] == "img"]
    assert (
        len(many) == _verify.MAX_VIOLATIONS + 1
        and many[-1].startswith("and ")
        and many[-1].endswith(" more violations")
    )


def test_preflight_names_a_signing_key_that_is_not_there(gnupg):
    from ansible_collections.bakery.images.plugins.module_utils import _preflight

    home, keys = gnupg
    assert _preflight.sign_problem(None) is None
    assert _preflight.sign_problem({"key": keys["plain"], "gnupg_home": home}) is None
    problem = _preflight.sign_problem({"key": "nobody@example.org", "gnupg_home": home})
    assert problem.startswith("bake.sign: no secret key 'nobody@example.org'")


# ---------------------------------------------------------------- cloud images (ami, gce)


def cloud(kind: str) -> dict:
    """A planned target of a cloud image (the plan's qemu target, of that type)."""
    return dict(planned("qemu"), type=kind)


def ami_entry(**changes) -> dict:
    entry = {
        "target": "ami",
        "type": "ami",
        "status": "built",
        "id": "ami-0aaa",
        "name": "web",
        "region": "eu-west-1",
        "images": {"eu-west-1": "ami-0aaa", "us-east-1": "ami-0bbb"},
        "fingerprint": "c" * 64,
        "bake_id": "20261204t101500-abcdef",
        "disk_sha256": "5" * 64,
    }
    entry.update(changes)
    return entry


def gce_entry(**changes) -> dict:
    entry = {
        "target": "gce",
        "type": "gce",
        "status": "built",
        "id": "4711",
        "name": "web-20261204t101500-abcdef",
        "project": "bakery-test",
        "fingerprint": "c" * 64,
        "bake_id": "20261204t101500-abcdef",
    }
    entry.update(changes)
    return entry


def test_an_uploaded_ami_names_each_regions_image_with_the_disk_digest():
    document = _provenance.statement(cloud("ami"), ami_entry(), VERSIONS, finished=1796386000)
    message, _predicate = parse(document)
    assert [(s.name, dict(s.digest)) for s in message.subject] == [
        ("eu-west-1/ami-0aaa", {"sha256": "5" * 64}),
        ("us-east-1/ami-0bbb", {"sha256": "5" * 64}),
    ]
    assert document["subject"][1]["annotations"] == {
        "bakery.image-id": "ami-0bbb",
        "bakery.region": "us-east-1",
    }
    # not yet copied (an image with checks): the home region's image
    alone = _provenance.subjects("ami", ami_entry(images={}))
    assert [s["name"] for s in alone] == ["eu-west-1/ami-0aaa"]


def test_an_image_of_an_instance_has_its_fingerprint_as_digest_and_no_id_is_an_error():
    document = _provenance.statement(cloud("gce"), gce_entry(), VERSIONS)
    message, _predicate = parse(document)
    assert [(s.name, dict(s.digest)) for s in message.subject] == [
        ("projects/bakery-test/global/images/web-20261204t101500-abcdef", {"bakery.fingerprint": "c" * 64})
    ]
    assert document["subject"][0]["annotations"]["bakery.image-id"] == "4711"
    uploaded = _provenance.subjects("gce", gce_entry(disk_sha256="sha256:" + "6" * 64))
    assert uploaded[0]["digest"] == {"sha256": "6" * 64}
    with pytest.raises(_provenance.ProvenanceError):
        _provenance.statement(cloud("ami"), ami_entry(images={}, id=None), VERSIONS)
    with pytest.raises(_provenance.ProvenanceError):
        _provenance.statement(cloud("gce"), gce_entry(fingerprint=None), VERSIONS)


def test_verify_checks_a_cloud_images_statement_offline(tmp_path):
    """An AMI entry: its documents' digests, and that the statement names its image ids and disk digest."""
    out = tmp_path / "out"
    out.mkdir()
    entry = ami_entry()
    subject = _sbom.Subject(name="example-ami", kind="ami", fingerprint=entry["fingerprint"], bake_id=None)
    documents = _sbom.documents(subject, [BASH], {})
    entry["sbom"] = {
        "spdx": write(out / "example-ami.spdx.json", documents["spdx"]),
        "cyclonedx": write(out / "example-ami.cdx.json", documents["cyclonedx"]),
    }
    statement = _provenance.statement(cloud("ami"), entry, VERSIONS, 1796386000)
    entry["provenance"] = write(out / "example-ami.intoto.json", _provenance.dumps(statement))
    manifest = {"version": 1, "bake": "example", "artifacts": [entry]}
    (out / "bake-manifest.json").write_text(json.dumps(manifest))
    (out / "SHA256SUMS").write_text(_manifest.sha256sums(manifest, str(out)))
    assert sorted((out / "SHA256SUMS").read_text().split()[1::2]) == [
        "example-ami.cdx.json",
        "example-ami.intoto.json",
        "example-ami.spdx.json",
    ]
    found = _verify.check(str(out / "bake-manifest.json"), None, None)
    assert found["mismatches"] == [] and found["checked"] == 2 + 1 + 1
    # the manifest names another disk, or one image less: the statement is not the artifact's
    for changed in ({"disk_sha256": "7" * 64}, {"images": {"eu-west-1": "ami-0aaa"}}):
        (out / "bake-manifest.json").write_text(
            json.dumps(dict(manifest, artifacts=[dict(entry, **changed)]))
        )
        found = _verify.check(str(out / "bake-manifest.json"), None, None)
        assert [(m["kind"], m["msg"].split(":")[0]) for m in found["mismatches"]] == [
            ("provenance", "its subjects are not the artifact's digests")
        ], changed
