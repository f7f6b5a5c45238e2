"""
Tests for the verification of Bot Connector requests: each of Microsoft's
rules on its own, key caching and key rotation, against a local OpenID
metadata server with keys made in the test.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import pytest_twisted
from test_teams_support import (
    APP_ID,
    KEY_A,
    KEY_B,
    KEY_OTHER,
    FakeMicrosoft,
    SigningKeyPair,
    activity,
    host_dir,
    http_client,
    make_token,
    microsoft,
    served,
)
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from integrations.teams.auth import AuthenticationError, BotAuthenticator, OpenIDKeys

__all__ = ["microsoft", "served", "host_dir"]


def authenticator(
    fake: FakeMicrosoft, clock: Clock | None = None, **options: Any
) -> BotAuthenticator:
    from twisted.internet import reactor

    keys = OpenIDKeys(
        fake.base + "/openid",
        http_client(),
        clock or Clock(),
        reactor=reactor,
        **options,
    )
    return BotAuthenticator(APP_ID, keys)


def verify(
    auth: BotAuthenticator, token: str | None, act: dict[str, Any] | None
) -> Any:
    header = None if token is None else f"Bearer {token}"
    return defer.ensureDeferred(auth.verify(header, act))


@pytest_twisted.ensureDeferred
async def test_a_token_signed_as_microsoft_signs_is_accepted(
    microsoft: FakeMicrosoft,
) -> None:
    """
    A well-formed token from the published key, for this bot and this
    service URL, passes and its claims are returned.
    """
    act = activity(microsoft)
    claims = await verify(
        authenticator(microsoft), make_token(service_url=act["serviceUrl"]), act
    )
    assert claims["aud"] == APP_ID
    assert claims["serviceurl"] == microsoft.service_url


async def refused(auth: BotAuthenticator, header: str | None, act: Any) -> str:
    try:
        await auth.verify(header, act)
    except AuthenticationError as e:
        return str(e)
    raise AssertionError("the request was accepted")


def _hs256_token(service_url: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://api.botframework.com",
        "aud": APP_ID,
        "exp": now + 600,
        "serviceurl": service_url,
    }
    return jwt.encode(
        claims,
        "a-shared-secret-of-32-bytes-or-more!",
        algorithm="HS256",
        headers={"kid": "key-a"},
    )


# Each case breaks exactly one rule of a token or request that is otherwise
# valid, and names words the reason must hold.
BROKEN: dict[str, tuple[Any, str]] = {
    "no header": (lambda su: None, "no Authorization header"),
    "not bearer": (lambda su: "Basic " + make_token(service_url=su), "Bearer"),
    "two words after bearer": (
        lambda su: "Bearer " + make_token(service_url=su) + " extra",
        "Bearer",
    ),
    "not a jwt": (lambda su: "Bearer not.a.jwt", "well-formed"),
    "symmetric algorithm": (lambda su: "Bearer " + _hs256_token(su), "HS256"),
    "wrong issuer": (
        lambda su: "Bearer " + make_token(service_url=su, iss="https://evil.example"),
        "issuer",
    ),
    "no key id": (lambda su: "Bearer " + make_token(service_url=su, kid=""), "key id"),
    "unpublished key id": (
        lambda su: "Bearer " + make_token(KEY_OTHER, service_url=su),
        "key-other",
    ),
    "signed by another key under a published id": (
        lambda su: "Bearer " + make_token(KEY_OTHER, service_url=su, kid="key-a"),
        "signature",
    ),
    "other audience": (
        lambda su: (
            "Bearer "
            + make_token(service_url=su, aud="99999999-2222-3333-4444-555555555555")
        ),
        "audience",
    ),
    "expired beyond the skew": (
        lambda su: "Bearer " + make_token(service_url=su, exp=int(time.time()) - 360),
        "expired",
    ),
    "not valid until beyond the skew": (
        lambda su: (
            "Bearer "
            + make_token(
                service_url=su, nbf=int(time.time()) + 360, iat=int(time.time())
            )
        ),
        "not valid yet",
    ),
    "no expiry": (
        lambda su: "Bearer " + make_token(service_url=su, drop=("exp",)),
        "exp",
    ),
    "no serviceurl claim": (
        lambda su: "Bearer " + make_token(service_url=su, drop=("serviceurl",)),
        "serviceurl",
    ),
    "other serviceurl": (
        lambda su: "Bearer " + make_token(service_url="https://smba.example/emea/"),
        "differs",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest_twisted.ensureDeferred
async def test_each_broken_rule_is_refused_with_its_reason(
    microsoft: FakeMicrosoft, case: str
) -> None:
    """
    A request that breaks one of Microsoft's rules is refused, and the
    reason says which rule.
    """
    make_header, words = BROKEN[case]
    act = activity(microsoft)
    reason = await refused(
        authenticator(microsoft), make_header(act["serviceUrl"]), act
    )
    assert words in reason


@pytest_twisted.ensureDeferred
async def test_a_channel_the_key_does_not_endorse_is_refused(
    microsoft: FakeMicrosoft,
) -> None:
    """
    The activity's channelId must be among the signing key's endorsements.
    """
    act = activity(microsoft, channelId="webchat")
    reason = await refused(
        authenticator(microsoft),
        "Bearer " + make_token(service_url=act["serviceUrl"]),
        act,
    )
    assert "'webchat' is not among the endorsements" in reason


@pytest_twisted.ensureDeferred
async def test_a_key_without_endorsements_signs_for_no_channel(
    microsoft: FakeMicrosoft,
) -> None:
    """
    A published key with no endorsements cannot vouch for Teams.
    """
    bare = SigningKeyPair(kid="key-bare", private=KEY_B.private, endorsements=[])
    microsoft.keys = [bare]
    act = activity(microsoft)
    token = make_token(bare, service_url=act["serviceUrl"])
    reason = await refused(authenticator(microsoft), "Bearer " + token, act)
    assert "endorsements" in reason


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_an_activity_is_refused(
    microsoft: FakeMicrosoft,
) -> None:
    """
    With no activity, the service URL and channel cannot be checked.
    """
    token = make_token(service_url=microsoft.service_url)
    reason = await refused(authenticator(microsoft), "Bearer " + token, None)
    assert "not a JSON activity" in reason


@pytest_twisted.ensureDeferred
async def test_five_minutes_of_clock_skew_are_allowed(microsoft: FakeMicrosoft) -> None:
    """
    A token that expired four minutes ago, or that becomes valid in four
    minutes, is still accepted.
    """
    act = activity(microsoft)
    auth = authenticator(microsoft)
    now = int(time.time())
    late = make_token(service_url=act["serviceUrl"], exp=now - 240)
    early = make_token(service_url=act["serviceUrl"], nbf=now + 240, iat=now)
    await verify(auth, late, act)
    await verify(auth, early, act)


@pytest_twisted.ensureDeferred
async def test_keys_are_fetched_once_and_kept(microsoft: FakeMicrosoft) -> None:
    """
    Many requests, even at once, cost one fetch of the key set.
    """
    act = activity(microsoft)
    auth = authenticator(microsoft)
    token = make_token(service_url=act["serviceUrl"])
    await defer.gatherResults([verify(auth, token, act) for _ in range(5)])
    await verify(auth, token, act)
    assert microsoft.key_fetches == 1


@pytest_twisted.ensureDeferred
async def test_old_keys_are_fetched_again(microsoft: FakeMicrosoft) -> None:
    """
    After a day the key set is fetched again before it is used.
    """
    clock = Clock()
    act = activity(microsoft)
    auth = authenticator(microsoft, clock)
    token = make_token(service_url=act["serviceUrl"])
    await verify(auth, token, act)
    clock.advance(24 * 3600 + 1)
    await verify(auth, token, act)
    assert microsoft.key_fetches == 2


@pytest_twisted.ensureDeferred
async def test_key_rotation_is_picked_up_on_an_unknown_key_id(
    microsoft: FakeMicrosoft,
) -> None:
    """
    When Microsoft starts signing with a new key, the first token naming it
    makes the bot fetch the key set again, and it is accepted.
    """
    clock = Clock()
    act = activity(microsoft)
    auth = authenticator(microsoft, clock, unknown_key_interval=3600)
    await verify(auth, make_token(KEY_A, service_url=act["serviceUrl"]), act)
    clock.advance(3601)
    microsoft.keys = [KEY_B]
    claims = await verify(auth, make_token(KEY_B, service_url=act["serviceUrl"]), act)
    assert claims["aud"] == APP_ID
    assert microsoft.key_fetches == 2
    # The retired key is gone from the cache with the old key set.
    reason = await refused(
        auth, "Bearer " + make_token(KEY_A, service_url=act["serviceUrl"]), act
    )
    assert "key-a" in reason


@pytest_twisted.ensureDeferred
async def test_unknown_key_ids_refetch_at_most_once_per_interval(
    microsoft: FakeMicrosoft,
) -> None:
    """
    A stream of tokens with unknown key ids causes no more than one fetch
    per interval.
    """
    clock = Clock()
    act = activity(microsoft)
    auth = authenticator(microsoft, clock, unknown_key_interval=3600)
    await verify(auth, make_token(KEY_A, service_url=act["serviceUrl"]), act)
    for n in range(3):
        token = make_token(KEY_OTHER, service_url=act["serviceUrl"], kid=f"forged-{n}")
        await refused(auth, "Bearer " + token, act)
    assert microsoft.key_fetches == 1
    clock.advance(3601)
    microsoft.keys = [KEY_A, KEY_B]
    await verify(auth, make_token(KEY_B, service_url=act["serviceUrl"]), act)
    assert microsoft.key_fetches == 2


@pytest_twisted.ensureDeferred
async def test_unreachable_metadata_refuses_and_says_so(
    microsoft: FakeMicrosoft,
) -> None:
    """
    When the metadata cannot be fetched no token passes.
    """
    microsoft.metadata_status = 503
    act = activity(microsoft)
    reason = await refused(
        authenticator(microsoft),
        "Bearer " + make_token(service_url=act["serviceUrl"]),
        act,
    )
    assert "could not be fetched" in reason


@pytest_twisted.ensureDeferred
async def test_the_endpoint_answers_401_and_logs_the_reason_but_not_the_token(
    served: Any,
) -> None:
    """
    Through HTTP, a refused request gets 401, the log says why, and the
    token appears nowhere in the log.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        act = activity(served.microsoft)
        token = make_token(service_url=act["serviceUrl"], aud="someone-else")
        response = await served.post(act, token=token)
        await response.content()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert response.code == 401
    text = "\n".join(str(formatEvent(e)) + repr(e) for e in events)
    assert "audience" in text
    assert token not in text
    assert token.split(".")[2] not in text
    assert served.microsoft.sent() == []
