"""
Writes to the indicator store at some scale: C{replace_source} and C{add}
are set-based SQL, and must give exactly what the merge rules say (checked
against a small model of them), keep the tag index in step, combine values
given twice, and trust only the lists that the readers checked.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import xsoar_lr.store
from xsoar_lr.importers import ImportOptions, read_text
from xsoar_lr.indicators import Indicator, IndicatorType, Score, detect_type, normalise
from xsoar_lr.store import CheckedIndicators, IndicatorStore, store_path

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path):
    opened = IndicatorStore.open(store_path(tmp_path))
    yield opened
    opened.close()


def ip(n: int, **kw: Any) -> Indicator:
    return Indicator(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "IP", **kw)


def test_replacing_a_list_with_itself_updates_all_and_removes_nothing(store) -> None:
    listed = [ip(n, tags=(f"t{n % 3}",)) for n in range(20_000)]
    store.add(listed, source="feed")
    before = store.generation()
    report = store.replace_source("feed", listed)
    assert (report.added, report.updated, report.removed) == (0, 20_000, 0)
    assert store.generation() != before
    assert store.count() == 20_000
    assert store.count("tags:t1") == sum(1 for n in range(20_000) if n % 3 == 1)


def test_replacing_with_one_percent_changed(store) -> None:
    store.add([ip(n, tags=("old",)) for n in range(20_000)], source="feed")
    store.add([ip(n, tags=("mine",)) for n in range(0, 20_000, 50)], source="manual")
    changed = [
        ip(n + 100_000 if n % 100 == 0 else n, tags=("new",) if n % 100 == 1 else ())
        for n in range(20_000)
    ]
    report = store.replace_source("feed", changed)
    assert (report.added, report.updated, report.removed) == (200, 19_800, 200)
    # The 200 values the feed dropped are all listed by "manual" too, so
    # they stay, with that source only.
    assert store.count() == 20_000 + 200
    assert store.get(ip(0).value).sources == ("manual",)
    assert store.get(ip(0).value).tags == ("mine",)
    assert store.get(ip(50).value).sources == ("feed", "manual")
    assert store.count("tags:new") == 200
    assert store.count("tags:old") == 0
    assert store.count("tags:mine") == 400
    assert store.count("sourceBrands:feed") == 20_000


def test_replace_keeps_first_seen_and_takes_the_rest_from_the_new_list(
    store,
) -> None:
    store.add([ip(1, score=3, tags=("a",), first_seen=T0)], source="feed")
    later = T0 + timedelta(days=3)
    store.replace_source("feed", [ip(1, score=1, first_seen=later, last_seen=later)])
    found = store.get(ip(1).value)
    assert (found.first_seen, found.last_seen) == (T0, later)
    assert (found.score, found.tags) == (Score.GOOD, ())
    assert store.count("tags:a") == 0


def test_a_value_given_twice_is_combined_even_across_chunks(
    store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xsoar_lr.store, "_CHUNK", 7)
    given = [ip(n, tags=("first",), first_seen=T0) for n in range(20)]
    given += [
        Indicator(
            "10.0.0.3",
            "IP",
            score=2,
            tags=("second", "FIRST"),
            first_seen=T0 + timedelta(days=1),
            custom_fields={"k": "v"},
        ),
        ip(4, tags=("first",), first_seen=T0),
    ]
    report = store.replace_source("feed", given)
    assert (report.added, report.duplicates) == (20, 2)
    found = store.get("10.0.0.3")
    assert found.tags == ("first", "second")
    assert found.first_seen == T0
    assert found.score is Score.SUSPICIOUS
    assert found.custom_fields == {"k": "v"}
    assert store.count("tags:second") == 1


def test_adding_again_combines_tags_and_custom_fields(store) -> None:
    store.add(
        [ip(1, tags=("a",), custom_fields={"x": 1}), ip(2, tags=("a",))],
        source="s",
    )
    store.add(
        [ip(1, tags=("A", "b"), custom_fields={"y": 2}), ip(2, tags=("a",))],
        source="s",
    )
    assert store.get(ip(1).value).tags == ("a", "b")
    assert store.get(ip(1).value).custom_fields == {"x": 1, "y": 2}
    assert store.get(ip(2).value).tags == ("a",)
    assert store.count("tags:b") == 1


def test_a_readers_list_is_trusted_until_something_else_is_added(store) -> None:
    parsed = read_text(b"192.0.2.1\nexample.com\n", ImportOptions())
    assert isinstance(parsed.indicators, CheckedIndicators)
    assert parsed.indicators.checked
    assert store.add(parsed.indicators, source="s").added == 2

    # An indicator put in by other hands is checked again, and refused.
    parsed.indicators.append(Indicator("example.org", IndicatorType.IP))
    assert not parsed.indicators.checked
    report = store.replace_source("s", parsed.indicators)
    assert [r.value for r in report.rejected] == ["example.org"]
    assert "looks like a Domain" in report.rejected[0].reason
    assert store.count() == 2


def test_a_plain_list_is_always_checked(store) -> None:
    report = store.add([Indicator("example.org", IndicatorType.IP)], source="s")
    assert report.added == 0
    assert "looks like a Domain" in report.rejected[0].reason


class Model:
    """
    The merge rules of the store, written plainly: what each source says
    about each key, and the indicator that follows from it.
    """

    def __init__(self) -> None:
        self.said: dict[str, dict[str, dict[str, Any]]] = {}
        self.values: dict[str, str] = {}
        self.seq = 0

    def write(self, source: str, given: Iterable[Indicator], replace: bool) -> None:
        self.seq += 1
        incoming: dict[str, dict[str, Any]] = {}
        for indicator in given:
            key = normalise(indicator.value, indicator.type)
            new = {
                "value": indicator.value,
                "type": indicator.type,
                "score": indicator.score,
                "tags": tuple(indicator.tags),
                "first": indicator.first_seen,
                "last": indicator.last_seen,
                "expiration": indicator.expiration,
                "fields": dict(indicator.custom_fields),
                "seq": self.seq,
            }
            earlier = incoming.get(key)
            incoming[key] = new if earlier is None else self.combine(earlier, new)
        for key, new in incoming.items():
            self.values.setdefault(key, new["value"])
            earlier = self.said.setdefault(key, {}).get(source)
            if earlier is not None and replace:
                new["first"] = min(earlier["first"], new["first"])
            elif earlier is not None:
                new = self.combine(earlier, new)
            self.said[key][source] = new
        if replace:
            for key in list(self.said):
                if source in self.said[key] and key not in incoming:
                    del self.said[key][source]
                    if not self.said[key]:
                        del self.said[key]
                        del self.values[key]

    @staticmethod
    def combine(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return {
            **new,
            "value": old["value"],
            "tags": unique(old["tags"] + new["tags"]),
            "first": min(old["first"], new["first"]),
            "last": max(old["last"], new["last"]),
            "fields": {**old["fields"], **new["fields"]},
        }

    def indicators(self) -> list[tuple[Any, ...]]:
        result = []
        for key in sorted(self.said):
            said = self.said[key]
            by_time = sorted(said, key=lambda s: (said[s]["first"], s.lower()))
            by_write = sorted(said, key=lambda s: said[s]["seq"])
            expirations = [said[s]["expiration"] for s in said]
            fields: dict[str, Any] = {}
            for s in by_write:
                fields.update(said[s]["fields"])
            result.append(
                (
                    self.values[key],
                    said[by_write[-1]]["type"],
                    max(said[s]["score"] for s in said),
                    unique([t for s in by_time for t in said[s]["tags"]]),
                    tuple(sorted(said, key=str.lower)),
                    min(said[s]["first"] for s in said),
                    max(said[s]["last"] for s in said),
                    None if None in expirations else max(expirations),
                    fields,
                )
            )
        return result


def unique(tags: Sequence[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    return tuple(
        t for t in tags if not (t.casefold() in seen or seen.add(t.casefold()))
    )


def random_list(rng: random.Random, size: int) -> list[Indicator]:
    kinds = ("Example.com", "example.com", "b.example.com", "198.51.100.")
    listed = []
    for _ in range(size):
        n = rng.randrange(60)
        kind = kinds[n % 4]
        value = f"{kind}{n}" if kind.endswith(".") else f"h{n}.{kind}"
        first = T0 + timedelta(hours=rng.randrange(48))
        listed.append(
            Indicator(
                value,
                detect_type(value),
                score=rng.randrange(4),
                tags=tuple(rng.sample(("a", "B", "b", "c", "d"), rng.randrange(3))),
                first_seen=first,
                last_seen=first + timedelta(hours=rng.randrange(48)),
                expiration=rng.choice((None, T0 + timedelta(days=rng.randrange(9)))),
                custom_fields=rng.choice(({}, {"f": rng.randrange(3)}, {"g": 1})),
            )
        )
    return listed


@pytest.mark.parametrize("seed", range(12))
def test_writes_follow_the_merge_rules(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    model = Model()
    with IndicatorStore.open(store_path(tmp_path)) as store:
        for _ in range(8):
            source = rng.choice(("Feed A", "feed b", "Manual"))
            listed = random_list(rng, rng.randrange(0, 40))
            replace = rng.random() < 0.5
            if replace:
                store.replace_source(source, listed)
            else:
                store.add(listed, source=source)
            model.write(source, listed, replace)

            expected = model.indicators()
            found = [
                (
                    i.value,
                    i.type,
                    i.score,
                    i.tags,
                    i.sources,
                    i.first_seen,
                    i.last_seen,
                    i.expiration,
                    i.custom_fields,
                )
                for i in store.search()
            ]
            assert found == expected
            for tag in ("a", "b", "c", "d"):
                assert store.count(f"tags:{tag}") == sum(
                    1 for row in expected if tag in {t.casefold() for t in row[3]}
                )
            for source in ("Feed A", "feed b", "Manual"):
                assert store.count(f'sourceBrands:"{source}"') == sum(
                    1 for row in expected if source in row[4]
                )


def test_a_source_is_the_same_whatever_the_case_of_its_name(store) -> None:
    store.add([ip(1, tags=("a",)), ip(2)], source="Feed")
    report = store.replace_source("FEED", [ip(1, tags=("b",))])
    assert (report.added, report.updated, report.removed) == (0, 1, 1)
    assert store.sources() == {"FEED": 1}
    found = store.get(ip(1).value)
    assert (found.sources, found.tags) == (("FEED",), ("b",))
