"""
Tests for C{xsoar-lr teams send}, run as its own process against a real
configuration file and the local fake Bot Connector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from test_teams_support import APP_ID, SECRET, TEAM_ID, TENANT, FakeMicrosoft, microsoft
from twisted.internet.utils import getProcessOutputAndValue

from integrations.teams.references import ConversationReferences
from xsoar_lr.commands.teams import add_commands

__all__ = ["microsoft"]

ROOT = Path(__file__).resolve().parents[1]

# The command line, as xsoar_lr.cli.main runs it, with only this module's
# subcommands (the lead adds the module to COMMAND_MODULES).
SCRIPT = """
import argparse, sys
from xsoar_lr.cli import CommandError
from xsoar_lr.commands.teams import add_commands
parser = argparse.ArgumentParser(prog="xsoar-lr")
add_commands(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.handler(args))
except CommandError as e:
    print(f"xsoar-lr {args.command}: {e}", file=sys.stderr)
    sys.exit(1)
"""


def write_config(tmp_path: Path, fake: FakeMicrosoft) -> Path:
    config = {
        "state_dir": str(tmp_path / "state"),
        "gateway": {"listen": "ssl:0:interface=127.0.0.1"},
        "instances": [
            {
                "name": "Teams Bot",
                "integration": "teams",
                "port": 7101,
                "params": {
                    "bot_id": APP_ID,
                    "bot_password": SECRET,
                    "openid_metadata_url": fake.base + "/openid",
                    "token_url": fake.base + "/{tenant}/oauth2/v2.0/token",
                    "service_url": fake.service_url,
                },
            },
            {"name": "edl", "integration": "edl", "port": 7102},
        ],
    }
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def state_dir(config: Path) -> Path:
    from xsoar_lr.config import load_config

    return load_config(config).instance_state_dir("Teams Bot")


def learnt(config: Path, fake: FakeMicrosoft) -> None:
    """
    Store what the instance would have learnt from being added to a team.
    """

    def learn(doc: dict[str, Any]) -> None:
        doc["service_url"] = fake.service_url
        doc["tenant_id"] = TENANT
        doc["teams"][TEAM_ID] = {
            "name": "SecOps",
            "service_url": fake.service_url,
            "tenant_id": TENANT,
            "channels": {TEAM_ID: "General", "19:alerts": "Alerts"},
        }
        doc["users"]["29:bob"] = {"email": "bob@example.com", "tenant_id": TENANT}

    ConversationReferences(state_dir(config)).update(learn)


async def run(*args: str) -> tuple[str, str, int]:
    from twisted.internet import reactor

    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-c", SCRIPT, *args], path=str(ROOT), reactor=reactor
    )
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_send_posts_to_a_channel(
    microsoft: FakeMicrosoft, tmp_path: Path
) -> None:
    """
    'teams send --channel' posts the text to the channel the instance knows.
    """
    config = write_config(tmp_path, microsoft)
    learnt(config, microsoft)
    out, err, code = await run(
        "teams",
        "send",
        "--instance",
        "Teams Bot",
        "--channel",
        "alerts",
        "Firewall list updated",
        "--config",
        str(config),
    )
    assert (code, err) == (0, "")
    assert "Sent to channel 'alerts'" in out
    sent = microsoft.sent()
    assert [r["path"] for r in sent] == ["conversations/19:alerts/activities"]
    assert sent[0]["body"]["text"] == "Firewall list updated"
    assert sent[0]["authorization"] == "Bearer access-1"


@pytest_twisted.ensureDeferred
async def test_send_opens_a_chat_with_a_user(
    microsoft: FakeMicrosoft, tmp_path: Path
) -> None:
    """
    'teams send --user' opens the one-to-one chat and remembers it.
    """
    config = write_config(tmp_path, microsoft)
    learnt(config, microsoft)
    out, err, code = await run(
        "teams",
        "send",
        "--instance",
        "Teams Bot",
        "--user",
        "Bob@Example.com",
        "hi Bob",
        "--config",
        str(config),
    )
    assert (code, err) == (0, "")
    assert microsoft.created[0]["members"] == [{"id": "29:bob"}]
    assert microsoft.sent()[0]["path"] == "conversations/a:personal-1/activities"
    refs = ConversationReferences(state_dir(config)).load()
    assert refs["users"]["29:bob"]["conversation_id"] == "a:personal-1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--instance", "nope", "--channel", "Alerts"],
            "has no instance named 'nope'; its Teams instances are: Teams Bot.",
        ),
        (
            ["--instance", "edl", "--channel", "Alerts"],
            "is of integration 'edl', not 'teams'",
        ),
        (
            ["--instance", "Teams Bot", "--channel", "Nowhere"],
            "knows no channel named 'Nowhere'",
        ),
        (
            ["--instance", "Teams Bot", "--user", "who@example.com"],
            "knows no user 'who@example.com'",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_send_failures_are_explained(
    microsoft: FakeMicrosoft, tmp_path: Path, args: list[str], message: str
) -> None:
    """
    A wrong instance, channel or user ends with exit code 1 and a sentence
    that says what is wrong.
    """
    config = write_config(tmp_path, microsoft)
    learnt(config, microsoft)
    out, err, code = await run("teams", "send", *args, "text", "--config", str(config))
    assert code == 1
    assert err.startswith("xsoar-lr teams: ")
    assert message in err
    assert microsoft.sent() == []


@pytest_twisted.ensureDeferred
async def test_a_refusing_connector_is_reported(
    microsoft: FakeMicrosoft, tmp_path: Path
) -> None:
    """
    A 403 from the Bot Connector ends the command with its explanation.
    """
    config = write_config(tmp_path, microsoft)
    learnt(config, microsoft)
    microsoft.connector_script = [(403, {}, {})]
    out, err, code = await run(
        "teams",
        "send",
        "--instance",
        "Teams Bot",
        "--channel",
        "General",
        "x",
        "--config",
        str(config),
    )
    assert code == 1
    assert "HTTP 403" in err and "removed from the team" in err


def test_channel_and_user_are_mutually_exclusive_and_required() -> None:
    """
    Exactly one of --channel and --user must be given.
    """
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["teams", "send", "--instance", "x", "text"])
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["teams", "send", "--instance", "x", "--channel", "a", "--user", "b", "t"]
        )
    args = parser.parse_args(["teams", "send", "--instance", "x", "--user", "b", "t"])
    assert (args.user, args.channel, args.text, args.config) == ("b", None, "t", None)
