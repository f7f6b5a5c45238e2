"""
Persistent key-value state of one instance: XSOAR's integration context.

An instance keeps small facts between requests and across restarts here: a
cursor into a remote API, the time of the last poll, a token and its expiry.
Values are anything JSON can hold. The state lives in one SQLite file in the
instance's state folder, so that:

 - every change is durable once the call returns;
 - writers in several threads of one process, and in several processes (the
   instance itself and an C{xsoar-lr} command, say), never lose each other's
   changes: each write is one C{BEGIN IMMEDIATE} transaction, and
   L{KeyValueState.modify} reads and writes under the same lock;
 - readers always see a whole state, never half of a change.

Every change increments a version number. L{KeyValueState.replace} takes the
version a caller read and refuses to overwrite a state that changed since
(optimistic concurrency, as XSOAR's C{setIntegrationContextVersioned} does).

Methods block for as long as SQLite takes (well under a millisecond for small
states on a local disk; longer when another process holds the write lock).
They may be called from the reactor thread for small states, or from any
thread of C{reactor.getThreadPool()}.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "KeyValueState",
    "StateConflict",
    "StateError",
    "state_path",
]

#: The file name of the state in an instance's state folder.
STATE_FILE = "integration-context.sqlite3"

#: How long a writer waits for another process's write lock, in seconds.
BUSY_TIMEOUT = 30.0

_MISSING = object()

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0);
COMMIT;
"""


class StateError(Exception):
    """
    The state cannot be read or written; the message names the file and
    says what to do.
    """


class StateConflict(StateError):
    """
    L{KeyValueState.replace} was given a version that is no longer current:
    someone else changed the state after the caller read it.

    :ivar expected: the version the caller read.
    :ivar current: the version the state has now.
    """

    def __init__(self, path: Path, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(
            f"The state in {str(path)!r} changed since it was read (version "
            f"{expected}, now {current}); read it again and redo the change."
        )


def state_path(state_dir: Path | str) -> Path:
    """
    Where the state of the instance whose folder is C{state_dir} lives.
    """
    return Path(state_dir) / STATE_FILE


def _encode(key: str, value: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"State keys are strings, not {key!r}.")
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"The value for state key {key!r} cannot be stored: {e}. Store only "
            "what JSON holds: dicts with string keys, lists, strings, finite "
            "numbers, booleans and None."
        ) from None


class KeyValueState(MutableMapping[str, Any]):
    """
    A persistent mapping of strings to JSON values, safe to share between
    threads and processes.

    It is a C{MutableMapping}: C{state["cursor"] = 5}, C{state.get("cursor")},
    C{del state["cursor"]}, C{"cursor" in state}, C{dict(state)}. Each of those
    is one transaction; use L{modify} or L{update} to change several things
    at once, or to change a value based on what it was.

    Values are copies: changing a list read from the state does not change
    the state until it is stored again.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        """
        Use L{open}.
        """
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path | str) -> KeyValueState:
        """
        Open the state file at C{path}, making it (and its folder) if needed.

        :raises StateError: when the file cannot be opened or is not a state.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                str(path),
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as e:
            raise StateError(
                f"The instance state {str(path)!r} cannot be opened ({e}); check "
                "that its folder exists and is writable."
            ) from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=FULL: a change is on disk when the call
            # returns, at the price of one fsync per change.
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            connection.close()
            raise StateError(
                f"The instance state {str(path)!r} is not a usable state file "
                f"({e}); move it away and the instance starts with an empty "
                "state."
            ) from None
        return cls(path, connection)

    def close(self) -> None:
        """
        Close the file; further use raises L{StateError}.
        """
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> KeyValueState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Transactions.

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._connection
            if connection is None:
                raise StateError(f"The instance state {str(self.path)!r} is closed.")
            try:
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as e:
                raise StateError(
                    f"The instance state {str(self.path)!r} is locked by another "
                    f"process for longer than {BUSY_TIMEOUT:g} seconds ({e})."
                ) from None
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            else:
                connection.execute("COMMIT")

    @staticmethod
    def _bump(connection: sqlite3.Connection) -> int:
        connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
        return KeyValueState._version(connection)

    @staticmethod
    def _version(connection: sqlite3.Connection) -> int:
        row = connection.execute(
            "SELECT value FROM meta WHERE name = 'version'"
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _read_all(connection: sqlite3.Connection) -> dict[str, Any]:
        return {
            key: json.loads(value)
            for key, value in connection.execute(
                "SELECT key, value FROM entries ORDER BY key"
            )
        }

    # The mapping.

    def __getitem__(self, key: str) -> Any:
        with self._transaction(write=False) as connection:
            row = connection.execute(
                "SELECT value FROM entries WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        with self._transaction(write=True) as connection:
            deleted = connection.execute(
                "DELETE FROM entries WHERE key = ?", (key,)
            ).rowcount
            if deleted:
                self._bump(connection)
        if not deleted:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        with self._transaction(write=False) as connection:
            keys = [k for (k,) in connection.execute("SELECT key FROM entries")]
        return iter(sorted(keys))

    def __len__(self) -> int:
        with self._transaction(write=False) as connection:
            (count,) = connection.execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(count)

    def __contains__(self, key: object) -> bool:
        with self._transaction(write=False) as connection:
            row = connection.execute(
                "SELECT 1 FROM entries WHERE key = ?", (key,)
            ).fetchone()
        return row is not None

    def __repr__(self) -> str:
        return f"<KeyValueState {str(self.path)!r}>"

    # Whole-state operations.

    def snapshot(self) -> tuple[dict[str, Any], int]:
        """
        The whole state and its version, read in one transaction.
        """
        with self._transaction(write=False) as connection:
            return self._read_all(connection), self._version(connection)

    def version(self) -> int:
        """
        A number that grows with every change, made by any process.
        """
        with self._transaction(write=False) as connection:
            return self._version(connection)

    def update(  # type: ignore[override]
        self, changes: Mapping[str, Any] | None = None, /, **more: Any
    ) -> int:
        """
        Set several keys in one transaction, leaving the others as they are.

        :returns: the new version.
        :raises ValueError: naming the key whose value JSON cannot hold.
        """
        encoded = [(k, _encode(k, v)) for k, v in {**(changes or {}), **more}.items()]
        with self._transaction(write=True) as connection:
            connection.executemany(
                "INSERT INTO entries (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                encoded,
            )
            return self._bump(connection)

    def replace(self, state: Mapping[str, Any], *, version: int | None = None) -> int:
        """
        Make C{state} the whole state, in one transaction.

        :param version: the version the caller read (from L{snapshot}); when
            given and the state changed since, nothing is written.
        :returns: the new version.
        :raises StateConflict: when C{version} is not the current version.
        :raises ValueError: naming the key whose value JSON cannot hold.
        """
        encoded = [(k, _encode(k, v)) for k, v in state.items()]
        with self._transaction(write=True) as connection:
            current = self._version(connection)
            if version is not None and version != current:
                raise StateConflict(self.path, version, current)
            connection.execute("DELETE FROM entries")
            connection.executemany(
                "INSERT INTO entries (key, value) VALUES (?, ?)", encoded
            )
            return self._bump(connection)

    def modify(
        self, key: str, change: Callable[[Any], Any], default: Any = None
    ) -> Any:
        """
        Replace the value of C{key} with C{change(old value)}, holding the
        write lock from the read to the write, so that concurrent calls
        (threads or processes) never lose an update. C{change} runs with the
        lock held: keep it short and free of I/O.

        :param default: the old value passed when C{key} is absent.
        :returns: the new value.
        """
        with self._transaction(write=True) as connection:
            row = connection.execute(
                "SELECT value FROM entries WHERE key = ?", (key,)
            ).fetchone()
            old = default if row is None else json.loads(row[0])
            new = change(old)
            connection.execute(
                "INSERT INTO entries (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, _encode(key, new)),
            )
            self._bump(connection)
        return new

    def setdefault(self, key: str, default: Any = None) -> Any:
        """
        The value of C{key}, storing C{default} first when it is absent, in
        one transaction.
        """
        with self._transaction(write=True) as connection:
            row = connection.execute(
                "SELECT value FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                return json.loads(row[0])
            connection.execute(
                "INSERT INTO entries (key, value) VALUES (?, ?)",
                (key, _encode(key, default)),
            )
            self._bump(connection)
        return default

    def clear(self) -> None:
        """
        Remove every key, in one transaction.
        """
        with self._transaction(write=True) as connection:
            connection.execute("DELETE FROM entries")
            self._bump(connection)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """
        Remove C{key} and return its value, in one transaction.

        :raises KeyError: when C{key} is absent and no default is given.
        """
        with self._transaction(write=True) as connection:
            row = connection.execute(
                "SELECT value FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                connection.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._bump(connection)
        if row is not None:
            return json.loads(row[0])
        if default is _MISSING:
            raise KeyError(key)
        return default
