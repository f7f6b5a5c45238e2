"""
Tests for running the host under systemd: the generated units, and the
gateway taking its listening socket from systemd (socket activation).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
import pytest_twisted
from gateway_support import free_port, tls_client, wait_until

from xsoar_lr.cli import main
from xsoar_lr.status import read_status


def write_config(tmp_path: Path, listen: str) -> Path:
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(
        dedent(
            f"""
            state_dir: {tmp_path / "state"}
            gateway: {{listen: "{listen}"}}
            server_params: {{instance.execute.external: true}}
            instances:
              - {{name: edl, integration: echo, port: {free_port()}}}
            """
        )
    )
    return path


def test_the_service_unit_runs_this_twistd_hardened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "ssl:8443")
    assert main(["systemd-unit", "--config", str(path), "--user", "svc"]) == 0
    unit = capsys.readouterr().out
    twistd = Path(sys.executable).parent / "twistd"
    assert f"ExecStart={twistd} --nodaemon --pidfile= xsoar-lr --config {path}" in unit
    for line in (
        "User=svc",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        # The test's files are in /tmp, which the unit must then share.
        "PrivateTmp=no",
        f"ReadWritePaths={tmp_path / 'state'}",
        "StandardOutput=journal",
    ):
        assert line in unit.splitlines(), line
    assert "[Socket]" not in unit


def test_a_socket_unit_needs_a_systemd_listen_description(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "ssl:8443")
    assert main(["systemd-unit", "--config", str(path), "--socket", "443"]) == 1
    assert 'gateway.listen to "systemd:domain=INET:name=gateway"' in (
        capsys.readouterr().err
    )


def test_the_socket_unit_names_the_gateways_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "systemd:domain=INET:name=gateway")
    assert main(["systemd-unit", "--config", str(path), "--socket", "443"]) == 0
    out = capsys.readouterr().out
    service, socket_part = out.split("# /etc/systemd/system/xsoar-lr.socket\n")
    assert "Requires=xsoar-lr.socket" in service
    assert "ListenStream=443" in socket_part
    assert "FileDescriptorName=gateway" in socket_part


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_accepts_the_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "systemd:domain=INET:name=gateway")
    (tmp_path / "state").mkdir()
    assert (
        main(
            ["systemd-unit", "--config", str(path), "--socket", "443", "--user", "root"]
        )
        == 0
    )
    service, socket_part = capsys.readouterr().out.split(
        "# /etc/systemd/system/xsoar-lr.socket\n"
    )
    units = tmp_path / "units"
    units.mkdir()
    (units / "xsoar-lr.service").write_text(service.split("\n", 1)[1])
    (units / "xsoar-lr.socket").write_text(socket_part)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(units / "xsoar-lr.socket"),
            str(units / "xsoar-lr.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify reports problems of the units themselves on stderr; the host's
    # systemd setup (no D-Bus in a container) must not count against them.
    problems = [
        line
        for line in result.stderr.splitlines()
        if "xsoar-lr" in line and "Failed to" not in line
    ]
    assert problems == [], result.stderr


ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_FDNAMES"] = "gateway"
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest_twisted.ensureDeferred
async def test_the_gateway_serves_on_a_socket_passed_as_systemd_does(
    tmp_path: Path,
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    path = write_config(tmp_path, "systemd:domain=INET:name=gateway")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ACTIVATE,
            str(listener.fileno()),
            twistd,
            "-n",
            "--pidfile=",
            "xsoar-lr",
            "--config",
            str(path),
        ],
        pass_fds=(listener.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    listener.close()
    state = tmp_path / "state"
    try:
        await wait_until(
            lambda: (
                process.poll() is not None
                or any(s["state"] == "running" for s in read_status(state))
            ),
            what="the host to start",
        )
        assert process.poll() is None
        client = tls_client(state / "tls" / "gateway.pem")
        response = await client.get(f"https://127.0.0.1:{port}/instance/execute/edl")
        assert response.code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert b"Gateway listening on systemd:domain=INET:name=gateway" in out


def test_the_unit_relaxes_only_what_the_installation_needs() -> None:
    from xsoar_lr.commands.systemd import relaxed_settings

    hardened = (
        Path("/opt/xsoar-lr/bin/twistd"),
        Path("/etc/x.yaml"),
        Path("/var/lib/x"),
    )
    assert relaxed_settings(hardened) == ("yes", "yes")
    assert relaxed_settings((*hardened, Path("/home/ann/x/state"))) == (
        "read-only",
        "yes",
    )
    assert relaxed_settings((Path("/root/.venv/bin/twistd"), Path("/tmp/x.yaml"))) == (
        "read-only",
        "no",
    )
    assert relaxed_settings((Path("/tmpfiles/x"),)) == ("yes", "yes")


def test_a_relaxed_unit_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "ssl:8443")
    assert main(["systemd-unit", "--config", str(path)]) == 0
    assert "shares /tmp" in capsys.readouterr().err
