"""The refresh of the package lists in a builder seeded with those kept beside the bake's rootfs tarball
(``<rootfs>.apt-lists.tar``): what a docker, chroot or VM builder's bake asserts of it."""

from __future__ import annotations

import re
import tarfile
import urllib.request

REFRESH_TASK = "Refresh the package lists before the first provisioner"


def check_seeded_refresh(run, started: dict, builder: str, mirror: str, suite: str) -> None:
    """The builder *started* (the result of the task that started it, with its ``step_cache`` and ``apt_lists``)
    got the package lists kept with the rootfs: its refresh before the first provisioner fetched no Packages index
    (with no lists apt fetches the suite's whole) whenever the mirror's (*mirror*, *suite*) Release is still the
    one kept. A builder that started from a step kept by an earlier bake got no seed and ran no refresh."""
    refreshed = [r for r in run.task_results(REFRESH_TASK) if not r.get("skipped")]
    if started["step_cache"]["resume"]:
        assert "apt_lists" not in started and not refreshed, started
        return
    (refresh,) = refreshed
    seeded = started.get("apt_lists")
    print(
        "refresh in the %s (%s): %.1f s\n%s"
        % (builder, "seeded" if seeded else "not seeded", run.task_seconds(REFRESH_TASK), refresh["stdout"])
    )
    assert seeded and seeded["files"] >= 2 and "error" not in seeded, seeded
    mirror = mirror.rstrip("/")
    release = "%s_dists_%s_InRelease" % (mirror.split("://", 1)[1].replace("/", "_"), suite)
    with tarfile.open(seeded["path"]) as archive:
        kept = archive.extractfile(release).read()
    with urllib.request.urlopen("%s/dists/%s/InRelease" % (mirror, suite), timeout=60) as response:
        current = response.read()
    if kept == current:
        # the Release again at most (a mirror that answers no If-Modified-Since sends it whole: apt then compares it
        # with the one it has), never its Packages index, which apt gets with no lists
        release_line = r"^(Hit|Get):\d+ %s %s InRelease( |$)" % (re.escape(mirror), suite)
        assert re.search(release_line, refresh["stdout"], re.MULTILINE), refresh["stdout"]
        assert not re.search(r"^Get:.* Packages", refresh["stdout"], re.MULTILINE), refresh["stdout"]
