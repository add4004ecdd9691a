"""Make ``ansible_collections.bakery.images`` importable from this checkout's live source.

pytest.ini puts ``.collections/src`` on sys.path; this links the repository root there as
``ansible_collections/bakery/images`` (make does the same) so that plain ``pytest tests/unit``
also works in a fresh checkout.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / ".collections" / "src"
LINK = SRC / "ansible_collections" / "bakery" / "images"


def _link_checkout() -> None:
    if not LINK.is_symlink():
        LINK.parent.mkdir(parents=True, exist_ok=True)
        try:
            LINK.symlink_to(os.path.relpath(REPO, LINK.parent), target_is_directory=True)
        except FileExistsError:
            pass
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    # sys.path may have been searched before the directory existed.
    importlib.invalidate_caches()


_link_checkout()


@pytest.fixture(autouse=True)
def _no_host_libvirtd(monkeypatch, tmp_path_factory):
    """Unit tests never talk to this host's libvirtd: the janitor's sweep of this host (and a vagrant target's
    destroy) look at a socket that does not exist, unless a test points them at its stand-in."""
    from ansible_collections.bakery.images.plugins.module_utils import _libvirt

    monkeypatch.setattr(_libvirt, "SOCKET", str(tmp_path_factory.getbasetemp() / "no-libvirt-sock"))
