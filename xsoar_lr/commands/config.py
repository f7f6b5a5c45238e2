"""
C{xsoar-lr check} and C{xsoar-lr routes}: what a configuration would run
and publish, without running it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xsoar_lr.api import find_integrations, mask_secrets
from xsoar_lr.cli import CommandError, load_config_or_fail
from xsoar_lr.config import Config, route_for
from xsoar_lr.service import gateway_url


def add_commands(subparsers: Any) -> None:
    """
    Add C{check} and C{routes}.
    """
    check = subparsers.add_parser(
        "check",
        help="validate a configuration and show what would run",
        description="Validate a configuration file and show each instance, its "
        "integration, port and route. Exit code 0: valid; 1: problems (listed "
        "on standard error).",
    )
    check.add_argument(
        "config", nargs="?", help="the YAML file (default: the embedded configuration)"
    )
    check.add_argument(
        "--config",
        dest="config_option",
        metavar="CONFIG",
        help="the same, as an option",
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=run_check)

    routes = subparsers.add_parser(
        "routes",
        help="print the gateway URL of each routed instance",
        description="Print the gateway URL of each routed instance, one per line.",
    )
    routes.add_argument(
        "config", nargs="?", help="the YAML file (default: the embedded configuration)"
    )
    routes.add_argument(
        "--config",
        dest="config_option",
        metavar="CONFIG",
        help="the same, as an option",
    )
    routes.set_defaults(handler=run_routes)


def _config_path(args: argparse.Namespace) -> str | None:
    """
    The file named as an argument or with C{--config}.
    """
    if args.config and args.config_option and args.config != args.config_option:
        raise CommandError(
            "two different configuration files were named; give one, either "
            "as an argument or with --config."
        )
    path: str | None = args.config or args.config_option
    return path


def gateway_base(config: Config) -> str:
    """
    The gateway's base URL, as a client on this machine would use it.
    """
    return gateway_url(config.gateway.listen, config.gateway.port)


def describe(config: Config) -> dict[str, Any]:
    """
    What the configuration would run and publish, secrets masked.
    """
    integrations = find_integrations()
    base = gateway_base(config)
    return {
        "source": config.source,
        "state_dir": str(config.state_dir),
        "gateway": {"listen": config.gateway.listen, "url": base},
        "instances": [
            {
                "name": i.name,
                "integration": i.integration,
                "listen": f"{i.interface}:{i.port}",
                "scheme": "https" if i.certificate else "http",
                "routed": config.is_routed(i.name),
                "url": base + route_for(i.name) if config.is_routed(i.name) else None,
                "params": mask_secrets(
                    integrations[i.integration].parameters(), i.params
                ),
            }
            for i in config.instances
        ],
        "warnings": list(config.warnings),
    }


def run_check(args: argparse.Namespace) -> int:
    """
    Validate and describe a configuration.
    """
    config = load_config_or_fail(_config_path(args))
    described = describe(config)
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 0
    print(f"{config.source}: valid")
    print(f"State folder: {described['state_dir']}")
    print(f"Gateway: {config.gateway.listen} ({described['gateway']['url']})")
    for instance in described["instances"]:
        route = instance["url"] or "not routed"
        print(
            f"- {instance['name']!r}: {instance['integration']} on "
            f"{instance['scheme']}://{instance['listen']}; {route}"
        )
        for key, value in sorted(instance["params"].items()):
            print(f"    {key}: {json.dumps(value, default=str)}")
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_routes(args: argparse.Namespace) -> int:
    """
    Print the URL of each routed instance.
    """
    config = load_config_or_fail(_config_path(args))
    base = gateway_base(config)
    for instance in config.routed_instances:
        print(base + route_for(instance.name))
    return 0
