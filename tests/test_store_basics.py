"""
The indicator store: schema, merging of sources, replacement, removal,
streaming searches and the generation number.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from xsoar_lr.indicators import Indicator, IndicatorType, Score
from xsoar_lr.query import QueryError
from xsoar_lr.store import (
    SCHEMA_VERSION,
    IndicatorStore,
    StoreError,
    store_path,
)


@pytest.fixture
def store(tmp_path: Path):
    opened = IndicatorStore.open(store_path(tmp_path))
    yield opened
    opened.close()


def ip(value: str, score: int = 0, tags: tuple[str, ...] = (), **kw) -> Indicator:
    return Indicator(value, IndicatorType.IP, score, tags, **kw)


def test_store_path_is_in_the_state_folder(tmp_path: Path) -> None:
    assert store_path(tmp_path) == tmp_path / "indicators.sqlite3"


def test_open_creates_the_schema_in_wal_mode(tmp_path: Path) -> None:
    IndicatorStore.open(store_path(tmp_path / "new")).close()
    connection = sqlite3.connect(store_path(tmp_path / "new"))
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = connection.execute("SELECT version FROM schema_version").fetchall()
    assert version == [(SCHEMA_VERSION,)]
    connection.close()


def test_reopening_keeps_contents_and_does_not_migrate_again(tmp_path: Path) -> None:
    with IndicatorStore.open(store_path(tmp_path)) as store:
        store.add([ip("192.0.2.1")], source="a")
    with IndicatorStore.open(store_path(tmp_path)) as store:
        assert store.count() == 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    IndicatorStore.open(store_path(tmp_path)).close()
    connection = sqlite3.connect(store_path(tmp_path))
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="schema version 99.*upgrade xsoar-lr"):
        IndicatorStore.open(store_path(tmp_path))


def test_a_file_that_is_not_a_database_is_refused_with_its_name(
    tmp_path: Path,
) -> None:
    path = store_path(tmp_path)
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        IndicatorStore.open(path)


def test_the_same_value_from_two_sources_is_one_indicator(store) -> None:
    store.add([ip("192.0.2.1", 1, ("scanner",))], source="Feed A")
    report = store.add([ip("192.0.2.1", 3, ("c2",))], source="Feed B")
    assert (report.added, report.updated) == (0, 1)
    indicator = store.get("192.0.2.1")
    assert indicator is not None
    assert indicator.sources == ("Feed A", "Feed B")
    assert indicator.tags == ("scanner", "c2")
    assert indicator.score is Score.BAD
    assert store.count() == 1


def test_values_are_kept_as_given_and_deduplicated_by_normalised_key(store) -> None:
    report = store.add(
        [
            Indicator("Example.COM", IndicatorType.DOMAIN),
            Indicator("example.com.", IndicatorType.DOMAIN, tags=("x",)),
            Indicator("2001:DB8:0:0::1", IndicatorType.IPV6),
            Indicator("2001:db8::1", IndicatorType.IPV6),
        ],
        source="s",
    )
    assert (report.added, report.duplicates) == (2, 2)
    assert [i.value for i in store.search()] == ["2001:DB8:0:0::1", "Example.COM"]
    assert store.get("example.com").tags == ("x",)


def test_values_that_do_not_fit_their_type_are_rejected(store) -> None:
    report = store.add(
        [ip("192.0.2.1"), ip("not-an-ip.example"), ip("999.1.1.1")], source="s"
    )
    assert report.added == 1
    assert [(r.line, r.value) for r in report.rejected] == [
        (2, "not-an-ip.example"),
        (3, "999.1.1.1"),
    ]
    assert "looks like a Domain" in report.rejected[0].reason


def test_adding_again_from_the_same_source_merges_tags_and_keeps_first_seen(
    store,
) -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    store.add([ip("192.0.2.1", tags=("a",), first_seen=early)], source="s")
    store.add([ip("192.0.2.1", 2, ("b",))], source="s")
    indicator = store.get("192.0.2.1")
    assert indicator.tags == ("a", "b")
    assert indicator.first_seen == early
    assert indicator.score is Score.SUSPICIOUS
    assert indicator.last_seen > early


def test_replace_source_expires_what_the_source_no_longer_lists(store) -> None:
    store.add([ip("192.0.2.1"), ip("192.0.2.2")], source="feed")
    store.add([ip("192.0.2.2")], source="manual")
    report = store.replace_source("feed", [ip("192.0.2.3", tags=("new",))])
    assert (report.added, report.updated, report.removed) == (1, 0, 2)
    assert [i.value for i in store.search()] == ["192.0.2.2", "192.0.2.3"]
    assert store.get("192.0.2.2").sources == ("manual",)


def test_replace_source_replaces_the_tags_of_that_source_only(store) -> None:
    store.add([ip("192.0.2.1", tags=("old",))], source="feed")
    store.add([ip("192.0.2.1", tags=("mine",))], source="manual")
    store.replace_source("feed", [ip("192.0.2.1", tags=("new",))])
    assert set(store.get("192.0.2.1").tags) == {"mine", "new"}


def test_custom_fields_and_expiration_are_stored(store) -> None:
    expires = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    store.add(
        [
            Indicator(
                "http://bad.example/x",
                IndicatorType.URL,
                expiration=expires,
                custom_fields={"proxysgcategory": "Malware"},
            )
        ],
        source="s",
    )
    indicator = store.get("http://bad.example/x")
    assert indicator.expiration == expires
    assert indicator.custom_fields == {"proxysgcategory": "Malware"}
    assert store.count("proxysgcategory:malware") == 1


def test_remove_a_source_keeps_the_indicator_while_others_list_it(store) -> None:
    store.add([ip("192.0.2.1", 3)], source="a")
    store.add([ip("192.0.2.1", 1)], source="b")
    assert store.remove("192.0.2.1", source="a") is True
    assert store.get("192.0.2.1").sources == ("b",)
    assert store.get("192.0.2.1").score is Score.GOOD
    assert store.remove("192.0.2.1", source="a") is False
    assert store.remove("192.0.2.1") is True
    assert store.get("192.0.2.1") is None
    assert store.remove("192.0.2.1") is False
    assert store.remove("not a value") is False


def test_remove_tag_removes_it_from_every_source(store) -> None:
    store.add([ip("192.0.2.1", tags=("Allowlist", "x"))], source="a")
    store.add([ip("192.0.2.1", tags=("allowlist",))], source="b")
    assert store.remove_tag("192.0.2.1", "ALLOWLIST") is True
    assert store.get("192.0.2.1").tags == ("x",)
    assert store.count("tags:allowlist") == 0
    assert store.remove_tag("192.0.2.1", "allowlist") is False


def test_delete_by_query(store) -> None:
    store.add([ip("192.0.2.1", 3), ip("192.0.2.2", 1)], source="a")
    assert store.delete("score:3") == 1
    assert [i.value for i in store.search()] == ["192.0.2.2"]
    assert store.delete("score:3") == 0
    assert store.delete("") == 1
    assert store.count() == 0


def test_search_sorts_pages_and_rejects_bad_arguments(store) -> None:
    store.add(
        [ip(f"192.0.2.{n}", n % 4) for n in range(1, 11)],
        source="a",
    )
    values = [i.value for i in store.search(sort_field="value")]
    assert values == sorted(values)
    assert [i.value for i in store.search(descending=True, limit=2)] == values[::-1][:2]
    assert [i.value for i in store.search(offset=8)] == values[8:]
    scores = [int(i.score) for i in store.search(sort_field="score", descending=True)]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="Cannot sort by 'colour'"):
        store.search(sort_field="colour")
    with pytest.raises(QueryError):
        store.search("type:")


def test_search_streams_in_chunks_and_releases_its_connection(store) -> None:
    store.add([ip(f"10.0.{n // 256}.{n % 256}") for n in range(5000)], source="a")
    results = store.search()
    first = next(results)
    assert first.value == "10.0.0.0"
    # While the stream is open, the store stays usable from the same thread.
    assert store.count() == 5000
    results.close()
    assert sum(1 for _ in store.search()) == 5000


def test_a_search_sees_one_snapshot_even_when_a_write_commits_meanwhile(
    store,
) -> None:
    store.add([ip(f"10.0.{n // 256}.{n % 256}") for n in range(5000)], source="a")
    results = store.search()
    seen = [next(results).value]
    store.delete("")
    seen.extend(i.value for i in results)
    assert len(seen) == 5000
    assert store.count() == 0


def test_generation_changes_with_every_change_and_only_then(store) -> None:
    start = store.generation()
    store.add([ip("192.0.2.1")], source="a")
    after_add = store.generation()
    assert after_add != start
    store.add([], source="a")
    assert store.delete("type:URL") == 0
    assert store.remove("192.0.2.99") is False
    assert store.generation() == after_add


def test_generation_sees_changes_made_by_another_process(store) -> None:
    before = store.generation()
    code = (
        "import sys\n"
        "from xsoar_lr.indicators import Indicator\n"
        "from xsoar_lr.store import IndicatorStore\n"
        "s = IndicatorStore.open(sys.argv[1])\n"
        "s.add([Indicator('198.51.100.7', 'IP')], source='other')\n"
        "s.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(store.path)],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert store.generation() != before
    assert store.get("198.51.100.7").sources == ("other",)


def test_bad_source_and_tag_names_are_refused(store) -> None:
    with pytest.raises(ValueError, match="source name is empty"):
        store.add([ip("192.0.2.1")], source=" ")
    report = store.add([ip("192.0.2.1", tags=("a\x1fb",))], source="s")
    assert report.added == 0
    assert "control character" in report.rejected[0].reason


def test_the_store_is_usable_from_several_threads(store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(n: int) -> int:
        store.add([ip(f"10.1.{n}.{k}") for k in range(50)], source=f"t{n}")
        return sum(1 for _ in store.search(f"sourceBrands:t{n}"))

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(8))) == [50] * 8
    assert store.count() == 400


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = IndicatorStore.open(store_path(tmp_path))
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()
