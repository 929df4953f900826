"""``POST /api/v1/login``: the page exchanges a one-time login link for a session token.

The page reads ``?login=…`` from its own address, posts it here, and keeps
the token it gets for the tab's session (:mod:`livetx.auth.login_links`).
A refused link counts as a failed authentication for its address, like a
bad key or token on any other endpoint.
"""

from __future__ import annotations

import json
from typing import Any, cast

from autobahn.twisted.util import peer2str
from twisted.internet.interfaces import ITransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from livetx.auth.login_links import LoginLinks
from livetx.auth.tokens import AuthFailure
from livetx.errors import ErrorCode
from livetx.web.admission import FailedAuth, TooManyFailures
from livetx.web.replies import HTTPError, error_body, json_body

#: A link's code is a short JWT; nothing the route takes is longer.
MAX_BODY = 4096


class LoginResource(Resource):
    """Takes ``{"login": CODE}``; answers ``{"token", "username", "expires_in"}`` or a 401."""

    isLeaf = True

    def __init__(self, links: LoginLinks, failures: FailedAuth | None = None) -> None:
        super().__init__()
        self._links = links
        self._failures = failures

    def body_limit(self, request: Request) -> int:
        return MAX_BODY

    def check_headers(self, request: Request) -> None:
        if request.method != b"POST":
            raise HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, "use POST")

    def render(self, request: Request) -> bytes:
        try:
            self.check_headers(request)
            return json_body(request, 200, self._redeem(request))
        except HTTPError as error:
            return error_body(request, error)

    def _redeem(self, request: Request) -> dict[str, Any]:
        content = request.content
        try:
            body = json.loads(content.read(MAX_BODY + 1) if content is not None else b"")
        except ValueError:
            raise HTTPError(400, ErrorCode.INVALID_JSON, "the body must be JSON") from None
        code = body.get("login") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "give the link's code as \"login\"")

        def redeem() -> tuple[str, str] | str:
            try:
                return self._links.redeem(code)
            except AuthFailure as refusal:
                return refusal.reason

        try:
            if self._failures is None:
                result = redeem()
            else:
                peer = peer2str(cast(ITransport, request.transport))
                result = self._failures.attempt(peer, redeem, lambda r: isinstance(r, str))
        except TooManyFailures as e:
            raise HTTPError(429, ErrorCode.RATE_LIMITED, str(e)) from None
        if isinstance(result, str):
            raise HTTPError(401, ErrorCode.UNAUTHORIZED, result)
        username, token = result
        request.setHeader(b"cache-control", b"no-store")
        return {"username": username, "token": token, "expires_in": int(self._links.session_seconds)}


def login_routes(links: LoginLinks, failures: FailedAuth | None = None) -> dict[str, Resource]:
    """The login route, for ``build_site``'s ``routes``."""
    return {"/api/v1/login": LoginResource(links, failures)}
