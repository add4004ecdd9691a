# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-step cache of VM builders (qemu targets with ``provision: vm``): a qcow2 overlay chain.

After provisioner *i* (and its handlers) the guest is flushed and frozen (``fsfreeze``: ext4 writes its journal
out and marks itself clean, so the layer is a cleanly unmounted file system, not a crash image), the bake's
builder key is taken out of the guest's ``authorized_keys`` files for that moment (it lives on only in ``/run``),
and qemu takes an external snapshot (QMP ``blockdev-snapshot-sync`` onto an overlay made beforehand,
``<workdir>/disk-<i>.qcow2``): the disk up to now becomes a read-only layer and the VM goes on writing into the new
overlay. ``<workdir>/top.qcow2``, a symbolic link, names the top of the chain (what capture converts, its backing
chain followed). No file the VM has open is ever renamed or replaced: qemu reopens the old top read-only *by its
name* at a snapshot, so a name that had come to mean another file (the new overlay, say) would put that file under
the VM's disk in place of the layer, and the guest would read and write a corrupt file system from then on.
The guest is thawed and gets its key back. The frozen layer is copied into ``<cache_dir>/vm-steps/<key>.qcow2`` under a temporary name, its
backing file named relatively (``<parent key>.qcow2``: the layer of the step before, none for step 1, whose
layer is the whole base disk), synced and sealed as the chroot entries are (key, position, size, sha256, then
the parent's key and the sha256 of the parent's file): a killed bake's entry has no seal and is never used.

A layer is used only with its whole chain: each layer below it sealed, holding what its seal records, named
by the chain key of the step before, and with the content its child's seal recorded (a parent that changed or
went invalidates every layer above it). A bake that resumes boots a fresh overlay over the deepest such layer,
with its key given as a systemd credential (the kept layers hold no key), and keeps the later steps over it.
The work directory records which cached layer its disk stands on (``vm-steps.json``), so that a layer is only
kept over the very parent it was written on.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from ansible_collections.bakery.images.plugins.module_utils import _qemu_vm, _step_cache
from ansible_collections.bakery.images.plugins.module_utils._files import atomic_output, write_json_atomic
from ansible_collections.bakery.images.plugins.module_utils._hygiene import key_body
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

VM_STEPS = "vm-steps"
LAYER_SUFFIX = ".qcow2"
# the VM's disk in the target's work directory (what launch_vm boots), the overlay of each kept step over it, and
# the link to the chain's top (what capture converts)
DISK = "disk.qcow2"
STEP_DISK = "disk-%d.qcow2"
TOP = "top.qcow2"
CHAIN_FILE = "vm-steps.json"
MIB = 1024**2
# a chain deeper than this is a loop (a seal naming itself as an ancestor)
MAX_DEPTH = 1000

# Run in the guest (as root) while the host takes the snapshot: the builder's key leaves the authorized_keys
# files (kept in /run, a tmpfs), journald leaves /var, the file system is synced and frozen, "frozen" is said, and
# on the host's answer (or when the connection goes) the file system is thawed, journald back on /var and the key
# put back.
FREEZE_SCRIPT = r"""
set -eu
body=%(body)s
home=%(home)s
kept=/run/bakery-step-keys
umask 077
mkdir -p "$kept"
journal=no
thaw() {
  fsfreeze -u / 2>/dev/null || true
  if [ "$journal" = yes ]; then journalctl --flush 2>/dev/null || true; fi
  for name in authorized_keys authorized_keys2; do
    if [ -f "$kept/$name" ]; then cp -p "$kept/$name" "$home/.ssh/$name"; fi
  done
  rm -rf "$kept"
}
trap thaw EXIT
trap 'exit 1' HUP INT TERM PIPE
for name in authorized_keys authorized_keys2; do
  file="$home/.ssh/$name"
  [ -f "$file" ] || continue
  cp -p "$file" "$kept/$name"
  grep -vF -- "$body" "$kept/$name" > "$kept/$name.without" || true
  if [ -s "$kept/$name.without" ]; then cat "$kept/$name.without" > "$file"; else rm -f "$file"; fi
  rm -f "$kept/$name.without"
done
# journald closes its files on /var cleanly and writes to /run meanwhile: a boot from the layer finds them closed,
# not in use (which it would set aside as *.journal~ and start anew: a file the disk made without the cache lacks)
if command -v journalctl >/dev/null 2>&1 && journalctl --relinquish-var 2>/dev/null; then journal=yes; fi
sync
fsfreeze -f /
echo frozen
read -r answer || true
"""


def vm_steps_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, VM_STEPS)


def layer_path(directory: str, key: str) -> str:
    return os.path.join(directory, key + LAYER_SUFFIX)


def _qemu_img(argv: list[str], what: str, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(
            ["qemu-img", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, LC_ALL="C"),
        )
    except FileNotFoundError:
        raise BakeryError("%s needs qemu-img (Debian package qemu-utils)" % what) from None
    except subprocess.TimeoutExpired:
        raise BakeryError("%s timed out after %d s" % (what, timeout)) from None
    if proc.returncode != 0:
        raise BakeryError("%s failed: %s" % (what, (proc.stderr or proc.stdout).strip()[-400:]))
    return proc.stdout


def image_info(path: str) -> dict[str, Any]:
    """``qemu-img info`` of one image (not its chain); shared with a VM that has it open."""
    return json.loads(_qemu_img(["info", "-U", "--output=json", path], "reading %s" % path))


def backing_of(path: str) -> str | None:
    """The backing file the image's header names, as written (None: it has none)."""
    try:
        info = image_info(path)
    except (BakeryError, ValueError):
        return ""  # unreadable: no valid layer
    if info.get("format") != "qcow2":
        return ""
    return info.get("backing-filename") or None


# ---------------------------------------------------------------- the chain in the cache


def valid_chain(directory: str, keys: list[str], position: int) -> list[str] | None:
    """The paths of the layers of step *position* and below (its first), when the whole chain is sound: each
    layer sealed for ``keys[i]`` at position *i*, holding what its seal records (sha256), naming the layer of
    ``keys[i-1]`` as its backing file (none at position 1), whose file has the sha256 the layer's seal recorded.
    None otherwise."""
    if not 0 < position < len(keys) or position > MAX_DEPTH:
        return None
    paths: list[str] = []
    child_parent_sha: str | None = None
    for at in range(position, 0, -1):
        path = layer_path(directory, keys[at])
        seal = _step_cache.read_seal(path, LAYER_SUFFIX)
        if seal is None or int(seal.get("position") or 0) != at:
            return None
        if child_parent_sha is not None and seal.get("sha256") != child_parent_sha:
            return None  # the layer below changed since its child was written on it
        parent = keys[at - 1] if at > 1 else None
        if seal.get("parent") != parent:
            return None
        if backing_of(path) != (parent + LAYER_SUFFIX if parent else None):
            return None
        if not _step_cache.verified(path, seal):
            return None
        child_parent_sha = seal.get("parent_sha256") if parent else None
        if parent and not isinstance(child_parent_sha, str):
            return None
        paths.append(path)
    return paths


def find_vm_step(directory: str | None, keys: list[str]) -> tuple[int, list[str]]:
    """The deepest step (1..len(keys)-1) whose layer's chain is sound, with the chain's paths (its layer first);
    (0, []) if none."""
    if not directory or not os.path.isdir(directory):
        return 0, []
    for position in range(len(keys) - 1, 0, -1):
        if not os.path.exists(_step_cache.seal_path(layer_path(directory, keys[position]))):
            continue
        chain = valid_chain(directory, keys, position)
        if chain:
            return position, chain
    return 0, []


def read_chain_state(workdir: str) -> dict[str, Any]:
    """Which cached layer the work directory's disk stands on: ``top`` (position, key, sha256) or None, and which
    file of the work directory the VM writes into now (``active``, a name; absent: ``disk.qcow2``)."""
    try:
        with open(os.path.join(workdir, CHAIN_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {"top": None}
    return data if isinstance(data, dict) else {"top": None}


def write_chain_state(workdir: str, top: Mapping[str, Any] | None, active: str = DISK) -> None:
    write_json_atomic(
        os.path.join(workdir, CHAIN_FILE), {"top": dict(top) if top else None, "active": active}
    )


def link_top(workdir: str, name: str) -> None:
    """Point ``<workdir>/top.qcow2`` at *name* (a file of the work directory), atomically: the link is replaced, never
    a file the VM has open."""
    link = os.path.join(workdir, TOP)
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, link)


def broken_layers(directory: str | None) -> list[str]:
    """Sealed layers whose parent layer has no valid seal or another content than recorded (they are never
    used), found over and over until none is left (a layer over a broken one is broken too)."""
    return _step_cache.broken_entries(directory, LAYER_SUFFIX)


def prune(directory: str | None, max_size: int, check_mode: bool = False) -> dict[str, Any]:
    """Remove what no bake will use (unsealed layers, stray seals, old partial writes, layers over a broken
    parent), then the sealed layers beyond *max_size* (0: all of them)."""
    pruned = _step_cache.prune_rootfs_steps(directory, max_size, check_mode, suffix=LAYER_SUFFIX)
    broken = broken_layers(directory)
    if not check_mode:
        for path in broken:
            _step_cache.remove_entry(path)
    pruned["unsealed"] = sorted(set(pruned["unsealed"]) | set(broken))
    pruned["evicted"] = [path for path in pruned["evicted"] if path not in broken]
    return pruned


# ---------------------------------------------------------------- the actions


def _cache_of(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], str | None]:
    keys = [str(key) for key in params.get("step_keys") or []]
    cache = _step_cache.step_cache_params(params)
    directory = vm_steps_dir(cache["dir"]) if cache["dir"] else None
    return cache, keys, directory


def resume_action(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Where the builder VM starts: the deepest sound layer chain of its steps (a fresh overlay over it becomes
    ``<workdir>/disk.qcow2``), else the disk is made from the base as without a cache (the caller's next task).
    Says where, and why (also in check mode, which makes nothing)."""
    workdir = params.get("workdir")
    if not workdir:
        raise BakeryError("qemu_image: action=vm_resume needs workdir")
    workdir = os.path.abspath(str(workdir))
    cache, keys, directory = _cache_of(params)
    from_image = bool(params.get("image"))
    enabled = cache["enabled"] and not from_image
    resume, chain = find_vm_step(directory, keys[: cache["max_resume"] + 1]) if enabled and keys else (0, [])
    steps_total = max(len(keys) - 1, 0)
    reason = _step_cache.resume_reason(
        resume, steps_total, enabled, bool(params.get("force")), cache["max_resume"]
    )
    if from_image and cache["enabled"]:
        reason = (
            "the step cache of a VM builder needs a disk made from the bake's root filesystem (base_image)"
        )
    cached = dict(
        cache,
        enabled=enabled,
        keys=keys,
        resume=resume,
        image=chain[0] if chain else None,
        reason=reason,
        steps=_step_cache.step_states(resume, steps_total, enabled),
    )
    result: dict[str, Any] = {"workdir": workdir, "disk": os.path.join(workdir, DISK), "resume": resume}
    if keys:
        result["step_cache"] = cached
    if not check_mode:
        os.makedirs(workdir, exist_ok=True)
        # capture converts the chain's top: the disk until a step is kept over it
        link_top(workdir, DISK)
    if check_mode or not resume:
        if not check_mode and keys:
            write_chain_state(workdir, None)
        return dict(
            result,
            changed=bool(check_mode and resume),
            msg=("would boot the builder VM from cached step %d" % resume)
            if resume
            else "no cached step: the disk is made from the base",
        )
    for path in chain:
        _step_cache.touch(path)
    seal = _step_cache.read_seal(chain[0], LAYER_SUFFIX) or {}
    _qemu_vm.make_overlay(result["disk"], chain[0], "qcow2")
    write_chain_state(workdir, {"position": resume, "key": keys[resume], "sha256": seal.get("sha256")})
    return dict(
        result,
        changed=True,
        msg="the builder VM boots from cached step %d (%s, a chain of %d layer(s))"
        % (resume, os.path.basename(chain[0])[:12], len(chain)),
    )


def _writable_drives(vmdir: str) -> list[tuple[str, str]]:
    """The VM's writable drives (firmware variables aside) from QMP: their device and the file they write into."""
    drives = []
    for block in _qemu_vm.qmp_command(vmdir, "query-block") or []:
        inserted = block.get("inserted") or {}
        if not inserted or inserted.get("ro") or str(block.get("device") or "").startswith("pflash"):
            continue
        drives.append(
            (str(block.get("device") or inserted.get("node-name")), str(inserted.get("file") or ""))
        )
    return drives


def _snapshot_device(vmdir: str, active: str) -> str:
    """The QMP device of the VM's disk: the writable drive whose top is the work directory's file *active*, else
    the only writable drive the VM has (firmware variables aside)."""
    drives = _writable_drives(vmdir)
    for device, file in drives:
        if os.path.basename(file) == active:
            return device
    if len(drives) == 1:
        return drives[0][0]
    raise BakeryError("qemu_image: the builder VM has no writable drive on %s" % active)


def _top_file(vmdir: str) -> str:
    """The file the VM's writable drive writes into now ("" when the VM does not answer)."""
    try:
        drives = _writable_drives(vmdir)
    except (OSError, ValueError):
        return ""
    return drives[0][1] if drives else ""


def freeze_script(user: str, public_key: str) -> str:
    home = "/root" if user == "root" else "/home/%s" % user
    script = FREEZE_SCRIPT % {"body": shlex.quote(key_body(public_key)), "home": shlex.quote(home)}
    command = "sh -c %s" % shlex.quote(script)
    return command if user == "root" else "sudo -n " + command


def _freeze_argv(state: Mapping[str, Any], public_key: str) -> list[str]:
    """The ssh command that freezes the guest (see FREEZE_SCRIPT)."""
    user = str(state.get("user") or "root")
    return [
        "ssh",
        *_qemu_vm.ssh_options(str(state["private_key"]), int(state["port"])),
        "-T",
        "%s@%s" % (user, state.get("host") or "127.0.0.1"),
        freeze_script(user, public_key),
    ]


def snapshot(
    vmdir: str, state: Mapping[str, Any], active: str, overlay: str, public_key: str, timeout: float
) -> float:
    """Freeze the guest (without the builder's key), make *overlay* the layer the VM writes into over its file
    *active* (a name in the work directory), thaw it. Returns how long the guest was frozen."""
    proc = subprocess.Popen(  # noqa: S603 (argv, no shell on the host)
        _freeze_argv(state, public_key),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout = proc.stdout
        ready = select.select([stdout], [], [], timeout)[0] if stdout is not None else []
        line = stdout.readline() if stdout is not None and ready else ""
        if line.strip() != "frozen":
            proc.kill()
            _out, err = proc.communicate(timeout=30)
            raise BakeryError(
                "qemu_image: could not freeze the builder VM's file system for the step cache: %s"
                % ((err or "").strip()[-400:] or "no answer within %d s" % timeout)
            )
        frozen = time.monotonic()
        try:
            _qemu_vm.qmp_command(
                vmdir,
                "blockdev-snapshot-sync",
                timeout=60,
                device=_snapshot_device(vmdir, active),
                **{"snapshot-file": overlay, "format": "qcow2", "mode": "existing"},
            )
        finally:
            # the answer thaws the guest (so does the connection's end)
            _out, err = proc.communicate(input="thaw\n", timeout=timeout)
        held = time.monotonic() - frozen
        if proc.returncode != 0:
            raise BakeryError(
                "qemu_image: thawing the builder VM after the snapshot failed (rc=%d): %s"
                % (proc.returncode, (err or "").strip()[-400:])
            )
        return held
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _copy(source: str, target: str) -> None:
    done = subprocess.run(
        ["cp", "--reflink=auto", "--sparse=always", source, target],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BakeryError(
            "qemu_image: copying the layer %s failed: %s" % (source, done.stderr.strip()[-400:])
        )


def keep_layer(
    directory: str, keys: list[str], position: int, layer: str, top: Mapping[str, Any] | None, target: str
) -> tuple[dict[str, Any] | None, str | None]:
    """Keep the frozen *layer* of step *position* as the cached layer ``keys[position]``: copied under a temporary
    name, its backing file named as the parent's layer (relatively), synced, sealed, renamed into place. Only
    over the very parent it was written on: *top* is the cached layer the disk stood on (None: the disk made
    from the base). Returns the seal, or None and why the layer is not kept."""
    key = keys[position]
    path = layer_path(directory, key)
    parent = keys[position - 1] if position > 1 else None
    parent_seal: dict[str, Any] | None = None
    why_not = None
    if parent:
        parent_seal = _step_cache.read_seal(layer_path(directory, parent), LAYER_SUFFIX)
        if not top or top.get("key") != parent or not top.get("sha256"):
            why_not = "the disk does not stand on a cached layer of step %d" % (position - 1)
        elif parent_seal is None or parent_seal.get("sha256") != top["sha256"]:
            why_not = "the cached layer of step %d changed or went (evicted)" % (position - 1)
    elif top:
        why_not = "the disk stands on a cached layer already"
    elif backing_of(layer) is not None:
        why_not = "the disk of step 1 has a backing file"
    if why_not:
        return None, why_not
    if _step_cache.read_seal(path, LAYER_SUFFIX) is not None:
        # another bake kept this step meanwhile: its layer, not this disk's, so later steps are not kept
        _step_cache.touch(path)
        return None, "another bake kept step %d meanwhile" % position
    os.makedirs(directory, exist_ok=True)
    with atomic_output(path) as tmp:
        _copy(layer, tmp)
        if parent:
            _qemu_img(
                ["rebase", "-u", "-F", "qcow2", "-b", parent + LAYER_SUFFIX, tmp],
                "naming the cached layer's parent",
            )
        extra = {"parent": parent, "parent_sha256": parent_seal["sha256"] if parent_seal else None}
        seal = _step_cache.seal_entry(path, tmp, key, position, target, extra)
    _step_cache.fsync_path(directory)
    for below in chain_paths(directory, keys, position - 1):
        _step_cache.touch(below)
    return seal, None


def save_action(params: Mapping[str, Any], check_mode: bool) -> dict[str, Any]:
    """Keep the builder VM's disk after provisioner ``step`` as the layer ``step_keys[step]`` (see the module's
    doc), then evict the least recently used layers beyond ``step_cache.max_size``."""
    workdir = params.get("workdir")
    position = int(params.get("step") or 0)
    cache, keys, directory = _cache_of(params)
    if not workdir or not 0 < position < len(keys) or not directory or not params.get("public_key"):
        raise BakeryError(
            "qemu_image: action=vm_step_save needs workdir, public_key, step_cache.dir and a step (1-%d) of "
            "step_keys" % (len(keys) - 1)
        )
    key = keys[position]
    path = layer_path(directory, key)
    if check_mode or not cache["enabled"]:
        return dict(
            changed=bool(check_mode and cache["enabled"]), key=key, msg="would keep step %d" % position
        )
    workdir = os.path.abspath(str(workdir))
    vmdir = os.path.join(workdir, "vm")
    state = _qemu_vm.read_state(vmdir)
    if not state or not _qemu_vm.alive(int(state.get("pid") or 0), state.get("pid_start")):
        raise BakeryError("qemu_image: no builder VM runs from %s" % vmdir)
    timeout = float(params.get("timeout") or 300)
    started = time.monotonic()
    chain_state = read_chain_state(workdir)
    active = os.path.basename(str(chain_state.get("active") or DISK))
    # the file the VM writes into now becomes the step's layer, as it is: never renamed, never replaced
    layer = os.path.join(workdir, active)
    name = STEP_DISK % position
    overlay = os.path.join(workdir, name)
    if os.path.lexists(overlay):
        raise BakeryError(
            "qemu_image: step %d of the builder VM was kept already (%s exists)" % (position, overlay)
        )
    size = int(image_info(layer)["virtual-size"])
    # its backing file named as the VM's node is (relatively, in the same directory); -u: the VM holds its lock
    _qemu_img(
        ["create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", active, overlay, str(size)],
        "making the overlay after step %d" % position,
    )
    try:
        held = snapshot(vmdir, state, active, overlay, str(params["public_key"]), timeout)
    except (BakeryError, OSError):
        # the VM did not take it (else the error is the thaw's, and the VM writes into it: keep it)
        if os.path.basename(_top_file(vmdir)) != name:
            os.unlink(overlay)
        raise
    write_chain_state(workdir, chain_state.get("top"), name)
    link_top(workdir, name)
    snapshotted = time.monotonic()

    top = chain_state.get("top")
    seal, why_not = keep_layer(directory, keys, position, layer, top, str(params.get("target") or ""))
    written = seal is not None
    write_chain_state(
        workdir, {"position": position, "key": key, "sha256": seal["sha256"] if seal else None}, name
    )
    evicted: list[str] = []
    if written and cache["max_size"]:
        keep = {path, *chain_paths(directory, keys, position - 1)}
        evicted = _step_cache.evict_rootfs_steps(directory, cache["max_size"], keep=keep, suffix=LAYER_SUFFIX)
    return dict(
        # the disk became a layer and an overlay in any case
        changed=True,
        image=path if written else None,
        key=key,
        size=seal["size"] if seal else None,
        sha256=seal["sha256"] if seal else None,
        evicted=evicted,
        frozen=round(held, 3),
        snapshot_duration=round(snapshotted - started, 3),
        duration=round(time.monotonic() - started, 3),
        msg=(
            "kept step %d as %s (%d MiB)%s"
            % (position, path, seal["size"] // MIB, "; evicted %d layer(s)" % len(evicted) if evicted else "")
            if seal
            else "step %d not kept: %s" % (position, why_not)
        ),
    )


def chain_paths(directory: str, keys: list[str], position: int) -> list[str]:
    """The paths of the cached layers of steps *position* down to 1 (by key; no check of their content)."""
    return [layer_path(directory, keys[at]) for at in range(position, 0, -1)]
