"""Identification in dev and token mode (PROTOCOL.md §1.2) and ``hotlink token issue``."""

from __future__ import annotations

import time

import jwt
import pytest
from typer.testing import CliRunner

from hotlink.cli import app
from hotlink.server.auth import (
    INVALID_CREDENTIALS,
    INVALID_REQUEST,
    AuthError,
    dev_identity,
    is_valid_email,
    is_valid_identity,
    issue_access_token,
    token_identity,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("alice@example.com", True),
        ("a.b+tag@sub.example.org", True),
        ("alice@example", False),  # the regex wants a dot in the domain
        ("alice example@x.com", False),
        ("Alice <alice@example.com>", False),
        ("<alice@example.com>", False),
        ("alice@@example.com", False),
        ("", False),
        ("a@b.c,d@e.f", False),
        ("x" * 250 + "@example.com", False),
    ],
)
def test_email_validation(value: str, ok: bool) -> None:
    assert is_valid_email(value) is ok


def test_dev_mode_uses_user_then_x_syft_from():
    assert dev_identity({"user": "alice@example.com"}) == "alice@example.com"
    assert dev_identity({"user": "", "x-syft-from": "bob@example.com"}) == "bob@example.com"


def test_dev_mode_invalid_email_is_the_reference_401_body():
    with pytest.raises(AuthError) as info:
        dev_identity({"user": "not-an-email"})
    assert info.value.body() == {"code": INVALID_REQUEST, "error": "invalid email"}


def _token_error(headers: dict[str, str]) -> dict[str, str]:
    with pytest.raises(AuthError) as info:
        token_identity(headers, SECRET)
    return info.value.body()


def test_token_mode_needs_an_authorization_header():
    assert _token_error({}) == {
        "code": INVALID_CREDENTIALS,
        "error": "authorization header required",
    }


def test_token_mode_needs_a_bearer_token():
    assert _token_error({"Authorization": "Basic abc"})["error"] == "bearer token required"
    assert _token_error({"Authorization": "Bearer "})["error"] == "token missing"
    assert _token_error({"Authorization": "bearer    "})["error"] == "token missing"


def test_valid_access_token_identifies_its_subject():
    token = issue_access_token(SECRET, "alice@example.com")
    assert token_identity({"Authorization": f"Bearer {token}"}, SECRET) == "alice@example.com"


def test_issued_token_has_the_reference_claims():
    token = issue_access_token(SECRET, "alice@example.com", now=1000, ttl=60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["type"] == "access" and claims["sub"] == "alice@example.com"
    assert claims["iat"] == 1000 and claims["exp"] == 1060
    assert claims["iss"] and len(claims["jti"]) == 36
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_expired_token_is_refused():
    token = issue_access_token(SECRET, "alice@example.com", now=time.time() - 7200, ttl=60)
    body = _token_error({"Authorization": f"Bearer {token}"})
    assert body["code"] == INVALID_CREDENTIALS and "expired" in body["error"]


def test_refresh_token_is_refused():
    token = issue_access_token(SECRET, "alice@example.com", token_type="refresh")
    body = _token_error({"Authorization": f"Bearer {token}"})
    assert "access token is required" in body["error"]


def test_token_signed_with_another_secret_is_refused():
    token = issue_access_token("another-secret-that-is-also-long-enough!!", "alice@example.com")
    assert "invalid token" in _token_error({"Authorization": f"Bearer {token}"})["error"]


def test_unsigned_token_is_refused():
    token = jwt.encode({"type": "access", "sub": "alice@example.com"}, None, algorithm="none")
    assert "invalid token" in _token_error({"Authorization": f"Bearer {token}"})["error"]


def test_token_without_sub_or_with_a_bad_sub_is_refused():
    for claims in ({"type": "access"}, {"type": "access", "sub": "nobody"}):
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        assert "invalid token" in _token_error({"Authorization": f"Bearer {token}"})["error"]


def test_garbage_token_is_refused():
    assert "invalid token" in _token_error({"Authorization": "Bearer not.a.jwt"})["error"]


def test_cli_token_issue_prints_a_token_the_server_accepts():
    result = CliRunner().invoke(
        app, ["token", "issue", "--secret", SECRET, "--email", "bob@example.com"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token_identity({"Authorization": f"Bearer {token}"}, SECRET) == "bob@example.com"


def test_cli_token_issue_refuses_a_bad_email():
    result = CliRunner().invoke(app, ["token", "issue", "--secret", SECRET, "--email", "bob"])
    assert result.exit_code == 2
    assert "not a valid email" in result.output


# ---------------------------------------------------------------- glob-shaped identities (D1)

GLOB_USERS = [
    "*@example.com",
    "b*b@example.com",
    "bo?@example.com",
    "{bob}@example.com",
    "a/b@example.com",
    "x@[127.0.0.1]",  # a valid RFC 5322 domain literal, and a character class
]


@pytest.mark.parametrize("user", GLOB_USERS)
def test_glob_shaped_identities_are_valid_emails_but_not_identities(user):
    assert is_valid_email(user)  # RFC 5322 allows them: the check has to be our own
    assert not is_valid_identity(user)


@pytest.mark.parametrize("user", GLOB_USERS)
def test_dev_mode_refuses_a_glob_shaped_user_with_the_invalid_email_body(user):
    for key in ("user", "x-syft-from"):
        with pytest.raises(AuthError) as info:
            dev_identity({key: user})
        assert info.value.body() == {"code": INVALID_REQUEST, "error": "invalid email"}


@pytest.mark.parametrize("user", GLOB_USERS)
def test_token_mode_refuses_a_glob_shaped_sub(user):
    # Signed with the right secret, as a token minted before this check would be.
    claims = {"type": "access", "sub": user, "iss": "hotlink", "iat": int(time.time())}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert _token_error({"Authorization": f"Bearer {token}"}) == {
        "code": INVALID_CREDENTIALS,
        "error": "invalid token: sub is not a valid email",
    }


@pytest.mark.parametrize("user", GLOB_USERS)
def test_no_token_is_issued_for_a_glob_shaped_user(user):
    with pytest.raises(ValueError, match="cannot be a user"):
        issue_access_token(SECRET, user)


def test_cli_token_issue_refuses_a_glob_shaped_email_with_exit_code_2():
    result = CliRunner().invoke(
        app, ["token", "issue", "--secret", SECRET, "--email", "*@example.com"]
    )
    assert result.exit_code == 2
    assert "'*@example.com' cannot be a user" in result.output
    assert "wildcard" in result.output
    assert "ey" not in result.stdout  # no token was printed
