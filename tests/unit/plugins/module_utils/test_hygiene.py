"""Image hygiene checks on temporary trees: each residue is caught by its own check and only by it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _hygiene, _standin
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

BUILDER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuilderKeyBodyOnlyForTests bakery-builder"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnotherUsersKeyBodyForTests alice@laptop"


def write(root: Path, relative: str, content: str | bytes = "", mode: int = 0o644) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(mode)
    return path


@pytest.fixture()
def clean(tmp_path: Path) -> Path:
    """A tree as a clean image has it, with the look-alikes that must not be flagged."""
    root = tmp_path / "root"
    write(root, "etc/ssh/sshd_config", "PermitRootLogin no\n")
    write(root, "etc/machine-id", "", 0o444)
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    write(root, "etc/resolv.conf", "nameserver 192.0.2.53\n")
    # a base's own policy-rc.d (Docker's) is not bakery's
    write(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    write(root, "var/lib/apt/lists/lock", "", 0o640)
    (root / "var/lib/apt/lists/partial").mkdir()
    write(root, "var/lib/apt/lists/partial/deb.debian.org_InRelease.part", "being downloaded")
    (root / "var/lib/apt/lists/auxfiles").mkdir()  # an empty directory holds no list
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    write(root, "var/cache/apt/archives/lock", "", 0o640)
    write(root, "var/log/dpkg.log", "x" * 4096)
    write(root, "tmp/scratch", "anyone may write here", 0o666)
    write(root, "var/tmp/scratch", "and here", 0o666)
    (root / "root").mkdir(mode=0o700)
    (root / "root/.bash_history").symlink_to("/dev/null")  # the usual way to keep no history
    write(root, "home/alice/.lesshst", "")  # empty: no history in it
    write(root, "home/alice/.ssh/authorized_keys", OTHER_KEY + "\n", 0o600)
    (root / "usr/local/sbin").mkdir(parents=True)
    (root / "usr/local/sbin/tool").symlink_to("/usr/bin/true")
    (root / "etc/mtab").symlink_to("/proc/self/mounts")
    write(root, "etc/everyone", "o+w but a link to it is fine", 0o644)
    (root / "etc/everyone-link").symlink_to("everyone")
    (root / "proc").mkdir()
    write(root, "proc/kcore", "the walk never enters /proc", 0o666)
    write(root, "run/lock/x", "nor /run", 0o666)
    write(root, "core-utils-notes", "not a core dump")
    (root / "var/crash").mkdir()
    return root


def failed(results: list[dict]) -> dict[str, list[str]]:
    return {r["name"]: r["findings"] for r in results if r["status"] == "failed"}


def test_a_clean_tree_passes_every_check(clean: Path):
    results = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY})
    assert [r["name"] for r in results] == list(_hygiene.CHECKS)
    assert {r["name"]: r["status"] for r in results} == {name: "passed" for name in _hygiene.CHECKS}
    assert _hygiene.passed(results)
    assert all(r["ok"] and r["count"] == 0 and r["fix"] == "" for r in results)


def ssh_host_keys(root: Path) -> list[str]:
    write(root, "etc/ssh/ssh_host_ed25519_key", "-----BEGIN OPENSSH PRIVATE KEY-----\n", 0o600)
    write(root, "etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA root@builder\n")
    return ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub"]


def machine_id(root: Path) -> list[str]:
    write(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)
    (root / "var/lib/dbus/machine-id").unlink()
    write(root, "var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
    return ["/etc/machine-id", "/var/lib/dbus/machine-id"]


def builder_key(root: Path) -> list[str]:
    write(root, "root/.ssh/authorized_keys", BUILDER_KEY + "\n", 0o600)
    write(root, "home/alice/.ssh/authorized_keys", OTHER_KEY + "\n" + BUILDER_KEY + "\n", 0o600)
    return ["/home/alice/.ssh/authorized_keys", "/root/.ssh/authorized_keys"]


def shell_history(root: Path) -> list[str]:
    (root / "root/.bash_history").unlink()
    write(root, "root/.bash_history", "curl -H 'Authorization: secret' ...\n", 0o600)
    write(root, "home/alice/.python_history", "import os\n")
    write(root, "home/alice/.local/share/fish/fish_history", "- cmd: ls\n")
    return [
        "/home/alice/.local/share/fish/fish_history",
        "/home/alice/.python_history",
        "/root/.bash_history",
    ]


def apt_lists(root: Path) -> list[str]:
    write(root, "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "Origin: Debian\n")
    write(root, "var/lib/apt/lists/auxfiles/deb.debian.org.key", "a key of a source")
    write(root, "var/cache/apt/archives/nginx_1.22_amd64.deb", b"!<arch>\n")
    write(root, "var/cache/apt/pkgcache.bin", b"\0" * 64)
    return [
        "/var/cache/apt/archives/nginx_1.22_amd64.deb",
        "/var/cache/apt/pkgcache.bin",
        "/var/lib/apt/lists/auxfiles/deb.debian.org.key",
        "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
    ]


def provisioning_leftovers(root: Path) -> list[str]:
    write(root, "usr/sbin/policy-rc.d", "#!/bin/sh\n%s\nexit 101\n" % _hygiene.POLICY_RC_MARKER, 0o755)
    write(root, "etc/resolv.conf", "%s\nnameserver 10.0.0.1\n" % _hygiene.RESOLV_CONF_MARKER)
    _standin.install_into_tree(str(root))
    installed = sorted("/usr/local/sbin/" + name for name in _standin.COMMANDS)
    return sorted(
        [
            "/etc/resolv.conf (the build host's, for the build)",
            "/usr/local/lib/bakery",
            "/usr/sbin/policy-rc.d (bakery's, for the build)",
            *installed,
        ]
    )[: _hygiene.FINDINGS_SHOWN]


def core_dumps(root: Path) -> list[str]:
    write(root, "core", b"\x7fELF core")
    write(root, "tmp/core.4242", b"\x7fELF core", 0o600)
    write(root, "var/crash/_usr_bin_python3.0.crash", "ProblemType: Crash\n")
    write(root, "var/lib/systemd/coredump/core.nginx.0.zst", b"zstd")
    return [
        "/core",
        "/tmp/core.4242",
        "/var/crash/_usr_bin_python3.0.crash",
        "/var/lib/systemd/coredump/core.nginx.0.zst",
    ]


def var_log_size(root: Path) -> list[str]:
    write(root, "var/log/nginx/access.log", os.urandom(65 * 1024 * 1024))
    return ["/var/log/nginx/access.log (65.0 MiB)", "/var/log/dpkg.log (0.0 MiB)"]


def world_writable(root: Path) -> list[str]:
    write(root, "etc/everyone", "anyone can change me", 0o666)
    write(root, "opt/app/run.sh", "#!/bin/sh\n", 0o777)
    return ["/etc/everyone", "/opt/app/run.sh"]


RESIDUES: dict[str, Callable[[Path], list[str]]] = {
    "ssh_host_keys": ssh_host_keys,
    "machine_id": machine_id,
    "builder_key": builder_key,
    "shell_history": shell_history,
    "apt_lists": apt_lists,
    "provisioning_leftovers": provisioning_leftovers,
    "core_dumps": core_dumps,
    "var_log_size": var_log_size,
    "world_writable": world_writable,
}


def test_every_check_has_a_residue_here():
    assert tuple(RESIDUES) == _hygiene.CHECKS


@pytest.mark.parametrize("name", list(RESIDUES))
def test_each_check_catches_its_own_residue_and_only_its_own(clean: Path, name: str):
    expected = RESIDUES[name](clean)
    results = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY})
    assert failed(results) == {name: expected}
    (result,) = [r for r in results if r["name"] == name]
    assert result["ok"] is False and result["fix"] == _hygiene.FIXES[name]
    assert result["count"] >= len(expected)
    message = _hygiene.failure_message(results)
    assert message.startswith("hygiene: 1 check failed for the image (%s)" % name), message
    assert all(finding in message for finding in expected)
    # skipped by name, it no longer fails
    skipped = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY, "skip": [name]})
    assert _hygiene.passed(skipped)
    (result,) = [r for r in skipped if r["name"] == name]
    assert result["status"] == "skipped" and result["findings"] == []


def test_every_residue_at_once_fails_every_check_with_every_finding(clean: Path):
    expected = {name: make(clean) for name, make in RESIDUES.items()}
    results = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY})
    assert failed(results) == expected
    message = _hygiene.failure_message(results, "target disk")
    assert message.splitlines()[0].startswith("hygiene: 9 checks failed for target disk")
    for name, findings in expected.items():
        assert "  %s: %s" % (name, ", ".join(findings)) in message
    # the stand-in links are more than the findings shown: the count says how many
    leftovers = [r for r in results if r["name"] == "provisioning_leftovers"][0]
    assert leftovers["count"] == len(_standin.COMMANDS) + 3 > _hygiene.FINDINGS_SHOWN
    assert "and %d more" % (leftovers["count"] - _hygiene.FINDINGS_SHOWN) in message
    everything = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY, "skip": list(_hygiene.CHECKS)})
    assert [r["status"] for r in everything] == ["skipped"] * len(_hygiene.CHECKS)


def test_the_builder_key_check_passes_without_a_key(clean: Path):
    builder_key(clean)
    (result,) = [r for r in _hygiene.check(str(clean)) if r["name"] == "builder_key"]
    assert result["status"] == "passed" and result["detail"] == "no builder key given"


def test_apt_lists_are_not_applicable_when_the_bake_keeps_them(clean: Path):
    apt_lists(clean)
    results = _hygiene.check(str(clean), {"package_lists": "keep"})
    (result,) = [r for r in results if r["name"] == "apt_lists"]
    assert result["status"] == "skipped" and "keeps the package lists" in result["detail"]
    assert _hygiene.passed(results)


def test_var_log_limit_is_configurable(clean: Path):
    write(clean, "var/log/syslog", os.urandom(2 * 1024 * 1024))
    assert _hygiene.passed(_hygiene.check(str(clean)))
    results = _hygiene.check(str(clean), {"var_log_max": "1M"})
    assert failed(results) == {"var_log_size": ["/var/log/syslog (2.0 MiB)", "/var/log/dpkg.log (0.0 MiB)"]}
    (result,) = [r for r in results if r["name"] == "var_log_size"]
    assert result["detail"].startswith("/var/log holds 2.0 MiB") and result["detail"].endswith(
        "(limit 1.0 MiB)"
    )
    assert _hygiene.passed(_hygiene.check(str(clean), {"var_log_max": "3MiB"}))
    # a hard link is counted once
    os.link(clean / "var/log/syslog", clean / "var/log/syslog.1")
    assert _hygiene.passed(_hygiene.check(str(clean), {"var_log_max": 3 * 1024 * 1024}))


def test_symlinks_out_of_the_tree_are_never_followed(clean: Path, tmp_path: Path):
    outside = tmp_path / "host"
    write(outside, "ssh/ssh_host_rsa_key", "host's key", 0o600)
    write(outside, "homes/bob/.bash_history", "host's history")
    write(outside, "homes/bob/.ssh/authorized_keys", BUILDER_KEY + "\n")
    write(outside, "log/huge.log", os.urandom(2 * 1024 * 1024))
    write(outside, "writable", "host's file", 0o666)
    write(outside, "machine-id", "0123456789abcdef0123456789abcdef\n")
    write(outside, "lists/InRelease", "host's list")
    # absolute links (as a tree's links are, pointing at the host when followed outside a chroot) and
    # relative ones that climb out of the tree
    for name in ("etc/ssh", "home", "var/log", "var/lib/apt/lists"):
        path = clean / name
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                child.unlink() if not child.is_dir() or child.is_symlink() else child.rmdir()
            path.rmdir()
    (clean / "etc/ssh").symlink_to(str(outside / "ssh"))
    (clean / "home").symlink_to("../../../../../../../../" + str(outside / "homes").lstrip("/"))
    (clean / "var/log").symlink_to(str(outside / "log"))
    (clean / "var/lib/apt/lists").symlink_to(str(outside / "lists"))
    (clean / "etc/machine-id").unlink()
    (clean / "etc/machine-id").symlink_to(str(outside / "machine-id"))
    (clean / "opt").symlink_to(str(outside))
    results = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY, "var_log_max": "1M"})
    # a link as /etc/machine-id is itself a finding; nothing of the host is
    assert failed(results) == {"machine_id": ["/etc/machine-id (not a regular file)"]}
    # resolved as in a chroot, the same links find the tree's own files
    write(clean, str(outside / "ssh/ssh_host_ecdsa_key").lstrip("/"), "the tree's key", 0o600)
    assert failed(_hygiene.check(str(clean)))["ssh_host_keys"] == ["/etc/ssh/ssh_host_ecdsa_key"]


def test_unknown_check_names_are_refused_with_the_known_ones():
    with pytest.raises(BakeryError) as caught:
        _hygiene.parse_options({"skip": ["ssh_host_keys", "bash_history", "tmp"]})
    assert caught.value.msg == (
        "hygiene.skip: unknown checks bash_history, tmp; the checks are " + ", ".join(_hygiene.CHECKS)
    )
    for bad in ("lots", "-1M", True, 0):
        with pytest.raises(BakeryError, match="var_log_max"):
            _hygiene.parse_options({"var_log_max": bad})
    options = _hygiene.parse_options({"skip": ["core_dumps"], "var_log_max": "1.5G"})
    assert options.describe() == {"skip": ["core_dumps"], "var_log_max": 1536 * 1024 * 1024}
    assert _hygiene.parse_options(None) == _hygiene.Options()


def test_key_body_is_what_is_looked_for():
    assert _hygiene.key_body(BUILDER_KEY) == "AAAAC3NzaC1lZDI1NTE5AAAAIBuilderKeyBodyOnlyForTests"
    assert (
        _hygiene.key_body('from="10.0.0.1" ' + OTHER_KEY)
        == "AAAAC3NzaC1lZDI1NTE5AAAAIAnotherUsersKeyBodyForTests"
    )


# ---------------------------------------------------------------- generalize


def test_generalize_removes_the_builder_key_host_keys_and_identity_and_keeps_the_rest(clean: Path):
    keys = ssh_host_keys(clean)
    identity = machine_id(clean)
    builder_key(clean)
    write(clean, "root/.ssh/authorized_keys2", "# the builder's, twice\n" + BUILDER_KEY + "\n", 0o600)
    write(clean, "etc/ssh/ssh_host_rsa_key", "-----BEGIN OPENSSH PRIVATE KEY-----\n", 0o600)
    alice = clean / "home/alice/.ssh/authorized_keys"
    os.chmod(alice, 0o640)
    inode = alice.stat().st_ino
    (clean / "home/bob").mkdir()
    write(clean, "home/bob/.ssh/authorized_keys", OTHER_KEY + "\n", 0o600)  # no builder key: untouched
    bob_before = (clean / "home/bob/.ssh/authorized_keys").stat()
    assert not _hygiene.passed(_hygiene.check(str(clean), {"builder_key": BUILDER_KEY}))

    removed = _hygiene.generalize(str(clean), BUILDER_KEY, live=False)

    assert removed == {
        "builder_key": [
            "/home/alice/.ssh/authorized_keys",
            "/root/.ssh/authorized_keys",
            "/root/.ssh/authorized_keys2",
        ],
        "ssh_host_keys": sorted([*keys, "/etc/ssh/ssh_host_rsa_key"]),
        "machine_id": identity,
        "cloud_init": False,
    }
    # alice's own key stays, in the same file (inode and mode); a file with only the builder's key goes, and
    # so does one left with a comment only
    assert alice.read_text() == OTHER_KEY + "\n"
    assert alice.stat().st_ino == inode and alice.stat().st_mode & 0o777 == 0o640
    assert not (clean / "root/.ssh/authorized_keys").exists()
    assert (clean / "root/.ssh/authorized_keys2").read_text() == "# the builder's, twice\n"
    assert (clean / "home/bob/.ssh/authorized_keys").stat().st_mtime_ns == bob_before.st_mtime_ns
    assert sorted(os.listdir(clean / "etc/ssh")) == ["sshd_config"]
    assert (clean / "etc/machine-id").read_text() == ""
    assert not os.path.lexists(clean / "var/lib/dbus/machine-id")
    # then every check passes, and a second run has nothing to remove
    assert _hygiene.passed(_hygiene.check(str(clean), {"builder_key": BUILDER_KEY}))
    again = _hygiene.generalize(str(clean), BUILDER_KEY, live=False)
    assert not any(again.values())


def test_generalize_keeps_a_dbus_link_and_an_empty_machine_id(clean: Path):
    before = sorted(str(p) for p in clean.rglob("*"))
    removed = _hygiene.generalize(str(clean), BUILDER_KEY, live=False)
    assert not any(removed.values())
    assert sorted(str(p) for p in clean.rglob("*")) == before
    assert os.readlink(clean / "var/lib/dbus/machine-id") == "/etc/machine-id"


def test_generalize_in_check_mode_changes_nothing_and_the_checks_do_not_count_what_it_would_remove(
    clean: Path,
):
    ssh_host_keys(clean)
    machine_id(clean)
    builder_key(clean)
    shell_history(clean)
    snapshot = {str(p): p.read_bytes() for p in clean.rglob("*") if p.is_file() and not p.is_symlink()}
    removed = _hygiene.generalize(str(clean), BUILDER_KEY, live=False, check_mode=True)
    assert removed["builder_key"] == ["/home/alice/.ssh/authorized_keys", "/root/.ssh/authorized_keys"]
    assert removed["ssh_host_keys"] and removed["machine_id"]
    assert {
        str(p): p.read_bytes() for p in clean.rglob("*") if p.is_file() and not p.is_symlink()
    } == snapshot
    results = _hygiene.check(str(clean), {"builder_key": BUILDER_KEY}, _hygiene.generalized_paths(removed))
    # only what generalize does not fix still fails
    assert list(failed(results)) == ["shell_history"]


def test_generalize_never_follows_links_out_of_the_tree(clean: Path, tmp_path: Path):
    outside = tmp_path / "host"
    write(outside, "authorized_keys", BUILDER_KEY + "\n", 0o600)
    write(outside, "machine-id", "0123456789abcdef0123456789abcdef\n")
    write(outside, "ssh/ssh_host_ed25519_key", "host's key", 0o600)
    (clean / "root/.ssh").mkdir()
    (clean / "root/.ssh/authorized_keys").symlink_to(str(outside / "authorized_keys"))
    (clean / "etc/machine-id").unlink()
    (clean / "etc/machine-id").symlink_to(str(outside / "machine-id"))
    for child in (clean / "etc/ssh").iterdir():
        child.unlink()
    (clean / "etc/ssh").rmdir()
    (clean / "etc/ssh").symlink_to(str(outside / "ssh"))
    removed = _hygiene.generalize(str(clean), BUILDER_KEY, live=False)
    # the link in /etc/machine-id's place became an empty file of the tree; nothing outside changed
    assert removed["machine_id"] == ["/etc/machine-id (not a regular file)"]
    assert (clean / "etc/machine-id").is_file() and not (clean / "etc/machine-id").is_symlink()
    assert (clean / "etc/machine-id").read_text() == ""
    assert (outside / "authorized_keys").read_text() == BUILDER_KEY + "\n"
    assert (outside / "machine-id").read_text().strip() == "0123456789abcdef0123456789abcdef"
    assert (outside / "ssh/ssh_host_ed25519_key").exists()


def fake_cloud_init(root: Path) -> Path:
    """A cloud-init command in the tree that records how it was called (beside the tree, never the host's)."""
    record = root.parent / "cloud-init-calls"
    write(root, "usr/bin/cloud-init", '#!/bin/sh\necho "$@" >> %s\n' % record, 0o755)
    return record


def test_cloud_init_is_cleaned_only_on_the_live_system(clean: Path):
    record = fake_cloud_init(clean)
    removed = _hygiene.generalize(str(clean), BUILDER_KEY, live=False)
    assert removed["cloud_init"] is False and not record.exists()
    assert _hygiene.generalize(str(clean), BUILDER_KEY, live=True, check_mode=True)["cloud_init"] is True
    assert not record.exists()
    # live: the tree is the running system (the module passes live only for root /); here the tree's own
    # command stands in for it
    assert _hygiene.generalize(str(clean), BUILDER_KEY, live=True)["cloud_init"] is True
    assert record.read_text() == "clean --logs\n"
    # a system without cloud-init: nothing to clean
    (clean / "usr/bin/cloud-init").unlink()
    assert _hygiene.generalize(str(clean), BUILDER_KEY, live=True)["cloud_init"] is False


def test_a_failing_cloud_init_clean_fails_with_its_message(clean: Path):
    write(clean, "usr/bin/cloud-init", "#!/bin/sh\necho 'cannot remove /var/lib/cloud' >&2\nexit 3\n", 0o755)
    with pytest.raises(
        BakeryError, match=r"cloud-init clean --logs failed \(exit 3\): cannot remove /var/lib/cloud"
    ):
        _hygiene.generalize(str(clean), BUILDER_KEY, live=True)
