"""
The web resource that serves a list: C{/} is the list, C{/log} what its
last build did.

Every request is answered from a built file (see L{integrations.lists.cache}),
streamed with a producer so memory stays flat whatever the list's size, with
C{ETag}, C{Last-Modified} and C{Cache-Control} for conditional requests and
a gzip copy for clients that accept one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from integrations.lists.auth import FAILURE_BODY, REALM, BasicCredentials
from integrations.lists.build import BuiltList
from integrations.lists.settings import (
    ArgumentError,
    Flavour,
    ListSettings,
    apply_arguments,
)

__all__ = ["ListResource", "ListSource"]

#: Bodies shorter than this are never compressed (as nginx's gzip_min_length).
GZIP_MIN_LENGTH = 512


class ListSource(Protocol):
    """
    Where a resource gets built lists from (L{ListCache} or L{OnDemandList}).
    """

    latest: BuiltList | None

    def get(
        self, settings: ListSettings, *, rebuild: bool = False
    ) -> Deferred[BuiltList]:
        """
        The built list for C{settings}.
        """

    def gzipped(self, built: BuiltList) -> Deferred[Path]:
        """
        The gzip copy of C{built}.
        """


@implementer(IPullProducer)
class _FileProducer:
    """
    Sends a whole open file to a request, a piece each time the connection
    asks for more, then finishes the request and closes the file. Nothing
    but the piece in flight is held in memory.
    """

    piece_size = 1 << 20

    def __init__(self, request: Request, body: Any) -> None:
        self._request: Request | None = request
        self._body = body

    def start(self) -> None:
        """
        Start sending.
        """
        assert self._request is not None
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        request = self._request
        if request is None:
            return
        data = self._body.read(self.piece_size)
        if data:
            request.write(data)
            return
        request.unregisterProducer()
        request.finish()
        self.stopProducing()

    def stopProducing(self) -> None:
        self._body.close()
        self._request = None


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    body = (text.rstrip("\n") + "\n").encode("utf-8")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    return b"" if request.method == b"HEAD" else body


def _only_get(request: Request) -> bytes | None:
    """
    Answer 405 to anything but GET and HEAD (as plain text, rather than
    Twisted's HTML page).
    """
    if request.method in (b"GET", b"HEAD"):
        return None
    request.setHeader(b"allow", b"GET, HEAD")
    return _plain(
        request,
        http.NOT_ALLOWED,
        f"Method {request.method.decode('ascii', 'replace')} is not allowed; "
        "lists are read with GET or HEAD.",
    )


def _accepts_gzip(header: bytes | None) -> bool:
    if not header:
        return False
    found: dict[str, float] = {}
    for item in header.decode("latin-1").split(","):
        name, _, rest = item.strip().partition(";")
        quality = 1.0
        for parameter in rest.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        found[name.strip().lower()] = quality
    for name in ("gzip", "x-gzip"):
        if name in found:
            return found[name] > 0
    return found.get("*", 0.0) > 0


def _etag_matches(header: bytes, etag: str) -> bool:
    for tag in header.decode("latin-1").split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag == etag:
            return True
    return False


def _not_modified(request: Request, etag: str, last_modified: int) -> bool:
    """
    Whether the client's copy is current (RFC 9110 section 13.2.2: when
    C{If-None-Match} is present, C{If-Modified-Since} is not consulted).
    """
    none_match = request.getHeader(b"if-none-match")
    if none_match is not None:
        return _etag_matches(none_match, etag)
    modified_since = request.getHeader(b"if-modified-since")
    if modified_since is None:
        return False
    try:
        since = http.stringToDatetime(modified_since)
    except (ValueError, IndexError, KeyError):
        return False
    return last_modified <= since


class _LogResource(Resource):
    """
    C{/log}: the heading and rows of the last build's log.
    """

    isLeaf = True

    def __init__(self, parent: ListResource) -> None:
        super().__init__()
        self._parent = parent

    def render(self, request: Request) -> bytes | int:
        refused = _only_get(request)
        return refused if refused is not None else super().render(request)

    def render_GET(self, request: Request) -> bytes | int:
        if not self._parent.authorized(request):
            return self._parent.refuse(request)
        built = self._parent.source.latest
        if built is None:
            return _plain(request, http.OK, "# No list has been built yet.")
        try:
            # Closed by the producer once sent (or below, for HEAD).
            rows = open(built.log_rows, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return _plain(
                request,
                http.SERVICE_UNAVAILABLE,
                "The list was rebuilt while its log was being read; try again.",
            )
        header = built.log_header.encode("utf-8")
        length = len(header) + os.fstat(rows.fileno()).st_size
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-length", str(length).encode("ascii"))
        self._parent.informational_headers(request, built)
        if request.method == b"HEAD":
            rows.close()
            return b""
        request.write(header)
        _FileProducer(request, rows).start()
        return NOT_DONE_YET

    render_HEAD = render_GET


class ListResource(Resource):
    """
    Serves the list of one instance.

    :param flavour: the integration's spellings.
    :param base: the instance's settings, before URL arguments.
    :param source: where built lists come from.
    :param refresh_seconds: the C{max-age} of responses.
    :param credentials: required credentials, or C{None} for an open list.
    :param check_query: raises C{ValueError} for a query that cannot run,
        so that a bad C{q} is refused before any build.
    """

    log = Logger()

    def __init__(
        self,
        *,
        flavour: Flavour,
        base: ListSettings,
        source: ListSource,
        refresh_seconds: int,
        credentials: BasicCredentials | None,
        check_query: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        self.flavour = flavour
        self.base = base
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.credentials = credentials
        self._check_query = check_query
        self._log_resource = _LogResource(self)

    # -- tree -------------------------------------------------------------

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        if path == b"log" and not request.postpath:
            return self._log_resource
        return notFound(
            "Not Found", "There is nothing here; the list is at / and its log at /log."
        )

    # -- authentication ---------------------------------------------------

    def authorized(self, request: Request) -> bool:
        """
        Whether the request may see the list (always, when no credentials
        are set).
        """
        if self.credentials is None:
            return True
        if self.credentials.accepts(request.getHeader(b"authorization")):
            return True
        self.log.info(
            "Refused {method} {uri} from {client}: missing or wrong credentials",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            client=getattr(request.getClientAddress(), "host", "?"),
        )
        return False

    def refuse(self, request: Request) -> bytes:
        """
        Answer 401 with the Basic challenge.
        """
        request.setResponseCode(http.UNAUTHORIZED)
        request.setHeader(b"www-authenticate", f'Basic realm="{REALM}"'.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", str(len(FAILURE_BODY)).encode("ascii"))
        return b"" if request.method == b"HEAD" else FAILURE_BODY

    # -- the list ---------------------------------------------------------

    def _settings(self, request: Request) -> tuple[ListSettings, bool]:
        # Twisted's own parsing drops bare arguments ('?sp'), which are flags
        # here, so the query string is read again with them kept.
        _, _, query = request.uri.partition(b"?")
        args: dict[str, list[str]] = {}
        try:
            pairs = parse_qsl(
                query.decode("ascii"), keep_blank_values=True, errors="strict"
            )
        except UnicodeError:
            raise ArgumentError(
                "?",
                "The query string is not valid UTF-8 once its %-escapes are decoded.",
            ) from None
        for name, value in pairs:
            args.setdefault(name, []).append(value)
        settings, rebuild = apply_arguments(self.flavour, self.base, args)
        if self._check_query is not None and settings.query != self.base.query:
            try:
                self._check_query(settings.query)
            except ValueError as e:
                raise ArgumentError(
                    "q", f"Argument 'q' is not a valid indicator query: {e}"
                ) from None
        return settings, rebuild

    def render(self, request: Request) -> bytes | int:
        refused = _only_get(request)
        return refused if refused is not None else super().render(request)

    def render_GET(self, request: Request) -> bytes | int:
        if not self.authorized(request):
            return self.refuse(request)
        try:
            settings, rebuild = self._settings(request)
        except ArgumentError as e:
            return _plain(request, http.BAD_REQUEST, str(e))

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def send(built: BuiltList) -> Deferred[None] | None:
            if gone:
                return None
            return self._send(request, built, gone)

        def failed(failure: Failure) -> None:
            if gone:
                return
            self.log.failure("Building the list failed", failure)
            error = failure.value
            if isinstance(error, ValueError) and settings.query:
                text = (
                    f"The list could not be built: {error}. Check the indicator "
                    "query (argument 'q' or the instance's query parameter)."
                )
            else:
                text = f"The list could not be built: {error}. See the instance's log."
            body = _plain(request, http.INTERNAL_SERVER_ERROR, text)
            request.write(body)
            request.finish()

        self.source.get(settings, rebuild=rebuild).addCallback(send).addErrback(failed)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def informational_headers(self, request: Request, built: BuiltList) -> None:
        """
        Set the C{X-EDL-*} (or C{X-ExportIndicators-*}) headers of a build.
        """
        prefix = self.flavour.header_prefix
        for name, value in (
            ("Created", built.created_iso),
            ("Query-Time-Secs", f"{built.query_seconds:.3f}"),
            ("Size", str(built.entries)),
            ("Origin-Size", str(built.origin_size)),
        ):
            request.setHeader(f"{prefix}{name}".encode("ascii"), value.encode("ascii"))

    def _send(
        self, request: Request, built: BuiltList, gone: list[bool]
    ) -> Deferred[None] | None:
        compressed = built.length >= GZIP_MIN_LENGTH and _accepts_gzip(
            request.getHeader(b"accept-encoding")  # type: ignore[arg-type]
        )
        if compressed:
            return self.source.gzipped(built).addCallback(
                lambda path: None if gone else self._write(request, built, path, True)
            )
        self._write(request, built, built.body, False)
        return None

    def _write(
        self, request: Request, built: BuiltList, path: Path, compressed: bool
    ) -> None:
        fmt = built.settings.format
        etag = built.gzip_etag if compressed else built.etag
        last_modified = int(built.created)
        request.setHeader(
            b"content-type", fmt.content_type(built.settings.csv_text).encode()
        )
        request.setHeader(b"etag", etag.encode("ascii"))
        request.setHeader(b"last-modified", http.datetimeToString(last_modified))
        request.setHeader(
            b"cache-control", f"max-age={self.refresh_seconds}".encode("ascii")
        )
        request.setHeader(b"vary", b"Accept-Encoding")
        self.informational_headers(request, built)
        if _not_modified(request, etag, last_modified):
            request.setResponseCode(http.NOT_MODIFIED)
            request.finish()
            return
        try:
            # Closed by the producer once sent (or below, for HEAD).
            body = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            # The list was replaced between being chosen and being opened.
            request.write(
                _plain(
                    request,
                    http.SERVICE_UNAVAILABLE,
                    "The list changed while it was being sent; try again.",
                )
            )
            request.finish()
            return
        if compressed:
            request.setHeader(b"content-encoding", b"gzip")
        length = os.fstat(body.fileno()).st_size
        request.setHeader(b"content-length", str(length).encode("ascii"))
        if request.method == b"HEAD":
            body.close()
            request.finish()
            return
        _FileProducer(request, body).start()
