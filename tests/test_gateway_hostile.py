"""
Tests of the gateway against instances and clients that misbehave on
purpose, over real TLS and sockets: back-pressure in both directions with
large bodies, clients that go away mid-request, instances that send
garbage, close early or answer before reading the request body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from gateway_support import (
    GatewayHarness,
    failures_in,
    log_capture,
    raw_connect,
    status_of,
    text_of,
    wait_until,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from integrations.echo import EchoResource
from xsoar_lr.config import GatewayConfig, RouteConfig
from xsoar_lr.tls import ensure_self_signed

MB = 1024 * 1024
#: How much may be in flight between the two ends of a large transfer
#: (kernel socket buffers on both sides of the gateway, TLS records and
#: the gateway's own high-water marks); the bodies are many times larger.
IN_FLIGHT_BOUND = 16 * MB


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pair, _ = ensure_self_signed(tmp_path_factory.mktemp("tls"))
    return pair


class _Pump:
    """
    A push producer that writes C{total} bytes in 64 KiB pieces, as fast as
    its consumer lets it.
    """

    piece = b"0123456789abcdef" * 4096

    def __init__(self, consumer: Any, total: int, done: Deferred[None]) -> None:
        self.consumer = consumer
        self.total = total
        self.sent = 0
        self.paused = False
        self.stopped = False
        self.done = done
        self.paused_polls = 0
        self._call: Any = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._call is None:
            self._call = reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _pump(self) -> None:
        self._call = None
        for _ in range(32):
            if self.paused or self.stopped or self.sent >= self.total:
                break
            piece = self.piece[: self.total - self.sent]
            self.sent += len(piece)
            self.consumer.write(piece)
        if self.stopped:
            return
        if self.sent >= self.total:
            if not self.done.called:
                self.done.callback(None)
        elif not self.paused:
            self._call = reactor.callLater(0, self._pump)


class Flood(Resource):
    """
    Sends a large body as fast as the gateway takes it.
    """

    isLeaf = True

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.pump: _Pump | None = None
        self.lost: list[Any] = []

    def render_GET(self, request: Any) -> int:
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"content-length", b"%d" % self.total)
        done: Deferred[None] = Deferred()
        self.pump = _Pump(request, self.total, done)
        request.registerProducer(self.pump, True)
        request.notifyFinish().addErrback(self.lost.append)

        def finished(_: object) -> None:
            if not request._disconnected:
                request.unregisterProducer()
                request.finish()

        done.addCallback(finished)
        self.pump.resumeProducing()
        return NOT_DONE_YET


@implementer(IBodyProducer)
class Upload:
    """
    A request body of C{length} bytes, produced as the connection takes it.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.pump: _Pump | None = None

    def startProducing(self, consumer: Any) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self.pump = _Pump(consumer, self.length, done)
        self.pump.resumeProducing()
        return done

    def pauseProducing(self) -> None:
        assert self.pump is not None
        self.pump.pauseProducing()

    def resumeProducing(self) -> None:
        assert self.pump is not None
        self.pump.resumeProducing()

    def stopProducing(self) -> None:
        if self.pump is not None:
            self.pump.stopProducing()


class SlowReader(Protocol):
    """
    An instance that reads a request's headers, then stops reading until
    told to go on; it answers with the size and SHA-256 of the body.
    """

    instances: list[SlowReader] = []

    def connectionMade(self) -> None:
        self.buffer = b""
        self.length: int | None = None
        self.received = 0
        self.digest = hashlib.sha256()
        self.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.length is None:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, data = self.buffer.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    self.length = int(line.split(b":")[1])
            assert self.length is not None
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.received += len(data)
        self.digest.update(data)
        if self.received >= self.length:
            body = b"%d %s" % (self.received, self.digest.hexdigest().encode())
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    def go_on(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]


class Garbage(Protocol):
    """
    Answers every request with something that is not HTTP.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class HalfBody(Protocol):
    """
    Promises 1000 bytes, sends 10 and closes.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"
        )
        self.transport.loseConnection()  # type: ignore[union-attr]


class EarlyNo(Protocol):
    """
    Answers 401 as soon as the request headers are in, without reading the
    body, and closes.
    """

    def dataReceived(self, data: bytes) -> None:
        if getattr(self, "answered", False):
            return
        self.answered = True
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nno"
        )
        self.transport.loseConnection()  # type: ignore[union-attr]


class Trickle(Resource):
    """
    Sends the first part of a response, then holds the rest.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[Any] = []
        self.started = 0

    def render_GET(self, request: Any) -> int:
        self.started += 1
        request.notifyFinish().addErrback(self.lost.append)
        request.write(b"first part " * 100)
        return NOT_DONE_YET


class Hostile(GatewayHarness):
    flood: Flood
    trickle: Trickle


@pytest_twisted.async_yield_fixture
async def gw(pair: Any) -> AsyncIterator[Hostile]:
    SlowReader.instances = []
    big = RouteConfig(max_body_size=200 * MB)
    g = Hostile(pair, GatewayConfig(route=RouteConfig(max_body_size=200 * MB)))
    g.flood = Flood(100 * MB)
    await g.add("flood", Site(g.flood))
    g.trickle = Trickle()
    await g.add("trickle", Site(g.trickle))
    await g.add("slowreader", Factory.forProtocol(SlowReader), big)
    await g.add("echo", Site(EchoResource("echo", 200)), big)
    await g.add("garbage", Factory.forProtocol(Garbage))
    await g.add("halfbody", Factory.forProtocol(HalfBody))
    await g.add("early", Factory.forProtocol(EarlyNo), big)
    await g.start()
    yield g
    await g.stop()


class Reader(Protocol):
    """
    A client that counts the bytes it gets and can stop reading.
    """

    def __init__(self) -> None:
        self.received = 0
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


async def held_steady(pump: _Pump, polls: int = 25) -> None:
    """
    Wait until C{pump} has been paused for C{polls} polls in a row (its
    consumer is full), or has sent everything (nothing held it back).
    """

    def steady() -> bool:
        pump.paused_polls = pump.paused_polls + 1 if pump.paused else 0
        return pump.paused_polls >= polls or pump.sent >= pump.total

    await wait_until(steady, timeout=60, what="the transfer to stall")


@pytest_twisted.ensureDeferred
async def test_a_slow_client_of_a_100_mb_body_holds_the_instance_back(
    gw: Hostile,
) -> None:
    from gateway_support import client_tls_options
    from twisted.internet.endpoints import (
        TCP4ClientEndpoint,
        connectProtocol,
        wrapClientTLS,
    )

    reader = Reader()
    endpoint = wrapClientTLS(
        client_tls_options(gw.pair.certificate_path),
        TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port),
    )
    await connectProtocol(endpoint, reader)
    reader.transport.write(  # type: ignore[union-attr]
        b"GET /instance/execute/flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    await wait_until(lambda: reader.received > MB, what="the first megabyte")
    reader.transport.pauseProducing()  # type: ignore[union-attr]
    assert gw.flood.pump is not None
    await held_steady(gw.flood.pump)

    in_flight = gw.flood.pump.sent - reader.received
    print(
        f"\nslow client: instance sent {gw.flood.pump.sent} bytes, "
        f"client read {reader.received}, in flight {in_flight}"
    )
    assert gw.flood.pump.sent < 100 * MB
    assert in_flight < IN_FLIGHT_BOUND

    reader.transport.resumeProducing()  # type: ignore[union-attr]
    await reader.done
    assert reader.received > 100 * MB  # the body and the response head
    assert gw.flood.lost == []


@pytest_twisted.ensureDeferred
async def test_a_large_upload_streams_to_a_slow_instance(gw: Hostile) -> None:
    body = Upload(50 * MB)
    answer = ensureDeferred(
        gw.request("POST", "/instance/execute/slowreader", data=body)
    )
    await wait_until(lambda: SlowReader.instances and body.pump, what="the upload")
    instance = SlowReader.instances[0]
    assert body.pump is not None
    await held_steady(body.pump)

    in_flight = body.pump.sent - instance.received
    print(
        f"\nslow instance: client sent {body.pump.sent} bytes, "
        f"instance read {instance.received}, in flight {in_flight}"
    )
    assert body.pump.sent < 50 * MB
    assert in_flight < IN_FLIGHT_BOUND

    instance.go_on()
    response = await answer
    assert response.code == 200
    expected = hashlib.sha256()
    for _ in range(50 * MB // len(_Pump.piece)):
        expected.update(_Pump.piece)
    assert await text_of(response) == f"{50 * MB} {expected.hexdigest()}"


@pytest_twisted.ensureDeferred
async def test_a_large_chunked_upload_arrives_chunked_and_whole(gw: Hostile) -> None:
    from test_gateway import _UnknownLength

    chunks = [bytes([65 + i % 26]) * 10000 for i in range(30)]
    response = await gw.request(
        "POST", "/instance/execute/echo", data=_UnknownLength(chunks)
    )
    described = json.loads(await text_of(response))
    assert described["body"] == b"".join(chunks).decode()
    names = {n.lower(): v for n, v in described["headers"]}
    assert names.get("transfer-encoding") == "chunked"
    assert "content-length" not in names


@pytest_twisted.ensureDeferred
async def test_a_client_gone_mid_response_aborts_the_instance_quietly(
    gw: Hostile,
) -> None:
    events, stop = log_capture()
    try:
        protocol, done = await raw_connect(gw.port, gw.pair.certificate_path)
        protocol.transport.write(
            b"GET /instance/execute/trickle HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await wait_until(lambda: b"first part" in protocol.received, what="a part")
        protocol.transport.abortConnection()
        await done
        await wait_until(lambda: len(gw.trickle.lost) == 1, what="the abort")
    finally:
        stop()
    assert failures_in(events) == []


@pytest_twisted.ensureDeferred
async def test_a_client_gone_mid_upload_aborts_the_instance_quietly(
    gw: Hostile,
) -> None:
    events, stop = log_capture()
    try:
        protocol, done = await raw_connect(gw.port, gw.pair.certificate_path)
        protocol.transport.write(
            b"POST /instance/execute/slowreader HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000
        )
        await wait_until(lambda: SlowReader.instances, what="the instance")
        instance = SlowReader.instances[0]
        protocol.transport.abortConnection()
        await done
        instance.go_on()
        await wait_until(
            lambda: instance.transport is None or instance.transport.disconnected,  # type: ignore[attr-defined]
            what="the instance's connection to close",
        )
    finally:
        stop()
    assert failures_in(events) == []


@pytest_twisted.ensureDeferred
async def test_an_instance_that_answers_garbage_is_a_502(gw: Hostile) -> None:
    response = await gw.request("GET", "/instance/execute/garbage")
    assert response.code == 502
    await text_of(response)


@pytest_twisted.ensureDeferred
async def test_an_instance_that_breaks_off_its_body_cuts_the_client_off(
    gw: Hostile,
) -> None:
    protocol, done = await raw_connect(gw.port, gw.pair.certificate_path)
    protocol.transport.write(
        b"GET /instance/execute/halfbody HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    raw = await done
    head, _, body = raw.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert b"Content-Length: 1000" in head
    # The client sees fewer bytes than promised: a truncated transfer, never
    # a complete-looking short answer.
    assert len(body) < 1000


@pytest_twisted.ensureDeferred
async def test_an_instance_that_answers_before_reading_the_body_is_relayed(
    gw: Hostile,
) -> None:
    events, stop = log_capture()
    try:
        response = await gw.request(
            "POST", "/instance/execute/early", data=Upload(3 * MB)
        )
        assert response.code == 401
        assert await text_of(response) == "no"
    finally:
        stop()
    assert failures_in(events) == []
