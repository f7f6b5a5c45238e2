"""
The formatting pipeline: from a stream of indicators to the text of a list,
in every format of both integrations.

L{ListRenderer} reads indicators one at a time and yields the body in
pieces, so that a list of any size is written out without being held in
memory. An I{entry} is one item of the output: a line of a text list, a row
of a CSV list (not counting the header), an element of a JSON array, a value
of a McAfee Web Gateway or ProxySG list. The offset and size of a request
count entries, after every rule has been applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from integrations.lists import panos
from integrations.lists.collapse import AddressCollector
from integrations.lists.settings import Collapse, Format, ListSettings
from xsoar_lr.indicators import Indicator, IndicatorType

__all__ = ["EMPTY_COMMENT", "BuildLog", "ListRenderer", "indicator_document"]

#: What an empty text list holds when the empty-list comment is on.
EMPTY_COMMENT = "# Empty List"

_PROXYSG_TYPES = frozenset(
    {
        IndicatorType.IP,
        IndicatorType.URL,
        IndicatorType.DOMAIN,
        IndicatorType.DOMAIN_GLOB,
    }
)
_PANOSURL_TYPES = frozenset(
    {IndicatorType.URL, IndicatorType.DOMAIN, IndicatorType.DOMAIN_GLOB}
)
_IPV4_COLLAPSED = frozenset({IndicatorType.IP, IndicatorType.CIDR})
_IPV6_COLLAPSED = frozenset({IndicatorType.IPV6, IndicatorType.IPV6_CIDR})
_RENAMES = {"name": "value", "type": "indicator_type"}
_WILDCARD_BASE = "The domain of a wildcard entry."
# The log's reason for each type, made once rather than per indicator.
_FOUND = {t: f"Found new {t.value}." for t in IndicatorType}


class BuildLog:
    """
    What a build did to each indicator: added, dropped (with the reason) or
    modified. Rows are written to C{sink} as they happen, one a line, as
    C{Action | Indicator | Raw Indicator | Reason}.

    :ivar added: how many entries were added.
    :ivar dropped: how many indicators or entries were dropped.
    :ivar modified: how many values were changed.
    """

    def __init__(self, sink: IO[str] | None = None) -> None:
        self._sink = sink
        self.added = 0
        self.dropped = 0
        self.modified = 0

    def _row(self, action: str, value: str, raw: str, reason: str) -> None:
        if self._sink is not None:
            self._sink.write(f"{action} | {value} | {raw} | {reason}\n")

    def add(self, value: str, raw: str, reason: str) -> None:
        """
        Record an entry that went into the list.
        """
        self.added += 1
        self._row("Added", value, raw, reason)

    def drop(self, raw: str, reason: str) -> None:
        """
        Record an indicator or entry left out of the list, and why.
        """
        self.dropped += 1
        self._row("Dropped", "", raw, reason)

    def modify(self, value: str, raw: str, reason: str) -> None:
        """
        Record a value that a rule changed.
        """
        self.modified += 1
        self._row("Modified", value, raw, reason)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def indicator_document(
    indicator: Indicator, value: str | None = None
) -> dict[str, Any]:
    """
    The full object of an indicator, with XSOAR's field names (C{value},
    C{indicator_type}, C{score}, C{tags}, C{sourceBrands}, C{firstSeen},
    C{lastSeen}, C{expiration}, C{CustomFields}).

    :param value: the value to show, when a rule changed it.
    """
    return {
        "value": indicator.value if value is None else value,
        "indicator_type": indicator.type.value,
        "score": int(indicator.score),
        "tags": list(indicator.tags),
        "sourceBrands": list(indicator.sources),
        "firstSeen": _iso(indicator.first_seen),
        "lastSeen": _iso(indicator.last_seen),
        "expiration": _iso(indicator.expiration),
        "CustomFields": dict(indicator.custom_fields),
    }


_DOCUMENT_KEYS = tuple(indicator_document(Indicator("x", IndicatorType.IP)))


def _lookup(document: Mapping[str, Any], name: str) -> Any:
    key = _RENAMES.get(name, name)
    if key in document:
        return document[key]
    return document["CustomFields"].get(key)


def _csv_cell(value: Any) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return '"' + text.replace('"', '""') + '"'


def _bare_csv_cell(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return _csv_cell(text)
    return text


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _json_compact(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


class ListRenderer:
    """
    Turns indicators into the body of one list.

    Use L{chunks}; when it is exhausted, L{entries} and L{origin_size} hold
    the counts for the response headers.

    :ivar entries: entries written (C{X-EDL-Size}).
    :ivar origin_size: indicators read from the store (C{X-EDL-Origin-Size}).
    """

    def __init__(self, settings: ListSettings, log: BuildLog | None = None) -> None:
        self.settings = settings
        self.log = log if log is not None else BuildLog()
        self.entries = 0
        self.origin_size = 0
        self._skipped = 0

    # -- the window of entries ------------------------------------------

    def _window(self, entries: Iterator[tuple[str, str, str]]) -> Iterator[str]:
        """
        Apply the offset and size to C{(entry, raw, reason)} triples and log
        each entry that is kept.
        """
        offset, size = self.settings.offset, self.settings.size
        if size <= 0:
            return
        for entry, raw, reason in entries:
            if self._skipped < offset:
                self._skipped += 1
                self.log.drop(raw, f"Before the offset {offset}.")
                continue
            self.entries += 1
            self.log.add(entry, raw, reason)
            yield entry
            if self.entries >= size:
                return

    def _counted(self, indicators: Iterable[Indicator]) -> Iterator[Indicator]:
        enforce_ascii = self.settings.enforce_ascii
        for indicator in indicators:
            self.origin_size += 1
            if enforce_ascii and not indicator.value.isascii():
                self.log.drop(indicator.value, "Contains non-ASCII characters.")
                continue
            yield indicator

    # -- the public entry point -------------------------------------------

    def chunks(self, indicators: Iterable[Indicator]) -> Iterator[str]:
        """
        Yield the body of the list, in pieces, in the settings' format.
        """
        source = self._counted(indicators)
        fmt = self.settings.format
        if fmt.is_text:
            yield from self._text(source)
        elif fmt is Format.JSON:
            yield from self._array(self._json_elements(source))
        elif fmt is Format.CSV:
            yield from self._csv(source)
        elif fmt is Format.MWG:
            yield from self._mwg(source)
        elif fmt is Format.PROXYSG:
            yield from self._proxysg(source)
        elif fmt is Format.MINEMELD_CSV:
            yield "indicator"
            for entry in self._window(self._raw_entries(source, _bare_csv_cell)):
                yield "\n" + entry
        elif fmt is Format.MINEMELD_JSON:
            yield from self._array(self._window(self._minemeld_elements(source, _json)))
        elif fmt is Format.MINEMELD_JSON_SEQ:
            yield from self._lines(
                self._window(self._minemeld_elements(source, _json_compact))
            )
        elif fmt is Format.XSOAR_JSON:
            yield from self._array(self._window(self._documents(source, _json)))
        elif fmt is Format.XSOAR_JSON_SEQ:
            yield from self._lines(self._window(self._documents(source, _json_compact)))
        elif fmt is Format.XSOAR_CSV:
            yield ",".join(_DOCUMENT_KEYS)
            for entry in self._window(self._xsoar_rows(source)):
                yield "\n" + entry
        else:  # pragma: no cover - every Format member is handled above
            raise AssertionError(f"unhandled format {fmt}")

    # -- shapes shared by several formats ---------------------------------

    @staticmethod
    def _array(elements: Iterator[str]) -> Iterator[str]:
        separator = "["
        for element in elements:
            yield separator + element
            separator = ", "
        yield "[]" if separator == "[" else "]"

    @staticmethod
    def _lines(entries: Iterator[str]) -> Iterator[str]:
        separator = ""
        for entry in entries:
            yield separator + entry
            separator = "\n"

    def _raw_entries(
        self, source: Iterator[Indicator], shape: Any
    ) -> Iterator[tuple[str, str, str]]:
        for indicator in source:
            yield (
                shape(indicator.value),
                indicator.value,
                _FOUND[indicator.type],
            )

    def _url_value(self, indicator: Indicator) -> str:
        """
        The value with the URL rules that XSOAR applies outside text lists:
        protocol and port removal and truncation, for URL indicators only.
        """
        value = indicator.value
        if indicator.type is not IndicatorType.URL:
            return value
        settings = self.settings
        if settings.strip_protocol:
            value = panos.strip_protocol(value)
        if settings.strip_port:
            value = panos.strip_port(value)
        if settings.truncate and len(value) >= panos.MAX_URL_LENGTH:
            value = value[: panos.MAX_URL_LENGTH - 1]
        if value != indicator.value:
            self.log.modify(value, indicator.value, "Applied the URL rules.")
        return value

    # -- text lists -------------------------------------------------------

    def _text(self, source: Iterator[Indicator]) -> Iterator[str]:
        settings = self.settings
        separator = settings.prepend + "\n" if settings.prepend else ""
        for entry in self._window(self._text_entries(source)):
            yield separator + entry
            separator = "\n"
        if self.entries == 0:
            if settings.add_comment:
                yield EMPTY_COMMENT
        elif settings.append:
            yield "\n" + settings.append

    def _text_entries(
        self, source: Iterator[Indicator]
    ) -> Iterator[tuple[str, str, str]]:
        settings = self.settings
        collapse = settings.collapse is not Collapse.NONE
        collectors = {4: AddressCollector(4), 6: AddressCollector(6)}
        seen: set[str] = set()
        for indicator in source:
            for entry, reason in self._text_values(
                indicator, collectors if collapse else None
            ):
                if entry in seen:
                    self.log.drop(indicator.value, f"Duplicate of the entry {entry}.")
                    continue
                seen.add(entry)
                yield entry, indicator.value, reason
        if not collapse:
            return
        for version, collector in collectors.items():
            if not len(collector):
                continue
            mode = "ranges" if settings.collapse is Collapse.RANGES else "CIDRs"
            reason = f"Collapsed IPv{version} to {mode}."
            for entry in collector.collapsed(settings.collapse):
                if entry not in seen:
                    seen.add(entry)
                    yield entry, "", reason

    def _text_values(
        self, indicator: Indicator, collectors: dict[int, AddressCollector] | None
    ) -> tuple[tuple[str, str], ...]:
        """
        Apply the rules of the settings' text format to one indicator and
        return its entries (none, one, or a domain and its wildcard) with the
        reason for the log.
        """
        settings = self.settings
        raw = indicator.value
        value = raw.strip()
        if not value:
            self.log.drop(raw, "Empty value.")
            return ()
        if "\n" in value or "\r" in value:
            self.log.drop(raw, "Contains a line break.")
            return ()
        found = _FOUND[indicator.type]

        if indicator.type in panos.IP_TYPES:
            bits = panos.prefix_length(value)
            if bits is not None and bits < settings.max_cidr:
                self.log.drop(raw, f"CIDR exceeds max length {settings.max_cidr}.")
                return ()
            if collectors is not None:
                if indicator.type in _IPV4_COLLAPSED and collectors[4].add(value):
                    return ()
                if indicator.type in _IPV6_COLLAPSED and collectors[6].add(value):
                    return ()
            return ((value, found),)

        if settings.format is Format.PANOS_TEXT:
            rewritten = self._panos_rules(indicator, value)
        elif settings.format is Format.PANOS_URL and indicator.type in _PANOSURL_TYPES:
            rewritten = self._panosurl_rules(value)
        else:
            rewritten = value
        if rewritten is None:
            return ()
        if not rewritten:
            self.log.drop(raw, "Empty after the URL rules.")
            return ()
        if rewritten != raw:
            self.log.modify(rewritten, raw, "Applied the URL rules.")

        base = panos.wildcard_base(rewritten)
        if base is not None:
            if settings.no_wildcard_tld and panos.is_public_suffix(base):
                self.log.drop(raw, "Domain is a TLD.")
                return ()
            if settings.format is not Format.PLAIN_TEXT:
                return ((base, _WILDCARD_BASE), (rewritten, found))
        return ((rewritten, found),)

    def _panos_rules(self, indicator: Indicator, value: str) -> str | None:
        settings = self.settings
        # Schemes and ports both need a colon or a leading "//"; most values
        # (domains, plain paths) have neither, and skip the regular expressions.
        colon = ":" in value
        if settings.strip_protocol and (colon or value.startswith("//")):
            value = panos.strip_protocol(value)
            colon = ":" in value
        if settings.strip_port and colon:
            value = panos.strip_port(value)
            colon = ":" in value
        if settings.truncate and len(value) >= panos.MAX_URL_LENGTH:
            value = value[: panos.MAX_URL_LENGTH - 1]
        if settings.drop_invalids:
            if (colon and panos.has_port(value)) or panos.has_invalid_token(value):
                self.log.drop(indicator.value, "Invalid tokens or port.")
                return None
            if (
                indicator.type is IndicatorType.URL
                and len(value) >= panos.MAX_URL_LENGTH
            ):
                self.log.drop(indicator.value, "URL exceeds max length 255.")
                return None
        return value

    def _panosurl_rules(self, raw: str) -> str | None:
        settings = self.settings
        value = panos.strip_protocol(raw.lower())
        if panos.has_port(value):
            if not settings.strip_port:
                self.log.drop(raw, "Has a port and port stripping is off.")
                return None
            value = panos.strip_port(value)
        if panos.has_invalid_token(value):
            if settings.drop_invalids:
                self.log.drop(raw, "Invalid tokens or port.")
                return None
            value = panos.replace_invalid_tokens(value)
        if settings.truncate and len(value) >= panos.MAX_URL_LENGTH:
            value = value[: panos.MAX_URL_LENGTH - 1]
        if panos.is_too_broad(value):
            self.log.drop(raw, "Too broad for a URL list.")
            return None
        return value

    # -- CSV and JSON of the EDL ------------------------------------------

    def _json_elements(self, source: Iterator[Indicator]) -> Iterator[str]:
        fields = self.settings.fields

        def shaped() -> Iterator[tuple[str, str, str]]:
            for indicator in source:
                value = self._url_value(indicator)
                if fields == ("all",):
                    element: dict[str, Any] = indicator_document(indicator, value)
                elif fields:
                    document = indicator_document(indicator, value)
                    element = {_RENAMES.get(n, n): _lookup(document, n) for n in fields}
                else:
                    element = {"value": value, "indicator_type": indicator.type.value}
                yield (
                    _json(element),
                    indicator.value,
                    _FOUND[indicator.type],
                )

        return self._window(shaped())

    def _csv(self, source: Iterator[Indicator]) -> Iterator[str]:
        fields = self.settings.fields
        if fields == ("all",):
            yield ",".join(_DOCUMENT_KEYS)
        else:
            yield ",".join(fields) if fields else "name,type"

        def rows() -> Iterator[tuple[str, str, str]]:
            for indicator in source:
                value = self._url_value(indicator)
                if fields == ("all",):
                    cells = list(indicator_document(indicator, value).values())
                elif fields:
                    document = indicator_document(indicator, value)
                    cells = [_lookup(document, n) for n in fields]
                else:
                    cells = [value, indicator.type.value]
                row = ",".join(_csv_cell(cell) for cell in cells)
                yield row, indicator.value, _FOUND[indicator.type]

        for row in self._window(rows()):
            yield "\n" + row

    # -- proxy formats ----------------------------------------------------

    def _mwg(self, source: Iterator[Indicator]) -> Iterator[str]:
        yield f"type={self.settings.mwg_type}"

        def lines() -> Iterator[tuple[str, str, str]]:
            for indicator in source:
                value = self._url_value(indicator)
                if any(c in value for c in '"\r\n'):
                    self.log.drop(
                        indicator.value,
                        "Contains a double quote or line break, which a McAfee Web "
                        "Gateway list cannot hold.",
                    )
                    continue
                sources = ",".join(indicator.sources) or "from CORTEX XSOAR"
                yield (
                    f'"{value}" "{sources}"',
                    indicator.value,
                    _FOUND[indicator.type],
                )

        for line in self._window(lines()):
            yield "\n" + line

    def _categories(self, indicator: Indicator) -> list[str]:
        settings = self.settings
        raw = indicator.custom_fields.get("proxysgcategory")
        if isinstance(raw, str):
            named = [raw] if raw.strip() else []
        elif isinstance(raw, (list, tuple)):
            named = [str(c) for c in raw if str(c).strip()]
        else:
            named = []
        listed = settings.category_attribute
        chosen = [c for c in named if not listed or c in listed]
        return chosen or [settings.category_default]

    def _proxysg(self, source: Iterator[Indicator]) -> Iterator[str]:
        # Entries are grouped by category, so this format holds the list's
        # values in memory while it is built (ProxySG lists are small).
        blocks: dict[str, dict[str, None]] = {}
        pending: list[str] = []

        def qualifying() -> Iterator[tuple[str, str, str]]:
            for indicator in source:
                if indicator.type not in _PROXYSG_TYPES:
                    self.log.drop(
                        indicator.value,
                        f"ProxySG lists hold no {indicator.type.value} indicators.",
                    )
                    continue
                value = self._url_value(indicator)
                if "\n" in value or "\r" in value:
                    self.log.drop(indicator.value, "Contains a line break.")
                    continue
                pending[:] = self._categories(indicator)
                yield value, indicator.value, _FOUND[indicator.type]

        for value in self._window(qualifying()):
            # The categories of the entry the window just kept.
            for category in pending:
                blocks.setdefault(category, {})[value] = None
        separator = ""
        for category, values in blocks.items():
            yield f"{separator}define category {category}\n"
            yield "".join(value + "\n" for value in values)
            yield "end"
            separator = "\n"

    # -- Export Indicators formats ----------------------------------------

    def _minemeld_elements(
        self, source: Iterator[Indicator], dump: Any
    ) -> Iterator[tuple[str, str, str]]:
        for indicator in source:
            document = indicator_document(indicator)
            value = document.pop("value")
            element = {"indicator": value, "value": document}
            yield dump(element), indicator.value, _FOUND[indicator.type]

    def _documents(
        self, source: Iterator[Indicator], dump: Any
    ) -> Iterator[tuple[str, str, str]]:
        for indicator in source:
            document = indicator_document(indicator)
            yield dump(document), indicator.value, _FOUND[indicator.type]

    def _xsoar_rows(
        self, source: Iterator[Indicator]
    ) -> Iterator[tuple[str, str, str]]:
        for indicator in source:
            cells = indicator_document(indicator).values()
            row = ",".join(_csv_cell(cell) for cell in cells)
            yield row, indicator.value, _FOUND[indicator.type]
