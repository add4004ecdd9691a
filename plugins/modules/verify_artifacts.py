#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: verify_artifacts
short_description: Check a bake's artifacts, SBOMs, provenance and signatures against its manifest
version_added: 0.3.0
description:
  - Reads a bake manifest (C(bake-manifest.json)) and checks that what is there is what the bake made, and
    fails listing every mismatch (RV(mismatches)).
  - For every artifact - the sha256 of each file output (disks, boxes); the sha256 of each SBOM and provenance
    statement and that it parses as what it is (SPDX 2.3 JSON, CycloneDX 1.6 JSON, an in-toto Statement v1 with
    an SLSA Provenance v1 predicate); that each SBOM is valid in full - a CycloneDX document against the official
    CycloneDX 1.6 JSON schema (cyclonedx-python-lib's strict JSON validator), an SPDX document by spdx-tools'
    parser and SPDX 2.3 validator - each violation a mismatch of its own naming where it is (at most 20 per
    document, then how many more); that the statement's subjects are the artifact's digests and its fingerprint
    the artifact's; that a signed statement's signature (C(<statement>.asc)) verifies and was made by the key the
    manifest names; for a Docker image, with an engine (O(docker)), that the engine has an image with its id and
    that its tags name that image.
  - Then C(SHA256SUMS) beside the manifest - its lines are those of the manifest's files, and each file has its
    sha256; its signature (C(SHA256SUMS.asc)) verifies when it is there, and must be there when statements are
    signed.
  - Relative paths in the manifest are relative to the manifest's directory. Signatures are checked with the
    public keys of O(gnupg_home).
  - The playbook C(bakery.images.verify_artifacts) runs it (C(-e manifest=path/to/bake-manifest.json)).
author:
  - bakery maintainers (@bakery-images)
requirements:
  - cyclonedx-python-lib[json-validation] >= 8 and spdx-tools >= 0.8 (Python), for SBOMs
  - gpg (GnuPG 2), for signatures
  - the docker Python SDK, for images
attributes:
  check_mode:
    support: full
    description: It only reads, in check mode as otherwise.
  diff_mode:
    support: none
    description: Nothing changes.
  idempotent:
    support: full
    description: Never changes anything (C(changed=false)).
options:
  manifest:
    description: The bake manifest, C(<output_dir>/bake-manifest.json).
    type: path
    required: true
  gnupg_home:
    description: The GnuPG home whose public keys check the signatures; gpg's default otherwise.
    type: path
  docker:
    description:
      - Whether Docker images are checked in the engine. V(auto) checks them when an engine answers, V(always)
        fails without one, V(never) does not check them.
    type: str
    choices: [auto, always, never]
    default: auto
  docker_host:
    description: The Docker engine (C(DOCKER_HOST) form); the local one by default.
    type: str
seealso:
  - module: bakery.images.provenance
  - module: bakery.images.sign
  - module: bakery.images.sbom
"""

EXAMPLES = r"""
- name: Check a bake's output
  bakery.images.verify_artifacts:
    manifest: output/bake-manifest.json
    gnupg_home: /srv/bake/gnupg
  register: checked
"""

RETURN = r"""
mismatches:
  description: What does not match, each with its C(target) (none for C(SHA256SUMS)), C(kind) (C(output), C(sbom),
    C(provenance), C(signature), C(image), C(sha256sums)), C(path) and C(msg); empty when everything matches.
  returned: always
  type: list
  elements: dict
  sample:
    - target: web
      kind: sbom
      path: /srv/bake/output/example-web.cdx.json
      msg: sha256 is 1d2e..., the manifest says 9b1d...
checked:
  description: How many things were checked.
  returned: always
  type: int
  sample: 9
artifacts:
  description: How many artifacts the manifest lists.
  returned: always
  type: int
  sample: 2
images_checked:
  description: Whether Docker images were checked in an engine.
  returned: always
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _verify
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", required=True),
            gnupg_home=dict(type="path"),
            docker=dict(type="str", choices=["auto", "always", "never"], default="auto"),
            docker_host=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    run(module, lambda mod: _verify.run(mod.params))


if __name__ == "__main__":
    main()
