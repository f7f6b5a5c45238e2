"""
Who may post events: HTTP basic auth, or a token in a header of the
operator's choice, as XSOAR's Generic Webhook does with its C{credentials}
parameter (an identifier of C{_header:<Name>} means "the password is a token
sent in header <Name>").

Credentials are compared with C{hmac.compare_digest}, so the time an answer
takes says nothing about how much of a guess was right.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping

import attrs
from twisted.web.server import Request

__all__ = [
    "HEADER_PREFIX",
    "Authenticator",
    "credential_problems",
    "make_authenticator",
]

#: The identifier prefix that selects a header token.
HEADER_PREFIX = "_header:"

#: An HTTP field name (RFC 9110 section 5.1).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def credential_problems(credentials: Mapping[str, str] | None) -> list[str]:
    """
    What is wrong with the configured credentials, as sentences.
    """
    if not credentials:
        return []
    identifier = credentials.get("identifier", "")
    password = credentials.get("password", "")
    if not identifier and not password:
        return []
    problems = []
    if not identifier:
        problems.append(
            "credentials has a password but no identifier; give the user name, "
            "or _header:<Name> for a token sent in header <Name>."
        )
    elif identifier.startswith(HEADER_PREFIX):
        name = identifier[len(HEADER_PREFIX) :]
        if not _TOKEN.match(name):
            problems.append(
                f"credentials: {name!r} is not a valid header name; write the "
                "identifier as _header:X-Webhook-Token, say."
            )
    elif ":" in identifier:
        problems.append(
            "credentials: a basic-auth user name cannot contain ':'; choose "
            "another name."
        )
    if not password:
        problems.append("credentials has no password; set one.")
    return problems


@attrs.frozen
class Authenticator:
    """
    Checks the credentials of a request.

    :ivar header: the header that carries the token, or C{None} for basic
        auth.
    :ivar username: the basic-auth user name (empty for a token).
    :ivar password: the password or token.
    """

    header: str | None
    username: str
    password: str = attrs.field(repr=False)

    @property
    def secret_header(self) -> str:
        """
        The header that carries the credentials, which is never stored.
        """
        return self.header or "Authorization"

    def challenge(self) -> str | None:
        """
        The C{WWW-Authenticate} value for a refused request, for basic auth.
        """
        return None if self.header else 'Basic realm="webhook", charset="UTF-8"'

    def allows(self, request: Request) -> bool:
        """
        Whether C{request} carries the right credentials.
        """
        values = request.requestHeaders.getRawHeaders(self.secret_header.encode()) or []
        if len(values) != 1:
            return False
        presented = values[0]
        if self.header is not None:
            return hmac.compare_digest(presented, self.password.encode("utf-8"))
        scheme, _, encoded = presented.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(b":")
        # Both comparisons run whatever the first one says.
        user_ok = hmac.compare_digest(user, self.username.encode("utf-8"))
        password_ok = hmac.compare_digest(password, self.password.encode("utf-8"))
        return bool(colon) and user_ok and password_ok


def make_authenticator(credentials: Mapping[str, str] | None) -> Authenticator | None:
    """
    The authenticator for validated C{credentials}, or C{None} when none are
    configured (every request is then accepted).
    """
    if not credentials or not (
        credentials.get("identifier") or credentials.get("password")
    ):
        return None
    identifier = credentials["identifier"]
    if identifier.startswith(HEADER_PREFIX):
        return Authenticator(
            identifier[len(HEADER_PREFIX) :], "", credentials["password"]
        )
    return Authenticator(None, identifier, credentials["password"])
