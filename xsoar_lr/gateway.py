"""
The gateway: a TLS site that publishes routed instances at
C{/instance/execute/<instance name>} by reverse proxy.

Each routed instance has a L{InstanceProxyResource}, a
C{ReverseProxyResource} whose upstream side is Twisted's HTTP/1.1 C{Agent}
with a pool of kept-alive connections, instead of the deprecated
C{HTTPClient} that the stock class uses. That replaces the stock
behaviour measured in C{twisted-notes.md} section 1: the bare route works
for every method, repeated headers are all forwarded, request bodies of any
framing arrive with a C{Content-Length}, the instance's refusal is a C{502}
(not C{501}), an instance that closes early is a C{502} (not an empty
C{200}), a silent one is a C{504}, a client that goes away aborts its
upstream request, and a slow client pauses the instance instead of filling
the gateway's memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from xsoar_lr.supervisor import InstanceState

with warnings.catch_warnings():
    # Importing twisted.web.proxy warns that HTTPClient is deprecated; our
    # subclass does not use HTTPClient.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.proxy import ReverseProxyResource

__all__ = [
    "GatewayRoot",
    "InstanceProxyResource",
    "RouteTable",
    "build_routes",
    "make_agent",
    "make_gateway_site",
    "plain_text",
]

#: Headers that describe one connection and are never forwarded
#: (RFC 9110 section 7.6.1), in lower case.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Headers the gateway sets itself; a client's own are dropped, so an
#: instance can trust them.
_GATEWAY_SET = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-request-uri",
        b"content-length",
    }
)


def _connection_listed(headers: Headers) -> set[bytes]:
    """
    The header names that a C{Connection} header marks as hop-by-hop.
    """
    listed: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        listed.update(
            token.strip().lower() for token in value.split(b",") if token.strip()
        )
    return listed


def plain_text(request: Request, code: int, text: str) -> bytes:
    """
    Answer C{request} with a short plain-text body.
    """
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    return (text + "\n").encode("utf-8")


class _NotRouted(Resource):
    """
    The answer for every path that is not a route: C{404}, naming nothing.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return plain_text(request, 404, "No instance is routed at this path.")


_NOT_ROUTED = _NotRouted()


class _Quiet11ClientFactory(_HTTP11ClientFactory):
    # The stock factory logs "Starting factory" for every upstream connection.
    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _Quiet11ClientFactory


class _BodyRelay(Protocol):
    """
    Streams an instance's response body to the client, pausing the instance
    while the client is slow to read.
    """

    log = Logger()

    def __init__(self, request: Request, name: str, done: Deferred[None]) -> None:
        self.request = request
        self.name = name
        self.done = done

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.request.registerProducer(transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        request = self.request
        if not request._disconnected:  # type: ignore[attr-defined]
            request.unregisterProducer()
            if reason.check(ResponseDone, PotentialDataLoss):
                request.finish()
            else:
                # The status line is sent already; the only honest signal left
                # is to cut the connection, so the client sees a truncated body.
                self.log.warn(
                    "Instance {instance} broke off its response: {reason}",
                    instance=self.name,
                    reason=reason.getErrorMessage(),
                )
                request.channel.forceAbortClient()  # type: ignore[attr-defined]
        self.done.callback(None)


class InstanceProxyResource(ReverseProxyResource):  # type: ignore[misc]
    """
    The route of one instance: forwards the request, less the route prefix,
    to the instance's own port over HTTP/1.1.

    :ivar name: the instance's name.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        agent: Agent,
        reactor: Any,
        state: Callable[[str], InstanceState] | None = None,
        retry_after: Callable[[str], int] | None = None,
        response_timeout: float = 120.0,
    ) -> None:
        """
        :param name: the instance's name.
        :param host: the address the instance listens on.
        :param port: the instance's port.
        :param agent: the HTTP client that reaches instances.
        :param reactor: the reactor, for timeouts.
        :param state: tells the state of an instance by name; the route
            answers C{503} while the instance is not running.
        :param retry_after: tells when an instance that is not running is
            expected back, in seconds.
        :param response_timeout: seconds to wait for the response headers.
        """
        super().__init__(host, port, b"", reactor=reactor)
        self.name = name
        self.agent = agent
        self.state = state
        self.retry_after = retry_after or (lambda name: 1)
        self.response_timeout = response_timeout

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self

    def upstream_uri(self, request: Request) -> bytes:
        """
        The URI to ask the instance for: the path below the route, byte for
        byte as the client sent it, and the query string.
        """
        path = request.path
        # Skip "", "instance", "execute" and the name; what is left is the
        # instance's own path.
        pieces = path.split(b"/", 4)
        rest = b"/" + pieces[4] if len(pieces) > 4 else b"/"
        query = request.uri.partition(b"?")
        return rest + (b"?" + query[2] if query[1] else b"")

    def route_prefix(self, request: Request) -> bytes:
        """
        The route as the client spelled it, such as C{/instance/execute/My%20EDL}.
        """
        return b"/".join(request.path.split(b"/", 4)[:4])

    def upstream_headers(self, request: Request) -> Headers:
        """
        The request's headers as the instance gets them: every value of
        every end-to-end header, and the gateway's own C{X-Forwarded-*} and
        C{X-Request-URI}.
        """
        incoming = request.requestHeaders
        dropped = HOP_BY_HOP | _GATEWAY_SET | _connection_listed(incoming)
        headers = Headers()
        for name, values in incoming.getAllRawHeaders():
            if name.lower() not in dropped:
                headers.setRawHeaders(name, list(values))
        client = request.getClientAddress()
        headers.setRawHeaders(
            b"x-forwarded-for", [getattr(client, "host", "unknown").encode()]
        )
        headers.setRawHeaders(
            b"x-forwarded-proto", [b"https" if request.isSecure() else b"http"]
        )
        host = incoming.getRawHeaders(b"host")
        if host:
            headers.setRawHeaders(b"x-forwarded-host", [host[0]])
        headers.setRawHeaders(b"x-forwarded-prefix", [self.route_prefix(request)])
        headers.setRawHeaders(b"x-request-uri", [request.uri])
        return headers

    def render(self, request: Request) -> bytes | int:
        if self.state is not None:
            state = self.state(self.name)
            if state is not InstanceState.RUNNING:
                return self.unavailable(request, state)

        has_body = incoming_has_body(request)
        body = FileBodyProducer(request.content) if has_body else None
        url = b"http://%s:%d%s" % (
            _url_host(self.host),
            self.port,
            self.upstream_uri(request),
        )
        d = self.agent.request(
            request.method, url, self.upstream_headers(request), body
        )
        d.addTimeout(
            self.response_timeout, self.reactor, onTimeoutCancel=_timed_out
        )
        relaying: list[_BodyRelay] = []

        def client_gone(failure: Failure) -> None:
            # The client went away: stop the instance's work on its behalf.
            if relaying:
                relaying[0].transport.stopProducing()  # type: ignore[union-attr]
            else:
                d.cancel()

        request.notifyFinish().addErrback(client_gone)
        d.addCallback(self.respond, request, relaying)
        d.addErrback(self.failed, request)
        return NOT_DONE_YET

    def unavailable(self, request: Request, state: InstanceState) -> bytes:
        """
        Answer for an instance that is not serving: C{503} with
        C{Retry-After} while it starts or restarts.
        """
        if state in (InstanceState.STARTING, InstanceState.RESTARTING):
            request.responseHeaders.setRawHeaders(
                b"retry-after", [str(self.retry_after(self.name)).encode()]
            )
            return plain_text(
                request, 503, f"The instance is {state.value}; try again shortly."
            )
        return plain_text(request, 502, "The instance is not running.")

    def respond(
        self, response: IResponse, request: Request, relaying: list[_BodyRelay]
    ) -> Deferred[None]:
        """
        Relay the instance's response: status, end-to-end headers, and the
        body as it comes.
        """
        request.setResponseCode(response.code, response.phrase)
        dropped = HOP_BY_HOP | _connection_listed(response.headers)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in dropped:
                request.responseHeaders.setRawHeaders(name, list(values))
        done: Deferred[None] = Deferred()
        relay = _BodyRelay(request, self.name, done)
        relaying.append(relay)
        response.deliverBody(relay)
        return done

    def failed(self, failure: Failure, request: Request) -> None:
        """
        Answer for a request the instance did not answer.
        """
        if request._disconnected or request.finished:  # type: ignore[attr-defined]
            return
        if failure.check(TimeoutError, ConnectTimeoutError, ConnectingCancelledError):
            code, text = 504, "The instance did not answer in time."
        elif failure.check(ConnectError):
            code, text = 502, "The instance refused the connection."
        elif failure.check(ResponseFailed, CancelledError):
            code, text = 502, "The instance closed the connection without a response."
        else:
            self.log.failure(
                "Proxying to instance {instance} failed", failure, instance=self.name
            )
            code, text = 502, "The instance could not be reached."
        self.log.info(
            "Route to instance {instance} answered {code}: {reason}",
            instance=self.name,
            code=code,
            reason=failure.getErrorMessage(),
        )
        request.write(plain_text(request, code, text))
        request.finish()


def _timed_out(result: object, timeout: float) -> Failure:
    # Cancelling the Agent's request fails it with ResponseNeverReceived;
    # what the client must learn is that the instance was too slow.
    return Failure(TimeoutError(f"no response headers within {timeout} seconds"))


def incoming_has_body(request: Request) -> bool:
    """
    Whether the client sent a request body (of any length, zero included).
    """
    headers = request.requestHeaders
    return headers.hasHeader(b"content-length") or headers.hasHeader(
        b"transfer-encoding"
    )


def _url_host(host: str) -> bytes:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]".encode() if ":" in host else host.encode()


@attrs.define
class RouteTable:
    """
    The routes the gateway serves now, by instance name; replaced as a
    whole when the configuration changes.
    """

    routes: Mapping[str, InstanceProxyResource] = attrs.Factory(dict)

    def lookup(self, name: str) -> InstanceProxyResource | None:
        """
        The route of the instance with exactly this name, if it is routed.
        """
        return self.routes.get(name)


class _ExecuteResource(Resource):
    """
    C{/instance/execute/}: finds the route by the URL-decoded instance name.
    """

    def __init__(self, table: RouteTable) -> None:
        super().__init__()
        self.table = table

    def getChild(self, path: bytes, request: Request) -> IResource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return _NOT_ROUTED
        route = self.table.lookup(name)
        return _NOT_ROUTED if route is None else route

    def render(self, request: Request) -> bytes:
        return _NOT_ROUTED.render(request)


class _Branch(Resource):
    """
    A fixed path segment that is not itself a page.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _NOT_ROUTED

    def render(self, request: Request) -> bytes:
        return _NOT_ROUTED.render(request)


class GatewayRoot(_Branch):
    """
    The gateway's resource tree: C{/instance/execute/<name>} and nothing else.
    """

    def __init__(self, table: RouteTable) -> None:
        super().__init__()
        self.table = table
        instance = _Branch()
        instance.putChild(b"execute", _ExecuteResource(table))
        self.putChild(b"instance", instance)


def make_agent(reactor: Any, connect_timeout: float) -> Agent:
    """
    The HTTP/1.1 client the gateway reaches instances with, keeping
    connections alive between requests.
    """
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 60
    return Agent(reactor, connectTimeout=connect_timeout, pool=pool)


def build_routes(
    instances: Mapping[str, tuple[str, int]],
    agent: Agent,
    reactor: Any,
    state: Callable[[str], InstanceState] | None = None,
    retry_after: Callable[[str], int] | None = None,
    response_timeout: float = 120.0,
) -> dict[str, InstanceProxyResource]:
    """
    A route for each named instance, given as C{(host, port)}.
    """
    return {
        name: InstanceProxyResource(
            name,
            host,
            port,
            agent,
            reactor,
            state=state,
            retry_after=retry_after,
            response_timeout=response_timeout,
        )
        for name, (host, port) in instances.items()
    }


def make_gateway_site(table: RouteTable) -> Site:
    """
    The gateway's site over C{table}.
    """
    # The gateway never reads form bodies; parsing them only costs memory.
    site = Site(GatewayRoot(table), parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    return site

