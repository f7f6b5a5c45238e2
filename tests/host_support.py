"""
A whole host started in the test process, for end-to-end tests: real child
processes for the instances and the gateway on real TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest_twisted
from gateway_support import text_of, tls_client, wait_until
from twisted.internet import reactor

from xsoar_lr.config import load_config
from xsoar_lr.service import HostService
from xsoar_lr.supervisor import InstanceState


class RunningHost:
    """
    A host started in this process from a configuration file.
    """

    def __init__(self, service: HostService) -> None:
        self.service = service
        self.supervisor = service.supervisor
        self.pair_path = service.config.state_dir / "tls" / "gateway.pem"
        self.client = tls_client(self.pair_path)
        self.base = f"https://127.0.0.1:{service.gateway.port}"

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, Any]:
        response = await self.client.request(
            kwargs.pop("method", "GET"), self.base + path, **kwargs
        )
        return response.code, await text_of(response), response

    def state(self, name: str) -> InstanceState:
        return self.supervisor.state(name)


StartHost = Callable[..., Awaitable[RunningHost]]


@pytest_twisted.async_yield_fixture
async def start_host(tmp_path: Path) -> AsyncIterator[StartHost]:
    started: list[HostService] = []

    async def start(
        body: str, wait_for: tuple[str, ...] = (), gateway_extra: str = ""
    ) -> RunningHost:
        path = tmp_path / "xsoar-lr.yaml"
        extra = f", {gateway_extra}" if gateway_extra else ""
        path.write_text(
            "state_dir: state\n"
            f'gateway: {{listen: "ssl:0:interface=127.0.0.1"{extra}}}\n' + dedent(body)
        )
        service = HostService(load_config(path), reactor)
        service.supervisor.min_restart_delay = 0.2
        service.privilegedStartService()
        service.startService()
        started.append(service)
        host = RunningHost(service)
        names = wait_for or tuple(i.name for i in service.config.instances)
        await wait_until(
            lambda: all(host.state(n) is InstanceState.RUNNING for n in names),
            what=f"instances {names} to serve",
        )
        return host

    yield start
    for service in started:
        await service.stopService()
