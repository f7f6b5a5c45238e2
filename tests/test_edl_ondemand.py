"""
On-demand mode: the list changes only when 'xsoar-lr instances update' asks,
and both the request and the built list survive a restart of the instance.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_edl_service import CountingSearches
from test_lists_support import Servers, T, body_of, header, indicator, open_store

from integrations.lists import ondemand
from xsoar_lr.cli import CommandError
from xsoar_lr.commands import instances
from xsoar_lr.config import load_config
from xsoar_lr.store import IndicatorStore

CONFIG = """\
state_dir: {state}
instances:
  - name: on demand
    integration: edl
    port: 7101
    params:
      on_demand: true
      indicators_query: "type:IP"
  - name: periodic
    integration: edl
    port: 7102
  - name: exports
    integration: export-indicators
    port: 7103
    params:
      on_demand: "true"
  - name: echo
    integration: echo
    port: 7104
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return path


@pytest.fixture
def store(config_path: Path) -> Iterator[IndicatorStore]:
    config = load_config(str(config_path))
    store = open_store(
        config.state_dir,
        [
            indicator("192.0.2.1", T.IP),
            indicator("192.0.2.2", T.IP),
            indicator("a.example", T.DOMAIN),
            indicator("b.example", T.DOMAIN),
        ],
    )
    assert store.path == config.store_path
    yield store
    store.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    servers = Servers(tmp_path)
    yield servers
    servers.stop_all()


def run(*argv: str) -> tuple[int, str]:
    """
    Run 'xsoar-lr instances ...' and return its exit code and error message.
    """
    parser = argparse.ArgumentParser(prog="xsoar-lr")
    instances.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    try:
        return args.handler(args), ""
    except CommandError as e:
        return 1, str(e)


def start(
    servers: Servers, config_path: Path, store: Any, name: str = "on demand"
) -> Any:
    config = load_config(str(config_path))
    instance = config.instance(name)
    return servers.start(
        instance.integration,
        dict(instance.params),
        store,
        name=name,
        instance_dir=config.instance_state_dir(name),
    )


@pytest_twisted.ensureDeferred
async def test_update_rebuilds_only_when_asked_and_survives_restart(
    servers: Servers, config_path: Path, store: IndicatorStore, capsys: Any
) -> None:
    counting = CountingSearches(store)
    served = start(servers, config_path, counting)

    # The first request builds from the instance's parameters.
    response = await served.get()
    assert (await body_of(response)).decode() == "192.0.2.1\n192.0.2.2"
    etag = header(response, "etag")

    # A store change does not touch an on-demand list, nor do URL arguments.
    store.add([indicator("192.0.2.3", T.IP)], source="Feed B")
    response = await served.get("n=1&v=JSON")
    assert (await body_of(response)).decode() == "192.0.2.1\n192.0.2.2"
    assert counting.searches == 1
    # ...but they are still checked.
    response = await served.get("n=many")
    assert response.code == 400

    code, error = run(
        "instances",
        "update",
        "on demand",
        "--query",
        "type:Domain",
        "--format",
        "JSON",
        "--size",
        "1",
        "--offset",
        "1",
        "--config",
        str(config_path),
    )
    assert (code, error) == (0, "")
    assert capsys.readouterr().out == (
        "Instance 'on demand' will rebuild its list on the next request it serves.\n"
    )
    response = await served.get()
    assert (await body_of(response)).decode() == (
        '[{"value": "b.example", "indicator_type": "Domain"}]'
    )
    assert header(response, "content-type") == "application/json"
    assert counting.searches == 2
    response = await served.get()
    assert counting.searches == 2
    built_etag = header(response, "etag")
    assert built_etag != etag

    # A restart serves the same list without searching again.
    await served.stop()
    counting = CountingSearches(store)
    served = start(servers, config_path, counting)
    response = await served.get(headers={"If-None-Match": [built_etag]})
    assert response.code == 304
    response = await served.get()
    assert (await body_of(response)).decode() == (
        '[{"value": "b.example", "indicator_type": "Domain"}]'
    )
    assert counting.searches == 0

    # A request made while the instance is down is honoured when it is back.
    await served.stop()
    code, _ = run(
        "instances",
        "update",
        "on demand",
        "--collapse-ips",
        "To Ranges",
        "--config",
        str(config_path),
    )
    assert code == 0
    assert "Warning: no indicator query is set" not in capsys.readouterr().out
    served = start(servers, config_path, counting)
    response = await served.get()
    assert (await body_of(response)).decode() == "192.0.2.1-192.0.2.3"
    assert counting.searches == 1


@pytest_twisted.ensureDeferred
async def test_export_indicators_on_demand(
    servers: Servers, config_path: Path, store: IndicatorStore, capsys: Any
) -> None:
    code, _ = run(
        "instances",
        "update",
        "exports",
        "--format",
        "csv",
        "--sort-field",
        "value",
        "--sort-order",
        "desc",
        "--config",
        str(config_path),
    )
    assert code == 0
    assert capsys.readouterr().out.endswith(
        "Warning: no indicator query is set, so the list will hold every indicator of "
        "the store (up to its size).\n"
    )
    served = start(servers, config_path, store, name="exports")
    response = await served.get()
    assert (await body_of(response)).decode() == (
        "indicator\nb.example\na.example\n192.0.2.2\n192.0.2.1"
    )
    assert header(response, "x-exportindicators-size") == "4"


def test_update_errors(config_path: Path, tmp_path: Path) -> None:
    config = str(config_path)
    assert run("instances", "update", "nope", "--config", config) == (
        1,
        (
            "There is no instance named 'nope' in the configuration; the instances are: "
            "on demand, periodic, exports, echo."
        ),
    )
    code, error = run("instances", "update", "periodic", "--config", config)
    assert code == 1 and error.startswith(
        "Instance 'periodic' does not update on demand"
    )
    code, error = run("instances", "update", "echo", "--config", config)
    assert (code, error) == (
        1,
        (
            "Instance 'echo' is a 'echo' instance; only edl and export-indicators instances "
            "keep a list to update."
        ),
    )
    code, error = run(
        "instances", "update", "on demand", "--format", "yaml", "--config", config
    )
    assert code == 1
    assert error.startswith(
        "The update was not recorded: Parameter 'format': 'yaml' is not"
    )

    code, error = run(
        "instances", "update", "on demand", "--query", "type:(", "--config", config
    )
    assert code == 1 and "Parameter 'indicators_query'" in error
    code, error = run(
        "instances", "update", "on demand", "--sort-field", "value", "--config", config
    )
    assert (code, error) == (1, "Option --sort-field does not apply to edl instances.")
    code, error = run(
        "instances", "update", "on demand", "--offset", "-1", "--config", config
    )
    assert (code, error) == (1, "Option --offset must not be negative.")
    broken = tmp_path / "broken.yaml"
    broken.write_text("instances: 3\n")
    code, error = run("instances", "update", "x", "--config", str(broken))
    assert code == 1 and "broken.yaml" in error
    state = load_config(config).instance_state_dir("on demand")
    assert ondemand.read_request(state) is None

    # The URL argument's spellings of a format work as well.
    code, error = run(
        "instances", "update", "on demand", "--format", "json", "--config", config
    )
    assert (code, error) == (0, "")
    request = ondemand.read_request(state)
    assert request is not None and request["params"] == {"format": "JSON"}


def test_update_request_file(tmp_path: Path) -> None:
    assert ondemand.read_request(tmp_path) is None
    assert ondemand.request_stamp(tmp_path) is None
    first = ondemand.write_request(
        tmp_path, {"indicators_query": "type:IP", "offset": 2}
    )
    assert ondemand.read_request(tmp_path) == first
    assert json.loads((tmp_path / ondemand.REQUEST_FILE).read_text())["params"] == {
        "indicators_query": "type:IP",
        "offset": 2,
    }
    second = ondemand.write_request(tmp_path, {})
    assert second["serial"] > first["serial"]
    (tmp_path / ondemand.REQUEST_FILE).write_text("[1, 2]")
    with pytest.raises(
        ondemand.UpdateRequestError, match="is not a mapping with 'params'"
    ):
        ondemand.read_request(tmp_path)
    (tmp_path / ondemand.REQUEST_FILE).write_text("{")
    with pytest.raises(ondemand.UpdateRequestError, match="cannot be read"):
        ondemand.read_request(tmp_path)


@pytest_twisted.ensureDeferred
async def test_damaged_record_is_rebuilt(
    servers: Servers, config_path: Path, store: IndicatorStore
) -> None:
    served = start(servers, config_path, store)
    response = await served.get()
    assert (await body_of(response)).decode() == "192.0.2.1\n192.0.2.2"
    await served.stop()
    state = load_config(str(config_path)).instance_state_dir("on demand")
    (state / "on-demand" / "list.json").write_text('{"request": {}, "list": {}}')
    counting = CountingSearches(store)
    served = start(servers, config_path, counting)
    response = await served.get()
    assert (await body_of(response)).decode() == "192.0.2.1\n192.0.2.2"
    assert counting.searches == 1
    # Only the new build's files and its record are left.
    assert len(list((state / "on-demand").iterdir())) == 3
