"""
Tests for L{xsoar_lr.gateway}: what a route forwards and how it answers
when the instance does not, over real TLS and real sockets, with the
instances served in this process.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from gateway_support import listen_tls, text_of, tls_client, wait_until
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import UNKNOWN_LENGTH, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from integrations.echo import EchoResource
from xsoar_lr.gateway import RouteTable, build_routes, make_agent, make_gateway_site
from xsoar_lr.supervisor import InstanceState
from xsoar_lr.tls import ensure_self_signed


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pair, _ = ensure_self_signed(tmp_path_factory.mktemp("tls"))
    return pair


class Hanging(Resource):
    """
    Never answers; records when its client goes away.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[Any] = []
        self.started = 0

    def render(self, request: Any) -> int:
        self.started += 1
        request.notifyFinish().addErrback(self.lost.append)
        return NOT_DONE_YET


class Cookies(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(201, b"Made It")
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1", b"b=2"])
        request.responseHeaders.setRawHeaders(b"server", [b"instance/1.0"])
        request.responseHeaders.setRawHeaders(b"keep-alive", [b"timeout=5"])
        request.setHeader(b"content-type", b"text/x-cookies")
        return b"cookies"


class Closer(Protocol):
    """
    Reads a request and closes the connection without a word.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class Gateway:
    """
    A gateway on TLS with in-process instances, and a client that trusts it.
    """

    def __init__(self, pair: Any) -> None:
        self.pair = pair
        self.ports: list[Any] = []
        self.states: dict[str, InstanceState] = {}
        self.agent = make_agent(reactor, connect_timeout=2)
        self.table = RouteTable()
        self.client = tls_client(pair.certificate_path)
        self.hanging = Hanging()

    async def start(self) -> None:
        root = Resource()
        root.putChild(b"cookies", Cookies())
        root.putChild(b"hang", self.hanging)
        instances = {}
        for name in ("echo", "My EDL", "Case"):
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Site(EchoResource(name, 200))
            )
            self.ports.append(port)
            instances[name] = ("127.0.0.1", port.getHost().port)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(root)
        )
        self.ports.append(port)
        instances["web"] = ("127.0.0.1", port.getHost().port)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Closer)
        )
        self.ports.append(port)
        instances["closer"] = ("127.0.0.1", port.getHost().port)
        # A port that is bound but not listening refuses connections, and
        # nothing else can take it while the test holds it.
        self.refusing = socket.socket()
        self.refusing.bind(("127.0.0.1", 0))
        instances["refusing"] = ("127.0.0.1", self.refusing.getsockname()[1])
        instances["starting"] = instances["echo"]
        self.states["starting"] = InstanceState.STARTING

        self.table.routes = build_routes(
            instances,
            self.agent,
            reactor,
            state=lambda name: self.states.get(name, InstanceState.RUNNING),
            retry_after=lambda name: 7,
            response_timeout=1.0,
        )
        gateway = await listen_tls(make_gateway_site(self.table), self.pair)
        self.ports.append(gateway)
        self.base = f"https://127.0.0.1:{gateway.getHost().port}"

    async def stop(self) -> None:
        self.refusing.close()
        for port in self.ports:
            await port.stopListening()
        await self.agent._pool.closeCachedConnections()  # type: ignore[attr-defined]

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.client.request(method, self.base + path, **kwargs)

    async def echo(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.request(method, path, **kwargs)
        assert response.code == 200, await text_of(response)
        described: dict[str, Any] = json.loads(await text_of(response))
        return described


@pytest_twisted.async_yield_fixture
async def gateway(pair: Any) -> AsyncIterator[Gateway]:
    g = Gateway(pair)
    await g.start()
    yield g
    await g.stop()


def headers_named(described: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in described["headers"] if n.lower() == name.lower()]


@pytest_twisted.ensureDeferred
async def test_the_bare_route_reaches_the_instance_root(gateway: Gateway) -> None:
    described = await gateway.echo("GET", "/instance/execute/echo")
    assert (described["instance"], described["uri"]) == ("echo", "/")


@pytest_twisted.ensureDeferred
async def test_the_bare_route_keeps_the_query(gateway: Gateway) -> None:
    described = await gateway.echo("GET", "/instance/execute/echo?n=50&v=JSON")
    assert described["uri"] == "/?n=50&v=JSON"


@pytest_twisted.ensureDeferred
async def test_a_post_to_the_bare_route_is_forwarded_not_redirected(
    gateway: Gateway,
) -> None:
    described = await gateway.echo(
        "POST",
        "/instance/execute/echo",
        data=b'{"type": "message"}',
        headers={"Content-Type": "application/json"},
    )
    assert described["method"] == "POST"
    assert described["uri"] == "/"
    assert described["body"] == '{"type": "message"}'


@pytest.mark.parametrize(
    "below",
    [
        "/",
        "/taxii2/",
        "/a/b%2Fc/d",
        "/x+y:z@w;v~u%7E",
        "/%E2%9C%93?q=a%2Fb&r=%20",
        "/../other",
        "//double",
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_path_below_the_route_arrives_byte_for_byte(
    gateway: Gateway, below: str
) -> None:
    response = await gateway.client.request(
        "GET", (gateway.base + "/instance/execute/echo" + below).encode()
    )
    described = json.loads(await text_of(response))
    assert described["instance"] == "echo"
    assert described["uri"] == below


@pytest_twisted.ensureDeferred
async def test_names_are_url_decoded_and_case_sensitive(gateway: Gateway) -> None:
    described = await gateway.echo("GET", "/instance/execute/My%20EDL/list")
    assert (described["instance"], described["uri"]) == ("My EDL", "/list")
    for path in ("/instance/execute/case", "/instance/execute/CASE"):
        response = await gateway.request("GET", path)
        assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_bodies_and_every_header_value_are_forwarded(gateway: Gateway) -> None:
    headers = Headers(
        {
            b"X-Dup": [b"one", b"two"],
            b"Cookie": [b"c1=1", b"c2=2"],
            b"Authorization": [b"Basic dXNlcjpwYTpzcw=="],
            b"Content-Type": [b"application/octet-stream"],
        }
    )
    described = await gateway.echo(
        "PUT",
        "/instance/execute/echo/upload?x=1",
        data=b"\xff\xfepayload",
        headers=headers,
    )
    assert described["method"] == "PUT"
    assert described["body_base64"] == "//5wYXlsb2Fk"
    assert headers_named(described, "X-Dup") == ["one", "two"]
    assert headers_named(described, "Cookie") == ["c1=1", "c2=2"]
    assert headers_named(described, "Authorization") == ["Basic dXNlcjpwYTpzcw=="]
    assert headers_named(described, "Content-Length") == ["9"]


@implementer(IBodyProducer)
class _UnknownLength:
    """
    A request body producer of unknown length, so the client sends it chunked.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for chunk in self.chunks:
            consumer.write(chunk)
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_a_chunked_request_body_reaches_the_instance_framed_by_length(
    gateway: Gateway,
) -> None:
    described = await gateway.echo(
        "POST",
        "/instance/execute/echo",
        data=_UnknownLength([b"hello ", b"chunked ", b"world"]),
    )
    assert described["body"] == "hello chunked world"
    assert headers_named(described, "Content-Length") == ["19"]
    assert headers_named(described, "Transfer-Encoding") == []


@pytest_twisted.ensureDeferred
async def test_the_instance_learns_where_the_request_came_from(
    gateway: Gateway,
) -> None:
    described = await gateway.echo(
        "GET",
        "/instance/execute/My%20EDL/taxii2/?a=1",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Request-URI": "/forged",
            "Connection": "X-Private",
            "X-Private": "hop",
            "TE": "trailers",
            "Upgrade": "websocket",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        },
    )
    port = gateway.base.rsplit(":", 1)[1]
    assert headers_named(described, "X-Forwarded-For") == ["127.0.0.1"]
    assert headers_named(described, "X-Forwarded-Proto") == ["https"]
    assert headers_named(described, "X-Forwarded-Host") == [f"127.0.0.1:{port}"]
    assert headers_named(described, "X-Forwarded-Prefix") == [
        "/instance/execute/My%20EDL"
    ]
    assert headers_named(described, "X-Request-URI") == [
        "/instance/execute/My%20EDL/taxii2/?a=1"
    ]
    assert headers_named(described, "Host") == [f"127.0.0.1:{port}"]
    for hop in ("X-Private", "TE", "Upgrade", "Proxy-Authorization", "Connection"):
        assert headers_named(described, hop) == [], hop


@pytest_twisted.ensureDeferred
async def test_the_instances_response_is_relayed_with_its_headers(
    gateway: Gateway,
) -> None:
    response = await gateway.request("GET", "/instance/execute/web/cookies")
    assert (response.code, response.phrase) == (201, b"Made It")
    assert response.headers.getRawHeaders("set-cookie") == ["a=1", "b=2"]
    assert response.headers.getRawHeaders("server") == ["instance/1.0"]
    assert response.headers.getRawHeaders("content-type") == ["text/x-cookies"]
    assert response.headers.getRawHeaders("keep-alive") is None
    assert await text_of(response) == "cookies"


@pytest_twisted.ensureDeferred
async def test_head_answers_with_headers_only(gateway: Gateway) -> None:
    response = await gateway.request("HEAD", "/instance/execute/web/cookies")
    assert response.code == 201
    assert await text_of(response) == ""


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/instance",
        "/instance/execute",
        "/instance/execute/",
        "/instance/execute/nobody",
        "/instance/execute/%FF",
        "/instance/execute/ech",
        "/instance/other/echo",
    ],
)
@pytest_twisted.ensureDeferred
async def test_paths_that_are_not_routes_get_a_404_that_lists_nothing(
    gateway: Gateway, path: str
) -> None:
    for method in ("GET", "POST"):
        response = await gateway.request(method, path)
        body = await text_of(response)
        assert response.code == 404
        assert response.headers.getRawHeaders("content-type") == [
            "text/plain; charset=utf-8"
        ]
        assert body == "No instance is routed at this path.\n"


@pytest_twisted.ensureDeferred
async def test_an_instance_that_refuses_the_connection_is_a_502(
    gateway: Gateway,
) -> None:
    response = await gateway.request("GET", "/instance/execute/refusing")
    assert response.code == 502
    assert await text_of(response) == "The instance refused the connection.\n"


@pytest_twisted.ensureDeferred
async def test_an_instance_that_closes_without_answering_is_a_502(
    gateway: Gateway,
) -> None:
    response = await gateway.request("GET", "/instance/execute/closer")
    assert response.code == 502
    assert "closed the connection" in await text_of(response)


@pytest_twisted.ensureDeferred
async def test_a_silent_instance_is_a_504_after_the_response_timeout(
    gateway: Gateway,
) -> None:
    response = await gateway.request("GET", "/instance/execute/web/hang")
    assert response.code == 504
    assert await text_of(response) == "The instance did not answer in time.\n"
    await wait_until(lambda: len(gateway.hanging.lost) == 1, what="the abort")


@pytest_twisted.ensureDeferred
async def test_a_starting_instance_is_a_503_with_retry_after(gateway: Gateway) -> None:
    response = await gateway.request("POST", "/instance/execute/starting", data=b"x")
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["7"]
    assert await text_of(response) == "The instance is starting; try again shortly.\n"


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_aborts_the_instances_request(
    gateway: Gateway,
) -> None:
    d = ensureDeferred(gateway.request("GET", "/instance/execute/web/hang"))
    await wait_until(lambda: gateway.hanging.started == 1, what="the request")
    d.cancel()
    await wait_until(lambda: len(gateway.hanging.lost) == 1, what="the abort")
    # treq reports the cancelled request as never answered.
    with pytest.raises(ResponseNeverReceived):
        await d
