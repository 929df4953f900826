"""One-time login links: ``http://host:6185/?login=…`` signs a browser in once, within minutes.

Jupyter's start-up link, for the browser page: nobody has to paste a key or
a token to try the server. The server's own link is a random code it keeps
in memory; ``livetx open`` makes one from the data dir for a server that is
already running, as a short JWT signed with a key derived from the JWT
secret, so that a link is never accepted as a socket token (nor a socket
token as a link). The server keeps the id of every link it redeemed until
the link would have expired anyway, so a second use is refused. Only a
fingerprint of a link is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any, Callable
from urllib.parse import quote

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


class LoginLinks:
    """Redeems each link once: a valid, unused, unexpired code becomes a session token.

    Two kinds of code: the server's own (:meth:`issue`, the start-up link), a
    random string kept in memory, so an idle server never loads the JWT
    library for it; and ``livetx open``'s, a JWT made from the secret by
    another process. ``used`` maps a redeemed link's id to when it expires;
    ids go once their link could no longer be used anyway, and at most
    ``max_remembered`` are kept (only whoever holds the secret can make more).
    """

    def __init__(self, secret: str, session_seconds: float = SESSION_SECONDS,
                 now: Callable[[], float] = time.time, max_remembered: int = 100_000) -> None:
        self._secret = secret
        self.session_seconds = session_seconds
        self._now = now
        self._max = max_remembered
        self._issued: dict[str, tuple[str, float]] = {}  # digest of a code → (username, expires)
        self._used: dict[str, float] = {}

    def issue(self, username: str = DEFAULT_USERNAME, ttl: float = LINK_SECONDS) -> str:
        """A fresh link's code, kept in this process (the start-up link)."""
        _check(username)
        code = secrets.token_urlsafe(24)
        self._issued[_digest(code)] = (username, self._now() + ttl)
        return code

    def redeem(self, code: str) -> tuple[str, str]:
        """``(username, token)`` for a link used for the first time; :class:`AuthFailure` otherwise."""
        now = self._now()
        digest = _digest(code)
        issued = self._issued.pop(digest, None)
        self._forget(now)
        if issued is not None:
            (username, expires), link_id = issued, digest
        elif digest in self._used:
            link_id = digest
        else:
            claims = self._claims(code)
            username, expires, link_id = str(claims["username"]), float(claims["exp"]), f"jti:{claims['jti']}"
        if link_id in self._used:
            _log.info("refused a login link used before ({link})", link=fingerprint(code))
            raise AuthFailure(USED)
        if expires <= now:  # checked against our clock, so tests can move it
            raise AuthFailure(EXPIRED)
        if len(self._used) >= self._max:
            raise AuthFailure("Too many login links in use; try again in a few minutes")
        self._used[link_id] = expires
        _log.info("login link {link} signed in {username}", link=fingerprint(code), username=username)
        return username, issue_token(self._secret, username, self.session_seconds)

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
        for link_id in [i for i, expires in self._used.items() if expires <= now]:
            del self._used[link_id]
        for digest in [d for d, (_, expires) in self._issued.items() if expires <= now]:
            del self._issued[digest]
