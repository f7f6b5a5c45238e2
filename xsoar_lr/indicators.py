"""
Indicators: the values that lists are made of, with their types and verdicts.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

__all__ = [
    "Indicator",
    "IndicatorType",
    "Score",
    "check_type",
    "detect_type",
    "normalise",
    "parse_score",
    "parse_type",
]


class IndicatorType(str, enum.Enum):
    """
    The indicator types, named as XSOAR names them.
    """

    IP = "IP"
    IPV6 = "IPv6"
    CIDR = "CIDR"
    IPV6_CIDR = "IPv6CIDR"
    DOMAIN = "Domain"
    DOMAIN_GLOB = "DomainGlob"
    URL = "URL"
    EMAIL = "Email"
    FILE = "File"


class Score(enum.IntEnum):
    """
    An indicator's reputation, with the verdict names XSOAR shows.
    """

    UNKNOWN = 0
    GOOD = 1
    SUSPICIOUS = 2
    BAD = 3

    @property
    def verdict(self) -> str:
        """
        The verdict name XSOAR uses for this score.
        """
        return _VERDICTS[self]


_VERDICTS = {
    Score.UNKNOWN: "Unknown",
    Score.GOOD: "Benign",
    Score.SUSPICIOUS: "Suspicious",
    Score.BAD: "Malicious",
}


@attrs.frozen
class Indicator:
    """
    One indicator as the store holds it.

    :ivar value: the value, exactly as it was given.
    :ivar type: the indicator's type.
    :ivar score: its reputation.
    :ivar tags: free labels, kept in the order first seen.
    :ivar sources: the feeds and imports that listed it (XSOAR's
        C{sourceBrands}).
    :ivar first_seen: when any source first listed it.
    :ivar last_seen: when any source last listed it.
    :ivar expiration: when it stops being active, if ever.
    :ivar custom_fields: other fields, such as C{proxysgcategory}.
    """

    value: str
    type: IndicatorType = attrs.field(converter=IndicatorType)
    score: Score = attrs.field(default=Score.UNKNOWN, converter=Score)
    tags: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    sources: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    expiration: datetime | None = None
    custom_fields: Mapping[str, Any] = attrs.field(factory=dict)


# Type detection and normalisation.
#
# The rules, in the order they are tried (the "Type rules" section of
# README.rst repeats them for users):
#
# 1. A value with a scheme (``http://``, ``hxxps://``, ``ftp://``...) is a URL.
# 2. A dotted quad is an IP; a dotted quad with ``/0`` to ``/32`` is a CIDR.
# 3. A value that parses as an IPv6 address is IPv6, and with ``/0`` to
#    ``/128`` an IPv6CIDR. This is tried before any host-and-port reading, so
#    ``2001:db8::8080`` is an address, never host ``2001:db8:`` on port 8080.
# 4. 32, 40 or 64 hexadecimal digits are a File (MD5, SHA-1, SHA-256).
# 5. ``local@domain`` is an Email.
# 6. ``*.`` followed by a domain is a DomainGlob.
# 7. A host name of two or more labels is a Domain.
# 8. A host (name, IPv4, or bracketed IPv6) followed by a port, a path, a
#    query or a fragment is a URL.
#
# Anything else is refused with a reason.

_BAD_CHARACTER_RE = re.compile(r"[\s\x00-\x1f\x7f]")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]{0,31}://")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_CANONICAL_IPV4_RE = re.compile(rf"^(?:{_OCTET}\.){{3}}{_OCTET}$")
_IPV4_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_IPV4_CIDR_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})/(\d{1,3})$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_HASH_LENGTHS = {32: "MD5", 40: "SHA-1", 64: "SHA-256"}
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_TLD_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|xn--[A-Za-z0-9-]+)$")
_EMAIL_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}$")
_HOST_PORT_RE = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^/?#:\[\]@\s]+)(?::(?P<port>\d{1,5}))?"
    r"(?P<rest>[/?#].*)?$",
    re.DOTALL,
)


def _host_error(host: str) -> str | None:
    """
    Say why C{host} is not a host name of two or more labels, or return
    C{None} when it is one.
    """
    name = host.removesuffix(".")
    if not name:
        return "it is empty"
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return "it is not a valid internationalised domain name"
    if len(name) > 253:
        return "it is longer than 253 characters"
    labels = name.split(".")
    if len(labels) < 2:
        return "it has a single label (a domain needs a dot, as in example.com)"
    for label in labels:
        if not _LABEL_RE.match(label):
            return (
                f"its label {shown(label)} is not made of letters, digits and hyphens"
            )
    if not _TLD_RE.match(labels[-1]):
        return f"its last label {shown(labels[-1])} is not a top-level domain"
    return None


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    if _CANONICAL_IPV4_RE.match(text):
        return _ANY_IPV4
    if not _IPV4_RE.match(text):
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


# Stands for any valid address where only validity matters.
_ANY_IPV4 = ipaddress.IPv4Address(0)


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    if ":" not in text or "%" in text:
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _is_url_host(host: str) -> bool:
    if host.startswith("["):
        return _ipv6(host[1:-1]) is not None
    return _ipv4(host) is not None or _host_error(host) is None


def _classify(value: str) -> IndicatorType | str:
    """
    Return the type of C{value}, or a reason why it has none.
    """
    if not value:
        return "the value is empty"
    if value != value.strip():
        return "the value has leading or trailing spaces"
    bad = _BAD_CHARACTER_RE.search(value)
    if bad is not None:
        if bad.group().isspace():
            return "the value contains white space"
        return "the value contains control characters"

    if _SCHEME_RE.match(value):
        rest = value.split("://", 1)[1]
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        if not netloc:
            return "the URL has no host after its scheme"
        return IndicatorType.URL

    if _ipv4(value) is not None:
        return IndicatorType.IP
    match = _IPV4_CIDR_RE.match(value)
    if match is not None:
        if _ipv4(match.group(1)) is None:
            return f"{shown(match.group(1))} is not an IPv4 address"
        if int(match.group(2)) > 32:
            return f"the IPv4 prefix length /{match.group(2)} is larger than 32"
        return IndicatorType.CIDR
    if ":" in value:
        address, slash, prefix = value.partition("/")
        if _ipv6(address) is not None:
            if not slash:
                return IndicatorType.IPV6
            if prefix.isdigit() and int(prefix) <= 128:
                return IndicatorType.IPV6_CIDR
            return f"the IPv6 prefix length /{prefix} is not a number up to 128"
        if "%" in address and _HOST_PORT_RE.match(value) is None:
            return "IPv6 addresses with a zone index ('%') are local to one host"

    if len(value) in _HASH_LENGTHS and _HEX_RE.match(value):
        return IndicatorType.FILE

    if "@" in value and "/" not in value and ":" not in value:
        local, _, domain = value.rpartition("@")
        if not _EMAIL_LOCAL_RE.match(local):
            return f"the part before '@' in {shown(value)} is not an e-mail mailbox"
        reason = _host_error(domain)
        if reason is not None:
            return f"the e-mail domain {shown(domain)} is not a domain: {reason}"
        return IndicatorType.EMAIL

    if value.startswith("*."):
        base = value.lstrip("*.")
        if "*" in base:
            return "a domain glob may only have '*.' at its start"
        reason = _host_error(base)
        if reason is None:
            return IndicatorType.DOMAIN_GLOB
        if "/" not in value and ":" not in value:
            return f"{shown(base)} after '*.' is not a domain: {reason}"

    host_reason = _host_error(value) if "*" not in value else "it contains '*'"
    if host_reason is None and not value.replace(".", "").isdigit():
        return IndicatorType.DOMAIN

    match = _HOST_PORT_RE.match(value)
    if match is not None and (match.group("port") or match.group("rest")):
        host = match.group("host")
        host = host.removeprefix("*.")
        if _is_url_host(host):
            port = match.group("port")
            if port is not None and not 0 < int(port) < 65536:
                return f"the port {port} is not between 1 and 65535"
            return IndicatorType.URL
        return f"{shown(host)} before the port or path is not a host name or address"
    if value.replace(".", "").isdigit():
        return f"{shown(value)} is neither an IPv4 address nor a domain"
    return f"{shown(value)} is not a domain: {host_reason}"


def shown(value: object, limit: int = 80) -> str:
    """
    A value as messages quote it: in full when short, otherwise its start and
    its length, so that one huge line cannot flood a report.
    """
    if not isinstance(value, str) or len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def detect_type(value: str) -> IndicatorType:
    """
    Find the type of an indicator value by the rules documented in
    the "Type rules" section of README.rst.

    :param value: the value, without surrounding spaces.
    :returns: its type.
    :raises ValueError: when the value fits no type; the message says why.
    """
    result = _classify(value)
    if not isinstance(result, IndicatorType):
        raise ValueError(  # noqa: TRY004 (a value, not a type, is wrong)
            f"{shown(value)} is not an indicator: {result}."
        )
    return result


#: Which detected types a value may have when it is declared to be of a type:
#: a host name is also an acceptable URL, and a single address an acceptable
#: network.
_COMPATIBLE = {
    IndicatorType.URL: {IndicatorType.URL, IndicatorType.DOMAIN, IndicatorType.IP},
    IndicatorType.CIDR: {IndicatorType.CIDR, IndicatorType.IP},
    IndicatorType.IPV6_CIDR: {IndicatorType.IPV6_CIDR, IndicatorType.IPV6},
    IndicatorType.DOMAIN: {IndicatorType.DOMAIN},
    IndicatorType.DOMAIN_GLOB: {IndicatorType.DOMAIN_GLOB},
}


def check_type(value: str, declared: IndicatorType) -> IndicatorType:
    """
    Check that C{value} may be stored as an indicator of type C{declared}
    (a type hint given by an import or a feed).

    A host name or IP address may be declared a URL, and a single address a
    network (CIDR or IPv6CIDR); otherwise the detected type must be the
    declared one.

    :returns: C{declared}.
    :raises ValueError: naming both types when they do not fit.
    """
    detected = detect_type(value)
    if detected not in _COMPATIBLE.get(declared, {declared}):
        raise ValueError(
            f"{shown(value)} looks like a {detected.value}, not a {declared.value}; "
            "remove the type hint or fix the value."
        )
    return declared


def normalise(value: str, type: IndicatorType) -> str:
    """
    Return the de-duplication key of a value: two values with the same key
    are the same indicator.

    IP addresses and networks take their canonical text form (so
    C{2001:DB8:0::1} and C{2001:db8::1} are one indicator); host names,
    globs, e-mail addresses and hashes are lower-cased, with international
    names in their ASCII (punycode) form and a final dot removed; URLs have
    their scheme and host lower-cased and keep their path, query and
    fragment as given.

    :raises ValueError: when the value is not of that type.
    """
    if type is IndicatorType.IP:
        if _CANONICAL_IPV4_RE.match(value):
            return value
        return str(ipaddress.IPv4Address(value))
    if type is IndicatorType.IPV6:
        return ipaddress.IPv6Address(value).compressed
    if type in (IndicatorType.CIDR, IndicatorType.IPV6_CIDR):
        if "/" not in value:
            value += "/32" if type is IndicatorType.CIDR else "/128"
        return ipaddress.ip_interface(value).with_prefixlen
    if type is IndicatorType.FILE:
        return value.lower()
    if type is IndicatorType.EMAIL:
        local, _, domain = value.rpartition("@")
        return f"{local.lower()}@{_host_key(domain)}"
    if type in (IndicatorType.DOMAIN, IndicatorType.DOMAIN_GLOB):
        return _host_key(value)
    return _url_key(value)


def _host_key(host: str) -> str:
    host = host.rstrip(".").lower()
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return host


def _url_key(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    split = re.search(r"[/?#]", rest)
    netloc, tail = (
        (rest, "")
        if split is None
        else (
            rest[: split.start()],
            rest[split.start() :],
        )
    )
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            host = f"[{host.lower()}]"
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
        host = _host_key(host) if host else host
    key = host + (f":{port}" if port else "")
    if at:
        key = f"{userinfo}@{key}"
    if sep:
        key = f"{scheme.lower()}://{key}"
    return key + tail


def parse_type(text: str) -> IndicatorType:
    """
    Read an indicator type name as users write it: any case, and C{MD5},
    C{SHA1} / C{SHA-1}, C{SHA256} / C{SHA-256} for File.

    :raises ValueError: naming the accepted type names.
    """
    wanted = text.strip().lower()
    for member in IndicatorType:
        if member.value.lower() == wanted:
            return member
    if wanted in ("md5", "sha1", "sha-1", "sha256", "sha-256", "hash"):
        return IndicatorType.FILE
    if wanted in ("ipv4", "ipv4cidr"):
        return IndicatorType.IP if wanted == "ipv4" else IndicatorType.CIDR
    names = ", ".join(m.value for m in IndicatorType)
    raise ValueError(f"{shown(text)} is not an indicator type; use one of {names}.")


#: The older XSOAR reputation words, accepted beside the verdict names.
_SCORE_WORDS = {
    "unknown": Score.UNKNOWN,
    "none": Score.UNKNOWN,
    "benign": Score.GOOD,
    "good": Score.GOOD,
    "suspicious": Score.SUSPICIOUS,
    "malicious": Score.BAD,
    "bad": Score.BAD,
}


def parse_score(text: str | int) -> Score:
    """
    Read a score given as a number (0 to 3) or as a verdict name
    (Unknown, Benign, Suspicious, Malicious; also Good and Bad), in any case.

    :raises ValueError: naming the accepted values.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        word = str(text)
    else:
        word = str(text).strip().lower()
    if word.isdigit() and int(word) in (0, 1, 2, 3):
        return Score(int(word))
    if word in _SCORE_WORDS:
        return _SCORE_WORDS[word]
    raise ValueError(
        f"{shown(text)} is not a score; use 0 to 3 or one of Unknown, Benign, "
        "Suspicious, Malicious."
    )
