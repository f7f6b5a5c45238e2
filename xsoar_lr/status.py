"""
The host's view of its instances, kept in a small JSON file in the state
folder so that other processes (the command line, the Teams bot's C{status}
command) can read it without talking to the host.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "StateDirInUse",
    "lock_state_dir",
    "read_host_status",
    "read_status",
    "status_path",
    "write_status",
]


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


class StateDirInUse(Exception):
    """
    Another host runs with the same state folder.

    :ivar pid: that host's process id, if it could be read.
    """

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"another host (pid {pid})" if pid else "another host"
        super().__init__(
            f"{who} already uses the state folder {state_dir}; give each host "
            "its own state_dir, or stop the other one first."
        )


def lock_state_dir(state_dir: Path) -> int:
    """
    Claim C{state_dir} for this process, so that two hosts never share one
    (their instances would share folders and their status would mix). The
    claim lasts until the returned descriptor is closed or the process ends.

    :returns: the descriptor of the lock file.
    :raises StateDirInUse: when another host holds the folder.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "host.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid: int | None = int(os.read(fd, 32).decode().strip() or "0") or None
        except ValueError:
            pid = None
        os.close(fd)
        raise StateDirInUse(state_dir, pid) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
