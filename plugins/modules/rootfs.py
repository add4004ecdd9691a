#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rootfs
short_description: Build a Debian or Ubuntu root filesystem tarball with mmdebstrap, idempotent by fingerprint
version_added: 0.1.0
description:
  - Builds a root filesystem tarball of a Debian or Ubuntu O(suite) with C(mmdebstrap) on the build host,
    for example as the base of a Docker image (M(bakery.images.docker_image_build) with C(action=import)).
  - The tarball's fingerprint is a sha256 over everything that decides its content, that is O(suite),
    O(mirror), O(variant), O(packages) (order and repeats do not matter), O(components), O(architecture), the
    content of the O(keyring) files, O(extra_sources) and the tarball format. It is written with the
    tarball's size and sha256 to the sidecar C(<path>.bakery.json).
  - When the tarball exists and its sidecar carries the same fingerprint and size (and sha256 with
    O(verify=true)), nothing is run and the task reports C(changed=false). The fingerprint does not
    follow package updates on the mirror; use O(force=true) to rebuild from the mirror's current state.
  - The tarball is written under a temporary name beside O(path) and renamed onto it only after
    C(mmdebstrap) succeeded; on failure, timeout or interruption the partial file is removed and an
    existing tarball is left as it was. Parallel tasks that want the same O(path) build it once
    (they serialise on the lock file C(<path>.lock)).
  - The package lists C(mmdebstrap) fetched (which it removes from the tree) are kept beside the tarball as
    C(<path>.apt-lists.tar), written with it; M(bakery.images.qemu_image) and M(bakery.images.docker_image_build)
    seed a builder made from the tarball with them (O(bakery.images.qemu_image#module:apt_lists),
    O(bakery.images.docker_image_build#module:apt_lists)), so that its refresh before the first provisioner
    fetches only what changed on the mirror since. They are no input of the fingerprint; a tarball built without
    them is up to date as it is.
  - C(mmdebstrap) failures are reported in one line that names the problem (unknown suite, unreachable
    mirror, missing package, missing signing key); the last lines of its output are in RV(stderr_lines).
author:
  - bakery maintainers (@bakery-images)
requirements:
  - mmdebstrap on the build host (Debian package C(mmdebstrap))
  - the compressor for compressed tarballs (C(gzip), C(xz-utils) or C(zstd))
  - root, or unprivileged user namespaces with C(/etc/subuid) and C(/etc/subgid) entries for O(mode=unshare)
attributes:
  check_mode:
    support: full
    description: Reports whether the tarball would be built and which inputs changed; creates nothing.
  diff_mode:
    support: full
    description: Shows the readable inputs (suite, mirror, packages, ...) of the existing and wanted tarball.
  idempotent:
    support: full
    description: Same inputs give the same fingerprint; a tarball whose sidecar carries it is not rebuilt.
options:
  path:
    description:
      - The output tarball.
      - Its name decides the compression, as with C(mmdebstrap); supported endings are C(.tar), C(.tar.gz),
        C(.tgz), C(.tar.xz) and C(.tar.zst).
      - Missing parent directories are created.
    type: path
    required: true
  suite:
    description:
      - The release code name or suite, for example C(bookworm), C(trixie), C(sid), C(jammy) or C(noble).
    type: str
    required: true
  mirror:
    description:
      - The archive to install from.
      - Defaults to C(http://deb.debian.org/debian), or for known Ubuntu suites to C(http://archive.ubuntu.com/ubuntu)
        (C(http://ports.ubuntu.com/ubuntu-ports) for architectures other than amd64 and i386).
      - Since a mirror is always given to C(mmdebstrap), it does not add the updates and security archives
        on its own; add them with O(extra_sources).
    type: str
  variant:
    description:
      - The package set C(mmdebstrap) installs before O(packages); see C(man mmdebstrap), section VARIANTS.
    type: str
    default: minbase
    choices: [extract, custom, essential, apt, required, minbase, buildd, important, debootstrap, standard]
  packages:
    description:
      - Packages to install in addition to the O(variant) (C(mmdebstrap --include)).
      - Names may end in C(:arch), C(=version) or C(/release).
      - The bake adds C(python3) so that Ansible can provision the result; this module installs only what
        is listed.
    type: list
    elements: str
    default: []
  components:
    description:
      - Archive components used with O(mirror), for example C([main, contrib, non-free-firmware]).
    type: list
    elements: str
    default: [main]
  architecture:
    description:
      - The Debian architecture of the root filesystem, for example C(amd64) or C(arm64).
      - Defaults to the build host's (C(dpkg --print-architecture)). A foreign architecture needs
        C(qemu-user-static) and C(binfmt-support) on the build host.
      - On an amd64 build host with C(busybox-static), the initramfs of a foreign root filesystem with a kernel
        is made with that (static, native) busybox standing in for C(readlink), C(realpath) and C(mkdir) in its
        chroot, then put back. The initramfs is the same, made in less than half the time. Without it, as before.
    type: str
  keyring:
    description:
      - Keyring files or directories that apt trusts while building (C(mmdebstrap --keyring)); at most
        one file and one directory.
      - Their content, not their path, goes into the fingerprint.
      - For Ubuntu suites on a Debian host, install C(ubuntu-keyring) or give its keyring here.
    type: list
    elements: path
    default: []
  extra_sources:
    description:
      - Additional apt sources, each one full one-line entry, for example
        C(deb http://deb.debian.org/debian bookworm-updates main). They are used while building and
        kept in the root filesystem's sources.list.
    type: list
    elements: str
    default: []
  mode:
    description:
      - How C(mmdebstrap) gets root privileges (C(mmdebstrap --mode)); C(auto) picks C(root) when run as root
        and C(unshare) otherwise. Not part of the fingerprint.
    type: str
    default: auto
    choices: [auto, sudo, root, unshare, fakeroot, fakechroot, chrootless]
  force:
    description:
      - Build even when an up-to-date tarball exists.
    type: bool
    default: false
  verify:
    description:
      - Re-hash the existing tarball and compare its sha256 with the sidecar before calling it up to date.
      - Without it, the size is compared.
    type: bool
    default: false
  timeout:
    description:
      - Seconds C(mmdebstrap) may run; then it is stopped and its partial output removed.
    type: int
    default: 1800
notes:
  - The sidecar C(<path>.bakery.json) holds C(fingerprint), C(inputs), C(options) (the readable values behind
    the inputs), C(sha256), C(size), C(suite), C(architecture), C(built_at) and C(builder).
seealso:
  - module: bakery.images.docker_image_build
  - name: mmdebstrap manual
    description: Variants, modes, formats and mirror syntax.
    link: https://manpages.debian.org/mmdebstrap
"""

EXAMPLES = r"""
- name: Minimal Debian bookworm with Python for Ansible
  bakery.images.rootfs:
    path: /var/cache/bakery/rootfs/bookworm-minbase.tar
    suite: bookworm
    packages: [python3]

- name: Debian trixie with the updates and security archives, zstd-compressed
  bakery.images.rootfs:
    path: /var/cache/bakery/rootfs/trixie.tar.zst
    suite: trixie
    components: [main, non-free-firmware]
    packages: [python3, ca-certificates]
    extra_sources:
      - deb http://deb.debian.org/debian trixie-updates main non-free-firmware
      - deb http://deb.debian.org/debian-security trixie-security main non-free-firmware

- name: Ubuntu noble for arm64 (the ports mirror is the default for arm64)
  bakery.images.rootfs:
    path: /var/cache/bakery/rootfs/noble-arm64.tar.gz
    suite: noble
    architecture: arm64
    packages: [python3]
    keyring: [/usr/share/keyrings/ubuntu-archive-keyring.gpg]

- name: Rebuild weekly to pick up package updates, checking the cached tarball's content
  bakery.images.rootfs:
    path: /var/cache/bakery/rootfs/bookworm.tar
    suite: bookworm
    packages: [python3]
    verify: true
    force: "{{ rebuild_base | default(false) | bool }}"
  register: base
"""

RETURN = r"""
path:
  description: Absolute path of the tarball.
  returned: always
  type: str
  sample: /var/cache/bakery/rootfs/bookworm-minbase.tar
sha256:
  description: sha256 of the tarball; null in check mode when it would be built.
  returned: always
  type: str
  sample: 3f0a...9c1e
size:
  description: Size of the tarball in bytes; null in check mode when it would be built.
  returned: always
  type: int
  sample: 216012800
fingerprint:
  description: sha256 over O(suite), O(mirror), O(variant), O(packages), O(components), O(architecture),
    O(keyring) content, O(extra_sources) and format; also in the sidecar.
  returned: always
  type: str
  sample: 9b2c...04aa
inputs:
  description: The digest of each input; the fingerprint is computed over this mapping.
  returned: always
  type: dict
  sample: {"suite": "5e1f...", "packages": "a7c3...", "format": "0b44..."}
changed_inputs:
  description:
    - Names of the inputs that differ from the existing tarball's sidecar (all of them when there is
      none); empty when the tarball is up to date.
  returned: always
  type: list
  elements: str
  sample: [packages, suite]
command:
  description:
    - The C(mmdebstrap) argv. When a build ran, it is the command that ran, whose target is the temporary
      name beside O(path); otherwise it is the command that would build O(path).
  returned: always
  type: list
  elements: str
  sample: [mmdebstrap, --variant=minbase, --mode=auto, --format=tar, --architectures=amd64, --components=main,
           --include=python3, bookworm, /var/cache/bakery/rootfs/bookworm-minbase.tar, http://deb.debian.org/debian]
duration:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 31.27
msg:
  description: 'What was done and why, for example C(would build rootfs: inputs changed: packages, suite).'
  returned: always
  type: str
stderr_lines:
  description: The last lines of C(mmdebstrap)'s output when it failed or timed out.
  returned: failure
  type: list
  elements: str
rc:
  description: Exit status of C(mmdebstrap) when it failed.
  returned: failure
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bakery.images.plugins.module_utils import _rootfs
from ansible_collections.bakery.images.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            suite=dict(type="str", required=True),
            mirror=dict(type="str"),
            variant=dict(type="str", default="minbase", choices=list(_rootfs.VARIANTS)),
            packages=dict(type="list", elements="str", default=[]),
            components=dict(type="list", elements="str", default=["main"]),
            architecture=dict(type="str"),
            keyring=dict(type="list", elements="path", default=[], no_log=False),
            extra_sources=dict(type="list", elements="str", default=[]),
            mode=dict(type="str", default="auto", choices=list(_rootfs.MODES)),
            force=dict(type="bool", default=False),
            verify=dict(type="bool", default=False),
            timeout=dict(type="int", default=1800),
        ),
        supports_check_mode=True,
    )
    run(module, _rootfs.module_action)


if __name__ == "__main__":
    main()
