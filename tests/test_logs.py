"""
Tests for the host's logs: JSON lines, instances' output attributed to
them, and no secret in any log.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest_twisted
from gateway_support import free_port, tls_client, wait_until
from twisted.logger import Logger, LogPublisher

from xsoar_lr.logs import JSONLinesObserver
from xsoar_lr.status import read_status

SECRET = "hunter2-very-secret-password"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"


def test_events_become_one_json_object_per_line() -> None:
    out = io.StringIO()
    publisher = LogPublisher(JSONLinesObserver(out))
    log = Logger(namespace="xsoar_lr.test", observer=publisher)
    log.warn("Instance {instance} exited with {how}", instance="My EDL", how="code 3")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("Proxying to {instance} failed", instance="edl")
    log.info("Password {password} was given", password=SECRET)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["level"] == "warn"
    assert lines[0]["namespace"] == "xsoar_lr.test"
    assert lines[0]["message"] == "Instance My EDL exited with code 3"
    assert lines[0]["instance"] == "My EDL"
    assert lines[0]["time"].endswith("+00:00")
    assert lines[1]["level"] == "critical"
    assert "ZeroDivisionError" in lines[1]["traceback"]
    assert "password" not in lines[2]


@pytest_twisted.ensureDeferred
async def test_a_host_logs_json_lines_attributed_and_without_secrets(
    tmp_path: Path,
) -> None:
    gateway_port = free_port()
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(
        dedent(
            f"""
            state_dir: state
            gateway: {{listen: "ssl:{gateway_port}:interface=127.0.0.1"}}
            server_params: {{instance.execute.external: true}}
            instances:
              - {{name: echo, integration: echo, port: {free_port()}}}
              - name: bot
                integration: teams
                port: {free_port()}
                params:
                  bot_id: 11111111-2222-3333-4444-555555555555
                  bot_password: {SECRET}
                  openid_metadata_url: http://127.0.0.1:9/openid
            """
        )
    )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [
            twistd,
            "--logger=xsoar_lr.logs.json_observer",
            "-n",
            "--pidfile=",
            "xsoar-lr",
            "--config",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    state = tmp_path / "state"
    try:
        await wait_until(
            lambda: (
                process.poll() is not None
                or (
                    len(read_status(state)) == 2
                    and all(s["state"] == "running" for s in read_status(state))
                )
            ),
            what="the host to start",
        )
        client = tls_client(state / "tls" / "gateway.pem")
        base = f"https://127.0.0.1:{gateway_port}/instance/execute"
        response = await client.get(
            base + "/echo", headers={"Authorization": f"Basic {SECRET}"}
        )
        assert response.code == 200
        await response.content()
        response = await client.post(
            base + "/bot",
            data=b'{"type": "message", "serviceUrl": "http://127.0.0.1:9/"}',
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
            },
        )
        assert response.code == 401
        await response.content()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)

    text = out.decode() + err.decode()
    assert SECRET not in text
    assert TOKEN not in text and "c2VjcmV0LXRva2Vu" not in text
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert {"time", "level", "namespace", "message"} <= set(records[0])
    from_echo = [r for r in records if r.get("instance") == "echo"]
    assert any("Site starting on" in r["message"] for r in from_echo)
    assert any(
        "Gateway certificate SHA-256 fingerprint" in r["message"] for r in records
    )
