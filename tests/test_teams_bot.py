"""
Tests for the Teams instance over real sockets: routing, conversation
references (and their surviving a restart), every command, adaptive card
submissions and invokes, and a slow Bot Connector not holding up the
endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_teams_support import (
    BOT_ID,
    TEAM_ID,
    TENANT,
    BotServer,
    FakeMicrosoft,
    activity,
    channel_activity,
    host_dir,
    http_client,
    make_token,
    microsoft,
    served,
    start_bot,
)
from twisted.internet.defer import Deferred

from integrations.teams.bot import strip_bot_mention
from integrations.teams.commands import guess_indicator_type
from integrations.teams.references import ConversationReferences
from xsoar_lr.indicators import Indicator, IndicatorType, Score
from xsoar_lr.store import IndicatorStore, store_path

__all__ = ["host_dir", "microsoft", "served"]


async def post(server: BotServer, act: Any, **kwargs: Any) -> tuple[int, bytes]:
    response = await server.post(act, **kwargs)
    body = await response.content()
    await server.bot.idle()
    return response.code, body


def last_reply(fake: FakeMicrosoft) -> dict[str, Any]:
    sent = fake.sent()
    assert sent, "the bot sent no reply"
    body: dict[str, Any] = sent[-1]["body"]
    return body


def card_facts(reply: dict[str, Any]) -> dict[str, str]:
    card = reply["attachments"][0]["content"]
    assert (
        reply["attachments"][0]["contentType"]
        == "application/vnd.microsoft.card.adaptive"
    )
    facts = [b for b in card["body"] if b["type"] == "FactSet"][0]["facts"]
    return {f["title"]: f["value"] for f in facts}


# -- routing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "code", "allow"),
    [
        ("GET", "/", 405, b"POST"),
        ("PUT", "/", 405, b"POST"),
        ("DELETE", "/", 405, b"POST"),
        ("POST", "/health", 405, b"GET, HEAD"),
        ("GET", "/elsewhere", 404, None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_only_post_reaches_the_messaging_endpoint(
    served: BotServer, method: str, path: str, code: int, allow: bytes | None
) -> None:
    """
    The endpoint takes POST only; other methods get 405 with Allow.
    """
    response = await http_client().request(method, served.url + path)
    await response.content()
    assert response.code == code
    assert response.headers.getRawHeaders(b"allow", [None])[0] == allow


@pytest_twisted.ensureDeferred
async def test_health_answers_for_monitoring(served: BotServer) -> None:
    """
    GET /health answers 200 without a token.
    """
    response = await http_client().get(served.url + "/health")
    assert response.code == 200
    assert b"Teams bot teams is up" in await response.content()


@pytest_twisted.ensureDeferred
async def test_an_unauthenticated_activity_changes_nothing(served: BotServer) -> None:
    """
    Without a valid token the activity is neither remembered nor answered.
    """
    code, _ = await post(served, activity(served.microsoft, text="help"), token=None)
    assert code == 401
    assert served.microsoft.sent() == []
    assert not (served.state_dir / "teams-conversations.json").exists()


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_json_is_refused(served: BotServer) -> None:
    """
    A body that is not an activity cannot pass the service URL check.
    """
    token = make_token(service_url=served.microsoft.service_url)
    code, _ = await post(served, b"{not json", token=token)
    assert code == 401


# -- conversation references ---------------------------------------------------


def bot_added(fake: FakeMicrosoft) -> dict[str, Any]:
    return activity(
        fake,
        "conversationUpdate",
        membersAdded=[{"id": BOT_ID}],
        conversation={"id": TEAM_ID, "conversationType": "channel", "tenantId": TENANT},
        channelData={
            "eventType": "teamMemberAdded",
            "tenant": {"id": TENANT},
            "team": {"id": TEAM_ID, "name": "SecOps", "aadGroupId": "group-1"},
        },
    )


def team_event(fake: FakeMicrosoft, event: str, **channel_data: Any) -> dict[str, Any]:
    team = {"id": TEAM_ID}
    team.update(channel_data.pop("team", {}))
    return activity(
        fake,
        "conversationUpdate",
        conversation={"id": TEAM_ID, "conversationType": "channel", "tenantId": TENANT},
        channelData={
            "eventType": event,
            "tenant": {"id": TENANT},
            "team": team,
            **channel_data,
        },
    )


def with_roster(fake: FakeMicrosoft) -> None:
    fake.channels[TEAM_ID] = [
        {"id": TEAM_ID, "name": None},
        {"id": "19:alerts@thread.tacv2", "name": "Alerts"},
    ]
    fake.members[TEAM_ID] = [
        {
            "id": "29:user-2",
            "name": "Bob",
            "email": "bob@example.com",
            "userPrincipalName": "bob@example.com",
            "aadObjectId": "00000000-bbbb-0000-0000-000000000002",
            "tenantId": TENANT,
        }
    ]


@pytest_twisted.ensureDeferred
async def test_joining_a_team_remembers_its_channels_and_members(
    served: BotServer,
) -> None:
    """
    When the bot is added to a team it keeps the team, tenant and service
    URL, and reads the team's channels and members.
    """
    with_roster(served.microsoft)
    code, _ = await post(served, bot_added(served.microsoft))
    assert code == 200
    document = ConversationReferences(served.state_dir).load()
    team = document["teams"][TEAM_ID]
    assert team["name"] == "SecOps"
    assert team["aad_group_id"] == "group-1"
    assert team["tenant_id"] == TENANT
    assert team["service_url"] == served.microsoft.service_url
    assert team["channels"] == {TEAM_ID: "General", "19:alerts@thread.tacv2": "Alerts"}
    assert document["users"]["29:user-2"]["email"] == "bob@example.com"
    assert document["bot"] == {"id": BOT_ID, "name": "LR Bot"}
    assert served.microsoft.sent() == []


@pytest_twisted.ensureDeferred
async def test_team_and_channel_events_keep_the_references_current(
    served: BotServer,
) -> None:
    """
    Renames, new and deleted channels, and the team's deletion are followed.
    """
    fake = served.microsoft
    await post(served, bot_added(fake))
    await post(served, team_event(fake, "teamRenamed", team={"name": "Blue Team"}))
    await post(
        served,
        team_event(
            fake, "channelCreated", channel={"id": "19:new", "name": "Incidents"}
        ),
    )
    await post(
        served,
        team_event(fake, "channelRenamed", channel={"id": "19:new", "name": "IR"}),
    )
    refs = ConversationReferences(served.state_dir)
    team = refs.load()["teams"][TEAM_ID]
    assert team["name"] == "Blue Team"
    assert team["channels"]["19:new"] == "IR"
    await post(served, team_event(fake, "channelDeleted", channel={"id": "19:new"}))
    assert "19:new" not in refs.load()["teams"][TEAM_ID]["channels"]
    await post(served, team_event(fake, "teamDeleted"))
    assert refs.load()["teams"] == {}


@pytest_twisted.ensureDeferred
async def test_removing_the_bot_forgets_the_team(served: BotServer) -> None:
    """
    A bot removed from a team can no longer post there.
    """
    await post(served, bot_added(served.microsoft))
    removed = team_event(served.microsoft, "teamMemberRemoved")
    removed["membersRemoved"] = [{"id": BOT_ID}]
    await post(served, removed)
    assert ConversationReferences(served.state_dir).load()["teams"] == {}


@pytest_twisted.ensureDeferred
async def test_references_survive_a_restart(
    microsoft: FakeMicrosoft, host_dir: Path
) -> None:
    """
    A new instance over the same state folder can post to the channels and
    users the old one learnt of.
    """
    state_dir = host_dir / "instances" / "teams"
    with_roster(microsoft)
    store = IndicatorStore.open(store_path(host_dir))
    first = start_bot(microsoft, state_dir, store)
    try:
        await post(first, bot_added(microsoft))
        await post(first, activity(microsoft, text="help"))
    finally:
        await first.port.stopListening()

    second = start_bot(microsoft, state_dir, store)
    try:
        notifier = second.bot.notifier
        before = len(microsoft.connector_requests)
        await notifier.to_channel("alerts", "channel notice")
        await notifier.to_user("00000000-aaaa-0000-0000-000000000001", "to Ann")
        await notifier.to_user("BOB@example.com", "to Bob")
    finally:
        await second.port.stopListening()
        store.close()
    posts = [
        (r["path"], r["body"].get("text"))
        for r in microsoft.connector_requests[before:]
        if r["method"] == "POST"
    ]
    assert posts == [
        ("conversations/19:alerts@thread.tacv2/activities", "channel notice"),
        ("conversations/a:personal-chat-1/activities", "to Ann"),
        ("conversations", None),
        ("conversations/a:personal-1/activities", "to Bob"),
    ]
    # The conversation opened for Bob is remembered too.
    third = ConversationReferences(state_dir).load()
    assert third["users"]["29:user-2"]["conversation_id"] == "a:personal-1"


@pytest_twisted.ensureDeferred
async def test_an_unknown_channel_is_looked_up_then_reported(served: BotServer) -> None:
    """
    A channel made since the bot joined is found by asking the connector;
    a channel that does not exist is reported with the known ones.
    """
    fake = served.microsoft
    await post(served, bot_added(fake))
    fake.channels[TEAM_ID] = [{"id": "19:late", "name": "Late"}]
    await served.bot.notifier.to_channel("Late", "hello")
    assert fake.sent()[-1]["path"] == "conversations/19:late/activities"
    with pytest.raises(LookupError, match="General, Late"):
        await served.bot.notifier.to_channel("Nowhere", "hello")


# -- commands -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_help_is_answered_in_the_chat(served: BotServer) -> None:
    """
    'help' in a one-to-one chat is answered there, as a reply.
    """
    act = activity(served.microsoft, text="help")
    code, _ = await post(served, act)
    assert code == 200
    request = served.microsoft.sent()[-1]
    assert request["path"] == "conversations/a:personal-chat-1/activities"
    assert request["body"]["replyToId"] == act["id"]
    for command in ("lookup", "block", "unblock", "status"):
        assert f"**{command}**" in request["body"]["text"]


@pytest_twisted.ensureDeferred
async def test_an_unknown_command_gets_a_short_help(served: BotServer) -> None:
    """
    Something the bot does not understand is answered with the commands.
    """
    await post(served, activity(served.microsoft, text="dance please"))
    text = last_reply(served.microsoft)["text"]
    assert text.startswith("I do not know the command *dance*")
    assert "**lookup**" in text


@pytest_twisted.ensureDeferred
async def test_lookup_in_a_channel_answers_with_a_card(served: BotServer) -> None:
    """
    In a channel the bot's mention is taken out, and 'lookup' answers with
    an adaptive card of the indicator's details, in the thread.
    """
    served.store.add(
        [
            Indicator(
                "198.51.100.7",
                IndicatorType.IP,
                score=Score.BAD,
                tags=("c2",),
                custom_fields={"description": "known C2"},
            )
        ],
        source="abuse.ch",
    )
    await post(served, channel_activity(served.microsoft, "lookup 198.51.100.7"))
    request = served.microsoft.sent()[-1]
    assert (
        request["path"] == f"conversations/{TEAM_ID};messageid=1700000000000/activities"
    )
    facts = card_facts(request["body"])
    assert facts["Type"] == "IP"
    assert facts["Verdict"] == "Malicious"
    assert facts["Tags"] == "c2"
    assert facts["Sources"] == "abuse.ch"
    assert facts["description"] == "known C2"
    card = request["body"]["attachments"][0]["content"]
    assert card["actions"][0]["verb"] == "block"


@pytest_twisted.ensureDeferred
async def test_lookup_of_an_unknown_value_says_so(served: BotServer) -> None:
    """
    A value the store does not hold is answered in words.
    """
    await post(served, activity(served.microsoft, text="lookup nothing.example"))
    assert (
        last_reply(served.microsoft)["text"]
        == "`nothing.example` is not in the indicator store."
    )


@pytest_twisted.ensureDeferred
async def test_an_allowed_user_blocks_and_unblocks(served: BotServer) -> None:
    """
    'block' adds the indicator with the block tag from source teams;
    'unblock' takes it away again.
    """
    await post(
        served, activity(served.microsoft, text="block evil.example phishing kit")
    )
    indicator = served.store.get("evil.example")
    assert indicator is not None
    assert indicator.type is IndicatorType.DOMAIN
    assert indicator.tags == ("teams-blocked",)
    assert indicator.sources == ("teams",)
    assert indicator.score is Score.BAD
    assert indicator.custom_fields["blockreason"] == "phishing kit"
    assert indicator.custom_fields["blockedby"] == "Ann Analyst"
    assert "Blocked `evil.example` (Domain)" in last_reply(served.microsoft)["text"]

    await post(served, activity(served.microsoft, text="unblock evil.example"))
    assert served.store.get("evil.example") is None
    assert "Unblocked `evil.example`" in last_reply(served.microsoft)["text"]

    await post(served, activity(served.microsoft, text="unblock evil.example"))
    assert "was not blocked" in last_reply(served.microsoft)["text"]


@pytest_twisted.ensureDeferred
async def test_unblock_keeps_what_other_feeds_contributed(served: BotServer) -> None:
    """
    Unblocking takes off the tag and the bot's contribution, but an
    indicator that a feed also lists stays.
    """
    served.store.add([Indicator("203.0.113.9", IndicatorType.IP)], source="feed-x")
    await post(served, activity(served.microsoft, text="block 203.0.113.9"))
    assert set(served.store.get("203.0.113.9").sources) == {"feed-x", "teams"}
    await post(served, activity(served.microsoft, text="unblock 203.0.113.9"))
    left = served.store.get("203.0.113.9")
    assert left is not None and left.tags == () and left.sources == ("feed-x",)
    assert (
        "stays in the indicator store from feed-x"
        in last_reply(served.microsoft)["text"]
    )


@pytest_twisted.ensureDeferred
async def test_a_user_allowed_by_email_is_looked_up_once(served: BotServer) -> None:
    """
    A user listed by email address is recognised after the bot reads their
    address from the Bot Connector; the address is kept for next time.
    """
    fake = served.microsoft
    fake.members["a:personal-chat-9"] = [
        {"id": "29:user-9", "name": "Carol", "email": "Analyst@Example.com"}
    ]
    sender = {
        "id": "29:user-9",
        "name": "Carol",
        "aadObjectId": "00000000-cccc-0000-0000-000000000009",
    }
    conversation = {"id": "a:personal-chat-9", "conversationType": "personal"}
    await post(
        served,
        activity(
            fake, text="block 192.0.2.1", **{"from": sender}, conversation=conversation
        ),
    )
    await post(
        served,
        activity(
            fake, text="block 192.0.2.2", **{"from": sender}, conversation=conversation
        ),
    )
    assert served.store.get("192.0.2.1") is not None
    assert served.store.get("192.0.2.2") is not None
    reads = [r for r in fake.connector_requests if r["method"] == "GET"]
    assert [r["path"] for r in reads] == [
        "conversations/a:personal-chat-9/members/29:user-9"
    ]


@pytest_twisted.ensureDeferred
async def test_a_user_not_allowed_cannot_block(served: BotServer) -> None:
    """
    Users who are not in allowed_users are refused, and nothing changes.
    """
    fake = served.microsoft
    fake.members["a:personal-chat-5"] = [
        {"id": "29:user-5", "name": "Eve", "email": "eve@example.com"}
    ]
    act = activity(
        fake,
        text="block 192.0.2.66",
        **{
            "from": {
                "id": "29:user-5",
                "name": "Eve",
                "aadObjectId": "00000000-eeee-0000-0000-000000000005",
            }
        },
        conversation={"id": "a:personal-chat-5", "conversationType": "personal"},
    )
    await post(served, act)
    assert served.store.get("192.0.2.66") is None
    assert "You may not block indicators" in last_reply(fake)["text"]
    assert "allowed_users of instance teams" in last_reply(fake)["text"]


@pytest_twisted.ensureDeferred
async def test_block_refuses_a_value_of_no_known_kind(served: BotServer) -> None:
    """
    A value that is no kind of indicator is not added.
    """
    await post(served, activity(served.microsoft, text="block hello world!"))
    assert served.store.count() == 0
    assert (
        "cannot tell what kind of indicator `hello`"
        in last_reply(served.microsoft)["text"]
    )


@pytest_twisted.ensureDeferred
async def test_status_lists_the_hosts_instances(
    served: BotServer, host_dir: Path
) -> None:
    """
    'status' reads the host's status file and shows each instance.
    """
    from xsoar_lr.status import write_status

    host_dir.mkdir(parents=True, exist_ok=True)
    write_status(
        host_dir,
        [
            {
                "name": "edl",
                "integration": "edl",
                "port": 7000,
                "routed": True,
                "route": "/instance/execute/edl",
                "state": "running",
                "pid": 10,
                "restarts": 0,
                "last_exit": None,
            },
            {
                "name": "teams",
                "integration": "teams",
                "port": 7001,
                "routed": True,
                "route": "/instance/execute/teams",
                "state": "restarting",
                "pid": None,
                "restarts": 2,
                "last_exit": "exit code 1",
            },
        ],
    )
    await post(served, activity(served.microsoft, text="STATUS"))
    reply = last_reply(served.microsoft)
    facts = card_facts(reply)
    assert facts["edl"] == "running, edl, port 7000, at /instance/execute/edl"
    assert facts["teams"].startswith("restarting, teams, port 7001")
    assert "2 restarts, last exit: exit code 1" in facts["teams"]
    title = reply["attachments"][0]["content"]["body"][0]["text"]
    assert title == "1 of 2 instances running"


# -- adaptive cards --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_card_submission_runs_its_command(served: BotServer) -> None:
    """
    Action.Submit arrives as a message with a value, and runs the command
    it carries.
    """
    act = activity(served.microsoft, value={"command": "block", "value": "bad.example"})
    await post(served, act)
    assert served.store.get("bad.example") is not None
    assert "Blocked `bad.example`" in last_reply(served.microsoft)["text"]


@pytest_twisted.ensureDeferred
async def test_a_foreign_card_submission_is_ignored(served: BotServer) -> None:
    """
    A submission without our command key is acknowledged and not answered.
    """
    code, _ = await post(served, activity(served.microsoft, value={"answer": "yes"}))
    assert code == 200
    assert served.microsoft.sent() == []


@pytest_twisted.ensureDeferred
async def test_an_execute_action_is_answered_with_an_invoke_response(
    served: BotServer,
) -> None:
    """
    Action.Execute arrives as an adaptiveCard/action invoke, and the answer
    is the invoke response: here a card replacing the clicked one.
    """
    served.store.add([Indicator("bad.example", IndicatorType.DOMAIN)], source="feed")
    act = activity(
        served.microsoft,
        "invoke",
        name="adaptiveCard/action",
        value={
            "action": {
                "type": "Action.Execute",
                "verb": "block",
                "data": {"value": "bad.example"},
            },
            "trigger": "manual",
        },
    )
    code, body = await post(served, act)
    assert code == 200
    answer = json.loads(body)
    assert answer["statusCode"] == 200
    assert answer["type"] == "application/vnd.microsoft.activity.message"
    assert "Blocked `bad.example`" in answer["value"]
    assert "teams-blocked" in served.store.get("bad.example").tags

    lookup = dict(
        act,
        value={
            "action": {
                "type": "Action.Execute",
                "verb": "lookup",
                "data": {"value": "bad.example"},
            }
        },
    )
    code, body = await post(served, lookup)
    answer = json.loads(body)
    assert answer["type"] == "application/vnd.microsoft.card.adaptive"
    assert answer["value"]["actions"][0]["verb"] == "unblock"
    assert served.microsoft.sent() == []


@pytest_twisted.ensureDeferred
async def test_unknown_activities_are_acknowledged_and_ignored(
    served: BotServer,
) -> None:
    """
    Typing indicators, events and other invokes get 200 and no reply.
    """
    for act in (
        activity(served.microsoft, "typing"),
        activity(
            served.microsoft, "event", name="application/vnd.microsoft.meetingStart"
        ),
        activity(served.microsoft, "invoke", name="composeExtension/query"),
        activity(served.microsoft, "messageReaction"),
    ):
        code, _ = await post(served, act)
        assert code == 200
    assert served.microsoft.sent() == []


# -- a slow or failing connector -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_slow_connector_does_not_hold_up_the_endpoint(
    served: BotServer,
) -> None:
    """
    The activity is answered while the reply is still on its way.
    """
    gate: Deferred[None] = Deferred()
    served.microsoft.connector_gate = gate
    response = await served.post(activity(served.microsoft, text="help"))
    await response.content()
    assert response.code == 200
    assert served.bot._pending, "the reply should still be on its way"
    gate.callback(None)
    await served.bot.idle()
    assert len(served.microsoft.sent()) == 1


@pytest_twisted.ensureDeferred
async def test_a_failing_connector_is_logged_not_answered(served: BotServer) -> None:
    """
    When the reply cannot be sent the activity was still acknowledged.
    """
    served.microsoft.connector_script = [(403, {}, {})]
    code, _ = await post(served, activity(served.microsoft, text="help"))
    assert code == 200
    assert len(served.microsoft.sent()) == 1


# -- small parts -------------------------------------------------------------------


def test_only_the_bots_own_mention_is_stripped() -> None:
    """
    Mentions of other people stay in the text.
    """
    act = {
        "text": "<at>LR Bot</at> lookup <at>Bob</at>&nbsp;x",
        "recipient": {"id": BOT_ID, "name": "LR Bot"},
        "entities": [
            {"type": "mention", "mentioned": {"id": BOT_ID}, "text": "<at>LR Bot</at>"},
            {"type": "mention", "mentioned": {"id": "29:bob"}, "text": "<at>Bob</at>"},
        ],
    }
    assert strip_bot_mention(act) == "lookup <at>Bob</at> x"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("192.0.2.1", IndicatorType.IP),
        ("2001:db8::1", IndicatorType.IPV6),
        ("192.0.2.0/24", IndicatorType.CIDR),
        ("2001:db8::/32", IndicatorType.IPV6_CIDR),
        ("https://bad.example/x?y=1", IndicatorType.URL),
        ("phish@bad.example", IndicatorType.EMAIL),
        ("d41d8cd98f00b204e9800998ecf8427e", IndicatorType.FILE),
        ("*.bad.example", IndicatorType.DOMAIN_GLOB),
        ("bad.example", IndicatorType.DOMAIN),
        ("hello", None),
        ("not a value", None),
    ],
)
def test_indicator_kinds_are_recognised(value: str, kind: IndicatorType | None) -> None:
    """
    'block' tells the kind of indicator from the value.
    """
    assert guess_indicator_type(value) is kind
