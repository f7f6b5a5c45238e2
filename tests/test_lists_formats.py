"""
Exact bodies of every list format, from plain sequences of indicators: the
PAN-OS text rules (with XSOAR's test vectors), IP collapsing for IPv4 and
IPv6, and each format of the EDL and Export Indicators integrations.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from test_lists_support import MOMENT, T, indicator

from integrations.lists import panos
from integrations.lists.collapse import AddressCollector
from integrations.lists.formats import BuildLog, ListRenderer
from integrations.lists.settings import Collapse, Format, ListSettings
from xsoar_lr.indicators import Indicator

LONG_URL = "https://www.demisto.com/" + "a" * 300


def render(indicators: list[Indicator], **settings: Any) -> str:
    return "".join(ListRenderer(ListSettings(**settings)).chunks(indicators))


def rendered_with_log(
    indicators: list[Indicator], **settings: Any
) -> tuple[str, list[str]]:
    sink = io.StringIO()
    renderer = ListRenderer(ListSettings(**settings), BuildLog(sink))
    body = "".join(renderer.chunks(indicators))
    return body, sink.getvalue().splitlines()


# -- the XSOAR test vectors (section 13) ------------------------------------


def test_strip_port_protocol_truncate_and_limit() -> None:
    body = render(
        [
            Indicator("https://google.com", T.URL),
            Indicator("demisto.com:7000", T.URL),
            Indicator(LONG_URL, T.URL),
            Indicator("demisto.com", T.DOMAIN),
        ],
        size=3,
        truncate=True,
    )
    assert body == "google.com\ndemisto.com\n" + ("www.demisto.com/" + "a" * 300)[:254]


def test_drop_invalids() -> None:
    body, log = rendered_with_log(
        [
            Indicator("www.Inv@l*id_token.com", T.URL),
            Indicator(LONG_URL, T.URL),
            Indicator("http://www.google.com", T.URL),
        ],
        drop_invalids=True,
    )
    assert body == "www.google.com"
    assert "Dropped |  | www.Inv@l*id_token.com | Invalid tokens or port." in log
    assert f"Dropped |  | {LONG_URL} | URL exceeds max length 255." in log


@pytest.mark.parametrize(
    "maximum, expected",
    [(8, "1.1.1.1/12"), (13, "# Empty List"), (0, "1.1.1.1/7\n1.1.1.1/12")],
)
def test_maximum_cidr(maximum: int, expected: str) -> None:
    body = render(
        [Indicator("1.1.1.1/7", T.CIDR), Indicator("1.1.1.1/12", T.CIDR)],
        max_cidr=maximum,
    )
    assert body == expected


def test_maximum_cidr_applies_to_ipv6() -> None:
    body = render(
        [
            Indicator("2001:db8::/7", T.IPV6_CIDR),
            Indicator("2603:1006:1400::/40", T.IPV6_CIDR),
        ]
    )
    assert body == "2603:1006:1400::/40"


def test_exclude_top_level_domain_globs() -> None:
    globs = [
        Indicator("*.com", T.DOMAIN_GLOB),
        Indicator("*.co.uk", T.DOMAIN_GLOB),
        Indicator("*.google.com", T.DOMAIN_GLOB),
    ]
    assert render(globs, no_wildcard_tld=True) == "google.com\n*.google.com"
    assert render(globs) == "com\n*.com\nco.uk\n*.co.uk\ngoogle.com\n*.google.com"


EDGE = [
    Indicator("1.1.1.1", T.IP),
    Indicator("https://a.example.com/x", T.URL),
    Indicator("*.b.example.com", T.DOMAIN_GLOB),
    Indicator("c.example.com", T.DOMAIN),
    Indicator("2001:db8::1", T.IPV6),
]


def test_offset_counts_output_lines() -> None:
    assert render(EDGE) == (
        "1.1.1.1\na.example.com/x\nb.example.com\n*.b.example.com\nc.example.com\n2001:db8::1"
    )
    assert (
        render(EDGE, offset=2)
        == "b.example.com\n*.b.example.com\nc.example.com\n2001:db8::1"
    )
    assert render(EDGE, offset=2, size=2) == "b.example.com\n*.b.example.com"
    assert render(EDGE, offset=6) == "# Empty List"


def test_mwg_default() -> None:
    body = render(
        [
            Indicator("bad.example.com/p", T.URL, sources=("Feed A", "Feed B")),
            Indicator("198.51.100.7", T.IP),
        ],
        format=Format.MWG,
    )
    assert body == (
        'type=string\n"bad.example.com/p" "Feed A,Feed B"\n"198.51.100.7" "from CORTEX XSOAR"'
    )


def test_mwg_type_and_quotes() -> None:
    body = render(
        [Indicator('a"b.example.com', T.DOMAIN), Indicator("10.0.0.1", T.IP)],
        format=Format.MWG,
        mwg_type="ip",
    )
    assert body == 'type=ip\n"10.0.0.1" "from CORTEX XSOAR"'


def test_proxysg_categories() -> None:
    items = [
        Indicator(
            "https://bad.example.com/p",
            T.URL,
            custom_fields={"proxysgcategory": "malware_sites"},
        ),
        Indicator("198.51.100.7", T.IP),
        Indicator(
            "phish.example.org",
            T.DOMAIN,
            custom_fields={"proxysgcategory": ["phishing", "x"]},
        ),
        Indicator("aa" * 16, T.FILE),
        Indicator("2001:db8::1", T.IPV6),
    ]
    assert render(items, format=Format.PROXYSG) == (
        "define category malware_sites\nbad.example.com/p\nend\n"
        "define category bc_category\n198.51.100.7\nend\n"
        "define category phishing\nphish.example.org\nend\n"
        "define category x\nphish.example.org\nend"
    )
    assert render(
        items,
        format=Format.PROXYSG,
        category_attribute=("phishing",),
        category_default="other",
    ) == (
        "define category other\nbad.example.com/p\n198.51.100.7\nend\n"
        "define category phishing\nphish.example.org\nend"
    )
    assert render(items, format=Format.PROXYSG, offset=1, size=1) == (
        "define category bc_category\n198.51.100.7\nend"
    )
    assert render([], format=Format.PROXYSG) == ""


# -- PAN-OS rules -----------------------------------------------------------


@pytest.mark.parametrize(
    "value, stripped",
    [
        ("https://example.com", "example.com"),
        ("hxxp://example.com/a", "example.com/a"),
        ("//example.com", "example.com"),
        ("HTTP://Example.com/A", "Example.com/A"),
        ("example.com/https://x", "example.com/https://x"),
    ],
)
def test_strip_protocol(value: str, stripped: str) -> None:
    assert panos.strip_protocol(value) == stripped


@pytest.mark.parametrize(
    "value, stripped",
    [
        ("example.com:9999/path", "example.com/path"),
        ("https://Example.COM:8443/p?a=1", "https://Example.COM/p?a=1"),
        ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]/x"),
        ("http://[2001:db8::1]/x", "http://[2001:db8::1]/x"),
        ("user:pw@host.example:81/x", "user:pw@host.example/x"),
        ("under_score.example:80", "under_score.example"),
        ("example.com/a:80", "example.com/a:80"),
        ("2603:1006:1400::/40", "2603:1006:1400::/40"),
        ("2001:db8::8080", "2001:db8::8080"),
        ("example.com:abc/x", "example.com:abc/x"),
    ],
)
def test_strip_port(value: str, stripped: str) -> None:
    assert panos.strip_port(value) == stripped


@pytest.mark.parametrize(
    "value, invalid",
    [
        ("*.example.com", False),
        ("example.com/*", False),
        ("ex*ample.com", True),
        ("example.com/*cool", True),
        ("example.com/a?b=*", False),
    ],
)
def test_invalid_tokens(value: str, invalid: bool) -> None:
    assert panos.has_invalid_token(value) is invalid


def test_ip_types_are_never_rewritten() -> None:
    body = render(
        [
            Indicator("2603:1006:1400::/40", T.IPV6_CIDR),
            Indicator("2001:db8::8080", T.IPV6),
            Indicator("192.0.2.1", T.IP),
        ],
        drop_invalids=True,
    )
    assert body == "2603:1006:1400::/40\n2001:db8::8080\n192.0.2.1"


def test_url_with_ipv6_literal_keeps_its_brackets() -> None:
    body = render([Indicator("http://[2001:db8::1]:8080/x", T.URL)], drop_invalids=True)
    assert body == "[2001:db8::1]/x"


def test_stripping_can_be_turned_off() -> None:
    items = [Indicator("https://example.com:8443/a", T.URL)]
    assert render(items, strip_port=False) == "example.com:8443/a"
    assert render(items, strip_protocol=False) == "https://example.com/a"
    assert (
        render(items, strip_protocol=False, strip_port=False)
        == "https://example.com:8443/a"
    )
    assert render(items, strip_port=False, drop_invalids=True) == "# Empty List"


def test_uppercase_scheme_is_stripped() -> None:
    body = render([Indicator("HTTPS://Example.com:443/Path", T.URL)])
    assert body == "Example.com/Path"


def test_dedupe_and_log() -> None:
    body, log = rendered_with_log(
        [
            Indicator("https://example.com", T.URL),
            Indicator("example.com", T.DOMAIN),
            Indicator("*.example.com", T.DOMAIN_GLOB),
        ]
    )
    assert body == "example.com\n*.example.com"
    assert log == [
        "Modified | example.com | https://example.com | Applied the URL rules.",
        "Added | example.com | https://example.com | Found new URL.",
        "Dropped |  | example.com | Duplicate of the entry example.com.",
        "Dropped |  | *.example.com | Duplicate of the entry example.com.",
        "Added | *.example.com | *.example.com | Found new DomainGlob.",
    ]


def test_enforce_ascii() -> None:
    items = [
        Indicator("bücher.example", T.DOMAIN),
        Indicator("books.example", T.DOMAIN),
    ]
    assert render(items) == "bücher.example\nbooks.example"
    assert render(items, enforce_ascii=True) == "books.example"


def test_empty_comment_prepend_and_append() -> None:
    items = [Indicator("a.example", T.DOMAIN), Indicator("b.example", T.DOMAIN)]
    assert render([]) == "# Empty List"
    assert render([], add_comment=False) == ""
    assert (
        render(items, prepend="# head\n# two") == "# head\n# two\na.example\nb.example"
    )
    assert render(items, append="# tail") == "a.example\nb.example\n# tail"
    assert render([], prepend="# head", append="# tail") == "# Empty List"
    assert render(items, size=0) == "# Empty List"


# -- collapsing --------------------------------------------------------------

IPS = [
    Indicator(v, T.IP)
    for v in ("1.1.1.1", "1.1.1.2", "1.1.1.3", "1.2.3.4", "1.2.3.5", "2.2.2.2")
]


def test_collapse_ranges_and_cidrs() -> None:
    assert (
        render(IPS, collapse=Collapse.RANGES)
        == "1.1.1.1-1.1.1.3\n1.2.3.4-1.2.3.5\n2.2.2.2"
    )
    assert (
        render(IPS, collapse=Collapse.CIDRS)
        == "1.1.1.1\n1.1.1.2/31\n1.2.3.4/31\n2.2.2.2"
    )


def test_collapse_merges_networks_with_addresses() -> None:
    items = [Indicator("3.3.3.0/30", T.CIDR), Indicator("3.3.3.1", T.IP)]
    assert render(items, collapse=Collapse.RANGES) == "3.3.3.0-3.3.3.3"
    assert render(items, collapse=Collapse.CIDRS) == "3.3.3.0/30"


def test_collapse_ipv6_after_ipv4_and_other_entries_first() -> None:
    items = [
        Indicator("2001:db8::2", T.IPV6),
        Indicator("10.0.0.1", T.IP),
        Indicator("bad.example", T.DOMAIN),
        Indicator("2001:db8::3", T.IPV6),
        Indicator("2001:db8:1::/48", T.IPV6_CIDR),
        Indicator("10.0.0.0", T.IP),
    ]
    assert render(items, collapse=Collapse.RANGES) == (
        "bad.example\n10.0.0.0-10.0.0.1\n2001:db8::2-2001:db8::3\n"
        "2001:db8:1::-2001:db8:1:ffff:ffff:ffff:ffff:ffff"
    )
    assert render(items, collapse=Collapse.CIDRS) == (
        "bad.example\n10.0.0.0/31\n2001:db8::2/127\n2001:db8:1::/48"
    )


def test_collapse_passes_invalid_addresses_through() -> None:
    items = [Indicator("999.1.1.1", T.IP), Indicator("10.0.0.1", T.IP)]
    assert render(items, collapse=Collapse.CIDRS) == "999.1.1.1\n10.0.0.1"


def test_collapse_respects_maximum_cidr_first() -> None:
    items = [Indicator("10.0.0.0/7", T.CIDR), Indicator("10.0.0.1", T.IP)]
    assert render(items, collapse=Collapse.CIDRS) == "10.0.0.1"


def test_address_collector_host_bits() -> None:
    collector = AddressCollector(4)
    assert collector.add("192.0.2.77/24")
    assert not collector.add("2001:db8::1")
    assert not collector.add("192.0.2.1/33")
    assert list(collector.collapsed(Collapse.CIDRS)) == ["192.0.2.0/24"]


# -- CSV and JSON of the EDL -------------------------------------------------

PAIR = [
    indicator(
        "https://bad.example.com:8443/p",
        T.URL,
        score=3,
        tags=("apt",),
        sources=("Feed A",),
        custom_fields={"note": 'say "hi"'},
    ),
    indicator("198.51.100.7", T.IP),
]
STAMP = MOMENT.isoformat().replace("+00:00", "Z")


def test_json_default() -> None:
    assert render(PAIR, format=Format.JSON) == (
        '[{"value": "bad.example.com/p", "indicator_type": "URL"}, '
        '{"value": "198.51.100.7", "indicator_type": "IP"}]'
    )
    assert render([], format=Format.JSON) == "[]"
    assert render([], format=Format.JSON, add_comment=True) == "[]"


def test_json_fields() -> None:
    body = render(PAIR, format=Format.JSON, fields=("name", "score", "note", "missing"))
    assert json.loads(body) == [
        {"value": "bad.example.com/p", "score": 3, "note": 'say "hi"', "missing": None},
        {"value": "198.51.100.7", "score": 0, "note": None, "missing": None},
    ]


def test_json_all_fields() -> None:
    body = render(PAIR[:1], format=Format.JSON, fields=("all",))
    assert json.loads(body) == [
        {
            "value": "bad.example.com/p",
            "indicator_type": "URL",
            "score": 3,
            "tags": ["apt"],
            "sourceBrands": ["Feed A"],
            "firstSeen": STAMP,
            "lastSeen": STAMP,
            "expiration": None,
            "CustomFields": {"note": 'say "hi"'},
        }
    ]


def test_csv_default_fields_and_escaping() -> None:
    assert render(PAIR, format=Format.CSV) == (
        'name,type\n"bad.example.com/p","URL"\n"198.51.100.7","IP"'
    )
    assert render(PAIR, format=Format.CSV, fields=("value", "note")) == (
        'value,note\n"bad.example.com/p","say ""hi"""\n"198.51.100.7",""'
    )
    assert render(PAIR[1:], format=Format.CSV, fields=("all",)) == (
        "value,indicator_type,score,tags,sourceBrands,firstSeen,lastSeen,expiration,"
        f'CustomFields\n"198.51.100.7","IP","0","[]","[]","{STAMP}","{STAMP}","","{{}}"'
    )
    assert render([], format=Format.CSV) == "name,type"


def test_csv_offset_and_size_count_rows() -> None:
    assert render(PAIR, format=Format.CSV, offset=1) == 'name,type\n"198.51.100.7","IP"'
    assert render(PAIR, format=Format.JSON, size=1) == (
        '[{"value": "bad.example.com/p", "indicator_type": "URL"}]'
    )


# -- Export Indicators formats ------------------------------------------------


def test_plain_text_keeps_values() -> None:
    items = [
        Indicator("https://example.com:81/a", T.URL),
        Indicator("*.example.org", T.DOMAIN_GLOB),
    ]
    assert (
        render(items, format=Format.PLAIN_TEXT)
        == "https://example.com:81/a\n*.example.org"
    )
    assert render(IPS, format=Format.PLAIN_TEXT, collapse=Collapse.RANGES) == (
        "1.1.1.1-1.1.1.3\n1.2.3.4-1.2.3.5\n2.2.2.2"
    )


def test_panosurl() -> None:
    items = [
        Indicator("HTTP://Sub.Example.com:8080/a*b/c", T.URL),
        Indicator("*.paloalto", T.DOMAIN_GLOB),
        Indicator("*.x.example", T.DOMAIN_GLOB),
        Indicator("192.0.2.1", T.IP),
    ]
    assert render(items, format=Format.PANOS_URL, strip_port=True) == (
        "sub.example.com/*/c\nx.example\n*.x.example\n192.0.2.1"
    )
    assert render(items, format=Format.PANOS_URL, strip_port=False) == (
        "x.example\n*.x.example\n192.0.2.1"
    )
    assert render(
        items, format=Format.PANOS_URL, strip_port=True, drop_invalids=True
    ) == ("x.example\n*.x.example\n192.0.2.1")


MINEMELD_VALUE = {
    "indicator_type": "IP",
    "score": 0,
    "tags": [],
    "sourceBrands": [],
    "firstSeen": STAMP,
    "lastSeen": STAMP,
    "expiration": None,
    "CustomFields": {},
}


def test_minemeld_csv_json_and_json_seq() -> None:
    items = [indicator("198.51.100.7", T.IP), indicator("a,b.example/x", T.URL)]
    assert (
        render(items, format=Format.MINEMELD_CSV)
        == 'indicator\n198.51.100.7\n"a,b.example/x"'
    )
    assert render([], format=Format.MINEMELD_CSV) == "indicator"
    body = render(items[:1], format=Format.MINEMELD_JSON)
    assert body.startswith(
        '[{"indicator": "198.51.100.7", "value": {"indicator_type": "IP"'
    )
    assert json.loads(body) == [{"indicator": "198.51.100.7", "value": MINEMELD_VALUE}]
    seq = render(items, format=Format.MINEMELD_JSON_SEQ).split("\n")
    assert len(seq) == 2
    assert seq[0] == json.dumps(
        {"indicator": "198.51.100.7", "value": MINEMELD_VALUE}, separators=(",", ":")
    )


def test_xsoar_formats() -> None:
    items = [indicator("198.51.100.7", T.IP, tags=("t1", "t2"))]
    document = {"value": "198.51.100.7", **MINEMELD_VALUE, "tags": ["t1", "t2"]}
    assert json.loads(render(items, format=Format.XSOAR_JSON)) == [document]
    assert render([], format=Format.XSOAR_JSON) == "[]"
    assert json.loads(render(items * 1, format=Format.XSOAR_JSON_SEQ)) == document
    assert render(items, format=Format.XSOAR_CSV) == (
        "value,indicator_type,score,tags,sourceBrands,firstSeen,lastSeen,expiration,"
        'CustomFields\n"198.51.100.7","IP","0","[""t1"", ""t2""]","[]",'
        f'"{STAMP}","{STAMP}","",' + '"{}"'
    )


def test_content_types() -> None:
    assert Format.PANOS_TEXT.content_type(False) == "text/plain; charset=utf-8"
    assert Format.CSV.content_type(False) == "text/csv; charset=utf-8"
    assert Format.CSV.content_type(True) == "text/plain; charset=utf-8"
    assert Format.JSON.content_type(False) == "application/json"
    assert Format.MINEMELD_JSON_SEQ.content_type(False) == "application/json-seq"
    assert Format.XSOAR_JSON.content_type(False) == "application/json"
    assert Format.MWG.content_type(False) == "text/plain; charset=utf-8"


def test_origin_size_and_entries() -> None:
    renderer = ListRenderer(ListSettings(size=2))
    body = "".join(renderer.chunks(iter(EDGE)))
    assert body == "1.1.1.1\na.example.com/x"
    assert renderer.entries == 2
    # Reading stops once the list is full.
    assert renderer.origin_size == 2
