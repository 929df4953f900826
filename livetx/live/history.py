"""What a connection remembers: the exchanges the model sees, and the memory behind them.

The last ``history_turns`` exchanges, as far as ``context_bytes`` lets them,
are kept here as the model's context;
a :class:`livetx.domain.Memory` (the store) keeps every turn beyond
the connection and gives the last ones back when a conversation resumes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.errors import ErrorCode
from livetx.domain import Exchange, Memory
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.live.turn import TurnResult
from livetx.providers.base import Message, newest_within
from livetx.tools.record import replay

_log = Logger()


class Conversation:
    """A connection's history, the last finished turn (for ``truncate``), and its memory."""

    __slots__ = ("_username", "_history", "_memory", "_finished", "loading", "_budget")

    def __init__(self, username: str, turns: int, memory: Memory | None, budget: int = 256 * 1024) -> None:
        self._username = username
        #: Bytes of earlier turns the model is sent (``[llm] context_bytes``).
        self._budget = budget
        self._history: deque[Exchange] = deque(maxlen=max(0, turns))
        self._memory = memory
        #: The last finished turn that was kept: its id, what it sent, what is remembered.
        self._finished: tuple[int, TurnResult, Exchange] | None = None
        #: Fires once the stored history is in (None when there is none to load).
        self.loading: Deferred[None] | None = None
        if memory is not None and self._history.maxlen:
            # Not ``.called``: a Deferred is "called" while still paused on the query.
            recalled = memory.recall(self._history.maxlen, max_bytes=budget)
            self.loading = recalled.addCallbacks(self._restore, self._recall_failed)
            self.loading.addBoth(self._loaded)

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        return tuple(self._history)

    def keep(self, turn_id: int, result: TurnResult, exchange: Exchange, input_type: str,
             metrics: dict[str, Any]) -> Deferred[None]:
        """Remember a finished turn; fires once it is stored (both sides in one transaction)."""
        self._history.append(exchange)
        self._finished = (turn_id, result, exchange)
        if self._memory is None:
            return succeed(None)
        return self._memory.remember(exchange, input_type, metrics)

    def truncate(self, turn_id: int, end_ms: float) -> Frame:
        """Keep only what the user heard of the last reply, for the store and the model."""
        if self._finished is None or self._finished[0] != turn_id:
            raise FrameError(ErrorCode.UNKNOWN_TURN, f"turn {turn_id} is not the last finished turn")
        _, result, kept = self._finished
        if not result.spoken:
            raise FrameError(ErrorCode.UNKNOWN_TURN, f"turn {turn_id} sent no audio to cut")
        if any(duration is None for _, duration in result.spoken):
            # Not WAV ([tts] response_format mp3, opus…): where the audio ended is unknown.
            raise FrameError(ErrorCode.UNKNOWN_TURN, f"turn {turn_id} sent audio of unknown length; cannot cut it")
        revised = replace(kept, reply=result.heard(end_ms), interrupted=True)
        if revised != kept:
            if self._history and self._history[-1] is kept:
                self._history[-1] = revised
            if self._memory is not None:
                self._memory.revise(revised)
            self._finished = (turn_id, result, revised)
        return {"t": "truncated", "turn": turn_id, "data": {"audio_end_ms": end_ms, "text": revised.reply}}

    def context(self, system_prompt: str, text: str) -> list[Message]:
        """The messages the model is sent for a new user ``text``.

        Of the history, the newest turns that fit the byte budget; older
        ones are forgotten here too (they would never fit again), so a
        connection holds no more than its budget of earlier turns.
        """
        messages: list[Message] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        turns = [_messages(exchange) for exchange in self._history]
        fitting = newest_within(turns, self._budget)
        for _ in range(len(turns) - fitting):
            self._history.popleft()
        for turn in turns[len(turns) - fitting:]:
            messages += turn
        messages.append({"role": "user", "content": text})
        return messages

    def _restore(self, exchanges: list[Exchange]) -> None:
        # Turns finished while loading are newer than anything stored.
        newer = list(self._history)
        self._history.clear()
        self._history.extend([*exchanges, *newer])

    def _loaded(self, _: None) -> None:
        self.loading = None

    def _recall_failed(self, failure: Failure) -> None:
        _log.failure("Could not load the stored conversation of {user}", failure, user=self._username)


def _messages(exchange: Exchange) -> list[Message]:
    """One earlier turn as the model is shown it."""
    messages: list[Message] = [{"role": "user", "content": exchange.user}]
    if exchange.tools:  # a reply that called tools comes back as its calls and results
        messages += replay(exchange.reply, exchange.tools)
    elif exchange.reply:
        messages.append({"role": "assistant", "content": exchange.reply})
    return messages
