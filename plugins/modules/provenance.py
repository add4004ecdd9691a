#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: provenance
short_description: Write an artifact's provenance (an in-toto Statement v1 with an SLSA Provenance v1 predicate)
version_added: 0.3.0
description:
  - Writes the provenance of an artifact that a bake made or found, as JSON at O(path) - an in-toto Statement v1
    (C(_type) C(https://in-toto.io/Statement/v1)) whose predicate is SLSA Provenance v1
    (C(predicateType) C(https://slsa.dev/provenance/v1)).
  - C(subject) holds the artifact's digests - a Docker image's id (its configuration digest) and the repository
    digest of each push, the sha256 of each file output of a disk, of a box.
  - C(predicate.buildDefinition) holds the build type C(https://github.com/bakery-images/bakery/buildtypes/bake/v1),
    the target as the bake plan shows it as C(externalParameters) (bake name, base root filesystem options, the
    target's options, provisioners and checks; secret options and provisioner secrets masked, never their
    values), the artifact's fingerprint as C(internalParameters), and as C(resolvedDependencies) the base root
    filesystem (its fingerprint, mirror and suite) and every provisioning input of the fingerprint with its digest.
  - C(predicate.runDetails) names the builder (C(https://github.com/bakery-images/bakery)) with the versions of
    bakery, ansible-core, the build host's operating system, kernel and Python (C(builder.version)), the bake id
    (C(metadata.invocationId)), when that bake started and when the artifact was finished.
  - The statement is deterministic but for C(finishedOn). An artifact found unchanged keeps the statement of the
    bake that made it (same subjects and fingerprint; C(changed=false)); an artifact built now gets a new one.
    The file is written under a temporary name and renamed into place.
author:
  - bakery maintainers (@bakery-images)
attributes:
  check_mode:
    support: full
    description: Reports whether the statement would be written, and writes nothing.
  diff_mode:
    support: none
    description: The statement's path and sha256 are returned instead.
  idempotent:
    support: full
    description: A statement that stands for the artifact already is not written again.
options:
  path:
    description: Where the statement goes (role C(bakery.images.bake) uses C(<output_dir>/<bake>-<target>.intoto.json)).
    type: path
    required: true
  target:
    description: The target's entry of the bake plan (M(bakery.images.bake_plan)), secrets masked.
    type: dict
    required: true
  artifact:
    description: The artifact's manifest entry as the target's role records it (C(id), C(repo_digests),
      C(outputs), C(path), C(sha256), C(fingerprint), C(bake_id), C(status)).
    type: dict
    required: true
  versions:
    description: Versions of the builder to name besides the build host's (C(bakery), C(ansible-core)).
    type: dict
    default: {}
seealso:
  - module: bakery.images.sbom
  - module: bakery.images.sign
  - module: bakery.images.verify_artifacts
"""

EXAMPLES = r"""
- name: Write the provenance of a baked artifact
  bakery.images.provenance:
    path: "output/example-web.intoto.json"
    target: "{{ bakery_target }}"
    artifact: "{{ bakery_artifact }}"
    versions:
      bakery: 0.3.0
      ansible-core: "{{ ansible_version.full }}"
"""

RETURN = r"""
statement:
  description: The statement's C(path) and C(sha256).
  returned: always
  type: dict
  sample:
    path: /srv/bake/output/example-web.intoto.json
    sha256: 5e1f0a...
subjects:
  description: How many subjects (digests of the artifact) the statement has.
  returned: always
  type: int
  sample: 2
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _provenance
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            target=dict(type="dict", required=True),
            artifact=dict(type="dict", required=True),
            versions=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    run(module, lambda mod: _provenance.run(mod.params, mod.check_mode, time.time()))


if __name__ == "__main__":
    main()
