"""Checks of an artifact's provenance statement (bakery.images.provenance): it parses into the official in-toto
Statement v1 and SLSA Provenance v1 protobuf messages (in-toto-attestation; unknown fields refused), it is what the
manifest says (path, sha256), and its subjects are the artifact's digests. And a throwaway GnuPG key to sign
with."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement


def check_statement(entry: dict) -> dict:
    """Assert that the manifest entry's statement validates and is what the manifest says; return it, parsed."""
    recorded = entry["provenance"]
    text = Path(recorded["path"]).read_text(encoding="utf-8")
    assert hashlib.sha256(text.encode()).hexdigest() == recorded["sha256"]
    document = json.loads(text)
    message = json_format.ParseDict(document, statement_pb2.Statement())
    Statement.copy_from_pb(message).validate()
    assert message.predicate_type == "https://slsa.dev/provenance/v1"
    predicate = json_format.ParseDict(document["predicate"], provenance_pb2.Provenance())
    assert predicate.run_details.metadata.invocation_id == entry["bake_id"]
    assert json_format.MessageToDict(predicate.build_definition.internal_parameters) == {
        "fingerprint": entry["fingerprint"]
    }
    return document


def gpg_verify(path: Path, home: str) -> str:
    """Assert that ``<path>.asc`` is a good signature of *path*; the fingerprint of the key that made it."""
    done = subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--status-fd", "1", "--verify", "%s.asc" % path, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    valid = [line.split()[2] for line in done.stdout.splitlines() if line.startswith("[GNUPG:] VALIDSIG")]
    assert done.returncode == 0 and valid, done.stdout + done.stderr
    return valid[0]


@contextmanager
def throwaway_key() -> Iterator[tuple[str, str]]:
    """A GnuPG home (short path: gpg-agent's socket) with a new ed25519 key without passphrase (batch mode,
    %no-protection): its path and the key's fingerprint. Its agent is stopped and it is removed at the end."""
    home = tempfile.mkdtemp(prefix="bk-gpg-", dir="/tmp")
    os.chmod(home, 0o700)
    batch = (
        "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: bakery test\n"
        "Name-Email: test@example.org\nExpire-Date: 0\n%no-protection\n%commit\n"
    )
    try:
        subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--gen-key"],
            input=batch,
            text=True,
            check=True,
            capture_output=True,
        )
        listed = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys"],
            capture_output=True,
            text=True,
            check=True,
        )
        fingerprints = [line.split(":")[9] for line in listed.stdout.splitlines() if line.startswith("fpr:")]
        assert fingerprints, listed.stdout + listed.stderr
        fingerprint = fingerprints[0]
        yield home, fingerprint
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
