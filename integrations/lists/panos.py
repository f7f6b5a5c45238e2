"""
The rules that make indicator values acceptable to PAN-OS and other
firewalls: scheme and port removal, truncation, invalid wildcard tokens,
wildcard domains, public-suffix globs and network-size safeguards.

Each rule is a small function on one value so that the text formats can
apply them in order and record, for the build log, what each one did.
"""

from __future__ import annotations

import re
from functools import lru_cache

from xsoar_lr.indicators import IndicatorType

__all__ = [
    "IP_TYPES",
    "MAX_URL_LENGTH",
    "has_invalid_token",
    "has_port",
    "is_public_suffix",
    "is_too_broad",
    "prefix_length",
    "strip_port",
    "strip_protocol",
    "wildcard_base",
]

#: Types that are addresses or networks; the URL rules never touch them.
IP_TYPES = frozenset(
    {IndicatorType.IP, IndicatorType.IPV6, IndicatorType.CIDR, IndicatorType.IPV6_CIDR}
)

#: PAN-OS rejects URL entries of this many characters or more.
MAX_URL_LENGTH = 255

# A run of "scheme:" groups followed by "//" (so "https://", "hxxp://" and a
# bare "//" all go). Case-insensitive, unlike XSOAR, whose match missed
# "HTTP://".
_PROTOCOL = re.compile(r"^(?:[a-z][a-z0-9+.\-]*:)*//", re.IGNORECASE)

# The authority of a URL: optional scheme and "//", optional user
# information, then either a bracketed IPv6 literal or a host name, then
# one or more ":digits" groups that end the authority. A bare IPv6 address
# never matches, because its colons are not followed by a delimiter alone.
_PORT = re.compile(
    r"^(?P<head>(?:[a-z][a-z0-9+.\-]*:)*(?://)?(?:[^/?#@\[\]\s]*@)?"
    r"(?:\[[0-9a-f:.]+\]|[^/?#:@\[\]\s]+))(?P<port>(?::\d+)+)(?=$|[/?#])",
    re.IGNORECASE,
)

# A token is a maximal run of characters other than . / + = ? &.
_TOKEN_SPLIT = re.compile(r"[./+=?&]")

# Too broad for a URL list: only "*." labels before one alphabetic label.
_TOO_BROAD = re.compile(r"^(?:\*\.)+[a-z]+(?::\d+)?$", re.IGNORECASE)


def strip_protocol(value: str) -> str:
    """
    Remove a leading scheme and C{//} (C{https://}, C{hxxp://}, C{//}).
    """
    return _PROTOCOL.sub("", value, count=1)


def strip_port(value: str) -> str:
    """
    Remove the port from the authority of a URL, keeping a bracketed IPv6
    host intact (C{http://[2001:db8::1]:8080/a} becomes
    C{http://[2001:db8::1]/a}).
    """
    match = _PORT.match(value)
    if match is None:
        return value
    return match.group("head") + value[match.end() :]


def has_port(value: str) -> bool:
    """
    Whether the authority of a URL still carries a port.
    """
    return _PORT.match(value) is not None


def has_invalid_token(value: str) -> bool:
    """
    Whether a token mixes C{*} with other characters (C{ex*ample.com}), which
    PAN-OS rejects; a token that is just C{*} is fine.
    """
    if "*" not in value:
        return False
    return any("*" in token and token != "*" for token in _TOKEN_SPLIT.split(value))


def replace_invalid_tokens(value: str) -> str:
    """
    Replace every token that mixes C{*} with other characters by C{*}
    (MineMeld's C{panosurl} rewriting).
    """
    if "*" not in value:
        return value
    parts = re.split(r"([./+=?&])", value)
    return "".join(
        "*"
        if ("*" in part and part != "*" and not _TOKEN_SPLIT.fullmatch(part))
        else part
        for part in parts
    )


def is_too_broad(value: str) -> bool:
    """
    Whether the host part of a URL entry is only wildcards before one
    alphabetic label (C{*.com}, C{*.*.paloalto:60}).
    """
    return _TOO_BROAD.match(value.split("/", 1)[0]) is not None


def wildcard_base(value: str) -> str | None:
    """
    The domain a C{*.domain} entry also stands for, or C{None} when the value
    does not start with C{*.}.

    PAN-OS's C{*.example.com} does not match C{example.com} itself, so a list
    carries both.
    """
    if not value.startswith("*."):
        return None
    return value.lstrip("*.") or None


@lru_cache(maxsize=1)
def _extractor() -> object:
    import tldextract

    # No suffix list URLs and no cache folder: the snapshot bundled with
    # tldextract is used, and nothing is fetched or written at run time.
    return tldextract.TLDExtract(
        suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True
    )


def is_public_suffix(domain: str) -> bool:
    """
    Whether C{domain} is a public suffix (C{com}, C{co.uk}), so that
    C{*.<domain>} would match a whole registry.
    """
    domain = domain.strip(".").lower()
    if not domain:
        return True
    result = _extractor()(domain)  # type: ignore[operator]
    return not result.domain and bool(result.suffix) and result.suffix == domain


def prefix_length(value: str) -> int | None:
    """
    The prefix length of a network written as C{address/bits}, or C{None}
    when there is none or it is not a number.
    """
    _, slash, bits = value.partition("/")
    if not slash or not bits.isdigit():
        return None
    return int(bits)
