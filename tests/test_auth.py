"""JWTs and API keys: what is accepted, what is refused, and with which reason."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from livetx.auth.keys import CorruptKeyFile, KeyStore, key_from_request, resolve_username
from livetx.auth.tokens import AuthFailure, issue_token, load_or_create_secret, verify_token

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_secret_is_made_once_and_private(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "d", None)
    assert len(first) == 64
    assert load_or_create_secret(tmp_path / "d", None) == first
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "jwt_secret").st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "d", "configured") == "configured"


def test_token_round_trip() -> None:
    assert verify_token(SECRET, issue_token(SECRET, "alice", 60)) == "alice"


def b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token, reason",
    [
        (None, "Missing authentication token"),
        ("", "Missing authentication token"),
        ("garbage", "Invalid token"),
        (issue_token(SECRET, "alice", -5), "Token expired"),
        (issue_token("a-different-secret-also-long-enough!", "alice", 60), "Invalid token"),
        (f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url({'username': 'alice', 'exp': time.time() + 60})}.",
         "Invalid token"),
        (jwt.encode({"username": "alice", "exp": time.time() + 60}, SECRET + "x" * 32, algorithm="HS512"),
         "Invalid token"),
        (jwt.encode({"username": "alice"}, SECRET, algorithm="HS256"), "Invalid token"),
        (jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS256"), "Invalid token"),
        (jwt.encode({"username": 5, "exp": time.time() + 60}, SECRET, algorithm="HS256"), "Invalid token"),
    ],
)
def test_refusals_carry_the_reference_reasons(token: str | None, reason: str) -> None:
    with pytest.raises(AuthFailure) as caught:
        verify_token(SECRET, token)
    assert caught.value.reason == reason


def test_keys_are_stored_hashed_and_verified_by_scope(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    record, key = store.create(["chat"], name="kiosk")
    assert key.startswith("abk_") and len(key) > 40
    stored = (tmp_path / "api_keys.json").read_text()
    assert key not in stored and record.sha256 in stored
    assert stat.S_IMODE(os.stat(tmp_path / "api_keys.json").st_mode) == 0o600
    assert store.verify(key, "chat") == record
    assert store.verify(key, "config") is None
    assert store.verify(key + "x", "chat") is None
    assert store.verify(None, "chat") is None
    assert store.revoke(record.id) and not store.revoke(record.id)
    assert store.verify(key, "chat") is None
    with pytest.raises(ValueError):
        store.create(["root"])


def test_running_server_sees_keys_made_elsewhere(tmp_path: Path) -> None:
    server_view = KeyStore(tmp_path)
    assert server_view.verify("abk_nothing", "chat") is None
    record, key = KeyStore(tmp_path).create(["chat"])  # as the CLI would
    assert server_view.verify(key, "chat") == record
    KeyStore(tmp_path).revoke(record.id)
    assert server_view.verify(key, "chat") is None


def test_corrupt_key_file_refuses_everything_but_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "api_keys.json").write_text("{broken")
    store = KeyStore(tmp_path)
    assert store.verify("abk_x", "chat") is None
    with pytest.raises(CorruptKeyFile):
        store.create(["chat"])
    assert (tmp_path / "api_keys.json").read_text() == "{broken"


def test_key_sources_in_order() -> None:
    assert key_from_request({"api_key": ["q"]}, {"authorization": "Bearer h", "x-api-key": "x"}) == "q"
    assert key_from_request({}, {"authorization": "Bearer h", "x-api-key": "x"}) == "h"
    assert key_from_request({}, {"authorization": "Basic h", "x-api-key": "x"}) == "x"
    assert key_from_request({"api_key": [""]}, {}) is None


@pytest.mark.parametrize(
    "raw, result",
    [
        ("alice", ("alice", None)),
        ("  bob ", ("bob", None)),
        (None, (None, "Missing username")),
        ("   ", (None, "Missing username")),
        ("a" * 65, (None, "Invalid username")),
        ("eve!x", (None, "Invalid username")),
        ("tab\there", (None, "Invalid username")),
    ],
)
def test_usernames(raw: str | None, result: tuple[str | None, str | None]) -> None:
    assert resolve_username(raw) == result


def test_token_usernames_follow_the_username_rules() -> None:
    """Issue 13.10: issuing refuses a bad name; a signed token with one is refused by name."""
    from livetx.auth.tokens import BadUsername, token_username

    for bad in ("evil\nINFO forged log line", "x" * 65, "a!b", "nul\0"):
        with pytest.raises(ValueError, match="Invalid username"):
            issue_token(SECRET, bad, 60)
        forged = jwt.encode({"username": bad, "exp": time.time() + 60}, SECRET, algorithm="HS256")
        with pytest.raises(BadUsername):
            token_username(verify_token(SECRET, forged))
    assert token_username("Zoë") == "Zoë"
