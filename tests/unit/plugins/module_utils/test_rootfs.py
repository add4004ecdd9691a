"""Unit tests of the rootfs logic: options, command line, fingerprints, error messages, the bake.

The bake tests run a stand-in ``mmdebstrap`` executable (a small script put first on PATH) so that
building, skipping, failing and timing out can be checked in milliseconds; the real mmdebstrap is
exercised by tests/integration/test_rootfs.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _rootfs
from ansible_collections.bakery.images.plugins.module_utils._files import read_sidecar
from ansible_collections.bakery.images.plugins.module_utils._fingerprint import digest_file, fingerprint
from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


def options(tmp_path: Path, **params) -> _rootfs.RootfsOptions:
    params.setdefault("path", str(tmp_path / "out" / "rootfs.tar"))
    params.setdefault("suite", "bookworm")
    return _rootfs.parse_options(params, architecture="amd64")


def fp(tmp_path: Path, **params) -> str:
    return fingerprint(_rootfs.compute_inputs(options(tmp_path, **params)))


def leftovers(directory: Path) -> list[str]:
    """Files in *directory* other than the lock file that serialises builds."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


# --------------------------------------------------------------------------- options


class TestOptions:
    def test_defaults(self, tmp_path: Path) -> None:
        opts = options(tmp_path)
        assert opts.path == str(tmp_path / "out" / "rootfs.tar")
        assert opts.mirror == "http://deb.debian.org/debian"
        assert opts.variant == "minbase"
        assert opts.components == ["main"]
        assert opts.packages == []
        assert opts.mode == "auto"
        assert opts.timeout == 1800
        assert opts.format == "tar"

    @pytest.mark.parametrize(
        "suite, arch, mirror",
        [
            ("bookworm", "amd64", "http://deb.debian.org/debian"),
            ("trixie", "arm64", "http://deb.debian.org/debian"),
            ("noble", "amd64", "http://archive.ubuntu.com/ubuntu"),
            ("jammy-updates", "i386", "http://archive.ubuntu.com/ubuntu"),
            ("noble", "arm64", "http://ports.ubuntu.com/ubuntu-ports"),
        ],
    )
    def test_default_mirror(self, tmp_path: Path, suite: str, arch: str, mirror: str) -> None:
        assert options(tmp_path, suite=suite, architecture=arch).mirror == mirror

    def test_mirror_override_and_trailing_slash(self, tmp_path: Path) -> None:
        opts = options(tmp_path, suite="noble", mirror="http://mirror.example/ubuntu/")
        assert opts.mirror == "http://mirror.example/ubuntu"

    def test_packages_sorted_without_repeats(self, tmp_path: Path) -> None:
        opts = options(tmp_path, packages=["python3", "curl", "python3", " ca-certificates "])
        assert opts.packages == ["ca-certificates", "curl", "python3"]

    @pytest.mark.parametrize(
        "name, fmt",
        [
            ("a.tar", "tar"),
            ("a.tar.gz", "tar.gz"),
            ("a.tgz", "tar.gz"),
            ("a.tar.xz", "tar.xz"),
            ("a.tar.zst", "tar.zst"),
        ],
    )
    def test_formats(self, tmp_path: Path, name: str, fmt: str) -> None:
        assert options(tmp_path, path=str(tmp_path / name)).format == fmt

    def test_host_architecture(self) -> None:
        assert (
            _rootfs.host_architecture()
            == subprocess.run(
                ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )

    @pytest.mark.parametrize(
        "params, words",
        [
            ({"suite": ""}, ["suite", "empty"]),
            ({"suite": "  "}, ["suite", "empty"]),
            ({"suite": "bookworm; rm -rf /"}, ["invalid suite", "bookworm; rm -rf /"]),
            ({"suite": "-bookworm"}, ["invalid suite"]),
            ({"packages": ["python3", "bad pkg", "Evil"]}, ["invalid package", "'bad pkg'", "'Evil'"]),
            ({"packages": ["a,b"]}, ["invalid package"]),
            ({"components": ["main", "con trib"]}, ["invalid component"]),
            ({"architecture": "AMD 64"}, ["invalid architecture"]),
            ({"mirror": "deb.debian.org/debian"}, ["invalid mirror"]),
            ({"extra_sources": ["http://deb.debian.org/debian bookworm-updates main"]}, ["extra_sources"]),
            ({"extra_sources": ["deb http://x/ a main\ndeb http://y/ b main"]}, ["extra_sources"]),
            ({"variant": "tiny"}, ["unknown variant", "tiny"]),
            ({"mode": "magic"}, ["unknown mode", "magic"]),
            ({"timeout": 0}, ["timeout"]),
        ],
    )
    def test_invalid(self, tmp_path: Path, params: dict, words: list[str]) -> None:
        with pytest.raises(BakeryError) as info:
            options(tmp_path, **params)
        for word in words:
            assert word in info.value.msg
        assert info.value.msg.startswith("rootfs: ")

    @pytest.mark.parametrize("name", ["rootfs.img", "rootfs.tar.bz2", "rootfs.squashfs", ".tar"])
    def test_unsupported_extension(self, tmp_path: Path, name: str) -> None:
        with pytest.raises(BakeryError, match="unsupported tarball name"):
            options(tmp_path, path=str(tmp_path / name))

    def test_path_is_directory(self, tmp_path: Path) -> None:
        (tmp_path / "dir.tar").mkdir()
        with pytest.raises(BakeryError, match="is a directory"):
            options(tmp_path, path=str(tmp_path / "dir.tar"))

    def test_output_dir_under_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("x")
        with pytest.raises(BakeryError, match="not a directory"):
            options(tmp_path, path=str(tmp_path / "file" / "sub" / "rootfs.tar"))

    def test_output_dir_not_writable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o555)
        # root may write anywhere: ask os.access as an unprivileged user would be answered
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
        )
        with pytest.raises(BakeryError, match="not writable"):
            options(tmp_path, path=str(locked / "rootfs.tar"))

    def test_missing_output_dir_is_fine(self, tmp_path: Path) -> None:
        opts = options(tmp_path, path=str(tmp_path / "a" / "b" / "rootfs.tar"))
        assert not (tmp_path / "a").exists(), "validation must not create anything"
        assert opts.path.endswith("/a/b/rootfs.tar")

    def test_keyring_missing(self, tmp_path: Path) -> None:
        with pytest.raises(BakeryError, match="keyring .* does not exist"):
            options(tmp_path, keyring=[str(tmp_path / "nope.gpg")])

    def test_keyring_one_file_one_dir(self, tmp_path: Path) -> None:
        (tmp_path / "a.gpg").write_bytes(b"a")
        (tmp_path / "b.gpg").write_bytes(b"b")
        (tmp_path / "keys").mkdir()
        opts = options(tmp_path, keyring=[str(tmp_path / "a.gpg"), str(tmp_path / "keys")])
        assert opts.keyring == [str(tmp_path / "a.gpg"), str(tmp_path / "keys")]
        with pytest.raises(BakeryError, match="at most one file and one directory"):
            options(tmp_path, keyring=[str(tmp_path / "a.gpg"), str(tmp_path / "b.gpg")])


# --------------------------------------------------------------------------- command line


def chroot_stand_in(tmp_path: Path, script: str) -> dict[str, str]:
    """The environment of mmdebstrap's hooks run by sh on a fake root: a PATH whose ``chroot`` is *script*."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chroot").write_text(script)
    (bin_dir / "chroot").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


class TestCommand:
    def test_minimal(self, tmp_path: Path) -> None:
        opts = options(tmp_path)
        assert _rootfs.build_command(opts, "/out/x.tar") == [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=auto",
            "--format=tar",
            "--architectures=amd64",
            "--components=main",
            "bookworm",
            "/out/x.tar",
            "http://deb.debian.org/debian",
        ]

    def test_everything(self, tmp_path: Path) -> None:
        key = tmp_path / "key.gpg"
        key.write_bytes(b"key")
        opts = options(
            tmp_path,
            suite="trixie",
            mirror="http://mirror.example/debian",
            variant="apt",
            packages=["python3", "curl", "python3"],
            components=["main", "contrib", "main"],
            architecture="arm64",
            keyring=[str(key)],
            extra_sources=[
                "deb http://deb.debian.org/debian trixie-updates main",
                "deb  [signed-by=/k.gpg]   http://deb.debian.org/debian-security trixie-security main",
            ],
            mode="unshare",
        )
        assert _rootfs.build_command(opts, "/out/x.tar.zst", "/usr/bin/mmdebstrap") == [
            "/usr/bin/mmdebstrap",
            "--variant=apt",
            "--mode=unshare",
            "--format=tar",
            "--architectures=arm64",
            "--components=main,contrib",
            "--include=curl,python3",
            f"--keyring={key}",
            "trixie",
            "/out/x.tar.zst",
            "http://mirror.example/debian",
            "deb http://deb.debian.org/debian trixie-updates main",
            "deb [signed-by=/k.gpg] http://deb.debian.org/debian-security trixie-security main",
        ]

    @pytest.mark.parametrize(
        "packages",
        [
            ["python3", "linux-image-cloud-amd64"],
            ["linux-image-arm64=6.1.0-50"],
            ["initramfs-tools/bookworm"],
        ],
    )
    def test_a_kernel_gets_its_initramfs_made_once(self, tmp_path: Path, packages: list[str]) -> None:
        argv = _rootfs.build_command(options(tmp_path, packages=packages), "/out/x.tar")
        hooks = [arg for arg in argv if arg.startswith("--") and "hook" in arg]
        assert hooks == [
            "--essential-hook=" + _rootfs.INITRAMFS_DIVERT_HOOK,
            "--customize-hook=" + _rootfs.INITRAMFS_ONCE_HOOK,
        ]
        # before the suite, target and mirror
        assert argv.index(hooks[-1]) < argv.index("bookworm")

    @pytest.mark.parametrize(
        ("packages", "mode"),
        [
            (["python3", "linux-base"], "root"),
            (["linux-image-amd64"], "fakechroot"),
            (["initramfs-tools"], "chrootless"),
        ],
    )
    def test_no_hooks_without_a_kernel_or_where_hooks_cannot_chroot(
        self, tmp_path: Path, packages: list[str], mode: str
    ) -> None:
        argv = _rootfs.build_command(options(tmp_path, packages=packages, mode=mode), "/out/x.tar")
        assert not [arg for arg in argv if "hook" in arg]

    def test_the_hooks_divert_update_initramfs_and_put_it_back(self, tmp_path: Path) -> None:
        """The hooks, run by sh on a fake root whose chroot is a stand-in that runs dpkg-divert's renames and
        records update-initramfs: the no-op stands in while mmdebstrap installs, the package's own is back after,
        and is run once for every kernel."""
        root = tmp_path / "root"
        (root / "usr/sbin").mkdir(parents=True)
        calls = tmp_path / "calls"
        env = chroot_stand_in(
            tmp_path,
            "#!/bin/sh\n"
            'root=$1; shift; echo "$*" >> %s\n'
            'case "$1" in dpkg-divert)\n'
            '  case "$*" in *--add*) [ -e "$root/usr/sbin/update-initramfs" ] && '
            'mv "$root/usr/sbin/update-initramfs" "$root/usr/sbin/update-initramfs.bakery";;\n'
            '  *--remove*) [ -e "$root/usr/sbin/update-initramfs.bakery" ] && '
            'mv "$root/usr/sbin/update-initramfs.bakery" "$root/usr/sbin/update-initramfs";; esac;;\n'
            "esac\nexit 0\n" % calls,
        )

        def hook(text: str) -> None:
            subprocess.run(["sh", "-c", text, "hook", str(root)], env=env, check=True)

        hook(_rootfs.INITRAMFS_DIVERT_HOOK)
        stub = root / "usr/sbin/update-initramfs"
        assert subprocess.run([str(stub), "-c", "-k", "6.1"], check=False).returncode == 0
        # dpkg unpacks initramfs-tools: its file goes to the diverted name
        (root / "usr/sbin/update-initramfs.bakery").write_text("#!/bin/sh\nthe real one\n")
        hook(_rootfs.INITRAMFS_ONCE_HOOK)
        assert stub.read_text() == "#!/bin/sh\nthe real one\n"
        assert not (root / "usr/sbin/update-initramfs.bakery").exists()
        said = calls.read_text().splitlines()
        assert said[-1] == "update-initramfs -c -k all" and len(said) == 3, said
        # without initramfs-tools (no kernel came after all), nothing is run
        calls.unlink()
        stub.unlink()
        hook(_rootfs.INITRAMFS_DIVERT_HOOK)
        hook(_rootfs.INITRAMFS_ONCE_HOOK)
        assert not stub.exists()
        assert [line.split()[0] for line in calls.read_text().splitlines()] == ["dpkg-divert", "dpkg-divert"]


# --------------------------------------------------------------------------- initramfs under emulation


def fake_elf(path: Path, machine: int = 62, interp: bool = False) -> str:
    """A 64-bit little-endian ELF header and program header table (PT_LOAD, and PT_INTERP when *interp*)."""
    types = [1, 3] if interp else [1]
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HH", header, 16, 2, machine)
    struct.pack_into("<Q", header, 32, 64)
    struct.pack_into("<HH", header, 54, 56, len(types))
    table = b"".join(struct.pack("<I", kind) + bytes(52) for kind in types)
    path.write_bytes(bytes(header) + table)
    path.chmod(0o755)
    return str(path)


HOST_STATIC_BUSYBOX = next((p for p in _rootfs.HOST_BUSYBOX if _rootfs._static_x86_64(p)), None)
needs_busybox = pytest.mark.skipif(
    HOST_STATIC_BUSYBOX is None or os.uname().machine != "x86_64",
    reason="needs Debian's busybox-static on an x86-64 host",
)


class TestInitramfsBusybox:
    def arm64(self, tmp_path: Path, **params) -> _rootfs.RootfsOptions:
        params.setdefault("packages", ["linux-image-cloud-arm64", "initramfs-tools"])
        return options(tmp_path, architecture="arm64", **params)

    def test_static_x86_64_elf(self, tmp_path: Path) -> None:
        assert _rootfs._static_x86_64(fake_elf(tmp_path / "static"))
        assert not _rootfs._static_x86_64(fake_elf(tmp_path / "dynamic", interp=True))
        assert not _rootfs._static_x86_64(fake_elf(tmp_path / "aarch64", machine=183))
        (tmp_path / "script").write_text("#!/bin/sh\n")
        assert not _rootfs._static_x86_64(str(tmp_path / "script"))
        (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01")
        assert not _rootfs._static_x86_64(str(tmp_path / "short"))
        assert not _rootfs._static_x86_64(str(tmp_path / "missing"))

    def test_a_foreign_kernel_build_on_x86_64_takes_the_static_busybox(self, tmp_path: Path) -> None:
        dynamic = fake_elf(tmp_path / "dynamic", interp=True)
        static = fake_elf(tmp_path / "static")
        found = _rootfs.initramfs_busybox(
            self.arm64(tmp_path), [dynamic, str(tmp_path / "none"), static], "x86_64"
        )
        assert found == static

    @pytest.mark.parametrize(
        ("architecture", "packages", "mode", "machine"),
        [
            ("amd64", ["linux-image-amd64"], "auto", "x86_64"),  # native
            ("i386", ["linux-image-686"], "auto", "x86_64"),  # native too
            ("arm64", ["python3"], "auto", "x86_64"),  # no initramfs to make
            ("arm64", ["linux-image-arm64"], "fakechroot", "x86_64"),  # hooks that cannot chroot
            ("arm64", ["linux-image-arm64"], "auto", "aarch64"),  # an x86-64 busybox would be emulated itself
        ],
    )
    def test_none_elsewhere(
        self, tmp_path: Path, architecture: str, packages: list[str], mode: str, machine: str
    ) -> None:
        static = fake_elf(tmp_path / "static")
        opts = options(tmp_path, architecture=architecture, packages=packages, mode=mode)
        assert _rootfs.initramfs_busybox(opts, [static], machine) is None

    def test_none_without_a_static_busybox(self, tmp_path: Path) -> None:
        """Debian's busybox package (dynamically linked) would bring the host's loader: not taken."""
        dynamic = fake_elf(tmp_path / "busybox", interp=True)
        assert (
            _rootfs.initramfs_busybox(self.arm64(tmp_path), [dynamic, str(tmp_path / "none")], "x86_64")
            is None
        )

    def test_the_command_takes_the_hook_with_busybox(self, tmp_path: Path) -> None:
        opts = self.arm64(tmp_path)
        argv = _rootfs.build_command(opts, "/out/x.tar", busybox="/usr/bin/busybox")
        hooks = [arg for arg in argv if "hook" in arg]
        assert hooks == [
            "--essential-hook=" + _rootfs.INITRAMFS_DIVERT_HOOK,
            "--customize-hook=" + _rootfs.initramfs_once_hook("/usr/bin/busybox"),
        ]
        assert "cp /usr/bin/busybox " in hooks[1]
        assert _rootfs.initramfs_once_hook(None) == _rootfs.INITRAMFS_ONCE_HOOK
        # without busybox, the hook of before
        assert (
            _rootfs.build_command(opts, "/out/x.tar")[-4] == "--customize-hook=" + _rootfs.INITRAMFS_ONCE_HOOK
        )

    def fake_root(self, tmp_path: Path, update_rc: int = 0) -> tuple[Path, dict[str, str], Path]:
        """A root with initramfs-tools' update-initramfs diverted and GNU-named tools in usr/bin, and a chroot
        stand-in that runs dpkg-divert's rename and, for update-initramfs, records what usr/bin holds then."""
        root = tmp_path / "root"
        for sub in ("usr/sbin", "usr/bin", "tmp"):
            (root / sub).mkdir(parents=True)
        (root / "usr/sbin/update-initramfs.bakery").write_text("#!/bin/sh\nthe real one\n")
        for tool in _rootfs.INITRAMFS_SHADOWED:
            (root / "usr/bin" / tool).write_text(f"the real {tool}\nGNU coreutils\n")
            (root / "usr/bin" / tool).chmod(0o755)
        for sub in ("usr/bin", "tmp"):
            os.utime(root / sub, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
        seen = tmp_path / "seen"
        env = chroot_stand_in(
            tmp_path,
            "#!/bin/sh\n"
            "root=$1; shift\n"
            'case "$1" in\n'
            'dpkg-divert) [ ! -e "$root/usr/sbin/update-initramfs.bakery" ] || '
            'mv "$root/usr/sbin/update-initramfs.bakery" "$root/usr/sbin/update-initramfs";;\n'
            "update-initramfs)\n"
            f'  echo "$*" > {seen}\n'
            f'  for t in {" ".join(_rootfs.INITRAMFS_SHADOWED)}; do head -1 "$root/usr/bin/$t" >> {seen} 2>/dev/null;'
            f' head -1 "$root{_rootfs.INITRAMFS_HELPER_DIR}/$t" >> {seen} 2>/dev/null; done\n'
            f'  cmp -s "$root{_rootfs.INITRAMFS_HELPER_DIR}/busybox" "{tmp_path}/busybox" && echo busybox >> {seen}\n'
            f"  exit {update_rc};;\n"
            "esac\n",
        )
        (tmp_path / "busybox").write_bytes(b"a static busybox")
        return root, env, seen

    @pytest.mark.parametrize("update_rc", [0, 3])
    def test_the_hook_shadows_the_tools_and_leaves_no_trace(self, tmp_path: Path, update_rc: int) -> None:
        root, env, seen = self.fake_root(tmp_path, update_rc)
        before = {tool: os.stat(root / "usr/bin" / tool) for tool in _rootfs.INITRAMFS_SHADOWED}
        hook = _rootfs.initramfs_once_hook(str(tmp_path / "busybox"))
        proc = subprocess.run(["sh", "-c", hook, "hook", str(root)], env=env, check=False)
        assert proc.returncode == update_rc
        # while update-initramfs ran: the scripts in usr/bin, the real tools and busybox beside them
        said = seen.read_text().splitlines()
        shebang = f"#!{_rootfs.INITRAMFS_HELPER_DIR}/busybox sh"
        assert said[0] == "update-initramfs -c -k all"
        assert said[1:] == [
            line for tool in _rootfs.INITRAMFS_SHADOWED for line in (shebang, f"the real {tool}")
        ] + ["busybox"]
        # after: the same files (inode, content, mode, time), nothing else, the directories' times back
        for tool in _rootfs.INITRAMFS_SHADOWED:
            after = os.stat(root / "usr/bin" / tool)
            assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
                before[tool].st_ino,
                before[tool].st_mode,
                before[tool].st_mtime_ns,
            )
            assert (root / "usr/bin" / tool).read_text() == f"the real {tool}\nGNU coreutils\n"
        assert sorted(os.listdir(root / "usr/bin")) == sorted(_rootfs.INITRAMFS_SHADOWED)
        assert os.listdir(root / "tmp") == []
        for sub in ("usr/bin", "tmp"):
            assert os.stat(root / sub).st_mtime_ns == 1_500_000_000_123_456_789
        assert (root / "usr/sbin/update-initramfs").read_text() == "#!/bin/sh\nthe real one\n"

    def test_the_hook_leaves_alone_what_is_not_gnu_coreutils_in_usr_bin(self, tmp_path: Path) -> None:
        """Another implementation (uutils), a symlink, a program elsewhere (/bin/mkdir before merged /usr):
        not shadowed, and the initramfs is made all the same."""
        root, env, seen = self.fake_root(tmp_path)
        (root / "usr/bin/readlink").write_text("uutils readlink\n")
        (root / "usr/bin/realpath").unlink()
        os.symlink("readlink", root / "usr/bin/realpath")
        (root / "usr/bin/mkdir").unlink()
        hook = _rootfs.initramfs_once_hook(str(tmp_path / "busybox"))
        subprocess.run(["sh", "-c", hook, "hook", str(root)], env=env, check=True)
        said = seen.read_text().splitlines()
        assert said == ["update-initramfs -c -k all", "uutils readlink", "uutils readlink", "busybox"], said
        assert (root / "usr/bin/readlink").read_text() == "uutils readlink\n"
        assert os.readlink(root / "usr/bin/realpath") == "readlink"
        assert sorted(os.listdir(root / "usr/bin")) == ["readlink", "realpath"]
        assert os.listdir(root / "tmp") == []

    def test_the_hook_runs_nothing_without_initramfs_tools(self, tmp_path: Path) -> None:
        root, env, seen = self.fake_root(tmp_path)
        (root / "usr/sbin/update-initramfs.bakery").unlink()
        hook = _rootfs.initramfs_once_hook(str(tmp_path / "busybox"))
        subprocess.run(["sh", "-c", hook, "hook", str(root)], env=env, check=True)
        assert not seen.exists() and os.listdir(root / "tmp") == []


@needs_busybox
class TestShadowScripts:
    """The scripts, run by the host's static busybox, answer as GNU readlink, realpath and mkdir do."""

    @pytest.fixture
    def tools(self, tmp_path: Path) -> Path:
        helper = tmp_path / "helper"
        helper.mkdir()
        os.symlink(HOST_STATIC_BUSYBOX, helper / "busybox")
        for tool in _rootfs.INITRAMFS_SHADOWED:
            os.symlink(shutil.which(tool), helper / tool)
            (helper / f"{tool}.sh").write_text(_rootfs.shadow_script(tool, str(helper)))
            (helper / f"{tool}.sh").chmod(0o755)
        return helper

    @pytest.fixture
    def tree(self, tmp_path: Path) -> Path:
        """Files, directories, relative and absolute symlinks, dangling ones, a loop, odd names."""
        t = tmp_path / "tree"
        (t / "d/e").mkdir(parents=True)
        (t / "sp ace").mkdir()
        for name in ("f", "d/e/g", "sp ace/h", "d/-x"):
            (t / name).write_text("x")
        links = {
            "l1": "f",
            "l2": "l1",
            "dl": "d",
            "d/up": "../f",
            "abs": str(t / "d/e"),
            "dang": "missing",
            "d/dang": "../nothing/here",
            "loop1": "loop2",
            "loop2": "loop1",
            "usr": "d",
        }
        for name, target in links.items():
            os.symlink(target, t / name)
        return t

    def names(self, t: Path) -> list[str]:
        rel = [
            "f", "l1", "l2", "dl", "dl/", "dl/e/g", "dl/up", "d/up", "abs/g", "abs/../f", "dang", "dang/",
            "d/dang", "missing", "missing/x", "f/", "f/x", "loop1", "d/./e/../e/g", "dl/../f", "sp ace/h",
            "d/-x", "usr/e", "d//e///g", "d/e/", ".", "..", "d/missing", "d/e/g/.",
        ]  # fmt: skip
        names = [f"{t}/{name}" for name in rel] + ["/", "//", "///", "/usr/bin", "/dev/null"]
        names += [f"/{t}/f", "relative", "d/e", "", "-x", f"{t}/../tree/f"]
        return names

    def same(self, argv_gnu: list[str], argv_script: list[str], cwd: Path) -> None:
        gnu = subprocess.run(argv_gnu, capture_output=True, text=True, cwd=cwd, timeout=30, check=False)
        ours = subprocess.run(argv_script, capture_output=True, text=True, cwd=cwd, timeout=30, check=False)
        assert (ours.stdout, ours.returncode) == (gnu.stdout, gnu.returncode), argv_gnu

    @pytest.mark.parametrize("option", ["-f", "-e", "-m"])
    def test_readlink(self, tools: Path, tree: Path, option: str) -> None:
        for name in self.names(tree):
            self.same(["readlink", option, name], [str(tools / "readlink.sh"), option, name], tree)

    @pytest.mark.parametrize("option", ["-ms", "-sm", "-s", "-m", "-e"])
    def test_realpath(self, tools: Path, tree: Path, option: str) -> None:
        for name in self.names(tree):
            self.same(["realpath", option, name], [str(tools / "realpath.sh"), option, name], tree)

    def test_realpath_more_than_one_name(self, tools: Path, tree: Path) -> None:
        self.same(
            ["realpath", "-s", f"{tree}/f", f"{tree}/l1"],
            [str(tools / "realpath.sh"), "-s", f"{tree}/f", f"{tree}/l1"],
            tree,
        )

    def test_mkdir(self, tools: Path, tmp_path: Path) -> None:
        for run in ("gnu", "ours"):
            base = tmp_path / run
            (base / "there/deep").mkdir(parents=True)
            (base / "file").write_text("x")
            mkdir = ["mkdir"] if run == "gnu" else [str(tools / "mkdir.sh")]
            results = []
            for args in (
                ["-p", f"{base}/there/deep", f"{base}/there"],
                ["-p", f"{base}/new/a/b", f"{base}/there"],
                ["-p", f"{base}/file"],
                ["-p", f"{base}/file/x"],
                ["-p", "--", f"{base}/there"],
                ["-p", "rel/x"],
                [f"{base}/plain"],
            ):
                proc = subprocess.run(mkdir + args, capture_output=True, text=True, cwd=base, check=False)
                results.append((proc.stdout, proc.returncode))
            listing = sorted(
                (str(p.relative_to(base)), oct(p.stat().st_mode))
                for p in base.rglob("*")
                if not p.is_symlink()
            )
            if run == "gnu":
                expected = (results, listing)
            else:
                assert (results, listing) == expected


# --------------------------------------------------------------------------- fingerprint


class TestFingerprint:
    def test_input_names(self, tmp_path: Path) -> None:
        assert sorted(_rootfs.compute_inputs(options(tmp_path))) == sorted(_rootfs.INPUT_NAMES)

    def test_stable(self, tmp_path: Path) -> None:
        assert fp(tmp_path) == fp(tmp_path)

    def test_package_order_and_repeats_do_not_matter(self, tmp_path: Path) -> None:
        assert fp(tmp_path, packages=["python3", "curl"]) == fp(
            tmp_path, packages=["curl", "python3", "curl"]
        )

    def test_options_outside_the_content_do_not_matter(self, tmp_path: Path) -> None:
        base = fp(tmp_path)
        assert fp(tmp_path, mode="unshare", timeout=5, force=True, verify=True) == base
        assert fp(tmp_path, path=str(tmp_path / "elsewhere" / "other.tar")) == base
        assert fp(tmp_path, mirror="http://deb.debian.org/debian/") == base
        assert fp(tmp_path, path=str(tmp_path / "a.tgz")) == fp(tmp_path, path=str(tmp_path / "a.tar.gz"))

    @pytest.mark.parametrize(
        "change, name",
        [
            ({"suite": "trixie"}, "suite"),
            ({"mirror": "http://mirror.example/debian"}, "mirror"),
            ({"variant": "apt"}, "variant"),
            ({"packages": ["python3"]}, "packages"),
            ({"components": ["main", "contrib"]}, "components"),
            ({"architecture": "arm64"}, "architecture"),
            ({"extra_sources": ["deb http://deb.debian.org/debian bookworm-updates main"]}, "extra_sources"),
            ({"path": "/tmp/rootfs.tar.zst"}, "format"),
        ],
    )
    def test_changes_with(self, tmp_path: Path, change: dict, name: str) -> None:
        before = _rootfs.compute_inputs(options(tmp_path))
        after = _rootfs.compute_inputs(options(tmp_path, **change))
        assert fingerprint(before) != fingerprint(after)
        assert [key for key in before if before[key] != after[key]] == [name]

    def test_keyring_content_not_path_nor_mtime(self, tmp_path: Path) -> None:
        one = tmp_path / "one.gpg"
        one.write_bytes(b"key material")
        copy = tmp_path / "copy.gpg"
        copy.write_bytes(b"key material")
        base = fp(tmp_path, keyring=[str(one)])
        assert base != fp(tmp_path)
        assert fp(tmp_path, keyring=[str(copy)]) == base
        os.utime(one, (1_000_000, 1_000_000))
        assert fp(tmp_path, keyring=[str(one)]) == base
        one.write_bytes(b"other key material")
        assert fp(tmp_path, keyring=[str(one)]) != base

    def test_keyring_directory_content(self, tmp_path: Path) -> None:
        keys = tmp_path / "keys"
        keys.mkdir()
        (keys / "a.gpg").write_bytes(b"a")
        base = fp(tmp_path, keyring=[str(keys)])
        os.utime(keys / "a.gpg", (1_000_000, 1_000_000))
        assert fp(tmp_path, keyring=[str(keys)]) == base
        (keys / "b.gpg").write_bytes(b"b")
        assert fp(tmp_path, keyring=[str(keys)]) != base


# --------------------------------------------------------------------------- error messages

NOSUCHSUITE = """\
I: automatically chosen mode: root
I: chroot architecture amd64 is equal to the host's architecture
I: using /tmp/mmdebstrap.kanXQLROmu as tempdir
I: running apt-get update...
Ign:1 http://deb.debian.org/debian nosuchsuite InRelease
Err:2 http://deb.debian.org/debian nosuchsuite Release
  404  Not Found [IP: 203.0.113.80 80]
Reading package lists...
E: The repository 'http://deb.debian.org/debian nosuchsuite Release' does not have a Release file.
E: apt-get update --error-on=any -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed
I: main() received signal PIPE: waiting for setup...
I: removing tempdir /tmp/mmdebstrap.kanXQLROmu...
E: mmdebstrap failed to run
"""

REFUSED = """\
I: running apt-get update...
Ign:1 http://127.0.0.1:9/debian bookworm InRelease
Err:1 http://127.0.0.1:9/debian bookworm InRelease
  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
Reading package lists...
E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  \
Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
E: Some index files failed to download. They have been ignored, or old ones used instead.
E: apt-get update --error-on=any -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed
E: mmdebstrap failed to run
"""

UNRESOLVED = """\
Err:1 http://nosuchhost.invalid/debian bookworm InRelease
  Could not resolve 'nosuchhost.invalid'
Reading package lists...
E: Failed to fetch http://nosuchhost.invalid/debian/dists/bookworm/InRelease  \
Could not resolve 'nosuchhost.invalid'
E: Some index files failed to download. They have been ignored, or old ones used instead.
E: mmdebstrap failed to run
"""

NO_PACKAGE = """\
I: installing remaining packages inside the chroot...
Reading package lists...
Building dependency tree...
E: Unable to locate package nosuchpkg-xyz
E: setup failed: E: apt-get -o Dir::Bin::dpkg=env --yes install nosuchpkg-xyz failed
I: removing tempdir /tmp/mmdebstrap.vAf3oBu9_K...
E: mmdebstrap failed to run
"""

UNSIGNED = """\
Err:1 http://deb.debian.org/debian bookworm InRelease
  The following signatures couldn't be verified because the public key is not available: \
NO_PUBKEY 6ED0E7B82643E131 NO_PUBKEY 78DBA3BC47EF2265
Reading package lists...
W: GPG error: http://deb.debian.org/debian bookworm InRelease: The following signatures couldn't be \
verified because the public key is not available: NO_PUBKEY 6ED0E7B82643E131 NO_PUBKEY 78DBA3BC47EF2265
E: The repository 'http://deb.debian.org/debian bookworm InRelease' is not signed.
E: mmdebstrap failed to run
"""

NOSUCHSUITE_MSG = (
    "rootfs: suite 'nosuchsuite' not found on mirror http://deb.debian.org/debian (Release file missing)"
)

HTTP_404 = """\
Err:7 http://mirror.example/debian bookworm/main amd64 libc6 amd64 2.36-9
  404  Not Found [IP: 192.0.2.1 80]
E: Failed to fetch http://mirror.example/debian/pool/main/g/glibc/libc6_2.36-9_amd64.deb  \
404  Not Found [IP: 192.0.2.1 80]
E: mmdebstrap failed to run
"""


class TestExplainFailure:
    def explain(self, tmp_path: Path, log: str, **params) -> str:
        return _rootfs.explain_failure(log, options(tmp_path, **params), 25)

    def test_unknown_suite(self, tmp_path: Path) -> None:
        msg = self.explain(tmp_path, NOSUCHSUITE, suite="nosuchsuite")
        assert msg == NOSUCHSUITE_MSG

    def test_missing_release_of_an_extra_source(self, tmp_path: Path) -> None:
        msg = self.explain(
            tmp_path, NOSUCHSUITE, extra_sources=["deb http://deb.debian.org/debian nosuchsuite main"]
        )
        assert msg == (
            "rootfs: apt source 'http://deb.debian.org/debian nosuchsuite' not found (Release file missing)"
        )

    def test_connection_refused(self, tmp_path: Path) -> None:
        msg = self.explain(tmp_path, REFUSED, mirror="http://127.0.0.1:9/debian")
        assert msg == "rootfs: mirror http://127.0.0.1:9/debian unreachable: connection refused"

    def test_unresolvable(self, tmp_path: Path) -> None:
        msg = self.explain(tmp_path, UNRESOLVED, mirror="http://nosuchhost.invalid/debian")
        assert msg == (
            "rootfs: mirror http://nosuchhost.invalid/debian unreachable: "
            "cannot resolve host nosuchhost.invalid"
        )

    def test_unknown_package(self, tmp_path: Path) -> None:
        msg = self.explain(tmp_path, NO_PACKAGE, packages=["nosuchpkg-xyz"])
        assert (
            msg == "rootfs: package(s) not found in bookworm on http://deb.debian.org/debian: nosuchpkg-xyz"
        )

    def test_unsigned(self, tmp_path: Path) -> None:
        msg = self.explain(tmp_path, UNSIGNED)
        assert "cannot verify the signature of http://deb.debian.org/debian bookworm" in msg
        assert "6ED0E7B82643E131" in msg and "keyring" in msg

    def test_unsigned_ubuntu_names_the_keyring_package(self, tmp_path: Path) -> None:
        assert "ubuntu-keyring" in self.explain(tmp_path, UNSIGNED, suite="noble")

    def test_http_error(self, tmp_path: Path) -> None:
        msg = self.explain(tmp_path, HTTP_404, mirror="http://mirror.example/debian")
        assert msg.startswith(
            "rootfs: download from mirror http://mirror.example/debian failed: 404 Not Found"
        )

    def test_generic_uses_the_specific_error_line(self, tmp_path: Path) -> None:
        log = "I: x\nE: mmdebstrap failed to run\n"
        assert self.explain(tmp_path, "E: unshare mode needs subuid entries\n" + log) == (
            "rootfs: mmdebstrap failed (rc=25): unshare mode needs subuid entries"
        )
        assert self.explain(tmp_path, log) == "rootfs: mmdebstrap failed (rc=25): mmdebstrap failed to run"
        assert self.explain(tmp_path, "") == "rootfs: mmdebstrap failed (rc=25); see stderr_lines"

    def test_tail_lines(self) -> None:
        lines = _rootfs.tail_lines("\n".join(f"line {i}" for i in range(50)) + "\n\n")
        assert lines == [f"line {i}" for i in range(30, 50)]


# --------------------------------------------------------------------------- the bake (stand-in mmdebstrap)

FAKE_MMDEBSTRAP = """\
#!{python}
import os, subprocess, sys, tarfile, time, io
if sys.argv[1:] == ["--version"]:
    print("mmdebstrap 9.9-fake")
    sys.exit(0)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
target = [a for a in sys.argv[1:] if not a.startswith("-")][1]
behaviour = os.environ.get("FAKE_BEHAVIOUR", "ok")
print("I: automatically chosen mode: root", file=sys.stderr)
open(target, "wb").close()
if behaviour == "fail":
    print("E: The repository 'http://deb.debian.org/debian nosuchsuite Release' does not have a "
          "Release file.", file=sys.stderr)
    print("E: mmdebstrap failed to run", file=sys.stderr)
    sys.exit(25)
if behaviour == "hang":
    child = subprocess.Popen(["sleep", "300"])
    with open(os.environ["FAKE_CHILD"], "w") as handle:
        handle.write(str(child.pid))
    time.sleep(300)
time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
with tarfile.open(target, "w") as tar:
    info = tarfile.TarInfo("./usr/bin/python3")
    data = b"#!fake python3\\n" + os.environ.get("FAKE_CONTENT", "").encode()
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
print("I: success in 0.01 seconds", file=sys.stderr)
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a stand-in mmdebstrap first on PATH; return its call log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "mmdebstrap"
    script.write_text(FAKE_MMDEBSTRAP.replace("{python}", sys.executable))
    script.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    monkeypatch.setenv("PATH", "{}{}{}".format(bindir, os.pathsep, os.environ.get("PATH", "")))
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_CHILD", str(tmp_path / "child.pid"))
    return log


def calls(log: Path) -> int:
    return len(log.read_text().splitlines())


def bake(tmp_path: Path, check_mode: bool = False, diff: bool = False, **params) -> dict:
    params.setdefault("path", str(tmp_path / "out" / "rootfs.tar"))
    params.setdefault("suite", "bookworm")
    params.setdefault("architecture", "amd64")
    return _rootfs.bake_rootfs(params, check_mode=check_mode, diff=diff)


class TestBake:
    def test_build_then_unchanged(self, tmp_path: Path, fake: Path) -> None:
        first = bake(tmp_path, packages=["python3"])
        assert first["changed"] is True
        assert calls(fake) == 1
        out = tmp_path / "out" / "rootfs.tar"
        assert first["path"] == str(out)
        assert first["sha256"] == digest_file(str(out))
        assert first["size"] == out.stat().st_size
        assert first["changed_inputs"] == sorted(_rootfs.INPUT_NAMES)
        assert first["command"][0].endswith("/mmdebstrap")
        assert first["command"][-3] == "bookworm"
        assert first["command"][-2].endswith(".partial.tar")
        assert "--include=python3" in first["command"]
        assert isinstance(first["duration"], float)
        with tarfile.open(out) as tar:
            assert "./usr/bin/python3" in tar.getnames()

        sidecar = read_sidecar(str(out))
        assert sidecar is not None
        assert sidecar["fingerprint"] == first["fingerprint"]
        assert sidecar["inputs"] == first["inputs"]
        assert sidecar["sha256"] == first["sha256"] and sidecar["size"] == first["size"]
        assert sidecar["suite"] == "bookworm" and sidecar["architecture"] == "amd64"
        assert sidecar["builder"] == "mmdebstrap 9.9-fake"
        assert sidecar["built_at"].endswith("Z")
        assert leftovers(tmp_path / "out") == ["rootfs.tar", "rootfs.tar.bakery.json"]

        started = time.monotonic()
        second = bake(tmp_path, packages=["python3", "python3"])
        assert time.monotonic() - started < 1
        assert second["changed"] is False
        assert second["changed_inputs"] == []
        assert second["fingerprint"] == first["fingerprint"]
        assert second["sha256"] == first["sha256"]
        assert calls(fake) == 1

    def test_compressed_target_keeps_its_ending(self, tmp_path: Path, fake: Path) -> None:
        result = bake(tmp_path, path=str(tmp_path / "out" / "rootfs.tar.zst"))
        assert result["command"][-2].endswith(".partial.tar.zst")
        assert leftovers(tmp_path / "out") == ["rootfs.tar.zst", "rootfs.tar.zst.bakery.json"]

    def test_check_mode(self, tmp_path: Path, fake: Path) -> None:
        result = bake(tmp_path, check_mode=True, packages=["python3"])
        assert result["changed"] is True
        assert result["changed_inputs"] == sorted(_rootfs.INPUT_NAMES)
        assert result["msg"].startswith("would build rootfs: tarball does not exist")
        assert result["sha256"] is None
        assert not (tmp_path / "out").exists()
        assert calls(fake) == 0

        bake(tmp_path, packages=["python3"])
        result = bake(tmp_path, check_mode=True, suite="trixie", packages=["python3", "curl"])
        assert result["changed"] is True
        assert result["changed_inputs"] == ["packages", "suite"]
        assert result["msg"] == "would build rootfs: inputs changed: packages, suite"
        assert calls(fake) == 1

        result = bake(tmp_path, check_mode=True, packages=["python3"])
        assert result["changed"] is False

    def test_diff(self, tmp_path: Path, fake: Path) -> None:
        bake(tmp_path, packages=["python3"])
        result = bake(tmp_path, check_mode=True, diff=True, packages=["python3", "curl"])
        assert result["diff"]["before"]["packages"] == ["python3"]
        assert result["diff"]["after"]["packages"] == ["curl", "python3"]
        assert result["diff"]["after"]["suite"] == "bookworm"

    def test_force(self, tmp_path: Path, fake: Path) -> None:
        bake(tmp_path)
        result = bake(tmp_path, force=True)
        assert result["changed"] is True and result["msg"] == "built rootfs: force=true"
        assert calls(fake) == 2

    def test_changed_inputs_rebuild(self, tmp_path: Path, fake: Path) -> None:
        bake(tmp_path)
        result = bake(tmp_path, packages=["curl"])
        assert result["changed"] is True
        assert result["changed_inputs"] == ["packages"]
        assert calls(fake) == 2

    def test_size_mismatch_rebuilds(self, tmp_path: Path, fake: Path) -> None:
        bake(tmp_path)
        with open(tmp_path / "out" / "rootfs.tar", "ab") as handle:
            handle.write(b"x")
        result = bake(tmp_path, check_mode=True)
        assert result["changed"] is True
        assert result["msg"] == "would build rootfs: tarball size differs from its sidecar"
        assert result["changed_inputs"] == []

    def test_verify_rehashes(self, tmp_path: Path, fake: Path) -> None:
        bake(tmp_path)
        out = tmp_path / "out" / "rootfs.tar"
        data = bytearray(out.read_bytes())
        data[600] ^= 0xFF  # same size, other content
        out.write_bytes(bytes(data))
        assert bake(tmp_path)["changed"] is False
        result = bake(tmp_path, verify=True)
        assert result["changed"] is True
        assert calls(fake) == 2
        assert bake(tmp_path, verify=True)["changed"] is False

    def test_no_sidecar_rebuilds(self, tmp_path: Path, fake: Path) -> None:
        out = tmp_path / "out" / "rootfs.tar"
        out.parent.mkdir()
        out.write_bytes(b"somebody else's tarball")
        result = bake(tmp_path, check_mode=True)
        assert result["msg"] == "would build rootfs: tarball has no sidecar"

    def test_failure_leaves_nothing_and_keeps_the_old_tarball(
        self, tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FAKE_BEHAVIOUR", "fail")
        with pytest.raises(BakeryError) as info:
            bake(tmp_path, suite="nosuchsuite")
        assert info.value.msg == NOSUCHSUITE_MSG
        assert info.value.details["rc"] == 25
        assert info.value.details["stderr_lines"][-1] == "E: mmdebstrap failed to run"
        assert leftovers(tmp_path / "out") == []

        monkeypatch.setenv("FAKE_BEHAVIOUR", "ok")
        good = bake(tmp_path)
        monkeypatch.setenv("FAKE_BEHAVIOUR", "fail")
        with pytest.raises(BakeryError):
            bake(tmp_path, force=True)
        assert leftovers(tmp_path / "out") == ["rootfs.tar", "rootfs.tar.bakery.json"]
        assert digest_file(str(tmp_path / "out" / "rootfs.tar")) == good["sha256"]

    def test_timeout_kills_the_process_group(
        self, tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FAKE_BEHAVIOUR", "hang")
        started = time.monotonic()
        with pytest.raises(BakeryError, match=r"timed out after 1 s"):
            bake(tmp_path, timeout=1)
        assert time.monotonic() - started < 15
        assert leftovers(tmp_path / "out") == []
        child = int((tmp_path / "child.pid").read_text())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child), "mmdebstrap's children must be killed too"

    def test_parallel_targets_build_once(
        self, tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FAKE_DELAY", "0.5")
        results: list[dict] = []

        def target() -> None:
            results.append(bake(tmp_path, packages=["python3"]))

        threads = [threading.Thread(target=target) for _index in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert calls(fake) == 1
        assert sorted(r["changed"] for r in results) == [False, False, True]
        assert len({r["sha256"] for r in results}) == 1

    def test_missing_mmdebstrap(self, tmp_path: Path) -> None:
        with pytest.raises(BakeryError) as info:
            _rootfs.find_mmdebstrap(search_path=str(tmp_path))
        assert "install the Debian package 'mmdebstrap'" in info.value.msg

    def test_validation_runs_nothing(self, tmp_path: Path, fake: Path) -> None:
        with pytest.raises(BakeryError, match="invalid suite"):
            bake(tmp_path, suite="book worm")
        assert calls(fake) == 0
        assert not (tmp_path / "out").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_module_action_uses_module_params(tmp_path: Path, fake: Path) -> None:
    class Module:
        params = {"path": str(tmp_path / "r.tar"), "suite": "bookworm", "architecture": "amd64"}
        check_mode = True
        _diff = False

    result = _rootfs.module_action(Module())
    assert result["changed"] is True and "diff" not in result
