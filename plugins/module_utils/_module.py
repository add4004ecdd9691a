# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue between thin modules and module_utils: one way to report results and errors."""

from __future__ import annotations

import traceback
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError


def run(module: Any, action: Callable[[Any], dict[str, Any]]) -> None:
    """Call ``action(module)`` and exit with its result.

    A BakeryError becomes ``fail_json`` with its message (what users read); anything else becomes a
    one-line message with the traceback kept in ``exception`` (shown at -vvv), never as the message.
    """
    try:
        result = action(module)
    except BakeryError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except Exception as exc:  # noqa: BLE001 - the user gets a message, the traceback goes to -vvv
        module.fail_json(
            msg="%s: %s" % (type(exc).__name__, exc),
            exception=traceback.format_exc(),
        )
    module.exit_json(**result)
