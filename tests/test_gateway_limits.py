"""
Tests for the gateway's limits and rules, over real TLS and sockets: body
size (413 before the body is read), header size and count (431), slow
headers (408), concurrent requests (503), path escapes, X-Forwarded-For
with trusted proxies, Location rewriting, allow lists (403), HSTS and the
authentication failure throttle (429).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import netaddr
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
from twisted.internet.defer import ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from integrations.echo import EchoResource
from xsoar_lr.config import GatewayConfig, RouteConfig
from xsoar_lr.tls import ensure_self_signed


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pair, _ = ensure_self_signed(tmp_path_factory.mktemp("tls"))
    return pair


class Hanging(Resource):
    """
    Never answers until told to; counts the requests it holds.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def render(self, request: Any) -> int:
        self.held.append(request)
        request.notifyFinish().addErrback(lambda f: None)
        return NOT_DONE_YET

    def release(self) -> None:
        for request in self.held:
            if not request._disconnected:
                request.write(b"done")
                request.finish()
        self.held = []


class Redirects(Resource):
    """
    Redirects in the ways instances do.
    """

    isLeaf = True
    port = 0

    def render(self, request: Any) -> bytes:
        targets = {
            b"/relative": b"/login",
            b"/own": b"http://127.0.0.1:%d/next?x=1" % self.port,
            b"/own-localhost": b"http://localhost:%d/" % self.port,
            b"/elsewhere": b"https://example.org/login",
            b"/routed": b"/instance/execute/web/already",
            b"/sibling": b"login",
        }
        request.setResponseCode(302)
        request.setHeader(b"location", targets[request.path])
        return b""


class Unauthorized(Resource):
    """
    Refuses every request as unauthenticated.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Basic realm="x"')
        return b"no"


LIMITS = GatewayConfig(
    route=RouteConfig(max_body_size=1000, max_concurrent_requests=50),
    header_timeout=0.5,
    idle_timeout=30,
    max_header_bytes=2048,
    max_headers=20,
    hsts=31536000,
    trusted_proxies=(netaddr.IPNetwork("127.0.0.1/32"),),
    auth_failure_limit=3,
    auth_failure_window=60,
    auth_failure_block=120,
)


class Limited(GatewayHarness):
    hanging: Hanging
    redirects: Redirects


@pytest_twisted.async_yield_fixture
async def gw(pair: Any) -> AsyncIterator[Limited]:
    g = Limited(pair, LIMITS)
    await g.add("echo", Site(EchoResource("echo", 200)))
    await g.add("big", Site(EchoResource("big", 200)), RouteConfig(max_body_size=5000))
    g.hanging = Hanging()
    await g.add("slow", Site(g.hanging), RouteConfig(max_concurrent_requests=2))
    g.redirects = Redirects()
    g.redirects.port = await g.add("web", Site(g.redirects))
    await g.add("auth", Site(Unauthorized()))
    await g.add("auth2", Site(Unauthorized()))
    await g.add(
        "private",
        Site(EchoResource("private", 200)),
        RouteConfig(allow=(netaddr.IPNetwork("10.0.0.0/8"),)),
    )
    await g.add(
        "local",
        Site(EchoResource("local", 200)),
        RouteConfig(allow=(netaddr.IPNetwork("127.0.0.0/8"),)),
    )
    await g.start()
    yield g
    g.hanging.release()
    await g.stop()


def head(path: str, *extra: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    return ("\r\n".join(lines + list(extra)) + "\r\n\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    gw: Limited,
) -> None:
    # Only the headers are sent: an answer proves the body was not awaited.
    raw = await gw.raw(head("/instance/execute/echo/up", "Content-Length: 1001"))
    assert status_of(raw) == 413
    assert b"larger than this route accepts (1000 bytes)" in raw
    assert b"Strict-Transport-Security: max-age=31536000" in raw


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_over_the_limit_gets_413_and_no_continue(
    gw: Limited,
) -> None:
    raw = await gw.raw(
        head("/instance/execute/echo", "Content-Length: 50000", "Expect: 100-continue")
    )
    assert status_of(raw) == 413
    assert b"100 Continue" not in raw


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_within_the_limit_continues(gw: Limited) -> None:
    protocol, done = await raw_connect(gw.port, gw.pair.certificate_path)
    protocol.transport.write(
        head("/instance/execute/echo", "Content-Length: 5", "Expect: 100-continue")
    )
    await wait_until(lambda: b"100 Continue" in protocol.received, what="100")
    protocol.transport.write(b"hello")
    raw = await done
    assert status_of(raw) == 200
    assert json.loads(raw.split(b"\r\n\r\n", 2)[2])["body"] == "hello"


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_limit_is_refused(gw: Limited) -> None:
    chunk = b"x" * 600
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    raw = await gw.raw(
        head("/instance/execute/echo", "Transfer-Encoding: chunked") + body
    )
    assert status_of(raw) == 413


@pytest_twisted.ensureDeferred
async def test_the_body_limit_is_per_instance(gw: Limited) -> None:
    response = await gw.request("POST", "/instance/execute/big", data=b"y" * 4000)
    assert response.code == 200
    assert json.loads(await text_of(response))["body"] == "y" * 4000
    raw = await gw.raw(head("/instance/execute/big", "Content-Length: 5001"))
    assert status_of(raw) == 413


@pytest_twisted.ensureDeferred
async def test_bodies_to_paths_that_are_not_routes_are_limited_too(gw: Limited) -> None:
    raw = await gw.raw(head("/elsewhere", "Content-Length: 1001"))
    assert status_of(raw) == 413


@pytest_twisted.ensureDeferred
async def test_headers_too_large_or_too_many_get_431(gw: Limited) -> None:
    raw = await gw.raw(
        head("/instance/execute/echo", "X-Big: " + "a" * 3000, method="GET")
    )
    assert status_of(raw) == 431
    many = [f"X-H{i}: v" for i in range(25)]
    raw = await gw.raw(head("/instance/execute/echo", *many, method="GET"))
    assert status_of(raw) == 431
    within = [f"X-H{i}: v" for i in range(10)]
    raw = await gw.raw(head("/instance/execute/echo", *within, method="GET"))
    assert status_of(raw) == 200


@pytest_twisted.ensureDeferred
async def test_a_client_that_sends_its_headers_slowly_is_cut_off(gw: Limited) -> None:
    protocol, done = await raw_connect(gw.port, gw.pair.certificate_path)
    started = reactor.seconds()
    protocol.transport.write(b"GET /instance/execute/echo HTTP/1.1\r\nHost: x\r\n")
    raw = await done
    assert status_of(raw) == 408
    assert 0.4 < reactor.seconds() - started < 5


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_cut_off_by_the_header_deadline(
    gw: Limited,
) -> None:
    protocol, done = await raw_connect(gw.port, gw.pair.certificate_path)
    raw = await done
    assert status_of(raw) == 408


@pytest_twisted.ensureDeferred
async def test_requests_past_the_concurrency_cap_get_503(gw: Limited) -> None:
    first = ensureDeferred(gw.request("GET", "/instance/execute/slow/1"))
    second = ensureDeferred(gw.request("GET", "/instance/execute/slow/2"))
    await wait_until(lambda: len(gw.hanging.held) == 2, what="two held requests")
    third = await gw.request("GET", "/instance/execute/slow/3")
    assert third.code == 503
    assert third.headers.getRawHeaders("retry-after") == ["1"]
    assert len(gw.hanging.held) == 2
    gw.hanging.release()
    assert (await first).code == 200
    assert (await second).code == 200
    again = ensureDeferred(gw.request("GET", "/instance/execute/slow/4"))
    await wait_until(lambda: len(gw.hanging.held) == 1, what="the slot to free")
    gw.hanging.release()
    assert (await again).code == 200


@pytest.mark.parametrize(
    "target, reaches",
    [
        ("/instance/execute/echo/../web/", ("echo", "/../web/")),
        ("/instance/execute/echo/%2e%2e/%2E%2E/web", ("echo", "/%2e%2e/%2E%2E/web")),
        ("/instance/execute/echo//web", ("echo", "//web")),
        ("/instance/execute/echo/%00/x", ("echo", "/%00/x")),
        ("/instance/execute/%2e%2e/web/", None),
        ("/instance/execute/../execute/web/", None),
        ("/instance/execute/echo%2F..%2Fweb/", None),
        ("/instance/execute/echo%00/", None),
        ("/instance//execute/web/", None),
        ("//instance/execute/web/", None),
        ("/instance/execute//web/", None),
        ("/instance/%65xecute/echo/", ("echo", "/")),
        ("http://127.0.0.1/instance/execute/web/", None),
        ("*", None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_paths_never_escape_their_route(
    gw: Limited, target: str, reaches: tuple[str, str] | None
) -> None:
    raw = await gw.raw(head(target, method="GET"))
    code = status_of(raw)
    if reaches is None:
        assert code in (400, 404, 405), raw
        assert b'"instance"' not in raw
    else:
        assert code == 200, raw
        described = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert (described["instance"], described["uri"]) == reaches


@pytest_twisted.ensureDeferred
async def test_bytes_that_must_be_encoded_are_a_400_not_a_502(gw: Limited) -> None:
    raw = await gw.raw(head("/instance/execute/echo/\x01\xff", method="GET"))
    assert status_of(raw) == 400


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_extended_for_a_trusted_proxy(gw: Limited) -> None:
    # The test client connects from 127.0.0.1, a trusted proxy here.
    response = await gw.request(
        "GET", "/instance/execute/echo", headers={"X-Forwarded-For": "192.0.2.9"}
    )
    described = json.loads(await text_of(response))
    values = [v for n, v in described["headers"] if n.lower() == "x-forwarded-for"]
    assert values == ["192.0.2.9, 127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_the_allow_list_uses_the_client_behind_a_trusted_proxy(
    gw: Limited,
) -> None:
    events, stop = log_capture()
    try:
        ok = await gw.request(
            "GET", "/instance/execute/private", headers={"X-Forwarded-For": "10.1.2.3"}
        )
        assert ok.code == 200
        denied = await gw.request(
            "GET", "/instance/execute/private", headers={"X-Forwarded-For": "192.0.2.9"}
        )
        assert denied.code == 403
        assert await text_of(denied) == "Your address may not use this route.\n"
        direct = await gw.request("GET", "/instance/execute/private")
        assert direct.code == 403
        local = await gw.request("GET", "/instance/execute/local")
        assert local.code == 200
    finally:
        stop()
    denials = [e for e in events if e.get("instance") == "private" and "client" in e]
    assert [e["client"] for e in denials] == ["192.0.2.9", "127.0.0.1"]


@pytest.mark.parametrize(
    "path, location",
    [
        ("/relative", "https://{host}/instance/execute/web/login"),
        ("/own", "https://{host}/instance/execute/web/next?x=1"),
        ("/own-localhost", "https://{host}/instance/execute/web/"),
        ("/elsewhere", "https://example.org/login"),
        ("/routed", "/instance/execute/web/already"),
        ("/sibling", "login"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_redirects_stay_inside_the_route(
    gw: Limited, path: str, location: str
) -> None:
    from treq.client import HTTPClient

    client = HTTPClient(gw.client._agent)
    response = await client.get(
        gw.base + "/instance/execute/web" + path, allow_redirects=False
    )
    assert response.code == 302
    host = f"127.0.0.1:{gw.port}"
    assert response.headers.getRawHeaders("location") == [location.format(host=host)]


@pytest_twisted.ensureDeferred
async def test_every_gateway_answer_carries_hsts(gw: Limited) -> None:
    for path in ("/instance/execute/echo", "/nowhere"):
        response = await gw.request("GET", path)
        await text_of(response)
        assert response.headers.getRawHeaders("strict-transport-security") == [
            "max-age=31536000"
        ]


@pytest_twisted.ensureDeferred
async def test_repeated_401s_are_throttled_per_address_and_instance(
    gw: Limited,
) -> None:
    events, stop = log_capture()
    try:
        for _ in range(3):
            response = await gw.request("GET", "/instance/execute/auth")
            assert response.code == 401
            await text_of(response)
        blocked = await gw.request("GET", "/instance/execute/auth")
        assert (blocked.code, blocked.phrase) == (429, b"Too Many Requests")
        assert 100 < int(blocked.headers.getRawHeaders("retry-after")[0]) <= 120
        # Another address is not blocked.
        other = await gw.request(
            "GET", "/instance/execute/auth", headers={"X-Forwarded-For": "192.0.2.50"}
        )
        assert other.code == 401
        # Nor is the same address at another instance.
        response = await gw.request("GET", "/instance/execute/auth2")
        assert response.code == 401
    finally:
        stop()
    assert any(e.get("client") == "127.0.0.1" and e.get("count") == 3 for e in events)
    assert failures_in(events) == []
