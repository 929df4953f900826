"""A live connection's memory, kept in a :class:`ConversationStore`.

A live conversation belongs to a user and a session id; reconnecting with
the same id brings the history back as the model's context.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.deferreds import waiter_for
from livetx.domain import Exchange
from livetx.errors import StoreUnavailable
from livetx.store import ConversationStore, StoredMessage
from livetx.tools.record import reply_parts, steps_of

_log = Logger()


def default_live_session(username: str) -> str:
    """Each user's standing live conversation, when the client names none."""
    return f"live:{username}"


def live_memories(store: ConversationStore) -> Callable[[str, str | None], StoredConversation]:
    """A :data:`livetx.domain.MemoryOpener`: each live connection's memory in ``store``."""

    def open_memory(username: str, session_id: str | None) -> StoredConversation:
        return StoredConversation(store, username, session_id or default_live_session(username))

    return open_memory


def exchanges(messages: list[StoredMessage]) -> list[Exchange]:
    """Pair stored messages into turns: a user message and the reply after it."""
    turns: list[Exchange] = []
    for message in messages:
        if message.role == "user":
            turns.append(Exchange(message.text, ""))
        elif message.role == "assistant" and turns and not turns[-1].reply:
            turns[-1] = Exchange(turns[-1].user, message.text, message.interrupted, steps_of(message.parts))
    return turns


class StoredConversation:
    """:class:`livetx.domain.Memory` on a store, in one of the user's own sessions."""

    def __init__(self, store: ConversationStore, username: str, session_id: str) -> None:
        self._store = store
        self.username = username
        self.session_id = session_id
        #: Fires with the session (the user's own: ids are per user), or fails when the store cannot.
        self.opened = store.open_session(username, session_id, "live")
        self._failed: Failure | None = None
        self.opened.addErrback(self._refused)
        #: The stored reply of the turn remembered last; ``revise`` rewrites that row.
        self._reply: Deferred[StoredMessage | None] = succeed(None)

    def _refused(self, failure: Failure) -> Failure:
        self._failed = failure
        return failure

    def _then(self, work: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """Run ``work`` once the session is open; fail as its opening did otherwise."""

        def go(_: None) -> Deferred[Any]:
            if self._failed is not None:
                self._failed.raiseException()
            return work()

        return waiter_for(self.opened).addCallback(go)

    def recall(self, turns: int, max_bytes: int | None = None) -> Deferred[list[Exchange]]:
        # Asked for now, not once the session is open: the store runs work
        # in order, so the query still comes after the opening, usually in
        # the same transaction, and its rows reach no one unless it worked.
        query = self._store.messages(self.username, self.session_id, limit=2 * turns, max_bytes=max_bytes)

        def rows() -> Deferred[list[StoredMessage]]:
            return query

        def dropped(failure: Failure) -> Failure:
            query.addErrback(lambda _: None)  # not opened: the opening's failure is the news
            return failure

        d = self._then(rows).addErrback(dropped)
        return d.addCallback(lambda messages: exchanges(messages)[-turns:])

    def remember(self, exchange: Exchange, input_type: str, metrics: dict[str, Any]) -> Deferred[None]:
        def write() -> Deferred[StoredMessage]:
            stored = self._store.add_turn(
                self.username, self.session_id, [{"type": "plain", "text": exchange.user}],
                reply_parts(exchange.reply, exchange.tools),
                interrupted=exchange.interrupted, input_type=input_type, metrics=metrics,
            )
            return stored.addCallback(lambda pair: pair[1])

        # The reply's own row: another socket of the user may add later ones
        # to the same conversation, so a revision must not pick "the latest".
        self._reply = self._then(write).addErrback(self._write_failed)
        return waiter_for(self._reply)

    def revise(self, exchange: Exchange) -> None:
        parts = reply_parts(exchange.reply, exchange.tools)

        def replace(reply: StoredMessage | None) -> StoredMessage | None:
            if reply is not None:  # None: its write failed, and was logged
                self._store.replace_reply(reply.id, parts, interrupted=exchange.interrupted).addErrback(
                    self._write_failed
                )
            return reply  # kept for a later revision of the same turn

        # Revisions are queued in the order they are asked for, after the reply's own write.
        self._reply.addCallback(replace)

    def _write_failed(self, failure: Failure) -> None:
        """Logged; the turn goes on (the client is told ``end`` all the same)."""
        if isinstance(failure.value, StoreUnavailable):  # an outage, not a bug: one line, no traceback
            _log.warn("Could not store a live turn of {session}: {error}", session=self.session_id,
                      error=str(failure.value))
        else:
            _log.failure("Could not store a live turn of {session}", failure, session=self.session_id)
