"""
Tests of L{xsoar_lr.api.InstanceContext} and L{xsoar_lr.api.Integration}:
what an instance's code is given, and how integrations are loaded.
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.web.test.requesthelper import DummyRequest

from xsoar_lr.api import InstanceContext, Integration, IntegrationLoadError
from xsoar_lr.kvstate import StateConflict


def make_context(state_dir: Path, **changes: Any) -> InstanceContext:
    def no_store() -> Any:
        raise AssertionError("the store is not used here")

    arguments: dict[str, Any] = {
        "name": "hook",
        "integration": "generic-webhook",
        "params": {},
        "state_dir": state_dir,
        "route": "/instance/execute/hook",
        "reactor": reactor,
        "log": Logger(namespace="test.hook"),
        "open_store": no_store,
    }
    arguments.update(changes)
    return InstanceContext(**arguments)


def test_the_integration_context_survives_a_restart(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    context.set_integration_context({"cursor": 10, "ids": ["a"]})
    context.update_integration_context({"token": "t"})
    context.integration_context["polls"] = 1
    context.close()

    again = make_context(tmp_path)
    assert again.get_integration_context() == {
        "cursor": 10,
        "ids": ["a"],
        "token": "t",
        "polls": 1,
    }
    assert (tmp_path / "integration-context.sqlite3").exists()
    again.close()


def test_a_versioned_set_refuses_a_stale_context(tmp_path: Path) -> None:
    one, two = make_context(tmp_path), make_context(tmp_path)
    _, version = one.integration_context.snapshot()
    two.set_integration_context({"owner": "two"})
    with pytest.raises(StateConflict):
        one.set_integration_context({"owner": "one"}, version=version)
    assert one.get_integration_context() == {"owner": "two"}
    one.close()
    two.close()


def test_the_default_health_reporter_logs_problems_and_recovery(
    tmp_path: Path,
) -> None:
    events: list[dict[str, Any]] = []
    context = make_context(tmp_path, log=Logger(namespace="t", observer=events.append))
    context.report_health(None)
    context.report_health("The feed refuses our key.")
    context.report_health(None)
    context.report_health(None)
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (LogLevel.warn, "Instance hook is unhealthy: The feed refuses our key."),
        (LogLevel.info, "Instance hook is healthy again"),
    ]


def test_a_health_reporter_can_be_given(tmp_path: Path) -> None:
    reports: list[str | None] = []
    context = make_context(tmp_path, report_health=reports.append)
    context.report_health("down")
    assert reports == ["down"]


@pytest_twisted.ensureDeferred
async def test_run_in_thread_runs_off_the_reactor_thread(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    here = threading.get_ident()
    result = await context.run_in_thread(lambda x: (threading.get_ident(), x), x=5)
    assert result[1] == 5 and result[0] != here
    with pytest.raises(ZeroDivisionError):
        await context.run_in_thread(lambda: 1 / 0)


class _Request(DummyRequest):
    def isSecure(self) -> bool:
        return False


def request_with(headers: dict[str, str]) -> DummyRequest:
    request = _Request([b"events"])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


def test_absolute_urls_behind_the_gateway_use_its_host_and_route(
    tmp_path: Path,
) -> None:
    context = make_context(tmp_path)
    request = request_with(
        {
            "Host": "127.0.0.1:7010",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "xsoar.example.com:8443",
            "X-Forwarded-Prefix": "/instance/execute/My%20Hook",
        }
    )
    assert context.absolute_url(request, "/events?after=3") == (
        "https://xsoar.example.com:8443/instance/execute/My%20Hook/events?after=3"
    )


def test_absolute_urls_of_a_direct_request_use_its_host(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    assert context.absolute_url(request_with({"Host": "localhost:7010"}), "/x") == (
        "http://localhost:7010/x"
    )
    with pytest.raises(ValueError, match="must start with '/'"):
        context.absolute_url(request_with({}), "x")


def test_a_module_without_make_resource_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("half_done_integration")
    module.PARAMETERS = ()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "half_done_integration", module)
    integration = Integration("half", "half_done_integration", "Half")
    with pytest.raises(IntegrationLoadError) as caught:
        integration.parameters()
    assert str(caught.value) == (
        "Integration 'half': its module 'half_done_integration' defines no "
        "make_resource; see xsoar_lr.api for what an integration module defines."
    )
    assert isinstance(caught.value, ImportError)


def test_a_module_that_cannot_be_imported_is_named_in_the_error() -> None:
    integration = Integration("gone", "no_such_module_anywhere", "Gone")
    with pytest.raises(IntegrationLoadError, match="'no_such_module_anywhere'"):
        integration.validate({})
