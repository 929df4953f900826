"""Domain errors are told apart from the built-in exceptions they used to borrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail

from livetx.chat.service import ChatRequest, ChatService, Event
from livetx.domain import Engines
from livetx.errors import ErrorCode, NoSuchSession, SessionForbidden
from livetx.providers.echo import EchoChat
from livetx.store.sqlite import SQLiteStore


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
