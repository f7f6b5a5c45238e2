"""
Tests of how the webhook reads events from a body and keeps them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from xsoar_lr_webhook.events import EventError, EventLog, NewEvent, parse_events


def test_one_object_is_one_event_and_is_its_own_raw_json() -> None:
    (event,) = parse_events(b'{"name": "n", "severity": 3}', "Default", 10)
    assert event == NewEvent("n", "Default", None, {"name": "n", "severity": 3})


def test_a_list_gives_each_event_its_fields() -> None:
    body = (
        b'[{"name": "a", "type": "Phishing", "occurred": "2024-05-01T12:00:00Z",'
        b' "raw_json": {"x": 1}}, {"rawJson": [1, 2]}]'
    )
    first, second = parse_events(body, "", 10)
    assert first == NewEvent("a", "Phishing", "2024-05-01T12:00:00Z", {"x": 1})
    assert second == NewEvent("", "", None, [1, 2])


@pytest.mark.parametrize(
    "body, message",
    [
        (
            b"{",
            "The body is not valid JSON: Expecting property name enclosed in "
            "double quotes at line 1 column 2.",
        ),
        (b"\xff\xfe\x00", "The body is not UTF-8 text; send JSON in UTF-8."),
        (
            b"42",
            "The body must be a JSON object (one event) or a list of objects, "
            "not a number.",
        ),
        (b"[]", "The body is an empty list; send at least one event."),
        (b'[{}, "x"]', "Event 2 must be a JSON object, not a string."),
        (b'{"name": 5}', "The event: 'name' must be a string, not a number."),
        (
            b'[{"occurred": "yesterday"}]',
            "Event 1: 'occurred' must be an ISO 8601 "
            "time such as 2024-05-01T12:00:00Z, not 'yesterday'.",
        ),
    ],
)
def test_bad_bodies_are_explained(body: bytes, message: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_events(body, "", 10)
    assert str(caught.value) == message


def test_too_many_events_are_refused() -> None:
    with pytest.raises(OverflowError, match="holds 3 events.*at most 2"):
        parse_events(b"[{}, {}, {}]", "", 2)


def test_events_are_kept_in_order_and_beyond_the_limit_the_oldest_go(
    tmp_path: Path,
) -> None:
    log = EventLog.open(tmp_path / "events.sqlite3", max_events=3)
    for n in range(5):
        log.add([NewEvent(f"e{n}", "", None, {})], 100.0 + n, {"H": ["v"]}, "1.2.3.4")
    events, total = log.page(after=0, limit=10)
    assert total == 3
    assert [(e.id, e.name) for e in events] == [(3, "e2"), (4, "e3"), (5, "e4")]
    assert events[0].headers == {"H": ["v"]} and events[0].client == "1.2.3.4"
    assert [e.id for e in log.page(after=3, limit=1)[0]] == [4]
    assert log.get(1) is None and log.get(5) is not None


def test_old_events_are_pruned_and_ids_are_never_reused(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.sqlite3")
    log.add([NewEvent("old", "", None, {})] * 2, 100.0, {}, None)
    log.add([NewEvent("new", "", None, {})], 200.0, {}, None)
    assert log.prune(before=150.0) == 2
    (stored,) = log.add([NewEvent("newer", "", None, {})], 300.0, {}, None)
    assert stored.id == 4 and log.count() == 2
