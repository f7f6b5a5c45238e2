"""
Feeds: checking the C{feeds:} entries, and pulling feeds from a local web
server with conditional requests, atomic replacement, expiry and failures.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from xsoar_lr.feeds import FeedConfig, FeedService, parse_feed
from xsoar_lr.indicators import IndicatorType, Score
from xsoar_lr.store import IndicatorStore, store_path


class FeedResource(Resource):
    """
    Serves one list, honouring If-None-Match and If-Modified-Since, and
    records the requests it got.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.etag = '"v1"'
        self.last_modified = "Wed, 01 Jan 2026 00:00:00 GMT"
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        self.credentials: tuple[str, str] | None = None

    def render_GET(self, request: Any) -> bytes:
        headers = {
            k.decode().lower(): v[0].decode()
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(headers)
        if self.credentials is not None:
            expected = (
                "Basic "
                + base64.b64encode(":".join(self.credentials).encode()).decode()
            )
            if headers.get("authorization") != expected:
                request.setResponseCode(401)
                return b"unauthorised"
        if self.status != 200:
            request.setResponseCode(self.status)
            return b"failure"
        if headers.get("if-none-match") == self.etag or (
            "if-none-match" not in headers
            and headers.get("if-modified-since") == self.last_modified
        ):
            request.setResponseCode(304)
            return b""
        if self.etag:
            request.setHeader("ETag", self.etag)
        request.setHeader("Last-Modified", self.last_modified)
        return self.body


@pytest.fixture
def feed_server():
    from twisted.internet import reactor

    resource = FeedResource()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/list.txt"
    yield resource
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def make_service(tmp_path: Path, *feeds: FeedConfig) -> FeedService:
    from twisted.internet import reactor

    return FeedService(feeds, store_path(tmp_path), reactor)


def values(tmp_path: Path, query: str = "") -> set[str]:
    with IndicatorStore.open(store_path(tmp_path)) as store:
        return {i.value for i in store.search(query)}


# Checking entries


def check(entry: dict[str, Any]) -> tuple[FeedConfig | None, list[tuple[Any, str]]]:
    problems: list[tuple[Any, str]] = []
    feed = parse_feed(entry, lambda key, message: problems.append((key, message)))
    return feed, problems


def test_a_complete_feed_entry() -> None:
    feed, problems = check(
        {
            "name": "Feodo",
            "url": "https://feodotracker.example/blocklist.csv",
            "format": "csv",
            "interval": "15m",
            "type": "ip",
            "tags": ["botnet", "c2"],
            "score": "Malicious",
            "columns": {"value": "dst_ip", "tags": "malware"},
            "username": "reader",
            "password": "s3cret",
            "headers": {"X-Api-Key": "k3y"},
            "timeout": 30,
        }
    )
    assert problems == []
    assert feed == FeedConfig(
        name="Feodo",
        url="https://feodotracker.example/blocklist.csv",
        format="csv",
        interval=900.0,
        type=IndicatorType.IP,
        tags=("botnet", "c2"),
        score=Score.BAD,
        columns={"value": "dst_ip", "tags": "malware"},
        username="reader",
        password="s3cret",
        headers={"X-Api-Key": "k3y"},
        timeout=30.0,
    )
    assert "s3cret" not in repr(feed) and "k3y" not in repr(feed)


def test_every_problem_of_an_entry_is_reported_with_its_key() -> None:
    feed, problems = check(
        {
            "name": "",
            "url": "ftp://x.example/list",
            "format": "xml",
            "interval": "soon",
            "score": 7,
            "username": "u",
            "colour": "red",
        }
    )
    assert feed is None
    keys = [key for key, _ in problems]
    assert keys == ["colour", "name", "url", "format", "interval", "score", "password"]
    messages = dict(problems)
    assert "the settings are: name, url" in messages["colour"]
    assert "http:// or https://" in messages["url"]
    assert "'xml' is not a format" in messages["format"]
    assert "15m" in messages["interval"]
    assert "both username and password" in messages["password"]


def test_a_bad_header_value_is_not_repeated_in_the_message() -> None:
    feed, problems = check(
        {"name": "a", "url": "http://x.example/", "headers": {"X-Key": 12345}}
    )
    assert feed is None
    assert "12345" not in problems[0][1]


def test_a_feed_entry_must_be_a_mapping() -> None:
    assert check(["not", "a", "mapping"])[0] is None  # type: ignore[arg-type]


# Pulling


@pytest_twisted.ensureDeferred
async def test_a_pull_stores_the_list_and_then_asks_conditionally(
    tmp_path: Path, feed_server: FeedResource
) -> None:
    feed_server.body = b"# list\n192.0.2.1\nexample.com\nnodot\n"
    feed = FeedConfig(name="A", url=feed_server.url, tags=("feed",), score=Score.BAD)
    service = make_service(tmp_path, feed)
    try:
        report = await service.pull("A")
        assert (report.added, len(report.rejected)) == (2, 1)
        assert values(tmp_path, "tags:feed and score:3 and sourceBrands:A") == {
            "192.0.2.1",
            "example.com",
        }
        with IndicatorStore.open(store_path(tmp_path)) as store:
            generation = store.generation()

        assert await service.pull("A") is None
        assert feed_server.requests[-1]["if-none-match"] == '"v1"'
        assert feed_server.requests[-1]["if-modified-since"] == (
            "Wed, 01 Jan 2026 00:00:00 GMT"
        )
        assert service.states["A"].not_modified == 1
        with IndicatorStore.open(store_path(tmp_path)) as store:
            assert store.generation() == generation
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_changed_list_replaces_the_feed_and_expires_what_it_dropped(
    tmp_path: Path, feed_server: FeedResource
) -> None:
    with IndicatorStore.open(store_path(tmp_path)) as store:
        from xsoar_lr.indicators import Indicator

        store.add([Indicator("192.0.2.2", "IP")], source="manual")
    feed_server.body = b"192.0.2.1\n192.0.2.2\n"
    service = make_service(tmp_path, FeedConfig(name="A", url=feed_server.url))
    try:
        await service.pull("A")
        feed_server.body = b"192.0.2.3\n"
        feed_server.etag = '"v2"'
        report = await service.pull("A")
        assert (report.added, report.removed) == (1, 2)
        assert values(tmp_path) == {"192.0.2.2", "192.0.2.3"}
        assert values(tmp_path, "sourceBrands:A") == {"192.0.2.3"}
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_failing_feed_keeps_its_last_good_list(
    tmp_path: Path, feed_server: FeedResource
) -> None:
    feed_server.body = b"192.0.2.1\n"
    feed_server.etag = ""
    service = make_service(tmp_path, FeedConfig(name="A", url=feed_server.url))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await service.pull("A")

        feed_server.status = 503
        assert await service.pull("A") is None
        assert "answered HTTP 503" in service.states["A"].last_error

        feed_server.status = 200
        feed_server.last_modified = "Fri, 02 Jan 2026 00:00:00 GMT"
        feed_server.body = b"not utf-8 \xff\n"
        assert await service.pull("A") is None
        assert "is not UTF-8" in service.states["A"].last_error

        feed_server.last_modified = "Sat, 03 Jan 2026 00:00:00 GMT"
        feed_server.body = b"nodot\nalso bad\n"
        assert await service.pull("A") is None
        assert "none of its 2 values could be read" in service.states["A"].last_error

        assert values(tmp_path, "sourceBrands:A") == {"192.0.2.1"}
        assert service.states["A"].pulls == 4
        warnings = [
            e for e in events if "Feed {feed} failed" in e.get("log_format", "")
        ]
        assert len(warnings) == 3
    finally:
        globalLogPublisher.removeObserver(events.append)
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_or_oversized_feed_is_a_logged_failure(
    tmp_path: Path, feed_server: FeedResource
) -> None:
    from twisted.internet import reactor

    # A port that was just free: nothing listens there.
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    feed_server.body = b"192.0.2.1\n" * 100
    service = make_service(
        tmp_path,
        FeedConfig(name="gone", url=f"http://127.0.0.1:{number}/x", timeout=10),
        FeedConfig(name="big", url=feed_server.url, max_size=100),
    )
    try:
        assert await service.pull("gone") is None
        assert "could not be fetched" in service.states["gone"].last_error
        assert await service.pull("big") is None
        assert "more than 100 bytes" in service.states["big"].last_error
        assert values(tmp_path) == set()
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_credentials_are_sent_and_never_logged(
    tmp_path: Path, feed_server: FeedResource
) -> None:
    feed_server.credentials = ("reader", "pa55word")
    feed_server.body = b"192.0.2.9\n"
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    service = make_service(
        tmp_path,
        FeedConfig(
            name="A", url=feed_server.url, username="reader", password="pa55word"
        ),
        FeedConfig(name="B", url=feed_server.url, username="reader", password="wrong"),
    )
    try:
        assert (await service.pull("A")).added == 1
        assert await service.pull("B") is None
        assert "HTTP 401" in service.states["B"].last_error
    finally:
        globalLogPublisher.removeObserver(events.append)
        await service.stopService()
    from twisted.logger import formatEvent

    text = " ".join(formatEvent(e) for e in events)
    assert "pa55word" not in text and "wrong" not in text


@pytest_twisted.ensureDeferred
async def test_the_service_pulls_each_feed_when_started_and_on_its_interval(
    tmp_path: Path, feed_server: FeedResource
) -> None:
    from twisted.internet import reactor

    feed_server.body = b"192.0.2.1\n"
    feed_server.etag = ""
    service = make_service(
        tmp_path, FeedConfig(name="A", url=feed_server.url, interval=1.0)
    )
    service.startService()
    try:
        deadline = time.monotonic() + 20
        while service.states["A"].pulls < 2:
            assert time.monotonic() < deadline, "the feed was not pulled twice"
            await task.deferLater(reactor, 0.05, lambda: None)
        assert values(tmp_path) == {"192.0.2.1"}
        # The second pull was conditional, on Last-Modified.
        assert "if-modified-since" in feed_server.requests[1]
    finally:
        await service.stopService()
    assert service._calls == {}
    assert not service.running


def test_feed_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeated: \\['A'\\]"):
        make_service(
            tmp_path,
            FeedConfig(name="A", url="http://x.example/"),
            FeedConfig(name="A", url="http://y.example/"),
        )
