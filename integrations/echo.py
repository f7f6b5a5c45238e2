"""
The echo integration: answers every request with a JSON description of what
the instance received, so an operator can see exactly what the gateway
forwards (path, query, headers, body, client address).

Parameters:

- C{status}: the status code to answer with (default 200).
"""

from __future__ import annotations

import base64
import json

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from xsoar_lr.api import InstanceContext, Parameter

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

    def __init__(self, name: str, status: int) -> None:
        super().__init__()
        self.name = name
        self.status = status

    def render(self, request: Request) -> bytes:
        body = request.content.read()
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
    return EchoResource(context.name, context.params["status"])
