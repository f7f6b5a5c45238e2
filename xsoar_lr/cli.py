"""
The C{xsoar-lr} command line.

Each group of subcommands lives in its own module under L{xsoar_lr.commands}
and adds itself to the parser through an C{add_commands(subparsers)}
function. A subcommand's handler takes the parsed arguments and returns the
exit code: 0 for success, 1 when the command ran and found a problem (an
invalid configuration, say), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xsoar_lr.config import Config

__all__ = ["main"]

# The modules that contribute subcommands, in the order --help lists them.
COMMAND_MODULES = (
    "xsoar_lr.commands.config",
    "xsoar_lr.commands.host",
    "xsoar_lr.commands.indicators",
    "xsoar_lr.commands.instances",
    "xsoar_lr.commands.teams",
    "xsoar_lr.commands.systemd",
)


class CommandError(Exception):
    """
    A subcommand could not do what was asked; the message says why and what
    to do, and is printed on standard error.
    """


def load_config_or_fail(path: str | os.PathLike[str] | None) -> Config:
    """
    Load a configuration for a subcommand; its problems become a
    L{CommandError} whose message is the full report.
    """
    from xsoar_lr.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        raise CommandError(e.report()) from None


def build_parser() -> argparse.ArgumentParser:
    """
    Build the parser with every installed subcommand.
    """
    parser = argparse.ArgumentParser(
        prog="xsoar-lr",
        description="Manage the xsoar-lr host: check configurations, see routes "
        "and work with the indicator store. Run the host itself with "
        "'twistd -n xsoar-lr --config FILE'.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line and return its exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CommandError as e:
        print(f"xsoar-lr {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (as "| head" does); there is no one to tell.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
