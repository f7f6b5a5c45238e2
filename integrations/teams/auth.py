"""
Verification of the requests that the Bot Framework sends to the bot.

Every activity that Microsoft's Bot Connector posts to the messaging endpoint
carries C{Authorization: Bearer <JWT>}. L{BotAuthenticator} checks such a
token the way Microsoft's Bot Framework authentication article prescribes:

 1. the scheme is C{Bearer} and the token is a well-formed JWT;
 2. it is signed (RS256, RS384 or RS512) with a key from the JSON Web Key
    Set named by the OpenID metadata document;
 3. its issuer is C{https://api.botframework.com};
 4. its audience is the bot's Microsoft App ID;
 5. it is within its validity window, allowing five minutes of clock skew;
 6. its C{serviceurl} claim equals the activity's C{serviceUrl};
 7. the activity's C{channelId} is among the signing key's endorsements.

The keys come from L{OpenIDKeys}, which fetches the metadata document and
key set with treq, keeps them, and fetches them again when they grow old or
when a token names a key id it has not seen (at most once per interval, so
that a stream of forged key ids cannot make us hammer Microsoft).

A failure raises L{AuthenticationError}, whose message is the reason; the
token itself never appears in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import jwt
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

__all__ = [
    "ALLOWED_ALGORITHMS",
    "BOT_FRAMEWORK_ISSUER",
    "CLOCK_SKEW",
    "DEFAULT_OPENID_METADATA_URL",
    "AuthenticationError",
    "BotAuthenticator",
    "OpenIDKeys",
    "SigningKey",
]

#: Where Microsoft publishes the OpenID metadata for Bot Connector tokens.
DEFAULT_OPENID_METADATA_URL = (
    "https://login.botframework.com/v1/.well-known/openidconfiguration"
)

#: The issuer of every token the Bot Connector sends to a bot.
BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"

#: The signature algorithms Microsoft's SDKs accept for these tokens.
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512")

#: The clock skew Microsoft tells bots to allow, in seconds.
CLOCK_SKEW = 300

#: How old the key set may grow before it is fetched again, in seconds.
#: Microsoft says the keys change rarely; its Python SDK refreshes daily.
DEFAULT_MAX_KEY_AGE = 24 * 3600

#: The least time between two fetches caused by unknown key ids, in seconds.
DEFAULT_UNKNOWN_KEY_INTERVAL = 3600


class Clock(Protocol):
    """
    What ages the caches: anything with C{seconds()}, such as a reactor.
    """

    def seconds(self) -> float: ...


class AuthenticationError(Exception):
    """
    A request to the messaging endpoint is not from the Bot Connector.

    The message says why, in words fit for the log; it never holds the token.
    """


class KeyFetchError(Exception):
    """
    The OpenID metadata document or its key set could not be fetched or read.
    """


@attrs.frozen
class SigningKey:
    """
    One public key of the Bot Connector.

    :ivar key_id: the C{kid} tokens name it by.
    :ivar public_key: the key, as PyJWT accepts it.
    :ivar endorsements: the channels (such as C{msteams}) the key may sign
        tokens for.
    """

    key_id: str
    public_key: Any
    endorsements: frozenset[str]


def parse_key_set(document: Any) -> dict[str, SigningKey]:
    """
    Read the RSA signing keys out of a JSON Web Key Set.

    Keys that are not RSA signing keys, or that cannot be read, are left out;
    Microsoft publishes only RSA keys, so that loses nothing.

    :raises KeyFetchError: when the document is not a key set at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFetchError("the key set is not a JSON object with a 'keys' list")
    keys: dict[str, SigningKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid"), str):
            continue
        try:
            public_key = jwt.PyJWK(entry, algorithm="RS256").key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        endorsements = entry.get("endorsements") or []
        if not isinstance(endorsements, list):
            endorsements = []
        keys[entry["kid"]] = SigningKey(
            key_id=entry["kid"],
            public_key=public_key,
            endorsements=frozenset(str(e) for e in endorsements),
        )
    return keys


class OpenIDKeys:
    """
    The Bot Connector's signing keys, fetched from its OpenID metadata and
    kept in memory.

    :param metadata_url: the OpenID metadata document's URL; its C{jwks_uri}
        names the key set.
    :param http: a treq C{HTTPClient} (or the C{treq} module) to fetch with.
    :param clock: the clock that ages the cache.
    :param reactor: passed to treq for its timeout.
    :param max_age: seconds after which the whole key set is fetched again
        before it is used.
    :param unknown_key_interval: the least seconds between two fetches caused
        by a token naming a key id that is not in the cache.
    :param timeout: seconds each fetch may take.
    """

    log = Logger()

    def __init__(
        self,
        metadata_url: str,
        http: Any,
        clock: Clock,
        *,
        reactor: Any = None,
        max_age: float = DEFAULT_MAX_KEY_AGE,
        unknown_key_interval: float = DEFAULT_UNKNOWN_KEY_INTERVAL,
        timeout: float = 30.0,
    ) -> None:
        self.metadata_url = metadata_url
        self._http = http
        self._clock = clock
        self._reactor = reactor
        self._max_age = max_age
        self._unknown_key_interval = unknown_key_interval
        self._timeout = timeout
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._in_flight: Deferred[None] | None = None
        #: How many times the key set has been fetched, for tests and metrics.
        self.fetches = 0

    async def get(self, key_id: str) -> SigningKey:
        """
        Return the signing key with id C{key_id}.

        :raises AuthenticationError: when no such key is published, or the
            keys could not be fetched.
        """
        now = self._clock.seconds()
        if self._fetched_at is None or now - self._fetched_at >= self._max_age:
            await self._refresh_once("the cached key set is missing or old")
        elif key_id not in self._keys:
            last = self._last_attempt
            if last is not None and now - last < self._unknown_key_interval:
                raise AuthenticationError(
                    f"the token names key id {key_id!r}, which the key set "
                    "does not hold, and the key set was fetched "
                    f"{now - last:.0f} s ago (it is fetched again for an unknown "
                    f"key id at most every {self._unknown_key_interval:.0f} s)"
                )
            await self._refresh_once(f"the token names unknown key id {key_id!r}")
        key = self._keys.get(key_id)
        if key is None:
            if self._fetched_at is None:
                raise AuthenticationError(
                    f"the Bot Connector's signing keys could not be fetched from "
                    f"{self.metadata_url}"
                )
            raise AuthenticationError(
                f"the token names key id {key_id!r}, which is not in the "
                "Bot Connector's published key set"
            )
        return key

    async def _refresh_once(self, why: str) -> None:
        # Concurrent requests share one fetch rather than starting several.
        in_flight = self._in_flight
        if in_flight is None:
            in_flight = self._in_flight = ensureDeferred(self._refresh(why))
            in_flight.addBoth(self._forget_fetch)
        waiter: Deferred[None] = Deferred()
        in_flight.addBoth(_pass_to(waiter))
        await waiter

    def _forget_fetch(self, result: object) -> object:
        self._in_flight = None
        return result

    async def _refresh(self, why: str) -> None:
        self._last_attempt = self._clock.seconds()
        self.log.info(
            "Fetching the Bot Connector signing keys from {url} because {why}",
            url=self.metadata_url,
            why=why,
        )
        try:
            metadata = await self._get_json(self.metadata_url)
            jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
            if not isinstance(jwks_uri, str) or not jwks_uri:
                raise KeyFetchError(
                    f"the OpenID metadata at {self.metadata_url} has no jwks_uri"
                )
            keys = parse_key_set(await self._get_json(jwks_uri))
            if not keys:
                raise KeyFetchError(f"the key set at {jwks_uri} holds no RSA keys")
        except Exception as e:
            # Keep the keys we have: a passing outage at Microsoft must not
            # lock out tokens signed with keys we already know.
            self.log.failure(
                "Could not fetch the Bot Connector signing keys from {url}: {error}",
                url=self.metadata_url,
                error=str(e) or type(e).__name__,
            )
            return
        self._keys = keys
        self._fetched_at = self._clock.seconds()
        self.fetches += 1
        self.log.info(
            "Fetched {count} Bot Connector signing keys", count=len(self._keys)
        )

    async def _get_json(self, url: str) -> Any:
        response = await self._http.get(
            url,
            headers={"Accept": ["application/json"]},
            timeout=self._timeout,
            reactor=self._reactor,
        )
        body = await response.content()
        if response.code != 200:
            raise KeyFetchError(f"{url} answered HTTP {response.code}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise KeyFetchError(f"{url} did not answer JSON: {e}") from None


def _token_from_header(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("the request has no Authorization header")
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthenticationError(
            "the Authorization header does not hold exactly one Bearer token"
        )
    return parts[1]


class BotAuthenticator:
    """
    Decides whether a request to the messaging endpoint comes from the Bot
    Connector, for one bot.

    :param app_id: the bot's Microsoft App ID, which tokens must be issued to.
    :param keys: where the signing keys come from.
    """

    def __init__(self, app_id: str, keys: OpenIDKeys) -> None:
        self.app_id = app_id
        self.keys = keys

    async def verify(
        self, authorization: str | None, activity: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """
        Check a request's Authorization header against its activity.

        :param authorization: the C{Authorization} header, or C{None}.
        :param activity: the parsed JSON body, or C{None} when the body was
            not a JSON object; such a request fails after the token has been
            checked.
        :returns: the token's claims.
        :raises AuthenticationError: naming the first rule the request breaks.
        """
        token = _token_from_header(authorization)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError(
                "the Bearer token is not a well-formed JWT"
            ) from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise AuthenticationError(
                f"the token is signed with {algorithm!r}, not one of "
                f"{', '.join(ALLOWED_ALGORITHMS)}"
            )
        # Reject foreign tokens before they can make us fetch keys.
        if unverified.get("iss") != BOT_FRAMEWORK_ISSUER:
            raise AuthenticationError(
                f"the token's issuer {unverified.get('iss')!r} is not "
                f"{BOT_FRAMEWORK_ISSUER!r}"
            )
        key_id = header.get("kid")
        if not isinstance(key_id, str) or not key_id:
            raise AuthenticationError("the token's header names no key id (kid)")

        key = await self.keys.get(key_id)
        claims = self._decode(token, key, algorithm)

        if activity is None:
            raise AuthenticationError("the request body is not a JSON activity")
        service_url = activity.get("serviceUrl")
        claimed = claims.get("serviceurl")
        if not isinstance(claimed, str) or not claimed:
            raise AuthenticationError("the token has no serviceurl claim")
        if claimed != service_url:
            raise AuthenticationError(
                f"the token's serviceurl claim {claimed!r} differs from the "
                f"activity's serviceUrl {service_url!r}"
            )
        channel_id = activity.get("channelId")
        if not isinstance(channel_id, str) or channel_id not in key.endorsements:
            raise AuthenticationError(
                f"the activity's channelId {channel_id!r} is not among the "
                f"endorsements of signing key {key.key_id!r} "
                f"({', '.join(sorted(key.endorsements)) or 'none'})"
            )
        return claims

    def _decode(self, token: str, key: SigningKey, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[algorithm],
                audience=self.app_id,
                issuer=BOT_FRAMEWORK_ISSUER,
                leeway=CLOCK_SKEW,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError(
                "the token has expired (more than 5 minutes of clock skew)"
            ) from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError(
                "the token is not valid yet (more than 5 minutes of clock skew)"
            ) from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(
                "the token's audience is not this bot's app id (bot_id)"
            ) from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError(
                f"the token's issuer is not {BOT_FRAMEWORK_ISSUER!r}"
            ) from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError(
                f"the token's signature does not verify with key {key.key_id!r}"
            ) from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthenticationError(f"the token has no {e.claim!r} claim") from None
        except jwt.PyJWTError as e:
            raise AuthenticationError(f"the token is not acceptable: {e}") from None
        return claims


def _pass_to(waiter: Deferred[None]) -> Callable[[object], object]:
    """
    Make a callback that fires C{waiter} and passes its result on unchanged.
    """

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    return fire
