#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sign
short_description: Sign a file with OpenPGP (a detached, armored C(<file>.asc) made by GnuPG)
version_added: 0.3.0
description:
  - Makes a detached OpenPGP signature of O(path), ASCII armored, at C(<path>.asc), with the secret key O(key)
    of the GnuPG home O(gnupg_home), using the C(gpg) program (Debian package C(gnupg)).
  - Never prompts - gpg runs in batch mode; a key with a passphrase gets O(passphrase) on a pipe (pinentry
    loopback).
  - A signature already there that verifies for the file and was made with O(key) is kept (C(changed=false)), as
    a new one would differ only in its time. The signature is written under a temporary name and renamed into
    place.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - gpg (GnuPG 2) on the host that runs the module
attributes:
  check_mode:
    support: full
    description: Reports whether the file would be signed, and signs nothing.
  diff_mode:
    support: none
    description: Signatures are binary in substance; their path and sha256 are returned instead.
  idempotent:
    support: full
    description: A good signature by the same key is not made again.
options:
  path:
    description: The file to sign.
    type: path
    required: true
  key:
    description: The secret key, by fingerprint (best), key id, user id or e-mail address; it must name one key.
    type: str
    required: true
  gnupg_home:
    description: The GnuPG home directory with the key; gpg's default (C(GNUPGHOME), C(~/.gnupg)) otherwise.
    type: path
  passphrase:
    description: The key's passphrase, for a key that has one.
    type: str
seealso:
  - module: bakery.images.provenance
  - module: bakery.images.verify_artifacts
"""

EXAMPLES = r"""
- name: Sign the checksums of a bake
  bakery.images.sign:
    path: output/SHA256SUMS
    key: 0123456789ABCDEF0123456789ABCDEF01234567
    gnupg_home: /srv/bake/gnupg
"""

RETURN = r"""
signature:
  description: The signature's C(path), C(sha256) (none in check mode when it would be made) and C(key), the fingerprint
    of the key that made it.
  returned: always
  type: dict
  sample:
    path: /srv/bake/output/SHA256SUMS.asc
    sha256: 0c5b2e...
    key: 0123456789ABCDEF0123456789ABCDEF01234567
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _signature
from ansible_collections.bakery.images.plugins.module_utils._module import run


def _sign(module: AnsibleModule) -> dict:
    params = module.params
    changed, signature = _signature.sign(
        params["path"], params["key"], params["gnupg_home"], params["passphrase"], module.check_mode
    )
    return dict(
        changed=changed,
        signature=signature,
        msg="%s %s" % ("signed" if changed else "a good signature is there:", params["path"]),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            key=dict(type="str", required=True, no_log=False),
            gnupg_home=dict(type="path"),
            passphrase=dict(type="str", no_log=True),
        ),
        supports_check_mode=True,
    )
    run(module, _sign)


if __name__ == "__main__":
    main()
