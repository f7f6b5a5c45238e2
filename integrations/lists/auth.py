"""
HTTP Basic authentication for lists.
"""

from __future__ import annotations

import base64
import binascii
import hmac

__all__ = ["FAILURE_BODY", "REALM", "BasicCredentials"]

#: The realm of the C{WWW-Authenticate} challenge, as XSOAR sends it.
REALM = "Login Required"

#: The body of a 401 answer.
FAILURE_BODY = (
    b"Basic authentication failed. Make sure you are using the right credentials.\n"
)


class BasicCredentials:
    """
    The user name and password a client must send.

    Both are compared in constant time, and both comparisons always run, so
    the answer's timing says nothing about which part was wrong. The
    password may contain C{:}; only the first colon of the decoded header
    separates the user name.
    """

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode("utf-8")
        self._password = password.encode("utf-8")

    def __repr__(self) -> str:
        return "<BasicCredentials (hidden)>"

    def accepts(self, authorization: bytes | None) -> bool:
        """
        Whether an C{Authorization} header value carries these credentials.
        A missing, malformed or undecodable header is refused, never an
        error.
        """
        if not authorization:
            return False
        scheme, _, encoded = authorization.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        username, colon, password = decoded.partition(b":")
        if not colon:
            return False
        user_ok = hmac.compare_digest(username, self._username)
        password_ok = hmac.compare_digest(password, self._password)
        return user_ok and password_ok
