"""The Docker target on the real engine: Dockerfile builds, container bakes, push, failures.

Every test talks to the dockerd that `make test` started; base images come from bakery's own rootfs
(no registry is reachable here, nothing is pulled).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import docker
import pytest
from conftest import BAKE_BASE, LOCAL, REPO, docker_client, remove_repositories, remove_untagged, run_playbook
from package_lists import REFRESH_TASK, check_seeded_refresh
from ports import free_port
from provenance_checks import check_statement, gpg_verify, throwaway_key
from sbom_checks import DPKG_FORMAT, check_documents, installed

from ansible_collections.bakery.images.plugins.module_utils import _docker, _sbom

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
SHARED_DOCKERFILE = REPO.parent / "shared" / "examples" / "Dockerfile.nginx"
DOCKERFILE = Path(__file__).parent / "files" / "Dockerfile.nginx"


def serves(image: str, expected: str = "nginx on Debian") -> str:
    """Run *image* with port 80 published on 127.0.0.1 and return the page it serves."""
    client = docker_client()
    port = free_port()
    container = client.containers.run(image, detach=True, ports={"80/tcp": ("127.0.0.1", port)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=2) as reply:
                    return reply.read().decode()
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        "no answer; logs:\n%s" % container.logs().decode(errors="replace")
                    ) from None
                time.sleep(0.3)
    finally:
        container.remove(force=True)


def unique(prefix: str) -> str:
    return "bakery-test/%s-%s" % (prefix, uuid.uuid4().hex[:8])


BUILD_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: build
      bakery.images.docker_image_build:
        context: "{{ context }}"
        name: "{{ name }}"
        tags: "{{ tags | default(['latest']) }}"
        build_args: "{{ build_args | default({}) }}"
        push: "{{ push | default(false) }}"
        registry: "{{ registry | default(omit) }}"
        force: "{{ force | default(false) }}"
"""


def build(tmp_path: Path, context: Path, name: str, args: list[str] | None = None, **extra):
    return run_playbook(
        BUILD_PLAY,
        tmp_path,
        extra_vars=dict(context=str(context), name=name, **extra),
        args=LOCAL + (args or []),
    )


def test_shared_example_is_the_one_we_test():
    if SHARED_DOCKERFILE.exists():
        assert SHARED_DOCKERFILE.read_text() == DOCKERFILE.read_text()


def test_dockerfile_nginx_builds_on_bakery_base_and_is_idempotent(bake_base, tmp_path, docker_leftovers):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.read_text())
    (context / ".dockerignore").write_text("*.log\n")
    name = unique("nginx-df")
    try:
        first = build(tmp_path, context, name)
        assert first.rc == 0, first.explain()
        result = first.task_result("build")
        assert result["changed"] and result["built"]
        assert result["image"]["config"]["Cmd"] == ["/usr/sbin/nginx"]
        assert "80/tcp" in result["image"]["config"]["ExposedPorts"]
        assert serves("%s:latest" % name).strip() == "nginx on Debian"

        (context / "debug.log").write_text("ignored by .dockerignore")
        second = build(tmp_path, context, name)
        assert second.rc == 0
        again = second.task_result("build")
        assert not again["changed"] and not again["built"]
        assert again["image"]["id"] == result["image"]["id"]

        forced = build(tmp_path, context, name, force=True)
        assert forced.rc == 0, forced.explain()
        rebuilt = forced.task_result("build")
        assert rebuilt["changed"] and rebuilt["built"]
        assert rebuilt["fingerprint"] == result["fingerprint"]

        (context / "extra.txt").write_text("a new file in the context")
        check = build(tmp_path, context, name, args=["--check"])
        would = check.task_result("build")
        assert would["changed"] and would["changed_inputs"] == ["context"]
        assert "would build" in would["msg"]
    finally:
        remove_repositories(name)


def test_every_dockerfile_instruction_and_build_args(bake_base, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "app.txt").write_text("app\n")
    (context / "Dockerfile").write_text(
        "ARG BASE=bakery/debian:bookworm\n"
        "FROM ${BASE}\n"
        "ARG GREETING=hello\n"
        'LABEL org.example.team="images"\n'
        "ENV APP_HOME=/srv/app GREETING=${GREETING}\n"
        "WORKDIR /srv/app\n"
        "COPY app.txt ./copied.txt\n"
        "ADD app.txt /srv/app/added.txt\n"
        'RUN useradd --system appuser && echo "$GREETING" > greeting\n'
        "USER appuser\n"
        'ENTRYPOINT ["/bin/cat"]\n'
        'CMD ["/srv/app/greeting"]\n'
    )
    name = unique("instructions")
    try:
        run = build(tmp_path, context, name, build_args={"GREETING": "bonjour"})
        assert run.rc == 0, run.explain()
        config = run.task_result("build")["image"]["config"]
        assert config["User"] == "appuser" and config["WorkingDir"] == "/srv/app"
        assert config["Entrypoint"] == ["/bin/cat"] and config["Cmd"] == ["/srv/app/greeting"]
        assert "APP_HOME=/srv/app" in config["Env"] and "GREETING=bonjour" in config["Env"]
        labels = run.task_result("build")["image"]["labels"]
        assert labels["org.example.team"] == "images" and labels["org.bakery.fingerprint"]
        out = docker_client().containers.run("%s:latest" % name, remove=True)
        assert out.decode().strip() == "bonjour"
    finally:
        remove_repositories(name)


def test_failing_instruction_and_its_output_are_in_the_error(bake_base, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM bakery/debian:bookworm\nRUN echo preparing\nRUN echo about-to-fail && ls /no/such/dir\n"
    )
    name = unique("failing")
    run = build(tmp_path, context, name)
    assert run.rc != 0
    msg = run.task_result("build")["msg"]
    assert re.search(r"step 3/\d+ `RUN echo about-to-fail && ls /no/such/dir`", msg), msg
    assert "\x1b[" not in msg
    assert "returned a non-zero code" in msg
    assert "about-to-fail" in msg and "No such file or directory" in msg
    assert "Traceback" not in msg


def write_bake(tmp_path: Path, bake: dict) -> Path:
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": bake}))
    return path


def container_bake(name: str, cache_dir: str, **docker) -> dict:
    return {
        "name": "itest",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        "provisioners": [{"role": "bakery.images.example_web"}],
        "targets": [{"name": "web", "docker": dict({"repository": name}, **docker)}],
    }


def bake(tmp_path: Path, definition: dict, *args: str, env=None):
    return run_playbook(
        BAKE_PLAYBOOK,
        tmp_path,
        args=["-e", "@%s" % write_bake(tmp_path, definition), *args],
        json_output=True,
        env=env,
    )


def host_stats(run) -> dict:
    return {host: (s["changed"], s["failures"], s["unreachable"]) for host, s in run.stats.items()}


@pytest.fixture
def signing_key():
    with throwaway_key() as found:
        yield found


def verify_artifacts(tmp_path: Path, home: str):
    """The verify_artifacts playbook on the bake's manifest: its run and its mismatches."""
    run = run_playbook(
        "bakery.images.verify_artifacts",
        tmp_path,
        args=["-e", "manifest=output/bake-manifest.json", "-e", "verify_gnupg_home=%s" % home],
    )
    checked = run.task_result("Check every artifact, SBOM, statement and signature the manifest names")
    return run, {(m["kind"], Path(m["path"]).name): m["msg"] for m in checked["mismatches"]}


def layers(image: str) -> list[str]:
    """An image's layer digests (diff ids)."""
    return docker_client().api.inspect_image(image)["RootFS"]["Layers"]


def check_seeded_package_lists(run, image: str) -> None:
    """A build container that started from the image of the bake's rootfs got the package lists kept with it
    (package_lists.check_seeded_refresh), and began their refresh as it started: role bake's task waited for that
    one (its output is the refresh's) and removed what it left. The image has no lists, and nothing of the
    refresh."""
    started = run.task_result("Start the build container")
    check_seeded_refresh(run, started, "build container", BAKE_BASE["mirror"], BAKE_BASE["suite"])
    if not started["step_cache"]["resume"]:
        assert started["lists_refresh"] == {"wait": _docker.lists_refresh_wait()}, started
        (refresh,) = [r for r in run.task_results(REFRESH_TASK) if not r.get("skipped")]
        assert refresh["rc"] == 0, refresh
    # the bake removed them after the last provisioner, seeded or not
    lists = docker_client().containers.run(
        image,
        [
            "sh",
            "-c",
            "find /var/lib/apt/lists -mindepth 1 -maxdepth 1 -type f ! -name lock; ls -d %s 2>/dev/null || true"
            % _docker.LISTS_REFRESH_DIR,
        ],
        remove=True,
    )
    assert lists.decode() == "", lists.decode()


def test_container_bake_provisioned_by_ansible(bake_base, tmp_path, docker_leftovers, signing_key):
    home, fingerprint = signing_key
    name = unique("web")
    definition = container_bake(
        name,
        bake_base["cache_dir"],
        tags=["latest", "1.0"],
        changes={
            "cmd": ["/usr/sbin/nginx"],
            "expose": ["80"],
            "env": {"SITE": "example"},
            "workdir": "/var/www",
        },
        labels={"org.example.owner": "platform"},
    )
    definition["sign"] = {"key": fingerprint, "gnupg_home": home}
    made: list[str] = []
    try:
        first = bake(tmp_path, definition)
        assert first.rc == 0, first.explain()
        image = docker_client().images.get("%s:latest" % name)
        assert image.tags and "%s:1.0" % name in image.tags
        config = image.attrs["Config"]
        assert config["Cmd"] == ["/usr/sbin/nginx"]
        assert not config.get("Entrypoint")
        assert "80/tcp" in config["ExposedPorts"]
        assert "SITE=example" in config["Env"] and config["WorkingDir"] == "/var/www"
        assert config["Labels"]["org.example.owner"] == "platform"
        assert config["Labels"]["bakery-temporary"] == "false"
        assert serves("%s:latest" % name).strip() == "nginx on Debian"
        check_seeded_package_lists(first, image.id)

        manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
        (entry,) = manifest["artifacts"]
        assert entry["id"] == image.id and entry["fingerprint"] == config["Labels"]["org.bakery.fingerprint"]
        assert entry["build_seconds"] > 0 and entry["bake_id"]
        summary = first.task_result("Artifact summary")["msg"]
        assert any("built in" in line and name in line for line in summary)
        # its SBOMs, in the output directory, list exactly the packages dpkg lists in a container of the image; the
        # image's labels name them
        in_image = docker_client().containers.run(
            image.id, ["dpkg-query", "-W", "-f", DPKG_FORMAT], remove=True
        )
        check_documents(entry, installed(in_image.decode()))
        # the commit read the image's packages while it exported the container: the documents are those that reading
        # the image itself gives
        (sbom_task,) = [r for r in first.task_results("Write the artifact's SBOMs") if "invocation" in r]
        sbom_args = dict(sbom_task["invocation"]["module_args"])
        assert sbom_args["installed"] and sbom_args["image"] is None
        again = {kind: str(tmp_path / ("from-image." + kind)) for kind in ("spdx", "cyclonedx")}
        sbom_args.update(
            installed=None, image=image.id, spdx_path=again["spdx"], cyclonedx_path=again["cyclonedx"]
        )
        _sbom.run(sbom_args, False)
        for kind, path in again.items():
            assert Path(path).read_bytes() == Path(entry["sbom"][kind]["path"]).read_bytes(), kind
        assert {
            label: str(tmp_path / "output" / config["Labels"][label])
            for label in ("org.bakery.sbom.spdx", "org.bakery.sbom.cyclonedx")
        } == {
            "org.bakery.sbom.spdx": entry["sbom"]["spdx"]["path"],
            "org.bakery.sbom.cyclonedx": entry["sbom"]["cyclonedx"]["path"],
        }
        # its provenance statement validates, names the image (no push: no repository digest), and is signed, as
        # SHA256SUMS is; the image's label names it
        statement = check_statement(entry)
        assert statement["subject"] == [
            {
                "name": name,
                "digest": {"sha256": image.id.split(":")[1]},
                "annotations": {"bakery.digest": "image-id"},
            }
        ]
        assert tmp_path / "output" / config["Labels"]["org.bakery.provenance"] == Path(
            entry["provenance"]["path"]
        )
        output = tmp_path / "output"
        assert gpg_verify(Path(entry["provenance"]["path"]), home) == fingerprint
        assert gpg_verify(output / "SHA256SUMS", home) == fingerprint
        assert entry["provenance"]["signature"]["key"] == fingerprint
        sbom_mtimes = {kind: Path(doc["path"]).stat().st_mtime_ns for kind, doc in entry["sbom"].items()}
        signed = [
            entry["provenance"]["path"],
            entry["provenance"]["path"] + ".asc",
            output / "SHA256SUMS.asc",
        ]
        signed_mtimes = [Path(path).stat().st_mtime_ns for path in signed]
        # an image has no file output: SHA256SUMS lists its two SBOMs and its statement
        sums = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"],
            cwd=tmp_path / "output",
            capture_output=True,
            text=True,
            check=False,
        )
        assert sums.returncode == 0 and len(sums.stdout.splitlines()) == 3, sums.stdout + sums.stderr

        second = bake(tmp_path, definition)
        assert second.rc == 0
        # the documents record this image: kept without reading its packages again
        (written,) = [r for r in second.task_results("Write the artifact's SBOMs") if "documents" in r]
        assert "its packages were not read again" in written["msg"], written
        assert {
            kind: Path(doc["path"]).stat().st_mtime_ns for kind, doc in entry["sbom"].items()
        } == sbom_mtimes
        # the unchanged image keeps its statement and the signatures
        assert [Path(path).stat().st_mtime_ns for path in signed] == signed_mtimes
        assert all(stats[0] == 0 for stats in host_stats(second).values()), host_stats(second)
        assert "bakery-web-builder" not in second.stats
        assert docker_client().images.get("%s:latest" % name).id == image.id
        assert json.loads((tmp_path / "output" / "bake-manifest.json").read_text()) == manifest

        verified, mismatches = verify_artifacts(tmp_path, home)
        assert verified.rc == 0 and mismatches == {}, verified.explain()

        # a tag moved away by hand (docker tag): verify_artifacts reports it; a bake points it back at the up-to-date
        # image; nothing is built
        docker_client().images.get(bake_base["image"]).tag(name, "1.0")
        verified, mismatches = verify_artifacts(tmp_path, home)
        assert verified.rc != 0 and list(mismatches) == [("image", "%s:1.0" % name.split("/")[-1])], (
            mismatches
        )
        moved = bake(tmp_path, definition)
        assert moved.rc == 0, moved.explain()
        assert docker_client().images.get("%s:1.0" % name).id == image.id
        assert host_stats(moved)["bakery-web"][0] == 1 and "bakery-web-builder" not in moved.stats

        definition["provisioners"][0]["vars"] = {"example_web_page": "changed\n"}
        check = bake(tmp_path, definition, "--check")
        assert check.rc == 0
        summary = check.task_result("Artifact summary")["msg"]
        assert any("would build: vars" in line for line in summary), summary
        assert docker_client().images.get("%s:latest" % name).id == image.id

        # an SBOM and the statement changed after the bake: verify_artifacts reports both (and SHA256SUMS, and the
        # statement's signature)
        Path(entry["sbom"]["cyclonedx"]["path"]).write_text("{}")
        statement["predicate"]["buildDefinition"]["externalParameters"]["target"]["name"] = "other"
        Path(entry["provenance"]["path"]).write_text(json.dumps(statement))
        verified, mismatches = verify_artifacts(tmp_path, home)
        assert verified.rc != 0
        sbom_name, statement_name = (
            Path(entry["sbom"]["cyclonedx"]["path"]).name,
            Path(entry["provenance"]["path"]).name,
        )
        assert set(mismatches) == {
            ("sbom", sbom_name),
            ("provenance", statement_name),
            ("signature", statement_name + ".asc"),
            ("sha256sums", sbom_name),
            ("sha256sums", statement_name),
        }, mismatches
        assert "sha256 is" in mismatches[("provenance", statement_name)]
        assert "BAD signature" in mismatches[("signature", statement_name + ".asc")]

        # reproducible (issue 15): a bake that resumes from the step image the first one kept (a label more: another
        # fingerprint, the same provisioning), and a forced one from the same cache, make the first image's layers:
        # the base's and one provisioned layer, whatever stack the build container stood on (one forced bake
        # against the first, fresh one: a second forced bake would cost CI a minute and show nothing more)
        del definition["provisioners"][0]["vars"]
        definition["targets"][0]["docker"]["labels"]["org.example.run"] = "again"
        made.append(image.id)
        for args, steps in (
            ((), ["hit"]),
            (("-e", "bake_force=true"), ["bypassed"]),
        ):
            again = bake(tmp_path, definition, *args)
            assert again.rc == 0, again.explain()
            (entry,) = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"]
            assert entry["step_cache"]["steps"] == steps and entry["id"] not in made
            made.append(entry["id"])
            assert layers(entry["id"]) == layers(image.id), (
                args,
                again.task_result("Commit the provisioned build container"),
            )
            # the forced bake starts from the rootfs's image, seeded with its package lists: the same layers as the
            # first bake's (seeded too, or resumed from a cached step)
            check_seeded_package_lists(again, entry["id"])
            # the base image's file index, read by the first bake's commit, is kept in the cache: not read again
            assert (
                again.task_result("Commit the provisioned build container")["layer"]["base_index"] == "kept"
            )
        # the base's layer: the image the bake's build container started from, made from the session's rootfs
        # (or an image of the engine made from a tarball of that rootfs's fingerprint earlier, which bakes reuse)
        base_image = first.task_result("Start the build container")["container"]["base_image"]
        assert layers(image.id)[:-1] == layers(base_image)
        assert serves("%s:latest" % name).strip() == "nginx on Debian"
    finally:
        remove_repositories(name)
        remove_untagged(made)  # the images that lost their tags to later ones


def test_base_entrypoint_and_cmd_survive_a_commit(bake_base, tmp_path, docker_leftovers):
    base, name = unique("entry-base"), unique("entry")
    play = """
    - hosts: localhost
      gather_facts: false
      vars:
        ansible_python_interpreter: "{{ ansible_playbook_python }}"
      tasks:
        - name: base
          bakery.images.docker_image_build:
            action: import
            rootfs: "{{ rootfs }}"
            name: "{{ base }}"
            changes: {entrypoint: [/bin/echo, from-base], env: {BASEVAR: "1"}}
        - name: start
          bakery.images.docker_image_build:
            action: start
            name: "{{ name }}"
            base_image: "{{ base }}:latest"
            bake_id: "{{ bake_id }}"  # labels the build container: docker_leftovers knows it as this test's
          register: started
        - name: provision
          ansible.builtin.command: touch /provisioned
          delegate_to: "{{ started.container.name }}"
          vars:
            ansible_connection: community.docker.docker_api
            ansible_python_interpreter: /usr/bin/python3
        - name: commit
          bakery.images.docker_image_build:
            action: commit
            name: "{{ name }}"
            base_image: "{{ base }}:latest"
            container: "{{ started.container.id }}"
    """
    try:
        run = run_playbook(
            play,
            tmp_path,
            extra_vars={
                "rootfs": bake_base["rootfs"],
                "base": base,
                "name": name,
                "bake_id": "entry-" + uuid.uuid4().hex[:8],
            },
            args=[
                "-i",
                "localhost,",
                "-c",
                "local",
            ],  # the interpreter is a play var: delegation overrides it
        )
        assert run.rc == 0, run.explain()
        config = docker_client().images.get("%s:latest" % name).attrs["Config"]
        assert config["Entrypoint"] == ["/bin/echo", "from-base"]
        assert config["Cmd"] == ["bash"]
        assert "BASEVAR=1" in config["Env"]
        out = docker_client().containers.run("%s:latest" % name, remove=True).decode()
        assert out.strip() == "from-base bash"
        check = docker_client().containers.run(
            "%s:latest" % name, entrypoint=["ls", "/provisioned"], remove=True
        )
        assert check.decode().strip() == "/provisioned"
    finally:
        remove_repositories(name, base)


def test_provisioning_failure_leaves_no_container_and_says_where(bake_base, tmp_path, docker_leftovers):
    role = tmp_path / "roles" / "broken" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(
        "- name: Step that works\n  ansible.builtin.command: echo fine\n"
        "- name: Step that breaks\n  ansible.builtin.shell: echo last words; echo on stderr >&2; exit 3\n"
    )
    name = unique("broken")
    definition = container_bake(name, bake_base["cache_dir"])
    definition["provisioners"] = [{"role": "broken"}]
    run = bake(tmp_path, definition, env={"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")})
    assert run.rc != 0
    failure = run.task_result("Fail for the targets that failed")["msg"]
    assert (
        "target web failed in provision on builder bakery-web-builder, provisioner role broken, task 'Step that breaks'"
        in failure
    )
    assert "last words" in failure and "on stderr" in failure
    assert not docker_client().images.list(name=name)
    # docker_leftovers asserts that no build container is left


REGISTRY_PASSWORD = "s3cret-Registry-Passw0rd-7f3a"


def test_push_to_a_local_registry_and_pull_back(bake_base, tmp_path):
    from registry import start_registry

    url, stop = start_registry(tmp_path / "registry", user="pusher", password=REGISTRY_PASSWORD)
    name = "%s/bakery/pushed" % url
    auth = {"username": "pusher", "password": REGISTRY_PASSWORD}
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM bakery/debian:bookworm\nRUN echo pushed > /pushed\n")
    try:
        first = build(
            tmp_path, context, name, args=["-vvvv"], tags=["latest", "v1"], push=True, registry=auth
        )
        assert first.rc == 0, first.explain()
        pushed = first.task_result("build")["push"]
        assert sorted(pushed["pushed"]) == ["%s:latest" % name, "%s:v1" % name]
        assert REGISTRY_PASSWORD not in first.stdout + first.stderr

        client = docker_client()
        image_id = client.images.get("%s:v1" % name).id
        remove_repositories(name)
        pulled = client.images.pull(name, tag="v1", auth_config=auth)
        assert pulled.id == image_id
        assert (
            client.containers.run("%s:v1" % name, ["cat", "/pushed"], remove=True).decode().strip()
            == "pushed"
        )

        client.api.tag(image_id, name, "latest")
        again = build(tmp_path, context, name, tags=["latest", "v1"], push=True, registry=auth)
        assert again.rc == 0, again.explain()
        result = again.task_result("build")
        assert not result["changed"], result
        assert sorted(result["push"]["up_to_date"]) == ["%s:latest" % name, "%s:v1" % name]

        wrong = build(tmp_path, context, name, tags=["v2"], push=True, registry=dict(auth, password="wrong"))
        assert wrong.rc != 0
        assert "push of %s:v2 failed" % name in wrong.task_result("build")["msg"]
    finally:
        stop()
        remove_repositories(name)


IMPORT_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: import
      bakery.images.docker_image_build:
        action: import
        rootfs: "{{ rootfs }}"
        name: "{{ name }}"
        tags: [one]
        changes:  # a fingerprint no other image has
          env: {RACE: "{{ name }}"}
"""


def test_imports_of_one_rootfs_at_once_make_one_image_that_stays_tagged(bake_base, tmp_path):
    """Two bakes (or a test stream and a Molecule scenario) that import the same rootfs as the same name at
    the same time: one imports, the other finds its image; neither holds an id that lost its tag (the engine
    deletes an untagged parent with its last child, under a bake that still uses it)."""
    from concurrent.futures import ThreadPoolExecutor

    name = unique("import-race")
    runs = [tmp_path / str(n) for n in range(3)]
    for path in runs:
        path.mkdir()
    try:
        with ThreadPoolExecutor(len(runs)) as pool:
            results = list(
                pool.map(
                    lambda path: run_playbook(
                        IMPORT_PLAY,
                        path,
                        extra_vars={"rootfs": bake_base["rootfs"], "name": name},
                        args=LOCAL,
                    ),
                    runs,
                )
            )
        for run in results:
            assert run.rc == 0, run.explain()
        imports = [run.task_result("import") for run in results]
        assert sorted(result["built"] for result in imports) == [False, False, True], imports
        ids = {result["image"]["id"] for result in imports}
        assert len(ids) == 1, ids
        assert docker_client().images.get("%s:one" % name).id == ids.pop()
        assert len(docker_client().images.list(name=name)) == 1
    finally:
        remove_repositories(name)


def test_an_imported_rootfs_is_an_image_of_its_own_architecture(bake_base, tmp_path):
    """Docker records the engine's architecture for what it imports unless told: the image of an arm64 root
    filesystem would claim amd64, and engines and registries would run and list it as one. The import takes
    the architecture the rootfs's sidecar records. (The arm64 tree here is a single file: what it holds does
    not matter to the record, and the tests that run arm64 programs bake a real one.)"""
    import tarfile

    from ansible_collections.bakery.images.plugins.module_utils._files import write_sidecar

    foreign = tmp_path / "arm64.tar"
    marker = tmp_path / "marker"
    marker.write_text("arm64 tree\n")
    with tarfile.open(foreign, "w") as tar:
        tar.add(marker, arcname="marker")
    identity = uuid.uuid4().hex
    write_sidecar(str(foreign), {"architecture": "arm64", "fingerprint": identity})
    native, other = unique("import-native"), unique("import-arm64")
    try:
        reported = []
        for rootfs, name in ((bake_base["rootfs"], native), (str(foreign), other)):
            run = run_playbook(IMPORT_PLAY, tmp_path, extra_vars={"rootfs": rootfs, "name": name}, args=LOCAL)
            assert run.rc == 0, run.explain()
            reported.append(run.task_result("import")["image"]["architecture"])
        host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
        # the module reports each image's architecture (what the manifest records), with Debian's names
        assert reported == [host.stdout.strip(), "arm64"]
        assert docker_client().images.get("%s:one" % native).attrs["Architecture"] == host.stdout.strip()
        image = docker_client().images.get("%s:one" % other).attrs
        assert (image["Os"], image["Architecture"]) == ("linux", "arm64")
        assert "RACE=%s" % other in image["Config"]["Env"]  # the import's changes and labels are kept
        # and the image the engine first made of it (recorded as its own architecture) is gone
        made = docker_client().images.list(all=True, filters={"label": "org.bakery.rootfs=%s" % identity})
        assert [each.id for each in made] == [image["Id"]]
    finally:
        remove_repositories(native, other)


PUBLISH_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: import
      bakery.images.docker_image_build:
        action: import
        rootfs: "{{ rootfs }}"
        name: "{{ name }}"
        tags: [latest, v1]
        changes: {env: {UNIQUE: "{{ name }}"}}
        publish: false
        push: true
        registry: "{{ registry }}"
"""


def test_an_image_to_verify_stays_untagged_and_unpushed_until_it_is_published(bake_base, tmp_path):
    from registry import start_registry

    url, stop = start_registry(tmp_path / "registry", user="pusher", password=REGISTRY_PASSWORD)
    name = "%s/bakery/verified" % url
    auth = {"username": "pusher", "password": REGISTRY_PASSWORD}
    params = {"rootfs": bake_base["rootfs"], "name": name, "registry": auth}
    try:
        made = run_playbook(PUBLISH_PLAY, tmp_path, extra_vars=params)
        assert made.rc == 0, made.explain()
        result = made.task_result("import")
        assert result["built"] and result["published"] is False and "push" not in result
        image_id = result["image"]["id"]
        client = docker_client()
        # untagged, carrying its fingerprint: nothing under the repository's tags, nothing in the registry
        assert client.api.images(name=name) == []
        assert client.api.inspect_image(image_id)["RepoTags"] == []
        with pytest.raises(docker.errors.APIError):
            client.api.inspect_distribution("%s:v1" % name, auth_config=auth)
        # the same import again finds it by its fingerprint and still moves no tag
        again = run_playbook(PUBLISH_PLAY, tmp_path, extra_vars=params)
        assert again.task_result("import")["found"] and not again.task_result("import")["changed"]
        assert client.api.images(name=name) == []

        publish = """
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: publish
              bakery.images.docker_image_build:
                action: publish
                name: "{{ name }}"
                tags: [latest, v1]
                image: "{{ image }}"
                push: true
                registry: "{{ registry }}"
        """
        published = run_playbook(publish, tmp_path, extra_vars=dict(params, image=image_id))
        assert published.rc == 0, published.explain()
        result = published.task_result("publish")
        assert result["changed"] and sorted(result["tagged"]) == ["%s:latest" % name, "%s:v1" % name]
        assert sorted(result["push"]["pushed"]) == ["%s:latest" % name, "%s:v1" % name]
        assert client.api.inspect_image("%s:v1" % name)["Id"] == image_id
        # published twice: nothing moves, the registry has it
        twice = run_playbook(publish, tmp_path, extra_vars=dict(params, image=image_id))
        assert not twice.task_result("publish")["changed"]
        assert REGISTRY_PASSWORD not in made.stdout + published.stdout + twice.stdout
    finally:
        stop()
        remove_repositories(name)


# `id` that answers nothing, successfully, to its first two calls: what an engine busy with other bakes once made
# community.docker.docker_api's `id -u && id -g` before a file upload return, failing the builder as unreachable
SILENT_ID = """#!/bin/sh
calls=$(cat /tmp/id-calls 2>/dev/null || echo 0)
echo $((calls + 1)) > /tmp/id-calls
[ "$calls" -lt 2 ] && exit 0
exec /usr/bin/id "$@"
"""


@pytest.mark.parametrize(
    ("connection", "uploads"),
    [("bakery.images.docker_api", True), ("community.docker.docker_api", False)],
)
def test_the_builder_connection_uploads_files_when_id_first_answers_nothing(
    bake_base, tmp_path, connection, uploads
):
    """bakery's builders use bakery.images.docker_api: it asks again; the upstream connection gives up."""
    client = docker_client()
    container = client.containers.run(
        bake_base["image"],
        ["sleep", "infinity"],
        name=unique("silent-id").replace("/", "-"),
        detach=True,
        init=True,
    )
    try:
        script = tmp_path / "id"
        script.write_text(SILENT_ID)
        script.chmod(0o755)
        subprocess.run(["docker", "cp", str(script), "%s:/usr/local/bin/id" % container.name], check=True)
        play = """
        - hosts: all
          gather_facts: false
          tasks:
            - name: Upload a file
              ansible.builtin.copy:
                content: "uploaded\\n"
                dest: /uploaded
                mode: "0644"
        """
        run = run_playbook(
            play,
            tmp_path,
            args=[
                "-i",
                "%s," % container.name,
                "-e",
                "ansible_connection=%s ansible_python_interpreter=/usr/bin/python3" % connection,
            ],
        )
        calls = container.exec_run(["cat", "/tmp/id-calls"]).output.decode().strip()
        if uploads:
            assert run.rc == 0, run.explain()
            assert container.exec_run(["cat", "/uploaded"]).output == b"uploaded\n"
            assert int(calls) >= 4  # two silent answers, then the real ids
        else:
            assert run.rc != 0
            assert "Error while determining user and group ID" in run.stdout + run.stderr
    finally:
        container.remove(force=True)


INDEX_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: index
      bakery.images.docker_image_build:
        action: index
        name: "{{ name }}"
        tags: "{{ tags }}"
        manifests: "{{ manifests }}"
        registry: "{{ registry }}"
"""


def registry_manifest(url: str, repository: str, reference: str, auth: dict) -> tuple[str, dict]:
    """The registry's manifest (an index, here) of *reference* and its digest, read as a client reads it."""
    import base64

    request = urllib.request.Request(
        "http://%s/v2/%s/manifests/%s" % (url, repository, reference),
        headers={
            "Accept": "application/vnd.docker.distribution.manifest.list.v2+json, "
            "application/vnd.oci.image.index.v1+json",
            "Authorization": "Basic "
            + base64.b64encode(("%s:%s" % (auth["username"], auth["password"])).encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.headers["Docker-Content-Digest"], json.loads(reply.read())


# an emulated arm64 root filesystem and build container (about 10 minutes from an empty cache): make
# integration-emulated
@pytest.mark.emulated
def test_a_target_baked_for_two_architectures_is_one_multi_architecture_image(
    bake_base, tmp_path, docker_leftovers
):
    """architectures: [amd64, arm64] bakes the target in two build containers (the arm64 one emulated), pushes each
    image under <tag>-<arch> and then one index under the target's tag; docker run --platform picks the image of
    each architecture from it. The index, found as it is, is left alone; in check mode nothing is pushed.
    The arm64 base has exactly the options of the other arm64 tests (bookworm minbase, python3 and python3-apt), so
    that they share its rootfs in the cache."""
    from registry import start_registry

    url, stop = start_registry(tmp_path / "registry", user="pusher", password=REGISTRY_PASSWORD)
    repository = "bakery/multi-%s" % uuid.uuid4().hex[:8]
    name = "%s/%s" % (url, repository)
    auth = {"username": "pusher", "password": REGISTRY_PASSWORD}
    definition = {
        "name": "itest",
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        # a cheap provisioner: the emulated builder runs it (and Ansible's facts) at qemu-user speed
        "provisioners": [{"shell": {"inline": ["uname -m > /arch"]}}],
        "targets": [
            {
                "name": "multi",
                "architectures": ["amd64", "arm64"],
                "docker": {
                    "repository": name,
                    "tags": ["v1"],
                    "push": True,
                    "registry": auth,
                    "changes": {"cmd": ["cat", "/arch"]},
                },
            }
        ],
    }
    config = tmp_path / "docker-config"
    config.mkdir()
    cli = ["docker", "--config", str(config)]
    try:
        started = time.monotonic()
        first = bake(tmp_path, definition)
        print("bake of two architectures: %.1f s" % (time.monotonic() - started))
        assert first.rc == 0, first.explain()
        assert REGISTRY_PASSWORD not in first.stdout + first.stderr
        manifest = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())
        entries = {entry["target"]: entry for entry in manifest["artifacts"]}
        assert sorted(entries) == ["multi-amd64", "multi-arm64"]
        assert (entries["multi-amd64"]["architecture"], entries["multi-arm64"]["architecture"]) == (
            "amd64",
            "arm64",
        )
        digests = {}
        for arch in ("amd64", "arm64"):
            entry = entries["multi-" + arch]
            assert entry["tags"] == ["%s:v1-%s" % (name, arch)]
            (digests[arch],) = [
                ref.split("@", 1)[1] for ref in entry["repo_digests"] if ref.startswith(name + "@")
            ]
        assert digests["amd64"] != digests["arm64"]

        # the registry's index under the target's own tag lists both images, by their digests
        index_digest, index = registry_manifest(url, repository, "v1", auth)
        assert index["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
        listed = {
            "%s/%s" % (item["platform"]["os"], item["platform"]["architecture"]): item["digest"]
            for item in index["manifests"]
        }
        assert listed == {"linux/amd64": digests["amd64"], "linux/arm64": digests["arm64"]}
        # the manifest records the index (with the entry of the first architecture) and both images' digests
        recorded = entries["multi-amd64"]["index"]
        assert recorded["digest"] == index_digest and recorded["target"] == "multi"
        assert recorded["tags"] == ["%s:v1" % name] and recorded["images"] == ["multi-amd64", "multi-arm64"]
        assert {item["platform"]: item["digest"] for item in recorded["manifests"]} == listed
        assert "index" not in entries["multi-arm64"]
        summary = first.task_result("Artifact summary")["msg"]
        assert "index of multi: %s:v1  %s  linux/amd64, linux/arm64" % (name, index_digest[7:19]) in summary

        # docker run --platform runs the image of that architecture from the index (arm64 emulated)
        login = subprocess.run(
            [*cli, "login", "--username", "pusher", "--password-stdin", url],
            input=REGISTRY_PASSWORD,
            capture_output=True,
            text=True,
            check=False,
        )
        assert login.returncode == 0, login.stderr
        for platform, machine in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
            run = subprocess.run(
                [
                    *cli,
                    "run",
                    "--rm",
                    "--pull",
                    "always",
                    "--platform",
                    platform,
                    "%s:v1" % name,
                    "uname",
                    "-m",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert (run.returncode, run.stdout.strip()) == (0, machine), run.stderr
            # and the builder of that architecture ran the provisioner (the image's command prints what it wrote)
            run = subprocess.run(
                [*cli, "run", "--rm", "--platform", platform, "%s:v1" % name],
                capture_output=True,
                text=True,
                check=False,
            )
            assert run.stdout.strip() == machine, run.stderr

        # the index as it is is left alone (without a second bake: the module the bake runs for it, with the repo
        # digests the images have now: the pulls above gave each the index's digest too, not an image to list);
        # in check mode a tag without it would get one, and nothing is pushed
        images = [
            ref
            for tag in ("v1-amd64", "v1-arm64")
            for ref in docker_client().images.get("%s:%s" % (name, tag)).attrs["RepoDigests"]
        ]
        assert "%s@%s" % (name, index_digest) in images
        started = time.monotonic()
        again = run_playbook(
            INDEX_PLAY,
            tmp_path,
            extra_vars={"name": name, "tags": ["v1"], "manifests": images, "registry": auth},
            args=LOCAL,
        )
        assert again.rc == 0, again.explain()
        result = again.task_result("index")
        assert not result["changed"] and result["up_to_date"] == ["%s:v1" % name], result
        assert result["index"]["digest"] == index_digest
        check = run_playbook(
            INDEX_PLAY,
            tmp_path,
            extra_vars={"name": name, "tags": ["v1", "v2"], "manifests": images, "registry": auth},
            args=LOCAL + ["--check"],
        )
        result = check.task_result("index")
        assert check.rc == 0 and result["changed"] and result["pushed"] == ["%s:v2" % name], result
        print("the index found as it is, and in check mode: %.1f s" % (time.monotonic() - started))
        with pytest.raises(urllib.error.HTTPError, match="404"):
            registry_manifest(url, repository, "v2", auth)
        assert registry_manifest(url, repository, "v1", auth)[0] == index_digest
    finally:
        stop()
        remove_repositories(name)
