"""
XSOAR indicator queries: every construct, run against a small store, and
the errors for wrong syntax.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from xsoar_lr.indicators import Indicator, IndicatorType
from xsoar_lr.query import QueryError, compile_query
from xsoar_lr.store import IndicatorStore, store_path

NOW = datetime.now(UTC)
OLD = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    path = store_path(tmp_path_factory.mktemp("query"))
    opened = IndicatorStore.open(path)
    opened.add(
        [
            Indicator("192.0.2.1", IndicatorType.IP, 3, ("ransomware",)),
            Indicator("192.0.2.2", IndicatorType.IP, 1, ("allowlist",)),
            Indicator(
                "198.51.100.0/24",
                IndicatorType.CIDR,
                2,
                last_seen=OLD,
                first_seen=OLD,
            ),
            Indicator("2001:db8::1", IndicatorType.IPV6, 3),
            Indicator(
                "*.example.com",
                IndicatorType.DOMAIN_GLOB,
                3,
                expiration=NOW - timedelta(days=1),
            ),
            Indicator(
                "www.example.com",
                IndicatorType.DOMAIN,
                0,
                ("ransom-note",),
                expiration=NOW + timedelta(days=1),
                custom_fields={"proxysgcategory": "Phishing"},
            ),
            Indicator("https://bad.example.org/a?b=1", IndicatorType.URL, 3),
            Indicator("mallory@example.net", IndicatorType.EMAIL, 2),
            Indicator("d41d8cd98f00b204e9800998ecf8427e", IndicatorType.FILE, 3),
        ],
        source="Feed A",
    )
    opened.add(
        [Indicator("192.0.2.1", IndicatorType.IP), Indicator("10.0.0.1", "IP")],
        source="Feed B",
    )
    yield opened
    opened.close()


def values(store: IndicatorStore, query: str) -> set[str]:
    found = {i.value for i in store.search(query)}
    assert store.count(query) == len(found)
    return found


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("type:IP", {"192.0.2.1", "192.0.2.2", "10.0.0.1"}),
        ("type:ip", {"192.0.2.1", "192.0.2.2", "10.0.0.1"}),
        ("type:IPv6CIDR", set()),
        ("type:Domain*", {"*.example.com", "www.example.com"}),
        ("score:3 AND type:IP", {"192.0.2.1"}),
        ("type:IP and score:3", {"192.0.2.1"}),
        ("verdict:Malicious and type:IP", {"192.0.2.1"}),
        ("verdict:benign", {"192.0.2.2"}),
        ("reputation:Bad and type:File", {"d41d8cd98f00b204e9800998ecf8427e"}),
        ("score:>=2 and type:Email", {"mallory@example.net"}),
        ("score:[1 TO 2]", {"192.0.2.2", "198.51.100.0/24", "mallory@example.net"}),
        ("score:{1 TO 3}", {"198.51.100.0/24", "mallory@example.net"}),
        ("score:<1", {"www.example.com", "10.0.0.1"}),
        ("tags:ransomware", {"192.0.2.1"}),
        ("tags:RANSOMWARE", {"192.0.2.1"}),
        ("tags:ransom*", {"192.0.2.1", "www.example.com"}),
        ("tags:(allowlist OR ransomware)", {"192.0.2.1", "192.0.2.2"}),
        ('sourceBrands:"Feed B"', {"192.0.2.1", "10.0.0.1"}),
        ("sourceBrands:Feed*", None),
        ("value:*.example.com", {"*.example.com", "www.example.com"}),
        ('value:"*.example.com"', {"*.example.com"}),
        ("value:192.0.2.?", {"192.0.2.1", "192.0.2.2"}),
        ("value:WWW.EXAMPLE.COM", {"www.example.com"}),
        ("www.example.com", {"www.example.com"}),
        ('"2001:DB8::1"', {"2001:db8::1"}),
        ("type:Domain -tags:ransom-note", set()),
        ("type:IP -tags:allowlist", {"192.0.2.1", "10.0.0.1"}),
        ("type:IP NOT tags:allowlist", {"192.0.2.1", "10.0.0.1"}),
        ("type:IP and not tags:allowlist", {"192.0.2.1", "10.0.0.1"}),
        (
            "type:URL OR type:Email",
            {"https://bad.example.org/a?b=1", "mallory@example.net"},
        ),
        (
            "type:url or type:email",
            {"https://bad.example.org/a?b=1", "mallory@example.net"},
        ),
        ("(type:URL OR type:Email) AND score:2", {"mallory@example.net"}),
        ("type:IP score:1", {"192.0.2.2"}),
        ("+type:IPv6", {"2001:db8::1"}),
        ('lastSeen:<"2026-01-01T00:00:00"', {"198.51.100.0/24"}),
        ("lastSeen:<2026-01-01T00:00:00", {"198.51.100.0/24"}),
        ("firstSeen:2025-06-15", {"198.51.100.0/24"}),
        ("firstSeen:[2025-06-01 TO 2025-06-15]", {"198.51.100.0/24"}),
        ("firstSeen:{2025-06-01 TO 2025-06-15}", set()),
        ('lastSeen:>="1 day ago" and type:CIDR', set()),
        ("expirationStatus:expired", {"*.example.com"}),
        ("expiration:* and expirationStatus:active", {"www.example.com"}),
        ("proxysgcategory:phishing", {"www.example.com"}),
        ("customFields.proxysgcategory:Phish*", {"www.example.com"}),
        ("", None),
        ("   ", None),
    ],
)
def test_query_constructs(store: IndicatorStore, query: str, expected) -> None:
    found = values(store, query)
    if expected is None:
        assert len(found) == store.count() == 10
    else:
        assert found == expected


def test_active_includes_indicators_that_never_expire(store: IndicatorStore) -> None:
    assert store.count("expirationStatus:active") == 9


@pytest.mark.parametrize(
    ("query", "position", "words"),
    [
        ("type:", 5, "expected a value after 'type:'"),
        ("type:IP AND", 11, "expected a search term after AND"),
        ("(type:IP OR score:3", 19, "expected ')' to close the '(' at position 0"),
        ("type:IP)", 7, "this ')' closes no '('"),
        ('value:"abc', 6, "no closing '\"'"),
        ("score:[1 TO", 11, "[LOW TO HIGH]"),
        ("AND type:IP", 0, "at the start of the query"),
        ("type:IP OR OR score:3", 11, "a search term after OR"),
        ("score:>", 7, "a value to compare with after '>'"),
        ("type:Foo", 5, "'Foo' is not an indicator type; expected one of IP"),
        ("score:9", 6, "expected 0 to 3 or a verdict"),
        ("tpye:IP", 0, "did you mean 'type'?"),
        ("lastSeen:>yesterday", 10, "is not a date"),
        ("expirationStatus:soon", 17, "expected active or expired"),
        ("value:/ab+c/", 6, "regular expressions"),
        ("tags:x~2", 5, "fuzzy"),
        ("tags:x^2", 5, "boosts"),
        ("type:>IP", 6, "cannot be compared"),
        ("type:(IP OR tags:x)", 12, "inside the value of 'type'"),
        ("a:b:c", 2, "contains ':'"),
        ("value:2001:db8::1", 15, "an IPv6 address or a URL, in double quotes"),
        ("evil'field:1", 0, "is not a field name"),
    ],
)
def test_invalid_queries_point_at_the_position(
    store: IndicatorStore, query: str, position: int, words: str
) -> None:
    with pytest.raises(QueryError) as caught:
        store.count(query)
    error = caught.value
    assert isinstance(error, ValueError)
    assert words in error.reason
    assert error.position == position, str(error)
    lines = str(error).splitlines()
    assert lines[0].startswith(f"Invalid indicator query at position {position}:")
    assert lines[2].index("^") == lines[1].index(query) + position


def test_query_text_never_becomes_sql(store: IndicatorStore) -> None:
    hostile = 'value:"x\' OR 1=1; DROP TABLE indicators; --"'
    compiled = compile_query(hostile)
    assert "DROP" not in compiled.where
    assert store.count(hostile) == 0
    assert store.count() == 10
    compiled = compile_query('tags:"\'; DELETE FROM indicators"')
    assert "DELETE" not in compiled.where
    assert compiled.params == ("'; DELETE FROM indicators",)


def test_an_empty_query_matches_everything() -> None:
    assert compile_query("").where == "1"


def test_queries_too_deep_or_too_long_for_sqlite_are_refused_clearly() -> None:
    from xsoar_lr.query import QueryError, compile_query

    with pytest.raises(QueryError, match="nests parentheses 3000 deep"):
        compile_query("(" * 3000 + "type:IP" + ")" * 3000)
    with pytest.raises(QueryError, match="has 2000 terms; at most 400"):
        compile_query(" or ".join(["type:IP"] * 2000))
    assert compile_query(" or ".join(["type:IP"] * 400)).params == ("IP",) * 400
