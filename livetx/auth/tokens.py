"""Dashboard-style JWTs: HS256 only, with ``username`` and an enforced ``exp``.

The close reasons are the reference's, word for word, because its clients
show them to users. PyJWT (and the cryptography modules it loads) is imported
by the first token checked or issued, not by every idle server.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from livetx.auth._files import write_private
from livetx.errors import ErrorCode, LivetxError
from livetx.auth.keys import resolve_username

SECRET_FILE = "jwt_secret"
MISSING = "Missing authentication token"
EXPIRED = "Token expired"
INVALID = "Invalid token"


class AuthFailure(LivetxError):
    """A refused credential; ``reason`` (its message) is safe to show and to log."""

    code = ErrorCode.UNAUTHORIZED
    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_or_create_secret(data_dir: Path, configured: str | None) -> str:
    """The configured secret, or one generated once and kept in the data dir."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    secret = secrets.token_hex(32)
    write_private(path, secret.encode("ascii"))
    return secret


def issue_token(secret: str, username: str, ttl: float, now: float | None = None) -> str:
    """A token for ``username``, which must obey the API-key usernames' rules (``ValueError``)."""
    checked, problem = resolve_username(username)
    if checked is None or checked != username:
        raise ValueError(f"{problem or 'Invalid username'}: {username!r}")
    import jwt

    issued = int(time.time() if now is None else now)
    claims = {"username": username, "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str | None) -> str:
    """The token's username, or :class:`AuthFailure` with the reason to close with."""
    if not token:
        raise AuthFailure(MISSING)
    import jwt

    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthFailure(EXPIRED) from None
    except jwt.InvalidTokenError:
        raise AuthFailure(INVALID) from None
    username = claims.get("username")
    if not isinstance(username, str) or not username.strip():
        raise AuthFailure(INVALID)
    return username


def token_username(claimed: str) -> str:
    """The username a verified token names, if it obeys the rules for every username.

    A signed token is no proof of a sane name: a newline in one would split
    log lines. :class:`BadUsername` says why not.
    """
    username, problem = resolve_username(claimed)
    if username is None:
        raise BadUsername(problem or "Invalid username")
    return username


class BadUsername(LivetxError):
    """A valid token whose ``username`` claim breaks the username rules."""

    code = ErrorCode.BAD_USER
    status = 400
