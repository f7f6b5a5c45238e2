"""
Helpers for tests that run a gateway, instances or a whole host on
127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
    wrapServerTLS,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from xsoar_lr.tls import PemPair, server_options


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tls_client(certificate_path: Path, persistent: bool = False) -> HTTPClient:
    """
    A treq client that trusts exactly the given certificate, so that the
    gateway's TLS is checked for real.
    """
    trust = Certificate.loadPEM(certificate_path.read_bytes())
    agent = Agent(
        reactor,
        contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
        pool=HTTPConnectionPool(reactor, persistent=persistent),
    )
    return HTTPClient(agent)


async def listen_tls(site: Any, pair: PemPair) -> Any:
    """
    Serve C{site} over TLS on a free port of 127.0.0.1.
    """
    endpoint = wrapServerTLS(
        server_options(pair),  # type: ignore[arg-type]
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
    )
    return await endpoint.listen(site)


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "a condition"
) -> None:
    """
    Poll C{predicate} on the reactor until it holds, failing after
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


async def text_of(response: Any) -> str:
    """
    The body of a treq response as text.
    """
    body: str = await treq.text_content(response, "utf-8")
    return body


def later(seconds: float) -> Deferred[None]:
    """
    A Deferred that fires after C{seconds} (for instances that must be slow
    on purpose, never for waiting on a result).
    """
    return deferLater(reactor, seconds, lambda: None)


class _RawClient(Protocol):
    """
    Sends bytes as they are given and collects everything the server sends
    until it closes the connection.
    """

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.received))


def client_tls_options(certificate_path: Path, client: Any = None) -> Any:
    """
    Client TLS options that trust exactly the given certificate (and present
    C{client}, a PrivateCertificate, when given).
    """
    trust = Certificate.loadPEM(certificate_path.read_bytes())
    return optionsForClientTLS("localhost", trustRoot=trust, clientCertificate=client)


async def raw_connect(
    port: int, certificate_path: Path, client: Any = None
) -> tuple[Any, Deferred[bytes]]:
    """
    Open a TLS connection to the gateway; returns the protocol (write with
    C{.transport.write}) and a Deferred of every byte received until close.
    """
    done: Deferred[bytes] = Deferred()
    endpoint = wrapClientTLS(
        client_tls_options(certificate_path, client),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    protocol = await connectProtocol(endpoint, _RawClient(done))
    return protocol, done


async def raw_exchange(
    port: int, certificate_path: Path, data: bytes, timeout: float = 20.0
) -> bytes:
    """
    Send C{data} over TLS and return what the server sent until it closed
    the connection (so send C{Connection: close}).
    """
    protocol, done = await raw_connect(port, certificate_path)
    protocol.transport.write(data)
    done.addTimeout(timeout, reactor, onTimeoutCancel=_abort_on_timeout(protocol))
    return await done


def _abort_on_timeout(protocol: Any) -> Callable[[Any, float], bytes]:
    def abort(result: Any, timeout: float) -> bytes:
        protocol.transport.abortConnection()
        raise AssertionError(f"no close within {timeout} s; got {protocol.received!r}")

    return abort


def status_of(raw: bytes) -> int:
    """
    The status code of the last final response in C{raw} bytes.
    """
    codes = [
        int(line.split(b" ")[1])
        for line in raw.split(b"\r\n")
        if line.startswith(b"HTTP/1.1 ") and not line.startswith(b"HTTP/1.1 100")
    ]
    assert codes, raw[:200]
    return codes[-1]


def log_capture() -> tuple[list[dict[str, Any]], Callable[[], None]]:
    """
    Collect every log event from now on; returns the list and a function
    that stops collecting.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    return events, lambda: globalLogPublisher.removeObserver(events.append)


def failures_in(events: list[dict[str, Any]]) -> list[str]:
    """
    The events that report a failure or an error: tracebacks, "Unhandled
    Error" and anything at error level or above.
    """
    bad = []
    for event in events:
        level = event.get("log_level")
        if (
            "log_failure" in event
            or event.get("isError")
            or (level is not None and level.name in ("error", "critical"))
        ):
            bad.append(formatEvent(event) or repr(event))
    return bad


class GatewayHarness:
    """
    A gateway with the given settings on TLS, in front of instances served
    in this process (well-behaved or not), for tests over real sockets.
    """

    def __init__(
        self, pair: PemPair, gateway: Any = None, client_ca: Any = None
    ) -> None:
        from xsoar_lr.config import GatewayConfig
        from xsoar_lr.gateway import GatewayPolicy, RouteTable, make_agent

        self.pair = pair
        self.gateway = gateway or GatewayConfig()
        self.client_ca = client_ca
        self.agent = make_agent(reactor, connect_timeout=self.gateway.connect_timeout)
        self.policy = GatewayPolicy.from_config(self.gateway, reactor)
        self.table = RouteTable()
        self.instances: dict[str, tuple[str, int]] = {}
        self.settings: dict[str, Any] = {}
        self.ports: list[Any] = []
        self.client = tls_client(pair.certificate_path)
        self.port = 0
        self.base = ""

    async def add(self, name: str, factory: Any, route: Any = None) -> int:
        """
        Serve C{factory} (a Site or any protocol factory) as instance C{name}.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.ports.append(port)
        number: int = port.getHost().port
        self.instances[name] = ("127.0.0.1", number)
        self.settings[name] = route if route is not None else self.gateway.route
        return number

    async def start(self) -> None:
        from xsoar_lr.gateway import build_routes, make_gateway_site
        from xsoar_lr.tls import server_options

        self.table.routes = build_routes(
            self.instances,
            self.agent,
            reactor,
            settings=self.settings,
            policy=self.policy,
        )
        site = make_gateway_site(self.table, self.gateway, reactor, self.policy)
        endpoint = wrapServerTLS(
            server_options(self.pair, self.client_ca),  # type: ignore[arg-type]
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        listening = await endpoint.listen(site)
        self.ports.append(listening)
        self.port = listening.getHost().port
        self.base = f"https://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        for port in self.ports:
            await port.stopListening()
        await self.agent._pool.closeCachedConnections()  # type: ignore[attr-defined]

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.client.request(method, self.base + path, **kwargs)

    async def raw(self, data: bytes, timeout: float = 20.0) -> bytes:
        return await raw_exchange(self.port, self.pair.certificate_path, data, timeout)
