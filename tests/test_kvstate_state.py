"""
Tests of L{xsoar_lr.kvstate}: the persistent key-value state of an instance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from xsoar_lr.kvstate import KeyValueState, StateConflict, StateError, state_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return state_path(tmp_path / "instance")


def test_values_survive_closing_and_reopening(path: Path) -> None:
    value = {"cursor": "abc", "seen": [1, 2.5, None, True], "nested": {"a": {}}}
    with KeyValueState.open(path) as state:
        state["last"] = value
        state.update(count=3, token="t")
    with KeyValueState.open(path) as state:
        assert dict(state) == {"count": 3, "last": value, "token": "t"}
        assert state.get("missing", "default") == "default"
        assert "count" in state and "missing" not in state
        assert len(state) == 3


def test_every_change_raises_the_version(path: Path) -> None:
    with KeyValueState.open(path) as state:
        assert state.version() == 0
        state["a"] = 1
        state.update({"b": 2, "c": 3})
        del state["a"]
        assert state.pop("b") == 2
        state.clear()
        assert state.version() == 5
        assert state.snapshot() == ({}, 5)


def test_a_value_json_cannot_hold_is_refused_naming_the_key(path: Path) -> None:
    with KeyValueState.open(path) as state:
        state["kept"] = 1
        with pytest.raises(ValueError, match="'when'.*JSON"):
            state.update(kept=2, when=object())
        with pytest.raises(ValueError, match="'ratio'"):
            state["ratio"] = float("nan")
        assert dict(state) == {"kept": 1}


def test_replace_refuses_a_state_that_changed_since_it_was_read(path: Path) -> None:
    with KeyValueState.open(path) as state:
        state["n"] = 1
        seen, version = state.snapshot()
        with KeyValueState.open(path) as other:
            other["n"] = 2
        with pytest.raises(StateConflict) as caught:
            state.replace({"n": seen["n"] + 10}, version=version)
        assert (caught.value.expected, caught.value.current) == (version, version + 1)
        assert "read it again" in str(caught.value)
        assert dict(state) == {"n": 2}
        state.replace({"n": 12, "m": 0}, version=version + 1)
        assert dict(state) == {"m": 0, "n": 12}


def test_missing_keys_raise_key_error(path: Path) -> None:
    with KeyValueState.open(path) as state:
        with pytest.raises(KeyError):
            state["nothing"]
        with pytest.raises(KeyError):
            del state["nothing"]
        with pytest.raises(KeyError):
            state.pop("nothing")
        assert state.pop("nothing", 7) == 7
        assert state.setdefault("made", [1]) == [1]
        assert state.setdefault("made", [2]) == [1]


def test_a_failing_change_writes_nothing(path: Path) -> None:
    with KeyValueState.open(path) as state:
        state["n"] = 1

        def broken(old: int) -> int:
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            state.modify("n", broken)
        assert state.snapshot() == ({"n": 1}, 1)


def test_concurrent_threads_lose_no_update(path: Path) -> None:
    with KeyValueState.open(path) as state:

        def work() -> None:
            for _ in range(50):
                state.modify("n", lambda n: n + 1, 0)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert state["n"] == 400


_WORKER = """
import sys
from xsoar_lr.kvstate import KeyValueState
with KeyValueState.open(sys.argv[1]) as state:
    for _ in range(int(sys.argv[2])):
        state.modify("n", lambda n: n + 1, 0)
        state.modify(sys.argv[3], lambda n: n + 1, 0)
"""


def test_concurrent_processes_lose_no_update(path: Path) -> None:
    KeyValueState.open(path).close()
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), "40", f"w{i}"], env=environment
        )
        for i in range(4)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0, 0]
    with KeyValueState.open(path) as state:
        assert dict(state) == {"n": 160, "w0": 40, "w1": 40, "w2": 40, "w3": 40}
        assert state.version() == 320


def test_a_closed_state_says_so(path: Path) -> None:
    state = KeyValueState.open(path)
    state.close()
    state.close()
    with pytest.raises(StateError, match="is closed"):
        state["a"] = 1


def test_a_file_that_is_not_a_state_is_named(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite, " * 100)
    with pytest.raises(StateError, match="not a usable state file") as caught:
        KeyValueState.open(path)
    assert str(path) in str(caught.value)
