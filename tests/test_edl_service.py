"""
The EDL integration served over real sockets from a real indicator store:
every parameter and URL argument with exact bodies, errors, authentication,
conditional requests, gzip, HEAD, caching and shared builds, and C{/log}.
"""

from __future__ import annotations

import base64
import gzip
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_lists_support import (
    Servers,
    T,
    body_of,
    header,
    indicator,
    open_store,
    raw_request,
)
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from xsoar_lr.store import IndicatorStore

INDICATORS = [
    indicator(
        "https://bad.example.com:8443/p?a=1",
        T.URL,
        sources=("Feed A",),
        custom_fields={"proxysgcategory": "malware_sites"},
    ),
    indicator("*.evil.example", T.DOMAIN_GLOB),
    indicator("198.51.100.1", T.IP),
    indicator("198.51.100.2", T.IP),
    indicator("198.51.100.3", T.IP),
    indicator("203.0.113.0/24", T.CIDR),
    indicator("10.0.0.0/7", T.CIDR),
    indicator("2001:db8::1", T.IPV6),
    indicator("2001:db8::2", T.IPV6),
    indicator("*.co.uk", T.DOMAIN_GLOB),
    indicator("bücher.example", T.DOMAIN),
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


async def fetch(
    served: Any, query: str = "", path: str = "", **kwargs: Any
) -> tuple[Any, str]:
    response = await served.get(query, path, **kwargs)
    return response, (await body_of(response)).decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_default_list_and_headers(
    servers: Servers, store: IndicatorStore
) -> None:
    served = servers.start("edl", {}, store)
    response, body = await fetch(served)
    assert response.code == 200
    assert body == (
        "co.uk\n*.co.uk\nevil.example\n*.evil.example\n198.51.100.1\n198.51.100.2\n"
        "198.51.100.3\n2001:db8::1\n2001:db8::2\n203.0.113.0/24\nbad.example.com/p?a=1\n"
        "bücher.example"
    )
    assert header(response, "content-type") == "text/plain; charset=utf-8"
    assert header(response, "cache-control") == "max-age=1800"
    assert header(response, "x-edl-size") == "12"
    assert header(response, "x-edl-origin-size") == "11"
    assert (
        header(response, "etag").startswith('"') and len(header(response, "etag")) == 42
    )
    assert header(response, "last-modified").endswith(" GMT")
    assert header(response, "x-edl-created").endswith("Z")
    assert float(header(response, "x-edl-query-time-secs")) >= 0
    assert response.length == len(body.encode())


# Each case: instance parameters, URL query, expected body.
CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"edl_size": 2}, "", "co.uk\n*.co.uk"),
    ({}, "n=2", "co.uk\n*.co.uk"),
    ({}, "n=2&s=3", "*.evil.example\n198.51.100.1"),
    ({}, "q=type:IP", "198.51.100.1\n198.51.100.2\n198.51.100.3"),
    ({"indicators_query": "type:IP"}, "", "198.51.100.1\n198.51.100.2\n198.51.100.3"),
    (
        {"indicators_query": "type:IP", "collapse_ips": "To Ranges"},
        "",
        "198.51.100.1-198.51.100.3",
    ),
    ({"indicators_query": "type:IP"}, "tr=1", "198.51.100.1-198.51.100.3"),
    ({"indicators_query": "type:IP"}, "tr=2", "198.51.100.1\n198.51.100.2/31"),
    ({"collapse_ips": "To CIDRS"}, "q=type:IPv6&tr=2", "2001:db8::1\n2001:db8::2"),
    ({}, "q=type:IPv6&tr=1", "2001:db8::1-2001:db8::2"),
    ({}, "q=type:CIDR", "203.0.113.0/24"),
    ({}, "q=type:CIDR&mc=0", "10.0.0.0/7\n203.0.113.0/24"),
    ({"maximum_cidr_size": 25}, "q=type:CIDR", "# Empty List"),
    ({}, "q=type:CIDR&mc=25&ce=false", ""),
    ({"add_comment_if_empty": False}, "q=type:CIDR&mc=25", ""),
    ({"add_comment_if_empty": False}, "q=type:CIDR&mc=25&ce", "# Empty List"),
    ({}, "q=type:URL", "bad.example.com/p?a=1"),
    ({}, "q=type:URL&sp=false", "bad.example.com:8443/p?a=1"),
    ({"url_port_stripping": False}, "q=type:URL", "bad.example.com:8443/p?a=1"),
    ({}, "q=type:URL&pr=0", "https://bad.example.com/p?a=1"),
    ({"url_protocol_stripping": False}, "q=type:URL", "https://bad.example.com/p?a=1"),
    ({"url_port_stripping": False}, "q=type:URL&di", "# Empty List"),
    (
        {"url_port_stripping": False, "drop_invalids": True},
        "q=type:URL",
        "# Empty List",
    ),
    ({}, "q=type:DomainGlob", "co.uk\n*.co.uk\nevil.example\n*.evil.example"),
    ({}, "q=type:DomainGlob&nt", "evil.example\n*.evil.example"),
    ({"no_wildcard_tld": True}, "q=type:DomainGlob", "evil.example\n*.evil.example"),
    ({}, "q=type:Domain", "bücher.example"),
    ({"enforce_ascii": True}, "q=type:Domain", "# Empty List"),
    (
        {"prepend_string": "# start\\n# two", "append_string": "# end"},
        "q=type:IP&n=1",
        "# start\n# two\n198.51.100.1\n# end",
    ),
    (
        {},
        "q=type:IP&v=JSON",
        (
            '[{"value": "198.51.100.1", "indicator_type": "IP"}, {"value": "198.51.100.2", '
            '"indicator_type": "IP"}, {"value": "198.51.100.3", "indicator_type": "IP"}]'
        ),
    ),
    (
        {"format": "JSON"},
        "q=type:IP&n=1",
        '[{"value": "198.51.100.1", "indicator_type": "IP"}]',
    ),
    ({}, "q=type:IP&v=json&s=2", '[{"value": "198.51.100.3", "indicator_type": "IP"}]'),
    (
        {},
        "q=type:CIDR&mc=25&v=json",
        (
            '[{"value": "10.0.0.0/7", "indicator_type": "CIDR"}, '
            '{"value": "203.0.113.0/24", "indicator_type": "CIDR"}]'
        ),
    ),
    ({}, "q=type:Domain and value:nothing*&v=json", "[]"),
    (
        {},
        "q=type:URL&v=json&fi=value,sourceBrands,proxysgcategory",
        (
            '[{"value": "bad.example.com/p?a=1", "sourceBrands": ["Feed A"], '
            '"proxysgcategory": "malware_sites"}]'
        ),
    ),
    (
        {"fields_filter": "name"},
        "q=type:URL&v=JSON",
        '[{"value": "bad.example.com/p?a=1"}]',
    ),
    ({}, "q=type:IP&v=CSV&n=2", 'name,type\n"198.51.100.1","IP"\n"198.51.100.2","IP"'),
    (
        {"format": "CSV", "fields_filter": "value,score"},
        "q=type:IP&n=1",
        'value,score\n"198.51.100.1","0"',
    ),
    ({}, "q=type:URL&v=csv&fi=value&ut", 'value\n"bad.example.com/p?a=1"'),
    (
        {},
        "q=type:URL OR type:IPv6&v=mwg",
        (
            'type=string\n"2001:db8::1" "Feed A"\n"2001:db8::2" "Feed A"\n'
            '"bad.example.com/p?a=1" "Feed A"'
        ),
    ),
    (
        {},
        "q=type:IPv6&v=McAfee Web Gateway&t=ip&n=1",
        'type=ip\n"2001:db8::1" "Feed A"',
    ),
    (
        {"format": "McAfee Web Gateway", "mwg_type": "regex"},
        "q=type:IPv6&n=1",
        'type=regex\n"2001:db8::1" "Feed A"',
    ),
    (
        {},
        "q=type:URL OR type:IP&v=proxysg",
        (
            "define category bc_category\n198.51.100.1\n198.51.100.2\n198.51.100.3\nend\n"
            "define category malware_sites\nbad.example.com/p?a=1\nend"
        ),
    ),
    (
        {},
        "q=type:URL OR type:IP&v=bluecoat&cd=other&ca=none&n=2",
        "define category other\n198.51.100.1\n198.51.100.2\nend",
    ),
    (
        {
            "format": "Symantec ProxySG",
            "category_default": "dflt",
            "category_attribute": "malware_sites",
        },
        "q=type:URL OR type:IP&s=2",
        (
            "define category dflt\n198.51.100.3\nend\ndefine category malware_sites\n"
            "bad.example.com/p?a=1\nend"
        ),
    ),
    ({}, "q=type:URL&ut=1", "bad.example.com/p?a=1"),
]


@pytest.mark.parametrize("params, query, expected", CASES)
@pytest_twisted.ensureDeferred
async def test_parameters_and_arguments(
    servers: Servers,
    store: IndicatorStore,
    params: dict[str, Any],
    query: str,
    expected: str,
) -> None:
    served = servers.start("edl", params, store)
    response, body = await fetch(served, query.replace(" ", "%20"))
    assert response.code == 200, body
    assert body == expected


@pytest_twisted.ensureDeferred
async def test_url_truncation(servers: Servers, tmp_path: Path) -> None:
    long_url = "https://long.example/" + "x" * 300
    store = open_store(tmp_path / "long", [indicator(long_url, T.URL)])
    try:
        served = servers.start("edl", {}, store)
        _, body = await fetch(served)
        assert body == long_url[len("https://") :]
        _, body = await fetch(served, "ut")
        assert body == long_url[len("https://") :][:254]
        _, body = await fetch(served, "di")
        assert body == "# Empty List"
        served = servers.start("edl", {"url_truncate": True}, store, name="other")
        _, body = await fetch(served, "di")
        assert len(body) == 254
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_content_types(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start("edl", {}, store)
    for query, expected in [
        ("v=JSON", "application/json"),
        ("v=CSV", "text/csv; charset=utf-8"),
        ("v=CSV&tx", "text/plain; charset=utf-8"),
        ("v=mwg", "text/plain; charset=utf-8"),
        ("v=proxysg", "text/plain; charset=utf-8"),
    ]:
        response, _ = await fetch(served, query)
        assert header(response, "content-type") == expected, query
    served = servers.start(
        "edl", {"format": "CSV", "csv_text": True}, store, name="csv"
    )
    response, _ = await fetch(served)
    assert header(response, "content-type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "query, message",
    [
        ("n=ten", "Argument 'n' must be a whole number of at least 0, not 'ten'.\n"),
        ("s=-1", "Argument 's' must be a whole number of at least 0, not '-1'.\n"),
        ("mc=x", "Argument 'mc' must be a whole number of at least 0, not 'x'.\n"),
        (
            "sp=maybe",
            (
                "Argument 'sp' must be a flag, not 'maybe'. Accepted values: no value "
                "(as in '?sp'), true, 1, yes or on to turn it on; false, 0, no or off to turn it "
                "off.\n"
            ),
        ),
        (
            "tr=4",
            (
                "Argument 'tr' must be 0 (Don't Collapse), 1 (To Ranges) or 2 (To CIDRS), "
                "or one of those names, not '4'.\n"
            ),
        ),
        (
            "t=words",
            (
                "Argument 't' must be a McAfee Web Gateway list type, not 'words'. "
                "Accepted values: string, applcontrol, dimension, category, ip, mediatype, "
                "number, regex.\n"
            ),
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_arguments_get_400(
    servers: Servers, store: IndicatorStore, query: str, message: str
) -> None:
    served = servers.start("edl", {}, store)
    response, body = await fetch(served, query)
    assert response.code == 400
    assert header(response, "content-type") == "text/plain; charset=utf-8"
    assert body == message


@pytest_twisted.ensureDeferred
async def test_bad_format_and_query_get_400(
    servers: Servers, store: IndicatorStore
) -> None:
    served = servers.start("edl", {}, store)
    response, body = await fetch(served, "v=xml")
    assert response.code == 400
    assert body.startswith(
        "Argument 'v' names an unknown format 'xml'. Accepted values: "
    )
    assert "'bluecoat'" in body
    response, body = await fetch(served, "q=type:(")
    assert response.code == 400
    assert body.startswith("Argument 'q' is not a valid indicator query: ")


@pytest_twisted.ensureDeferred
async def test_other_paths_and_methods(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start("edl", {}, store)
    response, _ = await fetch(served, path="nothing")
    assert response.code == 404
    response, _ = await fetch(served, path="log/more")
    assert response.code == 404
    for path in ("", "log"):
        response, body = await fetch(served, path=path, method="POST")
        assert response.code == 405
        assert header(response, "allow") == "GET, HEAD"
        assert body == "Method POST is not allowed; lists are read with GET or HEAD.\n"


# -- authentication ----------------------------------------------------------

CREDENTIALS = {"credentials": {"identifier": "user", "password": "p:w:d"}}


def basic(user: str, password: str) -> dict[str, list[str]]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": [f"Basic {token}"]}


@pytest_twisted.ensureDeferred
async def test_authentication(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start("edl", CREDENTIALS, store)
    for headers in (
        None,
        basic("user", "p"),
        basic("user", "p:w"),
        basic("other", "p:w:d"),
        {"Authorization": ["Basic !!notbase64"]},
        {"Authorization": ["Bearer abc"]},
    ):
        for path in ("", "log"):
            response, body = await fetch(served, "", path, headers=headers)
            assert response.code == 401, (headers, path)
            assert (
                header(response, "www-authenticate") == 'Basic realm="Login Required"'
            )
            assert body == (
                "Basic authentication failed. Make sure you are using the right "
                "credentials.\n"
            )
    response, body = await fetch(
        served, "q=type:IP&n=1", headers=basic("user", "p:w:d")
    )
    assert (response.code, body) == (200, "198.51.100.1")
    response, _ = await fetch(served, path="log", headers=basic("user", "p:w:d"))
    assert response.code == 200
    response = await served.get(method="HEAD")
    assert response.code == 401


# -- caching -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_conditional_requests(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start("edl", {}, store)
    first, body = await fetch(served)
    etag = header(first, "etag")
    modified = header(first, "last-modified")

    response, again = await fetch(served, headers={"If-None-Match": [etag]})
    assert (response.code, again) == (304, "")
    assert header(response, "etag") == etag
    assert header(response, "cache-control") == "max-age=1800"
    response, _ = await fetch(served, headers={"If-None-Match": [f'"x", W/{etag}']})
    assert response.code == 304
    response, _ = await fetch(served, headers={"If-None-Match": ["*"]})
    assert response.code == 304
    response, again = await fetch(served, headers={"If-None-Match": ['"other"']})
    assert (response.code, again) == (200, body)
    response, _ = await fetch(served, headers={"If-Modified-Since": [modified]})
    assert response.code == 304
    response, _ = await fetch(
        served, headers={"If-Modified-Since": ["Thu, 01 Jan 2015 00:00:00 GMT"]}
    )
    assert response.code == 200
    # If-None-Match wins over If-Modified-Since.
    response, _ = await fetch(
        served, headers={"If-None-Match": ['"other"'], "If-Modified-Since": [modified]}
    )
    assert response.code == 200
    response, _ = await fetch(served, headers={"If-Modified-Since": ["garbage"]})
    assert response.code == 200

    # A change to the store is served at once, with a new tag.
    store.add([indicator("new.example", T.DOMAIN)], source="Feed B")
    response, changed = await fetch(served, headers={"If-None-Match": [etag]})
    assert response.code == 200
    assert "\nnew.example\n" in changed
    assert header(response, "etag") != etag


@pytest_twisted.ensureDeferred
async def test_gzip(servers: Servers, store: IndicatorStore) -> None:
    store.add(
        [indicator(f"host{i}.example", T.DOMAIN) for i in range(100)], source="Feed B"
    )
    served = servers.start("edl", {}, store)
    plain, body = await fetch(served)
    response = await served.get(headers={"Accept-Encoding": ["gzip, deflate"]})
    packed = await body_of(response)
    assert header(response, "content-encoding") == "gzip"
    assert header(response, "vary") == "Accept-Encoding"
    assert gzip.decompress(packed).decode() == body
    assert response.length == len(packed)
    assert header(response, "etag") == header(plain, "etag")[:-1] + '-gzip"'
    response, _ = await fetch(
        served,
        headers={
            "Accept-Encoding": ["gzip"],
            "If-None-Match": [header(response, "etag")],
        },
    )
    assert response.code == 304
    for refused in ("gzip;q=0", "identity", "br", "*;q=0"):
        response = await served.get(headers={"Accept-Encoding": [refused]})
        assert header(response, "content-encoding") is None, refused
        assert (await body_of(response)).decode() == body
    # Small lists are not worth compressing.
    response = await served.get("n=1", headers={"Accept-Encoding": ["gzip"]})
    assert header(response, "content-encoding") is None
    assert await body_of(response) == b"co.uk"


@pytest_twisted.ensureDeferred
async def test_head(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start("edl", {}, store)
    get, body = await fetch(served)
    response = await served.get(method="HEAD")
    assert response.code == 200
    assert await body_of(response) == b""
    raw = await raw_request(served, b"HEAD / HTTP/1.0\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == b""
    assert f"Content-Length: {len(body.encode())}".encode() in head.split(b"\r\n")
    assert header(response, "etag") == header(get, "etag")
    assert header(response, "x-edl-size") == "12"
    response = await served.get(
        method="HEAD", headers={"If-None-Match": [header(get, "etag")]}
    )
    assert response.code == 304
    response = await served.get("n=x", method="HEAD")
    assert response.code == 400


class CountingSearches:
    """
    Wraps a store, counting searches and optionally holding them until
    released.
    """

    def __init__(self, store: IndicatorStore) -> None:
        self.store = store
        self.searches = 0
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def search(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        self.searches += 1
        self.started.set()
        self.release.wait(10)
        return self.store.search(*args, **kwargs)

    def generation(self) -> int:
        return self.store.generation()


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = reactor.seconds() + seconds
    while not condition():
        assert reactor.seconds() < deadline, "the condition never came true"
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_share_one_build_and_others_are_served(
    servers: Servers, store: IndicatorStore
) -> None:
    counting = CountingSearches(store)
    served = servers.start("edl", {}, counting)  # type: ignore[arg-type]
    await fetch(served)  # a list whose log /log can show
    assert counting.searches == 1

    counting.release.clear()
    counting.started.clear()
    pending = [served.get("n=3") for _ in range(8)]
    await wait_for(counting.started.is_set)
    # The reactor is free while the build runs: the log is served meanwhile.
    response, log = await fetch(served, path="log")
    assert response.code == 200 and log.startswith("# Created new EDL at ")
    counting.release.set()
    results = await DeferredList(pending, consumeErrors=True)
    bodies = {(await body_of(r)).decode() for ok, r in results if ok}
    assert bodies == {"co.uk\n*.co.uk\nevil.example"}
    assert counting.searches == 2

    # Kept while fresh: no third search.
    await fetch(served, "n=3")
    await fetch(served)
    assert counting.searches == 2
    # nocache builds anew.
    await fetch(served, "n=3&nocache")
    assert counting.searches == 3


@pytest_twisted.ensureDeferred
async def test_refresh_rate_expiry(servers: Servers, store: IndicatorStore) -> None:
    counting = CountingSearches(store)
    served = servers.start("edl", {"cache_refresh_rate": "1 second"}, counting)  # type: ignore[arg-type]
    first, _ = await fetch(served)
    assert header(first, "cache-control") == "max-age=1"
    created = reactor.seconds()
    await wait_for(lambda: reactor.seconds() - created > 1.05, seconds=3)
    await fetch(served)
    assert counting.searches == 2


@pytest_twisted.ensureDeferred
async def test_build_log(servers: Servers, store: IndicatorStore) -> None:
    served = servers.start(
        "edl", {"url_port_stripping": False, "drop_invalids": True}, store
    )
    response, log = await fetch(served, path="log")
    assert log == "# No list has been built yet.\n"
    await fetch(served, "mc=8")
    response, log = await fetch(served, path="log")
    assert response.code == 200
    assert header(response, "content-type") == "text/plain; charset=utf-8"
    lines = log.split("\n")
    assert lines[0].startswith("# Created new EDL at ")
    assert lines[2].startswith(
        "## Configuration Arguments: {'query': '', 'size': 2500,"
    )
    assert lines[4] == (
        "## EDL stats: 11 indicators in total, 0 modified, 2 dropped, 11 added."
    )
    assert lines[6] == "Action | Indicator | Raw Indicator | Reason"
    assert "Dropped |  | 10.0.0.0/7 | CIDR exceeds max length 8." in lines
    assert (
        "Dropped |  | https://bad.example.com:8443/p?a=1 | Invalid tokens or port."
        in lines
    )
    assert "Added | co.uk | *.co.uk | The domain of a wildcard entry." in lines
    assert "Added | 198.51.100.1 | 198.51.100.1 | Found new IP." in lines
    raw = await raw_request(served, b"HEAD /log HTTP/1.0\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and rest == b""
    assert f"Content-Length: {len(log.encode())}".encode() in head.split(b"\r\n")


@pytest_twisted.ensureDeferred
async def test_failed_build_is_a_plain_500(
    servers: Servers, store: IndicatorStore
) -> None:
    class Broken:
        def search(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            raise OSError("disk on fire")

        def generation(self) -> int:
            return 1

    served = servers.start("edl", {}, Broken())  # type: ignore[arg-type]
    response, body = await fetch(served)
    assert response.code == 500
    assert (
        body == "The list could not be built: disk on fire. See the instance's log.\n"
    )
    flushed = pytest_twisted  # the failure is logged, not raised
    assert flushed is not None


@pytest_twisted.ensureDeferred
async def test_lists_are_evicted_and_their_files_removed(
    servers: Servers, store: IndicatorStore
) -> None:
    served = servers.start("edl", {}, store)
    lists = served.resource.source._directory
    for size in range(1, 21):
        response, body = await fetch(served, f"n={size}")
        assert response.code == 200
    # Sixteen lists are kept, each a body and a log.
    assert len(list(lists.glob("list-*.body"))) == 16
    assert len(list(lists.glob("list-*.log"))) == 16
    store.add([indicator("new.example", T.DOMAIN)], source="Feed B")
    response, body = await fetch(served, "n=20")
    assert "new.example" in body.split("\n")
    assert len(list(lists.glob("list-*.body"))) == 16


@pytest_twisted.ensureDeferred
async def test_builds_are_bounded_and_cached_lists_stay_available(
    servers: Servers, store: IndicatorStore
) -> None:
    counting = CountingSearches(store)
    served = servers.start("edl", {}, counting)  # type: ignore[arg-type]
    response, cached = await fetch(served, "n=1")
    assert cached == "co.uk"

    counting.release.clear()
    pending = [served.get(f"n={size}") for size in (2, 3, 4, 5)]
    await wait_for(lambda: counting.searches == 3)
    # Two builds hold threads; the others wait, and the cached list is
    # answered meanwhile.
    response, body = await fetch(served, "n=1")
    assert (response.code, body) == (200, "co.uk")
    assert counting.searches == 3
    counting.release.set()
    results = await DeferredList(pending, consumeErrors=True)
    assert [r.code for ok, r in results if ok] == [200, 200, 200, 200]
    assert counting.searches == 5
