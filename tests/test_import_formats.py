"""
Reading indicators: type detection, and each import format on the real
feeds of the shared folder and on small hand-made files.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from xsoar_lr.importers import (
    FormatError,
    ImportOptions,
    guess_format,
    parse,
    read_csv,
    read_json,
    read_stix,
    read_text,
)
from xsoar_lr.indicators import (
    IndicatorType,
    Score,
    check_type,
    detect_type,
    normalise,
    parse_score,
    parse_type,
)
from xsoar_lr.store import IndicatorStore, store_path

T = IndicatorType


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", T.IP),
        ("192.0.2.0/24", T.CIDR),
        ("2001:db8::1", T.IPV6),
        ("2001:db8::8080", T.IPV6),
        ("::ffff:192.0.2.1", T.IPV6),
        ("2001:db8::/32", T.IPV6_CIDR),
        ("[2001:db8::1]:8443", T.URL),
        ("[2001:db8::1]:8443/path", T.URL),
        ("192.0.2.1:8080", T.URL),
        ("example.com:443", T.URL),
        ("example.com", T.DOMAIN),
        ("EXAMPLE.com.", T.DOMAIN),
        ("bücher.example", T.DOMAIN),
        ("a_b.example.com", T.DOMAIN),
        ("31.128.173.853.zhzy999.net", T.DOMAIN),
        ("*.example.com", T.DOMAIN_GLOB),
        ("http://example.com", T.URL),
        ("hxxps://evil.example/x", T.URL),
        ("example.com/login.php", T.URL),
        ("user@example.com", T.EMAIL),
        ("d41d8cd98f00b204e9800998ecf8427e", T.FILE),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", T.FILE),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", T.FILE),
    ],
)
def test_type_detection(value: str, expected: IndicatorType) -> None:
    assert detect_type(value) is expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("localhost", "single label"),
        ("999.1.1.1", "neither an IPv4 address nor a domain"),
        ("01.2.3.4", "neither an IPv4 address nor a domain"),
        ("192.0.2.0/33", "larger than 32"),
        ("2001:db8::/129", "not a number up to 128"),
        ("fe80::1%eth0", "zone index"),
        ("exa mple.com", "white space"),
        ("bad\x00.com", "control characters"),
        ("*.com", "single label"),
        ("ex*ample.com", "contains '*'"),
        ("http://", "no host"),
        ("-bad.example", "not made of letters"),
        ("d41d8cd98f00b204e9800998ecf8427", "single label"),
        ("example.com:99999", "between 1 and 65535"),
    ],
)
def test_values_that_fit_no_type_are_refused_with_a_reason(
    value: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        detect_type(value)


def test_normalised_keys() -> None:
    assert normalise("2001:DB8:0:0::1", T.IPV6) == "2001:db8::1"
    assert normalise("Bücher.Example.", T.DOMAIN) == "xn--bcher-kva.example"
    assert normalise("HTTP://User@Example.COM:80/Path?Q", T.URL) == (
        "http://User@example.com:80/Path?Q"
    )
    assert normalise("D41D8CD98F00B204E9800998ECF8427E", T.FILE) == (
        "d41d8cd98f00b204e9800998ecf8427e"
    )
    assert normalise("192.0.2.1", T.CIDR) == "192.0.2.1/32"


def test_type_hints_accept_compatible_values_only() -> None:
    assert check_type("example.com", T.URL) is T.URL
    assert check_type("192.0.2.1", T.CIDR) is T.CIDR
    with pytest.raises(ValueError, match="looks like a URL, not a Domain"):
        check_type("http://example.com", T.DOMAIN)


def test_type_and_score_names() -> None:
    assert parse_type("ipv6cidr") is T.IPV6_CIDR
    assert parse_type("sha256") is T.FILE
    assert parse_score("Malicious") is Score.BAD
    assert parse_score("2") is Score.SUSPICIOUS
    with pytest.raises(ValueError, match="use one of IP"):
        parse_type("ipaddress")
    with pytest.raises(ValueError, match="0 to 3"):
        parse_score("7")


# The real feeds. The expected counts come from SOURCES.md and were checked
# with grep, cut and sort -u on the files.


def test_firehol_netset(shared_feeds: Path) -> None:
    parsed = read_text((shared_feeds / "firehol_level1.netset").read_bytes())
    kinds = Counter(i.type for i in parsed.indicators)
    # 6273 entries: 4389 with a "/" (grep -c /), the rest single addresses.
    assert kinds == {T.CIDR: 4389, T.IP: 6273 - 4389}
    assert parsed.rejected == []
    assert parsed.indicators[0].value == "0.0.0.0/8"


def test_hacked_domains_list(shared_feeds: Path) -> None:
    parsed = read_text((shared_feeds / "hacked-domains.list").read_bytes())
    assert len(parsed.indicators) == 2877
    assert {i.type for i in parsed.indicators} == {T.DOMAIN}
    assert parsed.rejected == []


@pytest.mark.parametrize(
    ("name", "count"),
    [("phishing-links-ACTIVE-today.txt", 1186), ("phishing-links-NEW-today.txt", 428)],
)
def test_phishing_url_lists(shared_feeds: Path, name: str, count: int) -> None:
    parsed = read_text((shared_feeds / name).read_bytes())
    assert len(parsed.indicators) == count
    assert {i.type for i in parsed.indicators} == {T.URL}
    assert parsed.rejected == []


def test_urlhaus_hosts_file_with_crlf(shared_feeds: Path) -> None:
    data = (shared_feeds / "urlhaus-hostfile.txt").read_bytes()
    assert b"\r\n" in data
    parsed = read_text(data)
    values = [i.value for i in parsed.indicators]
    # The footer says "Number of entries: 869".
    assert len(values) == 869
    assert "0400msc.com" in values
    assert "31.128.173.853.zhzy999.net" in values
    assert not any(v.endswith("\r") or v == "127.0.0.1" for v in values)


def test_feodo_csv_with_abuse_ch_comments(shared_feeds: Path, tmp_path: Path) -> None:
    data = (shared_feeds / "feodotracker-ipblocklist.csv").read_bytes()
    options = ImportOptions(
        columns={"tags": "malware", "firstSeen": "first_seen_utc", "port": "dst_port"}
    )
    parsed = read_csv(data, options)
    assert len(parsed.indicators) == 750
    assert parsed.rejected == []
    malware = Counter(i.tags[0] for i in parsed.indicators)
    assert malware == {
        "BazarLoader": 192,
        "TrickBot": 185,
        "QakBot": 169,
        "Dridex": 148,
        "Emotet": 56,
    }
    first = parsed.indicators[0]
    assert first.value == "51.178.161.32"
    assert first.first_seen.isoformat() == "2021-01-17T07:44:46+00:00"
    assert first.custom_fields == {"port": "4643"}

    # 19 addresses are listed on two ports; the store keeps 728 (cut | sort -u).
    with IndicatorStore.open(store_path(tmp_path)) as store:
        report = store.add(parsed.indicators, source="feodo")
        assert (report.added, report.duplicates) == (728, 22)
        assert store.count("tags:Dridex") == len(
            {i.value for i in parsed.indicators if i.tags == ("Dridex",)}
        )


def test_stix_bundle(shared_feeds: Path) -> None:
    parsed = read_stix((shared_feeds / "stix21-apt1-bundle.json").read_bytes())
    found = {(i.value, i.type) for i in parsed.indicators}
    assert found == {
        ("223.166.0.0/15", T.CIDR),
        ("58.246.0.0/15", T.CIDR),
        ("112.64.0.0/15", T.CIDR),
        ("139.226.0.0/15", T.CIDR),
        ("hugesoft.org", T.DOMAIN),
        ("arrowservice.net", T.DOMAIN),
        ("msnhome.org", T.DOMAIN),
        ("001dd76872d80801692ff942308c64e6", T.FILE),
        ("002325a0a67fded0381b5648d7fe9b8e", T.FILE),
        ("00dbb9e1c09dbdafb360f3163ba5a3de", T.FILE),
    }
    # The two X.509 certificate indicators are reported, with their lines.
    assert len(parsed.rejected) == 2
    assert all("x509-certificate:issuer" in r.reason for r in parsed.rejected)
    text = (shared_feeds / "stix21-apt1-bundle.json").read_text("utf-8")
    for reject in parsed.rejected:
        assert "indicator--" in text.splitlines()[reject.line - 1]
    assert parsed.indicators[0].custom_fields["stixid"].startswith("indicator--")


def test_format_guessing(shared_feeds: Path) -> None:
    for name, expected in [
        ("feodotracker-ipblocklist.csv", "csv"),
        ("stix21-apt1-bundle.json", "stix"),
        ("firehol_level1.netset", "text"),
    ]:
        assert guess_format(name, (shared_feeds / name).read_bytes()) == expected
    assert guess_format("x", b'[{"value": "a.com"}]') == "json"


# Hand-made edge cases


def test_text_edge_cases() -> None:
    data = (
        "\ufeff# a comment\r\n"
        "\r\n"
        "   \n"
        "0.0.0.0 bad.example  other.example\n"
        "127.0.0.1 localhost\n"
        "::1 ip6-localhost\n"
        "2001:db8::8080\n"
        "[2001:db8::1]:8443\n"
        "192.0.2.1:8080 # with a port\n"
        "198.51.100.0/24 ; SBL123\n"
        "192.0.2.10-192.0.2.13\n"
        "http://example.com/a#fragment\n"
        "not valid\n"
        "nodot\n"
        "last.example"
    ).encode()
    parsed = read_text(data, ImportOptions(tags=("t",), score=3))
    assert [(i.value, i.type) for i in parsed.indicators] == [
        ("bad.example", T.DOMAIN),
        ("other.example", T.DOMAIN),
        ("2001:db8::8080", T.IPV6),
        ("[2001:db8::1]:8443", T.URL),
        ("192.0.2.1:8080", T.URL),
        ("198.51.100.0/24", T.CIDR),
        ("192.0.2.10/31", T.CIDR),
        ("192.0.2.12/31", T.CIDR),
        ("http://example.com/a#fragment", T.URL),
        ("last.example", T.DOMAIN),
    ]
    assert all(i.tags == ("t",) and i.score is Score.BAD for i in parsed.indicators)
    assert [(r.line, r.value) for r in parsed.rejected] == [
        (13, "not valid"),
        (14, "nodot"),
    ]
    assert "several words" in parsed.rejected[0].reason


def test_non_utf8_bytes_are_a_clear_error_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    data = b"good.example\nbad\xe9.example\n"
    with pytest.raises(FormatError, match=r"list.txt line 2, column 4: byte 0xe9"):
        parse(data, "text", ImportOptions(name="list.txt"))
    with IndicatorStore.open(store_path(tmp_path)) as store:
        with pytest.raises(FormatError):
            store.add(parse(data, "text").indicators, source="s")
        assert store.count() == 0


def test_a_type_hint_rejects_values_of_other_types() -> None:
    parsed = read_text(
        b"example.com\nhttp://x.example/\n192.0.2.1\n", ImportOptions(type=T.DOMAIN)
    )
    assert [i.value for i in parsed.indicators] == ["example.com"]
    assert [r.line for r in parsed.rejected] == [2, 3]


def test_csv_edge_cases() -> None:
    data = (
        b"# comment\n"
        b"indicator,type,score,tags,firstSeen\n"
        b"192.0.2.1,IP,Malicious,a;b,2026-01-02\n"
        b",IP,1,,\n"
        b"example.com,IP,1,,\n"
        b"x.example,Domain,9,,\n"
        b"y.example,Domain,1,,yesterday\n"
        b'"unclosed,IP\n'
    )
    parsed = read_csv(data)
    assert [(i.value, i.score, i.tags) for i in parsed.indicators] == [
        ("192.0.2.1", Score.BAD, ("a", "b"))
    ]
    reasons = {r.line: r.reason for r in parsed.rejected}
    assert set(reasons) == {4, 5, 6, 7, 8}
    assert "value column is empty" in reasons[4]
    assert "looks like a Domain, not a IP" in reasons[5]
    assert "not a score" in reasons[6]
    assert "not an ISO 8601" in reasons[7]


def test_csv_without_a_value_column_names_the_columns() -> None:
    with pytest.raises(FormatError, match="--column value=NAME.*a, b"):
        read_csv(b"a,b\n1,2\n", ImportOptions(name="f.csv"))
    with pytest.raises(FormatError, match="'nope' given for 'value' is not in the"):
        read_csv(b"a,b\n1,2\n", ImportOptions(columns={"value": "nope"}))


def test_json_list_of_objects() -> None:
    data = json.dumps(
        [
            {"value": "192.0.2.1", "indicator_type": "IP", "score": 3, "tags": ["x"]},
            {"indicator": "example.com", "verdict": "Benign", "tags": "a, b"},
            {
                "value": "http://x.example/",
                "sourceBrands": ["ignored"],
                "customFields": {"proxysgcategory": "Phishing"},
                "lastSeen": "2026-01-01T00:00:00Z",
            },
            {"value": "bad value"},
            "not an object",
            {"no": "value"},
        ],
        indent=1,
    ).encode()
    parsed = read_json(data)
    assert [(i.value, i.type, i.score) for i in parsed.indicators] == [
        ("192.0.2.1", T.IP, Score.BAD),
        ("example.com", T.DOMAIN, Score.GOOD),
        ("http://x.example/", T.URL, Score.UNKNOWN),
    ]
    assert parsed.indicators[1].tags == ("a", "b")
    assert parsed.indicators[2].custom_fields == {"proxysgcategory": "Phishing"}
    lines = data.decode().splitlines()
    assert len(parsed.rejected) == 3
    for reject in parsed.rejected:
        assert lines[reject.line - 1].strip().startswith(("{", '"not'))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"value": "a.com"}', "expected '[' at the start"),
        (b'[{"value": "a.com"} {"value": "b.com"}]', "',' or ']'"),
        (b'[\n{"value": "a.com",}\n]', "line 2"),
        (b'[{"value": "a.com"}] x', "nothing after the closing"),
    ],
)
def test_json_that_is_not_a_list_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=re.escape(words)):
        read_json(data, ImportOptions(name="f.json"))


def test_stix_edge_cases() -> None:
    bundle = {
        "type": "bundle",
        "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04982",
        "objects": [
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": "indicator--a932fcc6-e032-476c-826f-cb970a5a1ade",
                "created": "2026-01-01T00:00:00.000Z",
                "modified": "2026-01-01T00:00:00.000Z",
                "pattern": "[url:value = 'http://x.example/it\\'s'] OR "
                "[ipv6-addr:value = '2001:db8::/48'] OR "
                "[file:hashes.'SHA-256' = "
                "'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']",
                "pattern_type": "stix",
                "valid_from": "2026-01-01T00:00:00Z",
                "valid_until": "2027-01-01T00:00:00Z",
                "labels": ["phishing"],
            },
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": "indicator--b932fcc6-e032-476c-826f-cb970a5a1ade",
                "created": "2026-01-01T00:00:00.000Z",
                "modified": "2026-01-01T00:00:00.000Z",
                "pattern": "alert tcp any any -> any any",
                "pattern_type": "snort",
                "valid_from": "2026-01-01T00:00:00Z",
            },
        ],
    }
    parsed = read_stix(json.dumps(bundle).encode())
    assert [(i.value, i.type) for i in parsed.indicators] == [
        ("http://x.example/it's", T.URL),
        ("2001:db8::/48", T.IPV6_CIDR),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", T.FILE),
    ]
    assert parsed.indicators[0].tags == ("phishing",)
    assert parsed.indicators[0].expiration.year == 2027
    assert "only STIX patterns" in parsed.rejected[0].reason
    with pytest.raises(FormatError, match="not a valid STIX 2 bundle"):
        read_stix(b'{"type": "bundle", "objects": "nope"}')
    with pytest.raises(FormatError, match="not a bundle"):
        read_stix(b'{"type": "indicator"}')
    broken = dict(bundle["objects"][0], pattern="[url:value = 'x'")
    parsed = read_stix(json.dumps({**bundle, "objects": [broken]}).encode())
    assert parsed.indicators == []
    assert "not valid STIX" in parsed.rejected[0].reason


def test_export_csv_can_be_read_back() -> None:
    rows = [["value", "type", "score", "tags"], ["192.0.2.1", "IP", "3", "a,b"]]
    import io

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    parsed = read_csv(out.getvalue().encode())
    assert parsed.indicators[0].tags == ("a", "b")
    assert parsed.indicators[0].score is Score.BAD
