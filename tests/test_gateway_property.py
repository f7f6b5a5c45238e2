"""
A property test of the gateway against hostile requests: random paths
(with dot segments, encoded dots, empty segments, NULs and arbitrary
bytes), headers and bodies are sent over real TLS to a running gateway with
two instances. The gateway never answers with a 5xx of its own, never logs
a traceback, and never lets one instance's answer out on another route.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
import pytest_twisted
from gateway_support import GatewayHarness, failures_in, log_capture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.web.server import Site

from integrations.echo import EchoResource
from xsoar_lr.config import GatewayConfig, RouteConfig
from xsoar_lr.tls import ensure_self_signed


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GatewayHarness]:
    pair, _ = ensure_self_signed(tmp_path_factory.mktemp("tls"))
    g = GatewayHarness(
        pair,
        GatewayConfig(
            route=RouteConfig(max_body_size=4096),
            max_headers=30,
            max_header_bytes=4096,
            auth_failure_limit=0,
        ),
    )
    await g.add("alpha", Site(EchoResource("alpha", 200)))
    await g.add("beta", Site(EchoResource("beta", 200)))
    await g.start()
    yield g
    await g.stop()


segment = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "%2e%2e",
            "%2E%2E",
            "%2e",
            "",
            "%00",
            "%2F",
            "%2f..",
            "alpha",
            "beta",
            "instance",
            "execute",
            "%61lpha",
            "a%00b",
            "~",
            ";x",
            "%ZZ",
            "%",
        ]
    ),
    st.text(
        alphabet=st.characters(
            min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/"
        ),
        max_size=8,
    ),
    st.binary(max_size=4).map(lambda b: "".join(f"%{x:02X}" for x in b)),
)

header_name = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12
)
header_value = st.binary(max_size=40).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip()
)


@st.composite
def requests(draw: Any) -> tuple[str | None, bytes]:
    """
    A raw request and the instance it names in its route, if any.
    """
    route = draw(st.sampled_from(["alpha", "beta", None]))
    below = draw(st.lists(segment, max_size=5))
    if route is None:
        path = "/" + "/".join(below)
        if draw(st.booleans()):
            path = "/instance/execute/" + "/".join(below)
    else:
        path = f"/instance/execute/{route}/" + "/".join(below)
    if draw(st.booleans()):
        path += "?" + draw(st.text(alphabet="abc=&%2e.", max_size=10))
    if draw(st.integers(0, 9)) == 0:
        path += draw(st.sampled_from(["\x01", "\xff", "\x7f"]))
    method = draw(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
    )
    body = draw(st.binary(max_size=300))
    headers = [b"Host: localhost", b"Connection: close"]
    for name, value in draw(st.lists(st.tuples(header_name, header_value), max_size=6)):
        headers.append(name.encode() + b": " + value)
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked" and body:
        headers.append(b"Transfer-Encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        payload = b""
    line = f"{method} {path} HTTP/1.1".encode("latin-1")
    return route, b"\r\n".join([line, *headers]) + b"\r\n\r\n" + payload


def route_of(target: bytes) -> tuple[str | None, bytes]:
    """
    The instance a request target names (the URL-decoded third segment
    after C{/instance/execute}) and what is below it, worked out
    independently of the gateway's code.
    """
    path, mark, query = target.partition(b"?")
    pieces = path.split(b"/")
    if (
        len(pieces) < 4
        or pieces[0] != b""
        or [unquote_to_bytes(p) for p in pieces[1:3]] != [b"instance", b"execute"]
    ):
        return None, b""
    try:
        name = unquote_to_bytes(pieces[3]).decode("utf-8")
    except UnicodeDecodeError:
        return None, b""
    below = b"/" + b"/".join(pieces[4:])
    # An empty query ("?" alone) means the same as none; Twisted's client
    # drops it.
    return name, below + (b"?" + query if query else b"")


@pytest_twisted.ensureDeferred
async def test_hostile_requests_get_a_proper_answer_from_the_right_place(
    gateway: GatewayHarness,
) -> None:
    # Hypothesis drives the examples from a worker thread; each request runs
    # on the reactor, which keeps serving the gateway meanwhile.
    events, stop = log_capture()
    try:
        await threads.deferToThread(_check_examples, gateway, events)
    finally:
        stop()


def _check_examples(gateway: GatewayHarness, events: list[dict[str, Any]]) -> None:
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(case=requests())
    def check(case: tuple[str | None, bytes]) -> None:
        route, data = case
        del events[:]
        raw = threads.blockingCallFromThread(
            reactor, lambda: ensureDeferred(gateway.raw(data, timeout=20))
        )
        assert failures_in(list(events)) == [], data
        assert raw, f"no answer to {data!r}"
        status_line = raw.split(b"\r\n", 1)[0]
        code = int(status_line.split(b" ")[1])
        assert code < 500, (data, raw[:300])
        head, _, body = raw.partition(b"\r\n\r\n")
        if b'"instance"' in body:
            described = json.loads(body)
            # An instance's answer only ever comes back on its own route,
            # and the instance sees exactly the path below the route.
            target = data.split(b" ", 2)[1]
            named, below = route_of(target)
            assert described["instance"] == named, (data, described)
            assert described["uri"].encode("latin-1") == below, (data, described)

    check()
