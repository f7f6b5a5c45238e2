"""
The indicator store: every indicator the lists are made of, in one SQLite
database under the host's state folder.

The database is shared by the host, every instance process and the command
line at the same time. It runs in WAL mode: a reader sees the contents as of
the start of its read, never part of an import, and never holds up a
writer; writers take turns (one write transaction at a time, others wait up
to L{BUSY_TIMEOUT} seconds).

Each indicator is kept once, under a normalised key
(L{xsoar_lr.indicators.normalise}). Each source that lists it (a feed or an
import name) has its own I{contribution}: the score, tags, dates and custom
fields that source gave. The indicator as read is the merge of its
contributions:

 - score: the highest;
 - tags: all of them, without repeats (compared without case);
 - sources: the names of the contributing sources;
 - first seen: the earliest; last seen: the latest;
 - expiration: none if any source gives none, else the latest;
 - custom fields: all of them; a field given by several sources takes the
   value written last;
 - type: the type the latest contribution gave.

Keeping contributions apart is what lets a feed replace exactly its own part
(L{IndicatorStore.replace_source}) without touching what other sources said.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import attrs
from twisted.logger import Logger

from xsoar_lr.indicators import (
    Indicator,
    IndicatorType,
    Score,
    check_type,
    detect_type,
    normalise,
)
from xsoar_lr.query import QueryError, compile_query, from_time_stamp, time_stamp

__all__ = [
    "BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "ImportReport",
    "IndicatorStore",
    "QueryError",
    "Reject",
    "StoreError",
    "store_path",
]

log = Logger()

#: The version of the schema this code writes; see L{_MIGRATIONS}.
SCHEMA_VERSION = 1

#: How long, in seconds, a write waits for another process's write to end.
BUSY_TIMEOUT = 120.0

#: Joins the tags and source names of an indicator in one column. It is the
#: ASCII unit separator, which no tag or source name may contain.
_SEPARATOR = "\x1f"

# Rows are read and written this many at a time.
_CHUNK = 50_000

# Sorting by value follows the normalised key, which is the order the table
# is kept in: a full ordered scan then reads the table front to back.
_SORT_COLUMNS = {
    "value": "key",
    "name": "key",
    "type": "type",
    "indicator_type": "type",
    "indicatortype": "type",
    "score": "score",
    "verdict": "score",
    "firstseen": "first_seen",
    "first_seen": "first_seen",
    "lastseen": "last_seen",
    "last_seen": "last_seen",
    "expiration": "expiration",
}

_TYPES = {member.value: member for member in IndicatorType}
_SCORES = tuple(Score)

# Each migration takes the schema from the version before it to its own.
# Never change a released migration; add a new one and raise SCHEMA_VERSION.
_MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        """
        CREATE TABLE store_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        )
        """,
        "INSERT INTO store_state (id, generation) VALUES (1, 0)",
        """
        CREATE TABLE indicators (
            key TEXT PRIMARY KEY,
            id INTEGER NOT NULL UNIQUE,
            value TEXT,
            type TEXT NOT NULL,
            score INTEGER NOT NULL,
            tags TEXT NOT NULL,
            sources TEXT NOT NULL,
            first_seen INTEGER,
            last_seen INTEGER,
            expiration INTEGER,
            custom_fields TEXT
        ) WITHOUT ROWID
        """,
        "CREATE INDEX indicators_by_type_score ON indicators (type, score)",
        """
        CREATE TABLE contributions (
            indicator_id INTEGER NOT NULL,
            source TEXT NOT NULL COLLATE NOCASE,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            score INTEGER NOT NULL,
            tags TEXT NOT NULL,
            first_seen INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            expiration INTEGER,
            custom_fields TEXT,
            PRIMARY KEY (indicator_id, source)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX contributions_by_source ON contributions (source, seq)",
        """
        CREATE TABLE indicator_tags (
            tag TEXT NOT NULL COLLATE NOCASE,
            indicator_id INTEGER NOT NULL,
            PRIMARY KEY (tag, indicator_id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX indicator_tags_by_indicator ON indicator_tags (indicator_id)",
    ),
}


class StoreError(Exception):
    """
    The indicator store's database cannot be used; the message names the
    file and says what to do.
    """


def store_path(state_dir: Path | str) -> Path:
    """
    Return where the indicator store of a host with this state folder lives.
    """
    return Path(state_dir) / "indicators.sqlite3"


@attrs.frozen
class Reject:
    """
    One value that was not stored, and why.

    :ivar line: the line (or, for JSON and STIX, the item) of the input it
        came from, counted from 1, or C{None} when unknown.
    :ivar value: the value as given.
    :ivar reason: a sentence saying why it was refused.
    """

    line: int | None
    value: str
    reason: str


@attrs.define
class ImportReport:
    """
    What an import or a feed pull did to the store.

    :ivar source: the source name the indicators were stored under.
    :ivar added: indicators that were not in the store before.
    :ivar updated: indicators that were in the store and got this source's
        contribution (new or refreshed).
    :ivar removed: indicators this source no longer lists (only
        L{IndicatorStore.replace_source}); they are gone from the store
        unless another source lists them.
    :ivar duplicates: values given more than once; the repeats were merged
        into the first.
    :ivar rejected: values that were not stored, with the reason.
    """

    source: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    duplicates: int = 0
    rejected: list[Reject] = attrs.field(factory=list)

    @property
    def changed(self) -> bool:
        """
        Whether the store's contents changed.
        """
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        """
        One line saying what happened, for people.
        """
        parts = [
            f"{self.added} added",
            f"{self.updated} updated",
            f"{self.duplicates} duplicates merged",
            f"{len(self.rejected)} rejected",
        ]
        if self.removed:
            parts.insert(2, f"{self.removed} no longer listed")
        return f"Source {self.source!r}: " + ", ".join(parts) + "."


class _Contribution(NamedTuple):
    """
    What one source says about one indicator, as stored.
    """

    source: str
    seq: int
    value: str
    type: str
    score: int
    tags: tuple[str, ...]
    first_seen: int
    last_seen: int
    expiration: int | None
    custom_fields: dict[str, Any] | None


class _Merged(NamedTuple):
    """
    An indicator's row in the C{indicators} table, without id and key.
    """

    value: str | None
    type: str
    score: int
    tags: str
    sources: str
    first_seen: int | None
    last_seen: int | None
    expiration: int | None
    custom_fields: str | None


def _unique_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if len(tags) < 2:
        return tuple(tags)
    seen: set[str] = set()
    result = []
    for tag in tags:
        folded = tag.casefold()
        if folded not in seen:
            seen.add(folded)
            result.append(tag)
    return tuple(result)


def _dump_fields(fields: dict[str, Any] | None) -> str | None:
    return json.dumps(fields, sort_keys=True) if fields else None


def _merge(value: str | None, contributions: Collection[_Contribution]) -> _Merged:
    """
    Work out an indicator's row from all its contributions; C{value} is the
    stored value (C{None} when it is the key itself).
    """
    if len(contributions) == 1:
        (only,) = contributions
        return _Merged(
            value,
            only.type,
            only.score,
            _SEPARATOR.join(only.tags),
            only.source,
            only.first_seen,
            only.last_seen,
            only.expiration,
            _dump_fields(only.custom_fields),
        )
    by_time = sorted(contributions, key=lambda c: (c.first_seen, c.source.lower()))
    by_write = sorted(by_time, key=lambda c: c.seq)
    expirations = [c.expiration for c in by_time]
    fields: dict[str, Any] = {}
    for contribution in by_write:
        fields.update(contribution.custom_fields or {})
    return _Merged(
        value=value,
        type=by_write[-1].type,
        score=max(c.score for c in by_time),
        tags=_SEPARATOR.join(_unique_tags([t for c in by_time for t in c.tags])),
        sources=_SEPARATOR.join(sorted((c.source for c in by_time), key=str.lower)),
        first_seen=min(c.first_seen for c in by_time),
        last_seen=max(c.last_seen for c in by_time),
        expiration=None if None in expirations else max(expirations),  # type: ignore
        custom_fields=_dump_fields(fields),
    )


def _combine(old: _Contribution, new: _Contribution) -> _Contribution:
    """
    Merge a new statement of a source about an indicator into its earlier
    one: tags and custom fields add up, the rest is the newer word.
    """
    fields = {**(old.custom_fields or {}), **(new.custom_fields or {})}
    return new._replace(
        value=old.value,
        tags=_unique_tags(old.tags + new.tags),
        first_seen=min(old.first_seen, new.first_seen),
        last_seen=max(old.last_seen, new.last_seen),
        custom_fields=fields or None,
    )


_INDICATOR_FIELDS = (
    "value",
    "type",
    "score",
    "tags",
    "sources",
    "first_seen",
    "last_seen",
    "expiration",
    "custom_fields",
)
# Rows are turned into indicators without the attrs initialiser when the
# model has exactly the fields above: the store validated every value on the
# way in, and skipping the converters nearly halves the time of streaming a
# list of a million. Should the model gain a field, the normal initialiser
# is used instead.
_FAST_BUILD = tuple(f.name for f in attrs.fields(Indicator)) == _INDICATOR_FIELDS


def _reader() -> Callable[[Sequence[Any]], Indicator]:
    """
    Return a function that turns rows into indicators, remembering the
    repeated parts (tag and source lists, import times) for the length of
    one stream.
    """
    times: dict[int, datetime] = {}
    lists: dict[str, tuple[str, ...]] = {"": ()}
    new = object.__new__
    put = object.__setattr__

    def moment(stamp: int | None) -> datetime | None:
        if stamp is None:
            return None
        found = times.get(stamp)
        if found is None:
            if len(times) > 4096:
                times.clear()
            found = times[stamp] = from_time_stamp(stamp)
        return found

    def split(text: str) -> tuple[str, ...]:
        found = lists.get(text)
        if found is None:
            if len(lists) > 4096:
                lists.clear()
                lists[""] = ()
            found = lists[text] = tuple(text.split(_SEPARATOR))
        return found

    def convert(row: Sequence[Any]) -> Indicator:
        value, type_, score, tags, sources, first, last, expiration, fields = row
        if not _FAST_BUILD:
            return _to_indicator(row)
        indicator = new(Indicator)
        put(indicator, "value", value)
        put(indicator, "type", _TYPES[type_])
        put(indicator, "score", _SCORES[score])
        put(indicator, "tags", split(tags))
        put(indicator, "sources", split(sources))
        put(indicator, "first_seen", moment(first))
        put(indicator, "last_seen", moment(last))
        put(indicator, "expiration", moment(expiration))
        put(indicator, "custom_fields", json.loads(fields) if fields else {})
        return indicator

    return convert


def _to_indicator(row: Sequence[Any]) -> Indicator:
    value, type_, score, tags, sources, first, last, expiration, fields = row
    return Indicator(
        value,
        _TYPES[type_],
        _SCORES[score],
        tags.split(_SEPARATOR) if tags else (),
        sources.split(_SEPARATOR),
        None if first is None else from_time_stamp(first),
        None if last is None else from_time_stamp(last),
        None if expiration is None else from_time_stamp(expiration),
        json.loads(fields) if fields else {},
    )


_ROW_COLUMNS = (
    "coalesce(value, key), type, score, tags, sources, first_seen, last_seen, "
    "expiration, custom_fields"
)


class IndicatorStore:
    """
    The indicator store in one SQLite file.

    Every method blocks and may be called from any thread; an open store
    keeps a small pool of connections, one per concurrent use. Several
    processes may open the same file.
    """

    def __init__(self, path: Path) -> None:
        """
        Use L{IndicatorStore.open}, which also creates and migrates the schema.
        """
        self.path = path
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    @classmethod
    def open(cls, path: Path | str) -> IndicatorStore:
        """
        Open the store at C{path}, creating the file and its folder if
        needed and bringing its schema up to date.

        :raises StoreError: when the file is not a usable store.
        """
        store = cls(Path(path))
        store.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with store._connection() as connection:
                store._migrate(connection)
        except sqlite3.DatabaseError as e:
            store.close()
            raise StoreError(
                f"The indicator store {store.path} cannot be used ({e}); move the "
                "file away to start an empty store, or restore it from a backup."
            ) from e
        return store

    def close(self) -> None:
        """
        Close the store's connections. Searches still being read finish
        first and close their own.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __enter__(self) -> IndicatorStore:  # noqa: PYI034 (3.10 has no Self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Connections

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA cache_size = -65536")
        connection.execute("PRAGMA mmap_size = 268435456")
        connection.execute("PRAGMA temp_store = MEMORY")
        return connection

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"The indicator store {self.path} is closed.")
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        try:
            yield connection
        finally:
            if connection.in_transaction:
                connection.rollback()
            with self._lock:
                if self._closed:
                    connection.close()
                else:
                    self._idle.append(connection)

    def _migrate(self, connection: sqlite3.Connection) -> None:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"WAL mode could not be set (mode {mode})")
        connection.execute("PRAGMA journal_size_limit = 67108864")
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            row = connection.execute(
                "SELECT max(version) FROM schema_version"
            ).fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The indicator store {self.path} has schema version {version}, "
                    f"newer than this xsoar-lr understands ({SCHEMA_VERSION}); "
                    "upgrade xsoar-lr."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    connection.execute(statement)
                connection.execute("DELETE FROM schema_version")
                connection.execute(
                    "INSERT INTO schema_version (version) VALUES (?)", (target,)
                )
                log.info(
                    "Indicator store {path} migrated to schema version {version}",
                    path=str(self.path),
                    version=target,
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.rollback()
            raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """
        Run a write transaction; yields the connection and the generation
        the transaction writes. The generation is bumped when the block
        ends without an exception.
        """
        with self._write_lock, self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                generation = connection.execute(
                    "SELECT generation FROM store_state"
                ).fetchone()[0]
                yield connection, generation + 1
                connection.execute(
                    "UPDATE store_state SET generation = ?", (generation + 1,)
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.rollback()
                raise

    # Reading

    def generation(self) -> int:
        """
        Return a number that changes whenever the store's contents change,
        whichever process changed them. Cheap enough to call per request.
        """
        with self._connection() as connection:
            row = connection.execute("SELECT generation FROM store_state").fetchone()
        return int(row[0])

    def get(self, value: str) -> Indicator | None:
        """
        Return the indicator with this value (compared by its normalised
        key), or C{None}.
        """
        try:
            key = normalise(value, detect_type(value))
        except ValueError:
            return None
        with self._connection() as connection:
            row = connection.execute(
                f"SELECT {_ROW_COLUMNS} FROM indicators WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else _to_indicator(row)

    def count(self, query: str = "") -> int:
        """
        Count the indicators that match an XSOAR indicator query.

        :raises QueryError: when the query is not valid.
        """
        compiled = compile_query(query)
        with self._connection() as connection:
            row = connection.execute(
                f"SELECT count(*) FROM indicators WHERE {compiled.where}",
                compiled.params,
            ).fetchone()
        return int(row[0])

    def search(
        self,
        query: str = "",
        *,
        sort_field: str = "value",
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> Iterator[Indicator]:
        """
        Stream the indicators that match an XSOAR indicator query.

        The results come from one consistent snapshot, taken when the first
        one is read, and are fetched a chunk at a time, so a list of a
        million indicators never sits in memory. Close the iterator (or
        read it to the end) to release the snapshot.

        :param sort_field: C{value}, C{type}, C{score}, C{firstSeen},
            C{lastSeen} or C{expiration}; ties are broken by insertion order.
        :raises QueryError: when the query is not valid (raised at once, not
            when iterating).
        :raises ValueError: for an unknown sort field or a negative offset
            or limit.
        """
        compiled = compile_query(query)
        column = _SORT_COLUMNS.get(sort_field.lower())
        if column is None:
            raise ValueError(
                f"Cannot sort by {sort_field!r}; use one of value, type, score, "
                "firstSeen, lastSeen, expiration."
            )
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError("The offset and the limit must not be negative.")
        direction = "DESC" if descending else "ASC"
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM indicators WHERE {compiled.where} "
            f"ORDER BY {column} {direction}"
            + ("" if column == "key" else f", key {direction}")
            + " LIMIT ? OFFSET ?"
        )
        params = (*compiled.params, -1 if limit is None else limit, offset)
        return self._stream(sql, params, _reader())

    def _stream(
        self,
        sql: str,
        params: Sequence[Any],
        convert: Callable[[Sequence[Any]], Any],
    ) -> Iterator[Any]:
        with self._connection() as connection:
            connection.execute("BEGIN")
            cursor = connection.execute(sql, params)
            try:
                while True:
                    rows = cursor.fetchmany(2_000)
                    if not rows:
                        break
                    yield from map(convert, rows)
            finally:
                cursor.close()

    # Writing

    def add(self, indicators: Iterable[Indicator], *, source: str) -> ImportReport:
        """
        Merge indicators into the store as listed by C{source}, in one
        transaction.

        A value the store already has gets this source's contribution (tags
        and custom fields added to what the source said before); the
        C{sources} of the given indicators are ignored in favour of
        C{source}. A value that does not fit its type is rejected.
        """
        return self._write(indicators, source, replace=False)

    def replace_source(
        self, source: str, indicators: Iterable[Indicator]
    ) -> ImportReport:
        """
        Make C{indicators} the whole contribution of C{source}, in one
        transaction: what the source listed before and does not list now is
        removed (the indicator goes unless another source lists it), and
        what it lists now replaces what it said before (first seen is kept).
        """
        return self._write(indicators, source, replace=True)

    def _write(
        self, indicators: Iterable[Indicator], source: str, *, replace: bool
    ) -> ImportReport:
        _check_name("source", source)
        report = ImportReport(source)
        now = time_stamp(datetime.now(UTC))
        # The generation is known once the write transaction has begun,
        # which is before the first indicator is prepared.
        generation = [0]
        prepared = self._prepare(indicators, source, now, generation, report)
        try:
            self._write_all(prepared, source, replace, generation, report)
        except _NothingChanged:
            pass
        return report

    def _write_all(
        self,
        prepared: Iterable[tuple[str, _Contribution]],
        source: str,
        replace: bool,
        holder: list[int],
        report: ImportReport,
    ) -> None:
        with self._writing() as (connection, generation):
            holder[0] = generation
            connection.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming (key TEXT PRIMARY KEY)"
            )
            next_id = connection.execute(
                "SELECT coalesce(max(id), 0) + 1 FROM indicators"
            ).fetchone()[0]
            for chunk in _chunks(prepared, _CHUNK):
                next_id = self._write_chunk(
                    connection, chunk, source, generation, replace, next_id, report
                )
            if replace:
                self._remove_stale(connection, source, generation, report)
            connection.execute("DELETE FROM temp.incoming")
            if not report.changed:
                # Nothing to commit; leave the generation as it was.
                raise _NothingChanged()

    def _prepare(
        self,
        indicators: Iterable[Indicator],
        source: str,
        now: int,
        generation: list[int],
        report: ImportReport,
    ) -> Iterator[tuple[str, _Contribution]]:
        for index, indicator in enumerate(indicators, 1):
            try:
                check_type(indicator.value, indicator.type)
                key = normalise(indicator.value, indicator.type)
                for tag in indicator.tags:
                    _check_name("tag", tag)
                fields = dict(indicator.custom_fields) or None
                if fields is not None:
                    json.dumps(fields)
            except (ValueError, TypeError) as e:
                report.rejected.append(Reject(index, indicator.value, str(e)))
                continue
            yield (
                key,
                _Contribution(
                    source=source,
                    seq=generation[0],
                    value=indicator.value,
                    type=indicator.type.value,
                    score=int(indicator.score),
                    tags=_unique_tags(indicator.tags),
                    first_seen=_time(indicator.first_seen, now),
                    last_seen=_time(indicator.last_seen, now),
                    expiration=(
                        None
                        if indicator.expiration is None
                        else time_stamp(indicator.expiration)
                    ),
                    custom_fields=fields,
                ),
            )

    def _write_chunk(
        self,
        connection: sqlite3.Connection,
        chunk: list[tuple[str, _Contribution]],
        source: str,
        generation: int,
        replace: bool,
        next_id: int,
        report: ImportReport,
    ) -> int:
        incoming: dict[str, _Contribution] = {}
        for key, contribution in chunk:
            earlier = incoming.get(key)
            if earlier is not None:
                report.duplicates += 1
                contribution = _combine(earlier, contribution)
            incoming[key] = contribution

        connection.execute("DELETE FROM temp.incoming")
        connection.executemany(
            "INSERT INTO temp.incoming (key) VALUES (?)", ((k,) for k in incoming)
        )
        existing = {
            row[1]: row
            for row in connection.execute(
                "SELECT i.id, i.key, i.value FROM temp.incoming AS k "
                "JOIN indicators AS i ON i.key = k.key"
            )
        }
        others: dict[int, dict[str, _Contribution]] = {}
        if existing:
            for row in connection.execute(
                "SELECT c.indicator_id, c.source, c.seq, c.type, c.score, "
                "c.tags, c.first_seen, c.last_seen, c.expiration, c.custom_fields "
                "FROM temp.incoming AS k JOIN indicators AS i ON i.key = k.key "
                "JOIN contributions AS c ON c.indicator_id = i.id"
            ):
                others.setdefault(row[0], {})[row[1].lower()] = _load(row[1:])

        new_rows = []
        updated_rows = []
        contribution_rows = []
        tag_rows: list[tuple[str, int]] = []
        retagged = []
        for key, contribution in incoming.items():
            found = existing.get(key)
            if found is None:
                indicator_id, next_id = next_id, next_id + 1
                value = None if contribution.value == key else contribution.value
                merged = _merge(value, (contribution,))
                new_rows.append((indicator_id, key, *merged))
                report.added += 1
            else:
                indicator_id = found[0]
                contributions = others.get(indicator_id, {})
                earlier = contributions.get(source.lower())
                if earlier is not None and earlier.seq == generation:
                    report.duplicates += 1
                    contribution = _combine(earlier, contribution)
                elif earlier is not None and not replace:
                    contribution = _combine(earlier, contribution)
                    report.updated += 1
                else:
                    if earlier is not None:
                        contribution = contribution._replace(
                            first_seen=min(earlier.first_seen, contribution.first_seen)
                        )
                    report.updated += 1
                contributions[source.lower()] = contribution
                merged = _merge(found[2], contributions.values())
                updated_rows.append((*merged[1:], indicator_id))
                retagged.append((indicator_id,))
            contribution_rows.append(_dump(indicator_id, contribution))
            tag_rows.extend(
                (tag, indicator_id) for tag in merged.tags.split(_SEPARATOR) if tag
            )

        # Keys in order make the inserts walk the table's B-tree once.
        new_rows.sort(key=lambda row: row[1])
        tag_rows.sort()
        connection.executemany(
            "INSERT INTO indicators (id, key, value, type, score, tags, sources, "
            "first_seen, last_seen, expiration, custom_fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        connection.executemany(
            "UPDATE indicators SET type = ?, score = ?, tags = ?, sources = ?, "
            "first_seen = ?, last_seen = ?, expiration = ?, custom_fields = ? "
            "WHERE id = ?",
            updated_rows,
        )
        connection.executemany(
            "INSERT OR REPLACE INTO contributions (indicator_id, source, seq, type, "
            "score, tags, first_seen, last_seen, expiration, custom_fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            contribution_rows,
        )
        connection.executemany(
            "DELETE FROM indicator_tags WHERE indicator_id = ?", retagged
        )
        connection.executemany(
            "INSERT OR IGNORE INTO indicator_tags (tag, indicator_id) VALUES (?, ?)",
            tag_rows,
        )
        return next_id

    def _remove_stale(
        self,
        connection: sqlite3.Connection,
        source: str,
        generation: int,
        report: ImportReport,
    ) -> None:
        stale = [
            row[0]
            for row in connection.execute(
                "SELECT indicator_id FROM contributions WHERE source = ? AND seq < ?",
                (source, generation),
            )
        ]
        for chunk in _chunks(stale, _CHUNK):
            report.removed += len(chunk)
            self._drop_contributions(connection, chunk, source)

    def _drop_contributions(
        self,
        connection: sqlite3.Connection,
        indicator_ids: Sequence[int],
        source: str | None,
    ) -> int:
        """
        Remove the contribution of C{source} (of every source when C{None})
        from the given indicators, deleting the indicators left with none.

        :returns: how many indicators were deleted.
        """
        connection.execute(
            "CREATE TEMP TABLE IF NOT EXISTS affected (id INTEGER PRIMARY KEY)"
        )
        connection.execute("DELETE FROM temp.affected")
        connection.executemany(
            "INSERT OR IGNORE INTO temp.affected (id) VALUES (?)",
            ((i,) for i in indicator_ids),
        )
        if source is None:
            connection.execute(
                "DELETE FROM contributions "
                "WHERE indicator_id IN (SELECT id FROM temp.affected)"
            )
        else:
            connection.execute(
                "DELETE FROM contributions WHERE source = ? "
                "AND indicator_id IN (SELECT id FROM temp.affected)",
                (source,),
            )
        remaining: dict[int, list[_Contribution]] = {}
        for row in connection.execute(
            "SELECT c.indicator_id, c.source, c.seq, c.type, c.score, "
            "c.tags, c.first_seen, c.last_seen, c.expiration, c.custom_fields "
            "FROM temp.affected AS a JOIN contributions AS c ON c.indicator_id = a.id"
        ):
            remaining.setdefault(row[0], []).append(_load(row[1:]))
        self._rewrite(connection, remaining)
        gone = [(i,) for i in indicator_ids if i not in remaining]
        connection.executemany("DELETE FROM indicators WHERE id = ?", gone)
        connection.executemany(
            "DELETE FROM indicator_tags WHERE indicator_id = ?", gone
        )
        connection.execute("DELETE FROM temp.affected")
        return len(gone)

    def _rewrite(
        self,
        connection: sqlite3.Connection,
        contributions: dict[int, list[_Contribution]],
    ) -> None:
        """
        Recompute the rows of indicators from their contributions.
        """
        if not contributions:
            return
        values = dict(
            connection.execute(
                "SELECT i.id, i.value FROM temp.affected AS a "
                "JOIN indicators AS i ON i.id = a.id"
            ).fetchall()
        )
        rows = []
        tags: list[tuple[str, int]] = []
        for indicator_id, listed in contributions.items():
            merged = _merge(values[indicator_id], listed)
            rows.append((*merged[1:], indicator_id))
            tags.extend((t, indicator_id) for t in merged.tags.split(_SEPARATOR) if t)
        connection.executemany(
            "UPDATE indicators SET type = ?, score = ?, tags = ?, sources = ?, "
            "first_seen = ?, last_seen = ?, expiration = ?, custom_fields = ? "
            "WHERE id = ?",
            rows,
        )
        connection.executemany(
            "DELETE FROM indicator_tags WHERE indicator_id = ?",
            ((i,) for i in contributions),
        )
        connection.executemany(
            "INSERT OR IGNORE INTO indicator_tags (tag, indicator_id) VALUES (?, ?)",
            tags,
        )

    def remove(self, value: str, *, source: str | None = None) -> bool:
        """
        Remove an indicator, or only the contribution of C{source} to it
        (the indicator stays while other sources list it).

        :returns: whether anything was removed.
        """
        try:
            key = normalise(value, detect_type(value))
        except ValueError:
            return False
        try:
            with self._writing() as (connection, _):
                row = connection.execute(
                    "SELECT id FROM indicators WHERE key = ?", (key,)
                ).fetchone()
                if row is None:
                    raise _NothingChanged()
                if source is not None:
                    found = connection.execute(
                        "SELECT 1 FROM contributions "
                        "WHERE indicator_id = ? AND source = ?",
                        (row[0], source),
                    ).fetchone()
                    if found is None:
                        raise _NothingChanged()
                self._drop_contributions(connection, [row[0]], source)
        except _NothingChanged:
            return False
        return True

    def remove_tag(self, value: str, tag: str) -> bool:
        """
        Remove a tag (compared without case) from an indicator, whichever
        sources gave it.

        :returns: whether the indicator had the tag.
        """
        try:
            key = normalise(value, detect_type(value))
        except ValueError:
            return False
        folded = tag.casefold()
        try:
            with self._writing() as (connection, _):
                rows = connection.execute(
                    "SELECT c.indicator_id, c.source, c.seq, c.type, "
                    "c.score, c.tags, c.first_seen, c.last_seen, c.expiration, "
                    "c.custom_fields FROM indicators AS i "
                    "JOIN contributions AS c ON c.indicator_id = i.id "
                    "WHERE i.key = ?",
                    (key,),
                ).fetchall()
                contributions = [_load(row[1:]) for row in rows]
                if not any(
                    folded == t.casefold() for c in contributions for t in c.tags
                ):
                    raise _NothingChanged()
                kept = [
                    c._replace(tags=tuple(t for t in c.tags if t.casefold() != folded))
                    for c in contributions
                ]
                connection.executemany(
                    "UPDATE contributions SET tags = ? "
                    "WHERE indicator_id = ? AND source = ?",
                    [(_SEPARATOR.join(c.tags), rows[0][0], c.source) for c in kept],
                )
                connection.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS affected (id INTEGER PRIMARY KEY)"
                )
                connection.execute("DELETE FROM temp.affected")
                connection.execute(
                    "INSERT INTO temp.affected (id) VALUES (?)", (rows[0][0],)
                )
                self._rewrite(connection, {rows[0][0]: kept})
                connection.execute("DELETE FROM temp.affected")
        except _NothingChanged:
            return False
        return True

    def delete(self, query: str) -> int:
        """
        Delete every indicator that matches an XSOAR indicator query, with
        all its sources' contributions. An empty query deletes everything.

        :returns: how many indicators were deleted.
        :raises QueryError: when the query is not valid.
        """
        compiled = compile_query(query)
        deleted = 0
        try:
            with self._writing() as (connection, _):
                ids = [
                    row[0]
                    for row in connection.execute(
                        f"SELECT id FROM indicators WHERE {compiled.where}",
                        compiled.params,
                    )
                ]
                for chunk in _chunks(ids, _CHUNK):
                    deleted += self._drop_contributions(connection, chunk, None)
                if not deleted:
                    raise _NothingChanged()
        except _NothingChanged:
            return 0
        return deleted

    def sources(self) -> dict[str, int]:
        """
        Return each source name with the number of indicators it lists.
        """
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT source, count(*) FROM contributions GROUP BY source "
                "ORDER BY source"
            ).fetchall()
        return {source: int(count) for source, count in rows}


class _NothingChanged(Exception):
    """
    Ends a write transaction that found nothing to do, rolling it back so
    that the generation stays as it was.
    """


def _check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise ValueError(f"The {what} name is empty.")
    if _SEPARATOR in name or "\n" in name:
        raise ValueError(f"The {what} name {name!r} contains a control character.")


def _time(moment: datetime | None, default: int) -> int:
    return default if moment is None else time_stamp(moment)


def _load(row: Sequence[Any]) -> _Contribution:
    source, seq, type_, score, tags, first, last, expiration, fields = row
    return _Contribution(
        source,
        seq,
        "",
        type_,
        score,
        tuple(tags.split(_SEPARATOR)) if tags else (),
        first,
        last,
        expiration,
        json.loads(fields) if fields else None,
    )


def _dump(indicator_id: int, c: _Contribution) -> tuple[Any, ...]:
    return (
        indicator_id,
        c.source,
        c.seq,
        c.type,
        c.score,
        _SEPARATOR.join(c.tags),
        c.first_seen,
        c.last_seen,
        c.expiration,
        _dump_fields(c.custom_fields),
    )


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
