"""A chat turn whose final commit fails (issue 27.15): no ``message_saved``, then ``error`` and ``end``.

``message_saved`` is the client's word that the question and the reply are
stored; a turn whose ``add_turn`` failed after the model had replied must
never send it, and must still end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail

from livetx.chat.service import ChatRequest, ChatService, Event
from livetx.domain import Engines
from livetx.errors import ErrorCode, StoreUnavailable
from livetx.providers.echo import EchoChat
from livetx.store import StoredMessage
from livetx.store.sqlite import SQLiteStore


class CommitFails(SQLiteStore):
    """A store that opens sessions and reads history, but whose turn commits fail with ``error``."""

    error: Exception = StoreUnavailable("the database went away")

    def add_turn(self, username: str, session_id: str, user: Sequence[Any], reply: Sequence[Any],
                 **kwargs: Any) -> Deferred[tuple[StoredMessage, StoredMessage]]:
        return fail(self.error)


@pytest.mark.parametrize("error, code", [
    (StoreUnavailable("the database went away"), ErrorCode.STORE_UNAVAILABLE),
    (RuntimeError("a bug in the store"), ErrorCode.INTERNAL_ERROR),
])
@pytest_twisted.ensureDeferred
async def test_a_failed_commit_sends_no_message_saved_then_error_and_end(
    tmp_path: Path, error: Exception, code: ErrorCode
) -> None:
    store = CommitFails(tmp_path)
    store.error = error
    chat = ChatService(store=store, engines=Engines(llm=EchoChat(reactor), tts=None, stt=None), clock=reactor)
    events: list[Event] = []
    await chat.start(ChatRequest.parse("ann", {"message": "one two three"}), events.append).done
    kinds = [e["type"] for e in events]
    assert "plain" in kinds and "agent_stats" in kinds  # the model ran: the commit is what failed
    assert "message_saved" not in kinds
    assert kinds[-2:] == ["error", "end"] and events[-2]["code"] == code
    assert events[-1]["session_id"] == events[0]["session_id"]  # the client still learns its session
    sessions, _ = await store.sessions("ann", 0, 10)
    assert [await store.messages("ann", s.id) for s in sessions] == [[]]  # nothing half-stored
    await store.close()
