"""The per-step cache of VM builders: sealed qcow2 layers, each over the one before, used only as a sound chain."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _step_cache, _vm_steps

KEYS = ["k0", "k1", "k2", "k3"]
CACHE = {"enabled": True, "max_size": 0}


def qcow2(path, backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-F", "qcow2", "-b", str(backing)]
    subprocess.run([*argv, str(path), "1M"] if not backing else [*argv, str(path)], check=True)
    return str(path)


def info(path):
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def keep_chain(tmp_path, depth, keys=None):
    """Layers of steps 1..depth as a builder VM's work directory leaves them (each over the one before, by its
    work directory's path), kept in the cache one after the other."""
    keys = keys or KEYS
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir(exist_ok=True)
    top = None
    seals = []
    for position in range(1, depth + 1):
        below = work / ("layer-%d.qcow2" % (position - 1)) if position > 1 else None
        layer = qcow2(work / ("layer-%d.qcow2" % position), below)
        seal, why_not = _vm_steps.keep_layer(str(cache), keys, position, layer, top, "vmdisk")
        assert why_not is None and seal is not None
        top = {"position": position, "key": keys[position], "sha256": seal["sha256"]}
        seals.append(seal)
    return cache, seals


def test_each_kept_layer_is_sealed_and_stands_on_the_layer_before(tmp_path):
    cache, seals = keep_chain(tmp_path, 2)
    for position, seal in enumerate(seals, start=1):
        layer = cache / ("k%d.qcow2" % position)
        data = layer.read_bytes()
        assert json.loads((cache / ("k%d.qcow2.seal" % position)).read_text()) == seal
        assert seal["size"] == len(data) and seal["sha256"] == hashlib.sha256(data).hexdigest()
        assert (seal["key"], seal["position"], seal["target"]) == ("k%d" % position, position, "vmdisk")
    # step 1's layer is the whole disk; step 2's names step 1's relatively, with the sha256 it was written on
    assert "backing-filename" not in info(cache / "k1.qcow2")
    assert info(cache / "k2.qcow2")["backing-filename"] == "k1.qcow2"
    assert (seals[0]["parent"], seals[1]["parent"]) == (None, "k1")
    assert seals[1]["parent_sha256"] == seals[0]["sha256"]
    assert sorted(os.listdir(cache)) == ["k1.qcow2", "k1.qcow2.seal", "k2.qcow2", "k2.qcow2.seal"]
    # the deepest sound chain, its layer first
    assert _vm_steps.find_vm_step(str(cache), KEYS) == (2, [str(cache / "k2.qcow2"), str(cache / "k1.qcow2")])
    # not beyond the keys the caller gives (max_resume)
    assert _vm_steps.find_vm_step(str(cache), KEYS[:2])[0] == 1
    assert _vm_steps.find_vm_step(None, KEYS) == (0, [])


def test_a_layer_over_a_changed_or_missing_parent_is_never_used(tmp_path):
    cache, _seals = keep_chain(tmp_path, 2)
    # the parent replaced by another sealed layer of the same key: the child was written on other content
    _step_cache.remove_entry(str(cache / "k1.qcow2"))
    other = qcow2(tmp_path / "other.qcow2")
    subprocess.run(["qemu-img", "resize", "-q", other, "2M"], check=True)
    assert _vm_steps.keep_layer(str(cache), KEYS, 1, other, None, "vmdisk")[1] is None
    assert _vm_steps.find_vm_step(str(cache), KEYS)[0] == 1
    assert _vm_steps.broken_layers(str(cache)) == [str(cache / "k2.qcow2")]
    # the parent's content changed under its seal: neither is used
    with open(cache / "k1.qcow2", "ab") as handle:
        handle.write(b"x")
    assert _vm_steps.find_vm_step(str(cache), KEYS) == (0, [])
    # the parent gone: the child is broken, and prune removes it (and the unsealed parent)
    os.unlink(cache / "k1.qcow2")
    assert _vm_steps.find_vm_step(str(cache), KEYS) == (0, [])
    pruned = _vm_steps.prune(str(cache), 10**9)
    assert str(cache / "k2.qcow2") in pruned["unsealed"]
    assert os.listdir(cache) == []


def test_a_layer_without_seal_or_naming_another_backing_file_is_not_used(tmp_path):
    cache, _seals = keep_chain(tmp_path, 2)
    # a killed bake's layer: no seal
    (cache / "k3.qcow2").write_bytes(b"half a layer")
    assert _vm_steps.find_vm_step(str(cache), KEYS)[0] == 2
    # step 2's layer rewritten to name another backing file, its seal made to match its bytes: not used
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", "k0.qcow2", str(cache / "k2.qcow2")], check=True
    )
    seal = json.loads((cache / "k2.qcow2.seal").read_text())
    data = (cache / "k2.qcow2").read_bytes()
    seal.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    _step_cache.write_seal(str(cache / "k2.qcow2"), seal)
    assert _vm_steps.find_vm_step(str(cache), KEYS)[0] == 1
    # a changed earlier step (another key 1) invalidates the later layers: their chain names other keys
    assert _vm_steps.find_vm_step(str(cache), ["k0", "other", "k2", "k3"])[0] == 0
    pruned = _vm_steps.prune(str(cache), 10**9)
    assert pruned["unsealed"] == [str(cache / "k3.qcow2")]


def test_a_layer_is_kept_only_over_the_parent_it_was_written_on(tmp_path):
    cache, seals = keep_chain(tmp_path, 1)
    layer = qcow2(tmp_path / "work" / "next.qcow2", tmp_path / "work" / "layer-1.qcow2")
    seal, why_not = _vm_steps.keep_layer(str(cache), KEYS, 2, layer, None, "vmdisk")
    assert seal is None and "does not stand on a cached layer of step 1" in why_not
    top = {"position": 1, "key": "k1", "sha256": "0" * 64}
    seal, why_not = _vm_steps.keep_layer(str(cache), KEYS, 2, layer, top, "vmdisk")
    assert seal is None and "changed or went" in why_not
    # kept by another bake meanwhile: that one stays, this disk's later steps are not kept over it
    top = {"position": 1, "key": "k1", "sha256": seals[0]["sha256"]}
    first = _vm_steps.keep_layer(str(cache), KEYS, 2, layer, top, "vmdisk")[0]
    again, why_not = _vm_steps.keep_layer(str(cache), KEYS, 2, layer, top, "vmdisk")
    assert first is not None and again is None and "meanwhile" in why_not
    assert not [name for name in os.listdir(cache) if name.startswith(".")], "no temporary file is left"


def test_resume_boots_a_fresh_overlay_over_the_deepest_chain_and_check_mode_makes_nothing(tmp_path):
    cache, seals = keep_chain(tmp_path, 2)
    params = {"step_keys": KEYS, "step_cache": dict(CACHE, dir=str(tmp_path / "c"))}
    (tmp_path / "c").mkdir()
    os.rename(cache, tmp_path / "c" / "vm-steps")
    layers = tmp_path / "c" / "vm-steps"
    checked = _vm_steps.resume_action(dict(params, workdir=str(tmp_path / "w1")), check_mode=True)
    assert checked["step_cache"]["resume"] == 2 and not (tmp_path / "w1").exists()
    assert checked["step_cache"]["steps"] == ["hit", "hit", "miss"]
    assert "provisioner 3 has no cached state" in checked["step_cache"]["reason"]

    done = _vm_steps.resume_action(dict(params, workdir=str(tmp_path / "w1")), check_mode=False)
    assert done["changed"] and done["step_cache"]["image"] == str(layers / "k2.qcow2")
    assert info(tmp_path / "w1" / "disk.qcow2")["backing-filename"] == str(layers / "k2.qcow2")
    assert _vm_steps.read_chain_state(str(tmp_path / "w1"))["top"] == {
        "position": 2,
        "key": "k2",
        "sha256": seals[1]["sha256"],
    }
    # forced, or a disk from a base_image: the cache is bypassed, nothing is booted from it
    forced = _vm_steps.resume_action(dict(params, workdir=str(tmp_path / "w2"), force=True), check_mode=True)
    assert forced["resume"] == 0 and forced["step_cache"]["steps"] == ["bypassed"] * 3
    params_forced = dict(params, step_cache=dict(params["step_cache"], enabled=False))
    forced = _vm_steps.resume_action(dict(params_forced, workdir=str(tmp_path / "w2"), force=True), True)
    assert forced["step_cache"]["reason"] == "forced: the step cache is bypassed"
    image = _vm_steps.resume_action(dict(params, workdir=str(tmp_path / "w2"), image="base.qcow2"), True)
    assert image["resume"] == 0 and "base_image" in image["step_cache"]["reason"]
    assert not (tmp_path / "w2").exists()


def test_eviction_counts_the_layers_files_least_recently_used_first(tmp_path):
    cache, seals = keep_chain(tmp_path, 3)
    sizes = sum(seal["size"] for seal in seals)
    now = 1_700_000_000
    for position in (1, 2, 3):
        _step_cache.touch(str(cache / ("k%d.qcow2" % position)), now - 100 + position)
    # the oldest used goes first
    removed = _step_cache.evict_rootfs_steps(str(cache), sizes - 1, suffix=_vm_steps.LAYER_SUFFIX)
    assert removed == [str(cache / "k1.qcow2")]


def test_the_guest_is_frozen_without_the_builder_key():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIbody bakery-builder"
    script = _vm_steps.freeze_script("root", key)
    assert script.startswith("sh -c ") and "AAAAC3NzaC1lZDI1NTE5AAAAIbody" in script
    assert "fsfreeze -f /" in script and "fsfreeze -u /" in script and "/root" in script
    # journald's files on the disk are closed while it is frozen, and reopened after
    assert script.index("--relinquish-var") < script.index("fsfreeze -f /")
    assert "journalctl --flush" in script
    assert _vm_steps.freeze_script("debian", key).startswith("sudo -n sh -c ")


@pytest.mark.parametrize("params", [{}, {"workdir": "w", "step": 1, "step_keys": KEYS}])
def test_save_needs_its_parameters(params):
    with pytest.raises(Exception, match="vm_step_save needs"):
        _vm_steps.save_action(params, check_mode=False)


def test_save_in_check_mode_makes_nothing(tmp_path):
    params = {
        "workdir": str(tmp_path / "w"),
        "step": 1,
        "step_keys": KEYS,
        "public_key": "ssh-ed25519 AAAA",
        "step_cache": dict(CACHE, dir=str(tmp_path / "c")),
    }
    result = _vm_steps.save_action(params, check_mode=True)
    assert result["changed"] and "would keep step 1" in result["msg"]
    assert os.listdir(tmp_path) == []


def hmp_io(vmdir, request):
    """qemu-io on the VM's disk through the human monitor, as the guest would read or write it (it says what it did
    on qemu's standard output)."""
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_vm

    _qemu_vm.qmp_command(
        str(vmdir), "human-monitor-command", timeout=30, **{"command-line": 'qemu-io virtio0 "%s"' % request}
    )


def test_the_vm_reads_every_kept_step_and_so_does_the_chain_capture_converts(tmp_path, monkeypatch):
    """A real qemu (no guest: paused, its disk written through the monitor) keeps three steps one after the other:
    through its chain it still reads what each step wrote, and so do the disk capture converts and the chain of
    cached layers. qemu reopens the old top read-only by its name at each snapshot: a layer renamed while the VM
    runs, its name given to the next overlay, made it read that overlay in place of the layer from step 2 on."""
    from ansible_collections.bakery.images.plugins.module_utils import _qemu_vm

    work, cache = tmp_path / "w", tmp_path / "c"
    vmdir = work / "vm"
    vmdir.mkdir(parents=True)
    said = open(tmp_path / "qemu.out", "w")  # noqa: SIM115 (qemu's, closed with it)
    disk = work / _vm_steps.DISK
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    _vm_steps.link_top(str(work), _vm_steps.DISK)
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg",
            "-drive", "file=%s,if=virtio,format=qcow2,discard=unmap" % disk,
            "-qmp", "unix:%s,server=on,wait=off" % (vmdir / _qemu_vm.QMP_SOCKET),
        ],
        stdout=said,
    )  # fmt: skip
    try:
        for _attempt in range(100):
            if (vmdir / _qemu_vm.QMP_SOCKET).exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        (vmdir / _qemu_vm.STATE_FILE).write_text(json.dumps({"pid": proc.pid}))
        # the guest's freeze, answered as the guest's script does
        monkeypatch.setattr(
            _vm_steps, "_freeze_argv", lambda state, key: ["sh", "-c", "echo frozen; read -r a"]
        )
        params = {
            "workdir": str(work),
            "step_keys": KEYS,
            "public_key": "ssh-ed25519 AAAA",
            "step_cache": dict(CACHE, dir=str(cache)),
            "target": "vmdisk",
        }
        for step in (1, 2, 3):
            hmp_io(vmdir, "write -P 0x%d %dM 64k" % (step, step))
            kept = _vm_steps.save_action(dict(params, step=step), check_mode=False)
            assert kept["changed"] and kept["sha256"], kept
        hmp_io(vmdir, "write -P 0x4 4M 64k")
        # the running VM: every step's write, read through the chain it stands on
        for step in (1, 2, 3, 4):
            hmp_io(vmdir, "read -P 0x%d %dM 64k" % (step, step))
    finally:
        proc.terminate()
        proc.wait(30)
        said.close()
    out = (tmp_path / "qemu.out").read_text()
    assert out.count("wrote 65536/65536") == 4 and out.count("read 65536/65536") == 4, out
    assert "verification failed" not in out, out
    # no file it had open was renamed: the files of the work directory are the chain, its top linked
    assert os.readlink(work / _vm_steps.TOP) == "disk-3.qcow2"
    assert info(work / "disk-3.qcow2")["backing-filename"] == "disk-2.qcow2"

    def pattern(image, step):
        raw = tmp_path / "raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
        with open(raw, "rb") as handle:
            handle.seek(step * 1024**2)
            return handle.read(65536)

    for step in (1, 2, 3, 4):
        assert pattern(work / _vm_steps.TOP, step) == bytes([step]) * 65536, step
    # the cached chain of step 3 holds steps 1 to 3, not the write after it
    for step in (1, 2, 3):
        assert pattern(cache / "vm-steps" / "k3.qcow2", step) == bytes([step]) * 65536, step
    assert pattern(cache / "vm-steps" / "k3.qcow2", 4) == bytes(65536)
