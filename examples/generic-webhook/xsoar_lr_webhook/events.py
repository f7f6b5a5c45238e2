"""
The events a webhook receives: parsed from the request body as XSOAR's
Generic Webhook reads it, and kept in an SQLite file in the instance's state
folder.

A body is one event (a JSON object) or a list of them. Each event may give
C{name}, C{type}, C{occurred} (an ISO 8601 time) and C{raw_json} (or
C{rawJson}); without a raw JSON the whole object is the event's raw JSON, as
XSOAR does.

Every method opens its own short-lived SQLite connection, so an L{EventLog}
may be used from any thread and by several processes, and holds no file
open between calls.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import attrs

__all__ = ["EventError", "EventLog", "NewEvent", "StoredEvent", "parse_events"]

#: Seconds a writer waits for another writer's lock before giving up.
BUSY_TIMEOUT = 10.0

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received REAL NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred TEXT,
    raw_json TEXT NOT NULL,
    headers TEXT NOT NULL,
    client TEXT
);
CREATE INDEX IF NOT EXISTS events_received ON events (received);
COMMIT;
"""


class EventError(ValueError):
    """
    A request body holds no acceptable events; the message says which event
    and field, and what to send instead.
    """


@attrs.frozen
class NewEvent:
    """
    An event as received, before it is stored.
    """

    name: str
    type: str
    occurred: str | None
    raw_json: Any


@attrs.frozen
class StoredEvent:
    """
    An event as stored.

    :ivar id: a number that grows with every event and is never reused.
    :ivar received: when it was stored (seconds since the epoch).
    :ivar headers: the request's headers, less the one with credentials.
    :ivar client: the address of the client that sent it.
    """

    id: int
    received: float
    name: str
    type: str
    occurred: str | None
    raw_json: Any
    headers: dict[str, list[str]]
    client: str | None

    def summary(self) -> dict[str, Any]:
        """
        What a POST answers about the event (as XSOAR answers with the
        incidents it made).
        """
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "occurred": self.occurred,
            "received": _iso(self.received),
        }

    def as_json(self) -> dict[str, Any]:
        """
        The whole event, as the listing shows it.
        """
        return {
            **self.summary(),
            "rawJSON": self.raw_json,
            "headers": self.headers,
            "client": self.client,
        }


def _iso(stamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _text_field(event: Mapping[str, Any], key: str, where: str) -> str | None:
    value = event.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError(f"{where}: {key!r} must be a string, not {_kind(value)}.")
    return value


def parse_events(body: bytes, default_type: str, max_events: int) -> list[NewEvent]:
    """
    The events in a request body.

    :param default_type: the type of events that give none.
    :param max_events: the most events one body may hold.
    :raises EventError: for a body that is not JSON, is not an object or a
        list of objects, is empty, or has a field of the wrong kind.
    :raises OverflowError: for a list of more than C{max_events} events.
    """
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise EventError("The body is not UTF-8 text; send JSON in UTF-8.") from None
    except json.JSONDecodeError as e:
        raise EventError(
            f"The body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}."
        ) from None
    if isinstance(document, dict):
        items = [document]
    elif isinstance(document, list):
        items = document
    else:
        raise EventError(
            "The body must be a JSON object (one event) or a list of objects, "
            f"not {_kind(document)}."
        )
    if not items:
        raise EventError("The body is an empty list; send at least one event.")
    if len(items) > max_events:
        raise OverflowError(
            f"The body holds {len(items)} events; this instance accepts at most "
            f"{max_events} per request (parameter 'max_events_per_request')."
        )

    events = []
    for number, item in enumerate(items, 1):
        where = "The event" if isinstance(document, dict) else f"Event {number}"
        if not isinstance(item, dict):
            raise EventError(f"{where} must be a JSON object, not {_kind(item)}.")
        occurred = _text_field(item, "occurred", where)
        if occurred is not None:
            try:
                datetime.datetime.fromisoformat(occurred.replace("Z", "+00:00"))
            except ValueError:
                raise EventError(
                    f"{where}: 'occurred' must be an ISO 8601 time such as "
                    f"2024-05-01T12:00:00Z, not {occurred!r}."
                ) from None
        raw = item.get("raw_json", item.get("rawJson"))
        events.append(
            NewEvent(
                name=_text_field(item, "name", where) or "",
                type=_text_field(item, "type", where) or default_type,
                occurred=occurred,
                raw_json=item if raw is None else raw,
            )
        )
    return events


@attrs.frozen
class EventLog:
    """
    The stored events of one instance.

    :ivar path: the SQLite file.
    :ivar max_events: the most events kept; older ones are dropped as new
        ones arrive (0: no limit).
    """

    path: Path
    max_events: int = 0

    @classmethod
    def open(cls, path: Path, max_events: int = 0) -> EventLog:
        """
        Make the file and its table if they do not exist yet.

        :raises sqlite3.Error: when the file cannot be made or used.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(str(path), isolation_level=None)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
        return cls(path, max_events)

    @contextmanager
    def _connection(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None
        )
        try:
            # The answer to a POST means the events are on disk.
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    def add(
        self,
        events: Sequence[NewEvent],
        received: float,
        headers: Mapping[str, list[str]],
        client: str | None,
    ) -> list[StoredEvent]:
        """
        Store C{events}, all or none, dropping the oldest beyond the limit.

        :returns: the stored events, with their ids.
        """
        header_text = json.dumps(dict(headers), separators=(",", ":"))
        stored = []
        with self._connection(write=True) as connection:
            for event in events:
                raw_text = json.dumps(event.raw_json, separators=(",", ":"))
                cursor = connection.execute(
                    "INSERT INTO events (received, name, type, occurred, raw_json, "
                    "headers, client) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        received,
                        event.name,
                        event.type,
                        event.occurred,
                        raw_text,
                        header_text,
                        client,
                    ),
                )
                assert cursor.lastrowid is not None
                stored.append(
                    StoredEvent(
                        cursor.lastrowid,
                        received,
                        event.name,
                        event.type,
                        event.occurred,
                        event.raw_json,
                        dict(headers),
                        client,
                    )
                )
            if self.max_events:
                connection.execute(
                    "DELETE FROM events WHERE id <= (SELECT id FROM events "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (self.max_events,),
                )
        return stored

    def page(self, after: int = 0, limit: int = 50) -> tuple[list[StoredEvent], int]:
        """
        Up to C{limit} events with ids above C{after}, oldest first, and the
        number of events stored, read in one transaction.
        """
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
            (total,) = connection.execute("SELECT COUNT(*) FROM events").fetchone()
        return [_row(r) for r in rows], int(total)

    def get(self, event_id: int) -> StoredEvent | None:
        """
        The event with id C{event_id}, if it is still kept.
        """
        with self._connection() as connection:
            row = connection.execute(
                "SELECT * FROM events WHERE id = ?", (event_id,)
            ).fetchone()
        return None if row is None else _row(row)

    def count(self) -> int:
        """
        How many events are kept.
        """
        with self._connection() as connection:
            (total,) = connection.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(total)

    def prune(self, before: float) -> int:
        """
        Drop the events received before C{before} (seconds since the epoch).

        :returns: how many were dropped.
        """
        with self._connection(write=True) as connection:
            return connection.execute(
                "DELETE FROM events WHERE received < ?", (before,)
            ).rowcount


def _row(row: Sequence[Any]) -> StoredEvent:
    event_id, received, name, type_, occurred, raw, headers, client = row
    return StoredEvent(
        event_id,
        received,
        name,
        type_,
        occurred,
        json.loads(raw),
        json.loads(headers),
        client,
    )
