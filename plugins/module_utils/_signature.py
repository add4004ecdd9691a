# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Detached OpenPGP signatures (ASCII armored, ``<file>.asc``) made and checked with GnuPG's ``gpg``.

Nothing asks for a passphrase: gpg runs in batch mode, and a passphrase, when the key has one, goes to it on a
pipe (pinentry loopback). A signature that already verifies for the file, made with the key asked for, is kept:
signing again would give other bytes (a signature holds its time) for the same file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils._files import atomic_output
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

ENDING = ".asc"


@dataclass
class Checked:
    """What ``gpg --verify`` said of a signature: whether it is good, the fingerprints of the key that made it
    (the signing key's and its primary key's) and gpg's message when it is not."""

    good: bool
    fingerprints: tuple[str, ...] = ()
    message: str = ""


def gpg_binary() -> str:
    found = shutil.which("gpg")
    if not found:
        raise BakeryError(
            "gpg (GnuPG) is not installed: install the Debian package gnupg to sign or check signatures"
        )
    return found


def _gpg(args: list[str], gnupg_home: str | None, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = [gpg_binary(), "--batch", "--no-tty", "--status-fd", "1"]
    if gnupg_home:
        argv += ["--homedir", gnupg_home]
    return subprocess.run(
        argv + args,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        check=False,
    )


def key_fingerprint(key: str, gnupg_home: str | None) -> str:
    """The fingerprint of the one secret key *key* names (a fingerprint, key id, user id or e-mail)."""
    done = _gpg(["--with-colons", "--list-secret-keys", "--", key], gnupg_home)
    primaries = []
    previous = ""
    for line in done.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and previous == "sec":
            primaries.append(fields[9])
        previous = fields[0]
    if done.returncode != 0 or not primaries:
        raise BakeryError(
            "no secret key %r in the GnuPG home %s: %s"
            % (
                key,
                gnupg_home or "(the default, ~/.gnupg)",
                (done.stderr.strip() or "not found").splitlines()[-1],
            )
        )
    if len(primaries) > 1:
        raise BakeryError(
            "%r names %d secret keys (%s): name one by its fingerprint"
            % (key, len(primaries), ", ".join(primaries))
        )
    return primaries[0]


def verify(path: str, signature: str, gnupg_home: str | None) -> Checked:
    """Check the detached signature *signature* of the file *path* with the keys of *gnupg_home*."""
    if not os.path.isfile(signature):
        return Checked(False, message="no signature %s" % signature)
    done = _gpg(["--verify", "--", signature, path], gnupg_home)
    fingerprints: list[str] = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["[GNUPG:]", "VALIDSIG"] and len(fields) > 2:
            fingerprints.append(fields[2])
            if len(fields) > 11:
                fingerprints.append(fields[11])
    if done.returncode == 0 and fingerprints:
        return Checked(True, tuple(dict.fromkeys(fingerprints)))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return Checked(False, message=lines[-1] if lines else "gpg --verify failed (exit %d)" % done.returncode)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sign(
    path: str,
    key: str,
    gnupg_home: str | None = None,
    passphrase: str | None = None,
    check_mode: bool = False,
) -> tuple[bool, dict[str, Any]]:
    """Sign *path* with *key* into ``<path>.asc`` (armored, detached), unless a signature there verifies and was
    made with that key; whether one was (or would be) written, and the signature's ``path``, ``sha256`` and
    ``key`` (the key's fingerprint)."""
    if not os.path.isfile(path):
        raise BakeryError("%s cannot be signed: no such file" % path)
    fingerprint = key_fingerprint(key, gnupg_home)
    out = path + ENDING
    checked = verify(path, out, gnupg_home)
    if checked.good and fingerprint in checked.fingerprints:
        return False, {"path": out, "sha256": sha256_file(out), "key": fingerprint}
    if check_mode:
        return True, {"path": out, "sha256": None, "key": fingerprint}
    with atomic_output(out) as tmp:
        args = ["--yes", "--armor", "--local-user", fingerprint, "--output", tmp]
        if passphrase:
            args += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
        done = _gpg(args + ["--detach-sign", "--", path], gnupg_home, stdin=passphrase or "")
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise BakeryError(
                "gpg could not sign %s with %s: %s"
                % (path, fingerprint, lines[-1] if lines else done.returncode)
            )
    return True, {"path": out, "sha256": sha256_file(out), "key": fingerprint}


def sign_option(value: Any) -> dict[str, Any] | None:
    """The bake definition's ``sign`` setting, checked: ``key`` (required), ``gnupg_home``, ``passphrase``."""
    if value in (None, {}, ""):
        return None
    if not isinstance(value, Mapping):
        raise BakeryError("bake.sign must be a dictionary with key (and gnupg_home, passphrase)")
    unknown = sorted(set(value) - {"key", "gnupg_home", "passphrase"})
    if unknown:
        raise BakeryError(
            "bake.sign: unknown option(s) %s (known: key, gnupg_home, passphrase)" % ", ".join(unknown)
        )
    key = value.get("key")
    if not isinstance(key, str) or not key.strip() or key.startswith("-"):
        raise BakeryError(
            "bake.sign.key must name a secret key (its fingerprint or user id), not %r" % (key,)
        )
    home = value.get("gnupg_home")
    if home is not None and (not isinstance(home, str) or not home):
        raise BakeryError("bake.sign.gnupg_home must be a directory path, not %r" % (home,))
    return {"key": key.strip(), "gnupg_home": home, "passphrase": value.get("passphrase")}
