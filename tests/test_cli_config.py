"""
Tests for C{xsoar-lr check} and C{xsoar-lr routes}.
"""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from xsoar_lr.cli import main


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(
        dedent(
            """
            state_dir: state
            gateway: {listen: "ssl:9443:interface=127.0.0.1"}
            server_params:
              instance.execute.external: false
              instance.execute.external.My EDL: true
            instances:
              - {name: My EDL, integration: echo, port: 7100}
              - {name: quiet, integration: echo, port: 7101, params: {status: 204}}
            """
        )
    )
    return path


def test_check_describes_what_would_run(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert f"{config_file}: valid" in out
    assert (
        "- 'My EDL': echo on http://127.0.0.1:7100; "
        "https://localhost:9443/instance/execute/My%20EDL"
    ) in out
    assert "- 'quiet': echo on http://127.0.0.1:7101; not routed" in out
    assert "    status: 204" in out


def test_check_prints_json_on_request(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--json", str(config_file)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [i["routed"] for i in described["instances"]] == [True, False]


def test_check_reports_problems_on_stderr_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("instances:\n  - {name: a, integration: echo, port: -1}\n")
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}:2: instance 'a': 'port' must be a whole number" in captured.err


def test_routes_prints_one_url_per_routed_instance(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", str(config_file)]) == 0
    assert capsys.readouterr().out == (
        "https://localhost:9443/instance/execute/My%20EDL\n"
    )


def test_check_also_takes_the_file_as_an_option(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(config_file)]) == 0
    assert f"{config_file}: valid" in capsys.readouterr().out
    assert main(["routes", "--config", str(config_file)]) == 0
