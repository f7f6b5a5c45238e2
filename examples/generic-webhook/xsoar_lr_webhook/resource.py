"""
The HTTP side of a webhook instance.

 - C{POST /}: store the events in the body; answers C{200} with a summary
   of each stored event, as XSOAR answers with the incidents it made.
 - C{GET /events?after=<id>&limit=<n>}: the stored events, oldest first, a
   page at a time; C{next} is the absolute URL of the next page.
 - C{GET /events/<id>}: one stored event.

Every error is a JSON object C{{"error": "<sentence>"}} with a 4xx status
(C{503} when the events cannot be stored). Other methods get C{405} with
C{Allow}.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from xsoar_lr.api import InstanceContext
from xsoar_lr_webhook.auth import Authenticator
from xsoar_lr_webhook.events import EventError, EventLog, StoredEvent, parse_events

__all__ = ["WebhookResource", "WebhookSettings"]

#: The largest page of the listing.
MAX_PAGE = 1000

#: Headers that describe the connection rather than the event.
_NOT_STORED = frozenset({"content-length", "connection", "cookie"})


@attrs.frozen
class WebhookSettings:
    """
    What the resource takes from the instance's parameters.
    """

    default_type: str
    max_body_size: int
    max_events_per_request: int
    store_headers: bool


def json_answer(request: Request, code: int, payload: Any) -> bytes:
    """
    Set C{code} and return C{payload} as the JSON body.
    """
    import json

    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


def error(request: Request, code: int, message: str) -> bytes:
    """
    Answer with C{code} and C{{"error": message}}.
    """
    return json_answer(request, code, {"error": message})


class WebhookResource(Resource):
    """
    Receives, stores and lists the events of one instance.
    """

    isLeaf = True

    def __init__(
        self,
        context: InstanceContext,
        events: EventLog,
        authenticator: Authenticator | None,
        settings: WebhookSettings,
    ) -> None:
        super().__init__()
        self.context = context
        self.events = events
        self.authenticator = authenticator
        self.settings = settings
        self.unhealthy = False

    # Dispatch.

    def render(self, request: Request) -> bytes | int:
        segments = [s for s in request.postpath if s] if request.postpath else []
        allowed: tuple[bytes, ...]
        handler: Callable[[Request, list[bytes]], bytes | int]
        if not segments:
            allowed, handler = (b"POST",), self.receive
        elif segments == [b"events"]:
            allowed, handler = (b"GET", b"HEAD"), self.list_events
        elif len(segments) == 2 and segments[0] == b"events":
            allowed, handler = (b"GET", b"HEAD"), self.show_event
        else:
            return error(
                request,
                404,
                "Nothing is here; POST events to the instance's root, and GET "
                "/events to list them.",
            )
        if request.method not in allowed:
            request.setHeader(b"allow", b", ".join(allowed))
            return error(
                request,
                405,
                f"{request.method.decode('latin-1')} is not allowed here; use "
                f"{' or '.join(m.decode() for m in allowed)}.",
            )
        refusal = self.refuse(request)
        if refusal is not None:
            return refusal
        return handler(request, segments)

    def refuse(self, request: Request) -> bytes | None:
        """
        The answer for a request without the right credentials, or C{None}
        when it may go on.
        """
        if self.authenticator is None:
            if request.method == b"POST":
                return None
            return error(
                request,
                403,
                "Listing events needs credentials; set the instance's "
                "'credentials' parameter.",
            )
        if self.authenticator.allows(request):
            return None
        self.context.log.info(
            "Refused a {method} request from {client}: wrong or missing credentials",
            method=request.method.decode("latin-1"),
            client=self.client_of(request),
        )
        challenge = self.authenticator.challenge()
        if challenge is not None:
            request.setHeader(b"www-authenticate", challenge.encode())
        return error(request, 401, "Authorization failed.")

    # Receiving.

    def receive(self, request: Request, segments: list[bytes]) -> bytes | int:
        """
        Store the events of a POST.
        """
        limit = self.settings.max_body_size
        declared = request.getHeader(b"content-length") or b""
        content = request.content
        assert content is not None
        content.seek(0, 2)
        size = max(content.tell(), int(declared) if declared.isdigit() else 0)
        if size > limit:
            return error(
                request,
                413,
                f"The body is {size} bytes; this instance "
                f"accepts at most {limit} bytes per request (parameter "
                "'max_body_size').",
            )
        content.seek(0)
        try:
            events = parse_events(
                content.read(),
                self.settings.default_type,
                self.settings.max_events_per_request,
            )
        except EventError as e:
            return error(request, 400, str(e))
        except OverflowError as e:
            return error(request, 413, str(e))

        client = self.client_of(request)
        d = self.context.run_in_thread(
            self.events.add,
            events,
            self.context.reactor.seconds(),
            self.stored_headers(request),
            client,
        )
        d.addCallbacks(
            self.stored,
            self.not_stored,
            callbackArgs=(request, client),
            errbackArgs=(request,),
        )
        self.answer_later(request, d)
        return NOT_DONE_YET

    def stored(
        self, events: list[StoredEvent], request: Request, client: str | None
    ) -> bytes:
        self.context.log.debug(
            "Stored {count} event(s) from {client}", count=len(events), client=client
        )
        if self.unhealthy:
            self.unhealthy = False
            self.context.report_health(None)
        return json_answer(request, 200, [event.summary() for event in events])

    def not_stored(self, failure: Failure, request: Request) -> bytes:
        failure.trap(sqlite3.Error, OSError)
        self.context.log.failure(
            "Cannot store events in {path}", failure, path=str(self.events.path)
        )
        self.unhealthy = True
        self.context.report_health(
            f"Events cannot be stored in {self.events.path}: "
            f"{failure.getErrorMessage()}"
        )
        request.setHeader(b"retry-after", b"30")
        return error(
            request,
            503,
            "The instance cannot store events right now; try again later.",
        )

    def stored_headers(self, request: Request) -> dict[str, list[str]]:
        """
        The request's headers as they are kept with its events: never the
        one with the credentials.
        """
        if not self.settings.store_headers:
            return {}
        secret = (
            self.authenticator.secret_header.lower()
            if self.authenticator is not None
            else "authorization"
        )
        kept: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            text = name.decode("latin-1")
            if text.lower() in _NOT_STORED or text.lower() == secret:
                continue
            kept[text] = [v.decode("latin-1") for v in values]
        return kept

    @staticmethod
    def client_of(request: Request) -> str | None:
        """
        The client's address: the gateway's C{X-Forwarded-For} (which the
        gateway sets itself) behind the gateway, else the peer's address.
        """
        if request.getHeader(b"x-forwarded-prefix") is not None:
            forwarded = request.getHeader(b"x-forwarded-for")
            if forwarded:
                return forwarded.decode("latin-1").split(",")[0].strip()
        return getattr(request.getClientAddress(), "host", None)

    # Listing.

    def list_events(self, request: Request, segments: list[bytes]) -> bytes | int:
        """
        A page of stored events.
        """
        query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
        unknown = sorted(set(query) - {"after", "limit"})
        if unknown:
            return error(
                request,
                400,
                f"Unknown query parameter(s) {', '.join(map(repr, unknown))}; "
                "the listing takes 'after' and 'limit'.",
            )
        try:
            after = _whole_number(query, "after", 0, 0, None)
            limit = _whole_number(query, "limit", 50, 1, MAX_PAGE)
        except ValueError as e:
            return error(request, 400, str(e))

        def page(result: tuple[list[StoredEvent], int]) -> bytes:
            events, total = result
            more = len(events) > limit
            events = events[:limit]
            next_url = (
                self.context.absolute_url(
                    request, f"/events?after={events[-1].id}&limit={limit}"
                )
                if more
                else None
            )
            return json_answer(
                request,
                200,
                {
                    "total": total,
                    "events": [e.as_json() for e in events],
                    "next": next_url,
                },
            )

        d = self.context.run_in_thread(self.events.page, after, limit + 1)
        d.addCallback(page)
        self.answer_later(request, d)
        return NOT_DONE_YET

    def show_event(self, request: Request, segments: list[bytes]) -> bytes | int:
        """
        One stored event.
        """
        text = segments[1].decode("latin-1")
        if not text.isdigit():
            return error(
                request, 404, f"{text!r} is not an event id; ids are whole numbers."
            )

        def show(event: StoredEvent | None) -> bytes:
            if event is None:
                return error(
                    request,
                    404,
                    f"No event has id {text}; it may have been dropped (parameters "
                    "'max_stored_events' and 'retention_days').",
                )
            return json_answer(request, 200, event.as_json())

        d = self.context.run_in_thread(self.events.get, int(text))
        d.addCallback(show)
        self.answer_later(request, d)
        return NOT_DONE_YET

    # Answering from a Deferred.

    def answer_later(self, request: Request, d: Deferred[Any]) -> None:
        """
        Write the body C{d} fires with and finish, unless the client went
        away; an unexpected failure is a logged C{500}.
        """
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def unexpected(failure: Failure) -> bytes:
            self.context.log.failure("Unexpected failure answering a request", failure)
            return error(request, 500, "The instance failed; see its log.")

        def write(body: bytes) -> None:
            if gone:
                return
            request.write(body)
            request.finish()

        d.addErrback(unexpected)
        d.addCallback(write)


def _whole_number(
    query: dict[str, list[str]], name: str, default: int, low: int, high: int | None
) -> int:
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    top = "" if high is None else f" to {high}"
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        raise ValueError(
            f"The query parameter {name!r} must be a whole number from {low}{top}, "
            f"not {text!r}."
        )
    return int(text)
