"""
The bot's outbound side: Azure AD tokens and the Bot Connector REST API.

L{TokenSource} obtains the bot's access token with the OAuth 2.0
client-credentials grant, from the multi-tenant endpoint or from the bot's own
tenant, and keeps it until shortly before it expires. L{BotConnector} sends
activities to conversations, creates one-to-one conversations and reads
rosters and channel lists. Calls that fail with 429 or a 5xx status, or that
cannot connect, are retried after the delay the service asks for in
C{Retry-After} (or an exponential back-off); a 401 is retried once with a
fresh token; other failures raise L{ConnectorError} with a sentence that says
what to check.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from integrations.teams.auth import Clock

__all__ = [
    "BOT_FRAMEWORK_SCOPE",
    "DEFAULT_TOKEN_URL",
    "BotConnector",
    "ConnectorError",
    "TokenError",
    "TokenSource",
    "make_http_client",
]

#: The token endpoint; C{{tenant}} becomes C{botframework.com} for a
#: multi-tenant bot and the bot's tenant id for a single-tenant bot.
DEFAULT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"

#: The tenant that multi-tenant bots get their tokens from.
MULTI_TENANT = "botframework.com"

#: The scope of a token for the Bot Connector.
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"

#: Seconds before its expiry at which a cached token is replaced.
TOKEN_MARGIN = 300.0

#: Statuses worth another attempt.
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class ConnectorError(Exception):
    """
    A Bot Connector call failed; the message says which call, how, and what
    to check.

    :ivar status: the last HTTP status, or C{None} when no answer came.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TokenError(ConnectorError):
    """
    No access token could be obtained for the bot.
    """


def make_http_client(reactor: Any) -> Any:
    """
    Build a treq client on C{reactor} that does not keep idle connections,
    so that nothing lingers when the instance or a command stops.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool, connectTimeout=15)
    return HTTPClient(cast(Any, agent))


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """
    Read a C{Retry-After} header: a number of seconds or an HTTP date.

    :returns: seconds to wait, or C{None} when the header is absent or
        unreadable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


@attrs.frozen
class _Token:
    value: str
    refresh_at: float


class TokenSource:
    """
    The bot's Bot Connector access token, fetched with its app id and
    password and kept until L{TOKEN_MARGIN} seconds before it expires.

    :param http: a treq C{HTTPClient}.
    :param clock: what ages the cached token.
    :param app_id: the bot's Microsoft App ID.
    :param app_password: the bot's client secret; never logged.
    :param token_url: the token endpoint, with C{{tenant}} where the tenant
        goes.
    :param tenant_id: the bot's tenant for a single-tenant bot, or C{None}
        for a multi-tenant bot.
    """

    log = Logger()

    def __init__(
        self,
        http: Any,
        clock: Clock,
        *,
        app_id: str,
        app_password: str,
        token_url: str = DEFAULT_TOKEN_URL,
        tenant_id: str | None = None,
        reactor: Any = None,
        timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._clock = clock
        self._reactor = reactor
        self._app_id = app_id
        self._app_password = app_password
        self._timeout = timeout
        self.single_tenant = bool(tenant_id)
        self.url = token_url.replace("{tenant}", quote(tenant_id or MULTI_TENANT))
        self._token: _Token | None = None
        self._in_flight: Deferred[_Token] | None = None
        #: How many tokens have been fetched, for tests and metrics.
        self.fetches = 0

    def invalidate(self) -> None:
        """
        Forget the cached token, so that the next call fetches a new one.
        """
        self._token = None

    async def get(self) -> str:
        """
        Return a token that is valid for at least L{TOKEN_MARGIN} seconds
        more, fetching one when needed.

        :raises TokenError: when the token endpoint refuses or fails.
        """
        token = self._token
        if token is not None and self._clock.seconds() < token.refresh_at:
            return token.value
        in_flight = self._in_flight
        if in_flight is None:
            in_flight = self._in_flight = ensureDeferred(self._fetch())
            in_flight.addBoth(self._forget_fetch)
        # Each waiter gets its own Deferred so that one failure reaches all.
        waiter: Deferred[_Token] = Deferred()
        in_flight.addBoth(_relay(waiter))
        return (await waiter).value

    def _forget_fetch(self, result: object) -> object:
        self._in_flight = None
        return result

    async def _fetch(self) -> _Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._app_id,
            "client_secret": self._app_password,
            "scope": BOT_FRAMEWORK_SCOPE,
        }
        try:
            response = await self._http.post(
                self.url, data=form, timeout=self._timeout, reactor=self._reactor
            )
            body = await response.content()
        except Exception as e:
            raise TokenError(
                f"Could not reach the token endpoint {self.url}: "
                f"{str(e) or type(e).__name__}."
            ) from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.code != 200 or not isinstance(answer.get("access_token"), str):
            raise TokenError(self._refusal(response.code, answer), response.code)
        try:
            lifetime = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        now = self._clock.seconds()
        # A short-lived token is kept for half its life rather than not at all.
        margin = min(TOKEN_MARGIN, lifetime / 2)
        token = _Token(answer["access_token"], now + lifetime - margin)
        self._token = token
        self.fetches += 1
        self.log.info(
            "Obtained a Bot Connector token for app {app_id}, valid {lifetime:.0f} s",
            app_id=self._app_id,
            lifetime=lifetime,
        )
        return token

    def _refusal(self, code: int, answer: Mapping[str, Any]) -> str:
        error = answer.get("error") or "no error code"
        description = str(answer.get("error_description") or "").splitlines()
        detail = f" ({description[0]})" if description else ""
        message = (
            f"The token endpoint {self.url} refused the bot's credentials with "
            f"HTTP {code}, {error}{detail}. Check the instance's bot_id and "
            "bot_password against the Azure bot's Microsoft App ID and client "
            "secret."
        )
        if error == "unauthorized_client" and not self.single_tenant:
            message += (
                " A single-tenant bot needs is_single_tenant_bot_type: true and "
                "tenant_id."
            )
        return message


def _relay(waiter: Deferred[Any]) -> Callable[[Any], Any]:
    """
    Make a callback that passes a result, or a failure, to C{waiter} too.
    """

    def relay(result: Any) -> Any:
        from twisted.python.failure import Failure

        if isinstance(result, Failure):
            waiter.errback(result)
            return None
        waiter.callback(result)
        return result

    return relay


def conversation_url(service_url: str, *parts: str) -> str:
    """
    Join a service URL and path parts of the Bot Connector API, quoting each
    part (conversation ids hold C{:} and C{@}).
    """
    quoted = "/".join(quote(part, safe="") for part in parts)
    return f"{service_url.rstrip('/')}/v3/{quoted}"


class BotConnector:
    """
    A client of the Bot Connector REST API for one bot.

    :param http: a treq C{HTTPClient}.
    :param tokens: the bot's access tokens.
    :param clock: the clock retries wait on.
    :param sleep: waits the given seconds; by default on C{clock}. Tests pass
        one that records the delays.
    :param attempts: how many times a call is tried in all.
    :param max_delay: the longest wait between attempts, in seconds; a longer
        C{Retry-After} is cut to it.
    """

    log = Logger()

    def __init__(
        self,
        http: Any,
        tokens: TokenSource,
        clock: Clock,
        *,
        reactor: Any = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        attempts: int = 4,
        max_delay: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        self._http = http
        self.tokens = tokens
        self._clock = clock
        self._reactor = reactor
        self._sleep = sleep or self._sleep_on_clock
        self._attempts = attempts
        self._max_delay = max_delay
        self._timeout = timeout

    def _sleep_on_clock(self, seconds: float) -> Deferred[None]:
        return deferLater(cast(Any, self._clock), seconds, lambda: None)

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> dict[str, Any]:
        """
        Post an activity (a message, usually) to a conversation.

        :returns: the connector's answer, which holds the new activity's id.
        """
        url = conversation_url(service_url, "conversations", conversation_id)
        return await self.call("POST", url + "/activities", activity)

    async def create_personal_conversation(
        self,
        service_url: str,
        *,
        bot_id: str,
        user_id: str,
        tenant_id: str | None,
    ) -> str:
        """
        Open (or find again) the one-to-one conversation between the bot and
        a user.

        :returns: the conversation's id.
        """
        body: dict[str, Any] = {
            "isGroup": False,
            "bot": {"id": bot_id},
            "members": [{"id": user_id}],
        }
        if tenant_id:
            body["tenantId"] = tenant_id
            body["channelData"] = {"tenant": {"id": tenant_id}}
        answer = await self.call(
            "POST", conversation_url(service_url, "conversations"), body
        )
        conversation_id = answer.get("id")
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ConnectorError(
                "The Bot Connector created a conversation but did not say its id."
            )
        return conversation_id

    async def get_member(
        self, service_url: str, conversation_id: str, member_id: str
    ) -> dict[str, Any]:
        """
        Read one member of a conversation: name, email, user principal name
        and Azure AD object id.
        """
        url = conversation_url(
            service_url, "conversations", conversation_id, "members", member_id
        )
        return await self.call("GET", url)

    async def get_members(
        self, service_url: str, conversation_id: str
    ) -> list[dict[str, Any]]:
        """
        Read the members of a conversation or team.
        """
        url = conversation_url(service_url, "conversations", conversation_id)
        answer = await self.call("GET", url + "/members")
        members = answer.get("members", answer.get("value"))
        if isinstance(answer.get("_list"), list):
            members = answer["_list"]
        return [m for m in members or [] if isinstance(m, dict)]

    async def get_channels(
        self, service_url: str, team_id: str
    ) -> list[dict[str, Any]]:
        """
        Read the channels of a team; the General channel has no name.
        """
        url = conversation_url(service_url, "teams", team_id)
        answer = await self.call("GET", url + "/conversations")
        return [c for c in answer.get("conversations") or [] if isinstance(c, dict)]

    async def call(
        self, method: str, url: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """
        Make one Bot Connector call, with retries.

        :returns: the JSON answer; a JSON list is returned as C{{"_list": [...]}}
            and an empty answer as C{{}}.
        :raises ConnectorError: with what to check.
        """
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = await self.tokens.get()
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=body,
                    headers={
                        "Authorization": [f"Bearer {token}"],
                        "Accept": ["application/json"],
                    },
                    timeout=self._timeout,
                    reactor=self._reactor,
                )
                content = await response.content()
            except Exception as e:
                reason = str(e) or type(e).__name__
                if attempt >= self._attempts:
                    raise ConnectorError(
                        f"{method} {url} failed {attempt} times; the last time: "
                        f"{reason}."
                    ) from None
                delay = self._backoff(attempt)
                self.log.warn(
                    "{method} {url} failed ({reason}); trying again in {delay:.1f} s",
                    method=method,
                    url=url,
                    reason=reason,
                    delay=delay,
                )
                await self._sleep(delay)
                continue

            code = response.code
            if 200 <= code < 300:
                return _parse_answer(content)
            if code == 401 and not refreshed:
                # The token may have been revoked or rotated early.
                refreshed = True
                self.tokens.invalidate()
                attempt -= 1
                continue
            if code in RETRIED_STATUSES and attempt < self._attempts:
                header = response.headers.getRawHeaders("Retry-After", [None])[0]
                asked = retry_after_seconds(header, time.time())
                delay = self._backoff(attempt) if asked is None else asked
                delay = min(delay, self._max_delay)
                self.log.warn(
                    "{method} {url} answered {code}; trying again in {delay:.1f} s",
                    method=method,
                    url=url,
                    code=code,
                    delay=delay,
                )
                await self._sleep(delay)
                continue
            raise ConnectorError(_explain(method, url, code, content, attempt), code)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._max_delay, 2 ** (attempt - 1)))


def _parse_answer(content: bytes) -> dict[str, Any]:
    if not content.strip():
        return {}
    try:
        answer = json.loads(content)
    except ValueError:
        return {}
    if isinstance(answer, list):
        return {"_list": answer}
    return answer if isinstance(answer, dict) else {}


def _explain(method: str, url: str, code: int, content: bytes, attempts: int) -> str:
    detail = ""
    try:
        answer = json.loads(content)
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and error.get("message"):
            detail = f" ({error.get('code', '')}: {error['message']})"
        elif isinstance(answer, dict) and answer.get("message"):
            detail = f" ({answer['message']})"
    except ValueError:
        pass
    head = f"The Bot Connector answered {method} {url} with HTTP {code}{detail}"
    if code == 401:
        return (
            f"{head}: it refused the bot's token. Check that bot_id and "
            "bot_password are the Azure bot's Microsoft App ID and client secret, "
            "and that the Microsoft Teams channel is added to the Azure bot."
        )
    if code == 403:
        return (
            f"{head}: the bot may not post there. The bot may have been removed "
            "from the team, or the user may have blocked or uninstalled it."
        )
    if code == 404:
        return (
            f"{head}: the conversation is unknown. The team, channel or chat may "
            "have been deleted."
        )
    if code in RETRIED_STATUSES:
        return f"{head} {attempts} times in a row; the service is overloaded or down."
    return f"{head}."
