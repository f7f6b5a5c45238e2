"""
Lists built from each real feed of the development environment, imported
into a real store with the store's importers and served over a socket by
both integrations.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netaddr
import pytest
import pytest_twisted
from test_lists_support import Servers, body_of, header

from xsoar_lr.importers import ImportOptions, parse
from xsoar_lr.indicators import IndicatorType
from xsoar_lr.store import IndicatorStore, store_path

FEEDS = [
    "feodotracker-ipblocklist.csv",
    "firehol_level1.netset",
    "hacked-domains.list",
    "phishing-links-ACTIVE-today.txt",
    "phishing-links-NEW-today.txt",
    "stix21-apt1-bundle.json",
    "urlhaus-hostfile.txt",
]

_IP_TYPES = {
    IndicatorType.IP,
    IndicatorType.CIDR,
    IndicatorType.IPV6,
    IndicatorType.IPV6_CIDR,
}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    servers = Servers(tmp_path)
    yield servers
    servers.stop_all()


def imported(
    shared_feeds: Path, name: str, tmp_path: Path
) -> tuple[IndicatorStore, list[Any]]:
    data = (shared_feeds / name).read_bytes()
    indicators = parse(data, None, ImportOptions(name=name)).indicators
    assert indicators, name
    store = IndicatorStore.open(store_path(tmp_path))
    report = store.add(indicators, source=name)
    assert not report.rejected
    return store, indicators


def is_address_entry(line: str) -> bool:
    try:
        netaddr.IPNetwork(line)
        return True
    except (netaddr.AddrFormatError, ValueError):
        return False


@pytest.mark.parametrize("name", FEEDS)
@pytest_twisted.ensureDeferred
async def test_panos_text_list_from_feed(
    shared_feeds: Path, tmp_path: Path, servers: Servers, name: str
) -> None:
    store, indicators = imported(shared_feeds, name, tmp_path)
    try:
        served = servers.start("edl", {"edl_size": 100000}, store)
        response = await served.get(headers={"Accept-Encoding": ["gzip"]})
        assert response.code == 200
        raw = await body_of(response)
        if header(response, "content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        else:
            assert len(raw) < 512
        body = raw.decode()
        lines = body.split("\n")
        assert int(header(response, "x-edl-origin-size")) == store.count()
        assert int(header(response, "x-edl-size")) == len(lines)
        assert len(set(lines)) == len(lines), "entries are unique"
        for line in lines:
            assert line and line == line.strip() and "\r" not in line
            assert not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", line), line
            assert not re.match(r"^[A-Za-z0-9.\-]+:\d+(?:/|$)", line), line
        values = {i.value for i in indicators}
        addresses = [i for i in indicators if i.type in _IP_TYPES]
        for item in addresses:
            prefix = item.value.partition("/")[2]
            if prefix and int(prefix) < 8:
                assert item.value not in lines
            else:
                assert item.value in lines
        if name == "phishing-links-NEW-today.txt":
            assert "https://5678016.com:9900/web/#/first" in values
            assert "5678016.com/web/#/first" in lines
        if name == "urlhaus-hostfile.txt":
            assert "31.128.173.853.zhzy999.net" in lines
            assert "localhost" not in lines
    finally:
        store.close()


@pytest.mark.parametrize(
    "name",
    [
        "feodotracker-ipblocklist.csv",
        "firehol_level1.netset",
        "stix21-apt1-bundle.json",
    ],
)
@pytest.mark.parametrize("mode", ["1", "2"])
@pytest_twisted.ensureDeferred
async def test_collapsed_list_covers_the_same_addresses(
    shared_feeds: Path, tmp_path: Path, servers: Servers, name: str, mode: str
) -> None:
    store, indicators = imported(shared_feeds, name, tmp_path)
    try:
        served = servers.start("edl", {"edl_size": 100000}, store)
        response = await served.get(
            f"tr={mode}&mc=0&q=type:IP OR type:CIDR".replace(" ", "%20")
        )
        body = (await body_of(response)).decode()
        lines = body.split("\n")
        # The expected cover, merged here with plain integer arithmetic.
        intervals = sorted(
            (int(n.first), int(n.last))
            for n in (
                netaddr.IPNetwork(i.value) for i in indicators if i.type in _IP_TYPES
            )
        )
        expected: list[list[int]] = []
        for first, last in intervals:
            if expected and first <= expected[-1][1] + 1:
                expected[-1][1] = max(expected[-1][1], last)
            else:
                expected.append([first, last])
        served_intervals: list[tuple[int, int]] = []
        for line in lines:
            if "-" in line:
                assert mode == "1", line
                start, end = line.split("-")
                piece = netaddr.IPRange(start, end)
            else:
                piece = netaddr.IPNetwork(line)
                assert mode == "2" or piece.size == 1, line
            served_intervals.append((int(piece.first), int(piece.last)))
        if mode == "1":
            # One entry per merged range, in order.
            assert served_intervals == [tuple(r) for r in expected]
        else:
            # CIDR blocks in order, adjacent ones joining into the merged ranges.
            merged: list[list[int]] = []
            for first, last in served_intervals:
                if merged and first == merged[-1][1] + 1:
                    merged[-1][1] = last
                else:
                    assert not merged or first > merged[-1][1] + 1
                    merged.append([first, last])
            assert merged == expected
        for line in lines:
            socket.inet_pton(socket.AF_INET, line.split("-")[0].split("/")[0])
    finally:
        store.close()


@pytest.mark.parametrize("name", FEEDS)
@pytest_twisted.ensureDeferred
async def test_export_formats_from_feed(
    shared_feeds: Path, tmp_path: Path, servers: Servers, name: str
) -> None:
    store, indicators = imported(shared_feeds, name, tmp_path)
    try:
        served = servers.start("export-indicators", {"list_size": 100000}, store)
        response = await served.get("v=xsoar-json")
        documents = json.loads(await body_of(response))
        assert sorted(d["value"] for d in documents) == sorted(
            {i.value for i in indicators}
        )
        assert {d["sourceBrands"][0] for d in documents} == {name}

        response = await served.get("v=json-seq")
        lines = (await body_of(response)).decode().split("\n")
        assert [json.loads(line)["indicator"] for line in lines] == [
            d["value"] for d in documents
        ]

        response = await served.get("v=csv")
        rows = (await body_of(response)).decode().split("\n")
        assert rows[0] == "indicator" and len(rows) == len(documents) + 1

        response = await served.get("v=panosurl&sp&di")
        text = (await body_of(response)).decode()
        for line in text.split("\n"):
            assert line == line.lower() or is_address_entry(line)
            assert not re.match(r"^[a-z][a-z0-9+.\-]*://", line), line

        response = await served.get("v=mwg&t=string")
        mwg = (await body_of(response)).decode().split("\n")
        assert mwg[0] == "type=string"
        assert all(line.endswith(f' "{name}"') for line in mwg[1:])
    finally:
        store.close()
