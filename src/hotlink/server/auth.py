"""Who is on the other end of a WebSocket upgrade (PROTOCOL.md §1.2).

Dev mode (the default) trusts ``?user=<email>`` (or ``?x-syft-from=``); token mode needs an
HS256 access JWT whose ``sub`` is the email. Both are pure functions of the query and the
headers, so they are tested without a server; the app turns :class:`AuthError` into the
reference's HTTP 401 JSON body.

An identity is also refused when it holds a character the ACL matcher reads
(:data:`hotlink.protocol.acl.IDENTITY_SPECIAL_CHARS`: ``*``, ``?``, brackets, braces,
backslash and ``/``). RFC 5322 allows ``*@example.com``, but a user by that name would
otherwise match templated rules such as ``{{.UserEmail}}/**`` as a glob. Such names get the
same 401 as any invalid email, and ``hotlink token issue`` will not mint a token for one.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Mapping

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from ..protocol.acl import identity_problem

# The identity rule lives in protocol/ so the client can check an email before connecting.
from ..protocol.identity import is_valid_email, is_valid_identity

INVALID_REQUEST = "E_INVALID_REQUEST"
INVALID_CREDENTIALS = "E_AUTH_INVALID_CREDENTIALS"

ACCESS_TOKEN_TTL = 7 * 24 * 3600  # the reference's default access-token expiry
TOKEN_ISSUER = "hotlink"
# The reference signs HS256 and verifies any HMAC; asymmetric or "none" tokens never pass.
ACCEPTED_ALGORITHMS = ["HS256", "HS384", "HS512"]

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2 for HS256; shorter secrets work but are warned about


def weak_secret(secret: str) -> bool:
    """True for a secret shorter than HS256 wants; callers warn once, in their own words."""
    return len(secret.encode("utf-8")) < MIN_SECRET_BYTES


class AuthError(Exception):
    """The upgrade is refused with HTTP 401 and ``{"code": code, "error": message}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, str]:
        return {"code": self.code, "error": self.message}


def dev_identity(query: Mapping[str, str]) -> str:
    """Dev mode: ``user``, else ``x-syft-from``; headers are not trusted for identity."""
    user = (query.get("user") or "").strip() or (query.get("x-syft-from") or "").strip()
    if not is_valid_identity(user):
        raise AuthError(INVALID_REQUEST, "invalid email")
    return user


def token_identity(headers: Mapping[str, str], secret: str) -> str:
    """Token mode: ``Authorization: Bearer <access JWT>``; the ``sub`` claim is the user."""
    header = headers.get("Authorization")
    if header is None or not header.strip():
        raise AuthError(INVALID_CREDENTIALS, "authorization header required")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(INVALID_CREDENTIALS, "bearer token required")
    token = token.strip()
    if not token:
        raise AuthError(INVALID_CREDENTIALS, "token missing")
    return user_from_access_token(token, secret)


def user_from_access_token(token: str, secret: str) -> str:
    try:
        with warnings.catch_warnings():
            # Weak secrets are reported once at start-up, not on every upgrade.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                secret,
                algorithms=ACCEPTED_ALGORITHMS,
                options={"require": ["sub", "type"]},
            )
    except jwt.ExpiredSignatureError:
        raise AuthError(INVALID_CREDENTIALS, "invalid token: token is expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(INVALID_CREDENTIALS, f"invalid token: {exc}") from None
    if claims.get("type") != "access":
        raise AuthError(
            INVALID_CREDENTIALS,
            f"invalid token: type is {claims.get('type')!r}, an access token is required",
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_valid_identity(sub):
        raise AuthError(INVALID_CREDENTIALS, "invalid token: sub is not a valid email")
    return sub


def issue_access_token(
    secret: str,
    email: str,
    *,
    ttl: int | None = ACCESS_TOKEN_TTL,
    now: float | None = None,
    token_type: str = "access",
) -> str:
    """An HS256 token the server accepts for ``email``; ``ttl`` None or 0 means no expiry."""
    if not secret:
        raise ValueError("a token needs a non-empty secret")
    if not is_valid_email(email):
        raise ValueError(f"not a valid email: {email!r}")
    problem = identity_problem(email)
    if problem is not None:
        raise ValueError(f"{email!r} cannot be a user: it {problem}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "type": token_type,
        "sub": email,
        "iss": TOKEN_ISSUER,
        "iat": issued,
        "jti": str(uuid.uuid4()),
    }
    if ttl:
        claims["exp"] = issued + ttl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")
