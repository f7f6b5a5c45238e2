"""
The gateway: a TLS site that publishes routed instances at
C{/instance/execute/<instance name>} by reverse proxy.

Each routed instance has a L{InstanceProxyResource}, a
C{ReverseProxyResource} whose upstream side is Twisted's HTTP/1.1 C{Agent}
with a pool of kept-alive connections, instead of the deprecated
C{HTTPClient} that the stock class uses. That replaces the stock
behaviour measured in C{twisted-notes.md} section 1: the bare route works
for every method, repeated headers are all forwarded, the instance's
refusal is a C{502} (not C{501}), an instance that closes early is a C{502}
(not an empty C{200}), a silent one is a C{504}, a client that goes away
aborts its upstream request, and a slow client pauses the instance instead
of filling the gateway's memory.

The site (L{make_gateway_site}) uses its own request and channel classes,
because stock C{twisted.web} reads a whole request body before it lets a
resource see the request. L{GatewayRequest} decides as soon as the headers
are complete: it refuses a body that is too large (C{413}, before the
client sends it, also with C{Expect: 100-continue}), applies the route's
access rules, and starts the request to the instance so that the body
streams through, the client being paused while the instance reads slowly.
L{GatewayChannel} limits header size and count (C{431}) and the time a
client may take to send its headers (slowloris).
"""

from __future__ import annotations

import collections
import io
import warnings
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import attrs
import netaddr
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionDone,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import Request as ClientRequest
from twisted.web.client import (
    UNKNOWN_LENGTH,
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import (
    HTTPChannel,
    PotentialDataLoss,
    _GenericHTTPChannelProtocol,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from xsoar_lr.config import GatewayConfig, RouteConfig
from xsoar_lr.supervisor import InstanceState

with warnings.catch_warnings():
    # Importing twisted.web.proxy warns that HTTPClient is deprecated; our
    # subclass does not use HTTPClient.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.proxy import ReverseProxyResource

__all__ = [
    "AuthThrottle",
    "GatewayChannel",
    "GatewayPolicy",
    "GatewayRequest",
    "GatewayRoot",
    "GatewaySite",
    "InstanceEndpoints",
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
        b"expect",
    }
)

#: What is never forwarded from a client: hop-by-hop headers and the
#: gateway's own.
_NOT_FORWARDED = HOP_BY_HOP | _GATEWAY_SET

_ROUTE_PREFIX = b"/instance/execute/"

#: A request whose route was not looked up yet.
_UNRESOLVED = object()

#: A chunked request body up to this size is collected and sent to the
#: instance with a C{Content-Length} (some application servers refuse
#: chunked request bodies); a longer one streams through chunked.
CHUNKED_COLLECT_LIMIT = 64 * 1024

#: Request body bytes held for an instance that is not reading yet, before
#: the client is paused.
UPLOAD_HIGH_WATER = 256 * 1024

#: Response bytes a client connection buffers before the instance is paused
#: (Twisted's default is 64 KiB). The instance's connection reads 64 KiB at
#: a time, so with the default every read of a large answer paused and
#: resumed the instance; with this, only a client that really falls behind
#: does. Memory stays bounded by this much per client connection.
CLIENT_WRITE_BUFFER = 256 * 1024

#: Request targets are ASCII without controls or spaces (RFC 9112 section
#: 3.2); anything else must be percent-encoded by the client.
_TARGET_BYTES = frozenset(range(0x21, 0x7F))

_PHRASES = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


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
    # Twisted knows no reason phrase for some codes (429, 431).
    request.setResponseCode(code, _PHRASES.get(code))
    request.responseHeaders.setRawHeaders(
        b"content-type", [b"text/plain; charset=utf-8"]
    )
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    return (text + "\n").encode("utf-8")


@attrs.frozen
class _Verdict:
    """
    The gateway's own answer to a request it does not forward.
    """

    code: int
    text: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def render(self, request: Request) -> bytes:
        for name, value in self.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        return plain_text(request, self.code, self.text)

    def raw(self, hsts: bytes | None) -> bytes:
        """
        The whole answer as bytes, for writing to a connection that is then
        closed (the request body is not read).
        """
        body = (self.text + "\n").encode("utf-8")
        lines = [
            b"HTTP/1.1 %d %s" % (self.code, _PHRASES.get(self.code, b"Error")),
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: %d" % len(body),
            b"Cache-Control: no-store",
            b"Connection: close",
        ]
        lines += [name + b": " + value for name, value in self.headers]
        if hsts:
            lines.append(b"Strict-Transport-Security: " + hsts)
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _VerdictResource(Resource):
    """
    Renders a verdict the gateway reached before traversing its tree.
    """

    isLeaf = True

    def __init__(self, verdict: _Verdict) -> None:
        super().__init__()
        self.verdict = verdict

    def render(self, request: Request) -> bytes:
        return self.verdict.render(request)


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


class AuthThrottle:
    """
    Counts C{401} answers per client address and instance, and blocks a pair
    that had too many within a window, so passwords cannot be guessed at
    speed. Memory is bounded: the oldest pairs are forgotten first.

    :ivar limit: failures allowed within C{window} seconds (0: never block).
    :ivar window: seconds over which failures are counted.
    :ivar block: seconds a pair stays blocked.
    """

    log = Logger()

    #: The most address and instance pairs remembered at once.
    max_entries = 10000

    def __init__(self, clock: Any, limit: int, window: float, block: float) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.block = block
        self._failures: collections.OrderedDict[
            tuple[str, str], collections.deque[float]
        ] = collections.OrderedDict()
        self._blocked: collections.OrderedDict[tuple[str, str], float] = (
            collections.OrderedDict()
        )

    def retry_after(self, address: str, instance: str) -> int:
        """
        Seconds until the pair may try again, or 0 when it is not blocked.
        """
        until = self._blocked.get((address, instance))
        if until is None:
            return 0
        left = until - self.clock.seconds()
        if left <= 0:
            del self._blocked[(address, instance)]
            return 0
        return max(1, int(left + 0.999))

    def failed(self, address: str, instance: str) -> None:
        """
        Note a C{401} answer for the pair; block it once it had too many.
        """
        if self.limit <= 0:
            return
        key = (address, instance)
        now = self.clock.seconds()
        times = self._failures.pop(key, None) or collections.deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._blocked.pop(key, None)
            self._blocked[key] = now + self.block
            self._trim(self._blocked)
            self.log.warn(
                "Client {client} had {count} authentication failures at "
                "instance {instance} within {window} s; answering 429 for "
                "{block} s",
                client=address,
                count=len(times),
                instance=instance,
                window=self.window,
                block=self.block,
            )
            return
        self._failures[key] = times
        self._trim(self._failures)

    def _trim(self, table: collections.OrderedDict[Any, Any]) -> None:
        while len(table) > self.max_entries:
            table.popitem(last=False)


@attrs.define
class GatewayPolicy:
    """
    The gateway-wide rules every route follows.

    :ivar trusted_proxies: front proxies whose C{X-Forwarded-For} is kept
        and extended.
    :ivar hsts: the C{Strict-Transport-Security} max-age, or 0 for none.
    :ivar throttle: the authentication failure throttle, if any.
    """

    trusted_proxies: netaddr.IPSet = attrs.Factory(netaddr.IPSet)
    hsts: int = 0
    throttle: AuthThrottle | None = None
    _clock: Any = None

    @classmethod
    def from_config(cls, gateway: GatewayConfig, clock: Any) -> GatewayPolicy:
        """
        The policy a gateway configuration describes.
        """
        throttle = (
            AuthThrottle(
                clock,
                gateway.auth_failure_limit,
                gateway.auth_failure_window,
                gateway.auth_failure_block,
            )
            if gateway.auth_failure_limit > 0
            else None
        )
        return cls(
            trusted_proxies=netaddr.IPSet(gateway.trusted_proxies),
            hsts=gateway.hsts,
            throttle=throttle,
            clock=clock,
        )

    def configure(self, gateway: GatewayConfig) -> None:
        """
        Follow a reloaded configuration; the failures counted so far are
        kept while throttling stays on.
        """
        self.trusted_proxies = netaddr.IPSet(gateway.trusted_proxies)
        self.hsts = gateway.hsts
        if gateway.auth_failure_limit <= 0:
            self.throttle = None
        elif self.throttle is None:
            self.throttle = self.from_config(gateway, None).throttle
            assert self.throttle is not None
            self.throttle.clock = self._clock
        else:
            self.throttle.limit = gateway.auth_failure_limit
            self.throttle.window = gateway.auth_failure_window
            self.throttle.block = gateway.auth_failure_block

    def is_trusted(self, address: str) -> bool:
        """
        Whether C{address} is one of the trusted front proxies.
        """
        if not self.trusted_proxies:
            return False
        try:
            return netaddr.IPAddress(address) in self.trusted_proxies
        except (ValueError, netaddr.AddrFormatError):
            return False

    def client_address(self, request: Request) -> str:
        """
        The address a request comes from: the peer's, or, when the peer is a
        trusted proxy, the nearest address in C{X-Forwarded-For} that is not
        a trusted proxy itself.
        """
        peer = str(getattr(request.getClientAddress(), "host", "unknown"))
        if not self.is_trusted(peer):
            return peer
        hops = [
            hop.strip().decode("latin-1")
            for value in request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
            for hop in value.split(b",")
            if hop.strip()
        ]
        client = peer
        for hop in reversed(hops):
            try:
                netaddr.IPAddress(hop)
            except (ValueError, netaddr.AddrFormatError):
                break
            client = hop
            if not self.is_trusted(hop):
                break
        return client

    def forwarded_for(self, request: Request) -> bytes:
        """
        The C{X-Forwarded-For} value to send: the peer's address appended to
        what a trusted proxy sent, or the peer's address alone.
        """
        peer = str(getattr(request.getClientAddress(), "host", "unknown"))
        sent = request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        if sent and self.is_trusted(peer):
            return b", ".join(v.strip() for v in sent) + b", " + peer.encode()
        return peer.encode()

    @property
    def hsts_value(self) -> bytes | None:
        """
        The C{Strict-Transport-Security} header value, if HSTS is on.
        """
        return b"max-age=%d" % self.hsts if self.hsts > 0 else None


@implementer(IBodyProducer)
class _UploadBody:
    """
    A request body that the client is still sending, fed to the instance as
    it arrives. The client is paused while the instance reads slowly (or
    while the connection to it is being made), so the gateway holds at most
    about L{UPLOAD_HIGH_WATER} bytes of it.
    """

    def __init__(self, request: GatewayRequest, length: int | object) -> None:
        self.request = request
        self.length = length
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._consumer: Any = None
        self._finished: Deferred[None] | None = None
        self._ended = False
        self._failed: Failure | None = None
        self._stopped = False
        self._paused_by_instance = False
        self._client_paused = False

    # Fed by the gateway request.

    def feed(self, data: bytes) -> None:
        if self._stopped or self._failed is not None:
            return
        if self._consumer is None or self._paused_by_instance or self._held:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > UPLOAD_HIGH_WATER:
                self._pause_client()
            return
        self._consumer.write(data)

    def end(self) -> None:
        self._ended = True
        self._resume_client()
        self._maybe_finish()

    def fail(self, reason: Failure) -> None:
        if self._ended or self._failed is not None:
            return
        self._failed = reason
        self._held = []
        if (
            self._finished is not None
            and not self._finished.called
            and not self._stopped
        ):
            self._finished.errback(reason)

    # Driven by the Agent.

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._finished = Deferred()
        if self._failed is not None:
            self._finished.errback(self._failed)
            return self._finished
        self._flush()
        return self._finished

    def pauseProducing(self) -> None:
        self._paused_by_instance = True
        self._pause_client()

    def resumeProducing(self) -> None:
        self._paused_by_instance = False
        self._flush()

    def stopProducing(self) -> None:
        # The instance stopped taking the body (it answered early or went
        # away); the rest of the client's body is read and dropped.
        self._stopped = True
        self._held = []
        self._resume_client()

    def _flush(self) -> None:
        while self._held and not self._paused_by_instance and not self._stopped:
            data = self._held.pop(0)
            self._held_bytes -= len(data)
            self._consumer.write(data)
        if not self._held and not self._paused_by_instance:
            self._resume_client()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # After stopProducing the Agent expects nothing more of this body:
        # firing would make it complain that too few bytes were written.
        if (
            self._ended
            and not self._stopped
            and not self._held
            and self._finished is not None
            and not self._finished.called
        ):
            self._finished.callback(None)

    def _pause_client(self) -> None:
        if not self._client_paused and not self._ended:
            self._client_paused = True
            self.request.pause_client()

    def _resume_client(self) -> None:
        if self._client_paused:
            self._client_paused = False
            self.request.resume_client()


class _Discard(Protocol):
    """
    Takes a response body nobody will read and closes its connection.
    """

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        transport.stopProducing()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        pass


def _abort_if_connected(request: Request) -> None:
    if not request._disconnected:  # type: ignore[attr-defined]
        request.channel.forceAbortClient()  # type: ignore[attr-defined]


class _BodyRelay(Protocol):
    """
    Streams an instance's response body to the client, pausing the instance
    while the client is slow to read.
    """

    log = Logger()

    #: Seconds a client has to read what was relayed of a broken response.
    flush_timeout = 15.0

    def __init__(self, request: Request, name: str, done: Deferred[None]) -> None:
        self.request = request
        self.name = name
        self.done = done

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if not self.request._disconnected:  # type: ignore[attr-defined]
            self.request.registerProducer(transport, True)
        else:
            transport.stopProducing()

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
                # is to close the connection without ending the body, so the
                # client sees a truncated transfer. What was received is
                # flushed first; a client that does not read it in time is
                # cut off.
                self.log.warn(
                    "Instance {instance} broke off its response: {reason}",
                    instance=self.name,
                    reason=reason.getErrorMessage(),
                )
                channel = request.channel
                channel.loseConnection()  # type: ignore[attr-defined]
                channel.callLater(  # type: ignore[attr-defined,call-arg]
                    self.flush_timeout, _abort_if_connected, request
                )
        self.done.callback(None)


class _Exchange:
    """
    One request's trip to an instance: the Agent's request, the body being
    uploaded, and the response once it comes. The outcome is kept until the
    gateway request is ready to relay it, which may be after the instance
    answered (an instance may answer before the whole body is sent).
    """

    def __init__(
        self, route: InstanceProxyResource, deferred: Deferred[IResponse]
    ) -> None:
        self.route = route
        self.deferred = deferred
        self.started = route.reactor.seconds()
        self.upload: _UploadBody | None = None
        self.relay: _BodyRelay | None = None
        self.aborted = False
        self._outcome: IResponse | Failure | None = None
        self._waiter: Deferred[IResponse] | None = None
        deferred.addBoth(self._settle)

    def _settle(self, result: IResponse | Failure) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._outcome = result
        elif not waiter.called:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        elif not isinstance(result, Failure):
            # Nobody waits any more (timed out, client gone): drop it.
            result.deliverBody(_Discard())
        if self.aborted and self._outcome is not None:
            self._drop_outcome()

    def outcome(self) -> Deferred[IResponse]:
        """
        The response, or the reason there is none; cancelling it cancels
        the request to the instance.
        """
        d: Deferred[IResponse] = Deferred(lambda _: self.deferred.cancel())
        result, self._outcome = self._outcome, None
        if result is None:
            self._waiter = d
        elif isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        return d

    def abort(self, reason: Failure) -> None:
        """
        The client went away: stop all work on its behalf at once.
        """
        self.aborted = True
        if self.upload is not None:
            self.upload.fail(reason)
        if self.relay is not None:
            self.relay.transport.stopProducing()  # type: ignore[union-attr]
        elif self._outcome is not None:
            self._drop_outcome()
        else:
            self.deferred.cancel()

    def _drop_outcome(self) -> None:
        result, self._outcome = self._outcome, None
        if result is not None and not isinstance(result, Failure):
            result.deliverBody(_Discard())


class InstanceProxyResource(ReverseProxyResource):  # type: ignore[misc]
    """
    The route of one instance: forwards the request, less the route prefix,
    to the instance's own port over HTTP/1.1, after the route's access rules
    and limits.

    :ivar name: the instance's name.
    :ivar settings: the route's limits, timeouts and access rules.
    :ivar active: requests in progress now.
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
        settings: RouteConfig | None = None,
        policy: GatewayPolicy | None = None,
    ) -> None:
        """
        :param name: the instance's name.
        :param host: the address the instance listens on.
        :param port: the instance's port.
        :param agent: the HTTP client that reaches instances; a route whose
            C{settings} give another connect timeout shares its pool.
        :param reactor: the reactor, for timeouts.
        :param state: tells the state of an instance by name; the route
            answers C{503} while the instance is not running.
        :param retry_after: tells when an instance that is not running is
            expected back, in seconds.
        :param response_timeout: seconds to wait for the response headers
            (used when no C{settings} are given).
        :param settings: the route's settings.
        :param policy: the gateway-wide rules.
        """
        super().__init__(host, port, b"", reactor=reactor)
        self.name = name
        self.settings = settings or RouteConfig(response_timeout=response_timeout)
        self.policy = policy or GatewayPolicy()
        pool = getattr(agent, "_pool", None)
        given = getattr(agent, "_endpointFactory", None)
        if settings is not None:
            connect_timeout = settings.connect_timeout
        elif isinstance(given, InstanceEndpoints):
            connect_timeout = given.connect_timeout
        else:
            # A stock Agent keeps its connect timeout here.
            connect_timeout = (
                getattr(given, "_connectTimeout", None) or self.settings.connect_timeout
            )
        endpoints = InstanceEndpoints(reactor, connect_timeout)
        if settings is not None and pool is not None:
            agent = Agent.usingEndpointFactory(reactor, endpoints, pool)
        self.agent = agent

        # What is the same for every request, computed once: the endpoint
        # and pool key of the instance, the URL prefix and the Host value.
        self._pool: HTTPConnectionPool | None = pool
        self._endpoint = endpoints.endpoint(host, port)
        authority = b"%s:%d" % (_url_host(host), port)
        self._pool_key = (b"http", authority)
        self._url_prefix = b"http://" + authority
        # As Agent writes it: no port when it is HTTP's own.
        self._host_value = _url_host(host) if port == 80 else authority
        self.state = state
        self.retry_after = retry_after or (lambda name: 1)
        self.response_timeout = self.settings.response_timeout
        self.allowed = (
            None if self.settings.allow is None else netaddr.IPSet(self.settings.allow)
        )
        self.active = 0

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
        listed = _connection_listed(incoming)
        dropped = _NOT_FORWARDED | listed if listed else _NOT_FORWARDED
        headers = Headers()
        for name, values in incoming.getAllRawHeaders():
            if name.lower() not in dropped:
                headers.setRawHeaders(name, list(values))
        headers.setRawHeaders(b"x-forwarded-for", [self.policy.forwarded_for(request)])
        headers.setRawHeaders(
            b"x-forwarded-proto", [b"https" if request.isSecure() else b"http"]
        )
        host = incoming.getRawHeaders(b"host")
        if host:
            headers.setRawHeaders(b"x-forwarded-host", [host[0]])
        else:
            # As Agent would: an HTTP/1.0 client may send no Host.
            headers.setRawHeaders(b"host", [self._host_value])
        headers.setRawHeaders(b"x-forwarded-prefix", [self.route_prefix(request)])
        headers.setRawHeaders(b"x-request-uri", [request.uri])
        return headers

    def admit(self, request: Request) -> _Verdict | None:
        """
        Apply the route's rules before anything is sent to the instance:
        the instance must be running, the client allowed, not throttled, and
        the route not full. An admitted request holds one of the route's
        concurrent request slots until it ends.

        :returns: the answer for a request that is not admitted, or C{None}.
        """
        client = self.policy.client_address(request)
        request.gateway_client = client  # type: ignore[attr-defined]
        verdict = self._access(request, client)
        if verdict is not None:
            return verdict
        if self.active >= self.settings.max_concurrent_requests:
            self.log.warn(
                "Route to instance {instance} is full ({limit} requests in "
                "progress); answering 503 to {client}",
                instance=self.name,
                limit=self.settings.max_concurrent_requests,
                client=client,
            )
            return _Verdict(
                503,
                "The instance is busy; try again shortly.",
                ((b"retry-after", b"1"),),
            )
        self.active += 1

        def release(result: object) -> None:
            self.active -= 1

        request.notifyFinish().addBoth(release)
        return None

    def _access(self, request: Request, client: str) -> _Verdict | None:
        if self.state is not None:
            state = self.state(self.name)
            if state in (InstanceState.STARTING, InstanceState.RESTARTING):
                return _Verdict(
                    503,
                    f"The instance is {state.value}; try again shortly.",
                    ((b"retry-after", str(self.retry_after(self.name)).encode()),),
                )
            if state is not InstanceState.RUNNING:
                return _Verdict(502, "The instance is not running.")
        if self.allowed is not None and not self._allowed(client):
            self.log.warn(
                "Denied {client} access to instance {instance}: the address "
                "is not in the route's allow list",
                client=client,
                instance=self.name,
            )
            return _Verdict(403, "Your address may not use this route.")
        if self.settings.require_client_certificate and not _has_client_certificate(
            request
        ):
            self.log.warn(
                "Denied {client} access to instance {instance}: no client certificate",
                client=client,
                instance=self.name,
            )
            return _Verdict(403, "This route requires a client certificate.")
        throttle = self.policy.throttle
        if throttle is not None:
            wait = throttle.retry_after(client, self.name)
            if wait:
                return _Verdict(
                    429,
                    "Too many failed authentication attempts; try again later.",
                    ((b"retry-after", str(wait).encode()),),
                )
        return None

    def _allowed(self, client: str) -> bool:
        assert self.allowed is not None
        try:
            return netaddr.IPAddress(client) in self.allowed
        except (ValueError, netaddr.AddrFormatError):
            return False

    def start(self, request: Request, body: IBodyProducer | None) -> _Exchange:
        """
        Send the request to the instance.
        """
        target = _origin_form(self.upstream_uri(request))
        headers = self.upstream_headers(request)
        pool = self._pool
        d: Deferred[IResponse]
        if pool is None:
            d = self.agent.request(
                request.method, self._url_prefix + target, headers, body
            )
        else:
            # What Agent.request does, less parsing the URL and building an
            # endpoint for every request. Request checks the method and the
            # target as Agent does.
            outgoing = ClientRequest(
                request.method, target, headers, body, persistent=pool.persistent
            )
            connecting = pool.getConnection(self._pool_key, self._endpoint)
            d = connecting.addCallback(_send_request, outgoing)
        exchange = _Exchange(self, d)
        if isinstance(body, _UploadBody):
            exchange.upload = body
        request.notifyFinish().addErrback(exchange.abort)
        return exchange

    def render(self, request: Request) -> bytes | int:
        verdict = getattr(request, "gateway_verdict", None)
        if verdict is not None:
            return verdict.render(request)
        exchange: _Exchange | None = getattr(request, "exchange", None)
        if exchange is None:
            if not getattr(request, "admitted", False):
                verdict = self.admit(request)
                if verdict is not None:
                    return verdict.render(request)
            has_body = incoming_has_body(request)
            body = FileBodyProducer(request.content) if has_body else None
            exchange = self.start(request, body)
        route = exchange.route

        d = exchange.outcome()
        d.addTimeout(route.response_timeout, route.reactor, onTimeoutCancel=_timed_out)
        d.addCallback(route.respond, request, exchange)
        d.addErrback(route.failed, request)
        return NOT_DONE_YET

    def respond(
        self, response: IResponse, request: Request, exchange: _Exchange
    ) -> Deferred[None]:
        """
        Relay the instance's response: status, end-to-end headers, and the
        body as it comes.
        """
        request.upstream_latency = (  # type: ignore[attr-defined]
            self.reactor.seconds() - exchange.started
        )
        if response.code == 401 and self.policy.throttle is not None:
            client = getattr(request, "gateway_client", None) or (
                self.policy.client_address(request)
            )
            self.policy.throttle.failed(client, self.name)
        request.setResponseCode(response.code, response.phrase)
        listed = _connection_listed(response.headers)
        dropped = HOP_BY_HOP | listed if listed else HOP_BY_HOP
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower not in dropped:
                if lower == b"location":
                    values = [self.rewrite_location(request, v) for v in values]
                request.responseHeaders.setRawHeaders(name, list(values))
        if (
            isinstance(response.length, int)
            and request.method != b"HEAD"
            and response.code not in (204, 304)
            and response.code >= 200
        ):
            # Twisted's client keeps Content-Length to itself; pass it on so
            # the client gets the body unchunked, as the instance sent it.
            request.responseHeaders.setRawHeaders(
                b"content-length", [b"%d" % response.length]
            )
        done: Deferred[None] = Deferred()
        relay = _BodyRelay(request, self.name, done)
        exchange.relay = relay
        response.deliverBody(relay)
        return done

    def rewrite_location(self, request: Request, location: bytes) -> bytes:
        """
        Keep a redirect inside the route: C{/login} and absolute URLs that
        point at the instance's own address (or at the gateway's host,
        outside the routes) become
        C{https://<public host>/instance/execute/<name>/login}.
        """
        try:
            text = location.decode("ascii")
        except UnicodeDecodeError:
            return location
        parts = urlsplit(text)
        if parts.scheme or parts.netloc:
            if parts.scheme not in ("", "http", "https"):
                return location
            if parts.netloc.lower() not in self._own_authorities(request):
                return location
        elif not text.startswith("/"):
            # Relative references resolve inside the route already.
            return location
        path = parts.path or "/"
        if path.encode("ascii").startswith(_ROUTE_PREFIX):
            # The instance knows its route (it read X-Forwarded-Prefix).
            return location
        rebuilt = _public_base(request) + self.route_prefix(request) + path.encode()
        if parts.query:
            rebuilt += b"?" + parts.query.encode()
        if parts.fragment:
            rebuilt += b"#" + parts.fragment.encode()
        return rebuilt

    def _own_authorities(self, request: Request) -> set[str]:
        hosts = {self.host}
        if self.host in ("0.0.0.0", "", "127.0.0.1"):
            hosts |= {"127.0.0.1", "localhost"}
        if self.host in ("::", "::1"):
            hosts |= {"::1", "localhost"}
        result = {
            f"[{h}]:{self.port}" if ":" in h else f"{h}:{self.port}" for h in hosts
        }
        if self.port == 80:
            result |= {f"[{h}]" if ":" in h else h for h in hosts}
        host = request.requestHeaders.getRawHeaders(b"host")
        if host:
            result.add(host[0].decode("latin-1").lower())
        return {r.lower() for r in result}

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


def _origin_form(target: bytes) -> bytes:
    # The target as Agent sends it after parsing the URL: no fragment, no
    # empty query, no empty parameters. Only a target with one of those
    # needs parsing.
    if b"#" in target or b";" in target or target.endswith(b"?"):
        return URI.fromBytes(b"http://instance" + target).originForm
    return target


def _send_request(connection: Any, outgoing: ClientRequest) -> Deferred[IResponse]:
    sent: Deferred[IResponse] = connection.request(outgoing)
    return sent


def _has_client_certificate(request: Request) -> bool:
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    get = getattr(transport, "getPeerCertificate", None)
    # The handshake verified any certificate against client_ca; one that is
    # present here is trusted.
    return get is not None and get() is not None


def _public_base(request: Request) -> bytes:
    host = request.requestHeaders.getRawHeaders(b"host")
    if host and all(b in _TARGET_BYTES for b in host[0]):
        authority = host[0]
    else:
        address = request.getHost()
        authority = b"%s:%d" % (_url_host(str(address.host)), address.port)
    return (b"https://" if request.isSecure() else b"http://") + authority


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

    def resolve(self, target: bytes) -> InstanceProxyResource | None:
        """
        The route a request target reaches, decided the way the resource
        tree decides it (the URL-decoded third path segment), or C{None}.
        """
        path = target.split(b"?", 1)[0]
        if path.startswith(_ROUTE_PREFIX):
            # The common spelling, with a name that needs no decoding.
            segment = path[len(_ROUTE_PREFIX) :].split(b"/", 1)[0]
            if b"%" not in segment:
                try:
                    return self.lookup(segment.decode("utf-8"))
                except UnicodeDecodeError:
                    return None
        if not path.startswith(b"/"):
            return None
        segments = path[1:].split(b"/", 3)
        if len(segments) < 3:
            return None
        if [unquote_to_bytes(s) for s in segments[:2]] != [b"instance", b"execute"]:
            return None
        try:
            name = unquote_to_bytes(segments[2]).decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self.lookup(name)


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


class GatewayRequest(Request):
    """
    A gateway request, decided when its headers are complete: a body over
    the route's limit is refused with C{413} before it is read, a request
    the route's rules refuse is answered without reaching the instance, and
    an admitted request with a body is sent to the instance at once, its
    body streamed through as it arrives. Bodies are never stored in full.

    This relies on C{gotLength}, C{handleContentChunk} and
    C{requestReceived}, hooks that Twisted documents as not meant for
    users; C{tests/test_gateway_limits.py} pins their behaviour.
    """

    log = Logger()

    gateway_verdict: _Verdict | None = None
    #: The route the request target reached when its headers arrived.
    gateway_route: InstanceProxyResource | None | object = _UNRESOLVED
    exchange: _Exchange | None = None
    admitted = False
    _rejected = False
    _received = 0
    _limit = 0
    _upload: _UploadBody | None = None
    _collecting = False
    _collected: io.BytesIO

    @property
    def gateway_site(self) -> GatewaySite:
        site: GatewaySite = self.channel.site  # type: ignore[attr-defined]
        return site

    def gotLength(self, length: int | None) -> None:
        # Never a temporary file: the body streams, or a short chunked one
        # is collected here.
        self._collected = io.BytesIO()
        self.content = self._collected  # type: ignore[assignment]
        site = self.gateway_site
        channel = self.channel
        command = getattr(channel, "_command", b"GET")
        target = getattr(channel, "_path", b"/")
        self._limit = site.max_body_size
        pending = length is None or length > 0

        if not set(target) <= _TARGET_BYTES:
            self._decide(
                _Verdict(
                    400,
                    "The request path holds bytes that must be percent-encoded.",
                ),
                pending,
            )
            return
        route = site.table.resolve(target)
        self.gateway_route = route
        if route is None:
            if length is not None and length > self._limit:
                self._refuse_too_large(length)
            return

        self._limit = route.settings.max_body_size
        if length is not None and length > self._limit:
            self._refuse_too_large(length)
            return
        # The request line is known now; set what the route reads early
        # (requestReceived sets the same values again).
        self.method, self.uri = command, target
        self.path = target.split(b"?", 1)[0]
        verdict = route.admit(self)
        if verdict is not None:
            self._decide(verdict, pending)
            return
        self.admitted = True
        if length is None:
            self._collecting = True
        elif length > 0:
            self._start_upload(route, length)

    def _start_upload(self, route: InstanceProxyResource, length: int | object) -> None:
        self._upload = _UploadBody(self, length)
        self.exchange = route.start(self, self._upload)

    def _decide(self, verdict: _Verdict, pending: bool) -> None:
        if pending:
            # Reading a body only to refuse the request wastes the client's
            # time and ours: answer now and close the connection.
            self._reject(verdict)
        else:
            self.gateway_verdict = verdict

    def _refuse_too_large(self, size: int) -> None:
        self.log.info(
            "Refused a request body of {size} bytes from {client} for "
            "{target} (limit {limit})",
            size=size,
            client=str(getattr(self.getClientAddress(), "host", "unknown")),
            target=getattr(self.channel, "_path", b"").decode("latin-1"),
            limit=self._limit,
        )
        self._reject(
            _Verdict(
                413,
                f"The request body is larger than this route accepts "
                f"({self._limit} bytes).",
            )
        )

    def _reject(self, verdict: _Verdict) -> None:
        self._rejected = True
        # Without the Expect header Twisted sends no "100 Continue" after
        # our answer (allHeadersReceived checks it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        if self._upload is not None:
            self._upload.fail(Failure(CancelledError("request body refused")))
        if self.exchange is not None:
            self.exchange.abort(Failure(CancelledError("request body refused")))
        channel = self.channel
        channel.transport.write(  # type: ignore[attr-defined,union-attr]
            verdict.raw(
                self.gateway_site.policy.hsts_value if self.isSecure() else None
            )
        )
        channel.loseConnection()  # type: ignore[attr-defined]

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse_too_large(self._received)
            return
        if self._upload is not None:
            self._upload.feed(data)
        elif self._collecting:
            self._collected.write(data)
            if self._collected.tell() > CHUNKED_COLLECT_LIMIT:
                held = self._collected.getvalue()
                self._collected = io.BytesIO()
                self.content = self._collected  # type: ignore[assignment]
                self._collecting = False
                route = self.gateway_site.table.resolve(self.uri)
                if route is None:
                    # The route went away while the body arrived; render
                    # answers from the tree as it is now.
                    return
                self._start_upload(route, UNKNOWN_LENGTH)
                assert self._upload is not None
                self._upload.feed(held)
        # Otherwise nobody reads the body (a 404, a refused request): drop it.

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._rejected:
            return
        if self._upload is not None:
            self._upload.end()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        hsts = self.gateway_site.policy.hsts_value
        if hsts and self.isSecure():
            self.setHeader(b"strict-transport-security", hsts)
        verdict = self.gateway_verdict
        if verdict is None or self.admitted:
            super().process()
            return
        self.site = self.gateway_site
        self.prepath, self.postpath = [], []
        try:
            self.render(_VerdictResource(verdict))
        except BaseException:
            self.processingFailed(Failure())

    def pause_client(self) -> None:
        """
        Stop reading from the client (the instance is not keeping up).
        """
        producer = getattr(self.channel, "_networkProducer", None)
        if producer is not None:
            producer.pauseProducing()

    def resume_client(self) -> None:
        """
        Read from the client again.
        """
        producer = getattr(self.channel, "_networkProducer", None)
        if producer is not None and not self._disconnected:  # type: ignore[attr-defined]
            producer.resumeProducing()


class GatewayChannel(HTTPChannel):
    """
    The gateway's HTTP/1.1 connection: header size and count limits
    answered with C{431}, and a deadline for a request's complete headers
    (a client that sends them a byte at a time gets C{408}).
    """

    log = Logger()

    header_timeout: float = 10.0
    _header_call: Any = None
    _in_request = False

    def connectionMade(self) -> None:
        super().connectionMade()
        # The socket's transport, under TLS if there is TLS.
        transport: Any = getattr(self.transport, "transport", self.transport)
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = CLIENT_WRITE_BUFFER
        self._arm_header_deadline()

    def dataReceived(self, data: bytes) -> None:
        if not self._in_request and not self._handlingRequest:
            self._arm_header_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(
                431, "The request line and headers are too large (a very long URL?)."
            )
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(
            431, "The request line and headers are too large (a very long URL?)."
        )

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, "The request has too many headers.")
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def allHeadersReceived(self) -> None:
        self._in_request = True
        self._disarm_header_deadline()
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._in_request = False
        super().allContentReceived()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._disarm_header_deadline()
        super().connectionLost(reason)

    def _arm_header_deadline(self) -> None:
        if self._header_call is None and self.header_timeout:
            self._header_call = self.callLater(self.header_timeout, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        call, self._header_call = self._header_call, None
        if call is not None and call.active():
            call.cancel()

    def _headers_late(self) -> None:
        self._header_call = None
        self.log.info(
            "Closing the connection from {peer}: no complete request headers "
            "within {timeout} s",
            peer=str(getattr(self.transport.getPeer(), "host", "unknown")),  # type: ignore[union-attr]
            timeout=self.header_timeout,
        )
        self._refuse(408, "The request headers did not arrive in time.")

    def _refuse(self, code: int, text: str) -> None:
        if self.transport is None or getattr(self, "_refused", False):
            return
        self._refused = True
        hsts = getattr(self.site, "policy", None)  # type: ignore[attr-defined]
        value = hsts.hsts_value if hsts is not None and self.isSecure() else None
        self.transport.write(_Verdict(code, text).raw(value))
        self.loseConnection()
        # Ignore whatever else the client sends.
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.setTimeout(None)


class GatewaySite(Site):
    """
    The gateway's site: the route tree, L{GatewayRequest} and
    L{GatewayChannel} with the gateway's limits.

    :ivar table: the routes being served.
    :ivar policy: the gateway-wide rules.
    :ivar max_body_size: the body limit of requests that reach no route.
    """

    def __init__(
        self,
        table: RouteTable,
        policy: GatewayPolicy | None = None,
        *,
        idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        max_header_bytes: int = 16384,
        max_headers: int = 100,
        max_body_size: int = 10 * 1024 * 1024,
        reactor: Any = None,
    ) -> None:
        # The gateway never reads form bodies; parsing them only costs memory.
        super().__init__(
            GatewayRoot(table),
            requestFactory=GatewayRequest,
            parsePOSTFormSubmission=False,
            timeout=idle_timeout,
            reactor=reactor,
        )
        self.displayTracebacks = False
        self.metrics: Any = None
        self.table = table
        self.policy = policy or GatewayPolicy()
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_size = max_body_size

    def configure(self, gateway: GatewayConfig) -> None:
        """
        Follow a reloaded configuration, from the next connection on.
        """
        self.timeOut = gateway.idle_timeout
        self.header_timeout = gateway.header_timeout
        self.max_header_bytes = gateway.max_header_bytes
        self.max_headers = gateway.max_headers
        self.max_body_size = gateway.route.max_body_size

    def log(self, request: Request) -> None:  # type: ignore[override]
        """
        Write the access log line, and count the request in the metrics.
        """
        super().log(request)
        if self.metrics is not None:
            route = getattr(request, "gateway_route", _UNRESOLVED)
            if not isinstance(route, InstanceProxyResource):
                route = self.table.resolve(request.uri or b"")
            self.metrics.observe_request(
                None if route is None else route.name,
                request.code,
                request.sentLength,
                getattr(request, "upstream_latency", None),
            )

    def protocol(self) -> _GenericHTTPChannelProtocol:  # type: ignore[override]
        channel = GatewayChannel()
        channel.header_timeout = self.header_timeout
        channel.totalHeadersSize = self.max_header_bytes
        channel.MAX_LENGTH = self.max_header_bytes
        channel.maxHeaders = self.max_headers
        return _GenericHTTPChannelProtocol(channel)


#: Idle connections kept open to each instance. The pool bounds only idle
#: connections (busy ones are not counted), so it is sized for the number of
#: requests one instance may have in progress at once: a smaller pool
#: closes connections after a burst and opens new ones for the next.
UPSTREAM_KEEP_ALIVE = 128

#: Seconds an idle connection to an instance stays open.
UPSTREAM_IDLE_TIMEOUT = 60


@implementer(IAgentEndpointFactory)
class InstanceEndpoints:
    """
    Connects to instances by their IP address directly: instances listen on
    an IP literal (the configuration requires one), so no name is resolved
    and no thread is used per connection, unlike C{HostnameEndpoint}.

    :ivar connect_timeout: seconds to wait for a connection.
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout

    def endpoint(
        self, host: str, port: int, connect_timeout: float | None = None
    ) -> IStreamClientEndpoint:
        """
        The endpoint of the instance listening on C{host} and C{port}.

        :param host: an IPv4 or IPv6 address (a wildcard address means this
            machine); a name is resolved on every connection.
        :param connect_timeout: seconds to wait for a connection, if not
            C{connect_timeout}.
        """
        timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        address = _url_host(host).strip(b"[]").decode("ascii")
        if isIPAddress(address):
            return TCP4ClientEndpoint(self.reactor, address, port, timeout=timeout)
        if isIPv6Address(address):
            return TCP6ClientEndpoint(self.reactor, address, port, timeout=timeout)
        return HostnameEndpoint(self.reactor, address, port, timeout=timeout)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """
        The endpoint for a request to C{uri} (C{http} only).
        """
        if uri.scheme != b"http":
            raise SchemeNotSupported(
                f"Instances are reached over http, not {uri.scheme!r}."
            )
        return self.endpoint(uri.host.decode("ascii"), uri.port)


def make_agent(reactor: Any, connect_timeout: float) -> Agent:
    """
    The HTTP/1.1 client the gateway reaches instances with, keeping
    connections alive between requests and connecting to the instance's
    IP address without a name lookup.
    """
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = UPSTREAM_KEEP_ALIVE
    pool.cachedConnectionTimeout = UPSTREAM_IDLE_TIMEOUT
    return Agent.usingEndpointFactory(
        reactor, InstanceEndpoints(reactor, connect_timeout), pool=pool
    )


def build_routes(
    instances: Mapping[str, tuple[str, int]],
    agent: Agent,
    reactor: Any,
    state: Callable[[str], InstanceState] | None = None,
    retry_after: Callable[[str], int] | None = None,
    response_timeout: float = 120.0,
    settings: Mapping[str, RouteConfig] | None = None,
    policy: GatewayPolicy | None = None,
) -> dict[str, InstanceProxyResource]:
    """
    A route for each named instance, given as C{(host, port)}.

    :param settings: each instance's route settings by name; an instance
        without any gets the defaults with C{response_timeout}.
    """
    settings = settings or {}
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
            settings=settings.get(name),
            policy=policy,
        )
        for name, (host, port) in instances.items()
    }


def make_gateway_site(
    table: RouteTable,
    gateway: GatewayConfig | None = None,
    reactor: Any = None,
    policy: GatewayPolicy | None = None,
) -> GatewaySite:
    """
    The gateway's site over C{table}, with the limits of C{gateway}.
    """
    gateway = gateway or GatewayConfig()
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return GatewaySite(
        table,
        policy or GatewayPolicy.from_config(gateway, reactor),
        idle_timeout=gateway.idle_timeout,
        header_timeout=gateway.header_timeout,
        max_header_bytes=gateway.max_header_bytes,
        max_headers=gateway.max_headers,
        max_body_size=gateway.route.max_body_size,
        reactor=reactor,
    )
