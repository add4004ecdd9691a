"""Atomic outputs: all or nothing, and the sidecar that marks an output final goes before it is replaced."""

from __future__ import annotations

import subprocess

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


def _topdir(path) -> bool | None:
    """Whether *path* carries ext4's top directory hint; None where its file system has no inode flags."""
    import fcntl
    import os
    import sys

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(_files._LONG)
        fcntl.ioctl(fd, _files._FS_IOC_GETFLAGS, flags)
    except OSError:
        return None
    finally:
        os.close(fd)
    return bool(int.from_bytes(flags[:4], sys.byteorder) & _files._FS_TOPDIR_FL)


def test_a_tree_directory_is_placed_by_the_top_directory_hint_of_its_work_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    assert not _topdir(work)
    hinted = _files.make_tree_directory(str(work / "root"), 0o751)
    # ext2/3/4 take the hint (as this machine's and CI's /tmp); another file system refuses it or has no inode
    # flags, and gets a plain mkdir
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=True)
    assert hinted == (kind.stdout.strip() == "ext2/ext3") == bool(_topdir(work)), kind.stdout
    assert (work / "root").is_dir() and (work / "root").stat().st_mode & 0o7777 == 0o751
    # made under a name of its own, renamed: nothing else is left in the work directory
    assert sorted(p.name for p in work.iterdir()) == ["root"]
    # the hint is kept, and a second tree beside the first is placed the same way
    assert _files.make_tree_directory(str(work / "second")) == hinted
    assert sorted(p.name for p in work.iterdir()) == ["root", "second"]


def test_a_tree_directory_is_a_plain_directory_where_inode_flags_are_refused(tmp_path, monkeypatch):
    import errno

    calls = []

    def refuse(fd, request, *args):
        calls.append(request)
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    monkeypatch.setattr(_files.fcntl, "ioctl", refuse)
    assert _files.make_tree_directory(str(tmp_path / "root")) is False
    assert calls == [_files._FS_IOC_GETFLAGS]
    assert (tmp_path / "root").is_dir() and (tmp_path / "root").stat().st_mode & 0o7777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_a_tree_directory_is_never_made_over_an_existing_path(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "kept").write_text("x")
    with pytest.raises(FileExistsError):
        _files.make_tree_directory(str(tmp_path / "root"))
    assert (tmp_path / "root" / "kept").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
