#!/usr/bin/python
# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_image_build
short_description: Build, import, commit and push Docker images, idempotent by fingerprint
version_added: 0.1.0
description:
  - Makes Docker images on the build host's Docker engine through the Docker SDK for Python.
  - C(action=build) builds a Dockerfile context; C(action=import) turns a root filesystem tarball made by
    M(bakery.images.rootfs) into a base image; C(action=start) starts a build container that a later play
    provisions over the C(bakery.images.docker_api) connection (community.docker.docker_api with a sturdier
    file upload), and C(action=commit) makes the image of it with Dockerfile-like O(changes) and removes it (the
    base image's layers plus one reproducible layer, see RV(layer)); C(action=push) pushes the tags to a registry;
    C(action=find) reports whether the image is up to date (and with O(restore_tags=true) points tags that
    moved away back at it); C(action=remove) removes build containers.
  - C(action=index) pushes one multi-architecture image, an image index (Docker manifest list) under each of
    O(tags) that lists the images O(manifests) names (already in the registry, by digest); a tag whose index
    lists exactly those is left alone. It runs the docker CLI's C(docker manifest) with a temporary configuration
    directory (credentials from O(registry) are written there, never on a command line, and removed with it), with
    C(--insecure) for a registry on 127.0.0.0/8, ::1 or localhost, as the engine treats those.
  - "The per-step cache (O(step_cache)): C(action=step_commit) keeps the build container's state after a
    provisioner as an untagged step image labelled with its chain key (O(step_keys)); C(action=start) starts from
    the deepest step image whose key it has and says from which step (RV(step_cache.resume)); least recently used
    step images beyond O(step_cache.max_size) are evicted; C(action=prune_steps) empties the cache down to
    O(step_cache.max_size) (V(0): every step image no other image stands on)."
  - Every image carries the label C(org.bakery.fingerprint), a sha256 over everything that decides it
    (context content, Dockerfile, build options, base image ids, the bake's inputs). An image with the
    same fingerprint is not rebuilt; O(force=true) rebuilds. The label C(org.bakery.inputs) keeps the
    digests of the single inputs so that a rebuild can say which input changed.
  - Build containers are labelled C(bakery-bake-id=<bake id>) and C(bakery-temporary=true), and are removed
    after a commit, also when it fails.
author:
  - bakery maintainers (@bakery-images)
requirements:
  - docker (Python SDK) >= 7.0 on the build host
  - a Docker engine (API 1.41 or later)
attributes:
  check_mode:
    support: full
    description: Reports what would be built and which input changed; creates nothing.
  diff_mode:
    support: none
    description: Reports the changed inputs in RV(changed_inputs) instead of a diff.
  idempotent:
    support: full
    description: Same inputs give the same fingerprint; an existing image with it is reused.
options:
  action:
    description: What to do.
    type: str
    choices: [build, import, index, find, start, commit, remove, push, publish, verifier, step_commit, prune_steps]
    default: build
  name:
    description:
      - Image repository, optionally with a registry host, for example V(bakery/example-web) or
        V(127.0.0.1:5000/team/app). Required for every action but V(remove).
    type: str
  tags:
    description: Tags to give the image; the first one is the main tag. All are pushed with O(push=true).
    type: list
    elements: str
    default: [latest]
  inputs:
    description:
      - Input digests computed by the bake plan (source, provisioning roles, variables). They are part of
        the fingerprint, together with what the module computes itself.
    type: dict
    default: {}
  force:
    description: Build even when an image with the same fingerprint exists.
    type: bool
    default: false
  publish:
    description:
      - With V(false), V(build), V(import) and V(commit) leave a new image untagged (it carries its fingerprint
        label, by which V(find) finds it) and push nothing, and V(find) moves no tag; the image is checked first
        (the bake's C(verify)), then V(action=publish) tags it and, with O(push=true), pushes it.
    type: bool
    default: true
  image:
    description:
      - With V(action=publish), the image to tag and push (its id or a reference).
      - With V(action=verifier), the image to run a container of, for the bake's checks (C(verify)) - with its own
        entrypoint and command, or kept alive when that command ends at once. The container is temporary (labelled
        with O(bake_id) and O(target)); V(action=remove) with O(bake_id) removes it.
    type: str
  restore_tags:
    description:
      - With V(action=find), point every tag back at the up-to-date image when one was moved to another
        image (by a manual C(docker tag), say). Without it, V(find) changes nothing.
      - V(build), V(import) and V(start) always do this for an up-to-date image.
    type: bool
    default: false
  bake_id:
    description: Id of the bake; labels build containers and final images.
    type: str
  target:
    description: Name of the bake target, used in build container names and labels.
    type: str
  context:
    description: Build context directory (V(build)).
    type: path
  dockerfile:
    description: Dockerfile, relative to O(context) or absolute.
    type: str
    default: Dockerfile
  build_args:
    description: Build arguments (C(ARG)).
    type: dict
    default: {}
  build_target:
    description: Stage to build in a multi-stage Dockerfile.
    type: str
  labels:
    description: Labels to put on the image.
    type: dict
    default: {}
  pull:
    description: Pull newer base images while building. Needs a reachable registry.
    type: bool
    default: false
  nocache:
    description: Do not use the build cache.
    type: bool
    default: false
  platform:
    description: Platform to build for, for example V(linux/amd64).
    type: str
  rootfs:
    description: Root filesystem tarball for V(import), or for V(start) when O(base_image) is not given.
    type: path
  base_image:
    description: Image the build container of V(start) runs (it must exist on the engine; nothing is pulled).
    type: str
  apt_lists:
    description:
      - With V(action=start), seed the build container with the package lists kept beside the O(rootfs) tarball
        (C(<rootfs>.apt-lists.tar), written by M(bakery.images.rootfs)) when it starts from the image made of it (not
        from a step image of the per-step cache, which has the lists its bake refreshed, and never with a
        O(base_image)). The files go into C(/var/lib/apt/lists) before the container starts (plain files but
        C(lock), root's, with their times), so that the refresh before the first provisioner fetches only what
        changed on the mirror since; a tarball without them (built by an older bakery) is used as it is.
      - A seed that fails is reported in RV(apt_lists.error), never as a failure (the refresh fetches what is
        missing). No input of the fingerprint; the bake removes the lists after the last provisioner.
    type: bool
    default: false
  lists_refresh:
    description:
      - With V(action=start), start the refresh of the package lists (C(apt-get update), without the translations)
        in the build container as soon as it runs, in the background, unless it starts from a step image of the
        per-step cache (its bake refreshed them). Role C(bakery.images.bake)'s task before the first provisioner
        then waits for it with RV(lists_refresh.wait), instead of running it, so the refresh overlaps what the bake
        does before that task.
      - Its output and exit code stay in C(/run/bakery-lists-refresh) until that command has read them and removed
        the directory. Nothing starts where C(apt-get) is missing or the directory cannot be made; the command
        then runs the refresh itself (or nothing without C(apt-get)).
    type: bool
    default: false
  container:
    description: Build container id or name for V(commit) and V(remove).
    type: str
  container_name:
    description: Name for the build container of V(start); default C(bakery-<bake_id>-<target>).
    type: str
  changes:
    description:
      - Changes applied to the image config by V(commit) and V(import), as Dockerfile instructions would.
        Unset keys keep the base image's values; as in a Dockerfile, a new O(changes.entrypoint) resets the
        base image's CMD.
    type: dict
    default: {}
    suboptions:
      cmd:
        description: CMD, exec form.
        type: list
        elements: str
      entrypoint:
        description: ENTRYPOINT, exec form.
        type: list
        elements: str
      env:
        description: Environment variables to set.
        type: dict
      expose:
        description: Ports to expose, V(80) or V(53/udp).
        type: list
        elements: str
      user:
        description: USER.
        type: str
      workdir:
        description: WORKDIR.
        type: str
      volumes:
        description: VOLUME paths.
        type: list
        elements: str
      stopsignal:
        description: STOPSIGNAL.
        type: str
  push:
    description: Push every tag after V(build), V(import) or V(commit). Tags the registry already has are skipped.
    type: bool
    default: false
  registry:
    description: Credentials for the registry O(name) points at.
    type: dict
    suboptions:
      username:
        description: Registry user.
        type: str
      password:
        description: Registry password or token.
        type: str
  manifests:
    description:
      - With V(action=index), the images the index lists, by digest in the repository O(name)
        (V(127.0.0.1:5000/team/app@sha256:...)), one per platform; each must already be in the registry. A reference
        to an index is left out (an image pulled through an index has the index's digest among its repository
        digests).
    type: list
    elements: str
  step_keys:
    description:
      - The builder's per-step cache keys from the bake plan, of the state after the start (key 0) and after each
        provisioner (key 1 to n). With a O(base_image), V(start) binds them to its id.
      - For V(step_commit), the keys V(start) returned (RV(step_cache.keys)).
    type: list
    elements: str
    default: []
  step:
    description: With V(action=step_commit), the position (1 to n) of the provisioner whose state to keep.
    type: int
  step_cache:
    description: The per-step cache settings of the bake plan.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Whether V(start) reads and V(step_commit) writes the cache. O(force=true) bypasses it.
        type: bool
        default: false
      max_size:
        description: The most the step images may take, in bytes (what each adds to its parent); least recently used go first.
        type: int
        default: 0
      dir:
        description: The directory of the index of when each step image was last used (C(docker-steps.json)).
        type: path
      max_resume:
        description:
          - The most provisioners V(start) may take from the cache (those before the first one that acts outside
            the builder, a download or a local command). All by default.
        type: int
  source_date_epoch:
    description:
      - With V(action=commit), the time (seconds since 1970) the files of the image's provisioned layer are clamped to
        and the image is dated; see RV(layer).
      - Without it, the newest modification time of the base image's files, which is the same for one base image
        (so for one rootfs cache).
    type: int
  index_cache:
    description:
      - With V(action=commit), a directory where the index of the base image's files (paths, owners, modes, content
        digests) is kept by image id, so that the next commit over the same base does not export and read the base
        image again (an image's files never change). The most recently used indexes are kept; an unreadable one is
        read again. Without it, every commit reads the base image.
    type: path
  docker_host:
    description: Docker engine URL. Defaults to E(DOCKER_HOST), else the local socket.
    type: str
  timeout:
    description: Seconds to wait for a Docker API call.
    type: int
    default: 600
seealso:
  - module: bakery.images.rootfs
  - name: Docker builder reference
    description: The Dockerfile instructions the build understands.
    link: https://docs.docker.com/reference/dockerfile/
"""

EXAMPLES = r"""
- name: Turn a bakery rootfs into the base image bakery/debian:bookworm
  bakery.images.docker_image_build:
    action: import
    rootfs: /srv/bakery/rootfs/bookworm.tar
    name: bakery/debian
    tags: [bookworm]

- name: Build a Dockerfile context
  bakery.images.docker_image_build:
    context: ./web
    name: registry.example.org/team/web
    tags: ["1.2.0", latest]
    build_args:
      VERSION: 1.2.0
    push: true
    registry:
      username: ci
      password: "{{ registry_token }}"

- name: One multi-architecture image of two per-architecture images already pushed
  bakery.images.docker_image_build:
    action: index
    name: 127.0.0.1:5000/team/web
    tags: ["1.0", latest]
    manifests:
      - 127.0.0.1:5000/team/web@sha256:1f3a0e2c8bd4c5f7e6a9b0d1c2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1
      - 127.0.0.1:5000/team/web@sha256:2e4b1f3d9ce5d6a8f7b0c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2

- name: Start a build container from a base image
  bakery.images.docker_image_build:
    action: start
    name: bakery/example-web
    base_image: bakery/debian:bookworm
    bake_id: "{{ bake_id }}"
  register: launch

- name: Commit it once provisioned
  bakery.images.docker_image_build:
    action: commit
    name: bakery/example-web
    base_image: bakery/debian:bookworm
    container: "{{ launch.container.id }}"
    changes:
      cmd: [/usr/sbin/nginx]
      expose: ["80"]
  when: launch.container is defined
"""

RETURN = r"""
index:
  description: The image index V(action=index) pushed or found.
  returned: index (without RV(index.digest) and RV(index.manifests) when check mode would push it)
  type: dict
  contains:
    name:
      description: The repository.
      type: str
    tags:
      description: The references the index is under.
      type: list
      elements: str
    digest:
      description: The index's digest (the same under every tag).
      type: str
    manifests:
      description: The images it lists, each with its C(digest) and C(platform) (V(linux/arm64)).
      type: list
      elements: dict
pushed:
  description: The references V(action=index) pushed an index under (would push, in check mode).
  returned: index
  type: list
  elements: str
up_to_date:
  description: The references whose index already listed exactly O(manifests).
  returned: index
  type: list
  elements: str
published:
  description: Whether the image carries its tags (V(false) for an image left untagged by O(publish=false)).
  returned: build, import, commit, find of an image, publish
  type: bool
tagged:
  description: The references V(action=publish) moved onto the image.
  returned: publish
  type: list
  elements: str
image:
  description: The image, when there is one.
  returned: when an image was built, found or committed
  type: dict
  contains:
    id:
      description: Image id.
      type: str
      sample: sha256:4c1f...
    tags:
      description: C(name:tag) references (none for an image that is not published yet).
      type: list
      elements: str
    repo_digests:
      description: Registry digests after a push.
      type: list
      elements: str
    size:
      description: Size in bytes.
      type: int
    architecture:
      description: The image's architecture, with Debian's name (V(amd64), V(arm64), V(armhf), V(i386), ...).
      type: str
    labels:
      description: Image labels, fingerprint included.
      type: dict
    config:
      description: Cmd, Entrypoint, Env, ExposedPorts, User, WorkingDir and Volumes of the image.
      type: dict
found:
  description: Whether an image with the fingerprint already existed.
  returned: for build, import, find and start
  type: bool
built:
  description: Whether this run made the image.
  returned: for build, import, start and commit
  type: bool
container:
  description: The build container started by V(start) (id, name, base_image, and agent, V(true) when its main process
    is the command agent of connection P(bakery.images.docker_api#connection)), or the container V(verifier) runs (id,
    name, image).
  returned: when a container was started
  type: dict
container_removed:
  description: Whether V(commit) removed the build container (it always tries; V(false) when that failed, and a later
    V(action=remove) removes it).
  returned: commit (not in check mode)
  type: bool
layer:
  description:
    - "How V(commit) made the image: not with Docker's commit, but as the base image's layers and one layer computed
      from the build container's file system only (exported and compared with the base image's): members sorted,
      times clamped to O(source_date_epoch), numeric owners, a whiteout for each path that went, and the paths
      that differ from run to run (package tools' logs, backups and binary caches) left out. The same file system
      gives the same layer digest, whether the container started from the base or from a step image."
  returned: commit
  type: dict
  contains:
    diff_id:
      description: The digest of the provisioned layer (the last of the image's C(RootFS.Layers)).
      type: str
    size:
      description: Its size in bytes (uncompressed).
      type: int
    paths:
      description: How many paths it holds (changed or new, and their parent directories).
      type: int
    whiteouts:
      description: How many paths of the base it removes.
      type: int
    source_date_epoch:
      description: The time its files are clamped to.
      type: int
    source_date_epoch_from:
      description: Where that time came from (O(source_date_epoch), or the base image's newest file).
      type: str
    base_index:
      description: Where the base image's index came from, V(kept) in O(index_cache) or read from an V(export).
      type: str
    read_from:
      description: >-
        Where the container's files were read from: V(overlay), its overlay directories on this host (a local
        overlay2 engine, the container running), or V(export), the engine's export of its file system. Both
        give the same layer.
      type: str
    read_from_why:
      description: Why the files were read from the export (empty when they were read from the overlay directories).
      type: str
    export_seconds:
      description: >-
        Seconds spent reading and indexing the container's file system (from the overlay directories, or its
        export as it streams), and the base image's when its index was not kept.
      type: float
    write_seconds:
      description: Seconds spent comparing them and writing the layer and the image archive.
      type: float
    load_seconds:
      description: Seconds C(docker load) took.
      type: float
packages:
  description:
    - "The installed packages of the image V(commit) made, read from its dpkg database while the container's file
      system was exported (what the image holds: the layer's paths left out are left out here too), one record per
      package as M(bakery.images.sbom) takes them in O(bakery.images.sbom#module:installed): name, version,
      architecture, source, source version, maintainer, licenses and the digest of its md5sums list."
    - None when the image has no dpkg database.
  returned: commit
  type: list
  elements: dict
step_cache:
  description: What V(start) found in the per-step cache.
  returned: start of a build container (also in check mode)
  type: dict
  contains:
    resume:
      description: The last provisioner whose cached state the container starts from (V(0) for none).
      type: int
    keys:
      description: The builder's chain keys (bound to the base image's id).
      type: list
      elements: str
    image:
      description: The step image the container starts from.
      type: str
    reason:
      description: Why it starts there.
      type: str
apt_lists:
  description: The package lists the build container was seeded with (O(apt_lists)).
  returned: start with O(apt_lists), when the container starts from a rootfs tarball that has them
  type: dict
  contains:
    path:
      description: The file they came from.
      type: str
    files:
      description: How many files went into C(/var/lib/apt/lists) (V(0) with RV(apt_lists.error)).
      type: int
    error:
      description: Why none went in (the refresh fetches them).
      type: str
lists_refresh:
  description: The refresh of the package lists started with the build container (O(lists_refresh)).
  returned: start with O(lists_refresh), when the container starts from its base
  type: dict
  contains:
    wait:
      description:
        - Shell for the container that waits for the refresh, prints its output, removes what it left and exits
          with its exit code (or runs the refresh itself, when none could start).
      type: str
kept_alive:
  description: Whether V(verifier) runs the image kept alive because its own command ended at once.
  returned: verifier
  type: bool
fingerprint:
  description: The image's fingerprint.
  returned: except for remove and push
  type: str
inputs:
  description: The digests the fingerprint was computed from.
  returned: except for remove and push
  type: dict
changed_inputs:
  description: Names of the inputs that differ from the image the tags pointed at before.
  returned: except for remove and push
  type: list
  elements: str
removed:
  description: Ids of removed build containers (V(remove)), or of removed step images (V(prune_steps)).
  returned: for remove and prune_steps
  type: list
  elements: str
push:
  description: Result of the push (pushed, up_to_date, repo_digests).
  returned: when O(push=true)
  type: dict
duration:
  description: Seconds the build, import or commit took.
  returned: when something was built
  type: float
msg:
  description: What happened, in one line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.bakery.images.plugins.module_utils import _docker, _module

CHANGES = dict(
    cmd=dict(type="list", elements="str"),
    entrypoint=dict(type="list", elements="str"),
    env=dict(type="dict"),
    expose=dict(type="list", elements="str"),
    user=dict(type="str"),
    workdir=dict(type="str"),
    volumes=dict(type="list", elements="str"),
    stopsignal=dict(type="str"),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="build", choices=sorted(_docker.ACTIONS)),
            name=dict(type="str"),
            tags=dict(type="list", elements="str", default=["latest"]),
            inputs=dict(type="dict", default={}),
            force=dict(type="bool", default=False),
            restore_tags=dict(type="bool", default=False),
            publish=dict(type="bool", default=True),
            image=dict(type="str"),
            bake_id=dict(type="str"),
            target=dict(type="str"),
            context=dict(type="path"),
            dockerfile=dict(type="str", default="Dockerfile"),
            build_args=dict(type="dict", default={}),
            build_target=dict(type="str"),
            labels=dict(type="dict", default={}),
            pull=dict(type="bool", default=False),
            nocache=dict(type="bool", default=False),
            platform=dict(type="str"),
            rootfs=dict(type="path"),
            base_image=dict(type="str"),
            apt_lists=dict(type="bool", default=False),
            lists_refresh=dict(type="bool", default=False),
            container=dict(type="str"),
            container_name=dict(type="str"),
            changes=dict(type="dict", default={}, options=CHANGES),
            push=dict(type="bool", default=False),
            registry=dict(
                type="dict",
                options=dict(username=dict(type="str"), password=dict(type="str", no_log=True)),
            ),
            source_date_epoch=dict(type="int"),
            index_cache=dict(type="path"),
            docker_host=dict(type="str", fallback=(env_fallback, ["DOCKER_HOST"])),
            timeout=dict(type="int", default=600),
            step_keys=dict(type="list", elements="str", default=[], no_log=False),
            manifests=dict(type="list", elements="str"),
            step=dict(type="int"),
            step_cache=dict(
                type="dict",
                default={},
                options=dict(
                    enabled=dict(type="bool", default=False),
                    max_size=dict(type="int", default=0),
                    dir=dict(type="path"),
                    max_resume=dict(type="int"),
                ),
            ),
        ),
        required_if=[
            ("action", "build", ["name", "context"]),
            ("action", "import", ["name", "rootfs"]),
            ("action", "find", ["name"]),
            ("action", "start", ["name"]),
            ("action", "commit", ["name", "container"]),
            ("action", "push", ["name"]),
            ("action", "index", ["name", "manifests"]),
            ("action", "step_commit", ["container", "step"]),
        ],
        mutually_exclusive=[("base_image", "rootfs")],
        supports_check_mode=True,
    )

    def action(mod: AnsibleModule) -> dict:
        params = dict(mod.params)
        params["target"] = params.get("target")
        params["stage"] = params.pop("build_target")
        changes = {k: v for k, v in (params.get("changes") or {}).items() if v is not None}
        params["changes"] = changes
        return _docker.run_action(params, mod.check_mode)

    _module.run(module, action)


if __name__ == "__main__":
    main()
