"""
Tests of L{xsoar_lr.testing}, the testing kit for integration authors.

This module is itself a small integration (C{PARAMETERS}, C{make_resource},
C{make_service}) so that the kit is tried on something with a secret, a
service, the state and answers from a thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from xsoar_lr.api import InstanceContext, Parameter, ParameterError
from xsoar_lr.testing import build_instance, serve_behind_gateway

PARAMETERS = (
    Parameter("greeting", default="hello"),
    Parameter("api_key", secret=True),
)


class Counter(Resource):
    """
    Counts requests in the integration context; C{/slow} answers from a
    thread, C{/never} never answers, C{/where} tells its absolute URL.
    """

    isLeaf = True

    def __init__(self, context: InstanceContext) -> None:
        super().__init__()
        self.context = context

    def render_GET(self, request: Request) -> bytes | int:
        context = self.context
        if request.path == b"/never":
            return NOT_DONE_YET
        if request.path == b"/where":
            return context.absolute_url(request, "/where").encode()
        if request.path == b"/leak":
            context.log.info("Using key {key}", key=context.params["api_key"])
        count = context.integration_context.modify("count", lambda n: n + 1, 0)
        context.log.info("Request {count}", count=count)
        if request.path == b"/sick":
            context.report_health("The remote end is down.")
        if request.path == b"/slow":
            d = context.run_in_thread(lambda: f"{context.params['greeting']} {count}")
            d.addCallback(lambda text: (request.write(text.encode()), request.finish()))
            return NOT_DONE_YET
        return f"{context.params['greeting']} {count}".encode()


class Poller(Service):
    def __init__(self, context: InstanceContext) -> None:
        self.context = context

    def startService(self) -> None:
        super().startService()
        self.context.log.info("Poller started")

    def stopService(self) -> None:
        super().stopService()
        self.context.log.info("Poller stopped")


def make_resource(context: InstanceContext) -> Resource:
    return Counter(context)


def make_service(context: InstanceContext) -> Service:
    return Poller(context)


THIS = sys.modules[__name__]


@pytest_twisted.ensureDeferred
async def test_requests_reach_the_instance_in_memory(tmp_path: Path) -> None:
    async with build_instance(THIS, {"greeting": "hi"}, root=tmp_path) as instance:
        first = await instance.get("/")
        second = await instance.get("/slow")
        assert (first.code, first.text, second.text) == (200, "hi 1", "hi 2")
        assert first.header("content-type") == "text/html"
        assert instance.state["count"] == 2
        assert instance.state_dir == tmp_path / "instances" / "test"
        assert instance.messages(LogLevel.info) == [
            "Poller started",
            "Request 1",
            "Request 2",
        ]


@pytest_twisted.ensureDeferred
async def test_the_service_starts_and_stops_with_the_instance(tmp_path: Path) -> None:
    instance = build_instance(THIS, root=tmp_path)
    assert instance.service is not None and instance.service.running
    await instance.close()
    assert not instance.service.running
    assert instance.messages()[-1] == "Poller stopped"

    idle = build_instance(THIS, root=tmp_path, start_service=False)
    assert idle.service is not None and not idle.service.running
    await idle.close()


@pytest_twisted.ensureDeferred
async def test_the_state_survives_rebuilding_with_the_same_root(tmp_path: Path) -> None:
    async with build_instance(THIS, root=tmp_path, name="My Counter") as instance:
        await instance.get("/")
        assert instance.context.route == "/instance/execute/My%20Counter"
    async with build_instance(THIS, root=tmp_path, name="My Counter") as instance:
        assert (await instance.get("/")).text == "hello 2"


@pytest_twisted.ensureDeferred
async def test_a_temporary_root_is_removed_on_close() -> None:
    instance = build_instance(THIS)
    await instance.get("/")
    assert instance.root.is_dir()
    await instance.close()
    await instance.close()
    assert not instance.root.exists()


@pytest_twisted.ensureDeferred
async def test_health_reports_are_kept_and_logged(tmp_path: Path) -> None:
    async with build_instance(THIS, root=tmp_path) as instance:
        assert instance.healthy
        await instance.get("/sick")
        assert instance.health == ["The remote end is down."]
        assert not instance.healthy
        assert instance.messages(LogLevel.warn) == [
            "Instance test is unhealthy: The remote end is down."
        ]


@pytest_twisted.ensureDeferred
async def test_a_logged_secret_is_found(tmp_path: Path) -> None:
    async with build_instance(THIS, {"api_key": "k-123"}, root=tmp_path) as instance:
        await instance.get("/")
        assert instance.leaked_secrets() == []
        await instance.get("/leak")
        assert instance.leaked_secrets() == ["api_key"]


@pytest_twisted.ensureDeferred
async def test_an_instance_that_never_answers_times_out(tmp_path: Path) -> None:
    async with build_instance(THIS, root=tmp_path) as instance:
        with pytest.raises(TimeoutError, match="Instance 'test' did not answer"):
            await instance.get("/never", timeout=0.2)


def test_bad_parameters_name_the_instance_and_parameter(tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as caught:
        build_instance(THIS, {"greting": "hi"}, name="counter", root=tmp_path)
    assert str(caught.value).startswith(
        "Instance 'counter': Parameter 'greting' is not a parameter of this "
        "integration; the known ones are: api_key, greeting."
    )


def test_an_unknown_integration_lists_the_installed_ones() -> None:
    with pytest.raises(LookupError, match="No integration 'nope'.*echo"):
        build_instance("nope")


@pytest_twisted.ensureDeferred
async def test_installed_integrations_are_found_by_id(tmp_path: Path) -> None:
    async with build_instance("echo", {"status": "201"}, root=tmp_path) as instance:
        answer = await instance.post("/a?b=c", data=b"body")
        assert answer.code == 201
        assert answer.json()["uri"] == "/a?b=c"
        assert answer.json()["body"] == "body"


async def refused(port: int) -> bool:
    try:
        protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(Protocol)
        )
    except ConnectionRefusedError:
        return True
    protocol.transport.loseConnection()
    return False


@pytest_twisted.ensureDeferred
async def test_an_instance_behind_a_real_gateway(tmp_path: Path) -> None:
    instance = build_instance(THIS, root=tmp_path, name="My Counter")
    gateway = await serve_behind_gateway(instance)
    assert gateway.url("/x") == (
        f"https://127.0.0.1:{gateway.port}/instance/execute/My%20Counter/x"
    )

    answer = await gateway.get("/slow")
    assert (answer.code, answer.text) == (200, "hello 1")
    answer = await gateway.get("/where")
    assert answer.text == gateway.url("/where")
    answer = await gateway.get()
    assert answer.text == "hello 2"
    assert gateway.certificate_path.read_bytes().startswith(b"-----BEGIN CERT")

    await instance.close()
    assert await refused(gateway.port)
    assert await refused(gateway.instance_port)
