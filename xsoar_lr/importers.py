"""
Reading indicators from files: plain text lists, CSV, JSON and STIX 2.x
bundles.

Every reader takes the raw bytes (so that an encoding problem is found
before anything is stored) and returns a L{Parsed}: the indicators, to be
stored with L{xsoar_lr.store.IndicatorStore.add} or C{replace_source}, and
the lines that were refused, each with its line number and the reason.
A problem with the file as a whole (bytes that are not UTF-8, a CSV file
without the value column, JSON that does not parse) raises L{FormatError}
instead, and nothing of the file should be stored.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import netaddr  # type: ignore[import-untyped]

from xsoar_lr.indicators import (
    Indicator,
    IndicatorType,
    Score,
    check_type,
    detect_type,
    parse_score,
    parse_type,
)
from xsoar_lr.store import CheckedIndicators, Reject

__all__ = [
    "FORMATS",
    "FormatError",
    "ImportOptions",
    "Parsed",
    "guess_format",
    "parse",
    "read_csv",
    "read_json",
    "read_stix",
    "read_text",
]

#: The formats L{parse} reads.
FORMATS = ("text", "csv", "json", "stix")


class FormatError(ValueError):
    """
    A file cannot be read as a whole; the message names the file and, where
    it can, the line, and says what to do.
    """


@attrs.frozen
class ImportOptions:
    """
    How to read a file.

    :ivar name: the file name for messages (C{-} or C{<stdin>} for the
        standard input, a URL for a feed).
    :ivar type: a type hint: every value must fit it (a host name also fits
        URL, a single address also fits CIDR / IPv6CIDR). C{None} detects
        the type of each value.
    :ivar tags: tags given to every indicator, besides those in the file.
    :ivar score: the score of indicators whose file gives none.
    :ivar columns: for CSV, which column holds which field: keys C{value},
        C{type}, C{score}, C{tags}, C{firstSeen}, C{lastSeen},
        C{expiration}, or any other name for a custom field; values are
        column names of the header row.
    """

    name: str = "<input>"
    type: IndicatorType | None = None
    tags: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    score: Score = attrs.field(default=Score.UNKNOWN, converter=Score)
    columns: Mapping[str, str] = attrs.field(factory=dict)


@attrs.define
class Parsed:
    """
    What a reader found in a file.

    :ivar indicators: the indicators, in file order. Their types were
        checked as they were read, which the store relies on so as not to
        detect each type again (see L{CheckedIndicators}).
    :ivar rejected: the refused values, with line numbers.
    :ivar skipped: how many lines were comments, blank, or hosts-file
        boilerplate such as C{localhost}.
    """

    indicators: list[Indicator] = attrs.field(factory=CheckedIndicators)
    rejected: list[Reject] = attrs.field(factory=list)
    skipped: int = 0


def _decode(data: bytes, name: str) -> str:
    """
    Decode UTF-8 (with or without a byte order mark).

    :raises FormatError: naming the line and column of the first bad byte.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise FormatError(
            f"{name} line {line}, column {column}: byte 0x{data[e.start]:02x} is "
            "not UTF-8, so nothing was imported from this file; convert it to "
            "UTF-8 first (for example with iconv -f latin1 -t utf-8)."
        ) from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """
    Yield each line with its number, for LF, CRLF and CR line ends.
    """
    yield from enumerate(re.split(r"\r\n|\r|\n", text), 1)


class _Builder:
    """
    Makes indicators from values, applying the options and collecting
    rejects.
    """

    def __init__(self, options: ImportOptions, parsed: Parsed) -> None:
        self.options = options
        self.parsed = parsed

    def add(
        self,
        line: int | None,
        value: str,
        *,
        type: IndicatorType | None = None,
        allowed: frozenset[IndicatorType] | None = None,
        score: Score | None = None,
        tags: Sequence[str] = (),
        first_seen: datetime | None = None,
        last_seen: datetime | None = None,
        expiration: datetime | None = None,
        custom_fields: Mapping[str, Any] | None = None,
    ) -> None:
        declared = type or self.options.type
        try:
            if declared is not None:
                found = check_type(value, declared)
            else:
                found = detect_type(value)
            if allowed is not None and found not in allowed:
                names = " or ".join(sorted(t.value for t in allowed))
                raise ValueError(
                    f"{value!r} is a {found.value}, where the file says {names}."
                )
        except ValueError as e:
            self.reject(line, value, str(e))
            return
        indicators = self.parsed.indicators
        # The type was found above: the store need not detect it again.
        append = (
            indicators.append_checked
            if isinstance(indicators, CheckedIndicators)
            else indicators.append
        )
        append(
            Indicator(
                value,
                found,
                self.options.score if score is None else score,
                # The attrs converter (tuple) defeats mypy's inference.
                [*self.options.tags, *tags],  # type: ignore[list-item]
                (),
                first_seen,
                last_seen,
                expiration,
                dict(custom_fields or {}),
            )
        )

    def reject(self, line: int | None, value: str, reason: str) -> None:
        self.parsed.rejected.append(Reject(line, value, reason))


# Plain text

_HOSTS_ADDRESSES = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0"})
_HOSTS_BOILERPLATE = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)
_TRAILING_COMMENT_RE = re.compile(r"\s+[#;].*$")
_IPV4 = r"(\d{1,3}(?:\.\d{1,3}){3})"
_IPV4_RANGE_RE = re.compile(rf"^{_IPV4}\s*-\s*{_IPV4}$")


def read_text(data: bytes, options: ImportOptions = ImportOptions()) -> Parsed:
    """
    Read a list with one value per line.

    Blank lines and lines starting with C{#} are skipped, as is a comment
    after white space (C{1.2.3.4 # scanner}, C{10.0.0.0/8 ; SBL123}).
    Hosts-file lines (C{0.0.0.0 name}, C{127.0.0.1 name ...}) give their
    names, leaving out names such as C{localhost}. An IPv4 range
    C{A.B.C.D-E.F.G.H} gives the CIDRs that cover it exactly.
    """
    text = _decode(data, options.name)
    parsed = Parsed()
    builder = _Builder(options, parsed)
    for number, line in _lines(text):
        line = _TRAILING_COMMENT_RE.sub("", line).strip()
        if not line or line.startswith("#"):
            parsed.skipped += 1
            continue
        words = line.split()
        if len(words) > 1 and words[0] in _HOSTS_ADDRESSES:
            for name in words[1:]:
                if name.lower() in _HOSTS_BOILERPLATE:
                    parsed.skipped += 1
                else:
                    builder.add(number, name)
        elif _IPV4_RANGE_RE.match(line):
            _add_range(builder, number, line)
        elif len(words) > 1:
            builder.reject(
                number,
                line,
                "the line has several words; write one value per line, or a "
                "hosts-file line such as '0.0.0.0 example.com'.",
            )
        else:
            builder.add(number, line)
    return parsed


def _add_range(builder: _Builder, number: int, line: str) -> None:
    match = _IPV4_RANGE_RE.match(line)
    assert match is not None
    try:
        networks = netaddr.iprange_to_cidrs(match.group(1), match.group(2))
    except (netaddr.AddrFormatError, ValueError) as e:
        builder.reject(number, line, f"{line!r} is not an IPv4 range: {e}.")
        return
    if not networks:
        builder.reject(number, line, f"the range {line!r} ends before it starts.")
        return
    for network in networks:
        if network.prefixlen == 32:
            builder.add(number, str(network.ip))
        else:
            builder.add(number, str(network))


# CSV

#: Column names taken as the value column when no mapping names one, in
#: order of preference.
VALUE_COLUMNS = (
    "value",
    "indicator",
    "ioc",
    "dst_ip",
    "ip",
    "ip_address",
    "domain",
    "url",
    "sha256_hash",
    "md5_hash",
    "hash",
)
_FIELD_NAMES = {
    "value": "value",
    "type": "type",
    "indicator_type": "type",
    "score": "score",
    "verdict": "score",
    "tags": "tags",
    "firstseen": "first_seen",
    "first_seen": "first_seen",
    "lastseen": "last_seen",
    "last_seen": "last_seen",
    "expiration": "expiration",
}


def read_csv(data: bytes, options: ImportOptions = ImportOptions()) -> Parsed:
    """
    Read a CSV file whose first row (after C{#} comment lines) names the
    columns.

    The value column is the one C{options.columns["value"]} names, or else
    the first header named as in L{VALUE_COLUMNS}. Other columns are read
    when named exactly like a field (C{type}, C{score}, C{tags},
    C{firstSeen}, C{lastSeen}, C{expiration}) or when C{options.columns}
    maps a field to them; a mapped name that is not a known field becomes a
    custom field. Tags cells may hold several
    tags separated by C{,}, C{;} or C{|}. Each record must be on one line.
    """
    text = _decode(data, options.name)
    parsed = Parsed()
    builder = _Builder(options, parsed)
    header: list[str] | None = None
    mapping: dict[str, int] = {}
    for number, line in _lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            parsed.skipped += 1
            continue
        try:
            row = next(csv.reader([line]))
        except csv.Error as e:
            if header is None:
                raise FormatError(
                    f"{options.name} line {number}: the header row is not valid "
                    f"CSV ({e})."
                ) from None
            builder.reject(number, line, f"the line is not valid CSV ({e}).")
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            mapping = _map_columns(header, options, number)
            continue
        _add_row(builder, number, row, mapping)
    if header is None:
        raise FormatError(
            f"{options.name}: there is no header row; a CSV file needs one that "
            "names its columns."
        )
    return parsed


def _map_columns(
    header: Sequence[str], options: ImportOptions, line: int
) -> dict[str, int]:
    positions = {name.lower(): index for index, name in enumerate(header)}
    shown = ", ".join(header)
    mapping: dict[str, int] = {}
    for field, column in options.columns.items():
        index = positions.get(column.lower())
        if index is None:
            raise FormatError(
                f"{options.name} line {line}: the column {column!r} given for "
                f"{field!r} is not in the header; the columns are: {shown}."
            )
        mapping[_FIELD_NAMES.get(field.lower(), field)] = index
    for field in ("type", "score", "tags", "firstSeen", "lastSeen", "expiration"):
        internal = _FIELD_NAMES[field.lower()]
        if internal not in mapping and field.lower() in positions:
            mapping[internal] = positions[field.lower()]
    if "value" not in mapping:
        for candidate in VALUE_COLUMNS:
            if candidate in positions:
                mapping["value"] = positions[candidate]
                break
        else:
            raise FormatError(
                f"{options.name} line {line}: no column holds the values; name "
                f"it with --column value=NAME (the columns are: {shown})."
            )
    return mapping


def _add_row(
    builder: _Builder, number: int, row: Sequence[str], mapping: Mapping[str, int]
) -> None:
    cells = {
        field: row[index].strip() if index < len(row) else ""
        for field, index in mapping.items()
    }
    value = cells.pop("value")
    if not value:
        builder.reject(number, ",".join(row), "the value column is empty.")
        return
    try:
        fields = _common_fields(cells)
    except ValueError as e:
        builder.reject(number, value, str(e))
        return
    builder.add(number, value, **fields)


def _common_fields(cells: dict[str, Any]) -> dict[str, Any]:
    """
    Turn the known fields of a record (CSV row or JSON object) into keyword
    arguments of L{_Builder.add}; the other fields become custom fields.

    :raises ValueError: for a bad type, score or date.
    """
    fields: dict[str, Any] = {}
    kind = cells.pop("type", None)
    if kind:
        fields["type"] = parse_type(str(kind))
    score = cells.pop("score", None)
    if score not in (None, ""):
        fields["score"] = parse_score(score)
    tags = cells.pop("tags", None)
    if isinstance(tags, str):
        fields["tags"] = [t.strip() for t in re.split(r"[,;|]", tags) if t.strip()]
    elif isinstance(tags, list):
        fields["tags"] = [str(t).strip() for t in tags if str(t).strip()]
    for name in ("first_seen", "last_seen", "expiration"):
        moment = cells.pop(name, None)
        if moment not in (None, ""):
            fields[name] = _parse_time(str(moment), name)
    custom = {k: v for k, v in cells.items() if v not in (None, "")}
    if custom:
        fields["custom_fields"] = custom
    return fields


def _parse_time(text: str, field: str) -> datetime:
    try:
        # Python 3.10 reads no "Z" suffix.
        zoned = text.strip().replace("Z", "+00:00")
        moment = datetime.fromisoformat(zoned)
    except ValueError:
        raise ValueError(
            f"the {field.replace('_', ' ')} {text!r} is not an ISO 8601 date or time."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


# JSON

_JSON_KEYS = {
    "value": "value",
    "indicator": "value",
    "name": "value",
    "type": "type",
    "indicator_type": "type",
    "indicatortype": "type",
    "score": "score",
    "verdict": "score",
    "tags": "tags",
    "firstseen": "first_seen",
    "first_seen": "first_seen",
    "lastseen": "last_seen",
    "last_seen": "last_seen",
    "expiration": "expiration",
}
_IGNORED_JSON_KEYS = frozenset({"sourcebrands", "sources", "id", "comments"})


def read_json(data: bytes, options: ImportOptions = ImportOptions()) -> Parsed:
    """
    Read a JSON list of objects, one indicator each.

    The value is under C{value} (or C{indicator} or C{name}); C{type} (or
    C{indicator_type}), C{score} (or C{verdict}), C{tags} (a list or a
    comma-separated string), C{firstSeen}, C{lastSeen} and C{expiration}
    are read when present; C{customFields} (an object) and any other key
    become custom fields. C{sourceBrands} is ignored: the import's source
    name is used instead. Rejects carry the line each object starts on.
    """
    text = _decode(data, options.name)
    parsed = Parsed()
    builder = _Builder(options, parsed)
    for number, item in _json_items(text, options.name):
        if not isinstance(item, dict):
            builder.reject(
                number, json.dumps(item)[:80], "the item is not a JSON object."
            )
            continue
        cells: dict[str, Any] = {}
        for key, content in item.items():
            lowered = str(key).lower()
            if lowered in _IGNORED_JSON_KEYS:
                continue
            if lowered == "customfields" and isinstance(content, dict):
                cells.update(content)
            else:
                cells[_JSON_KEYS.get(lowered, str(key))] = content
        value = cells.pop("value", None)
        if not isinstance(value, str) or not value.strip():
            builder.reject(
                number,
                json.dumps(item)[:80],
                "the object has no 'value' string.",
            )
            continue
        try:
            fields = _common_fields(cells)
        except ValueError as e:
            builder.reject(number, value, str(e))
            continue
        builder.add(number, value.strip(), **fields)
    return parsed


def _json_items(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """
    Yield each item of a top-level JSON array with the line it starts on.

    :raises FormatError: when the text is not a JSON array.
    """
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")

    def fail(position: int, expected: str) -> FormatError:
        line = text.count("\n", 0, position) + 1
        return FormatError(
            f"{name} line {line}: expected {expected}; the file must be a JSON "
            "list of objects."
        )

    position = _skip(whitespace, text, 0)
    if text[position : position + 1] != "[":
        raise fail(position, "'[' at the start")
    position = _skip(whitespace, text, position + 1)
    if text[position : position + 1] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as e:
            raise FormatError(
                f"{name} line {e.lineno}, column {e.colno}: {e.msg}; the file "
                "must be a JSON list of objects."
            ) from None
        yield text.count("\n", 0, position) + 1, item
        position = _skip(whitespace, text, end)
        following = text[position : position + 1]
        if following == "]":
            rest = _skip(whitespace, text, position + 1)
            if rest != len(text):
                raise fail(rest, "nothing after the closing ']'")
            return
        if following != ",":
            raise fail(position, "',' or ']' after an item")
        position = _skip(whitespace, text, position + 1)


def _skip(pattern: re.Pattern[str], text: str, position: int) -> int:
    match = pattern.match(text, position)
    return position if match is None else match.end()


# STIX

#: Which STIX object paths hold values of which types.
_STIX_PATHS: dict[tuple[str, str], frozenset[IndicatorType]] = {
    ("ipv4-addr", "value"): frozenset({IndicatorType.IP, IndicatorType.CIDR}),
    ("ipv6-addr", "value"): frozenset({IndicatorType.IPV6, IndicatorType.IPV6_CIDR}),
    ("domain-name", "value"): frozenset(
        {IndicatorType.DOMAIN, IndicatorType.DOMAIN_GLOB}
    ),
    ("url", "value"): frozenset({IndicatorType.URL}),
    ("email-addr", "value"): frozenset({IndicatorType.EMAIL}),
}
_STIX_HASHES = frozenset({"md5", "sha-1", "sha1", "sha-256", "sha256"})


def read_stix(data: bytes, options: ImportOptions = ImportOptions()) -> Parsed:
    """
    Read the indicator objects of a STIX 2.0 or 2.1 bundle.

    Each equality comparison in an indicator's pattern on
    C{ipv4-addr:value}, C{ipv6-addr:value}, C{domain-name:value},
    C{url:value}, C{email-addr:value} or C{file:hashes.MD5 / SHA-1 /
    SHA-256} gives one indicator. An indicator whose pattern has none of
    these (an X.509 certificate, say) is rejected with the paths it has.
    The indicator's C{labels} become tags, C{valid_until} the expiration,
    and its id and name the custom fields C{stixid} and C{stixname}. Other
    objects (reports, malware, relationships) are not indicators and are
    skipped. Rejects carry the line where the indicator's id appears.
    """
    import stix2  # type: ignore[import-untyped]
    from stix2.exceptions import STIXError  # type: ignore[import-untyped]
    from stix2patterns.exceptions import (  # type: ignore[import-untyped]
        ParseException,
    )
    from stix2patterns.pattern import Pattern  # type: ignore[import-untyped]

    text = _decode(data, options.name)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{options.name} line {e.lineno}, column {e.colno}: {e.msg}; a STIX "
            "bundle is a JSON object."
        ) from None
    if not isinstance(document, dict) or document.get("type") != "bundle":
        kind = document.get("type") if isinstance(document, dict) else None
        raise FormatError(
            f"{options.name}: the top-level object is "
            f"{'a ' + repr(kind) if kind else 'not a STIX object'}, not a bundle; "
            "wrap the objects in a STIX bundle."
        )
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        raise FormatError(
            f"{options.name}: this is not a valid STIX 2 bundle (its objects are "
            "not a list)."
        )

    parsed = Parsed()
    builder = _Builder(options, parsed)
    for raw in objects:
        if not isinstance(raw, dict) or raw.get("type") != "indicator":
            parsed.skipped += 1
            continue
        position = text.find(f'"{raw.get("id")}"')
        line = text.count("\n", 0, position) + 1 if position >= 0 else None
        try:
            # Each indicator is checked on its own, so that one bad object
            # costs only itself.
            item = stix2.parse(raw, allow_custom=True)
        except (STIXError, ValueError, TypeError) as e:
            builder.reject(
                line,
                str(raw.get("pattern", raw.get("id", ""))),
                f"the indicator is not valid STIX ({e}).",
            )
            continue
        pattern_type = item.get("pattern_type", "stix")
        if pattern_type != "stix":
            builder.reject(
                line,
                item.pattern,
                f"the pattern is of type {pattern_type!r}; only STIX patterns "
                "are read.",
            )
            continue
        try:
            comparisons = Pattern(item.pattern).inspect().comparisons
        except ParseException as e:
            builder.reject(line, item.pattern, f"the pattern does not parse ({e}).")
            continue
        expiration = item.get("valid_until")
        extra: dict[str, Any] = {"stixid": item.id}
        if item.get("name"):
            extra["stixname"] = item.name
        found = False
        unsupported = []
        for object_type, tests in comparisons.items():
            for path, operator, literal in tests:
                allowed = _stix_types(object_type, path)
                if allowed is None or operator != "=":
                    unsupported.append(f"{object_type}:{'.'.join(map(str, path))}")
                    continue
                found = True
                builder.add(
                    line,
                    _stix_string(literal),
                    allowed=allowed,
                    tags=list(item.get("labels", ())),
                    expiration=expiration,
                    custom_fields=extra,
                )
        if not found:
            paths = ", ".join(sorted(set(unsupported))) or "none"
            builder.reject(
                line,
                item.pattern,
                f"the pattern compares no value of a kind the store keeps "
                f"(it uses {paths}).",
            )
    return parsed


def _stix_types(
    object_type: str, path: Sequence[Any]
) -> frozenset[IndicatorType] | None:
    if len(path) == 1:
        return _STIX_PATHS.get((object_type, str(path[0])))
    if (
        object_type == "file"
        and len(path) == 2
        and path[0] == "hashes"
        and str(path[1]).lower() in _STIX_HASHES
    ):
        return frozenset({IndicatorType.FILE})
    return None


def _stix_string(literal: str) -> str:
    if len(literal) >= 2 and literal[0] == literal[-1] == "'":
        return re.sub(r"\\(.)", r"\1", literal[1:-1])
    return literal


# Choosing a reader

_READERS = {"text": read_text, "csv": read_csv, "json": read_json, "stix": read_stix}


def guess_format(name: str, data: bytes) -> str:
    """
    Guess the format of a file from its name and first bytes: C{.csv} is
    CSV; a JSON object with C{"type": "bundle"} is STIX; other JSON is
    JSON; anything else is text.
    """
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    start = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"{") and re.search(rb'"type"\s*:\s*"bundle"', data[:65536]):
        return "stix"
    if start.startswith((b"[", b"{")) or lowered.endswith(".json"):
        return "json"
    return "text"


def parse(
    data: bytes, format: str | None = None, options: ImportOptions = ImportOptions()
) -> Parsed:
    """
    Read a file in one of L{FORMATS}, or in the format L{guess_format}
    finds when C{format} is C{None}.

    :raises FormatError: when the file cannot be read as a whole.
    :raises ValueError: for an unknown format name.
    """
    chosen = format or guess_format(options.name, data)
    reader = _READERS.get(chosen)
    if reader is None:
        raise ValueError(
            f"{chosen!r} is not a format; use one of {', '.join(FORMATS)}."
        )
    return reader(data, options)
