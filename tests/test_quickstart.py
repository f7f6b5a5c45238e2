"""
The README's quick start, end to end: a host with an EDL instance, a feed
imported with C{xsoar-lr indicators import}, and the list fetched through the
gateway with the curl command of XSOAR's documentation.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest_twisted
from gateway_support import free_port
from host_support import RunningHost, StartHost, start_host  # noqa: F401 (fixture)
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue


async def run(*argv: str) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(
        argv[0], argv[1:], env=dict(os.environ), reactor=reactor
    )
    return code, out.decode(), err.decode()


async def import_feed(host: RunningHost, feed: Path, source: str) -> str:
    code, out, err = await run(
        sys.executable,
        "-m",
        "xsoar_lr.cli",
        "indicators",
        "import",
        str(feed),
        "--source",
        source,
        "--config",
        host.service.config.source,
    )
    assert code == 0, err
    return out


async def curl(host: RunningHost, path: str) -> str:
    """
    Fetch through the gateway as the README says, with curl when the machine
    has it.
    """
    url = f"https://localhost:{host.service.gateway.port}{path}"
    curl_path = shutil.which("curl")
    if curl_path is None:
        code, body, _ = await host.get(path)
        assert code == 200
        return body
    code, out, err = await run(curl_path, "-k", "-sS", "--fail", url)
    assert code == 0, err
    return out


def edl_config() -> str:
    return f"""
    server_params:
      instance.execute.external: "false"
      instance.execute.external.edl: "true"
    instances:
      - {{name: edl, integration: edl, port: {free_port()}}}
    """


@pytest_twisted.ensureDeferred
async def test_an_imported_list_is_served_at_the_bare_route(
    start_host: StartHost, tmp_path: Path
) -> None:
    host = await start_host(edl_config())
    feed = tmp_path / "feed.txt"
    feed.write_text(
        "# a hand-made feed\n"
        "198.51.100.7\n"
        "203.0.113.0/24\n"
        "2001:db8::1\n"
        "bad.example.com\n"
        "https://phish.example.net/login?x=1\n"
    )
    report = await import_feed(host, feed, "hand-made")
    assert "5 added" in report

    body = await curl(host, "/instance/execute/edl")
    assert sorted(body.split()) == sorted(
        [
            "198.51.100.7",
            "203.0.113.0/24",
            "2001:db8::1",
            "bad.example.com",
            "phish.example.net/login?x=1",
        ]
    )


@pytest_twisted.ensureDeferred
async def test_a_real_feed_is_served_through_the_gateway(
    start_host: StartHost, shared_feeds: Path
) -> None:
    host = await start_host(edl_config())
    report = await import_feed(host, shared_feeds / "firehol_level1.netset", "firehol")
    assert "rejected" in report
    body = await curl(host, "/instance/execute/edl?n=100000")
    entries = body.split()
    values = [
        line.strip()
        for line in (shared_feeds / "firehol_level1.netset").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # The EDL's default maximum CIDR prefix (8, as in XSOAR) keeps ranges
    # wider than a /8 (224.0.0.0/3 here) off a firewall's list.
    served = {v for v in values if "/" not in v or int(v.split("/")[1]) >= 8}
    assert len(values) - len(served) == 1
    assert sorted(entries) == sorted(served)
