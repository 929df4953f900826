"""The types the layers share: what a server's engines are, and what a conversation remembers.

They sit below the live core, the providers and the store, so that engines
and storage know nothing of sessions, and sessions nothing of how engines
are built or where turns are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

from livetx.providers.base import ChatModel, SpeechRecognizer, SpeechSynthesizer, TurnEndModel
from livetx.threads import owned


@dataclass(frozen=True)
class Engines:
    """The engines and limits every live session of a server shares.

    Not the pipeline: a :class:`livetx.live.turn.Turn` is that; this is what
    it draws on.
    """

    llm: ChatModel
    tts: SpeechSynthesizer | None
    stt: SpeechRecognizer | None
    system_prompt: str = ""
    history_turns: int = 20
    context_bytes: int = 256 * 1024
    tts_concurrency: int = 2
    max_segment_seconds: float = 60.0
    #: The model takes images: chat-mode image attachments are sent to it as such.
    vision: bool = False
    #: Called with (username, wav) for every segment, when audio is to be kept.
    keep_audio: Callable[[str, bytes], None] | None = None
    #: Talk mode's end-of-turn model (``end_of_turn: semantic``), when installed.
    turn_end: TurnEndModel | None = None
    #: Talk mode's ``speculative`` setting until a session sets it (``[llm] speculative``).
    speculative: bool = False

    def for_owner(self, owner: str) -> Engines:
        """The same engines, with the local ones' work queued under ``owner``
        (an API key, or a user), so that one owner's flood cannot starve the
        others (see :mod:`livetx.threads`)."""
        return replace(self, tts=owned(self.tts, owner), stt=owned(self.stt, owner))


@dataclass(frozen=True)
class Exchange:
    """One finished turn as the conversation remembers it."""

    user: str
    reply: str
    interrupted: bool = False
    #: The tool calls made while replying, each with where in ``reply`` it was made
    #: and its record (livetx.tools.record).
    tools: tuple[tuple[int, dict[str, Any]], ...] = ()


class Memory(Protocol):
    """Where a conversation outlives its connection (see :mod:`livetx.store`)."""

    def recall(self, turns: int, max_bytes: int | None = None) -> Deferred[list[Exchange]]:
        """The last ``turns`` exchanges, oldest first; with ``max_bytes``, only (about) that much of the newest."""

    def remember(self, exchange: Exchange, input_type: str, metrics: dict[str, Any]) -> Deferred[None]:
        """Keep a finished turn, both sides in one transaction; fires once committed (or failed, logged).

        Writes are applied in the order they are asked for.
        """

    def revise(self, exchange: Exchange) -> None:
        """Replace the reply of the turn this memory remembered last (after ``truncate``)."""


class OpenedMemory(Memory, Protocol):
    """A memory whose conversation is opened first (ids are per user: always the user's own)."""

    #: Fires once the conversation is open; fails when it cannot be (the store is unavailable).
    opened: Deferred[Any]


#: Opens the memory of a live connection: (username, session id asked for, if any).
MemoryOpener = Callable[[str, "str | None"], OpenedMemory]
