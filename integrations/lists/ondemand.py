"""
Update requests of the on-demand mode, kept as a small JSON file in the
instance's state folder so that they survive a restart.

C{xsoar-lr instances update NAME} writes the file (XSOAR's
C{export-indicators-list-update}); the running instance notices the change
on its next request and rebuilds its list.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "REQUEST_FILE",
    "UpdateRequestError",
    "read_request",
    "request_stamp",
    "write_request",
]

#: The file name of the pending update request in an instance's state folder.
REQUEST_FILE = "list-update.json"


class UpdateRequestError(ValueError):
    """
    The update request file cannot be read.
    """


def request_stamp(state_dir: Path) -> tuple[int, int] | None:
    """
    A cheap fingerprint of the request file (modification time and size),
    or C{None} when there is none.
    """
    try:
        info = os.stat(state_dir / REQUEST_FILE)
    except FileNotFoundError:
        return None
    return (info.st_mtime_ns, info.st_size)


def read_request(state_dir: Path) -> dict[str, Any] | None:
    """
    Read the update request, or return C{None} when there is none.

    :returns: a mapping with C{serial} (a number that grows with each
        request), C{requested_at} and C{params} (parameter name to value,
        plus C{offset}).
    :raises UpdateRequestError: naming the file when it is not a request.
    """
    path = state_dir / REQUEST_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UpdateRequestError(
            f"The update request {path} cannot be read ({e}); run "
            "'xsoar-lr instances update' again to replace it."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise UpdateRequestError(
            f"The update request {path} is not a mapping with 'params'; run "
            "'xsoar-lr instances update' again to replace it."
        )
    return data


def write_request(state_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """
    Record an update request atomically, replacing any earlier one.

    :param params: parameter name to value (already validated), and
        C{offset}.
    :returns: the request as written.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    request = {
        "serial": time.time_ns(),
        "requested_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params,
    }
    path = state_dir / REQUEST_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(request, indent=2), "utf-8")
    os.replace(temporary, path)
    return request
