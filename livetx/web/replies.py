"""JSON answers for twisted.web resources: bodies, refusals, and answers that come later.

Shared by the HTTP API and the operations routes, so that every HTTP refusal
livetx sends has the one shape ``{"status": "error", "code", "message"}``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from livetx.errors import ErrorCode, LivetxError
from livetx.errors import HTTPError as HTTPError

_log = Logger()


def json_body(request: Request, status: int, body: Any) -> bytes:
    """Set the status and content type; the body as UTF-8 JSON."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def error_body(request: Request, error: LivetxError) -> bytes:
    """A refusal's JSON body, with its status set (the exception's own)."""
    return json_body(request, error.status, {"status": "error", "code": error.code, "message": error.message})


class Departure:
    """Whether the client of a request has hung up (writing to it then would fail)."""

    gone = False

    def __init__(self, request: Request) -> None:
        request.notifyFinish().addErrback(self._went)

    def _went(self, _: Failure) -> None:
        self.gone = True


def finish_async(request: Request, d: Deferred[bytes]) -> Any:
    """Write a Deferred's body, or its refusal, unless the client has gone."""
    client = Departure(request)

    def write(body: bytes) -> None:
        if not client.gone:
            request.write(body)
            request.finish()

    def fail(failure: Failure) -> None:
        if isinstance(failure.value, LivetxError):  # a refusal, or the database away (503)
            write(error_body(request, failure.value))
        else:
            _log.failure("HTTP API request failed", failure)
            write(error_body(request, HTTPError(500, ErrorCode.INTERNAL_ERROR, "internal error")))

    d.addCallbacks(write, fail)
    return NOT_DONE_YET
