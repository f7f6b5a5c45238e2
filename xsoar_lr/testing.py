"""
A testing kit for integration authors: build an instance of an integration
from parameters, talk to it in memory or through a real gateway, and look at
its state, logs and health reports.

In memory (no sockets; requests go through C{treq.testing.StubTreq})::

    import pytest_twisted
    from xsoar_lr.testing import build_instance

    @pytest_twisted.ensureDeferred
    async def test_a_post_is_stored(tmp_path):
        async with build_instance(
            "generic-webhook", {"incidentType": "Phishing"}, root=tmp_path
        ) as instance:
            answer = await instance.post("/", json={"name": "hello"})
            assert answer.code == 200
            assert instance.messages() == ["Stored 1 event(s)"]

Through a real TLS gateway on 127.0.0.1 (ports chosen by the system), just
as the host publishes the instance::

    from xsoar_lr.testing import build_instance, serve_behind_gateway

    async with build_instance("generic-webhook", {}) as instance:
        gateway = await serve_behind_gateway(instance)
        answer = await gateway.post("/", json={"name": "hello"})
        assert gateway.url("/") == (
            f"https://127.0.0.1:{gateway.port}/instance/execute/test/"
        )

Both return an L{Answer} with the whole body read. Everything is stopped and
removed when the C{async with} block ends (or on C{await instance.close()}):
the instance's service, the gateway, its ports, the state files, and the
temporary folder if the kit made it.

The kit runs the instance in the test's own process with the global reactor
(pytest-twisted runs it), so the instance's threads (C{run_in_thread}) work
as they do in the host. It does not start a process per instance as the host
does; use the host itself (C{twistd -n xsoar-lr}) for that.
"""

from __future__ import annotations

import json as jsonlib
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from xsoar_lr.api import (
    IIntegration,
    InstanceContext,
    Integration,
    ParameterError,
    ParameterProblem,
    find_integrations,
    logging_health_reporter,
)

__all__ = [
    "Answer",
    "InstanceHarness",
    "RoutedInstance",
    "build_instance",
    "serve_behind_gateway",
    "wait_until",
]

#: How long L{InstanceHarness.request} waits for an answer by default.
DEFAULT_TIMEOUT = 10.0

#: The host name in-memory requests are addressed to.
MEMORY_BASE = "http://instance.invalid"


@attrs.frozen
class Answer:
    """
    An HTTP response with its body read.

    :ivar code: the status code.
    :ivar phrase: the reason phrase.
    :ivar headers: the response headers.
    :ivar body: the whole body.
    """

    code: int
    phrase: str
    headers: Headers
    body: bytes

    @property
    def text(self) -> str:
        """
        The body decoded as UTF-8 (undecodable bytes replaced).
        """
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """
        The body parsed as JSON.

        :raises ValueError: when it is not JSON; the message shows the start
            of the body.
        """
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            raise ValueError(
                f"The {self.code} answer is not JSON: {self.text[:200]!r}"
            ) from None

    def header(self, name: str) -> str | None:
        """
        The first value of the named response header, or C{None}.
        """
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


async def _read_answer(response: Any, settle: Callable[[Deferred[Any]], Any]) -> Answer:
    body: bytes = await settle(treq.content(response))
    return Answer(
        code=response.code,
        phrase=response.phrase.decode("latin-1"),
        headers=response.headers,
        body=body,
    )


def resolve_integration(integration: str | IIntegration | types.ModuleType) -> Any:
    """
    Find the integration to test: an installed integration's id, an object
    providing L{IIntegration} (such as an L{Integration}), or the
    integration's module itself (for code not registered yet).

    :raises LookupError: for an id that is not installed, listing those
        that are.
    """
    if isinstance(integration, str):
        installed = find_integrations()
        found = installed.get(integration)
        if found is None:
            raise LookupError(
                f"No integration {integration!r} is installed; the installed ones "
                f"are: {', '.join(sorted(installed)) or 'none'}. Install the "
                "package that registers it (its twisted/plugins file), or pass "
                "the Integration object or module itself."
            )
        return found
    if isinstance(integration, types.ModuleType):
        return Integration(
            id=integration.__name__,
            module=integration.__name__,
            display_name=integration.__name__,
        )
    if not IIntegration.providedBy(integration):
        raise TypeError(
            f"{integration!r} is not an integration: give an id, an Integration "
            "or the integration's module."
        )
    return integration


@implementer(ILogObserver)
class _Capture:
    """
    Keeps the events an instance logs.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the condition",
) -> None:
    """
    Wait until C{predicate()} holds, checking every few milliseconds, for
    work that shows no Deferred (a service's loop, say).

    :param what: what is awaited, for the error.
    :raises TimeoutError: after C{timeout} seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Gave up after {timeout:g} s waiting for {what}.")
        await deferLater(reactor, 0.005, lambda: None)


class InstanceHarness:
    """
    One instance of an integration, built in this process for a test.

    Make one with L{build_instance}.

    :ivar integration: the integration.
    :ivar context: the L{InstanceContext} the instance was built with.
    :ivar resource: the instance's web resource.
    :ivar service: the instance's service, or C{None}.
    :ivar client: a C{StubTreq} over the resource, for tests that want treq
        itself; requests need a full URL (L{url}).
    :ivar root: the folder standing in for the host's state folder.
    :ivar events: every event the instance logged through C{context.log},
        as Twisted log events (dicts).
    :ivar health: every health report, in order (a sentence, or C{None} for
        healthy).
    """

    def __init__(
        self,
        integration: Any,
        context: InstanceContext,
        root: Path,
        capture: _Capture,
        health: list[str | None],
        remove_root: bool,
        own_store: bool = True,
    ) -> None:
        self.integration = integration
        self.context = context
        self.root = root
        self._capture = capture
        self.health = health
        self._remove_root = remove_root
        self._own_store = own_store
        self._cleanups: list[Callable[[], Any]] = []
        self._closed = False
        self.resource = integration.make_resource(context)
        self.client: Any = StubTreq(self.resource)
        self.service = integration.make_service(context)

    # What the instance has.

    @property
    def name(self) -> str:
        """
        The instance's name.
        """
        return self.context.name

    @property
    def params(self) -> dict[str, Any]:
        """
        The validated parameters.
        """
        return self.context.params

    @property
    def state_dir(self) -> Path:
        """
        The instance's own folder.
        """
        return self.context.state_dir

    @property
    def state(self) -> Any:
        """
        The instance's integration context (a
        L{xsoar_lr.kvstate.KeyValueState}).
        """
        return self.context.integration_context

    @property
    def events(self) -> list[dict[str, Any]]:
        """
        Every event logged through C{context.log}, oldest first.
        """
        return self._capture.events

    def messages(self, level: LogLevel | None = None) -> list[str]:
        """
        The logged events as text, optionally only those of one level.
        """
        return [
            formatEvent(event)
            for event in self._capture.events
            if level is None or event.get("log_level") is level
        ]

    @property
    def healthy(self) -> bool:
        """
        Whether the last health report, if any, was C{None}.
        """
        return not self.health or self.health[-1] is None

    def leaked_secrets(self) -> list[str]:
        """
        The names of the secret parameters whose value appears in a logged
        message or field; a correct integration gives an empty list.
        """
        secrets: dict[str, str] = {}
        for parameter in self.integration.parameters():
            value = self.context.params.get(parameter.name)
            if parameter.kind == "credentials" and isinstance(value, Mapping):
                value = value.get("password")
            elif not parameter.secret:
                continue
            if value:
                secrets[parameter.name] = str(value)
        texts = [
            formatEvent(event) + "\n" + "\n".join(map(repr, event.values()))
            for event in self._capture.events
        ]
        return sorted(
            name
            for name, secret in secrets.items()
            if any(secret in text for text in texts)
        )

    # Requests.

    def url(self, path: str = "/") -> str:
        """
        The in-memory URL of C{path} (an instance path such as C{"/events"});
        an absolute URL (a C{next} link the instance gave) is kept as it is.
        """
        if path.startswith(("http://", "https://")):
            return path
        if not path.startswith("/"):
            raise ValueError(f"The path {path!r} must start with '/'.")
        return MEMORY_BASE + path

    async def settle(self, d: Deferred[Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
        """
        Wait for C{d}, moving the in-memory connection's bytes meanwhile, so
        that answers the instance gives later (from a thread, after a timer)
        arrive.

        :raises TimeoutError: after C{timeout} seconds.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        deadline = time.monotonic() + timeout
        results: list[Any] = []
        d.addBoth(results.append)
        while True:
            self.client.flush()
            if results:
                break
            if time.monotonic() > deadline:
                d.cancel()
                raise TimeoutError(
                    f"Instance {self.name!r} did not answer within {timeout:g} s."
                )
            await deferLater(reactor, 0.002, lambda: None)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    async def request(
        self,
        method: str,
        path: str = "/",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> Answer:
        """
        Send a request to the instance in memory and read the whole answer.

        :param path: the instance path, with the query if any (C{"/?n=5"}),
            or an absolute URL the instance gave.
        :param kwargs: what treq takes: C{headers}, C{params}, C{data},
            C{json}, C{auth} (a C{(user, password)} pair for basic auth).
        """
        d = self.client.request(method, self.url(path), **kwargs)
        response = await self.settle(d, timeout)
        return await _read_answer(response, lambda d: self.settle(d, timeout))

    async def get(self, path: str = "/", **kwargs: Any) -> Answer:
        """
        L{request} with GET.
        """
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str = "/", **kwargs: Any) -> Answer:
        """
        L{request} with POST.
        """
        return await self.request("POST", path, **kwargs)

    # Life.

    def start_service(self) -> None:
        """
        Start the instance's service, if it has one and it is not running.
        """
        if self.service is not None and not self.service.running:
            self.service.startService()

    async def stop_service(self) -> None:
        """
        Stop the instance's service and wait for it, if it runs.
        """
        if self.service is not None and self.service.running:
            await maybeDeferred(self.service.stopService)

    def add_cleanup(self, cleanup: Callable[[], Any]) -> None:
        """
        Call C{cleanup} (which may return a Deferred or a coroutine) when the
        harness closes, before the state is closed.
        """
        self._cleanups.append(cleanup)

    async def close(self) -> None:
        """
        Stop everything the harness started and close the state; remove the
        root folder if the kit made it. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        try:
            while self._cleanups:
                result = self._cleanups.pop()()
                if result is not None:
                    await result
            await self.stop_service()
        finally:
            self.context.close(close_store=self._own_store)
            if self._remove_root:
                shutil.rmtree(self.root, ignore_errors=True)

    async def __aenter__(self) -> InstanceHarness:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def build_instance(
    integration: str | IIntegration | types.ModuleType,
    params: Mapping[str, Any] | None = None,
    *,
    name: str = "test",
    root: Path | str | None = None,
    routed: bool = True,
    reactor: Any = None,
    store: Any = None,
    start_service: bool = True,
) -> InstanceHarness:
    """
    Build an instance of C{integration} as the host would, in this process.

    :param integration: an installed integration's id, an L{Integration}
        (or other L{IIntegration} provider), or the integration's module.
    :param params: the instance's parameters as a configuration gives them;
        validated and completed with defaults.
    :param name: the instance's name.
    :param root: a folder standing in for the host's state folder (pytest's
        C{tmp_path}, say): the instance's own folder is
        C{root/instances/<name>} and the indicator store
        C{root/indicators.sqlite3}. Build again with the same root and name to
        see what survives a restart. By default a temporary folder, removed
        on close.
    :param routed: whether C{context.route} is set, as for an instance the
        server parameters publish.
    :param reactor: the reactor the instance gets; by default the global one.
        A C{MemoryReactorClock} suits timers, but then C{run_in_thread}
        cannot be used.
    :param store: an open C{IndicatorStore} to share; by default the store in
        C{root} is opened on first use.
    :param start_service: start the instance's service (if it has one) now,
        as the host does once the instance listens.
    :raises ParameterError: naming the instance and each bad parameter.
    :raises LookupError: when no integration has the given id.
    """
    found = resolve_integration(integration)
    try:
        validated = found.validate(dict(params or {}))
    except ParameterError as e:
        raise ParameterError(
            [
                ParameterProblem(p.parameter, f"Instance {name!r}: {p.message}")
                for p in e.problems
            ]
        ) from None

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    remove_root = root is None
    if root is None:
        root_path = Path(tempfile.mkdtemp(prefix="xsoar-lr-test-"))
    else:
        root_path = Path(root)
    state_dir = root_path / "instances" / quote(name, safe="")
    state_dir.mkdir(parents=True, exist_ok=True)

    def open_store() -> Any:
        if store is not None:
            return store
        from xsoar_lr.store import IndicatorStore, store_path

        return IndicatorStore.open(store_path(root_path))

    capture = _Capture()
    log = Logger(namespace=f"xsoar_lr.instance.{name}", observer=capture)
    health: list[str | None] = []
    logged = logging_health_reporter(log, name)

    def report_health(message: str | None) -> None:
        health.append(message)
        logged(message)

    context = InstanceContext(
        name=name,
        integration=str(found.id),
        params=validated,
        state_dir=state_dir,
        route=f"/instance/execute/{quote(name, safe='')}" if routed else None,
        reactor=reactor,
        log=log,
        open_store=open_store,
        report_health=report_health,
    )
    try:
        harness = InstanceHarness(
            found, context, root_path, capture, health, remove_root, store is None
        )
    except BaseException:
        context.close(close_store=store is None)
        if remove_root:
            shutil.rmtree(root_path, ignore_errors=True)
        raise
    if start_service:
        harness.start_service()
    return harness


class RoutedInstance:
    """
    An instance served on 127.0.0.1 behind a real TLS gateway, made by
    L{serve_behind_gateway}.

    :ivar instance: the harness of the instance.
    :ivar port: the gateway's port.
    :ivar instance_port: the instance's own (plain HTTP) port.
    :ivar certificate_path: the gateway's self-signed certificate (PEM), for
        other clients (C{curl --cacert}).
    :ivar client: a treq client that trusts exactly that certificate.
    """

    def __init__(
        self,
        instance: InstanceHarness,
        port: int,
        instance_port: int,
        certificate_path: Path,
        client: Any,
        stop: Callable[[], Deferred[None]],
    ) -> None:
        self.instance = instance
        self.port = port
        self.instance_port = instance_port
        self.certificate_path = certificate_path
        self.client = client
        self._stop = stop

    @property
    def route(self) -> str:
        """
        The instance's route, such as C{/instance/execute/test}.
        """
        return f"/instance/execute/{quote(self.instance.name, safe='')}"

    def url(self, path: str = "") -> str:
        """
        The gateway URL of C{path} (an instance path; empty for the bare
        route); an absolute URL (a link the instance gave) is kept as it is.
        """
        if path.startswith(("http://", "https://")):
            return path
        if path and not path.startswith("/"):
            raise ValueError(f"The path {path!r} must start with '/'.")
        return f"https://127.0.0.1:{self.port}{self.route}{path}"

    async def request(
        self,
        method: str,
        path: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> Answer:
        """
        Send a request through the gateway and read the whole answer; the
        keyword arguments are treq's.
        """
        from twisted.internet import reactor

        d = self.client.request(method, self.url(path), **kwargs)
        d.addTimeout(timeout, reactor)
        response = await d
        return await _read_answer(response, _await)

    async def get(self, path: str = "", **kwargs: Any) -> Answer:
        """
        L{request} with GET.
        """
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str = "", **kwargs: Any) -> Answer:
        """
        L{request} with POST.
        """
        return await self.request("POST", path, **kwargs)

    async def stop(self) -> None:
        """
        Stop the gateway and the instance's port (the harness does it on
        close).
        """
        await self._stop()


async def _await(d: Deferred[Any]) -> Any:
    return await d


async def serve_behind_gateway(
    instance: InstanceHarness,
    *,
    response_timeout: float = 30.0,
    connect_timeout: float = 5.0,
) -> RoutedInstance:
    """
    Serve C{instance} on a free port of 127.0.0.1 and publish it at its
    route through a gateway on another free port, over TLS with a
    self-signed certificate made in the harness's root folder; both stop
    when the harness closes.

    The gateway is the host's own (L{xsoar_lr.gateway}); the instance runs
    in this process rather than a child process.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS
    from twisted.internet.ssl import Certificate
    from twisted.web.client import (
        Agent,
        BrowserLikePolicyForHTTPS,
        HTTPConnectionPool,
    )
    from twisted.web.server import Site

    from xsoar_lr.gateway import (
        RouteTable,
        build_routes,
        make_agent,
        make_gateway_site,
    )
    from xsoar_lr.tls import ensure_self_signed, server_options

    site = Site(instance.resource)
    site.noisy = False
    instance_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        site
    )
    agent = make_agent(reactor, connect_timeout)
    table = RouteTable()
    table.routes = build_routes(
        {instance.name: ("127.0.0.1", instance_port.getHost().port)},
        agent,
        reactor,
        response_timeout=response_timeout,
    )
    pair, _ = ensure_self_signed(instance.root / "tls")
    endpoint = wrapServerTLS(
        server_options(pair),  # type: ignore[arg-type]
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
    )
    try:
        gateway_port = await endpoint.listen(make_gateway_site(table))
    except BaseException:
        await instance_port.stopListening()
        raise
    client_pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(
        Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(
                trustRoot=Certificate.loadPEM(pair.certificate_path.read_bytes())
            ),
            pool=client_pool,
        )
    )

    async def stop() -> None:
        await maybeDeferred(gateway_port.stopListening)
        await maybeDeferred(instance_port.stopListening)
        await agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        await client_pool.closeCachedConnections()

    stopped: list[bool] = []

    def stop_once() -> Deferred[None]:
        # The test may stop the gateway itself before the harness closes.
        if stopped:
            return succeed(None)
        stopped.append(True)
        return Deferred.fromCoroutine(stop())

    routed = RoutedInstance(
        instance,
        gateway_port.getHost().port,  # type: ignore[attr-defined]
        instance_port.getHost().port,  # type: ignore[attr-defined]
        pair.certificate_path,
        client,
        stop_once,
    )
    instance.add_cleanup(stop_once)
    return routed
