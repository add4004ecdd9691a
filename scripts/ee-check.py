"""Build the execution environment of execution-environment.yml with ansible-builder and run a bake in it.

    python scripts/ee-check.py [--base IMAGE] [--ca-bundle FILE] [--keep]       (make ee)

The EE is built from the definition as shipped, with what an offline machine must change, and nothing else:
  * --base: the base image (build argument EE_BASE_IMAGE). The shipped one is debian:bookworm from Docker
    Hub; without a registry, bakery makes the same Debian with python3 itself (make ee passes
    bakery/debian:bookworm, which the bake of the base image makes; see the Makefile).
  * The collections of requirements.yml come from here instead of GitHub and Galaxy: bakery.images from the
    tarball that scripts/collection built, community.docker and community.general from the installed
    "ansible" package of the virtual environment.
  * --ca-bundle: a CA bundle that pip inside the build trusts (a TLS-inspecting proxy in front of PyPI).
Then, in the EE, as AWX runs a job (the image's entrypoint, user 1000, /runner/project), it bakes a Docker
image from a Dockerfile on the host's engine (its socket mounted), twice: the second run must change nothing.
Prints the build and bake times and the image size. Removes the EE image and the baked image unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TAG = "bakery-ee:check"
BAKED = "bakery-ee-check/hello"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, text=True, **kwargs)


def definition(context: Path, ca_bundle: str | None) -> Path:
    """The shipped definition, with the collections from local sources (and the CA bundle) added."""
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    files = context / "files"
    files.mkdir(parents=True)
    (tarball,) = (REPO / ".collections" / "build").glob("bakery-images-*.tar.gz")
    shutil.copy(tarball, files / tarball.name)
    site = Path(sys.prefix) / "lib"  # the virtual environment, with the "ansible" package
    requirements = [{"name": "/build/files/%s" % tarball.name, "type": "file"}]
    shipped = [
        entry["name"] for entry in yaml.safe_load((REPO / "requirements.yml").read_text())["collections"]
    ]
    todo = [name for name in shipped if "/" not in name]  # not bakery.images, from its repository
    while todo:  # with their own dependencies (community.docker has one)
        name = todo.pop()
        if (files / name).exists():
            continue
        namespace, collection = name.split(".")
        (installed,) = site.glob("python3*/site-packages/ansible_collections/%s/%s" % (namespace, collection))
        shutil.copytree(installed, files / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        requirements.append({"name": "/build/files/%s" % name, "type": "dir"})
        manifest = json.loads((installed / "MANIFEST.json").read_text())
        todo += list(manifest["collection_info"].get("dependencies") or {})
    (context / "requirements.yml").write_text(yaml.safe_dump({"collections": requirements}))
    ee["dependencies"]["galaxy"] = "requirements.yml"
    for key in ("python", "system"):
        shutil.copy(REPO / ee["dependencies"][key], context / ee["dependencies"][key])
    # _build/files in the context; the galaxy stage copies _build to /build and installs from there
    ee["additional_build_files"] = [{"src": "files", "dest": "files"}]
    steps = ee.setdefault("additional_build_steps", {})
    if ca_bundle:
        shutil.copy(ca_bundle, files / "ca-bundle.crt")
        steps["prepend_base"] = [
            "COPY _build/files/ca-bundle.crt /etc/ssl/certs/bakery-ee-build.crt",
            "ENV PIP_CERT=/etc/ssl/certs/bakery-ee-build.crt",
            *steps.get("prepend_base", []),
        ]
    path = context / "execution-environment.yml"
    path.write_text(yaml.safe_dump(ee, sort_keys=False))
    return path


BAKE = {
    "bake": {
        "name": "ee-check",
        "output_dir": "output",
        "targets": [
            {
                "name": "hello",
                "docker": {"repository": BAKED, "tags": ["latest"], "context": "context"},
            }
        ],
    }
}


def bake_in_ee(project: Path) -> dict:
    """The bake playbook in the EE, as an AWX job: the image's entrypoint, its user, /runner/project."""
    socket = "/var/run/docker.sock"
    argv = [
        "docker", "run", "--rm", "--group-add", str(os.stat(socket).st_gid),
        "-v", "%s:%s" % (socket, socket), "-v", "%s:/runner/project" % project, "-w", "/runner/project",
        "-e", "ANSIBLE_STDOUT_CALLBACK=json", "-e", "ANSIBLE_LOCALHOST_WARNING=false",
        TAG, "ansible-playbook", "bakery.images.bake", "-e", "@bake.yml",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(
            "the bake in the EE failed (%d):\n%s\n%s"
            % (done.returncode, done.stdout[-4000:], done.stderr[-2000:])
        )
    stats = json.loads(done.stdout[done.stdout.index("{") :])["stats"]
    return {"seconds": seconds, "changed": {host: s["changed"] for host, s in stats.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="base image (EE_BASE_IMAGE); default: the definition's")
    parser.add_argument("--ca-bundle", default=None, help="CA bundle pip trusts during the build")
    parser.add_argument("--keep", action="store_true", help="keep the EE image and the baked image")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bakery-ee-"))
    try:
        context = work / "definition"
        path = definition(context, args.ca_bundle)
        build = [sys.executable, "-m", "ansible_builder", "build", "-f", str(path), "-c", str(work / "context"),
                 "-t", TAG, "--container-runtime", "docker", "-v", "2"]  # fmt: skip
        if args.base:
            build += ["--build-arg", "EE_BASE_IMAGE=%s" % args.base]
        started = time.monotonic()
        run(build, cwd=context)
        build_seconds = time.monotonic() - started
        size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", TAG], capture_output=True).stdout)

        project = work / "project"
        (project / "context").mkdir(parents=True)
        (project / "context" / "Dockerfile").write_text(
            "FROM %s\nRUN echo baked in the EE > /hello\n" % (args.base or "debian:bookworm")
        )
        (project / "bake.yml").write_text(yaml.safe_dump(BAKE))
        os.chmod(project, 0o777)  # the EE's user (1000) writes the output directory and the manifest
        first = bake_in_ee(project)
        second = bake_in_ee(project)
        hello = run(
            ["docker", "run", "--rm", "%s:latest" % BAKED, "cat", "/hello"], capture_output=True
        ).stdout
        manifest = json.loads((project / "output" / "bake-manifest.json").read_text())
        assert hello == "baked in the EE\n", hello
        assert manifest["artifacts"][0]["target"] == "hello", manifest
        assert first["changed"].get("bakery-hello", 0) > 0, first
        assert not any(second["changed"].values()), "the second bake in the EE changed something: %s" % second
        print(
            "ee-check: built %s in %.0f s (%.0f MiB); bake in the EE: %.0f s, again %.0f s with changed=0"
            % (TAG, build_seconds, size / 2**20, first["seconds"], second["seconds"])
        )
    finally:
        if not args.keep:
            subprocess.run(
                ["docker", "image", "rm", "-f", TAG, "%s:latest" % BAKED], capture_output=True, check=False
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
