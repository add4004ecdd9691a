"""Python bytecode stays valid in the images: a bake clamps the times of what provisioning wrote to the bake's
epoch, and a timestamp-based ``.pyc`` records its source's time, so the clamp must carry it over (as ``pip
install`` or a Debian package of Python modules leave them in a container, which gets no SOURCE_DATE_EPOCH).
The disks' side (bytecode Debian compiled, and what a builder VM's Python wrote) is test_qemu's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from conftest import BAKE_BASE, docker_client, remove_repositories
from test_provisioners import bake

PROBE = "/usr/local/lib/python3.11/dist-packages/bakery_probe.py"
COMPILE = (
    "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True,"
    " invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)"
)
# -v names the file Python takes a module's code from, or says its bytecode is stale; it writes none
LOAD = (
    "PYTHONDONTWRITEBYTECODE=1 python3 -v -c 'import bakery_probe' 2>&1 | grep bakery_probe; stat -c %Y "
    + PROBE
)


def test_bytecode_written_by_provisioning_is_valid_in_the_image(bake_base, tmp_path: Path) -> None:
    repository = "bakery-test/bytecode-%s" % uuid.uuid4().hex[:8]
    definition = {
        "name": "bytecode",
        "cache_dir": bake_base["cache_dir"],
        "base": dict(BAKE_BASE),
        "package_lists": "keep",
        "source_date_epoch": 1_600_000_000,
        "provisioners": [
            {
                "name": "module",
                "shell": {
                    "inline": [
                        "mkdir -p %s" % Path(PROBE).parent,
                        "printf 'VALUE = 1\\n' > %s" % PROBE,
                        'python3 -c "%s" %s' % (COMPILE, PROBE),
                    ]
                },
            }
        ],
        "targets": [{"name": "image", "docker": {"repository": repository, "tags": ["latest"]}}],
    }
    try:
        run = bake(tmp_path, definition)
        assert run.rc == 0, run.explain()
        (entry,) = json.loads((tmp_path / "run" / "output" / "bake-manifest.json").read_text())["artifacts"]
        out = docker_client().containers.run(entry["id"], ["sh", "-c", LOAD], remove=True).decode()
        # the source has the bake's epoch, and Python loads the module's code from its bytecode
        assert out.splitlines()[-1] == "1600000000", out
        cached = "%s/__pycache__/bakery_probe.cpython-311.pyc" % Path(PROBE).parent
        assert "code object from '%s'" % cached in out, out
    finally:
        remove_repositories(repository)
