"""One-time login links: ``http://host:6185/?login=…`` signs a browser in once, within minutes.

Jupyter's start-up link, for the browser page: nobody has to paste a key or
a token to try the server. The server's own link is a random code it keeps
in memory; ``livetx open`` makes one from the data dir for a server that is
already running, as a short JWT signed with a key derived from the JWT
secret, so that a link is never accepted as a socket token (nor a socket
token as a link). Only a fingerprint of a link is ever logged.

A redeemed link's id is kept until the link would have expired anyway, so
a second use is refused, wherever it is tried: the record is shared where
the deployment shares state. With ``[cluster] redis`` it is a Redis key per
link (:class:`livetx.cluster.links.RedisUsedLinks`), which every process
and machine sees; otherwise a small SQLite file in the data dir
(:class:`FileUsedLinks`), which every ``--workers`` process and every
later run of the server sees. The start-up link is valid only in the
process that printed it, and is marked used there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import quote

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from livetx.auth.keys import resolve_username
from livetx.auth.tokens import AuthFailure, issue_token

_log = Logger()

#: How long a link stays valid: long enough to copy it from a terminal into a browser.
LINK_SECONDS = 300.0
#: How long the token a link is exchanged for lasts (the page keeps it for the tab's session).
SESSION_SECONDS = 12 * 3600.0
#: Who a link signs in as when nobody says.
DEFAULT_USERNAME = "web"
#: Where ``livetx open`` says the page is when not told (``twistd live``'s default --listen).
DEFAULT_PAGE = "http://127.0.0.1:6185/"
#: The query parameter of the page's address that carries a link.
QUERY = "login"

#: The used-link record in the data dir, without ``[cluster] redis``.
USED_FILE = "login_links.sqlite3"
#: Used links remembered at most (only whoever holds the secret can make more).
MAX_REMEMBERED = 100_000

PURPOSE = "login-link"
USED = "Login link already used"
EXPIRED = "Login link expired"
INVALID = "Invalid login link"


def _link_key(secret: str) -> str:
    """The key links are signed with: the JWT secret's, but never usable as it (HMAC of it)."""
    return hmac.new(secret.encode("utf-8"), b"livetx login link", hashlib.sha256).hexdigest()


def _check(username: str) -> None:
    """A link names a user the sockets accept (``ValueError`` otherwise)."""
    checked, problem = resolve_username(username)
    if checked is None or checked != username:
        raise ValueError(f"{problem or 'Invalid username'}: {username!r}")


def issue_link_code(secret: str, username: str = DEFAULT_USERNAME, ttl: float = LINK_SECONDS,
                    now: float | None = None) -> str:
    """A link's code for ``username`` (checked by the usernames' rules: ``ValueError``)."""
    _check(username)
    import jwt

    issued = int(time.time() if now is None else now)
    claims = {"username": username, "purpose": PURPOSE, "jti": secrets.token_urlsafe(12),
              "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, _link_key(secret), algorithm="HS256")


def link_url(page: str, code: str) -> str:
    """The page's address with the link's code in its query."""
    return f"{page.rstrip('/')}/?{QUERY}={quote(code, safe='')}"


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8", "replace")).hexdigest()


def fingerprint(code: str) -> str:
    """What the log may say about a link: enough to match two lines, useless to sign in with."""
    return _digest(code)[:10]


def page_address(description: str) -> str | None:
    """The page's address for a ``--listen`` endpoint string (TCP or TLS), else ``None``.

    ``tcp:6185:interface=0.0.0.0`` is reached at 127.0.0.1 from the machine itself.
    """
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "ssl", "tcp6"):
        return None
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", rest)] if rest else []
    named = dict(f.split("=", 1) for f in fields if "=" in f)
    positional = [f for f in fields if "=" not in f]
    port = named.get("port") or (positional[0] if positional else "")
    if not port.isdigit() or int(port) == 0:
        return None
    host = named.get("interface", "")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}/"


class UsedLinks(Protocol):
    """Where redeemed links are recorded, shared by every process that could redeem them."""

    def claim(self, link_id: str, expires: float, now: float) -> Deferred[bool]:
        """Record ``link_id`` as used until ``expires``: True the first time, False once it was.

        Fails when the record cannot be reached (the link is then refused, not let in)."""


class TooManyLinks(AuthFailure):
    """The record holds :data:`MAX_REMEMBERED` links that have not expired yet."""

    def __init__(self) -> None:
        super().__init__("Too many login links in use; try again in a few minutes")


class FileUsedLinks:
    """The record as a SQLite file in the data dir, for every process that shares the data dir.

    Each claim is one short transaction (``BEGIN IMMEDIATE`` takes SQLite's write
    lock first, so look-up and insert are one step across processes) on the reactor's thread pool, with its own
    connection: a login is rare, and a connection kept open would tie the
    file to one thread. Expired ids are deleted as new ones come.
    """

    def __init__(self, path: Path, reactor: Any, max_remembered: int = MAX_REMEMBERED) -> None:
        self._path = path
        self._reactor = reactor
        self._max = max_remembered

    def claim(self, link_id: str, expires: float, now: float) -> Deferred[bool]:
        result: Deferred[bool] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._claim, link_id, expires, now)
        return result

    def _claim(self, link_id: str, expires: float, now: float) -> bool:
        if not self._path.exists():  # the ids are no secret, but the data dir's files are its owner's
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
        connection = sqlite3.connect(self._path, timeout=10.0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE IF NOT EXISTS used (id TEXT PRIMARY KEY, expires REAL NOT NULL)")
            connection.execute("DELETE FROM used WHERE expires <= ?", (now,))
            if connection.execute("SELECT 1 FROM used WHERE id = ?", (link_id,)).fetchone() is not None:
                return False
            if connection.execute("SELECT count(*) FROM used").fetchone()[0] >= self._max:
                raise TooManyLinks()
            connection.execute("INSERT INTO used VALUES (?, ?)", (link_id, expires))
            return True
        finally:
            if connection.in_transaction:
                connection.execute("COMMIT")  # the sweep of expired ids too
            connection.close()


class LoginLinks:
    """Redeems each link once: a valid, unused, unexpired code becomes a session token.

    Two kinds of code: the server's own (:meth:`issue`, the start-up link), a
    random string kept in memory, so an idle server never loads the JWT
    library for it; and ``livetx open``'s, a JWT made from the secret by
    another process, whose use goes on the shared record (``used``).
    """

    def __init__(self, secret: str, used: UsedLinks, session_seconds: float = SESSION_SECONDS,
                 now: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._used = used
        self.session_seconds = session_seconds
        self._now = now
        #: digest of a code → (username, expires, used): only this process's own codes.
        self._issued: dict[str, tuple[str, float, bool]] = {}

    def issue(self, username: str = DEFAULT_USERNAME, ttl: float = LINK_SECONDS) -> str:
        """A fresh link's code, kept in this process (the start-up link)."""
        _check(username)
        code = secrets.token_urlsafe(24)
        self._issued[_digest(code)] = (username, self._now() + ttl, False)
        return code

    def redeem(self, code: str) -> Deferred[tuple[str, str]]:
        """``(username, token)`` for a link used for the first time; fails with :class:`AuthFailure` otherwise.

        Fails with anything else when the shared record cannot be reached."""
        now = self._now()
        digest = _digest(code)
        issued = self._issued.get(digest)
        self._forget(now)
        try:
            if issued is not None:
                username, expires, used = issued
                if used:
                    return fail(self._refused(code))
                if expires <= now:
                    raise AuthFailure(EXPIRED)
                self._issued[digest] = (username, expires, True)
                first: Deferred[bool] = succeed(True)
            else:
                claims = self._claims(code)
                username, expires = str(claims["username"]), float(claims["exp"])
                if expires <= now:  # checked against our clock, so tests can move it
                    raise AuthFailure(EXPIRED)
                first = self._used.claim(f"jti:{claims['jti']}", expires, now)
        except AuthFailure as refusal:
            return fail(refusal)
        return first.addCallback(self._signed_in, code, username)

    def _signed_in(self, first: bool, code: str, username: str) -> tuple[str, str]:
        if not first:
            raise self._refused(code)
        _log.info("login link {link} signed in {username}", link=fingerprint(code), username=username)
        return username, issue_token(self._secret, username, self.session_seconds)

    def _refused(self, code: str) -> AuthFailure:
        _log.info("refused a login link used before ({link})", link=fingerprint(code))
        return AuthFailure(USED)

    def _claims(self, code: str) -> dict[str, Any]:
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                code, _link_key(self._secret), algorithms=["HS256"],
                options={"require": ["exp", "jti", "username", "purpose"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError:
            raise AuthFailure(INVALID) from None
        if claims.get("purpose") != PURPOSE or not isinstance(claims.get("exp"), int):
            raise AuthFailure(INVALID)
        raw = claims.get("username")
        username, _ = resolve_username(raw if isinstance(raw, str) else None)
        if username is None or username != raw:
            raise AuthFailure(INVALID)
        return claims

    def _forget(self, now: float) -> None:
        """The start-up link goes once it has expired (a later use is then an invalid link)."""
        for digest in [d for d, (_, expires, _) in self._issued.items() if expires <= now]:
            del self._issued[digest]
