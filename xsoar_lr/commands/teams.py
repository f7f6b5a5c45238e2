"""
C{xsoar-lr teams}: work with the Microsoft Teams integration from scripts.

C{xsoar-lr teams send --instance NAME (--channel NAME | --user EMAIL) TEXT}
posts a notification through a Teams instance's bot, using the instance's
parameters and the conversation references it has stored. It runs in its own
process beside the host; the instance does not need to be running, but its
bot must have been added to the team (for a channel) or to a team the user
is in (for a user) while it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from xsoar_lr.cli import CommandError, load_config_or_fail

__all__ = ["add_commands"]


def add_commands(subparsers: Any) -> None:
    """
    Add C{teams} and its subcommands to the C{xsoar-lr} parser.
    """
    teams = subparsers.add_parser(
        "teams",
        help="post to Microsoft Teams through a Teams instance's bot",
        description="Work with the Microsoft Teams integration.",
    )
    commands = teams.add_subparsers(dest="teams_command", metavar="SUBCOMMAND")
    commands.required = True
    send = commands.add_parser(
        "send",
        help="send a notification to a channel or a user",
        description="Send TEXT (Markdown) to a Teams channel or to a user's chat "
        "with the bot of a Teams instance. The bot must have been added to the "
        "channel's team, or to a team the user is in.",
    )
    send.add_argument(
        "--instance", required=True, metavar="NAME", help="the Teams instance"
    )
    where = send.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--channel",
        metavar="NAME",
        help="a channel's name, in the instance's team (parameter team) or in "
        "any team the bot is in",
    )
    where.add_argument(
        "--user",
        metavar="EMAIL",
        help="a user's email address, user principal name or Azure AD object id",
    )
    send.add_argument("text", metavar="TEXT", help="the message; '-' reads stdin")
    send.add_argument(
        "--config",
        metavar="PATH",
        help="the host's configuration file (default: the embedded one)",
    )
    send.set_defaults(handler=send_command)


def send_command(args: argparse.Namespace) -> int:
    """
    Handle C{xsoar-lr teams send}.
    """
    config = load_config_or_fail(args.config)
    try:
        instance = config.instance(args.instance)
    except KeyError:
        teams = [i.name for i in config.instances if i.integration == "teams"]
        raise CommandError(
            f"The configuration {config.source} has no instance named "
            f"{args.instance!r}; its Teams instances are: "
            f"{', '.join(teams) or 'none'}."
        ) from None
    if instance.integration != "teams":
        raise CommandError(
            f"Instance {args.instance!r} is of integration {instance.integration!r}, "
            "not 'teams'; give a Teams instance."
        )
    text = sys.stdin.read() if args.text == "-" else args.text
    state_dir = config.instance_state_dir(instance.name)
    params = dict(instance.params)

    async def send(reactor: Any) -> str:
        from integrations.teams import make_notifier

        notifier = make_notifier(params, state_dir, reactor)
        if args.channel is not None:
            return str(await notifier.to_channel(args.channel, text))
        return str(await notifier.to_user(args.user, text))

    where = f"channel {args.channel!r}" if args.channel else f"user {args.user!r}"
    message_id = run_on_reactor(send, f"send to {where} through {args.instance!r}")
    print(f"Sent to {where} (message id {message_id or 'not given'}).")
    return 0


def run_on_reactor(work: Callable[[Any], Coroutine[Any, Any, str]], what: str) -> str:
    """
    Run C{work(reactor)} on the global reactor until it finishes.

    :raises CommandError: with the reason when it fails.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import ensureDeferred

    from integrations.teams.connector import ConnectorError
    from integrations.teams.references import ReferencesError

    reactor: Any = global_reactor
    outcome: dict[str, Any] = {}

    def start() -> None:
        d = ensureDeferred(work(reactor))

        def succeeded(result: str) -> None:
            outcome["result"] = result

        def failed(failure: Any) -> None:
            outcome["failure"] = failure

        def stop(_: object) -> None:
            reactor.stop()

        d.addCallbacks(succeeded, failed)
        d.addBoth(stop)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    failure = outcome.get("failure")
    if failure is not None:
        expected = (ConnectorError, ReferencesError, LookupError, ValueError)
        if failure.check(*expected):
            raise CommandError(f"Could not {what}: {failure.value}")
        raise CommandError(
            f"Could not {what}: {failure.getErrorMessage()} ({failure.type.__name__})."
        )
    if "result" not in outcome:
        raise CommandError(f"Interrupted before it could {what}.")
    return str(outcome["result"])
