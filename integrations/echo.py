"""
The echo integration: answers every request with a JSON description of what
the instance received, so an operator can see exactly what the gateway
forwards (path, query, headers, body, client address).

Parameters:

- C{status}: the status code to answer with (default 200).

A request may ask for a slow answer with the query argument C{delay}
(seconds, at most L{MAX_DELAY}), to try timeouts and graceful stops.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from xsoar_lr.api import InstanceContext, Parameter

#: The longest delay a request may ask for, in seconds.
MAX_DELAY = 300.0

PARAMETERS = (
    Parameter(
        "status",
        kind="int",
        default=200,
        minimum=100,
        description="The status code of every answer.",
    ),
)


class EchoResource(Resource):
    """
    Describes each request back to its sender.
    """

    isLeaf = True

    def __init__(self, name: str, status: int, reactor: Any = None) -> None:
        super().__init__()
        self.name = name
        self.status = status
        self.reactor = reactor

    def render(self, request: Request) -> bytes | int:
        arguments: dict[bytes, list[bytes]] = request.args or {}
        delay = arguments.get(b"delay", [b""])[0]
        if delay and self.reactor is not None:
            try:
                seconds = min(max(float(delay), 0.0), MAX_DELAY)
            except ValueError:
                request.setResponseCode(400)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"The delay argument must be a number of seconds.\n"
            call = self.reactor.callLater(seconds, self._answer_later, request)
            request.notifyFinish().addErrback(lambda _: call.cancel())
            return NOT_DONE_YET
        return self.describe(request)

    def _answer_later(self, request: Request) -> None:
        request.write(self.describe(request))
        request.finish()

    def describe(self, request: Request) -> bytes:
        """
        The JSON description of C{request}, with the status code set.
        """
        body = request.content.read() if request.content is not None else b""
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        client = request.getClientAddress()
        described = {
            "instance": self.name,
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "path": request.path.decode("latin-1"),
            "version": request.clientproto.decode("latin-1"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body": text,
            "body_base64": base64.b64encode(body).decode() if text is None else None,
            "client": getattr(client, "host", None),
        }
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(described, indent=1).encode() + b"\n"


def make_resource(context: InstanceContext) -> IResource:
    """
    Build the echo resource of one instance.
    """
    return EchoResource(context.name, context.params["status"], context.reactor)
