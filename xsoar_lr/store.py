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

A write stages what its source says in a temporary table and applies it
with a few set-based statements in one transaction; only indicators that
several sources list are merged in Python (L{_merge}).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
import types
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, SupportsIndex

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


#: A row of the C{staged} table as L{IndicatorStore._prepare} makes it: key,
#: value (C{None} when it is the key), type, score, tags, first seen, last
#: seen, expiration, custom fields.
_Staged = tuple[Any, ...]

# A write stages what its source says in this table, one row per key, then
# applies it with set-based statements. The columns after custom_fields are
# found in the store: the indicator's id (existed is NULL for a new one),
# whether other sources list it, whether its tags or custom fields must be
# combined in Python, and what the source said about it before.
_STAGED_TABLE = """
CREATE TEMP TABLE staged (
    key TEXT PRIMARY KEY,
    value TEXT,
    type TEXT NOT NULL,
    score INTEGER NOT NULL,
    tags TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    expiration INTEGER,
    custom_fields TEXT,
    id INTEGER,
    existed INTEGER,
    others INTEGER NOT NULL DEFAULT 0,
    mixed INTEGER NOT NULL DEFAULT 0,
    old_tags TEXT,
    old_first INTEGER,
    old_last INTEGER,
    old_fields TEXT
) WITHOUT ROWID
"""

# Fills indicator_tags from rows of (id, tags joined by the separator) that
# {listed} selects, splitting the tags in SQL.
_INSERT_TAGS = """
WITH RECURSIVE listed(id, tags) AS ({listed}),
parts(id, tag, rest) AS (
    SELECT id, NULL, tags || char(31) FROM listed
    UNION ALL
    SELECT id, substr(rest, 1, instr(rest, char(31)) - 1),
        substr(rest, instr(rest, char(31)) + 1)
    FROM parts WHERE rest <> ''
)
INSERT OR IGNORE INTO indicator_tags (tag, indicator_id)
SELECT tag, id FROM parts WHERE tag IS NOT NULL ORDER BY tag COLLATE NOCASE, id
"""


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


class CheckedIndicators(list[Indicator]):
    """
    A list of indicators whose types were checked when they were made, as
    the readers of L{xsoar_lr.importers} do: the store then does not detect
    each value's type a second time.

    The readers fill it with L{append_checked}. Any other way of putting an
    indicator in (C{append}, C{extend}, C{insert}, assigning an item or
    C{+=}) clears L{checked}, and the store checks every indicator again, so
    the shortcut never lets an unchecked value through.

    :ivar checked: whether every indicator in the list was checked.
    """

    checked: bool

    def __init__(self, items: Iterable[Indicator] = ()) -> None:
        super().__init__(items)
        self.checked = not self

    #: Add an indicator whose value was found to fit its type (by
    #: L{xsoar_lr.indicators.detect_type} or L{xsoar_lr.indicators.check_type}).
    #: It is the plain C{list.append}, which leaves L{checked} as it is.
    append_checked = list.append

    def append(self, indicator: Indicator) -> None:
        self.checked = False
        super().append(indicator)

    def extend(self, indicators: Iterable[Indicator]) -> None:
        self.checked = False
        super().extend(indicators)

    def insert(self, index: SupportsIndex, indicator: Indicator) -> None:
        self.checked = False
        super().insert(index, indicator)

    def __setitem__(self, index: Any, value: Any) -> None:
        self.checked = False
        super().__setitem__(index, value)

    def __iadd__(  # type: ignore[override,misc]
        self, indicators: Iterable[Indicator]
    ) -> CheckedIndicators:
        self.checked = False
        super().__iadd__(indicators)
        return self


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
# list of a million. Should the model gain a field or lose its slots, the
# normal initialiser is used instead.
_SLOTS: dict[str, Any] = {
    name: Indicator.__dict__.get(name) for name in _INDICATOR_FIELDS
}
_FAST_BUILD = tuple(
    f.name for f in attrs.fields(Indicator)
) == _INDICATOR_FIELDS and all(
    isinstance(slot, types.MemberDescriptorType) for slot in _SLOTS.values()
)


def _reader() -> Callable[[Sequence[Any]], Indicator]:
    """
    Return a function that turns rows into indicators, remembering the
    repeated parts (tag and source lists, import times) for the length of
    one stream.
    """
    if not _FAST_BUILD:
        return _to_indicator
    times: dict[int | None, datetime | None] = {None: None}
    lists: dict[str, tuple[str, ...]] = {"": ()}
    new = object.__new__
    kinds, scores, separator, loads = _TYPES, _SCORES, _SEPARATOR, json.loads
    # Setting the slots through their descriptors skips the attribute
    # lookup of setattr; this loop runs once per indicator of a stream.
    (
        set_value,
        set_type,
        set_score,
        set_tags,
        set_sources,
        set_first_seen,
        set_last_seen,
        set_expiration,
        set_custom_fields,
    ) = (_SLOTS[name].__set__ for name in _INDICATOR_FIELDS)

    def moment(stamp: int) -> datetime:
        if len(times) > 4096:
            times.clear()
            times[None] = None
        found = times[stamp] = from_time_stamp(stamp)
        return found

    def split(text: str) -> tuple[str, ...]:
        if len(lists) > 4096:
            lists.clear()
            lists[""] = ()
        found = lists[text] = tuple(text.split(separator))
        return found

    def convert(row: Sequence[Any]) -> Indicator:
        value, type_, score, tags, sources, first, last, expiration, fields = row
        indicator = new(Indicator)
        set_value(indicator, value)
        set_type(indicator, kinds[type_])
        set_score(indicator, scores[score])
        found = lists.get(tags)
        set_tags(indicator, split(tags) if found is None else found)
        found = lists.get(sources)
        set_sources(indicator, split(sources) if found is None else found)
        # The cache itself marks a moment not seen yet (None is a moment).
        when = times.get(first, times)
        set_first_seen(indicator, moment(first) if when is times else when)
        when = times.get(last, times)
        set_last_seen(indicator, moment(last) if when is times else when)
        when = times.get(expiration, times)
        set_expiration(indicator, moment(expiration) if when is times else when)
        set_custom_fields(indicator, loads(fields) if fields else {})
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
        # Reading through a map of the file saves a copy per page; the map
        # covers a store of a few million indicators.
        connection.execute("PRAGMA mmap_size = 1073741824")
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
        prepared = self._prepare(indicators, now, report)
        try:
            with self._writing() as (connection, generation):
                self._write_all(
                    connection, prepared, source, generation, replace, report
                )
        except _NothingChanged:
            pass
        return report

    def _prepare(
        self, indicators: Iterable[Indicator], now: int, report: ImportReport
    ) -> Iterator[_Staged]:
        """
        Check each indicator and turn it into a row of the C{staged} table;
        rejected ones go to the report.
        """
        # A reader's list was checked as it was made; checking each value
        # again would detect its type twice.
        trusted = isinstance(indicators, CheckedIndicators) and indicators.checked
        for index, indicator in enumerate(indicators, 1):
            value = indicator.value
            try:
                if not trusted:
                    check_type(value, indicator.type)
                key = normalise(value, indicator.type)
                tags = _unique_tags(indicator.tags)
                for tag in tags:
                    _check_name("tag", tag)
                fields = indicator.custom_fields
                dumped = json.dumps(dict(fields), sort_keys=True) if fields else None
            except (ValueError, TypeError) as e:
                report.rejected.append(Reject(index, value, str(e)))
                continue
            first, last, expiration = (
                indicator.first_seen,
                indicator.last_seen,
                indicator.expiration,
            )
            yield (
                key,
                None if value == key else value,
                indicator.type.value,
                int(indicator.score),
                _SEPARATOR.join(tags),
                now if first is None else time_stamp(first),
                now if last is None else time_stamp(last),
                None if expiration is None else time_stamp(expiration),
                dumped,
            )

    def _write_all(
        self,
        connection: sqlite3.Connection,
        prepared: Iterable[_Staged],
        source: str,
        generation: int,
        replace: bool,
        report: ImportReport,
    ) -> None:
        """
        Store a source's indicators, set-based: they are staged in a
        temporary table, and each step below is one statement over all of
        them. Only indicators that several sources list, and repeated
        statements of one source whose tags or custom fields must be
        combined, are merged in Python.
        """
        connection.execute("DROP TABLE IF EXISTS temp.staged")
        connection.execute(_STAGED_TABLE)
        last_id = connection.execute(
            "SELECT coalesce(max(id), 0) FROM indicators"
        ).fetchone()[0]
        self._stage(connection, prepared, last_id + 1, report)
        self._resolve(connection, source, replace)
        counts = connection.execute(
            "SELECT count(*) - count(existed), count(existed) FROM temp.staged"
        ).fetchone()
        report.added, report.updated = counts

        # The source's contributions, then the indicators listed by this
        # source alone (their row is the contribution), then those that
        # other sources list too. A replaced contribution keeps its first
        # sighting.
        first_seen = "min(s.first_seen, coalesce(s.old_first, s.first_seen))"
        connection.execute(
            "INSERT OR REPLACE INTO contributions (indicator_id, source, seq, type, "
            "score, tags, first_seen, last_seen, expiration, custom_fields) "
            f"SELECT id, ?, ?, type, score, tags, {first_seen}, last_seen, "
            "expiration, custom_fields FROM temp.staged AS s ORDER BY id",
            (source, generation),
        )
        connection.execute(
            "INSERT INTO indicators (id, key, value, type, score, tags, sources, "
            "first_seen, last_seen, expiration, custom_fields) "
            "SELECT id, key, value, type, score, tags, ?, first_seen, "
            "last_seen, expiration, custom_fields FROM temp.staged "
            "WHERE existed IS NULL ORDER BY key",
            (source,),
        )
        connection.execute(
            "UPDATE indicators SET type = s.type, score = s.score, tags = s.tags, "
            f"sources = ?, first_seen = {first_seen}, last_seen = s.last_seen, "
            "expiration = s.expiration, custom_fields = s.custom_fields "
            "FROM temp.staged AS s "
            "WHERE s.key = indicators.key AND s.existed AND NOT s.others",
            (source,),
        )
        retag = "existed AND NOT others AND tags IS NOT old_tags"
        connection.execute(
            "DELETE FROM indicator_tags "
            f"WHERE indicator_id IN (SELECT id FROM temp.staged WHERE {retag})"
        )
        tagged = f"tags <> '' AND (existed IS NULL OR ({retag}))"
        # Most indicators have one tag, which needs no splitting.
        connection.execute(
            "INSERT OR IGNORE INTO indicator_tags (tag, indicator_id) "
            f"SELECT tags, id FROM temp.staged WHERE {tagged} "
            "AND instr(tags, char(31)) = 0 ORDER BY tags COLLATE NOCASE, id"
        )
        connection.execute(
            _INSERT_TAGS.format(
                listed=f"SELECT id, tags FROM temp.staged WHERE {tagged} "
                "AND instr(tags, char(31)) > 0"
            )
        )
        shared = [
            row[0]
            for row in connection.execute(
                "SELECT id FROM temp.staged WHERE others ORDER BY id"
            )
        ]
        self._remerge(connection, shared)

        if replace:
            self._remove_stale(connection, source, generation, report)
        connection.execute("DROP TABLE temp.staged")
        if not report.changed:
            # Nothing to commit; leave the generation as it was.
            raise _NothingChanged()

    def _stage(
        self,
        connection: sqlite3.Connection,
        prepared: Iterable[_Staged],
        next_id: int,
        report: ImportReport,
    ) -> None:
        """
        Fill the C{staged} table, one row per key; a value given more than
        once is combined into its first statement. Each row gets an id from
        C{next_id} on, kept if its indicator turns out to be new.
        """
        for chunk in _chunks(prepared, _CHUNK):
            rows: dict[str, _Staged] = {}
            for row in chunk:
                earlier = rows.get(row[0])
                if earlier is not None:
                    report.duplicates += 1
                    row = _combine_rows(earlier, row)
                rows[row[0]] = row
            # Keys in order walk the table's B-tree once.
            ordered = sorted(rows.values())
            before = connection.total_changes
            connection.executemany(
                "INSERT INTO temp.staged (key, value, type, score, tags, first_seen, "
                "last_seen, expiration, custom_fields, id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                [(*row, next_id + n) for n, row in enumerate(ordered)],
            )
            next_id += len(ordered)
            repeats = len(ordered) - (connection.total_changes - before)
            if repeats:
                # Values also given in an earlier chunk: rare enough to
                # combine one by one.
                report.duplicates += repeats
                for row in ordered:
                    staged = connection.execute(
                        "SELECT key, value, type, score, tags, first_seen, "
                        "last_seen, expiration, custom_fields FROM temp.staged "
                        "WHERE key = ?",
                        (row[0],),
                    ).fetchone()
                    if tuple(staged) != row:
                        combined = _combine_rows(staged, row)
                        connection.execute(
                            "UPDATE temp.staged SET value = ?, type = ?, score = ?, "
                            "tags = ?, first_seen = ?, last_seen = ?, "
                            "expiration = ?, custom_fields = ? WHERE key = ?",
                            (*combined[1:], combined[0]),
                        )

    def _resolve(
        self, connection: sqlite3.Connection, source: str, replace: bool
    ) -> None:
        """
        Find, for each staged row, its indicator if the store has it, what
        the source said about it before, and whether other sources list
        it. When adding, combine what the source says now with what it
        said before.
        """
        if connection.execute("SELECT 1 FROM indicators LIMIT 1").fetchone() is None:
            return
        # Looking for other sources costs a third of this statement; a
        # store that only this source fills needs none (two index probes
        # tell).
        alone = not connection.execute(
            "SELECT EXISTS (SELECT 1 FROM contributions WHERE source < ?) "
            "OR EXISTS (SELECT 1 FROM contributions WHERE source > ?)",
            (source, source),
        ).fetchone()[0]
        others = (
            "0"
            if alone
            else "EXISTS (SELECT 1 FROM contributions AS o "
            "WHERE o.indicator_id = i.id AND o.source <> :source)"
        )
        connection.execute(
            "UPDATE temp.staged SET id = i.id, existed = 1, "
            "old_tags = c.tags, old_first = c.first_seen, old_last = c.last_seen, "
            f"old_fields = c.custom_fields, others = {others} "
            "FROM indicators AS i LEFT JOIN contributions AS c "
            "ON c.indicator_id = i.id AND c.source = :source "
            "WHERE i.key = staged.key",
            {"source": source},
        )
        if replace:
            return

        # Tags and custom fields add up; equal or empty ones are combined
        # here, the others in Python.
        connection.execute(
            "UPDATE temp.staged SET "
            "first_seen = min(first_seen, old_first), "
            "last_seen = max(last_seen, old_last), "
            "tags = CASE WHEN tags = '' THEN old_tags ELSE tags END, "
            "custom_fields = coalesce(custom_fields, old_fields), "
            "mixed = (tags <> '' AND old_tags NOT IN ('', tags)) OR "
            "(custom_fields IS NOT NULL AND old_fields IS NOT NULL "
            "AND custom_fields <> old_fields) "
            "WHERE old_first IS NOT NULL"
        )
        mixed = connection.execute(
            "SELECT key, tags, custom_fields, old_tags, old_fields "
            "FROM temp.staged WHERE mixed"
        ).fetchall()
        for key, tags, fields, old_tags, old_fields in mixed:
            combined_fields = {**_load_fields(old_fields), **_load_fields(fields)}
            connection.execute(
                "UPDATE temp.staged SET tags = ?, custom_fields = ? WHERE key = ?",
                (
                    _SEPARATOR.join(_unique_tags(_split(old_tags) + _split(tags))),
                    _dump_fields(combined_fields),
                    key,
                ),
            )

    def _remerge(self, connection: sqlite3.Connection, ids: Sequence[int]) -> None:
        """
        Recompute the rows of these indicators from all their contributions.
        """
        for chunk in _chunks(ids, _CHUNK):
            _fill_affected(connection, chunk)
            self._rewrite(connection, _load_affected(connection))
            connection.execute("DELETE FROM temp.affected")

    def _remove_stale(
        self,
        connection: sqlite3.Connection,
        source: str,
        generation: int,
        report: ImportReport,
    ) -> None:
        """
        Remove the contributions of C{source} that the write did not
        renew, and the indicators left without any.
        """
        connection.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stale "
            "(id INTEGER PRIMARY KEY, kept INTEGER)"
        )
        connection.execute("DELETE FROM temp.stale")
        report.removed = connection.execute(
            "INSERT INTO temp.stale (id) SELECT indicator_id FROM contributions "
            "WHERE source = ? AND seq < ?",
            (source, generation),
        ).rowcount
        if not report.removed:
            return
        connection.execute(
            "DELETE FROM contributions WHERE source = ? AND seq < ?",
            (source, generation),
        )
        connection.execute(
            "UPDATE temp.stale SET kept = EXISTS ("
            "SELECT 1 FROM contributions WHERE indicator_id = stale.id)"
        )
        connection.execute(
            "DELETE FROM indicator_tags "
            "WHERE indicator_id IN (SELECT id FROM temp.stale WHERE NOT kept)"
        )
        connection.execute(
            "DELETE FROM indicators "
            "WHERE id IN (SELECT id FROM temp.stale WHERE NOT kept)"
        )
        kept = [
            row[0] for row in connection.execute("SELECT id FROM temp.stale WHERE kept")
        ]
        connection.execute("DELETE FROM temp.stale")
        self._remerge(connection, kept)

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
        _fill_affected(connection, indicator_ids)
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
        remaining = _load_affected(connection)
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


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(_SEPARATOR)) if text else ()


def _load_fields(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _combine_rows(old: Sequence[Any], new: _Staged) -> _Staged:
    """
    Merge a new statement of a source about an indicator (a row of the
    C{staged} table) into its earlier one: tags and custom fields add up,
    the value stays the first one given, the rest is the newer word.
    """
    fields = {**_load_fields(old[8]), **_load_fields(new[8])}
    return (
        new[0],
        old[1],
        new[2],
        new[3],
        _SEPARATOR.join(_unique_tags(_split(old[4]) + _split(new[4]))),
        min(old[5], new[5]),
        max(old[6], new[6]),
        new[7],
        _dump_fields(fields),
    )


def _fill_affected(connection: sqlite3.Connection, ids: Iterable[int]) -> None:
    """
    Put these indicator ids in the C{affected} table, alone.
    """
    connection.execute(
        "CREATE TEMP TABLE IF NOT EXISTS affected (id INTEGER PRIMARY KEY)"
    )
    connection.execute("DELETE FROM temp.affected")
    connection.executemany(
        "INSERT OR IGNORE INTO temp.affected (id) VALUES (?)", ((i,) for i in ids)
    )


def _load_affected(connection: sqlite3.Connection) -> dict[int, list[_Contribution]]:
    """
    Return the contributions to the indicators of the C{affected} table.
    """
    found: dict[int, list[_Contribution]] = {}
    for row in connection.execute(
        "SELECT c.indicator_id, c.source, c.seq, c.type, c.score, "
        "c.tags, c.first_seen, c.last_seen, c.expiration, c.custom_fields "
        "FROM temp.affected AS a JOIN contributions AS c ON c.indicator_id = a.id"
    ):
        found.setdefault(row[0], []).append(_load(row[1:]))
    return found


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
