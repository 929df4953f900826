"""The HTTP side of the one port: routing and an access log without secrets."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.test.requesthelper import DummyRequest

from livetx.web.site import redacted_log_formatter


def logged(uri: bytes, code: int, **headers: bytes) -> str:
    """The access log's line for a GET of ``uri`` with these headers."""
    request = DummyRequest([])
    request.uri, request.method, request.code, request.sentLength = uri, b"GET", code, 0
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-"), [value])
    return redacted_log_formatter("[24/Nov/2026:02:00:00 +0000]", request)


def test_access_log_drops_the_query_string() -> None:
    line = logged(b"/api/live_chat/ws?token=eyJsecret.jwt.value&api_key=abk_secret", 426)
    assert "/api/live_chat/ws" in line and "426" in line
    assert "secret" not in line and "token" not in line


def test_access_log_drops_the_query_string_of_the_referer() -> None:
    """A page opened from a login link names it in the Referer of what it loads next."""
    for referer in (b"http://127.0.0.1:6185/?login=Co-PJLEJrdy6EW5secret", b"https://a.example/x?token=eyJsecret",
                    b"https://a.example/x#token=eyJsecret&api_key=abk_secret"):
        line = logged(b"/api/v1/sessions", 200, referer=referer, user_agent=b"Probe/1.0")
        assert f'"{referer.decode().split("?")[0].split("#")[0]}"' in line and '"Probe/1.0"' in line
        assert "secret" not in line and "login" not in line and "token" not in line


@pytest_twisted.ensureDeferred
async def test_plain_http_to_a_socket_path_asks_for_an_upgrade(livetx: Any) -> None:
    server = await livetx()
    response = await treq.get(f"http://127.0.0.1:{server.port}/api/live_chat/ws?token=x", reactor=reactor)
    assert response.code == 426
    await treq.content(response)
    missing = await treq.get(f"http://127.0.0.1:{server.port}/nothing/here", reactor=reactor)
    assert missing.code == 404
    await treq.content(missing)
