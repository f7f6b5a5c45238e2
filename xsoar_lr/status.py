"""
The host's view of its instances, kept in a small JSON file in the state
folder so that other processes (the command line, the Teams bot's C{status}
command) can read it without talking to the host.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["read_host_status", "read_status", "status_path", "write_status"]


def status_path(state_dir: Path) -> Path:
    """
    Where the host writes its status.
    """
    return state_dir / "status.json"


def write_status(
    state_dir: Path,
    records: Sequence[dict[str, Any]],
    host: dict[str, Any] | None = None,
) -> None:
    """
    Replace the status file with C{records} (one per instance) and C{host}
    (the host process's own facts), atomically, so a reader never sees half
    a file.
    """
    path = status_path(state_dir)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(
        json.dumps({"host": host or {}, "instances": list(records)}, indent=1)
    )
    os.replace(temporary, path)


def read_host_status(state_dir: Path) -> dict[str, Any]:
    """
    The host's own facts as it last reported them: C{pid}, C{config} (the
    file it runs, or C{None} for the embedded configuration), C{started}
    (a Unix time) and C{last_reload} (C{None}, or a dict with C{time},
    C{ok}, C{changes} and C{problems}).

    :returns: an empty dict when the host has never run with this folder.
    """
    try:
        data = json.loads(status_path(state_dir).read_text())
    except FileNotFoundError:
        return {}
    host: dict[str, Any] = data.get("host", {})
    return host


def read_status(state_dir: Path) -> list[dict[str, Any]]:
    """
    The instances as the host last reported them: each a dict with the keys
    C{name}, C{integration}, C{port}, C{routed}, C{route}, C{state}
    (C{starting}, C{running}, C{restarting} or C{stopped}), C{pid},
    C{restarts} and C{last_exit}.

    :returns: an empty list when the host has not written its status (it has
        never run with this state folder).
    """
    try:
        data = json.loads(status_path(state_dir).read_text())
    except FileNotFoundError:
        return []
    instances: list[dict[str, Any]] = data["instances"]
    return instances
