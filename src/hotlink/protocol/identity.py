"""Which strings may be a datasite identity (an email), shared by the relay and the client.

The relay refuses an upgrade whose user fails :func:`is_valid_identity` (HTTP 401 "invalid
email"); the client runs the same check at start-up so a typo fails at once, in one line,
instead of in a reconnect loop.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address

from .acl import identity_problem

MAX_EMAIL_LENGTH = 254
_EMAIL_SHAPE = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")


def is_valid_email(value: str) -> bool:
    """The reference's rule: an RFC 5322 address *and* ``^[^\\s@]+@[^\\s@]+\\.[^\\s@]+$``."""
    if not value or len(value) > MAX_EMAIL_LENGTH or not _EMAIL_SHAPE.match(value):
        return False
    try:
        return Address(addr_spec=value).addr_spec == value
    except (ValueError, HeaderParseError, IndexError):
        return False


def is_valid_identity(value: str) -> bool:
    """A valid email (:func:`is_valid_email`) with no character ACL patterns read."""
    return is_valid_email(value) and identity_problem(value) is None


def identity_error(value: str) -> str | None:
    """Why ``value`` cannot be a user, in words for a person, or None if it can."""
    if not is_valid_email(value):
        return f"{value!r} is not a valid email address"
    problem = identity_problem(value)
    if problem is not None:
        return f"{value!r} cannot be a user: it {problem}"
    return None
