"""
Tests for access logs in files of their own, rotated by size.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted
from gateway_support import free_port, wait_until
from host_support import StartHost, start_host  # noqa: F401 (fixture)

from xsoar_lr.config import ConfigError, parse_config

COMBINED = re.compile(
    r'^"?127\.0\.0\.1"? - - \[[^\]]+\] "GET (\S+) HTTP/1\.1" (\d{3}) \d+ "-" "[^"]*"$'
)


@pytest_twisted.ensureDeferred
async def test_gateway_and_instance_access_logs_rotate_by_size(
    start_host: StartHost, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    host = await start_host(
        f"""
        server_params: {{instance.execute.external: true}}
        instances:
          - name: echo
            integration: echo
            port: {free_port()}
            access_log: {{path: {logs / "echo.log"}, max_bytes: 1024, keep: 2}}
        """
    )
    for number in range(30):
        code, _, _ = await host.get(f"/instance/execute/echo/page-{number}")
        assert code == 200

    def lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    await wait_until(
        lambda: any(
            "/page-29" in line
            for name in ("echo.log", "echo.log.1")
            for line in lines(logs / name)
        ),
        what="the last request in the instance's log",
    )
    assert (logs / "echo.log.1").exists()
    assert not (logs / "echo.log.3").exists()
    assert (logs / "echo.log").stat().st_size <= 1024 + 300
    for line in lines(logs / "echo.log") + lines(logs / "echo.log.1"):
        match = COMBINED.match(line)
        assert match, line
        assert match.group(1).startswith("/page-")


@pytest_twisted.ensureDeferred
async def test_the_gateway_writes_its_own_access_log(
    start_host: StartHost, tmp_path: Path
) -> None:
    path = tmp_path / "gateway-access.log"
    host = await start_host(
        f"""
        server_params: {{instance.execute.external: true}}
        instances:
          - {{name: echo, integration: echo, port: {free_port()}}}
        """,
        gateway_extra=f"access_log: {path}",
    )
    assert (await host.get("/instance/execute/echo?a=1"))[0] == 200
    assert (await host.get("/instance/execute/nobody"))[0] == 404
    await wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 2)
    first, second = path.read_text().splitlines()
    assert '"GET /instance/execute/echo?a=1 HTTP/1.1" 200' in first
    assert '"GET /instance/execute/nobody HTTP/1.1" 404' in second


def test_an_access_log_in_a_missing_folder_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "gateway: {access_log: /nonexistent/folder/access.log}\n",
            "x.yaml",
            Path("/"),
            {},
        )
    assert "the folder of the access log" in str(caught.value)
