"""
The Export Indicators integration served over real sockets from a real
indicator store: its own formats, sorting and parameter names, and the EDL
formats it shares.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_lists_support import (
    MOMENT,
    Servers,
    T,
    body_of,
    header,
    indicator,
    open_store,
)

from xsoar_lr.store import IndicatorStore

STAMP = MOMENT.isoformat().replace("+00:00", "Z")

INDICATORS = [
    indicator("https://Shop.Example.com:8080/a*b/c", T.URL, score=3),
    indicator("*.glob.example", T.DOMAIN_GLOB, score=1),
    indicator("192.0.2.1", T.IP, score=2, tags=("c2",)),
    indicator("192.0.2.2", T.IP, score=2),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IndicatorStore]:
    store = open_store(tmp_path, INDICATORS)
    yield store
    store.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    servers = Servers(tmp_path)
    yield servers
    servers.stop_all()


async def fetch(served: Any, query: str = "") -> tuple[Any, str]:
    response = await served.get(query)
    return response, (await body_of(response)).decode()


CASES: list[tuple[dict[str, Any], str, str]] = [
    (
        {},
        "",
        "*.glob.example\n192.0.2.1\n192.0.2.2\nhttps://Shop.Example.com:8080/a*b/c",
    ),
    ({"list_size": 2}, "", "*.glob.example\n192.0.2.1"),
    ({}, "tr=1&q=type:IP", "192.0.2.1-192.0.2.2"),
    ({"collapse_ips": "To CIDRs"}, "q=type:IP", "192.0.2.1\n192.0.2.2"),
    ({}, "v=panosurl", "glob.example\n*.glob.example\n192.0.2.1\n192.0.2.2"),
    (
        {},
        "v=panosurl&sp",
        "glob.example\n*.glob.example\n192.0.2.1\n192.0.2.2\nshop.example.com/*/c",
    ),
    (
        {"strip_port": True},
        "v=PAN-OS URL",
        "glob.example\n*.glob.example\n192.0.2.1\n192.0.2.2\nshop.example.com/*/c",
    ),
    (
        {"strip_port": True, "drop_invalids": True},
        "v=panosurl&q=type:URL",
        "# Empty List",
    ),
    (
        {},
        "v=csv",
        (
            "indicator\n*.glob.example\n192.0.2.1\n192.0.2.2\n"
            "https://Shop.Example.com:8080/a*b/c"
        ),
    ),
    # Export Indicators' strip_port is off unless set.
    (
        {"format": "PAN-OS (text)"},
        "",
        (
            "glob.example\n*.glob.example\n192.0.2.1\n192.0.2.2\n"
            "Shop.Example.com:8080/a*b/c"
        ),
    ),
    (
        {"format": "PAN-OS (text)", "strip_port": True},
        "q=type:URL",
        "Shop.Example.com/a*b/c",
    ),
    (
        {},
        "v=JSON&q=type:IP",
        (
            '[{"value": "192.0.2.1", "indicator_type": "IP"}, '
            '{"value": "192.0.2.2", "indicator_type": "IP"}]'
        ),
    ),
    ({}, "v=mwg&q=type:IP", 'type=string\n"192.0.2.1" "Feed A"\n"192.0.2.2" "Feed A"'),
    (
        {},
        "v=proxysg&q=type:IP",
        "define category bc_category\n192.0.2.1\n192.0.2.2\nend",
    ),
    # Sorting.
    # Ties keep the order the store gives them (its insertion order, reversed
    # when descending).
    (
        {},
        "sf=score&so=desc",
        "https://Shop.Example.com:8080/a*b/c\n192.0.2.2\n192.0.2.1\n*.glob.example",
    ),
    (
        {"sort_field": "score"},
        "",
        "*.glob.example\n192.0.2.1\n192.0.2.2\nhttps://Shop.Example.com:8080/a*b/c",
    ),
    (
        {"sort_field": "score", "sort_order": "desc"},
        "so=asc",
        "*.glob.example\n192.0.2.1\n192.0.2.2\nhttps://Shop.Example.com:8080/a*b/c",
    ),
    (
        {},
        "so=desc",
        "https://Shop.Example.com:8080/a*b/c\n192.0.2.2\n192.0.2.1\n*.glob.example",
    ),
]


@pytest.mark.parametrize("params, query, expected", CASES)
@pytest_twisted.ensureDeferred
async def test_formats_and_sorting(
    servers: Servers,
    store: IndicatorStore,
    params: dict[str, Any],
    query: str,
    expected: str,
) -> None:
    served = servers.start("export-indicators", params, store)
    response, body = await fetch(served, query.replace(" ", "%20"))
    assert response.code == 200, body
    assert body == expected


@pytest_twisted.ensureDeferred
async def test_json_formats(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start("export-indicators", {}, store)
    document = {
        "value": "192.0.2.1",
        "indicator_type": "IP",
        "score": 2,
        "tags": ["c2"],
        "sourceBrands": ["Feed A"],
        "firstSeen": STAMP,
        "lastSeen": STAMP,
        "expiration": None,
        "CustomFields": {},
    }
    minemeld = {
        "indicator": "192.0.2.1",
        "value": {k: v for k, v in document.items() if k != "value"},
    }

    response, body = await fetch(served, "v=json&q=type:IP&n=1")
    assert header(response, "content-type") == "application/json"
    assert json.loads(body) == [minemeld]
    response, body = await fetch(served, "v=json-seq&q=type:IP")
    assert header(response, "content-type") == "application/json-seq"
    lines = body.split("\n")
    assert len(lines) == 2 and json.loads(lines[0]) == minemeld
    response, body = await fetch(served, "v=xsoar-json&q=type:IP&n=1")
    assert header(response, "content-type") == "application/json"
    assert json.loads(body) == [document]
    response, body = await fetch(served, "v=xsoar-seq&q=type:IP&n=1")
    assert json.loads(body) == document
    response, body = await fetch(served, "v=xsoar-csv&q=type:IP&n=1")
    assert header(response, "content-type") == "text/csv; charset=utf-8"
    assert body == (
        "value,indicator_type,score,tags,sourceBrands,firstSeen,lastSeen,expiration,"
        f'CustomFields\n"192.0.2.1","IP","2","[""c2""]","[""Feed A""]","{STAMP}",'
        f'"{STAMP}","",' + '"{}"'
    )
    response, body = await fetch(served, "v=xsoar-csv&q=type:IP&n=1&tx")
    assert header(response, "content-type") == "text/plain; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_headers_and_errors(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start(
        "export-indicators", {"cache_refresh_rate": "2 hours"}, store
    )
    response, _ = await fetch(served)
    assert header(response, "x-exportindicators-size") == "4"
    assert header(response, "x-exportindicators-origin-size") == "4"
    assert header(response, "x-exportindicators-created").endswith("Z")
    assert header(response, "cache-control") == "max-age=7200"
    response, body = await fetch(served, "sf=colour")
    assert response.code == 400
    assert body == (
        "Argument 'sf' names an unknown sort field 'colour'. Accepted values: value, "
        "type, score, firstSeen, lastSeen, expiration.\n"
    )
    response, body = await fetch(served, "v=PAN-OS")
    assert response.code == 400 and "'panosurl'" in body
