"""
C{xsoar-lr status} and C{xsoar-lr reload}: talk to a running host through
its state folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from xsoar_lr.cli import CommandError
from xsoar_lr.config import ConfigError, read_state_dir
from xsoar_lr.status import read_host_status, read_status

#: How long C{xsoar-lr reload} waits for the host to answer.
RELOAD_WAIT = 30.0


def add_commands(subparsers: Any) -> None:
    """
    Add C{status} and C{reload}.
    """
    status = subparsers.add_parser(
        "status",
        help="show the running host's instances",
        description="Show whether the host runs, and each instance's state, "
        "process, restarts and route. Exit code 0: the host runs and every "
        "instance is running; 1: otherwise.",
    )
    status.add_argument("--config", help="the host's YAML file (default: embedded)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)

    reload = subparsers.add_parser(
        "reload",
        help="make the running host re-read its configuration",
        description="Send SIGHUP to the running host and wait for the result. "
        "Exit code 0: applied; 1: the host refused the file (its problems are "
        "printed) or does not run.",
    )
    reload.add_argument("--config", help="the host's YAML file (default: embedded)")
    reload.set_defaults(handler=run_reload)


def _state_dir(path: str | None) -> Path:
    try:
        return read_state_dir(path)
    except ConfigError as e:
        raise CommandError(e.report()) from None


def check_same_configuration(state_dir: Path, path: str | None) -> None:
    """
    Refuse to act on a host that runs another configuration than the one
    named, which happens when the file names no state folder (or was
    emptied) and the default folder belongs to another host.

    :raises CommandError: naming both files.
    """
    running = read_host_status(state_dir).get("config")
    named = None if path is None else str(Path(path).resolve())
    if running != named:
        raise CommandError(
            f"the host with the state folder {state_dir} runs "
            f"{running or 'the embedded default configuration'}, not "
            f"{named or 'the embedded default configuration'}; name the file "
            "that host was started with (its state_dir decides which host "
            "is meant)."
        )


def host_pid(state_dir: Path) -> int | None:
    """
    The running host's process id, or C{None} when no host runs.
    """
    pid = read_host_status(state_dir).get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def run_status(args: argparse.Namespace) -> int:
    """
    Print the host's and its instances' state.
    """
    state_dir = _state_dir(args.config)
    pid = host_pid(state_dir)
    if pid is not None:
        check_same_configuration(state_dir, args.config)
    instances = read_status(state_dir) if pid is not None else []
    now = time.time()
    for instance in instances:
        since = instance.get("running_since")
        instance["uptime"] = None if since is None else round(now - since, 3)
    healthy = pid is not None and all(i["state"] == "running" for i in instances)
    if args.json:
        print(
            json.dumps(
                {"running": pid is not None, "pid": pid, "instances": instances},
                indent=2,
            )
        )
        return 0 if healthy else 1
    if pid is None:
        print(f"No host runs with the state folder {state_dir}.")
        return 1
    print(f"Host running, pid {pid}, state in {state_dir}")
    for i in instances:
        route = i.get("route") or "not routed"
        last = f", last exit: {i['last_exit']}" if i.get("last_exit") else ""
        process = f"pid {i['pid']}" if i.get("pid") else "no process"
        health = f", reports: {i['health']}" if i.get("health") else ""
        print(
            f"- {i['name']!r} ({i['integration']}, port {i['port']}): {i['state']}, "
            f"{process}, restarts {i['restarts']}{last}{health}; {route}"
        )
    return 0 if healthy else 1


def run_reload(args: argparse.Namespace) -> int:
    """
    Ask the host to reload and report what it did.
    """
    state_dir = _state_dir(args.config)
    pid = host_pid(state_dir)
    if pid is None:
        raise CommandError(
            f"no host runs with the state folder {state_dir}; start it with "
            "'twistd -n xsoar-lr --config FILE'."
        )
    check_same_configuration(state_dir, args.config)
    asked = time.time()
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline:
        last = read_host_status(state_dir).get("last_reload")
        if last and last["time"] >= asked:
            if last["ok"]:
                print("Reloaded: " + "; ".join(last["changes"]))
                return 0
            print("The host refused the configuration and kept the old one:")
            for problem in last["problems"]:
                print(f"  {problem}")
            return 1
        time.sleep(0.1)
    raise CommandError(
        f"the host (pid {pid}) did not report a reload within {RELOAD_WAIT:.0f} "
        "seconds; see its log."
    )
