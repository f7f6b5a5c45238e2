"""
Feeds: remote indicator lists that the host pulls on a schedule.

The C{feeds:} section of the configuration lists them; L{parse_feed} checks
one entry and L{FeedService} pulls each feed on its interval with treq. A
pull sends the ETag and Last-Modified of the previous answer, so an
unchanged list costs a C{304 Not Modified} and nothing else; a changed list
replaces the feed's whole contribution to the indicator store in one
transaction, which also expires the values the feed no longer lists. A
failing pull (network error, an HTTP error status, a file that cannot be
read) is logged with the reason, and the feed keeps its last good
contribution.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from xsoar_lr.importers import FORMATS, FormatError, ImportOptions, parse
from xsoar_lr.indicators import IndicatorType, Score, parse_score, parse_type
from xsoar_lr.store import ImportReport, IndicatorStore

__all__ = ["FeedConfig", "FeedService", "FeedState", "parse_feed"]

log = Logger()

_NAME_RE = re.compile(r"^[^\x00-\x1f]{1,200}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

#: The smallest interval between two pulls of a feed, in seconds.
MINIMUM_INTERVAL = 1.0


@attrs.frozen
class FeedConfig:
    """
    One feed of the configuration.

    :ivar name: the feed's name; its indicators are stored under it as
        their source (XSOAR's C{sourceBrands}).
    :ivar url: the C{http} or C{https} URL of the list.
    :ivar format: C{text}, C{csv}, C{json} or C{stix}; C{None} guesses it
        from the URL and the first bytes.
    :ivar interval: seconds between the end of one pull and the next.
    :ivar type: a type hint every value must fit, or C{None}.
    :ivar tags: tags given to every indicator of the feed.
    :ivar score: the score of indicators whose file gives none.
    :ivar columns: the CSV column mapping (field to column name).
    :ivar username: the user name for HTTP Basic authentication.
    :ivar password: its password; never logged or shown.
    :ivar headers: extra request headers (an API key, say); their values
        are never logged or shown.
    :ivar timeout: seconds a pull may take before it is abandoned.
    :ivar max_size: the largest answer accepted, in bytes.
    """

    name: str
    url: str
    format: str | None = None
    interval: float = 3600.0
    type: IndicatorType | None = None
    tags: tuple[str, ...] = ()
    score: Score = Score.UNKNOWN
    columns: Mapping[str, str] = attrs.field(factory=dict)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    timeout: float = 120.0
    max_size: int = 256 * 1024 * 1024

    def import_options(self) -> ImportOptions:
        """
        The options its files are read with.
        """
        return ImportOptions(
            name=f"feed {self.name!r}",
            type=self.type,
            tags=list(self.tags),  # type: ignore[arg-type]
            score=self.score,
            columns=dict(self.columns),
        )

    def safe_url(self) -> str:
        """
        The URL without user information and query, fit for logs.
        """
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


_KEYS = (
    "name",
    "url",
    "format",
    "interval",
    "type",
    "tags",
    "score",
    "columns",
    "username",
    "password",
    "headers",
    "timeout",
    "max_size",
)


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(  # noqa: TRY004 (reported as a configuration problem)
            "expected a number of seconds or a duration such as 15m"
        )
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION_RE.match(str(value))
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; write seconds (900) or a number with "
            "s, m, h or d (15m, 1h)"
        )
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def parse_feed(
    entry: Mapping[str, Any], report: Callable[[str | None, str], None]
) -> FeedConfig | None:
    """
    Check one entry of the C{feeds:} list and build its L{FeedConfig}.

    Every problem is passed to C{report(key, message)} (C{key} is C{None}
    for a problem with the entry as a whole); the configuration loader adds
    the file and line.

    :returns: the feed, or C{None} when the entry has any problem.
    """
    if not isinstance(entry, Mapping):
        report(None, "A feed must be a mapping with at least name and url.")
        return None
    problems = 0

    def problem(key: str | None, message: str) -> None:
        nonlocal problems
        problems += 1
        report(key, message)

    for key in entry:
        if key not in _KEYS:
            problem(
                str(key),
                f"{key!r} is not a feed setting; the settings are: {', '.join(_KEYS)}.",
            )

    values: dict[str, Any] = {}
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name) or not name.strip():
        problem("name", "Every feed needs a name: a line of text, unique among feeds.")
    else:
        values["name"] = name.strip()

    url = entry.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        problem("url", "The feed url must be an http:// or https:// URL.")
    elif not urlsplit(url).hostname:
        problem("url", f"The feed url {url!r} has no host name.")
    else:
        values["url"] = url

    readers: dict[str, Callable[[Any], Any]] = {
        "format": _format,
        "interval": _interval,
        "type": lambda v: parse_type(str(v)),
        "tags": _tags,
        "score": parse_score,
        "columns": _columns,
        "username": _text,
        "password": _text,
        "headers": _headers,
        "timeout": _positive,
        "max_size": _size,
    }
    for key, reader in readers.items():
        if entry.get(key) is None:
            continue
        try:
            values[key] = reader(entry[key])
        except ValueError as e:
            message = str(e).rstrip(".")
            if key in ("password", "headers"):
                message = message.replace(str(entry[key]), "(hidden)")
            problem(key, f"Feed setting {key!r}: {message}.")

    if ("username" in values) != ("password" in values):
        problem(
            "username" if "username" not in values else "password",
            "Give both username and password for a feed, or neither.",
        )
    if problems:
        return None
    return FeedConfig(**values)


def _format(value: Any) -> str:
    if value not in FORMATS:
        raise ValueError(f"{value!r} is not a format; use one of {', '.join(FORMATS)}")
    return str(value)


def _interval(value: Any) -> float:
    seconds = _duration(value)
    if seconds < MINIMUM_INTERVAL:
        raise ValueError(f"the interval must be at least {MINIMUM_INTERVAL:g} second")
    return seconds


def _positive(value: Any) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError("expected a positive number of seconds")
    return seconds


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a positive number of bytes")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of tags")  # noqa: TRY004
    tags = tuple(str(tag).strip() for tag in value if str(tag).strip())
    for tag in tags:
        if any(ord(c) < 32 for c in tag):
            raise ValueError(f"the tag {tag!r} contains a control character")
    return tags


def _columns(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected a mapping of field names to CSV column names")
    return dict(value)


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected a mapping of header names to values")
    return dict(value)


@attrs.define
class FeedState:
    """
    How a feed has fared since the service started.

    :ivar pulls: pulls finished, successful or not.
    :ivar last_report: what the last list that changed the store did.
    :ivar last_error: why the last pull failed, or C{None} after a success.
    :ivar not_modified: how many pulls were answered 304 Not Modified.
    :ivar etag: the ETag of the last list stored.
    :ivar last_modified: the Last-Modified of the last list stored.
    :ivar last_success: when (C{time.time()}) a pull last succeeded.
    """

    pulls: int = 0
    last_report: ImportReport | None = None
    last_error: str | None = None
    not_modified: int = 0
    etag: str | None = None
    last_modified: str | None = None
    last_success: float | None = None


class _FeedFailed(Exception):
    """
    A pull failed for a reason that is already a full sentence.
    """


class FeedService(Service):
    """
    Pulls every configured feed on its interval into the indicator store.

    The first pull of each feed starts when the service starts; each next
    one is scheduled C{interval} seconds after the previous one ended, so
    pulls of one feed never overlap. Reading and storing run in the
    reactor's thread pool.
    """

    def __init__(
        self, feeds: Sequence[FeedConfig], store_path: Path | str, reactor: Any
    ) -> None:
        names = [feed.name for feed in feeds]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Feed names must be unique; repeated: {duplicates}.")
        self.feeds = {feed.name: feed for feed in feeds}
        self.states = {feed.name: FeedState() for feed in feeds}
        self.store_path = Path(store_path)
        self._reactor = reactor
        self._store: IndicatorStore | None = None
        self._calls: dict[str, Any] = {}
        self._running_pulls: dict[str, Deferred[Any]] = {}

    def startService(self) -> None:
        super().startService()
        self._open_store()
        log.info("Feed service started with {count} feeds", count=len(self.feeds))
        for name in self.feeds:
            self._schedule(name, 0)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        running = list(self._running_pulls.values())
        for pull in running:
            pull.cancel()
        from twisted.internet.defer import DeferredList

        done: Deferred[Any] = DeferredList(running, consumeErrors=True)

        def close(_: object) -> None:
            if self._store is not None:
                self._store.close()
                self._store = None
            log.info("Feed service stopped")

        return done.addCallback(close)

    def _open_store(self) -> IndicatorStore:
        if self._store is None:
            self._store = IndicatorStore.open(self.store_path)
        return self._store

    def _schedule(self, name: str, delay: float) -> None:
        self._calls[name] = self._reactor.callLater(delay, self._scheduled, name)

    def _scheduled(self, name: str) -> None:
        def again(_: object) -> None:
            if self.running:
                self._schedule(name, self.feeds[name].interval)

        self.pull(name).addBoth(again)

    def pull(self, name: str) -> Deferred[ImportReport | None]:
        """
        Pull one feed now (or join the pull under way). This works whether
        or not the service is running; L{stopService} closes the store.

        :returns: a Deferred that fires with what the pull did to the store,
            or C{None} when the list had not changed or the pull failed (the
            reason is logged and kept in L{FeedState.last_error}).
        """
        running = self._running_pulls.get(name)
        if running is not None:
            joined: Deferred[ImportReport | None] = Deferred()

            def share(result: Any) -> Any:
                joined.callback(result)
                return result

            running.addBoth(share)
            return joined
        pull = self._pull(self.feeds[name], self.states[name])
        self._running_pulls[name] = pull

        def finished(result: Any) -> Any:
            del self._running_pulls[name]
            return result

        return pull.addBoth(finished)

    @inlineCallbacks
    def _pull(self, feed: FeedConfig, state: FeedState) -> Any:
        started = time.monotonic()
        try:
            report = yield self._fetch_and_store(feed, state)
        except _FeedFailed as e:
            state.last_error = str(e)
            log.warn(  # noqa: G010 (Twisted's Logger)
                "Feed {feed} failed: {reason} Its last good list is kept.",
                feed=feed.name,
                reason=str(e),
                metric="feed_pull",
                result="failed",
            )
            report = None
        except Exception as e:
            from twisted.internet.defer import CancelledError

            if isinstance(e, CancelledError):
                raise
            state.last_error = f"{type(e).__name__}: {e}"
            log.failure(
                "Feed {feed} failed; its last good list is kept",
                feed=feed.name,
                metric="feed_pull",
                result="failed",
            )
            report = None
        else:
            state.last_error = None
            state.last_success = time.time()
        state.pulls += 1
        log.debug(
            "Feed {feed} pull took {seconds:.2f} s",
            feed=feed.name,
            seconds=time.monotonic() - started,
        )
        return report

    @inlineCallbacks
    def _fetch_and_store(self, feed: FeedConfig, state: FeedState) -> Any:
        import treq
        from twisted.internet.threads import deferToThreadPool

        headers = {key: [value] for key, value in feed.headers.items()}
        if state.etag:
            headers["If-None-Match"] = [state.etag]
        if state.last_modified:
            headers["If-Modified-Since"] = [state.last_modified]
        auth = (feed.username, feed.password) if feed.username else None
        client = _client(self._reactor)
        try:
            response = yield client.get(
                feed.url, headers=headers, auth=auth, timeout=feed.timeout
            )
        except Exception as e:
            raise _FeedFailed(
                f"{feed.safe_url()} could not be fetched ({type(e).__name__}: {e})."
            ) from e

        if response.code == 304:
            yield treq.content(response)
            state.not_modified += 1
            log.info(
                "Feed {feed} has not changed",
                feed=feed.name,
                metric="feed_pull",
                result="unchanged",
            )
            return None
        if not 200 <= response.code < 300:
            yield treq.content(response)
            raise _FeedFailed(
                f"{feed.safe_url()} answered HTTP {response.code} "
                f"{response.phrase.decode('latin-1', 'replace')}."
            )
        body = yield _read_limited(response, feed.max_size, feed)

        def store_it() -> ImportReport:
            parsed = parse(body, feed.format, feed.import_options())
            if not parsed.indicators and parsed.rejected:
                first = parsed.rejected[0]
                raise _FeedFailed(
                    f"none of its {len(parsed.rejected)} values could be read "
                    f"(line {first.line}: {first.reason}); check the feed's "
                    "format and type."
                )
            report = self._open_store().replace_source(feed.name, parsed.indicators)
            report.rejected[:0] = parsed.rejected
            return report

        try:
            report = yield deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), store_it
            )
        except FormatError as e:
            raise _FeedFailed(str(e)) from e
        state.etag = _header(response, b"etag")
        state.last_modified = _header(response, b"last-modified")
        state.last_report = report
        log.info(
            "Feed {feed} pulled: {summary}",
            feed=feed.name,
            summary=report.summary(),
            metric="feed_pull",
            result="changed",
        )
        for reject in report.rejected[:20]:
            log.debug(
                "Feed {feed} line {line}: {reason}",
                feed=feed.name,
                line=reject.line,
                reason=reject.reason,
            )
        return report


def _client(reactor: Any) -> Any:
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    # A fresh connection per pull: pulls are minutes apart, and a pool
    # would keep idle sockets open between them.
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent: Any = Agent(reactor, pool=pool)
    return HTTPClient(agent)


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _read_limited(response: Any, limit: int, feed: FeedConfig) -> Deferred[bytes]:
    import treq

    parts: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            # treq closes the connection when the collector raises.
            raise _FeedFailed(
                f"{feed.safe_url()} sent more than {limit} bytes (max_size); "
                "raise the feed's max_size if the list is really that large."
            )
        parts.append(data)

    done: Deferred[Any] = treq.collect(response, collect)
    return done.addCallback(lambda _: b"".join(parts))
