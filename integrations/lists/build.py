"""
Building a list into files: the body, its build log and, when a client asks
for it, a gzip copy.

A build is blocking work (it reads the indicator store and writes files) and
runs in a thread of the reactor's thread pool; only its result, a
L{BuiltList}, goes back to the reactor thread.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from integrations.lists.formats import BuildLog, ListRenderer
from integrations.lists.settings import ListSettings
from xsoar_lr.indicators import Indicator

__all__ = ["BuiltList", "build_list", "compress", "remove_files"]

_FLUSH_AT = 1 << 18


@attrs.define
class BuiltList:
    """
    One built list and what the response headers say about it.

    :ivar settings: what it was built from.
    :ivar body: the file holding the exact bytes served.
    :ivar length: the body's size in bytes.
    :ivar digest: the SHA-1 hex digest of the body.
    :ivar created: when the build started (seconds since the epoch).
    :ivar query_seconds: how long the build took.
    :ivar entries: the number of entries (C{X-EDL-Size}).
    :ivar origin_size: indicators read from the store (C{X-EDL-Origin-Size}).
    :ivar generation: the store generation the build saw, or C{None}.
    :ivar log_header: the heading of the build log.
    :ivar log_rows: the file holding the build log's rows.
    :ivar gzipped: the gzip copy of the body, once made.
    """

    settings: ListSettings
    body: Path
    length: int
    digest: str
    created: float
    query_seconds: float
    entries: int
    origin_size: int
    generation: int | None
    log_header: str
    log_rows: Path
    gzipped: Path | None = None

    @property
    def etag(self) -> str:
        """
        The entity tag of the body, quoted.
        """
        return f'"{self.digest}"'

    @property
    def gzip_etag(self) -> str:
        """
        The entity tag of the gzip copy, quoted.
        """
        return f'"{self.digest}-gzip"'

    @property
    def created_iso(self) -> str:
        """
        The build's start as an ISO-8601 UTC timestamp.
        """
        moment = datetime.fromtimestamp(self.created, UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    def files(self) -> list[Path]:
        """
        Every file of this build.
        """
        return [p for p in (self.body, self.log_rows, self.gzipped) if p is not None]

    def to_json(self) -> dict[str, Any]:
        """
        The build as a JSON-ready mapping (without its settings), for an
        on-demand list that must survive a restart.
        """
        return {
            "body": self.body.name,
            "length": self.length,
            "digest": self.digest,
            "created": self.created,
            "query_seconds": self.query_seconds,
            "entries": self.entries,
            "origin_size": self.origin_size,
            "generation": self.generation,
            "log_header": self.log_header,
            "log_rows": self.log_rows.name,
        }

    @classmethod
    def from_json(
        cls, directory: Path, settings: ListSettings, data: dict[str, Any]
    ) -> BuiltList:
        """
        Restore a build recorded by L{to_json}.

        :raises KeyError, TypeError, ValueError: when the record is damaged.
        """
        built = cls(
            settings=settings,
            body=directory / str(data["body"]),
            length=int(data["length"]),
            digest=str(data["digest"]),
            created=float(data["created"]),
            query_seconds=float(data["query_seconds"]),
            entries=int(data["entries"]),
            origin_size=int(data["origin_size"]),
            generation=data["generation"],
            log_header=str(data["log_header"]),
            log_rows=directory / str(data["log_rows"]),
        )
        if not built.body.is_file() or not built.log_rows.is_file():
            raise ValueError("the files of the recorded build are missing")
        return built


class _BodyWriter:
    """
    Buffers text pieces and writes them encoded, hashing as it goes.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._pending_size = 0
        self.length = 0
        self.sha1 = hashlib.sha1()

    def write(self, piece: str) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8")
        self._pending.clear()
        self._pending_size = 0
        self.sha1.update(data)
        self.length += len(data)
        self._stream.write(data)


def build_list(
    settings: ListSettings,
    indicators: Callable[[ListSettings], Iterable[Indicator]],
    directory: Path,
    *,
    generation: Callable[[], int] | None = None,
    list_name: str = "EDL",
    clock: Callable[[], float] = time.time,
) -> BuiltList:
    """
    Build one list into new files in C{directory}. Blocking.

    :param indicators: returns the indicators to format, in order, for the
        settings (normally a search of the indicator store).
    :param generation: returns the store's generation, read before the
        search so that a change during the build is noticed afterwards.
    :param list_name: what the log heading calls the list.
    """
    directory.mkdir(parents=True, exist_ok=True)
    started = clock()
    monotonic_start = time.monotonic()
    seen_generation = generation() if generation is not None else None
    body_fd, body_name = tempfile.mkstemp(prefix="list-", suffix=".body", dir=directory)
    log_fd, log_name = tempfile.mkstemp(prefix="list-", suffix=".log", dir=directory)
    try:
        with (
            os.fdopen(body_fd, "wb") as body_stream,
            os.fdopen(log_fd, "w", encoding="utf-8", buffering=1 << 18) as log_stream,
        ):
            log = BuildLog(log_stream)
            writer = _BodyWriter(body_stream)
            renderer = ListRenderer(settings, log)
            for piece in renderer.chunks(indicators(settings)):
                writer.write(piece)
            writer.flush()
    except BaseException:
        remove_files([Path(body_name), Path(log_name)])
        raise
    elapsed = time.monotonic() - monotonic_start
    created = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
    header = (
        f"# Created new {list_name} at {created.replace('+00:00', 'Z')}\n\n"
        f"## Configuration Arguments: {settings.describe()}\n\n"
        f"## {list_name} stats: {renderer.origin_size} indicators in total, "
        f"{log.modified} modified, {log.dropped} dropped, {log.added} added.\n\n"
        "Action | Indicator | Raw Indicator | Reason\n"
    )
    return BuiltList(
        settings=settings,
        body=Path(body_name),
        length=writer.length,
        digest=writer.sha1.hexdigest(),
        created=started,
        query_seconds=elapsed,
        entries=renderer.entries,
        origin_size=renderer.origin_size,
        generation=seen_generation,
        log_header=header,
        log_rows=Path(log_name),
    )


def compress(body: Path) -> Path:
    """
    Write a gzip copy of C{body} beside it and return its path. Blocking.

    The copy is written under a temporary name and renamed into place, so a
    reader never sees half of it; its header carries no time stamp, so the
    same body always compresses to the same bytes.
    """
    target = body.with_name(body.name + ".gz")
    fd, temporary = tempfile.mkstemp(prefix=body.name, suffix=".tmp", dir=body.parent)
    try:
        with (
            open(body, "rb") as source,
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0
            ) as packed,
        ):
            shutil.copyfileobj(source, packed, 1 << 20)
        os.replace(temporary, target)
    except BaseException:
        remove_files([Path(temporary)])
        raise
    return target


def remove_files(paths: Iterable[Path]) -> None:
    """
    Remove files, ignoring those already gone. A file that is still being
    sent stays readable until it is closed.
    """
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
