"""Chat turns: validate a request, stream the model, store both sides, fan out.

Events are plain dicts in the reference's chat shape (``type``, ``data``,
``streaming``, ``chain_type``, ``message_id``, ``session_id``); the socket
layer adds ``"ct": "chat"``, the HTTP layer writes them as SSE.
"""

from __future__ import annotations

import base64
import itertools
from functools import partial
from typing import Any, Callable, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

# The request and the turn have modules of their own; importable from here as before.
from livetx.chat.request import MAX_ID_LENGTH as MAX_ID_LENGTH
from livetx.chat.request import ChatRequest as ChatRequest
from livetx.chat.request import parse_parts as parse_parts
from livetx.chat.tools import ChatToolEvents, history_messages
from livetx.chat.turn import CHAT_TURN as CHAT_TURN
from livetx.chat.turn import ChatTurn as ChatTurn
from livetx.deferreds import waiter_for
from livetx.domain import Engines
from livetx.errors import ErrorCode, FrameError, LivetxError, NoSuchSession, describe_failure
from livetx.live.events import Ignore, Listeners, Outcome, TurnListener
from livetx.providers.base import Message, newest_within
from livetx.store import ConversationStore, StoredSession
from livetx.tools import offers_tools, stream_reply
from livetx.tools.record import reply_parts

_log = Logger()

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


#: A chat session: (owner, session id); ids are only unique among one user's sessions.
SessionKey = tuple[str, str]


class Relay(Protocol):
    """Carries a session's events to and from other processes (``livetx.cluster.relay``)."""

    def publish(self, key: SessionKey, event: Event) -> None: ...

    def subscribe(self, key: SessionKey, deliver: Subscriber) -> Deferred[Any]: ...

    def unsubscribe(self, key: SessionKey) -> None: ...


class ChatService:
    """Runs chat turns and delivers their events to the session's subscribers."""

    def __init__(
        self, *, store: ConversationStore, engines: Engines, clock: IReactorTime, relay: Relay | None = None,
    ) -> None:
        #: Other processes' sockets bound to this process's sessions, and the other way round.
        self._relay = relay
        #: Numbers the turns for their listeners.
        self._turn_ids = itertools.count(1)
        # The model and its settings come the one way live sessions get them too.
        self._vision = engines.vision
        self._store = store
        self._llm = engines.llm
        self._clock = clock
        self._system_prompt = engines.system_prompt
        self._history_turns = engines.history_turns
        self._context_bytes = engines.context_bytes
        #: Subscribers by (owner, session id): ids are only unique among one user's sessions.
        self._subscribers: dict[tuple[str, str], set[Subscriber]] = {}
        self._running: set[ChatTurn] = set()
        #: The server is stopping (set by the connection tracker).
        self.draining = False

    # -- subscriptions -----------------------------------------------------

    def bind(self, username: str, session_id: str, listener: Subscriber) -> Deferred[None]:
        """Subscribe ``listener`` to a session of ``username`` (else NoSuchSession)."""
        d = self._store.session(username, session_id)

        def check(session: StoredSession | None) -> Deferred[Any] | None:
            if session is None:  # ids are per user: another user's id names none of this one's
                raise NoSuchSession()
            key = (username, session_id)
            listeners = self._subscribers.setdefault(key, set())
            listeners.add(listener)
            if len(listeners) == 1 and self._relay is not None:  # bound once other processes know
                relayed = self._relay.subscribe(key, partial(self._deliver, key, None))
                return relayed.addErrback(lambda _: None)  # Redis away: bound in this process only
            return None

        return d.addCallback(check)

    def unbind(self, listener: Subscriber) -> None:
        for key in [k for k, ls in self._subscribers.items() if listener in ls]:
            listeners = self._subscribers[key]
            listeners.discard(listener)
            if not listeners:
                del self._subscribers[key]
                if self._relay is not None:
                    self._relay.unsubscribe(key)

    def _publish(self, username: str, session_id: str, sender: Subscriber, event: Event) -> None:
        event["session_id"] = session_id
        sender(event)
        key = (username, session_id)
        self._deliver(key, sender, event)
        if self._relay is not None:
            self._relay.publish(key, event)

    def _deliver(self, key: SessionKey, sender: Subscriber | None, event: Event) -> None:
        """Hand an event to the sockets bound to the session here, but its sender."""
        for listener in list(self._subscribers.get(key, ())):
            if listener is not sender:
                listener(event)

    # -- turns ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A chat turn runs (on a socket or over SSE)."""
        return bool(self._running)

    def turns_over(self) -> Deferred[None]:
        """Fires once the turns running now are over and stored."""
        return DeferredList([waiter_for(t.done) for t in self._running]).addCallback(lambda _: None)

    def stop_all(self) -> None:
        """The server stops: every running turn ends now, storing its text so far (marked interrupted)."""
        for turn in list(self._running):
            turn.stop()

    def start(self, request: ChatRequest, listener: Subscriber, report: TurnListener | None = None) -> ChatTurn:
        """Run a turn; its events go to ``listener`` and the session's subscribers, its life to ``report``."""
        # A listener that raises is logged and skipped, as for a live turn; it never breaks the turn.
        turn = ChatTurn(request, Ignore() if report is None else Listeners(report), self._clock.seconds())
        turn.listener.turn_started(next(self._turn_ids), "chat", None)
        self._running.add(turn)
        d = self._store.open_session(request.username, request.session_id, "chat")
        d.addCallback(lambda session: self._run(turn, session.id, listener))
        d.addErrback(self._failed, turn, listener)
        d.addBoth(lambda _: self._over(turn))
        return turn

    def _over(self, turn: ChatTurn) -> None:
        self._running.discard(turn)
        CHAT_TURN.fire(turn, "end")
        turn.done.callback(None)

    async def _content(self, request: ChatRequest) -> str | list[dict[str, Any]]:
        """The user message for the model; images go along when the model takes them."""
        text = "".join(p["text"] for p in request.parts if p["type"] == "plain")
        images: list[dict[str, Any]] = []
        for part in request.parts:
            if "attachment_id" not in part:
                continue
            record = await self._store.attachment(part["attachment_id"])
            if record is None or record.username != request.username:
                raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, f"unknown attachment {part['attachment_id']!r}")
            if self._vision and record.mime.startswith("image/"):
                data = base64.b64encode(await self._store.attachment_data(record.id)).decode("ascii")
                images.append({"type": "image_url", "image_url": {"url": f"data:{record.mime};base64,{data}"}})
        return [{"type": "text", "text": text}, *images] if images else text

    def _run(self, turn: ChatTurn, session_id: str, listener: Subscriber) -> Deferred[None]:
        turn.session_id = session_id
        return Deferred.fromCoroutine(self._turn(turn, session_id, listener))

    async def _turn(self, turn: ChatTurn, session_id: str, listener: Subscriber) -> None:
        """Stream the reply, then store the question and the reply in one transaction, then ``end``."""
        request = turn.request
        content = await self._content(request)
        history = await self._store.messages(request.username, session_id, limit=2 * self._history_turns,
                                             max_bytes=self._context_bytes)
        context: list[Message] = []
        if self._system_prompt:
            context.append({"role": "system", "content": self._system_prompt})
        earlier = [history_messages(stored) for stored in history]
        for messages in earlier[len(earlier) - newest_within(earlier, self._context_bytes):]:
            context += messages
        context.append({"role": "user", "content": content})

        def publish(kind: str, data: Any, streaming: bool = False, **extra: Any) -> None:
            self._publish(request.username, session_id, listener, {
                "type": kind, "data": data, "streaming": streaming, "chain_type": None,
                "message_id": request.message_id, **extra,
            })

        if request.streaming:
            turn.send_deltas(lambda text: publish("plain", text, streaming=True))

        def publish_in_order(kind: str, data: Any, chain_type: str) -> None:
            turn.flush()  # the deltas that waited come first
            publish(kind, data, chain_type=chain_type)

        tools = None
        if offers_tools(self._llm):
            tools = ChatToolEvents(self._clock, turn.reply, publish_in_order, turn.listener)

        started = self._clock.seconds()
        first: list[float] = []

        def on_delta(text: str) -> None:
            if not turn.running:
                return
            if not first:
                first.append(self._clock.seconds() - started)
                turn.listener.first_delta(self._clock.seconds() - turn.started)
            turn.add(text)

        failure: Failure | None = None
        if turn.running:  # interrupted while the history loaded: no model call
            turn.listener.provider_called("llm", self._llm.model)
            turn.upstream = stream_reply(self._llm, context, on_delta, tools)
            try:
                await turn.upstream
                turn.listener.provider_timing(
                    "llm", self._llm.model, first[0] if first else None, self._clock.seconds() - started)
            except CancelledError:
                pass
            except Exception:
                failure = Failure()
                CHAT_TURN.fire(turn, "fail")
        turn.flush()  # what is left is sent now (past the stream's limit it is cut, not buffered)
        reply = "".join(turn.reply)
        if not request.streaming and turn.running:
            publish("plain", reply)
        # Stored as a live turn's is: a turn the server stopped reads as interrupted.
        outcome = Outcome.INTERRUPTED if turn.outcome is Outcome.DROPPED else turn.outcome
        metrics: dict[str, Any] = {"outcome": outcome.value}
        if tools is not None and tools.trail:
            metrics.update(tools.trail.metrics())
        error: tuple[ErrorCode, str] | None = None
        if failure is not None:
            error = self._describe(failure)
            metrics["error"] = error[0]
        else:
            publish("agent_stats", {
                "time_to_first_token": first[0] if first else None,
                "total_time": self._clock.seconds() - started,
                "model": self._llm.model,
                "interrupted": turn.interrupted,
                **{k: v for k, v in metrics.items() if k.startswith("tool")},
            })
        steps = tools.trail.steps if tools is not None else ()
        _, saved = await self._store.add_turn(
            request.username, session_id, request.parts, reply_parts(reply, steps),
            interrupted=turn.interrupted, input_type="chat", metrics=metrics,
        )
        publish("message_saved", {"id": saved.id, "created_at": saved.created_at})
        if turn.outcome is Outcome.DROPPED:  # the server stopped it
            error = (ErrorCode.PROCESSING_ERROR, "server is shutting down; the reply was cut")
        if error is not None:
            turn.error(error[0], failure)
            publish("error", error[1], code=error[0])
        turn.ended(self._clock.seconds(), metrics)
        publish("end", "")

    def _describe(self, failure: Failure) -> tuple[ErrorCode, str]:
        """An error event's code and text (bugs are logged, and say nothing more)."""
        if isinstance(failure.value, LivetxError):  # a refusal, or an engine that failed
            return failure.value.code, failure.value.message
        _log.failure("Chat turn failed", failure)
        return describe_failure(failure, ErrorCode.INTERNAL_ERROR)

    def _failed(self, failure: Failure, turn: ChatTurn, listener: Subscriber) -> None:
        """The turn failed before its model was called (no session, a bad attachment): nothing is stored."""
        code, message = self._describe(failure)
        turn.error(code, failure)
        turn.ended(self._clock.seconds(), {"outcome": Outcome.FAILED.value, "error": code}, Outcome.FAILED)
        base = {"message_id": turn.request.message_id, "session_id": turn.session_id}
        listener({"type": "error", "code": code, "data": message, **base})
        listener({"type": "end", "data": "", "streaming": False, **base})
