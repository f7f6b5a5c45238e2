"""
What a list is made of: the settings that shape one list, how instance
parameters and URL arguments turn into them, and the refresh rate.

A L{ListSettings} is a frozen, hashable value: two requests that resolve to
equal settings are served the same built list. A L{Flavour} describes how one
integration spells its parameters and format names, so that the EDL and the
Export Indicators integrations share every other line of code.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "ArgumentError",
    "Collapse",
    "Flavour",
    "Format",
    "ListSettings",
    "apply_arguments",
    "parse_flag",
    "parse_refresh_rate",
    "settings_from_params",
]


class Format(enum.Enum):
    """
    The output formats. The value is the internal name used in logs and in
    on-demand update requests.
    """

    PANOS_TEXT = "panos-text"
    PLAIN_TEXT = "text"
    PANOS_URL = "panosurl"
    CSV = "csv"
    JSON = "json"
    MWG = "mwg"
    PROXYSG = "proxysg"
    MINEMELD_CSV = "minemeld-csv"
    MINEMELD_JSON = "minemeld-json"
    MINEMELD_JSON_SEQ = "json-seq"
    XSOAR_JSON = "xsoar-json"
    XSOAR_JSON_SEQ = "xsoar-seq"
    XSOAR_CSV = "xsoar-csv"

    @property
    def is_text(self) -> bool:
        """
        Whether this is a plain list of entries, one a line, that gets the
        empty-list comment and the prepend and append strings.
        """
        return self in _TEXT_FORMATS

    @property
    def is_csv(self) -> bool:
        """
        Whether this is a CSV format (served as C{text/csv} unless asked
        otherwise).
        """
        return self in (Format.CSV, Format.MINEMELD_CSV, Format.XSOAR_CSV)

    def content_type(self, csv_text: bool) -> str:
        """
        The C{Content-Type} a list in this format is served with.

        :param csv_text: serve CSV as C{text/plain}.
        """
        if self.is_csv:
            return (
                "text/plain; charset=utf-8" if csv_text else "text/csv; charset=utf-8"
            )
        if self in (Format.JSON, Format.MINEMELD_JSON, Format.XSOAR_JSON):
            return "application/json"
        if self in (Format.MINEMELD_JSON_SEQ, Format.XSOAR_JSON_SEQ):
            return "application/json-seq"
        return "text/plain; charset=utf-8"


_TEXT_FORMATS = frozenset({Format.PANOS_TEXT, Format.PLAIN_TEXT, Format.PANOS_URL})


class Collapse(enum.Enum):
    """
    How IP addresses are collapsed in text lists.
    """

    NONE = "Don't Collapse"
    RANGES = "To Ranges"
    CIDRS = "To CIDRS"


#: The spellings accepted for each collapse mode, in parameters and in C{tr}.
COLLAPSE_NAMES: Mapping[str, Collapse] = {
    "0": Collapse.NONE,
    "1": Collapse.RANGES,
    "2": Collapse.CIDRS,
    "don't collapse": Collapse.NONE,
    "to ranges": Collapse.RANGES,
    "to cidrs": Collapse.CIDRS,
}

#: McAfee Web Gateway list types, as XSOAR spells them.
MWG_TYPES = (
    "string",
    "applcontrol",
    "dimension",
    "category",
    "ip",
    "mediatype",
    "number",
    "regex",
)


#: The fields a list can be sorted by (those the indicator store sorts by).
SORT_FIELDS = ("value", "type", "score", "firstSeen", "lastSeen", "expiration")


def _sort_field(text: str, argument: str) -> str:
    for name in SORT_FIELDS:
        if name.lower() == text.strip().lower():
            return name
    raise ArgumentError(
        argument,
        f"Argument '{argument}' names an unknown sort field {text!r}. Accepted "
        f"values: {', '.join(SORT_FIELDS)}.",
    )


class ArgumentError(ValueError):
    """
    A URL argument (or the value of a parameter given with an update request)
    is not acceptable.

    :ivar argument: the argument's name, as it appears in the URL.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(message)


_REFRESH_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
_REFRESH_RE = re.compile(r"^\s*(\d+)\s+([a-z]+?)s?\s*$", re.IGNORECASE)


def parse_refresh_rate(text: str) -> int:
    """
    Turn an XSOAR refresh rate such as C{"30 minutes"} into seconds.

    A month counts as 30 days and a year as 365 days.

    :raises ValueError: naming the accepted units.
    """
    match = _REFRESH_RE.match(text or "")
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _REFRESH_UNITS:
        raise ValueError(
            f"the refresh rate {text!r} is not '<number> <unit>' with a unit of "
            "seconds, minutes, hours, days, weeks, months or years "
            "(for example '30 minutes')"
        )
    return int(match.group(1)) * _REFRESH_UNITS[unit]


_TRUE = frozenset({"", "true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_FLAG_VALUES = (
    "no value (as in '?sp'), true, 1, yes or on to turn it on; false, 0, no or off"
)


def parse_flag(argument: str, value: str) -> bool:
    """
    Read a flag argument: bare or C{true}/C{1}/C{yes}/C{on} is on,
    C{false}/C{0}/C{no}/C{off} is off, whatever the case.

    :raises ArgumentError: for any other value.
    """
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ArgumentError(
        argument,
        f"Argument '{argument}' must be a flag, not {value!r}. Accepted values: "
        f"{_FLAG_VALUES} to turn it off.",
    )


@attrs.frozen
class ListSettings:
    """
    Everything that decides the bytes of one list.

    :ivar query: the indicator query (XSOAR syntax); empty means every
        indicator.
    :ivar size: the most entries the list holds.
    :ivar offset: how many entries to skip first.
    :ivar format: the output format.
    :ivar fields: the exported fields of CSV and JSON: C{()} for value and
        type, C{("all",)} for every field, else the names.
    :ivar mwg_type: the McAfee Web Gateway list type.
    :ivar strip_port: remove ports from URLs.
    :ivar strip_protocol: remove schemes from URLs.
    :ivar truncate: cut URLs to 254 characters.
    :ivar drop_invalids: drop URL entries PAN-OS would reject.
    :ivar collapse: how to collapse IP addresses in text lists.
    :ivar category_default: the ProxySG category of uncategorised entries.
    :ivar category_attribute: the ProxySG categories kept (empty: all).
    :ivar csv_text: serve CSV as C{text/plain}.
    :ivar add_comment: serve C{# Empty List} rather than an empty list.
    :ivar max_cidr: drop networks whose prefix is shorter than this.
    :ivar no_wildcard_tld: drop C{*.<public suffix>} entries.
    :ivar enforce_ascii: drop entries with non-ASCII characters.
    :ivar prepend: text put before a non-empty text list.
    :ivar append: text put after a non-empty text list.
    :ivar sort_field: the field to sort by, or C{None} for the store's order.
    :ivar descending: sort in descending order.
    """

    query: str = ""
    size: int = 2500
    offset: int = 0
    format: Format = Format.PANOS_TEXT
    fields: tuple[str, ...] = ()
    mwg_type: str = "string"
    strip_port: bool = True
    strip_protocol: bool = True
    truncate: bool = False
    drop_invalids: bool = False
    collapse: Collapse = Collapse.NONE
    category_default: str = "bc_category"
    category_attribute: tuple[str, ...] = ()
    csv_text: bool = False
    add_comment: bool = True
    max_cidr: int = 8
    no_wildcard_tld: bool = False
    enforce_ascii: bool = False
    prepend: str = ""
    append: str = ""
    sort_field: str | None = None
    descending: bool = False

    def describe(self) -> dict[str, Any]:
        """
        The settings as a plain mapping, for the build log.
        """
        result = attrs.asdict(self, recurse=False)
        result["format"] = self.format.value
        result["collapse"] = self.collapse.value
        return result


@attrs.frozen
class Flavour:
    """
    How one integration spells its parameters, formats and headers.

    :ivar integration: the integration id.
    :ivar formats: format name (as a parameter value or C{v} argument) to
        format; matched exactly, so that C{CSV} and C{csv} may differ.
    :ivar format_choices: the values the C{format} parameter accepts.
    :ivar param_names: setting name to parameter name, for every setting the
        integration has a parameter for.
    :ivar arguments: the URL arguments the integration understands.
    :ivar header_prefix: the prefix of the informational response headers.
    :ivar list_name: what the integration calls its list, in log headings.
    """

    integration: str
    formats: Mapping[str, Format]
    format_choices: tuple[str, ...]
    param_names: Mapping[str, str]
    arguments: tuple[str, ...]
    header_prefix: str
    list_name: str

    def format_named(self, name: str, argument: str) -> Format:
        """
        Look a format name up.

        :raises ArgumentError: naming the accepted names.
        """
        try:
            return self.formats[name]
        except KeyError:
            accepted = ", ".join(repr(n) for n in self.formats)
            raise ArgumentError(
                argument,
                f"Argument '{argument}' names an unknown format {name!r}. "
                f"Accepted values: {accepted}.",
            ) from None


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _fields(text: str) -> tuple[str, ...]:
    names = _split_list(text)
    if any(name.lower() == "all" for name in names):
        return ("all",)
    return names


def _collapse(text: str, argument: str) -> Collapse:
    try:
        return COLLAPSE_NAMES[text.strip().lower()]
    except KeyError:
        raise ArgumentError(
            argument,
            f"Argument '{argument}' must be 0 (Don't Collapse), 1 (To Ranges) or "
            f"2 (To CIDRS), or one of those names, not {text!r}.",
        ) from None


def _unescape(text: str) -> str:
    # XSOAR lets users type a line break as the two characters backslash, n.
    return (text or "").replace("\\n", "\n")


def settings_from_params(flavour: Flavour, params: Mapping[str, Any]) -> ListSettings:
    """
    Build the default settings of an instance from its validated parameters.

    :raises ArgumentError: when a parameter value cannot be used; the
        argument is the parameter's name.
    """
    names = flavour.param_names
    values: dict[str, Any] = {}

    def get(setting: str) -> Any:
        name = names.get(setting)
        return None if name is None else params.get(name)

    for setting in (
        "strip_port",
        "strip_protocol",
        "truncate",
        "drop_invalids",
        "csv_text",
        "add_comment",
        "no_wildcard_tld",
        "enforce_ascii",
    ):
        value = get(setting)
        if value is not None:
            values[setting] = bool(value)
    for setting in ("size", "max_cidr"):
        value = get(setting)
        if value is not None:
            values[setting] = int(value)
    if get("query") is not None:
        values["query"] = str(get("query")).strip()
    if get("format"):
        values["format"] = flavour.format_named(str(get("format")), names["format"])
    if get("fields") is not None:
        values["fields"] = _fields(str(get("fields")))
    if get("mwg_type"):
        values["mwg_type"] = str(get("mwg_type"))
    if get("collapse"):
        values["collapse"] = _collapse(str(get("collapse")), names["collapse"])
    if get("category_default"):
        values["category_default"] = str(get("category_default"))
    if get("category_attribute") is not None:
        values["category_attribute"] = _split_list(str(get("category_attribute")))
    for setting in ("prepend", "append"):
        if get(setting):
            values[setting] = _unescape(str(get(setting)))
    if get("sort_field"):
        values["sort_field"] = _sort_field(str(get("sort_field")), names["sort_field"])
    if get("sort_order"):
        values["descending"] = str(get("sort_order")).strip().lower().startswith("desc")
    return ListSettings(**values)


def _integer(argument: str, text: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ArgumentError(
            argument,
            f"Argument '{argument}' must be a whole number of at least {minimum}, "
            f"not {text!r}.",
        )
    return value


def apply_arguments(
    flavour: Flavour, base: ListSettings, args: Mapping[str, Sequence[str]]
) -> tuple[ListSettings, bool]:
    """
    Override C{base} with the URL arguments of one request.

    Arguments the integration does not know are ignored, as XSOAR ignores
    them; when an argument is repeated the last value counts.

    :param args: argument name to its values, decoded as UTF-8.
    :returns: the settings and whether the request asked for a fresh build
        (C{nocache}).
    :raises ArgumentError: for the first bad argument.
    """
    known = set(flavour.arguments)
    given = {
        name: values[-1] for name, values in args.items() if values and name in known
    }
    changes: dict[str, Any] = {}
    flags = {
        "sp": "strip_port",
        "pr": "strip_protocol",
        "di": "drop_invalids",
        "tx": "csv_text",
        "ce": "add_comment",
        "ut": "truncate",
        "nt": "no_wildcard_tld",
    }
    for argument, setting in flags.items():
        if argument in given:
            changes[setting] = parse_flag(argument, given[argument])
    if "n" in given:
        changes["size"] = _integer("n", given["n"], 0)
    if "s" in given:
        changes["offset"] = _integer("s", given["s"], 0)
    if "mc" in given:
        changes["max_cidr"] = _integer("mc", given["mc"], 0)
    if given.get("v", "").strip():
        changes["format"] = flavour.format_named(given["v"].strip(), "v")
    if given.get("q", "").strip():
        changes["query"] = given["q"].strip()
    if "t" in given:
        if given["t"] not in MWG_TYPES:
            raise ArgumentError(
                "t",
                f"Argument 't' must be a McAfee Web Gateway list type, not "
                f"{given['t']!r}. Accepted values: {', '.join(MWG_TYPES)}.",
            )
        changes["mwg_type"] = given["t"]
    if "tr" in given:
        changes["collapse"] = _collapse(given["tr"], "tr")
    if given.get("cd", "").strip():
        changes["category_default"] = given["cd"].strip()
    if "ca" in given:
        changes["category_attribute"] = _split_list(given["ca"])
    if "fi" in given:
        changes["fields"] = _fields(given["fi"])
    if given.get("sf", "").strip():
        changes["sort_field"] = _sort_field(given["sf"], "sf")
    if "so" in given:
        order = given["so"].strip().lower()
        if order not in ("asc", "desc"):
            raise ArgumentError(
                "so",
                f"Argument 'so' must be asc or desc, not {given['so']!r}.",
            )
        changes["descending"] = order == "desc"
    nocache = "nocache" in given and parse_flag("nocache", given["nocache"])
    return attrs.evolve(base, **changes), nocache
