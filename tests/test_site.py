"""The HTTP side of the one port: routing and an access log without secrets."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.test.requesthelper import DummyRequest

from livetx.web.site import redacted_log_formatter


def test_access_log_drops_the_query_string() -> None:
    request = DummyRequest([b"api", b"live_chat", b"ws"])
    request.uri = b"/api/live_chat/ws?token=eyJsecret.jwt.value&api_key=abk_secret"
    request.method = b"GET"
    request.code = 426
    request.sentLength = 0
    line = redacted_log_formatter("[24/Nov/2026:02:00:00 +0000]", request)
    assert "/api/live_chat/ws" in line and "426" in line
    assert "secret" not in line and "token" not in line


@pytest_twisted.ensureDeferred
async def test_plain_http_to_a_socket_path_asks_for_an_upgrade(livetx: Any) -> None:
    server = await livetx()
    response = await treq.get(f"http://127.0.0.1:{server.port}/api/live_chat/ws?token=x", reactor=reactor)
    assert response.code == 426
    await treq.content(response)
    missing = await treq.get(f"http://127.0.0.1:{server.port}/nothing/here", reactor=reactor)
    assert missing.code == 404
    await treq.content(missing)
