"""
C{xsoar-lr systemd-unit}: the systemd units that run the host as a
hardened service, optionally with the gateway's socket passed in by systemd
so that it can listen on port 443 without running as root.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from xsoar_lr.cli import CommandError, load_config_or_fail

#: The name that the socket unit gives the gateway's socket, and that the
#: configuration's C{gateway.listen} names.
SOCKET_NAME = "gateway"


def add_commands(subparsers: Any) -> None:
    """
    Add C{systemd-unit}.
    """
    unit = subparsers.add_parser(
        "systemd-unit",
        help="print systemd units for the installed host",
        description="Print a systemd service unit that runs the host from this "
        "installation, and with --socket a socket unit that hands it the "
        "gateway's listening socket. Save them as "
        "/etc/systemd/system/NAME.service and NAME.socket.",
    )
    unit.add_argument("--config", required=True, help="the host's YAML file")
    unit.add_argument("--user", default="xsoar-lr", help="the user to run as")
    unit.add_argument("--name", default="xsoar-lr", help="the unit's name")
    unit.add_argument(
        "--socket",
        metavar="PORT",
        type=int,
        help="also print a socket unit listening on PORT (for example 443)",
    )
    unit.set_defaults(handler=run_systemd_unit)


def twistd_path() -> Path:
    """
    The twistd of this installation.
    """
    return Path(sys.executable).parent / "twistd"


def service_unit(
    config_path: Path,
    state_dir: Path,
    user: str,
    name: str,
    socket_activated: bool,
    writable: tuple[Path, ...] = (),
) -> str:
    """
    The service unit's text.

    :param writable: folders besides C{state_dir} the host writes to (those
        of access logs), which the hardening would otherwise make read-only.

    Home folders are hidden and C{/tmp} is private in a hardened unit; where
    this installation or its files live there, the unit relaxes exactly that
    setting (see L{relaxed_settings}).
    """
    command = shlex.join(
        [
            str(twistd_path()),
            "--nodaemon",
            "--pidfile=",
            "xsoar-lr",
            "--config",
            str(config_path),
        ]
    )
    protect_home, private_tmp = relaxed_settings(
        (twistd_path(), config_path, state_dir, *writable)
    )
    socket_lines = (
        f"Requires={name}.socket\nAfter={name}.socket\n" if socket_activated else ""
    )
    return f"""\
[Unit]
Description=xsoar-lr: long-running XSOAR-style integrations behind a TLS gateway
Documentation=https://pypi.org/project/xsoar-lr/
After=network-online.target
Wants=network-online.target
{socket_lines}
[Service]
Type=simple
User={user}
Group={user}
ExecStart={command}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# The host stops its instances itself on SIGTERM; systemd kills what is
# left only after the timeout.
KillMode=mixed
TimeoutStopSec=30
WorkingDirectory={state_dir}
ReadWritePaths={" ".join(str(p) for p in (state_dir, *writable))}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp={private_tmp}
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"""


def socket_unit(port: int, name: str) -> str:
    """
    The socket unit's text: systemd binds C{port} and hands the socket to
    the host under the name L{SOCKET_NAME}.
    """
    return f"""\
[Unit]
Description=xsoar-lr gateway socket

[Socket]
ListenStream={port}
FileDescriptorName={SOCKET_NAME}
NoDelay=true
Service={name}.service

[Install]
WantedBy=sockets.target
"""


#: Where home folders are, which C{ProtectHome=yes} hides.
HOME_FOLDERS = (Path("/home"), Path("/root"), Path("/run/user"))

#: What C{PrivateTmp=yes} replaces with an empty folder of the service's own.
TEMPORARY_FOLDERS = (Path("/tmp"), Path("/var/tmp"))


def _under(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def relaxed_settings(paths: tuple[Path, ...]) -> tuple[str, str]:
    """
    The C{ProtectHome} and C{PrivateTmp} values that let the service reach
    C{paths}: home folders become read-only rather than hidden when a path is
    in one (the state folder stays writable through C{ReadWritePaths}), and
    C{/tmp} stays shared when a path is in it.
    """
    protect_home = "read-only" if any(_under(p, HOME_FOLDERS) for p in paths) else "yes"
    private_tmp = "no" if any(_under(p, TEMPORARY_FOLDERS) for p in paths) else "yes"
    return protect_home, private_tmp


def run_systemd_unit(args: argparse.Namespace) -> int:
    """
    Print the units for the configuration named.
    """
    config_path = Path(args.config).resolve()
    config = load_config_or_fail(config_path)
    activated = config.gateway.listen.startswith("systemd:")
    if args.socket is not None and not activated:
        raise CommandError(
            "--socket needs the gateway to take its socket from systemd; set "
            f'gateway.listen to "systemd:domain=INET:name={SOCKET_NAME}" in '
            f"{config_path}."
        )
    print(f"# /etc/systemd/system/{args.name}.service")
    logs = [config.gateway.access_log] + [i.access_log for i in config.instances]
    writable = tuple(
        sorted(
            {log.path.parent for log in logs if log is not None} - {config.state_dir}
        )
    )
    protect_home, private_tmp = relaxed_settings(
        (twistd_path(), config_path, config.state_dir, *writable)
    )
    if protect_home != "yes" or private_tmp != "yes":
        print(
            "warning: this installation, its configuration or its state is in "
            "a home folder or /tmp, so the unit "
            + (
                "makes home folders read-only instead of hiding them"
                if protect_home != "yes"
                else ""
            )
            + (" and " if protect_home != "yes" and private_tmp != "yes" else "")
            + ("shares /tmp" if private_tmp != "yes" else "")
            + "; install under /opt, keep the configuration in /etc and the "
            "state in /var/lib for the fully hardened unit.",
            file=sys.stderr,
        )
    print(
        service_unit(
            config_path,
            config.state_dir,
            args.user,
            args.name,
            args.socket is not None,
            writable,
        )
    )
    if args.socket is not None:
        print(f"# /etc/systemd/system/{args.name}.socket")
        print(socket_unit(args.socket, args.name))
    return 0
