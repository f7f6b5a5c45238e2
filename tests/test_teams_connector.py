"""
Tests for the outbound side: the bot's token (cached, refreshed, refused)
and Bot Connector calls (retries, Retry-After, clear failures), against a
local token endpoint and Bot Connector.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
import pytest_twisted
from test_teams_support import (
    APP_ID,
    SECRET,
    TENANT,
    FakeMicrosoft,
    http_client,
    microsoft,
)
from twisted.internet.task import Clock

from integrations.teams.connector import (
    BotConnector,
    ConnectorError,
    TokenError,
    TokenSource,
    retry_after_seconds,
)

__all__ = ["microsoft"]


def parts(
    fake: FakeMicrosoft,
    clock: Clock | None = None,
    tenant: str | None = None,
    **options: Any,
) -> tuple[TokenSource, BotConnector, list[float]]:
    from twisted.internet import reactor

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    http = http_client()
    tokens = TokenSource(
        http,
        clock or Clock(),
        app_id=APP_ID,
        app_password=SECRET,
        token_url=fake.base + "/{tenant}/oauth2/v2.0/token",
        tenant_id=tenant,
        reactor=reactor,
    )
    connector = BotConnector(
        http, tokens, Clock(), reactor=reactor, sleep=sleep, **options
    )
    return tokens, connector, delays


MESSAGE = {"type": "message", "text": "hello"}


@pytest_twisted.ensureDeferred
async def test_the_token_is_fetched_once_and_sent_as_bearer(
    microsoft: FakeMicrosoft,
) -> None:
    """
    Two sends cost one client-credentials request to the multi-tenant
    endpoint, and both carry its token.
    """
    tokens, connector, _ = parts(microsoft)
    await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    answer = await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert answer["id"].startswith("activity-")
    assert len(microsoft.token_requests) == 1
    request = microsoft.token_requests[0]
    assert request["path"] == "/botframework.com/oauth2/v2.0/token"
    assert request["form"] == {
        "grant_type": "client_credentials",
        "client_id": APP_ID,
        "client_secret": SECRET,
        "scope": "https://api.botframework.com/.default",
    }
    assert [r["authorization"] for r in microsoft.sent()] == ["Bearer access-1"] * 2
    assert [r["path"] for r in microsoft.sent()] == [
        "conversations/a:chat/activities"
    ] * 2


@pytest_twisted.ensureDeferred
async def test_a_single_tenant_bot_asks_its_own_tenant(
    microsoft: FakeMicrosoft,
) -> None:
    """
    A single-tenant bot's token comes from its tenant's endpoint.
    """
    tokens, _, _ = parts(microsoft, tenant=TENANT)
    await tokens.get()
    assert microsoft.token_requests[0]["path"] == f"/{TENANT}/oauth2/v2.0/token"


@pytest_twisted.ensureDeferred
async def test_the_token_is_replaced_shortly_before_it_expires(
    microsoft: FakeMicrosoft,
) -> None:
    """
    A token is used until five minutes before its expiry, then a new one is
    fetched.
    """
    clock = Clock()
    tokens, _, _ = parts(microsoft, clock)
    assert await tokens.get() == "access-1"
    clock.advance(3600 - 300 - 1)
    assert await tokens.get() == "access-1"
    clock.advance(2)
    assert await tokens.get() == "access-2"
    assert tokens.fetches == 2


@pytest_twisted.ensureDeferred
async def test_a_refused_secret_is_reported_without_the_secret(
    microsoft: FakeMicrosoft,
) -> None:
    """
    When Azure AD refuses the credentials the error names the parameters to
    check and never the secret.
    """
    microsoft.token_refusal = {
        "error": "unauthorized_client",
        "error_description": "AADSTS700016: Application not found.\nTrace ID: x",
    }
    tokens, connector, _ = parts(microsoft)
    with pytest.raises(TokenError) as caught:
        await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    message = str(caught.value)
    assert "bot_id and bot_password" in message
    assert "AADSTS700016" in message
    assert "is_single_tenant_bot_type" in message
    assert SECRET not in message
    assert microsoft.sent() == []


@pytest_twisted.ensureDeferred
async def test_429_waits_as_long_as_retry_after_says(microsoft: FakeMicrosoft) -> None:
    """
    A throttled call is tried again after the delay in Retry-After.
    """
    microsoft.connector_script = [
        (
            429,
            {"Retry-After": "7"},
            {"error": {"code": "Throttled", "message": "slow"}},
        ),
        (429, {"Retry-After": "2"}, {}),
    ]
    _, connector, delays = parts(microsoft)
    answer = await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert delays == [7.0, 2.0]
    assert answer["id"].startswith("activity-")
    assert len(microsoft.sent()) == 3


@pytest_twisted.ensureDeferred
async def test_retry_after_is_capped(microsoft: FakeMicrosoft) -> None:
    """
    A Retry-After longer than the longest wait is cut to it.
    """
    microsoft.connector_script = [(503, {"Retry-After": "3600"}, {})]
    _, connector, delays = parts(microsoft, max_delay=30)
    await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert delays == [30.0]


@pytest_twisted.ensureDeferred
async def test_5xx_without_retry_after_backs_off_then_gives_up(
    microsoft: FakeMicrosoft,
) -> None:
    """
    Server errors are retried with growing delays, and after the last
    attempt the error says how often it failed.
    """
    microsoft.connector_script = [(502, {}, {})] * 3 + [(500, {}, {"message": "boom"})]
    _, connector, delays = parts(microsoft, attempts=4)
    with pytest.raises(ConnectorError) as caught:
        await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert delays == [1.0, 2.0, 4.0]
    assert caught.value.status == 500
    assert "HTTP 500 (boom) 4 times" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_401_gets_one_fresh_token_then_a_clear_error(
    microsoft: FakeMicrosoft,
) -> None:
    """
    A 401 from the Bot Connector makes the bot fetch a new token and try
    once more; a second 401 is reported with what to check.
    """
    microsoft.connector_script = [(401, {}, {}), (401, {}, {})]
    _, connector, delays = parts(microsoft)
    with pytest.raises(ConnectorError) as caught:
        await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert len(microsoft.token_requests) == 2
    assert [r["authorization"] for r in microsoft.sent()] == [
        "Bearer access-1",
        "Bearer access-2",
    ]
    assert delays == []
    assert caught.value.status == 401
    assert "Microsoft Teams channel" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_401_then_success_with_the_fresh_token(microsoft: FakeMicrosoft) -> None:
    """
    A token revoked early is replaced and the message goes through.
    """
    microsoft.connector_script = [(401, {}, {})]
    _, connector, _ = parts(microsoft)
    await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert microsoft.sent()[-1]["authorization"] == "Bearer access-2"


@pytest_twisted.ensureDeferred
async def test_403_is_not_retried_and_is_explained(microsoft: FakeMicrosoft) -> None:
    """
    A 403 will not get better by trying again.
    """
    microsoft.connector_script = [
        (403, {}, {"error": {"code": "BotNotInConversationRoster", "message": "no"}})
    ]
    _, connector, delays = parts(microsoft)
    with pytest.raises(ConnectorError) as caught:
        await connector.send_activity(microsoft.service_url, "a:chat", MESSAGE)
    assert delays == []
    assert len(microsoft.sent()) == 1
    assert "BotNotInConversationRoster" in str(caught.value)
    assert "removed from the team" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_personal_conversation_is_created_for_the_user(
    microsoft: FakeMicrosoft,
) -> None:
    """
    Opening a one-to-one chat posts the bot, the user and the tenant.
    """
    _, connector, _ = parts(microsoft)
    conversation = await connector.create_personal_conversation(
        microsoft.service_url, bot_id=f"28:{APP_ID}", user_id="29:u", tenant_id=TENANT
    )
    assert conversation == "a:personal-1"
    assert microsoft.created == [
        {
            "isGroup": False,
            "bot": {"id": f"28:{APP_ID}"},
            "members": [{"id": "29:u"}],
            "tenantId": TENANT,
            "channelData": {"tenant": {"id": TENANT}},
        }
    ]


@pytest_twisted.ensureDeferred
async def test_an_unreachable_connector_is_retried_then_reported() -> None:
    """
    A refused connection counts as a failed attempt, and the error says so.
    """
    from twisted.internet import reactor

    fake = FakeMicrosoft()
    from test_teams_support import listen

    port = listen(fake)
    fake.base = f"http://127.0.0.1:{port.getHost().port}"
    tokens, connector, delays = parts(fake, attempts=2)
    await tokens.get()
    await port.stopListening()
    with pytest.raises(ConnectorError) as caught:
        await connector.send_activity(fake.service_url, "a:chat", MESSAGE)
    assert delays == [1.0]
    assert "failed 2 times" in str(caught.value)
    assert reactor.running


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """
    Retry-After is a number of seconds or an HTTP date.
    """
    assert retry_after_seconds("12", 1000.0) == 12.0
    assert retry_after_seconds(formatdate(1060.0, usegmt=True), 1000.0) == 60.0
    assert retry_after_seconds(formatdate(900.0, usegmt=True), 1000.0) == 0.0
    assert retry_after_seconds("soon", 1000.0) is None
    assert retry_after_seconds(None, 1000.0) is None
