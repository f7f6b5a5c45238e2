"""
Tests for reloading the configuration of a running host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest_twisted
from gateway_support import free_port, wait_until
from host_support import StartHost, start_host  # noqa: F401 (fixture)

from xsoar_lr.status import read_host_status, read_status
from xsoar_lr.supervisor import InstanceState

PORTS = {name: free_port() for name in ("kept", "gone", "changed", "hidden", "new")}

BEFORE = f"""
server_params:
  instance.execute.external: true
instances:
  - {{name: kept, integration: echo, port: {PORTS["kept"]}}}
  - {{name: gone, integration: echo, port: {PORTS["gone"]}}}
  - {{name: changed, integration: echo, port: {PORTS["changed"]}}}
  - {{name: hidden, integration: echo, port: {PORTS["hidden"]}}}
"""

AFTER = f"""
state_dir: state
gateway: {{listen: "ssl:0:interface=127.0.0.1"}}
server_params:
  instance.execute.external: true
  instance.execute.external.hidden: false
instances:
  - {{name: kept, integration: echo, port: {PORTS["kept"]}}}
  - {{name: changed, integration: echo, port: {PORTS["changed"]},
      params: {{status: 202}}}}
  - {{name: hidden, integration: echo, port: {PORTS["hidden"]}}}
  - {{name: new, integration: echo, port: {PORTS["new"]}}}
"""


@pytest_twisted.ensureDeferred
async def test_a_reload_applies_only_the_difference(
    start_host: StartHost, tmp_path: Path
) -> None:
    host = await start_host(BEFORE)
    pids = {n: host.supervisor.pid(n) for n in ("kept", "changed", "hidden")}

    (tmp_path / "xsoar-lr.yaml").write_text(AFTER)
    assert await host.service.reload() is True
    await wait_until(
        lambda: all(host.state(n) is InstanceState.RUNNING for n in ("changed", "new")),
        what="the restarted and new instances",
    )

    assert host.supervisor.pid("kept") == pids["kept"]
    assert host.supervisor.pid("hidden") == pids["hidden"]
    assert host.supervisor.pid("changed") not in (None, pids["changed"])
    assert "gone" not in {s["name"] for s in host.supervisor.snapshot()}
    assert (await host.get("/instance/execute/kept"))[0] == 200
    assert (await host.get("/instance/execute/changed"))[0] == 202
    assert (await host.get("/instance/execute/new"))[0] == 200
    assert (await host.get("/instance/execute/hidden"))[0] == 404
    assert (await host.get("/instance/execute/gone"))[0] == 404

    last = read_host_status(host.service.config.state_dir)["last_reload"]
    assert last["ok"] is True
    assert last["changes"] == [
        "started: 'new'",
        "stopped: 'gone'",
        "restarted: 'changed'",
        "no longer routed: 'hidden'",
    ]


@pytest_twisted.ensureDeferred
async def test_a_broken_file_changes_nothing_and_says_why(
    start_host: StartHost, tmp_path: Path
) -> None:
    host = await start_host(BEFORE)
    pids = {s["name"]: s["pid"] for s in host.supervisor.snapshot()}
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(
        AFTER.replace("status: 202", "status: lots").replace("name: new", "name: kept")
    )
    assert await host.service.reload() is False
    assert {s["name"]: s["pid"] for s in host.supervisor.snapshot()} == pids
    assert (await host.get("/instance/execute/gone"))[0] == 200
    assert (await host.get("/instance/execute/hidden"))[0] == 200
    last = read_host_status(host.service.config.state_dir)["last_reload"]
    assert last["ok"] is False
    assert any("Parameter 'status': expected a number" in p for p in last["problems"])
    assert any("the name is already used" in p for p in last["problems"])


def xsoar_lr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xsoar_lr.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest_twisted.ensureDeferred
async def test_sighup_and_the_reload_command_reach_a_twistd_host(
    tmp_path: Path,
) -> None:
    path = tmp_path / "xsoar-lr.yaml"
    head = f'state_dir: state\ngateway: {{listen: "ssl:{free_port()}:interface=127.0.0.1"}}\n'
    path.write_text(head + dedent(BEFORE))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "xsoar-lr", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "state"
    try:
        await wait_until(
            lambda: (
                len(read_status(state)) == 4
                and all(s["state"] == "running" for s in read_status(state))
            ),
            what="the host to start",
        )
        status = xsoar_lr("status", "--config", str(path))
        assert status.returncode == 0, status.stderr
        assert f"Host running, pid {process.pid}" in status.stdout

        # Another file naming the same state folder is not this host's.
        other = tmp_path / "other.yaml"
        other.write_text(head)
        wrong = xsoar_lr("reload", "--config", str(other))
        assert wrong.returncode == 1
        assert f"runs {path}, not {other}" in wrong.stderr

        path.write_text(head + "instances: [{name: x, integration: nope, port: 1}]\n")
        refused = xsoar_lr("reload", "--config", str(path))
        assert refused.returncode == 1
        assert "refused the configuration" in refused.stdout
        assert "'nope' is not installed" in refused.stdout

        path.write_text(head + dedent(BEFORE).replace("  - {name: gone", "  #"))
        applied = xsoar_lr("reload", "--config", str(path))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout == "Reloaded: stopped: 'gone'\n"
        await wait_until(lambda: len(read_status(state)) == 3, what="the stop")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    stopped = xsoar_lr("status", "--config", str(path), "--json")
    assert stopped.returncode == 1
    assert json.loads(stopped.stdout)["running"] is False


@pytest_twisted.ensureDeferred
async def test_a_reload_leaves_requests_in_flight_alone(
    start_host: StartHost, tmp_path: Path
) -> None:
    from twisted.internet.defer import ensureDeferred

    host = await start_host(BEFORE)
    slow = [
        ensureDeferred(host.get(f"/instance/execute/{name}?delay=1"))
        for name in ("kept", "hidden")
    ]
    await wait_until(lambda: host.service.gateway.in_flight() == 2)
    (tmp_path / "xsoar-lr.yaml").write_text(AFTER)
    assert await host.service.reload() is True
    for d in slow:
        code, body, _ = await d
        assert code == 200
        assert json.loads(body)["uri"] == "/?delay=1"


@pytest_twisted.ensureDeferred
async def test_a_feed_added_by_a_reload_is_pulled_and_served(
    start_host: StartHost, tmp_path: Path
) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Listing(Resource):
        isLeaf = True

        def render_GET(self, request: object) -> bytes:
            return b"198.51.100.1\n198.51.100.2\n"

    feed = Resource()
    feed.putChild(b"list.txt", Listing())
    server = reactor.listenTCP(0, Site(feed), interface="127.0.0.1")
    try:
        edl = free_port()
        body = f"""
        server_params: {{instance.execute.external: true}}
        instances:
          - {{name: edl, integration: edl, port: {edl}}}
        """
        host = await start_host(body)
        assert host.service.feeds is None
        path = tmp_path / "xsoar-lr.yaml"
        url = f"http://127.0.0.1:{server.getHost().port}/list.txt"
        path.write_text(
            path.read_text()
            + f"feeds:\n  - {{name: local, url: '{url}', interval: 1h}}\n"
        )
        assert await host.service.reload() is True
        assert host.service.feeds is not None
        assert host.supervisor.pid("edl") is not None
        last = read_host_status(host.service.config.state_dir)["last_reload"]
        assert last["changes"] == ["feeds replaced"]

        async def served() -> list[str]:
            code, text, _ = await host.get("/instance/execute/edl?nocache")
            assert code == 200
            return sorted(text.split())

        for _ in range(200):
            if await served() == ["198.51.100.1", "198.51.100.2"]:
                break
        assert await served() == ["198.51.100.1", "198.51.100.2"]
    finally:
        await server.stopListening()
