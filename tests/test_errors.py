"""Domain errors are told apart from the built-in exceptions they used to borrow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from livetx.chat.service import ChatRequest, ChatService, Event
from livetx.domain import Engines
from livetx.auth.tokens import AuthFailure
from livetx.errors import (
    ErrorCode, FrameError, HTTPError, LLMError, NoSuchSession, Outcome, SessionForbidden, StoreUnavailable, ToolStatus,
)
from livetx.live import frames
from livetx.providers.echo import EchoChat
from livetx.store.sqlite import SQLiteStore
from livetx.web.admission import TooManyFailures
from livetx.web.replies import finish_async


class UnreadableFiles(SQLiteStore):
    """Attachments whose files the operating system refuses to read."""

    def attachment_data(self, attachment_id: str) -> Deferred[bytes]:
        return fail(PermissionError(13, "Permission denied"))


async def chat_errors(store: SQLiteStore, username: str, body: dict[str, Any]) -> list[Event]:
    engines = Engines(llm=EchoChat(reactor), tts=None, stt=None, vision=True)
    chat = ChatService(store=store, engines=engines, clock=reactor)
    events: list[Event] = []
    await chat.start(ChatRequest.parse(username, body), events.append).done
    return [e for e in events if e["type"] == "error"]


@pytest_twisted.ensureDeferred
async def test_a_file_the_disk_refuses_is_an_internal_error_not_another_users_session(tmp_path: Path) -> None:
    store = UnreadableFiles(tmp_path)
    record = await store.add_attachment("ann", "cat.png", "image/png", b"\x89PNG\r\n")
    message = [{"type": "image", "attachment_id": record.id}, {"type": "plain", "text": "what is this?"}]
    errors = await chat_errors(store, "ann", {"message": message})
    assert [e["code"] for e in errors] == [ErrorCode.INTERNAL_ERROR]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_another_users_session_id_is_a_session_of_ones_own(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    session = await store.open_session("ann", None, "chat")
    assert await chat_errors(store, "bob", {"message": "hello", "session_id": session.id}) == []
    assert await store.messages("ann", session.id) == []  # bob's turn went into bob's session
    assert [m.text for m in await store.messages("bob", session.id)] == ["hello", "hello"]
    with pytest.raises(NoSuchSession):
        await store.add_message("carol", session.id, "user", [{"type": "plain", "text": "no such"}])
    await store.close()


def test_domain_errors_carry_their_codes_and_are_not_builtin_signals() -> None:
    assert SessionForbidden().code is ErrorCode.FORBIDDEN
    assert NoSuchSession().code is ErrorCode.NOT_FOUND
    assert not issubclass(SessionForbidden, PermissionError)
    assert not issubclass(NoSuchSession, LookupError)


@pytest.mark.parametrize(("error", "status", "code"), [
    (HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, "use GET"), 405, ErrorCode.METHOD_NOT_ALLOWED),
    (FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, "message must be list"), 400, ErrorCode.INVALID_MESSAGE_FORMAT),
    (NoSuchSession(), 404, ErrorCode.NOT_FOUND),
    (SessionForbidden(), 403, ErrorCode.FORBIDDEN),
    (StoreUnavailable("db away"), 503, ErrorCode.STORE_UNAVAILABLE),
    (LLMError("upstream said 500"), 502, ErrorCode.LLM_ERROR),
    (TooManyFailures("Too many failed attempts"), 429, ErrorCode.RATE_LIMITED),
    (AuthFailure("Invalid token"), 401, ErrorCode.UNAUTHORIZED),
    (KeyError("a bug"), 500, ErrorCode.INTERNAL_ERROR),
])
def test_an_answer_takes_the_status_and_code_the_exception_carries(error: Exception, status: int, code: str) -> None:
    request = DummyRequest([b""])
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        finish_async(request, fail(error))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    body = json.loads(b"".join(request.written))
    assert (request.responseCode, body["code"]) == (status, code)
    assert body["message"] == ("internal error" if status == 500 else getattr(error, "message"))
    # A bug is logged, and says nothing more; a refusal is no failure.
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == ([KeyError] if status == 500 else [])


def test_no_speech_is_in_the_one_vocabulary() -> None:
    assert frames.no_speech(0)["data"]["code"] is ErrorCode.NO_SPEECH
    assert {s.value for s in ToolStatus} >= {Outcome.OK.value, Outcome.FAILED.value}
