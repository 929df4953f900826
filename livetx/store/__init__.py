"""Where conversations are kept, behind one small interface.

The live and chat cores only see :class:`ConversationStore`; SQLite is the
embedded default, and PostgreSQL (``[store] url``) implements the same
methods for several processes and machines. A session is named by its owner
and its id together: ids are only unique among one user's sessions.
Every method returns a Deferred that fires after the data is durable, so a
caller can promise the client that what it acknowledged is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred

Part = dict[str, Any]


@dataclass(frozen=True)
class StoredSession:
    id: str
    username: str
    kind: str
    title: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class StoredMessage:
    id: int
    session_id: str
    role: str
    parts: list[Part]
    created_at: str
    interrupted: bool = False
    input_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The plain-text parts joined: what a language model is shown."""
        return "".join(p.get("text", "") for p in self.parts if p.get("type") == "plain")


@dataclass(frozen=True)
class StoredAttachment:
    id: str
    username: str
    filename: str
    mime: str
    size: int
    created_at: str


class ConversationStore(Protocol):
    """Sessions of a user, messages of a session, and uploaded attachments."""

    def open_session(self, username: str, session_id: str | None, kind: str) -> Deferred[StoredSession]:
        """The user's session of that id (a new id when None), created when new."""

    def session(self, username: str, session_id: str) -> Deferred[StoredSession | None]:
        """The user's session of that id, or None when there is none."""

    def add_message(
        self,
        username: str,
        session_id: str,
        role: str,
        parts: Sequence[Part],
        *,
        interrupted: bool = False,
        input_type: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Deferred[StoredMessage]:
        """Append a message to an existing session; fires once it is committed."""

    def add_turn(
        self,
        username: str,
        session_id: str,
        user: Sequence[Part],
        reply: Sequence[Part],
        *,
        interrupted: bool = False,
        input_type: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Deferred[tuple[StoredMessage, StoredMessage]]:
        """Append a user message and its reply in one transaction; fires once both are committed.

        A turn is stored whole or not at all, so a crash never leaves a
        question without its answer.
        """

    def messages(self, username: str, session_id: str, limit: int | None = None,
                 max_bytes: int | None = None) -> Deferred[list[StoredMessage]]:
        """The session's messages, oldest first (the last ``limit`` when given).

        With ``limit`` and ``max_bytes``, only the newest of those whose stored
        text (counted in characters, so at least that many bytes) fits in
        ``max_bytes`` together: a model's context of long turns is never read
        whole from the database.
        """

    def replace_reply(self, message_id: int, parts: Sequence[Part], *, interrupted: bool) -> Deferred[None]:
        """Replace one assistant message (by its id): a live reply cut to what was heard."""

    def sessions(self, username: str, offset: int, limit: int) -> Deferred[tuple[list[StoredSession], int]]:
        """A page of the user's sessions, newest first, and how many there are."""

    def add_attachment(self, username: str, filename: str, mime: str, data: bytes) -> Deferred[StoredAttachment]:
        """Keep an uploaded file; its id can be referred to from message parts."""

    def attachment(self, attachment_id: str) -> Deferred[StoredAttachment | None]:
        """An attachment's record, or None."""

    def attachment_data(self, attachment_id: str) -> Deferred[bytes]:
        """An attachment's bytes (read off the reactor thread)."""

    def close(self) -> Deferred[None]:
        """Finish pending writes and release the database."""
