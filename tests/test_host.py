"""
End-to-end tests of the host: real child processes for the instances, the
gateway on real TLS, and C{twistd xsoar-lr} itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import pytest_twisted
from gateway_support import free_port, tls_client, wait_until
from host_support import StartHost, start_host  # noqa: F401 (fixture)
from twisted.logger import globalLogPublisher

from xsoar_lr.status import read_status
from xsoar_lr.supervisor import InstanceState


def four_instances() -> str:
    ports = [free_port() for _ in range(4)]
    return f"""
    server_params:
      instance.execute.external: true
      instance.execute.external.hidden: false
      instance.execute.external.Chosen: "TRUE"
    instances:
      - {{name: echo, integration: echo, port: {ports[0]}}}
      - {{name: My EDL, integration: echo, port: {ports[1]}}}
      - {{name: hidden, integration: echo, port: {ports[2]}}}
      - {{name: Chosen, integration: echo, port: {ports[3]}}}
    """


@pytest_twisted.ensureDeferred
async def test_routed_instances_answer_through_the_gateway(
    start_host: StartHost,
) -> None:
    host = await start_host(four_instances())

    code, body, _ = await host.get("/instance/execute/echo?n=5")
    assert code == 200
    assert json.loads(body)["uri"] == "/?n=5"

    code, body, _ = await host.get(
        "/instance/execute/My%20EDL/deep/path", method="POST", data=b"payload"
    )
    described = json.loads(body)
    assert (described["instance"], described["uri"], described["body"]) == (
        "My EDL",
        "/deep/path",
        "payload",
    )

    code, body, _ = await host.get("/instance/execute/Chosen")
    assert code == 200

    code, body, _ = await host.get("/instance/execute/hidden")
    assert (code, body) == (404, "No instance is routed at this path.\n")
    code, _, _ = await host.get("/instance/execute/chosen")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_each_instance_runs_in_its_own_process_and_reports_status(
    start_host: StartHost,
) -> None:
    host = await start_host(four_instances())
    pids = {host.supervisor.pid(n) for n in ("echo", "My EDL", "hidden", "Chosen")}
    assert len(pids) == 4 and os.getpid() not in pids

    status = {s["name"]: s for s in read_status(host.service.config.state_dir)}
    assert status["echo"]["state"] == "running"
    assert status["echo"]["routed"] is True
    assert status["hidden"]["routed"] is False
    assert status["My EDL"]["route"] == "/instance/execute/My%20EDL"


@pytest_twisted.ensureDeferred
async def test_a_crashed_instance_is_restarted_while_the_others_keep_serving(
    start_host: StartHost,
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        host = await start_host(four_instances())
        old_pid = host.supervisor.pid("echo")
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)

        await wait_until(
            lambda: host.state("echo") is not InstanceState.RUNNING,
            what="the crash to be noticed",
        )
        code, _, response = await host.get("/instance/execute/echo")
        assert code in (502, 503)
        if code == 503:
            assert int(response.headers.getRawHeaders("retry-after")[0]) >= 1
        code, _, _ = await host.get("/instance/execute/My%20EDL")
        assert code == 200

        await wait_until(lambda: host.state("echo") is InstanceState.RUNNING)
        assert host.supervisor.pid("echo") not in (None, old_pid)
        code, _, _ = await host.get("/instance/execute/echo")
        assert code == 200
        status = {s["name"]: s for s in host.supervisor.snapshot()}
        assert status["echo"]["restarts"] == 1
        assert status["echo"]["last_exit"] == "signal SIGKILL"
    finally:
        globalLogPublisher.removeObserver(events.append)
    messages = [e.get("why") for e in events if e.get("instance") == "echo"]
    assert "it exited with signal SIGKILL" in messages


@pytest_twisted.ensureDeferred
async def test_an_instance_whose_port_is_taken_is_a_503_and_says_why(
    start_host: StartHost,
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        ok = free_port()
        host = await start_host(
            f"""
            server_params: {{instance.execute.external: true}}
            instances:
              - {{name: busy, integration: echo, port: {port}}}
              - {{name: fine, integration: echo, port: {ok}}}
            """,
            wait_for=("fine",),
        )
        await wait_until(
            lambda: host.state("busy") is InstanceState.RESTARTING,
            what="the instance to give up listening",
        )
        code, body, response = await host.get("/instance/execute/busy")
        assert code == 503
        assert response.headers.getRawHeaders("retry-after")
        assert body == "The instance is restarting; try again shortly.\n"
    finally:
        taken.close()
        globalLogPublisher.removeObserver(events.append)
    lines = [e.get("line", "") for e in events if e.get("instance") == "busy"]
    assert any(
        f"Instance busy cannot listen on 127.0.0.1:{port}" in line for line in lines
    ), lines
    assert any(
        e.get("why") == "it exited with exit code 3"
        for e in events
        if e.get("instance") == "busy"
    )


@pytest_twisted.ensureDeferred
async def test_stopping_the_host_stops_every_instance(start_host: StartHost) -> None:
    host = await start_host(four_instances())
    pids = [host.supervisor.pid(n) for n in ("echo", "My EDL")]
    await host.service.stopService()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert {s["state"] for s in read_status(host.service.config.state_dir)} == {
        "stopped"
    }


def twistd(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "twisted", *args]
        if args and args[0] == "--twist"
        else [os.path.join(os.path.dirname(sys.executable), "twistd"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_twistd_reports_every_configuration_problem_and_starts_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        dedent(
            """
            server_params:
              instance.execute.external: maybe
            instances:
              - {name: a, integration: echo, port: 0}
            """
        )
    )
    process = twistd("-n", "--pidfile=", "xsoar-lr", "--config", str(path))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    report = err.decode()
    assert "The configuration has 2 problems:" in report
    assert (
        f"{path}:3: server_params: 'instance.execute.external' must be true" in report
    )
    assert f"{path}:5: instance 'a': 'port' must be a whole number" in report
    assert not (tmp_path / "state").exists()


@pytest_twisted.ensureDeferred
async def test_twistd_runs_the_host_and_stops_it_cleanly(tmp_path: Path) -> None:
    port = free_port()
    gateway_port = free_port()
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(
        dedent(
            f"""
            state_dir: state
            gateway: {{listen: "ssl:{gateway_port}:interface=127.0.0.1"}}
            server_params: {{instance.execute.external: true}}
            instances:
              - {{name: echo, integration: echo, port: {port}}}
            """
        )
    )
    process = twistd("-n", "--pidfile=", "xsoar-lr", "--config", str(path))
    state_dir = tmp_path / "state"
    try:
        await wait_until(
            lambda: (
                process.poll() is not None
                or any(s["state"] == "running" for s in read_status(state_dir))
            ),
            what="twistd to start the instance",
        )
        assert process.poll() is None, process.communicate()
        client = tls_client(state_dir / "tls" / "gateway.pem")
        response = await client.get(
            f"https://127.0.0.1:{gateway_port}/instance/execute/echo"
        )
        assert response.code == 200
        child = read_status(state_dir)[0]["pid"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    # twistd shuts down cleanly, then ends itself with the signal it got, so
    # that its parent (systemd, a shell) sees how it was stopped.
    assert process.returncode == -signal.SIGTERM, err
    log = out.decode()
    assert "Server Shut Down." in log
    assert "Gateway certificate SHA-256 fingerprint:" in log
    assert (
        f"Try it: curl -k https://localhost:{gateway_port}/instance/execute/echo" in log
    )
    assert "Instance echo stopped (exit code 0)" in log
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_an_instance_reports_its_health_to_the_host() -> None:
    """
    A C{health} line on the control pipe sets or clears the instance's
    reported problem, which status reports show.
    """
    from twisted.internet.testing import MemoryReactorClock

    from xsoar_lr.supervisor import (
        CONTROL_FD,
        InstanceSupervisor,
        ProcessSpec,
        _InstanceProtocol,
    )

    supervisor = InstanceSupervisor(MemoryReactorClock(), environment={})
    supervisor.add(ProcessSpec("feed", "echo", 7000, {}))
    protocol = _InstanceProtocol(supervisor, "feed")
    protocol.childDataReceived(CONTROL_FD, b'health "The feed refuses our key."\n')
    assert supervisor.snapshot()[0]["health"] == "The feed refuses our key."
    protocol.childDataReceived(CONTROL_FD, b"health null\n")
    assert supervisor.snapshot()[0]["health"] is None


@pytest_twisted.ensureDeferred
async def test_stopping_lets_requests_in_flight_finish_first(
    start_host: StartHost,
) -> None:
    from twisted.internet.defer import ensureDeferred

    host = await start_host(four_instances())
    slow = ensureDeferred(host.get("/instance/execute/echo?delay=1"))
    await wait_until(lambda: host.service.gateway.in_flight() == 1)
    stopping = host.service.stopService()
    port = int(host.base.rsplit(":", 1)[1])

    def refused() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) != 0

    # New connections are refused; the request in flight goes on.
    await wait_until(refused, what="the gateway to stop accepting")
    assert not slow.called
    code, body, _ = await slow
    assert code == 200 and json.loads(body)["uri"] == "/?delay=1"
    await stopping
    assert {s["state"] for s in host.supervisor.snapshot()} == {"stopped"}


@pytest_twisted.ensureDeferred
async def test_an_instance_with_its_own_certificate_serves_https_on_its_port(
    start_host: StartHost, tmp_path: Path
) -> None:
    from xsoar_lr.tls import ensure_self_signed

    pair, _ = ensure_self_signed(tmp_path / "instance-tls")
    port = free_port()
    host = await start_host(
        f"""
        instances:
          - name: direct
            integration: echo
            port: {port}
            certificate: {pair.certificate_path}
            private_key: {pair.key_path}
        """
    )
    client = tls_client(pair.certificate_path)
    response = await client.get(f"https://127.0.0.1:{port}/direct?x=1")
    assert response.code == 200
    assert json.loads(await response.text())["uri"] == "/direct?x=1"
    assert (await host.get("/instance/execute/direct"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_two_hosts_cannot_share_a_state_folder(
    start_host: StartHost, tmp_path: Path
) -> None:
    from xsoar_lr.config import load_config
    from xsoar_lr.service import HostService
    from xsoar_lr.status import StateDirInUse

    host = await start_host(four_instances())
    second = HostService(load_config(tmp_path / "xsoar-lr.yaml"), host.service.reactor)
    with pytest.raises(StateDirInUse) as caught:
        second.privilegedStartService()
    assert caught.value.pid == os.getpid()
    assert "give each host its own state_dir" in str(caught.value)


def test_twistd_refuses_a_state_folder_in_use(tmp_path: Path) -> None:
    from xsoar_lr.status import lock_state_dir

    path = tmp_path / "x.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    lock = lock_state_dir(tmp_path / "state")
    try:
        process = twistd("-n", "--pidfile=", "xsoar-lr", "--config", str(path))
        _, err = process.communicate(timeout=60)
    finally:
        os.close(lock)
    assert process.returncode == 1
    assert f"another host (pid {os.getpid()}) already uses the state folder" in (
        err.decode()
    )


def test_twistd_says_plainly_when_the_gateway_port_is_taken(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    path = tmp_path / "x.yaml"
    path.write_text(
        f'state_dir: state\ngateway: {{listen: "ssl:{port}:interface=127.0.0.1"}}\n'
    )
    try:
        process = twistd("-n", "--pidfile=", "xsoar-lr", "--config", str(path))
        out, err = process.communicate(timeout=60)
    finally:
        taken.close()
    assert process.returncode == 1
    log = out.decode() + err.decode()
    assert f"Cannot listen on 127.0.0.1:{port}: [Errno 98]" in log
    assert "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_a_long_url_accepted_by_the_gateway_reaches_the_instance(
    start_host: StartHost,
) -> None:
    host = await start_host(four_instances())
    query = "&".join(f"q{n}=" + "x" * 20 for n in range(500))
    assert 12000 < len(query) < 16000
    code, body, _ = await host.get("/instance/execute/echo?" + query)
    assert code == 200
    assert json.loads(body)["uri"] == "/?" + query
