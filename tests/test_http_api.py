"""The HTTP Open API on the same port as the sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor

from livetx.auth.keys import KeyStore
from livetx.web.site import WEBSOCKET_ROUTES

from .support import connect
from .test_live_ws import OPEN_API, openai_config


class API:
    """A small HTTP client for one server, with a key of the given scopes."""

    def __init__(self, server: Any, *scopes: str) -> None:
        self.base = f"http://127.0.0.1:{server.port}"
        self.key = KeyStore(server.data_dir).create(list(scopes or ["chat"]))[1]

    async def call(self, method: str, path: str, key: str | None = "", **kwargs: Any) -> tuple[int, Any]:
        headers = {} if key is None else {"X-API-Key": key or self.key}
        response = await treq.request(method, self.base + path, headers=headers, reactor=reactor, **kwargs)
        body = await treq.content(response)
        kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
        return response.code, (json.loads(body) if kind.startswith(b"application/json") else body)

    async def chat(self, **body: Any) -> list[dict[str, Any]]:
        code, raw = await self.call("POST", "/api/v1/chat", json=body)
        assert code == 200, raw
        return [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: ")]


@pytest_twisted.ensureDeferred
async def test_chat_over_sse_then_read_it_back(livetx: Any, openai: Any) -> None:
    openai.reply = "Four, as always."
    server = await livetx(openai_config(openai.base_url, tts=False))
    api = API(server)
    events = await api.chat(username="ann", message=[{"type": "plain", "text": "2+2?"}])
    session_id = events[0]["session_id"]
    assert [e["type"] for e in events][-3:] == ["agent_stats", "message_saved", "end"]
    assert "".join(e["data"] for e in events if e["type"] == "plain") == "Four, as always."

    code, page = await api.call("GET", "/api/v1/chat/sessions?username=ann")
    assert code == 200 and page["total"] == 1
    assert page["sessions"][0]["session_id"] == session_id and page["sessions"][0]["title"] == "2+2?"
    code, history = await api.call("GET", f"/api/v1/chat/sessions/{session_id}/messages?username=ann")
    assert [(m["role"], m["message"][0]["text"]) for m in history["messages"]] == [
        ("user", "2+2?"), ("assistant", "Four, as always."),
    ]
    saved = next(e for e in events if e["type"] == "message_saved")["data"]
    assert history["messages"][1]["id"] == saved["id"]

    code, other = await api.call("GET", f"/api/v1/chat/sessions/{session_id}/messages?username=eve")
    assert (code, other["code"]) == (404, "NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_a_bound_socket_sees_an_http_turn(livetx: Any, openai: Any) -> None:
    openai.reply = "Seen everywhere."
    server = await livetx(openai_config(openai.base_url, tts=False))
    api = API(server)
    session_id = (await api.chat(username="ann", message="first"))[0]["session_id"]
    watcher = await connect(server.url(OPEN_API, api_key=api.key, username="ann", ct="chat"))
    watcher.send({"ct": "chat", "t": "bind", "session_id": session_id})
    await watcher.until("session_bound")
    await api.chat(username="ann", session_id=session_id, message="second", enable_streaming=False)
    seen = await watcher.until("end")
    assert [f["data"] for f in seen if f.get("type") == "plain"] == ["Seen everywhere."]
    await watcher.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_keys_scopes_and_bad_requests(livetx: Any) -> None:
    server = await livetx()
    api = API(server, "chat")
    assert (await api.call("GET", "/api/v1/chat/sessions?username=a", key=None))[0] == 401
    assert (await api.call("GET", "/api/v1/chat/sessions?username=a", key="abk_nope"))[0] == 401
    code, body = await api.call("POST", "/api/v1/file?username=a", files={"file": ("a.png", "image/png", b"x")})
    assert (code, body["code"]) == (401, "UNAUTHORIZED")  # chat scope only
    bad = [
        ("GET", "/api/v1/chat/sessions", {}, 400, "BAD_USER"),
        ("GET", "/api/v1/chat/sessions?username=a&page_size=0", {}, 400, "INVALID_MESSAGE_FORMAT"),
        ("GET", "/api/v1/chat/sessions?username=a&page=x", {}, 400, "INVALID_MESSAGE_FORMAT"),
        ("POST", "/api/v1/chat", {"data": b"{nope"}, 400, "INVALID_JSON"),
        ("POST", "/api/v1/chat", {"json": {"username": "a", "message": 5}}, 400, "INVALID_MESSAGE_FORMAT"),
        ("GET", "/api/v1/chat", {}, 405, "METHOD_NOT_ALLOWED"),
    ]
    for method, path, kwargs, status, code in bad:
        got_status, got = await api.call(method, path, **kwargs)
        assert (got_status, got["code"]) == (status, code), (method, path, got)
    code, body = await api.call("GET", "/api/v1/chat/sessions?username=a&page=3&page_size=10")
    assert (code, body["sessions"], body["total"]) == (200, [], 0)


@pytest_twisted.ensureDeferred
async def test_attachments_upload_and_use(livetx: Any, openai: Any) -> None:
    openai.reply = "A fine picture."
    config = openai_config(openai.base_url, tts=False).replace("[llm]\n", "[llm]\nvision = true\n")
    server = await livetx(config + "[server]\nmax_upload_bytes = 1000\n")
    api = API(server, "chat", "file")
    code, record = await api.call("POST", "/api/v1/file?username=ann",
                                  files={"file": ("cat.png", "image/png", b"\x89PNG" + b"\0" * 100)})
    assert code == 200 and record["size"] == 104 and record["mime"] == "image/png"
    too_big = await api.call("POST", "/api/v1/file?username=ann", files={"file": ("b.png", "image/png", b"\0" * 5000)})
    assert too_big[0] == 413
    wrong = await api.call("POST", "/api/v1/file?username=ann",
                           files={"file": ("x.exe", "application/x-msdownload", b"MZ")})
    assert (wrong[0], wrong[1]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")

    events = await api.chat(username="ann", message=[
        {"type": "plain", "text": "What is this?"}, {"type": "image", "attachment_id": record["attachment_id"]},
    ])
    assert events[-1]["type"] == "end" and not any(e["type"] == "error" for e in events)
    sent = openai.requests_to("/chat/completions")[-1].json["messages"][-1]
    assert sent["content"][0] == {"type": "text", "text": "What is this?"}
    image = base64.b64decode(sent["content"][1]["image_url"]["url"].split(",", 1)[1])
    assert sent["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert image == b"\x89PNG" + b"\0" * 100
    events = await api.chat(username="eve", message=[
        {"type": "plain", "text": "Mine now?"}, {"type": "image", "attachment_id": record["attachment_id"]},
    ])
    assert [e.get("code") for e in events if e["type"] == "error"] == ["INVALID_MESSAGE_FORMAT"]


@pytest_twisted.ensureDeferred
async def test_openapi_json_describes_every_route(livetx: Any) -> None:
    server = await livetx()
    api = API(server)
    code, spec = await api.call("GET", "/openapi.json", key=None)
    assert code == 200 and spec["openapi"].startswith("3.1")
    from livetx.config import Config
    from livetx.metrics import ServerMetrics
    from livetx.web.http_api import api_routes
    from livetx.web.ops import ops_routes
    from livetx.web.login import login_routes
    from livetx.web.pages import page_routes
    from livetx.web.voices import voice_routes

    served = set(api_routes(None, None, None, Config().server)) | set(WEBSOCKET_ROUTES)  # type: ignore[arg-type]
    served |= set(login_routes(None))  # type: ignore[arg-type]
    served |= set(voice_routes(None))
    served |= set(ops_routes(ServerMetrics(), Config(), reactor))
    served |= set(page_routes()) - {"/static"} | {"/static/{file}"}
    served.add("/api/v1/chat/sessions/{session_id}/messages")
    # Served when [telephony] / [devices] are configured (their own tests start them).
    from livetx.devices.routes import OTA_PATH, SOCKET_PATH
    from livetx.telephony.routes import STREAM_PATH, VOICE_PATH

    served |= {STREAM_PATH, VOICE_PATH, f"{OTA_PATH}/", f"{OTA_PATH}/activate", SOCKET_PATH}
    assert served == set(spec["paths"])
    assert all(spec["paths"][p]["get"].get("x-websocket") for p in WEBSOCKET_ROUTES)


def test_openapi_document_is_read_on_first_request_only() -> None:
    from livetx.web.http_api import OpenAPIResource, load_openapi

    resource = OpenAPIResource()
    assert "body" not in vars(resource)  # nothing parsed at start-up
    assert json.loads(resource.body) == load_openapi()
    assert resource.body is resource.body


@pytest_twisted.ensureDeferred
async def test_a_turn_that_fails_is_an_error_event_on_a_200_stream(livetx: Any, openai: Any) -> None:
    openai.fail_status = 500  # as docs/http-api.md says: the status is sent before the model answers
    server = await livetx(openai_config(openai.base_url, tts=False))
    events = await API(server).chat(username="ann", message=[{"type": "plain", "text": "hi"}])  # asserts 200
    assert [e["type"] for e in events][-2:] == ["error", "end"] and events[-2]["code"] == "LLM_ERROR"


@pytest_twisted.ensureDeferred
async def test_every_session_id_that_can_exist_can_be_read(livetx: Any) -> None:
    """Issue 13.9: ``{session_id}`` is percent-decoded (``live:NAME`` defaults, non-ASCII, even a slash)."""
    from urllib.parse import quote

    from twisted.internet.task import deferLater

    from .support import replied
    from .test_live_ws import LIVE

    server = await livetx()
    api = API(server)
    for user in ("alice", "zoë", "a/b"):
        client = await connect(server.url(LIVE, token=server.token(user)))
        assert replied(await client.turn("remember me"))
        await client.close_and_wait()
        path = f"/api/v1/chat/sessions/{quote('live:' + user, safe='')}/messages?username={quote(user)}"
        found: list[Any] = []

        async def read() -> None:
            code, body = await api.call("GET", path)
            found[:] = [code, body]

        for _ in range(50):
            await read()
            if found[0] == 200 and len(found[1]["messages"]) == 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert found[0] == 200 and found[1]["session_id"] == f"live:{user}", found
        assert [m["role"] for m in found[1]["messages"]] == ["user", "assistant"]
    code, body = await api.call("GET", "/api/v1/chat/sessions/%FF%FE/messages?username=alice")
    assert code == 404
    code, body = await api.call("GET", "/api/v1/chat/sessions/live%3Aalice/messages/more?username=alice")
    assert (code, body["code"]) == (404, "NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_uploads_are_typed_by_their_content(livetx: Any) -> None:
    """Issue 17.4: curl's ``application/octet-stream`` for a WAV is fine; random bytes called PNG are not."""
    import io
    import os
    import wave

    server = await livetx()
    api = API(server, "file")
    sound = io.BytesIO()
    with wave.open(sound, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\0\0" * 1600)
    accepted = [
        (("reply.wav", "application/octet-stream", sound.getvalue()), "audio/wav"),
        (("notes.txt", "application/octet-stream", "Grüße\n".encode()), "text/plain"),
        (("photo", "text/plain", b"\x89PNG\r\n\x1a\n" + b"\0" * 100), "image/png"),
        (("doc.pdf", "image/png", b"%PDF-1.7\n" + b"\0" * 100), "application/pdf"),
    ]
    for upload, mime in accepted:
        code, record = await api.call("POST", "/api/v1/file?username=ann", files={"file": upload})
        assert (code, record["mime"]) == (200, mime), (upload[0], record)
    refused = [
        ("cat.png", "image/png", os.urandom(100)),
        ("x.exe", "application/x-msdownload", b"MZ\x90\x00" + b"\0" * 100),
        ("notes.txt", "text/plain", b"\0\1\2binary"),
        ("movie.mp4", "video/mp4", b"\0\0\0\x18ftypmp42" + b"\0" * 100),
    ]
    for upload in refused:
        code, body = await api.call("POST", "/api/v1/file?username=ann", files={"file": upload})
        assert (code, body["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE"), (upload[0], body)
        assert "accepted: images, audio, plain text" in body["message"]
