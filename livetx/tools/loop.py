"""The tool loop: a chat model wrapped so that it may call the server's tools.

A turn's model call becomes rounds. Each round streams the model's text as
usual; when the model asks for tools, each call's arguments are parsed and
checked against the tool's schema, the calls run (each with a deadline),
their results go back as ``tool`` messages, and the model is asked again.
After ``max_rounds`` rounds with tools the model is asked once more with no
tools offered, and told to answer.

Cancelling the Deferred of :meth:`ToolingModel.stream` (an interrupt, a
barge-in, a closed socket) cancels the model's stream and every running
tool at once; each of those is reported as a cancelled result, and no call
of a cancelled round ever starts, nor does any later round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import orjson
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.config import ToolsConfig
from livetx.errors import ToolStatus
from livetx.providers.base import Message
from livetx.tools import ToolCall, ToolCallingModel, ToolError, ToolListener, ToolOutcome
from livetx.tools.record import model_text

if TYPE_CHECKING:
    from livetx.tools.registry import ToolRegistry

_log = Logger()

#: Said to the model when it has used up its rounds.
ANSWER_NOW = "You have used the tools as often as allowed in this turn. Answer now, without tools."
#: Longest result text the model and the client are sent per call.
MAX_RESULT_CHARS = 4000


class _Quiet:
    """A listener for callers that do not follow tool events."""

    def tool_started(self, call: ToolCall, arguments: Any) -> None:
        pass

    def tool_finished(self, call: ToolCall, outcome: ToolOutcome) -> None:
        pass

    def filler_due(self, text: str) -> None:
        pass


class ToolingModel:
    """A :class:`~livetx.providers.base.ChatModel` whose model may call tools."""

    #: Turns pass a :class:`~livetx.tools.ToolListener` to models that have this.
    offers_tools = True

    def __init__(
        self, llm: ToolCallingModel, registry: ToolRegistry, config: ToolsConfig, clock: IReactorTime
    ) -> None:
        self.model = llm.model
        self.llm = llm
        self.registry = registry
        self.config = config
        self.clock = clock

    def stream(
        self, messages: Sequence[Message], on_delta: Callable[[str], None],
        listener: ToolListener | None = None,
    ) -> Deferred[None]:
        """Stream the reply across rounds; tool events go to ``listener`` as they happen."""
        return _Run(self, messages, on_delta, listener or _Quiet()).start()

    def request(self, context: list[Message], rounds: int) -> tuple[list[Message], list[dict[str, Any]] | None]:
        """What round ``rounds`` (0: the first) asks the model: the context, and the tools offered
        (none after ``max_rounds``, when it is told to answer). A speculative reply
        (livetx.live.speculation) starts the first round's request before its turn."""
        if rounds < self.config.max_rounds:
            return context, self.registry.spec
        return [*context, {"role": "system", "content": ANSWER_NOW}], None

    def around(self, llm: ToolCallingModel) -> ToolingModel:
        """The same tools around another model (one whose first request already runs)."""
        return ToolingModel(llm, self.registry, self.config, self.clock)


class _Run:
    """One turn's rounds."""

    def __init__(
        self, owner: ToolingModel, messages: Sequence[Message], on_delta: Callable[[str], None],
        listener: ToolListener,
    ) -> None:
        self._o = owner
        self._context: list[Message] = list(messages)
        self._on_delta = on_delta
        self._listener = listener
        self._rounds = 0
        self._text: list[str] = []
        self._cancelled = False
        self._asking: Deferred[list[ToolCall]] | None = None
        #: Running calls: their Deferreds and filler timers.
        self._running: dict[Deferred[Any], IDelayedCall | None] = {}
        self._filler_said = False
        self.done: Deferred[None] = Deferred(self._cancel)

    def start(self) -> Deferred[None]:
        self._ask()
        return self.done

    # -- model rounds --------------------------------------------------------

    def _ask(self) -> None:
        context, tools = self._o.request(self._context, self._rounds)
        self._text = []
        try:
            self._asking = self._o.llm.stream_tools(context, self._delta, tools)
        except Exception:
            self.done.errback(Failure())
            return
        # A bug in a listener while the round is handled fails the turn, never hangs it.
        self._asking.addCallback(self._answered, tools is not None).addErrback(self._failed)

    def _delta(self, text: str) -> None:
        if not self._cancelled:
            self._text.append(text)
            self._on_delta(text)

    def _failed(self, failure: Failure) -> None:
        self._asking = None
        if not self._cancelled and not self.done.called:
            self._cancelled = True  # no later round, and nothing of this one keeps running
            for running in list(self._running):
                running.cancel()
            self.done.errback(failure)

    def _answered(self, calls: list[ToolCall], offering: bool) -> None:
        self._asking = None
        if self._cancelled:
            return  # the calls of a cancelled generation never start
        if not calls:
            self.done.callback(None)
            return
        if not offering:  # asked after its last round: nothing runs
            _log.warn("Model asked for tools after its last round; ignored: {names}",
                      names=[c.name for c in calls])
            self.done.callback(None)
            return
        self._rounds += 1
        self._context.append({
            "role": "assistant", "content": "".join(self._text),
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls],
        })
        results = [self._call(c) for c in calls]
        DeferredList(results, consumeErrors=True).addCallback(self._round_over, calls).addErrback(self._failed)

    def _round_over(self, outcomes: list[tuple[bool, Any]], calls: list[ToolCall]) -> None:
        if self._cancelled:
            return
        for call, (_, outcome) in zip(calls, outcomes):
            self._context.append(
                {"role": "tool", "tool_call_id": call.id, "content": model_text(outcome.ok, outcome.result)}
            )
        self._ask()

    # -- calls ---------------------------------------------------------------

    def _call(self, call: ToolCall) -> Deferred[ToolOutcome]:
        """Run one call; fires with its outcome, never fails."""
        registry = self._o.registry
        try:
            arguments: Any = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        self._listener.tool_started(call, call.arguments if arguments is None else arguments)
        tool = registry.get(call.name)
        refusal = None
        if tool is None:
            refusal = f"unknown tool {call.name!r}; available: {', '.join(registry.names)}"
        elif arguments is None:
            refusal = "arguments are not valid JSON"
        elif not isinstance(arguments, dict):
            refusal = "arguments must be a JSON object"
        else:
            refusal = registry.invalid(call.name, arguments)
        if refusal is not None or tool is None:
            return succeed(self._report(call, ToolOutcome(False, refusal, 0.0, ToolStatus.REFUSED)))
        started = self._o.clock.seconds()
        running = maybeDeferred(tool.call, **arguments)
        if running.called:  # answered at once: no deadline or filler needed
            return running.addBoth(self._ended, call, started, None)
        timeout = self._o.config.timeout if tool.timeout is None else tool.timeout
        if timeout > 0:
            running.addTimeout(timeout, self._o.clock)
        self._running[running] = self._filler_timer()
        return running.addBoth(self._ended, call, started, running, timeout)

    def _ended(
        self, result: Any, call: ToolCall, started: float, running: Deferred[Any] | None, timeout: float = 0.0,
    ) -> ToolOutcome:
        timer = self._running.pop(running, None) if running is not None else None
        if timer is not None and timer.active():
            timer.cancel()
        seconds = self._o.clock.seconds() - started
        if isinstance(result, Failure):
            outcome = self._failure(call, result, seconds, timeout)
        else:
            try:
                value = orjson.loads(orjson.dumps(result))
            except TypeError:
                outcome = ToolOutcome(False, "the tool returned a value that is not JSON", seconds, ToolStatus.FAILED)
            else:
                outcome = ToolOutcome(True, _capped(value), seconds)
        return self._report(call, outcome)

    def _failure(self, call: ToolCall, failure: Failure, seconds: float, timeout: float) -> ToolOutcome:
        if failure.check(TimeoutError):
            return ToolOutcome(False, f"timed out after {timeout:g} s", seconds, ToolStatus.TIMEOUT)
        if failure.check(CancelledError):
            return ToolOutcome(False, "cancelled", seconds, ToolStatus.CANCELLED)
        if failure.check(ToolError):  # the tool's own answer: no traceback
            return ToolOutcome(False, _capped(f"failed: {failure.getErrorMessage()}"), seconds, ToolStatus.FAILED)
        _log.failure("Tool {name} failed", failure, name=call.name)
        return ToolOutcome(False, f"failed: {failure.getErrorMessage()}"[:300], seconds, ToolStatus.FAILED)

    def _report(self, call: ToolCall, outcome: ToolOutcome) -> ToolOutcome:
        self._listener.tool_finished(call, outcome)
        return outcome

    def _filler_timer(self) -> IDelayedCall | None:
        config = self._o.config
        if self._filler_said or not config.filler or config.filler_after_ms <= 0:
            return None
        return self._o.clock.callLater(config.filler_after_ms / 1000, self._filler)

    def _filler(self) -> None:
        if not self._filler_said and not self._cancelled:
            self._filler_said = True
            self._listener.filler_due(self._o.config.filler)

    # -- cancellation --------------------------------------------------------

    def _cancel(self, _: Deferred[None]) -> None:
        self._cancelled = True
        if self._asking is not None:
            self._asking.cancel()
        for running in list(self._running):
            running.cancel()  # each reports itself as cancelled


def _capped(value: Any) -> Any:
    """A result too long for a model message is cut, as text."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return value if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "…"
