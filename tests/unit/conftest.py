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
