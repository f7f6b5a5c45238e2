"""
Helpers for the tests of the list integrations (EDL and Export Indicators):
a real indicator store in a temporary folder, an instance context, and a
real web site on 127.0.0.1 to request lists from.

This module holds no tests of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import Site

from xsoar_lr.api import InstanceContext, validate_parameters
from xsoar_lr.indicators import Indicator, IndicatorType
from xsoar_lr.store import IndicatorStore, store_path

T = IndicatorType

#: A fixed moment, so that full indicator objects have known times.
MOMENT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def indicator(value: str, type: IndicatorType, **fields: Any) -> Indicator:
    """
    An indicator first and last seen at L{MOMENT}.
    """
    fields.setdefault("first_seen", MOMENT)
    fields.setdefault("last_seen", MOMENT)
    return Indicator(value, type, **fields)


def open_store(
    state_dir: Path, indicators: Iterable[Indicator] = (), source: str = "Feed A"
) -> IndicatorStore:
    """
    Open (creating) the store of a state folder and add C{indicators}.
    """
    store = IndicatorStore.open(store_path(state_dir))
    items = list(indicators)
    if items:
        report = store.add(items, source=source)
        assert not report.rejected, report.rejected
    return store


def make_context(
    integration: str,
    params: dict[str, Any],
    state_dir: Path,
    store: IndicatorStore,
    name: str = "list",
    instance_dir: Path | None = None,
) -> InstanceContext:
    """
    The context the host would give an instance of C{integration}.
    """
    from twisted.internet import reactor

    module = importlib.import_module(
        {
            "edl": "integrations.edl",
            "export-indicators": "integrations.export_indicators",
        }[integration]
    )
    validated = validate_parameters(module.PARAMETERS, params)
    problems = module.check(validated)
    assert not problems, problems
    if instance_dir is None:
        instance_dir = state_dir / "instances" / name
    instance_dir.mkdir(parents=True, exist_ok=True)
    return InstanceContext(
        name=name,
        integration=integration,
        params=validated,
        state_dir=instance_dir,
        route=None,
        reactor=reactor,
        log=Logger(namespace=f"test.{name}"),
        open_store=lambda: store,
    )


class Served:
    """
    A list instance served over a real socket.

    :ivar url: the base URL, ending in C{/}.
    """

    def __init__(self, resource: Any, port: Any) -> None:
        self.resource = resource
        self.port = port
        self.url = f"http://127.0.0.1:{port.getHost().port}/"
        self.stopped = False

    def get(
        self,
        query: str = "",
        path: str = "",
        *,
        method: str = "GET",
        headers: dict[str, list[str]] | None = None,
    ) -> Deferred[Any]:
        """
        Send a request with a raw query string over a new connection.

        A bare Agent is used rather than treq's, which would ask for gzip
        and decode it on its own.
        """
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool
        from twisted.web.http_headers import Headers

        url = self.url + path + (("?" + query) if query else "")
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        raw = Headers(
            {k.encode(): [v.encode() for v in vs] for k, vs in (headers or {}).items()}
        )
        return agent.request(method.encode(), url.encode(), raw)

    def stop(self) -> Deferred[None]:
        """
        Stop listening (once; later calls do nothing).
        """
        from twisted.internet.defer import maybeDeferred, succeed

        if self.stopped:
            return succeed(None)
        self.stopped = True
        return maybeDeferred(self.port.stopListening)


def serve(
    integration: str,
    params: dict[str, Any],
    state_dir: Path,
    store: IndicatorStore,
    name: str = "list",
    instance_dir: Path | None = None,
) -> Served:
    """
    Build an instance's resource and serve it on 127.0.0.1, port 0.
    """
    from twisted.internet import reactor

    module = importlib.import_module(
        {
            "edl": "integrations.edl",
            "export-indicators": "integrations.export_indicators",
        }[integration]
    )
    context = make_context(integration, params, state_dir, store, name, instance_dir)
    resource = module.make_resource(context)
    site = Site(resource)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return Served(resource, port)


class Servers:
    """
    Starts list instances for one test and stops them all afterwards.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.started: list[Served] = []

    def start(
        self,
        integration: str,
        params: dict[str, Any],
        store: IndicatorStore,
        name: str = "list",
        instance_dir: Path | None = None,
    ) -> Served:
        served = serve(integration, params, self.state_dir, store, name, instance_dir)
        self.started.append(served)
        return served

    def stop_all(self) -> None:
        import pytest_twisted

        for served in self.started:
            pytest_twisted.blockon(served.stop())
        self.started.clear()


async def body_of(response: Any) -> bytes:
    """
    The whole body of a treq response.
    """
    data: bytes = await treq.content(response)
    return data


def header(response: Any, name: str) -> str | None:
    """
    The single value of a response header, or C{None}.
    """
    values = response.headers.getRawHeaders(name)
    return None if values is None else values[0]


async def raw_request(served: Served, request: bytes) -> bytes:
    """
    Send the bytes of a whole HTTP/1.0 request and return everything the
    server sends until it closes the connection.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Collect(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.done: Deferred[bytes] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(request)  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Any = None) -> None:
            self.done.callback(self.data)

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", served.port.getHost().port)
    protocol = Collect()
    await connectProtocol(endpoint, protocol)
    return await protocol.done
