"""Security checks at the handshake: browser origins and guessing credentials."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import reactor
from twisted.internet.task import Clock

from livetx.auth.keys import KeyStore
from livetx.web.admission import FailedAuth, TooManyFailures, client_address, origin_allowed

from .support import connect, open_socket, replied
from .test_live_ws import LIVE, OPEN_API, UNIFIED


def request(origin: str | None, host: str = "voice.example:6185") -> ConnectionRequest:
    return ConnectionRequest("tcp4:10.0.0.1:5555", {"host": host}, host, "/", {}, 13, origin, [], [])


@pytest.mark.parametrize(
    "origin, allowed, ok",
    [
        (None, [], True),  # a device or app: no Origin at all
        ("http://voice.example:6185", [], True),  # the page the server itself serves
        ("https://evil.example", [], False),
        ("null", [], False),  # a sandboxed frame or a file: page
        ("https://dash.example", ["https://dash.example/"], True),
        ("HTTPS://DASH.EXAMPLE", ["https://dash.example"], True),
        ("https://dash.example.evil", ["https://dash.example"], False),
        ("https://anything.example", ["*"], True),
        ("http://voice.example:6186", [], False),  # same host, another port: another origin
    ],
)
def test_origin_policy(origin: str | None, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(request(origin), allowed) is ok


def test_failed_auth_blocks_an_address_for_a_minute() -> None:
    clock = Clock()
    failures = FailedAuth(3, clock)
    for _ in range(3):
        assert not failures.blocked("10.0.0.1")
        failures.failed("10.0.0.1")
        clock.advance(1)
    assert failures.blocked("10.0.0.1") and not failures.blocked("10.0.0.2")
    clock.advance(58)  # the first failure is now a minute old
    assert not failures.blocked("10.0.0.1")
    assert not FailedAuth(0, clock).blocked("10.0.0.1")  # 0: no limit


def test_one_address_per_host_whatever_the_port_and_one_check_for_every_endpoint() -> None:
    assert client_address("tcp4:10.0.0.1:5678") == client_address("tcp4:10.0.0.1:1") == "10.0.0.1"
    assert client_address("tcp6:::1:5678") == "::1"
    assert client_address("unix:/run/livetx.sock") == "unix:/run/livetx.sock"
    failures = FailedAuth(1, Clock())
    assert failures.attempt("tcp4:10.0.0.1:1", lambda: None, lambda r: r is None) is None  # counted
    with pytest.raises(TooManyFailures):  # another port, the same host: not even verified
        failures.attempt("tcp4:10.0.0.1:2", lambda: 1 / 0, lambda r: False)
    assert failures.attempt("tcp4:10.0.0.2:1", lambda: "ok", lambda r: r is None) == "ok"


def test_failed_auth_remembers_a_bounded_number_of_addresses() -> None:
    failures = FailedAuth(1, Clock(), max_addresses=100)
    for i in range(1000):
        failures.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(failures._failures) == 100
    assert failures.blocked("10.0.3.231") and not failures.blocked("10.0.0.0")


@pytest_twisted.ensureDeferred
async def test_guessing_tokens_gets_an_address_refused(livetx: Any) -> None:
    server = await livetx("[server]\nfailed_auth_per_minute = 2\n")
    for _ in range(2):
        guess = await open_socket(server.url(LIVE, token="guess"))
        await guess.closed
        assert guess.close_reason == "Invalid token"
    for path in (LIVE, UNIFIED):  # now even a valid token from this address is refused
        client = await open_socket(server.url(path, token=server.token()))
        await client.closed
        assert (client.close_code, client.close_reason) == (1008, "Too many failed attempts")
    _, key = KeyStore(server.data_dir).create(["chat"])
    device = await open_socket(server.url(OPEN_API, username="d", api_key=key))
    await device.closed
    assert [(f["t"], f["code"]) for f in device.frames] == [("error", "RATE_LIMITED")]


@pytest_twisted.ensureDeferred
async def test_browser_endpoints_check_the_origin(livetx: Any) -> None:
    server = await livetx('[server]\nallowed_origins = ["https://dash.example"]\n')
    token = server.token()
    for path in (LIVE, UNIFIED):
        hijack = await open_socket(server.url(path, token=token), {"Origin": "https://evil.example"})
        await hijack.closed
        assert (hijack.close_code, hijack.close_reason) == (1008, "Origin not allowed")
    for origin in ("https://dash.example", f"http://127.0.0.1:{server.port}"):
        page = await connect(server.url(LIVE, token=token), {"Origin": origin})
        assert replied(await page.turn("from a trusted page"))
        await page.close_and_wait()
    # Devices on the Open API endpoint authenticate with a key, not a cookie-like token.
    _, key = KeyStore(server.data_dir).create(["chat"])
    device = await connect(server.url(OPEN_API, username="d", api_key=key), {"Origin": "https://evil.example"})
    await device.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_the_http_api_counts_failed_keys_with_the_sockets(livetx: Any) -> None:
    server = await livetx("[server]\nfailed_auth_per_minute = 2\n")
    _, key = KeyStore(server.data_dir).create(["chat"])
    sessions = f"http://127.0.0.1:{server.port}/api/v1/chat/sessions?username=u"
    wrong = await treq.get(sessions, headers={"X-API-Key": "abk_guess"}, reactor=reactor)
    assert wrong.code == 401
    await treq.content(wrong)
    guess = await open_socket(server.url(OPEN_API, username="u", api_key="abk_guess2"))
    await guess.closed
    for url in (sessions, sessions.replace("?", "/some-id/messages?")):
        refused = await treq.get(url, headers={"X-API-Key": key}, reactor=reactor)
        assert refused.code == 429
        assert (await refused.json())["code"] == "RATE_LIMITED"


@pytest_twisted.ensureDeferred
async def test_a_signed_token_with_a_bad_username_is_refused_with_bad_user(livetx: Any) -> None:
    """Issue 13.10: a newline in a username would split log lines; the claim obeys the key rules."""
    import time

    import jwt

    from livetx.auth.tokens import load_or_create_secret

    server = await livetx()
    secret = load_or_create_secret(server.data_dir, None)
    for name in ("eve\nINFO admin logged in", "x" * 65):
        forged = jwt.encode({"username": name, "exp": time.time() + 60}, secret, algorithm="HS256")
        for path in (LIVE, UNIFIED):
            client = await open_socket(server.url(path, token=forged))
            await client.closed.addTimeout(5, reactor)
            assert (client.close_code, client.close_reason) == (1008, "Invalid username")
            assert [(f["t"], f["code"]) for f in client.frames] == [("error", "BAD_USER")]


@pytest_twisted.ensureDeferred
async def test_a_session_id_echoed_in_every_event_is_capped(livetx: Any) -> None:
    """Issue 13.2: ids a client chooses are repeated in each event; 128 characters at most."""
    server = await livetx()
    long_id = "s" * 129
    client = await open_socket(server.url(LIVE, token=server.token(), session_id=long_id))
    await client.closed.addTimeout(5, reactor)
    assert client.close_code == 1008
    assert [(f["t"], f["code"]) for f in client.frames] == [("error", "INVALID_MESSAGE_FORMAT")]
    _, key = KeyStore(server.data_dir).create(["chat"])
    device = await connect(server.url(OPEN_API, username="d", api_key=key, ct="chat"))
    for frame in ({"ct": "chat", "t": "bind", "session_id": long_id},
                  {"ct": "chat", "t": "send", "message": "hi", "session_id": long_id},
                  {"ct": "chat", "t": "send", "message": "hi", "message_id": "m" * 129}):
        device.send(frame)
        error = await device.next()
        assert (error["t"], error["code"]) == ("error", "INVALID_MESSAGE_FORMAT"), error
    device.send({"ct": "chat", "t": "send", "message": "hi", "message_id": "m" * 128})
    assert (await device.until("end"))[-1]["message_id"] == "m" * 128
    await device.close_and_wait()
