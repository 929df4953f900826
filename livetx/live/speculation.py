"""Speculative reply: the model started at the first short pause, before the endpoint is confirmed.

Talk mode decodes the utterance at each pause of :data:`PAUSE_MS
<livetx.live.streaming_stt.PAUSE_MS>` (:mod:`livetx.live.streaming_stt`),
but the endpoint comes only once ``silence_ms`` of silence has followed the
speech (or the end-of-turn model says so, :mod:`livetx.live.endpoint`).
With ``speculative`` on, the reply's first model call starts as soon as
that transcript is in, on exactly the messages the turn would send: the
model's first-token delay then runs while the endpoint is still waited
for, not after it.

A :class:`Speculation` sends nothing. Its deltas are kept, not emitted, and
it runs no tools and makes no speech: it is one model request. Then either

- the endpoint comes with the same transcript, and the turn's first model
  call (:func:`taken_by`) *is* the speculation: the deltas kept so far go
  to the turn at once, the rest as they come (``committed``); or
- the speaker goes on (a voiced frame after the pause), the utterance is
  dropped, or the turn asks the model something else (its history changed
  meanwhile): the request is cancelled, and nothing of it was sent or is
  stored (``discarded``).

Either way the session's :class:`~livetx.live.events.TurnListener` hears
:meth:`~livetx.live.events.TurnListener.speculated`: the Prometheus
counter and the turn's ``metrics`` count both outcomes.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from livetx.live.events import TurnListener
from livetx.providers.base import ChatModel, Message, ToolCall, ToolCallingModel

#: What one model call asks: the messages, and the tools offered (``None``: a plain model, none).
Asked = tuple[list[Message], "list[dict[str, Any]] | None"]
OnDelta = Callable[[str], None]


@runtime_checkable
class RoundsModel(Protocol):
    """A model that calls tools in rounds (:class:`livetx.tools.loop.ToolingModel`): a speculation
    starts its first round's request, and a turn that takes it gets the same tools around it."""

    llm: ToolCallingModel

    def request(self, context: list[Message], rounds: int) -> tuple[list[Message], list[dict[str, Any]] | None]:
        """What round ``rounds`` (0: the first) asks the model."""

    def around(self, llm: ToolCallingModel) -> ChatModel:
        """The same tools around another model."""


class Speculation:
    """One model request started ahead of its turn; it holds its output until taken or discarded."""

    __slots__ = ("request", "_listener", "_kept", "_to", "_call", "_result", "_taken", "_over")

    def __init__(self, request: Asked, start: Callable[[OnDelta], Deferred[Any]], listener: TurnListener) -> None:
        self.request = request
        self._listener = listener
        #: Deltas that came before the turn took the call; then ``_to`` gets them as they come.
        self._kept: list[str] = []
        self._to: OnDelta | None = None
        #: The call's outcome once it is over: its value, or its failure (held for the turn, not raised).
        self._result: Any = None
        #: The turn's Deferred for the call, while the call still runs.
        self._taken: Deferred[Any] | None = None
        #: Taken or discarded: it ends once.
        self._over = False
        self._call: Deferred[Any] = maybeDeferred(start, self._delta)
        self._call.addBoth(self._settled)

    def _delta(self, text: str) -> None:
        if self._to is not None:
            self._to(text)
        elif not self._over:
            self._kept.append(text)

    def _settled(self, result: Any) -> None:
        """The call is over; a turn that took it gets its outcome, a discarded one is let go."""
        self._result = result
        taken, self._taken = self._taken, None
        if taken is not None:
            _fire(taken, result)

    def take(self, on_delta: OnDelta) -> Deferred[Any]:
        """The turn's call: the deltas kept so far now, the rest as they come; fires as the call does.

        Cancelling it cancels the model's request, as for any call a turn makes.
        """
        self._end("committed")
        self._to = on_delta
        kept, self._kept = self._kept, []
        for text in kept:
            on_delta(text)
        taken: Deferred[Any] = Deferred(lambda _: self._call.cancel())
        if self._call.called:
            _fire(taken, self._result)
        else:
            self._taken = taken
        return taken

    def discard(self) -> None:
        """The speaker went on, or the turn asked something else: cancel the request, keep nothing."""
        if self._over:
            return
        self._end("discarded")
        self._kept = []
        self._call.cancel()

    def _end(self, outcome: str) -> None:
        self._over = True
        self._listener.speculated(outcome)


def _fire(d: Deferred[Any], result: Any) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def speculate(llm: ChatModel, messages: list[Message], listener: TurnListener) -> Speculation:
    """Start the first model call a turn on ``messages`` would make (a model's first round of tools)."""
    if isinstance(llm, RoundsModel):
        inner = llm.llm
        context, tools = llm.request(list(messages), 0)
        request: Asked = (list(context), None if tools is None else list(tools))
        return Speculation(request, lambda on_delta: inner.stream_tools(context, on_delta, tools), listener)
    return Speculation((list(messages), None), lambda on_delta: llm.stream(messages, on_delta), listener)


class Holder(Protocol):
    """What a speculation hangs on until its turn: the utterance (:class:`livetx.live.capture.Segment`)."""

    ahead: Speculation | None


def taken_by(llm: ChatModel, holder: Holder | None) -> ChatModel:
    """The model a turn calls: ``llm``, whose first call is ``holder``'s speculation when it asks the same.

    The speculation is the holder's no more: the turn takes it, or it is
    discarded when the turn's first call asks something else.
    """
    speculation = None if holder is None else holder.ahead
    if holder is None or speculation is None:
        return llm
    holder.ahead = None
    if isinstance(llm, RoundsModel):
        return llm.around(_Ahead(llm.llm, speculation))
    return _Ahead(llm, speculation)


class _Ahead:
    """A model whose first call may already be running: the speculation, when the request is the same."""

    __slots__ = ("model", "_llm", "_speculation")

    def __init__(self, llm: Any, speculation: Speculation) -> None:
        self.model: str = llm.model
        self._llm = llm
        self._speculation: Speculation | None = speculation

    def _first(self, request: Asked) -> Speculation | None:
        speculation, self._speculation = self._speculation, None
        if speculation is not None and speculation.request != request:
            speculation.discard()
            return None
        return speculation

    def stream(self, messages: Sequence[Message], on_delta: OnDelta) -> Deferred[None]:
        speculation = self._first((list(messages), None))
        if speculation is None:
            return self._llm.stream(messages, on_delta)  # type: ignore[no-any-return]
        return speculation.take(on_delta)

    def stream_tools(
        self, messages: Sequence[Message], on_delta: OnDelta, tools: Sequence[dict[str, Any]] | None,
    ) -> Deferred[list[ToolCall]]:
        speculation = self._first((list(messages), None if tools is None else list(tools)))
        if speculation is None:
            return self._llm.stream_tools(messages, on_delta, tools)  # type: ignore[no-any-return]
        return speculation.take(on_delta)
