"""``POST /api/v1/login``: the page exchanges a one-time login link for a session token.

The page reads ``?login=…`` from its own address, posts it here, and keeps
the token it gets for the tab's session (:mod:`livetx.auth.login_links`).
A refused link counts as a failed authentication for its address, like a
bad key or token on any other endpoint. Whether a link was used before is
asked of the shared record (Redis, or a file in the data dir), so the answer
comes later; when the record cannot be reached the link is refused with 503.
"""

from __future__ import annotations

import json
from typing import Any, cast

from autobahn.twisted.util import peer2str
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from livetx.auth.login_links import LoginLinks
from livetx.auth.tokens import AuthFailure
from livetx.errors import ErrorCode
from livetx.web.admission import FailedAuth, TooManyFailures
from livetx.web.replies import HTTPError, error_body, finish_async, json_body

_log = Logger()

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

    def render(self, request: Request) -> Any:
        try:
            self.check_headers(request)
            code = self._code(request)
            address = self._admit(request)
        except HTTPError as error:
            return error_body(request, error)
        answer = self._links.redeem(code).addCallbacks(
            self._signed_in, self._refused, callbackArgs=(request,), errbackArgs=(address,))
        return finish_async(request, answer)

    def _admit(self, request: Request) -> str | None:
        """The client's address, counted for failed attempts (None without a limit); 429 when blocked."""
        if self._failures is None:
            return None
        try:
            return self._failures.admit(peer2str(cast(ITransport, request.transport)))
        except TooManyFailures as e:
            raise HTTPError(429, ErrorCode.RATE_LIMITED, str(e)) from None

    @staticmethod
    def _code(request: Request) -> str:
        content = request.content
        try:
            body = json.loads(content.read(MAX_BODY + 1) if content is not None else b"")
        except ValueError:
            raise HTTPError(400, ErrorCode.INVALID_JSON, "the body must be JSON") from None
        code = body.get("login") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            raise HTTPError(400, ErrorCode.INVALID_MESSAGE_FORMAT, "give the link's code as \"login\"")
        return code

    def _signed_in(self, redeemed: tuple[str, str], request: Request) -> bytes:
        username, token = redeemed
        request.setHeader(b"cache-control", b"no-store")
        return json_body(request, 200, {"username": username, "token": token,
                                        "expires_in": int(self._links.session_seconds)})

    def _refused(self, failure: Failure, address: str | None) -> Failure:
        """A refused link counts as a failed authentication; a record that cannot be reached is a 503."""
        if failure.check(AuthFailure):
            if address is not None and self._failures is not None:
                self._failures.failed(address)
            return Failure(HTTPError(401, ErrorCode.UNAUTHORIZED, cast(AuthFailure, failure.value).reason))
        _log.warn("could not check a login link against the used links: {why}", why=failure.getErrorMessage())
        return Failure(HTTPError(503, ErrorCode.PROCESSING_ERROR,
                                 "login links cannot be checked right now; try again, or paste a token"))


def login_routes(links: LoginLinks, failures: FailedAuth | None = None) -> dict[str, Resource]:
    """The login route, for ``build_site``'s ``routes``."""
    return {"/api/v1/login": LoginResource(links, failures)}
