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
from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
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
