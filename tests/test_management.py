"""
Tests for the management site: health, status and metrics.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest_twisted
import treq
from gateway_support import free_port, wait_until
from host_support import RunningHost, StartHost, start_host  # noqa: F401 (fixture)
from twisted.logger import Logger

from xsoar_lr.management import HostMetrics
from xsoar_lr.supervisor import InstanceState


def config() -> str:
    return f"""
    management: {{listen: "tcp:0:interface=127.0.0.1"}}
    server_params: {{instance.execute.external: true}}
    instances:
      - {{name: echo, integration: echo, port: {free_port()}}}
      - {{name: teapot, integration: echo, port: {free_port()}, params: {{status: 418}}}}
    """


async def manage(host: RunningHost, path: str) -> tuple[int, str]:
    management = host.service.management
    assert management is not None
    response = await treq.get(f"http://127.0.0.1:{management.port}{path}")
    return response.code, await treq.text_content(response)


def sample(metrics: str, name: str, **labels: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest_twisted.ensureDeferred
async def test_health_follows_the_instances(start_host: StartHost) -> None:
    host = await start_host(config())
    code, body = await manage(host, "/health")
    assert (code, json.loads(body)["status"]) == (200, "ok")

    pid = host.supervisor.pid("echo")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: host.state("echo") is not InstanceState.RUNNING)
    code, body = await manage(host, "/health")
    assert code == 503
    problems = json.loads(body)["problems"]
    assert len(problems) == 1 and problems[0].startswith("Instance 'echo' is ")

    await wait_until(lambda: host.state("echo") is InstanceState.RUNNING)
    code, _ = await manage(host, "/health")
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_a_reported_problem_makes_the_host_unhealthy(
    start_host: StartHost,
) -> None:
    host = await start_host(config())
    host.supervisor.instance_health("teapot", '"The upstream API refuses our key."')
    code, body = await manage(host, "/health")
    assert code == 503
    assert json.loads(body)["problems"] == [
        "Instance 'teapot' reports: The upstream API refuses our key."
    ]
    code, body = await manage(host, "/status")
    teapot = [i for i in json.loads(body)["instances"] if i["name"] == "teapot"][0]
    assert teapot["health"] == "The upstream API refuses our key."


@pytest_twisted.ensureDeferred
async def test_status_describes_each_instance(start_host: StartHost) -> None:
    host = await start_host(config())
    code, body = await manage(host, "/status")
    assert code == 200
    status = json.loads(body)
    assert status["gateway"]["port"] == host.service.gateway.port
    echo = [i for i in status["instances"] if i["name"] == "echo"][0]
    assert echo["integration"] == "echo"
    assert echo["state"] == "running"
    assert echo["routed"] is True
    assert echo["route"] == "/instance/execute/echo"
    assert echo["pid"] == host.supervisor.pid("echo")
    assert echo["restarts"] == 0
    assert echo["uptime"] >= 0


@pytest_twisted.ensureDeferred
async def test_metrics_count_known_traffic(start_host: StartHost) -> None:
    host = await start_host(config())
    for _ in range(3):
        assert (await host.get("/instance/execute/echo"))[0] == 200
    assert (await host.get("/instance/execute/teapot"))[0] == 418
    assert (await host.get("/instance/execute/nobody"))[0] == 404

    code, metrics = await manage(host, "/metrics")
    assert code == 200
    assert (
        sample(metrics, "xsoar_lr_gateway_requests_total", instance="echo", code="200")
        == 3
    )
    assert (
        sample(
            metrics, "xsoar_lr_gateway_requests_total", instance="teapot", code="418"
        )
        == 1
    )
    assert (
        sample(metrics, "xsoar_lr_gateway_requests_total", instance="-", code="404")
        == 1
    )
    assert (
        sample(
            metrics, "xsoar_lr_gateway_upstream_latency_seconds_count", instance="echo"
        )
        == 3
    )
    assert sample(metrics, "xsoar_lr_gateway_response_bytes_total", instance="echo")
    assert sample(metrics, "xsoar_lr_instance_up", instance="echo") == 1
    assert sample(metrics, "xsoar_lr_instance_restarts_total", instance="echo") == 0


def test_list_builds_and_feed_pulls_are_counted_from_log_events() -> None:
    records: list[dict[str, Any]] = []
    metrics = HostMetrics(lambda: records)
    log = Logger(observer=metrics)
    # As the supervisor relays an instance's event.
    log.info(
        "[{instance}] {line}",
        instance="edl",
        line="Built a list",
        metric="list_build",
        child_fields={"metric": "list_build", "entries": 2500, "seconds": 0.25},
    )
    log.info("Pulled {feed}", metric="feed_pull", feed="firehol", result="changed")
    log.info("Pulled {feed}", metric="feed_pull", feed="firehol", result="failed")
    text = metrics.exposition().decode()
    assert sample(text, "xsoar_lr_list_entries", instance="edl") == 2500
    assert sample(text, "xsoar_lr_list_build_seconds_count", instance="edl") == 1
    assert (
        sample(text, "xsoar_lr_feed_pulls_total", feed="firehol", result="failed") == 1
    )


@pytest_twisted.ensureDeferred
async def test_an_instances_list_builds_reach_the_hosts_metrics(
    start_host: StartHost,
) -> None:
    host = await start_host(
        f"""
        management: {{listen: "tcp:0:interface=127.0.0.1"}}
        server_params: {{instance.execute.external: true}}
        instances:
          - {{name: edl, integration: edl, port: {free_port()}}}
        """
    )
    assert (await host.get("/instance/execute/edl"))[0] == 200

    async def built() -> float | None:
        _, metrics = await manage(host, "/metrics")
        return sample(metrics, "xsoar_lr_list_build_seconds_count", instance="edl")

    for _ in range(200):
        if await built() == 1:
            break
    _, metrics = await manage(host, "/metrics")
    assert sample(metrics, "xsoar_lr_list_build_seconds_count", instance="edl") == 1
    assert sample(metrics, "xsoar_lr_list_entries", instance="edl") == 0
