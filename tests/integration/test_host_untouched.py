"""Real roles bake safely: a role written for booted systems (files/roles/hostile: it mounts /proc with
hidepid=2, sets kernel parameters live, loads a module, starts and enables a service, sets the host name, adds
a packet filter rule, notifies a restart handler, leaves a process running, sizes its configuration by the
processor and memory facts) bakes into a Docker image, a disk provisioned in the isolated root filesystem
(``provision: chroot``) and a disk provisioned in a VM (``provision: vm``, TCG), in one bake, and the build
host's live state (host_state: kernel parameters, mounts, processes, packet filter, network, resolv.conf, host
name, modules, clock) is the same afterwards. What the role configures is in the images; a second bake is
found up to date and changes nothing either. And a run SIGKILLed while such a role runs in the isolated
builder leaves no mount behind, for the janitor to remove its work directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import host_state
from conftest import BAKE_BASE, REPO, docker_client, loops_and_mounts, remove_repositories, run_playbook
from crash import Run, write_role
from test_qemu import debugfs

BAKE_PLAYBOOK = REPO / "playbooks" / "bake.yml"
JANITOR = REPO / "playbooks" / "janitor.yml"
ROLES = Path(__file__).parent / "files" / "roles"
SYSCTLS = {
    "net.ipv4.ip_forward": "0",
    "vm.swappiness": "10",
    "kernel.kptr_restrict": "2",
    "fs.protected_regular": "2",
}
FSTAB_PROC = re.compile(r"^proc\s+/proc\s+proc\s+hidepid=2\s", re.MULTILINE)
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/hostile-marker.service"


def hostile_bake(tmp_path: Path, cache_dir: str, marker: str) -> tuple[dict, str]:
    repo = "bakery-test/hostile-%s" % uuid.uuid4().hex[:8]
    definition = {
        "name": "hostile",
        "cache_dir": cache_dir,
        "base": dict(BAKE_BASE),
        "provisioners": [{"role": "hostile", "vars": {"hostile_marker": marker}}],
        "targets": [
            {"name": "docker", "docker": {"repository": repo, "tags": ["latest"]}},
            {
                "name": "rootfs",
                "qemu": {
                    "provision": "chroot",
                    "name": "hostile-rootfs",
                    "formats": ["qcow2"],
                    "disk_size": "2G",
                },
            },
            {
                "name": "vm",
                "qemu": {
                    "provision": "vm",
                    "name": "hostile-vm",
                    "formats": ["qcow2"],
                    "disk_size": "2G",
                    "vm": {"accelerator": "tcg", "memory": 1024, "cpus": 1, "boot_timeout": 900},
                },
            },
        ],
    }
    return definition, repo


def bake(tmp_path: Path, definition: dict, bake_id: str):
    path = tmp_path / "bake.json"
    path.write_text(json.dumps({"bake": definition}))
    return run_playbook(
        BAKE_PLAYBOOK,
        tmp_path,
        args=["-e", "@%s" % path, "-e", "bake_id=%s" % bake_id],
        env={"ANSIBLE_ROLES_PATH": str(ROLES)},
        timeout=2400,
    )


def disk_files(disk: Path, scratch: Path) -> dict[str, str]:
    """The files of the disk the test looks at (``<absent>`` for one it does not hold): read with debugfs from
    a raw copy of the qcow2, without mounting it."""
    raw = scratch / (disk.stem + ".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True, capture_output=True)
    try:
        found = {}
        for path in (
            "/etc/sysctl.d/90-hostile.conf",
            "/etc/fstab",
            "/etc/hostile-builder-type",
            "/etc/hostile.conf",
        ):
            out = debugfs(raw, "cat %s" % path)
            found[path] = out.stdout if out.stdout or "not found" not in out.stderr else "<absent>"
        for path in (UNIT_LINK, "/usr/local/lib/bakery"):
            out = debugfs(raw, "stat %s" % path)
            found[path] = "<absent>" if "File not found" in out.stderr + out.stdout else out.stdout
        return found
    finally:
        raw.unlink()


def image_file(image: str, path: str) -> str:
    try:
        return docker_client().containers.run(image, ["cat", path], remove=True).decode()
    except Exception as error:  # noqa: BLE001 - the container's failure is the finding
        return "<%s>" % str(error)[:300]


def sysctl_problems(where: str, text: str) -> list[str]:
    lines = {re.sub(r"\s*=\s*", "=", line.strip()) for line in text.splitlines()}
    return ["%s: no %s=%s in 90-hostile.conf: %r" % (where, key, value, text[:300])
            for key, value in SYSCTLS.items() if "%s=%s" % (key, value) not in lines]  # fmt: skip


def test_a_hostile_role_bakes_three_targets_and_the_host_is_untouched(
    bake_base, cache_dir, tmp_path, docker_leftovers
):
    marker = "hostile-marker-%s" % uuid.uuid4().hex[:10]
    definition, repo = hostile_bake(tmp_path, bake_base["cache_dir"], marker)
    bake_id = "hostile-%s" % uuid.uuid4().hex[:8]
    workdirs = cache_dir / "qemu"
    markers = [marker, bake_id, str(tmp_path), "%s/%s" % (workdirs, bake_id), "sleep 31337"]
    watched = (cache_dir, tmp_path)
    mounts_before = loops_and_mounts(*watched)
    problems: list[str] = []
    before = host_state.snapshot(markers)
    try:
        started = time.monotonic()
        first = bake(tmp_path, definition, bake_id)
        seconds = time.monotonic() - started
        after = host_state.snapshot(markers)
        problems += ["host changed by the bake: %s" % line for line in host_state.diff(before, after)]
        print("first bake: %.0f s, rc %d" % (seconds, first.rc))
        if first.rc != 0:
            failure = first.task_results("Fail for the targets that failed")
            problems.append(
                "the bake failed: %s"
                % (failure[0]["msg"] if failure else first.stdout[-3000:] + first.stderr[-1000:])
            )
        output = tmp_path / "output"

        # what the role configured is in each image, and nothing of the builder's machinery
        for target, name, builder_type in (
            ("rootfs", "hostile-rootfs", "rootfs"),
            ("vm", "hostile-vm", "vm"),
        ):
            disk = output / ("%s.qcow2" % name)
            if not disk.exists():
                problems.append("%s: no disk %s" % (target, disk))
                continue
            files = disk_files(disk, tmp_path)
            problems += sysctl_problems(target, files["/etc/sysctl.d/90-hostile.conf"])
            if not FSTAB_PROC.search(files["/etc/fstab"]):
                problems.append("%s: no hidepid proc line in /etc/fstab: %r" % (target, files["/etc/fstab"]))
            if files[UNIT_LINK] == "<absent>":
                problems.append("%s: the unit was not enabled (%s absent)" % (target, UNIT_LINK))
            if files["/usr/local/lib/bakery"] != "<absent>":
                problems.append("%s: /usr/local/lib/bakery is in the image" % target)
            if files["/etc/hostile-builder-type"].strip() != builder_type:
                problems.append(
                    "%s: builder type %r, not %r" % (target, files["/etc/hostile-builder-type"], builder_type)
                )
        image = "%s:latest" % repo
        if not docker_client().images.list(name=repo):
            problems.append("docker: no image %s" % image)
        else:
            problems += sysctl_problems("docker", image_file(image, "/etc/sysctl.d/90-hostile.conf"))
            fstab = image_file(image, "/etc/fstab")
            if not FSTAB_PROC.search(fstab):
                problems.append("docker: no hidepid proc line in /etc/fstab: %r" % fstab)
            kind = image_file(image, "/etc/hostile-builder-type").strip()
            if kind != "container":
                problems.append("docker: builder type %r, not 'container'" % kind)

        # the same bake again: every target found up to date, and the host still untouched
        again_id = "hostile-%s" % uuid.uuid4().hex[:8]
        markers_again = markers + [again_id, "%s/%s" % (workdirs, again_id)]
        before_again = host_state.snapshot(markers_again)
        again = bake(tmp_path, definition, again_id)
        problems += [
            "host changed by the second bake: %s" % line
            for line in host_state.diff(before_again, host_state.snapshot(markers_again))
        ]
        if again.rc != 0:
            problems.append("the second bake failed: %s" % again.stdout[-2000:])
        for target in ("docker", "rootfs", "vm"):
            stats = again.stats.get("bakery-%s" % target, {})
            if stats.get("changed", -1) != 0 or "bakery-%s-builder" % target in again.stats:
                problems.append("second bake: target %s not found up to date: %s" % (target, stats))

        # nothing leaked: work directories, mounts and loop devices under the cache, processes
        # (docker_leftovers: build containers)
        for each in (bake_id, again_id):
            left = sorted(str(path) for path in workdirs.glob("%s-*" % each))
            if left:
                problems.append("work directories left: %s" % left)
        if loops_and_mounts(*watched) != mounts_before:
            problems.append("mounts or loop devices left: %s" % (loops_and_mounts(*watched),))
        if problems:
            # put back what the host can have back, so that a failing run does not leave other tests' host
            # changed (a hostname, ip_forward, a process), then fail with the whole list
            problems += [
                "restore: %s" % line for line in host_state.restore(before, host_state.snapshot(markers))
            ]
        assert not problems, "\n".join(problems)
    finally:
        remove_repositories(repo)


# The crash: a role that mounts (the isolated builder cannot: the task may fail, the role goes on) and then
# holds the builder, killed at the hold; the bubblewrap sandbox's mounts go with its processes.
MOUNT_ROLE = """
- name: Mount /proc with hidepid=2
  ansible.posix.mount:
    path: /proc
    src: proc
    fstype: proc
    opts: hidepid=2
    state: ephemeral
  register: hold_mount
  ignore_errors: true

- name: Hold the builder
  ansible.builtin.command: sleep 300
  changed_when: false
"""


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as handle:
        return sorted(point for point in (line.split()[1] for line in handle) if point.startswith(prefix))


def test_sigkill_while_a_role_mounts_in_the_isolated_builder_leaves_no_mount(bake_base, cache_dir, tmp_path):
    write_role(tmp_path, MOUNT_ROLE, name="hold_mount")
    bake_id = "hostile-crash-%s" % uuid.uuid4().hex[:6]
    definition = {
        "name": "hostile-crash",
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        "provisioners": [{"role": "hold_mount"}],
        "targets": [
            {"name": "rootfs", "qemu": {"provision": "chroot", "formats": ["qcow2"], "disk_size": "2G"}}
        ],
    }
    bake_file = tmp_path / "bake.json"
    bake_file.write_text(json.dumps({"bake": definition}))
    env = {"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    workdir = cache_dir / "qemu" / ("%s-rootfs" % bake_id)
    run = Run([str(BAKE_PLAYBOOK), "-e", "@%s" % bake_file, "-e", "bake_id=%s" % bake_id], tmp_path, env=env)
    try:
        run.wait_for(r"TASK \[hold_mount : Hold the builder\]", timeout=900)
        time.sleep(3)  # the sleep runs in the builder
        run.kill()
        assert workdir.is_dir(), (
            "the chroot work directory should exist at the kill:\n%s" % run.output[-2000:]
        )
        assert mounts_below(workdir) == [], "mounts left below the killed bake's work directory"

        janitor = run_playbook(
            JANITOR, tmp_path, args=["-e", "@%s" % bake_file, "-e", "janitor_bake_id=%s" % bake_id], env=env
        )
        assert janitor.rc == 0, janitor.explain()
        removed = janitor.task_result("Find and remove the temporary resources")
        assert removed["changed"], removed["resources"]
        assert ("qemu", "workdir", str(workdir)) in {
            (entry["backend"], entry["kind"], entry["id"]) for entry in removed["resources"]
        }, removed["resources"]
        assert not workdir.exists()
        again = run_playbook(
            JANITOR, tmp_path, args=["-e", "@%s" % bake_file, "-e", "janitor_bake_id=%s" % bake_id], env=env
        )
        assert again.rc == 0, again.explain()
        second = again.task_result("Find and remove the temporary resources")
        assert not second["changed"] and second["resources"] == [], second["resources"]
    finally:
        if run.proc.poll() is None:
            run.kill()
        # a mount the bake left on the host (a builder that is not isolated): this test's, so it goes
        for point in reversed(mounts_below(workdir) if workdir.exists() else []):
            subprocess.run(["umount", "-l", point], check=False)
        if workdir.exists():  # the test failed before its janitor run
            run_playbook(
                JANITOR, tmp_path, args=["-e", "@%s" % bake_file, "-e", "janitor_bake_id=%s" % bake_id]
            )
