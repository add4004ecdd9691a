"""Atomic outputs: all or nothing, and the sidecar that marks an output final goes before it is replaced."""

from __future__ import annotations

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _files


def test_outputs_are_replaced_together_and_lose_their_old_sidecars(tmp_path):
    paths = [str(tmp_path / "a.qcow2"), str(tmp_path / "a.vmdk")]
    for path in paths:
        (tmp_path / path).write_text("old")
        _files.write_sidecar(path, {"fingerprint": "old"})
    with pytest.raises(RuntimeError):
        with _files.atomic_outputs(paths) as tmps:
            open(tmps[0], "w").write("new")
            raise RuntimeError("the last output failed")
    assert [open(p).read() for p in paths] == ["old", "old"]
    assert all(_files.read_sidecar(p) == {"fingerprint": "old"} for p in paths)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["a.qcow2", "a.vmdk", "a.qcow2.bakery.json", "a.vmdk.bakery.json"]
    )

    with _files.atomic_outputs(paths) as tmps:
        for tmp in tmps:
            open(tmp, "w").write("new")
    assert [open(p).read() for p in paths] == ["new", "new"]
    # not final until the caller writes the new sidecars
    assert all(_files.read_sidecar(p) is None for p in paths)


def test_a_single_output_loses_its_old_sidecar_when_replaced(tmp_path):
    path = str(tmp_path / "box.box")
    open(path, "w").write("old")
    _files.write_sidecar(path, {"fingerprint": "old"})
    with _files.atomic_output(path) as tmp:
        open(tmp, "w").write("new")
    assert open(path).read() == "new" and _files.read_sidecar(path) is None


def test_the_openssh_public_key_of_a_pem_rsa_and_an_openssh_ed25519_private_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    def public(key) -> str:
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    # EC2's RSA key pairs: PKCS#1 PEM ("BEGIN RSA PRIVATE KEY"); its ed25519 ones: OpenSSH format
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert _files.openssh_public_key(pem) == public(rsa_key)
    assert public(rsa_key).startswith("ssh-rsa AAAA")
    ed_key = ed25519.Ed25519PrivateKey.generate()
    openssh = ed_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    assert openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert _files.openssh_public_key(openssh, "bakery-b1-ami") == public(ed_key) + " bakery-b1-ami"
    assert public(ed_key).startswith("ssh-ed25519 AAAA")
    with pytest.raises(_files.BakeryError, match="not an unencrypted PEM or OpenSSH private key"):
        _files.openssh_public_key(
            "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n"
        )
