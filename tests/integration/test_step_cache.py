"""The per-step cache of docker targets on the real engine: a bake whose first provisioners are unchanged starts
from the state after them, a bake that failed in a provisioner restarts after the one before it, and the image
made from the cache has the files of the image made without it.

The first provisioner writes a random token into the image: a bake that ran it again would have another one.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import uuid

from conftest import BAKE_BASE, REPO, docker_client, remove_repositories, run_playbook

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
STEP_KEY_LABEL = "org.bakery.step-key"
# what a step writes that a bake without the cache writes differently: the first step's random token
RANDOM = "etc/bakery-step1"


def definition(cache_dir: str, repo: str, token: str, first: str, second: str) -> dict:
    return {
        "name": "steps",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        # no apt-get update in every bake: the test's time is the cache's
        "package_lists": "keep",
        "provisioners": [
            {
                "shell": {
                    "inline": [
                        "od -An -N16 -tx1 /dev/urandom | tr -d ' \\n' > /etc/bakery-step1",
                        'echo "one %s $FIRST" > /etc/bakery-one' % token,
                    ],
                    "environment": {"FIRST": first},
                }
            },
            {
                "shell": {
                    "inline": ['test "$SECOND" != broken', 'echo "two $SECOND" > /etc/bakery-two'],
                    "environment": {"SECOND": second},
                }
            },
        ],
        "targets": [{"name": "web", "docker": {"repository": repo, "changes": {"cmd": ["/bin/true"]}}}],
    }


def bake(tmp_path, bake_definition: dict, *args: str):
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": bake_definition}))
    return run_playbook(BAKE_PLAYBOOK, tmp_path, args=["-e", "@%s" % path, *args])


def step_cache(tmp_path) -> dict:
    (entry,) = json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"]
    return entry


def contents(image: str) -> dict[str, str]:
    """Every path of the image's file system (docker export of a container of it) with a digest of what it is:
    a regular file's content and mode, a link's target, a directory's mode."""
    client = docker_client()
    container = client.api.create_container(image, command=["/bin/true"])
    found: dict[str, str] = {}
    try:
        stream = client.api.export(container["Id"])
        with tarfile.open(fileobj=_Chunks(stream), mode="r|") as archive:
            for member in archive:
                if member.isfile():
                    data = archive.extractfile(member).read()
                    what = "file %o %s" % (member.mode, hashlib.sha256(data).hexdigest())
                elif member.issym() or member.islnk():
                    what = "link %s" % member.linkname
                else:
                    what = "%s %o" % (member.type, member.mode)
                found[member.name] = what
    finally:
        client.api.remove_container(container["Id"], force=True)
    return found


class _Chunks:
    """A file object over the chunks of an export stream (tarfile's stream mode reads from it)."""

    def __init__(self, chunks) -> None:
        self.chunks, self.buffer = iter(chunks), b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        if size < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def read(image: str, path: str) -> str:
    """A file of the image, from a container of it that never runs (the archive API, no logs to race)."""
    client = docker_client()
    container = client.api.create_container(image, command=["/bin/true"])
    try:
        stream = client.api.get_archive(container["Id"], path)[0]
        with tarfile.open(fileobj=_Chunks(stream), mode="r|") as archive:
            for member in archive:
                return archive.extractfile(member).read().decode()
    finally:
        client.api.remove_container(container["Id"], force=True)
    raise AssertionError("%s not in %s" % (path, image))


def step_images(keys: list[str]) -> dict[str, str]:
    """The step images with these keys: key -> image id."""
    client = docker_client()
    found = {}
    for key in keys:
        for image in client.api.images(all=True, filters={"label": "%s=%s" % (STEP_KEY_LABEL, key)}):
            found[key] = image["Id"]
    return found


def remove_images(made: list[str]) -> None:
    """The test's images, the last made first (the artifacts, children of the steps, before the steps, the
    deepest first); twice, since a parent goes only once its children went."""
    client = docker_client()
    for _attempt in range(2):
        for image in reversed(list(dict.fromkeys(made))):
            try:
                client.api.remove_image(image, force=True, noprune=False)
            except Exception:  # noqa: BLE001 - gone already, or still the parent of another test image
                pass


def test_a_bake_resumes_after_its_unchanged_steps(bake_base, tmp_path, docker_leftovers):
    repo = "bakery-test/steps-%s" % uuid.uuid4().hex[:8]
    token = uuid.uuid4().hex
    made: list[str] = []  # final images and step images of this test, removed at the end
    keys: list[str] = []
    first_def = definition(bake_base["cache_dir"], repo, token, "x", "a")
    try:
        first = bake(tmp_path, first_def)
        assert first.rc == 0, first.explain()
        entry = step_cache(tmp_path)
        made.append(entry["id"])
        assert entry["step_cache"]["steps"] == ["miss", "miss"] and entry["step_cache"]["resume"] == 0
        keys = first.task_result("Start the build container")["step_cache"]["keys"]
        assert len(keys) == 3
        kept = step_images(keys)
        assert set(kept) == set(keys[1:]), "a step image after each provisioner"
        made += kept.values()
        for key in keys[1:]:
            labels = docker_client().api.inspect_image(kept[key])["Config"]["Labels"]
            # cache, not a temporary resource of the bake, and no artifact (no tag, no fingerprint of its own)
            assert labels["bakery-temporary"] == "false" and not labels["bakery-bake-id"]
            assert not labels.get("org.bakery.fingerprint") and not labels.get("org.bakery.bake-id")
            assert not docker_client().api.inspect_image(kept[key])["RepoTags"]
        token_first = read(entry["id"], "/etc/bakery-step1")

        # only the last provisioner's variables change: the bake starts after the first one
        second_def = definition(bake_base["cache_dir"], repo, token, "x", "b")
        check = bake(tmp_path, second_def, "--check")
        assert check.rc == 0, check.explain()
        line = [line for line in check.task_result("Artifact summary")["msg"] if repo in line]
        assert line and "would resume after provisioner 1" in line[0], check.task_result("Artifact summary")[
            "msg"
        ]
        assert "provisioner 2 has no cached state" in line[0], line
        assert set(
            step_images(keys + check.task_result("Start the build container")["step_cache"]["keys"])
        ) == set(keys[1:]), "--check kept no step"

        second = bake(tmp_path, second_def)
        assert second.rc == 0, second.explain()
        resumed = step_cache(tmp_path)
        made.append(resumed["id"])
        assert resumed["step_cache"]["steps"] == ["hit", "miss"] and resumed["step_cache"]["resume"] == 1
        assert resumed["step_cache"]["image"] == kept[keys[1]]
        summary = second.task_result("Artifact summary")["msg"]
        assert any("steps 1 hit/1 miss, resumed after provisioner 1" in line for line in summary), summary
        assert read(resumed["id"], "/etc/bakery-step1") == token_first, "the first provisioner ran again"
        assert read(resumed["id"], "/etc/bakery-two") == "two b\n"
        second_keys = second.task_result("Start the build container")["step_cache"]["keys"]
        assert second_keys[:2] == keys[:2] and second_keys[2] != keys[2]
        made += step_images(second_keys[2:]).values()
        labels = docker_client().api.inspect_image(resumed["id"])["Config"]["Labels"]
        assert labels[STEP_KEY_LABEL] == "" and labels["org.bakery.step"] == ""

        # bake_force bypasses the cache: every provisioner runs; the image has the same files, the same
        # fingerprint and config
        forced = bake(tmp_path, second_def, "-e", "bake_force=true")
        assert forced.rc == 0, forced.explain()
        fresh = step_cache(tmp_path)
        made.append(fresh["id"])
        assert fresh["step_cache"]["steps"] == ["bypassed", "bypassed"]
        assert fresh["fingerprint"] == resumed["fingerprint"] and fresh["id"] != resumed["id"]
        assert read(fresh["id"], "/etc/bakery-step1") != token_first
        cached_files, fresh_files = contents(resumed["id"]), contents(fresh["id"])
        del cached_files[RANDOM], fresh_files[RANDOM]
        assert cached_files == fresh_files, sorted(set(cached_files.items()) ^ set(fresh_files.items()))[:20]
        config = {
            key: value
            for key, value in docker_client().api.inspect_image(resumed["id"])["Config"].items()
            if key not in ("Hostname", "Labels")
        }
        fresh_config = docker_client().api.inspect_image(fresh["id"])["Config"]
        assert config == {
            key: value for key, value in fresh_config.items() if key not in ("Hostname", "Labels")
        }
        assert {
            key: value
            for key, value in docker_client().api.inspect_image(resumed["id"])["Config"]["Labels"].items()
            if "bake-id" not in key
        } == {key: value for key, value in fresh_config["Labels"].items() if "bake-id" not in key}

        # a failure in provisioner 2 (after a changed provisioner 1), then the fixed bake: it restarts after 1
        broken_def = definition(bake_base["cache_dir"], repo, token, "y", "broken")
        broken = bake(tmp_path, broken_def)
        assert broken.rc != 0
        failure = broken.task_result("Fail for the targets that failed")["msg"]
        assert "target web failed in provision" in failure, failure
        broken_keys = broken.task_result("Start the build container")["step_cache"]["keys"]
        assert broken_keys[1] != keys[1]
        broken_steps = step_images(broken_keys)
        made += broken_steps.values()
        assert set(broken_steps) == {broken_keys[1]}, "the failed provisioner kept no state"
        token_broken = read(broken_steps[broken_keys[1]], "/etc/bakery-step1")

        fixed_def = definition(bake_base["cache_dir"], repo, token, "y", "c")
        fixed = bake(tmp_path, fixed_def)
        assert fixed.rc == 0, fixed.explain()
        after = step_cache(tmp_path)
        made.append(after["id"])
        made += step_images(fixed.task_result("Start the build container")["step_cache"]["keys"]).values()
        assert after["step_cache"]["steps"] == ["hit", "miss"]
        assert after["step_cache"]["image"] == broken_steps[broken_keys[1]]
        assert read(after["id"], "/etc/bakery-step1") == token_broken
        assert read(after["id"], "/etc/bakery-one") == "one %s y\n" % token
        assert read(after["id"], "/etc/bakery-two") == "two c\n"
        # docker_leftovers: no build container is left
    finally:
        remove_repositories(repo)
        remove_images(made)
        client = docker_client()
        for key in reversed(keys):
            for image in client.api.images(all=True, filters={"label": "%s=%s" % (STEP_KEY_LABEL, key)}):
                try:
                    client.api.remove_image(image["Id"], force=True, noprune=False)
                except Exception:  # noqa: BLE001
                    pass


def test_a_builder_that_resumes_leaves_the_order_of_the_others_alone(bake_base, tmp_path, docker_leftovers):
    """Two targets in one bake: ``resumed`` starts after its second provisioner, ``fresh`` (whose first one
    changed) from the base. Each must run its provisioners in their order: Ansible shares an include between
    hosts, and a builder that skipped the first positions once put the other's first provisioners after its
    later ones (a role making a user ran after the commands run as that user)."""
    repos = {name: "bakery-test/order-%s-%s" % (name, uuid.uuid4().hex[:8]) for name in ("resumed", "fresh")}
    run = uuid.uuid4().hex

    def order_definition(round_: str) -> dict:
        return {
            "name": "order",
            "cache_dir": bake_base["cache_dir"],
            "base": dict(BAKE_BASE),
            "package_lists": "keep",
            "provisioners": [
                {
                    "shell": {
                        "inline": ['echo "zero $ROUND" >> /etc/bakery-order'],
                        "environment": {"ROUND": round_},
                    },
                    "only": ["fresh"],
                },
                # RUN: this test's own step keys (an engine may hold the step images of an earlier run)
                {"shell": {"inline": ["echo one >> /etc/bakery-order"], "environment": {"RUN": run}}},
                {"shell": {"inline": ["echo two >> /etc/bakery-order"]}},
                {
                    "shell": {
                        "inline": ['echo "three $ROUND" >> /etc/bakery-order'],
                        "environment": {"ROUND": round_},
                    }
                },
            ],
            "targets": [
                {"name": "resumed", "docker": {"repository": repos["resumed"]}},
                {"name": "fresh", "docker": {"repository": repos["fresh"]}},
            ],
        }

    made: list[str] = []
    try:
        for round_ in ("1", "2"):
            result = bake(tmp_path, order_definition(round_))
            for started in result.task_results("Start the build container"):
                made += step_images(started.get("step_cache", {}).get("keys", [])).values()
            assert result.rc == 0, result.explain()
            entries = {
                entry["target"]: entry
                for entry in json.loads((tmp_path / "output" / "bake-manifest.json").read_text())["artifacts"]
            }
            made += [entry["id"] for entry in entries.values()]
            assert read(entries["resumed"]["id"], "/etc/bakery-order") == "one\ntwo\nthree %s\n" % round_
            assert read(entries["fresh"]["id"], "/etc/bakery-order") == "zero %s\none\ntwo\nthree %s\n" % (
                round_,
                round_,
            )
        assert entries["resumed"]["step_cache"]["steps"] == ["hit", "hit", "miss"]
        assert entries["fresh"]["step_cache"]["steps"] == ["miss"] * 4
    finally:
        for repo in repos.values():
            remove_repositories(repo)
        remove_images(made)


def test_no_state_is_kept_after_a_provisioner_that_acts_outside_the_builder(
    bake_base, tmp_path, docker_leftovers
):
    """A ``local`` provisioner runs in every bake that builds, and so do the ones after it: the states after it and
    after every later one are never a bake's start, and are not kept. The state before it is, and a changed last
    provisioner resumes there, running the local one again."""
    repo = "bakery-test/outside-%s" % uuid.uuid4().hex[:8]
    run = uuid.uuid4().hex
    log = tmp_path / "local.log"

    def outside_definition(round_: str) -> dict:
        return {
            "name": "outside",
            "cache_dir": bake_base["cache_dir"],
            "base": dict(BAKE_BASE),
            "package_lists": "keep",
            "provisioners": [
                # RUN: this test's own step keys (an engine may hold the step images of an earlier run)
                {"shell": {"inline": ["echo one > /etc/bakery-outside"], "environment": {"RUN": run}}},
                {
                    "local": {
                        "inline": ['echo "local $ROUND" >> "$LOG"'],
                        "environment": {"LOG": str(log), "ROUND": round_},
                    }
                },
                {
                    "shell": {
                        "inline": ['echo "three $ROUND" >> /etc/bakery-outside'],
                        "environment": {"ROUND": round_},
                    }
                },
            ],
            "targets": [{"name": "web", "docker": {"repository": repo}}],
        }

    made: list[str] = []
    try:
        keys: list[str] = []
        for round_ in ("1", "2"):
            result = bake(tmp_path, outside_definition(round_))
            (started,) = result.task_results("Start the build container")
            keys = started["step_cache"]["keys"]
            kept = step_images(keys)
            made += kept.values()
            assert result.rc == 0, result.explain()
            entry = step_cache(tmp_path)
            made.append(entry["id"])
            assert read(entry["id"], "/etc/bakery-outside") == "one\nthree %s\n" % round_
            # only the state after provisioner 1: a local provisioner (2) runs in every bake, and 3 after it
            assert list(kept) == [keys[1]], (kept, keys)
            assert len(
                result.task_results("Keep the build container's state after the provisioner (per-step cache)")
            ) == (1 if round_ == "1" else 0)
        assert entry["step_cache"]["steps"] == ["hit", "miss", "miss"] and entry["step_cache"]["resume"] == 1
        assert "provisioner 2 acts outside the builder" in entry["step_cache"]["reason"], entry["step_cache"]
        assert log.read_text() == "local 1\nlocal 2\n"
    finally:
        remove_repositories(repo)
        remove_images(made)


# ------------------------------------------------------------------------------------------------ chroot builders


def chroot_definition(cache_dir: str, run: str, second: str) -> dict:
    return {
        "name": "chrootsteps",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        "package_lists": "keep",
        "provisioners": [
            {
                "shell": {
                    "inline": [
                        "od -An -N16 -tx1 /dev/urandom | tr -d ' \\n' > /etc/bakery-step1",
                        'echo "one $RUN" > /etc/bakery-one',
                    ],
                    # RUN: this test's own step keys (the cache directory may hold an earlier run's entries)
                    "environment": {"RUN": run},
                }
            },
            {
                # kept as a layer over step 1: what it writes and what it removes
                "shell": {
                    "inline": ["echo middle > /etc/bakery-middle", "rm -r /etc/motd /usr/share/doc/apt"]
                },
            },
            {
                "shell": {
                    "inline": ['echo "two $SECOND" > /etc/bakery-two'],
                    "environment": {"SECOND": second},
                }
            },
        ],
        "targets": [
            {
                "name": "disk",
                "qemu": {"provision": "chroot", "name": "chrootsteps", "formats": ["raw"], "disk_size": "2G"},
            }
        ],
    }


def disk_tree(disk, into) -> dict[str, str]:
    """Every path of the disk's root file system (read with debugfs rdump, never mounted) with what it is: a
    regular file's content, mode and owner, a link's target, a directory's mode and owner."""
    from test_qemu import debugfs

    into.mkdir()
    out = debugfs(disk, "rdump / %s" % into)
    assert out.returncode == 0, out.stderr[-2000:]
    found: dict[str, str] = {}
    for path in sorted(into.rglob("*")):
        info = path.lstat()
        name = str(path.relative_to(into))
        if path.is_symlink():
            found[name] = "link %s" % path.readlink()
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[name] = "file %o %d:%d %s" % (info.st_mode, info.st_uid, info.st_gid, digest)
        else:
            found[name] = "%o %d:%d" % (info.st_mode, info.st_uid, info.st_gid)
    return found


def test_a_chroot_builder_resumes_from_its_sealed_steps(cache_dir, tmp_path):
    """A qemu target with provision: chroot: its tree after each provisioner is kept as a sealed zstd tarball (the
    first whole, the next a layer of what its provisioner changed); a bake whose first two provisioners are
    unchanged starts from the first tarball with the layer applied, and its disk has the files of the disk a bake
    without the cache makes."""
    import shutil

    run = uuid.uuid4().hex
    steps_dir = cache_dir / "rootfs-steps"
    keys: list[str] = []
    try:
        first = bake(tmp_path, chroot_definition(str(cache_dir), run, "a"))
        assert first.rc == 0, first.explain()
        entry = step_cache(tmp_path)
        assert entry["step_cache"]["steps"] == ["miss"] * 3 and entry["step_cache"]["resume"] == 0
        keys = first.task_result("Unpack the root filesystem into the chroot work directory")["step_cache"][
            "keys"
        ]
        assert len(keys) == 4
        seals = []
        for position, key in enumerate(keys[1:], start=1):
            # the first step whole, the next ones layers over the step before
            name = "%s.tar.zst" % key if position == 1 else "%s.layer.tar.zst" % key
            seal = json.loads((steps_dir / (name + ".seal")).read_text())
            tarball = steps_dir / name
            assert seal["size"] == tarball.stat().st_size
            assert seal["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
            assert tarball.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", "a zstd tarball"
            seals.append(seal)
        assert "parent" not in seals[0], "the first step is kept whole"
        assert seals[1]["parent"] == keys[1] and seals[1]["parent_sha256"] == seals[0]["sha256"]
        assert seals[2]["parent"] == keys[2] and seals[2]["depth"] == 2
        assert seals[1]["deleted"] == ["./etc/motd", "./usr/share/doc/apt"]
        assert seals[1]["size"] * 100 < seals[0]["size"], "a layer holds what its provisioner changed"
        disk = tmp_path / "output" / "chrootsteps.raw"
        from test_qemu import debugfs

        token = debugfs(disk, "cat /etc/bakery-step1").stdout
        assert len(token) == 32, token

        # only the last provisioner's variables change: the bake starts after the first one
        check = bake(tmp_path, chroot_definition(str(cache_dir), run, "b"), "--check")
        assert check.rc == 0, check.explain()
        line = [line for line in check.task_result("Artifact summary")["msg"] if " qemu " in line]
        assert line and "would resume after provisioner 2" in line[0], check.task_result("Artifact summary")[
            "msg"
        ]
        assert "provisioner 3 has no cached state" in line[0], line

        second = bake(tmp_path, chroot_definition(str(cache_dir), run, "b"))
        assert second.rc == 0, second.explain()
        resumed = step_cache(tmp_path)
        assert (
            resumed["step_cache"]["steps"] == ["hit", "hit", "miss"] and resumed["step_cache"]["resume"] == 2
        )
        assert resumed["step_cache"]["image"] == str(steps_dir / ("%s.layer.tar.zst" % keys[2]))
        summary = second.task_result("Artifact summary")["msg"]
        assert any("steps 2 hit/1 miss, resumed after provisioner 2" in line for line in summary), summary
        assert debugfs(disk, "cat /etc/bakery-step1").stdout == token, "the first provisioner ran again"
        assert debugfs(disk, "cat /etc/bakery-two").stdout == "two b\n"
        assert debugfs(disk, "cat /etc/bakery-middle").stdout == "middle\n"
        assert "File not found" in debugfs(disk, "stat /etc/motd").stderr, (
            "the layer's deletions were applied"
        )
        second_keys = second.task_result("Unpack the root filesystem into the chroot work directory")[
            "step_cache"
        ]["keys"]
        assert second_keys[:3] == keys[:3] and second_keys[3] != keys[3]
        keys += second_keys[3:]
        cached_files = disk_tree(disk, tmp_path / "resumed")

        # bake_force bypasses the cache: every provisioner runs, the disk has the same files (but the token)
        forced = bake(tmp_path, chroot_definition(str(cache_dir), run, "b"), "-e", "bake_force=true")
        assert forced.rc == 0, forced.explain()
        fresh = step_cache(tmp_path)
        assert fresh["step_cache"]["steps"] == ["bypassed"] * 3
        assert fresh["fingerprint"] == resumed["fingerprint"]
        assert debugfs(disk, "cat /etc/bakery-step1").stdout != token
        fresh_files = disk_tree(disk, tmp_path / "fresh")
        del cached_files[RANDOM], fresh_files[RANDOM]
        assert cached_files == fresh_files, sorted(set(cached_files.items()) ^ set(fresh_files.items()))[:20]
        assert len(fresh_files) > 1000, "the whole tree was read"
        assert not list(cache_dir.glob("qemu/*-disk")), "the work directories went"

        # a killed bake's entry (no seal) goes with prune_step_cache, and so does every sealed one with keep 0
        (steps_dir / ("%s.tar.zst" % ("0" * 64))).write_bytes(b"half a tree")
        keys.append("0" * 64)
        pruned = run_playbook(
            REPO / "playbooks" / "prune_step_cache.yml",
            tmp_path,
            args=[
                "-e",
                "@%s" % (tmp_path / "bake.json"),
                "-e",
                "prune_docker=false",
                "-e",
                "step_cache_keep=0",
            ],
        )
        assert pruned.rc == 0, pruned.explain()
        assert not list(steps_dir.glob("*.tar.zst*")), sorted(steps_dir.iterdir())
    finally:
        shutil.rmtree(tmp_path / "resumed", ignore_errors=True)
        shutil.rmtree(tmp_path / "fresh", ignore_errors=True)
        for key in keys[1:]:
            for name in ("%s.tar.zst" % key, "%s.layer.tar.zst" % key):
                (steps_dir / name).unlink(missing_ok=True)
                (steps_dir / (name + ".seal")).unlink(missing_ok=True)
