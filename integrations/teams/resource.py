"""
The Teams instance's web resource: the messaging endpoint and a health
check.

 - C{POST /}: Bot Framework activities. Other methods get 405 with
   C{Allow: POST}.
 - C{GET /health} (and C{HEAD}): a short text for monitoring.
 - anything else: 404.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from integrations.teams.bot import Answer, TeamsBot

__all__ = ["MAX_BODY", "TeamsResource"]

#: The largest activity accepted, in bytes; Teams' own limit is far lower.
MAX_BODY = 1024 * 1024


class TeamsResource(Resource):
    """
    Serves one Teams bot instance.

    :param bot: the bot that handles activities.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, bot: TeamsBot) -> None:
        super().__init__()
        self.bot = bot

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        """
        Route a request by path and method.
        """
        path = request.path
        method = request.method
        if path == b"/":
            if method != b"POST":
                return _not_allowed(request, b"POST")
            return self._activity(request)
        if path == b"/health":
            if method not in (b"GET", b"HEAD"):
                return _not_allowed(request, b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            return f"Teams bot {self.bot.instance_name} is up\n".encode()
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            b"Not found. The messaging endpoint is POST / (the route itself, "
            b"with no trailing slash) and the health check is GET /health.\n"
        )

    def _activity(self, request: Request) -> bytes | int:
        content = request.content
        assert content is not None
        content.seek(0, 2)
        if content.tell() > MAX_BODY:
            request.setResponseCode(413)
            return b"The activity is too large.\n"
        content.seek(0)
        activity = _parse(content.read())
        header = request.getHeader(b"authorization")
        authorization = header.decode("latin-1") if header is not None else None
        peer = _peer(request)

        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(result: Answer) -> None:
            if result.reason is not None:
                self.log.warn(
                    "Refused an activity from {peer} with {code}: {reason}",
                    peer=peer,
                    code=result.code,
                    reason=result.reason,
                )
            else:
                self.log.debug(
                    "Handled a {kind} activity from {peer}",
                    kind=(activity or {}).get("type"),
                    peer=peer,
                )
            if finished[0]:
                return
            request.setResponseCode(result.code)
            if result.code == 401:
                request.setHeader(b"www-authenticate", b"Bearer")
            if result.body is not None:
                request.setHeader(b"content-type", b"application/json")
                request.write(json.dumps(result.body).encode("utf-8"))
            request.finish()

        def failed(failure: Failure) -> None:
            self.log.failure(
                "Could not handle an activity from {peer}", failure, peer=peer
            )
            if not finished[0]:
                request.setResponseCode(500)
                request.finish()

        d = ensureDeferred(self.bot.receive(authorization, activity))
        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        activity = json.loads(body)
    except ValueError:
        return None
    return activity if isinstance(activity, dict) else None


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _not_allowed(request: Request, allow: bytes) -> bytes:
    request.setResponseCode(405)
    request.setHeader(b"allow", allow)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"Method not allowed. Allowed: " + allow + b".\n"
