"""One-time login links: made at start-up or by ``livetx open``, redeemed once, for the page.

The link checks run against a fake clock (no waiting for expiry); the route
and the start-up line against a real server and a real ``twistd`` process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from livetx.auth.login_links import (
    DEFAULT_PAGE, EXPIRED, INVALID, LINK_SECONDS, USED, LoginLinks, fingerprint, issue_link_code, link_url, page_address,
)
from livetx import storage
from livetx.auth.tokens import AuthFailure, issue_token, verify_token
from livetx.tap import DEFAULT_LISTEN

from .services import free_port, wait_for_port
from .support import connect, replied
from .test_twistd import TWISTD, run_cli

SECRET = "s" * 64


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def refusal(links: LoginLinks, code: str) -> str:
    """Why ``links`` refuses ``code`` (the test fails if it does not)."""
    with pytest.raises(AuthFailure) as refused:
        links.redeem(code)
    return refused.value.reason


def codes(links: LoginLinks, clock: Clock) -> list[Callable[[str], str]]:
    """Both kinds of link: the server's own (in memory) and livetx open's (a JWT)."""
    return [links.issue, lambda username: issue_link_code(SECRET, username, now=clock.now)]


@pytest.mark.parametrize("kind", ["server's", "livetx open's"])
def test_a_link_signs_in_once_and_is_refused_after(kind: str) -> None:
    clock = Clock()
    links = LoginLinks(SECRET, now=clock)
    code = codes(links, clock)[kind != "server's"]("dora")
    username, token = links.redeem(code)
    assert username == "dora"
    # The token is an ordinary session token for the sockets, valid for the tab's session.
    assert verify_token(SECRET, token) == "dora"
    assert refusal(links, code) == USED


@pytest.mark.parametrize("kind", ["server's", "livetx open's"])
def test_a_link_expires_in_minutes(kind: str) -> None:
    clock = Clock()
    links = LoginLinks(SECRET, now=clock)
    code = codes(links, clock)[kind != "server's"]("web")
    clock.now += LINK_SECONDS + 1
    assert refusal(links, code) == EXPIRED


def test_used_links_are_forgotten_only_once_they_expired() -> None:
    clock = Clock()
    links = LoginLinks(SECRET, now=clock)
    first, second = links.issue(), issue_link_code(SECRET, now=clock.now)
    links.redeem(first)
    clock.now += LINK_SECONDS - 1
    links.redeem(second)  # forgetting runs here; the first is not expired yet
    assert refusal(links, first) == USED
    clock.now += 2
    assert links.redeem(links.issue())[0] == "web"
    assert len(links._used) == 1  # the two expired ids went
    assert refusal(links, first) == INVALID  # forgotten, as it could never sign in again


def test_a_link_is_no_token_and_a_token_is_no_link() -> None:
    code = issue_link_code(SECRET, "dora")
    with pytest.raises(AuthFailure):
        verify_token(SECRET, code)  # signed with a key derived from the secret, not the secret
    links = LoginLinks(SECRET)
    for wrong in (issue_token(SECRET, "dora", 60), issue_link_code("another secret" * 4, "dora"), "junk"):
        assert refusal(links, wrong) == INVALID


def test_the_page_address_of_a_listen_endpoint() -> None:
    assert page_address(DEFAULT_LISTEN) == DEFAULT_PAGE == "http://127.0.0.1:6185/"
    assert page_address("tcp:port=8080:interface=10.0.0.2") == "http://10.0.0.2:8080/"
    assert page_address("ssl:8443:privateKey=k.pem:certKey=c.pem") == "https://127.0.0.1:8443/"
    assert page_address("tcp6:6185:interface=\\:\\:1") == "http://[::1]:6185/"
    assert page_address("unix:/tmp/live.sock") is None and page_address("tcp:0") is None
    code = issue_link_code(SECRET)
    assert parse_qs(urlparse(link_url("http://h:1/", code)).query)["login"] == [code]


async def login(port: int, code: Any) -> tuple[int, dict[str, Any]]:
    response = await treq.post(f"http://127.0.0.1:{port}/api/v1/login", json.dumps({"login": code}).encode(),
                               headers={"content-type": "application/json"}, reactor=reactor)
    return response.code, json.loads(await treq.content(response))


@pytest_twisted.ensureDeferred
async def test_the_route_redeems_a_link_from_livetx_open_once(livetx: Any, tmp_path: Path) -> None:
    server = await livetx()
    link = run_cli("open", "--data-dir", str(server.data_dir), "--username", "erin",
                   "--url", server.url("/", scheme="http"), cwd=tmp_path)
    assert link.startswith(server.url("/", scheme="http") + "?login=")
    code = parse_qs(urlparse(link).query)["login"][0]
    status, body = await login(server.port, code)
    assert status == 200 and body["username"] == "erin"
    client = await connect(server.url("/api/live_chat/ws", token=body["token"]))
    assert replied(await client.turn("signed in by a link"))
    await client.close_and_wait()

    status, body = await login(server.port, code)
    assert (status, body["code"], body["message"]) == (401, "UNAUTHORIZED", USED)
    assert (await login(server.port, 42))[0] == 400
    assert await login(server.port, "x" * 5000) == (413, {"status": "error", "code": "TOO_LARGE",
                                                          "message": "the body is limited to 4096 bytes here"})
    response = await treq.get(server.url("/api/v1/login", scheme="http"), reactor=reactor)
    assert response.code == 405
    # livetx token --link is the same command.
    assert "?login=" in run_cli("token", "--link", "--data-dir", str(server.data_dir), cwd=tmp_path)


@pytest_twisted.ensureDeferred
async def test_the_start_up_log_prints_a_link_never_logged_in_full_again(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "live", "--listen", f"tcp:{port}:interface=127.0.0.1",
                  "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        assert process.stdout is not None
        line = next(line for line in process.stdout if "?login=" in line)
        link = line.split()[line.split().index("(livetx") - 1]
        assert link.startswith(f"http://127.0.0.1:{port}/?login=")
        code = parse_qs(urlparse(link).query)["login"][0]
        assert (await login(port, code))[0] == 200
        assert (await login(port, code))[0] == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert code not in output  # the start-up line was read above: nothing after it names the link
    assert output.count(fingerprint(code)) == 2  # signed in, then refused


@pytest_twisted.ensureDeferred
async def test_refused_links_count_as_failed_sign_ins(livetx: Any) -> None:
    server = await livetx("[server]\nfailed_auth_per_minute = 2\n")
    assert [(await login(server.port, guess))[0] for guess in ("guess1", "guess2")] == [401, 401]
    code = issue_link_code(storage.jwt_secret(server.options["settings"], server.data_dir))
    status, body = await login(server.port, code)  # even a good link, until the minute is over
    assert (status, body["code"]) == (429, "RATE_LIMITED")
