"""Chat turns: validate a request, stream the model, store both sides, fan out.

Events are plain dicts in the reference's chat shape (``type``, ``data``,
``streaming``, ``chain_type``, ``message_id``, ``session_id``); the socket
layer adds ``"ct": "chat"``, the HTTP layer writes them as SSE.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from livetx.domain import Engines
from livetx.errors import ErrorCode, LivetxError, NoSuchSession, SessionForbidden
from livetx.live.frames import FrameError
from livetx.live.turn import describe_failure
from livetx.providers.base import Message
from livetx.store import ConversationStore, Part

_log = Logger()

Event = dict[str, Any]
Subscriber = Callable[[Event], None]

PART_TYPES = ("plain", "image", "file")


def _invalid(message: str) -> FrameError:
    return FrameError(ErrorCode.INVALID_MESSAGE_FORMAT, message)


def parse_parts(message: Any) -> list[Part]:
    """Check a ``message`` field: a list of parts, or a plain string for convenience."""
    if isinstance(message, str):
        message = [{"type": "plain", "text": message}]
    if not isinstance(message, list):
        raise _invalid("message must be list")
    if not message:
        raise _invalid("message must not be empty")
    parts: list[Part] = []
    for part in message:
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
            raise _invalid(f"each part must be an object with type in {list(PART_TYPES)}")
        if part["type"] == "plain":
            if not isinstance(part.get("text"), str):
                raise _invalid("a plain part needs text")
            parts.append({"type": "plain", "text": part["text"]})
        else:
            attachment = part.get("attachment_id")
            if not isinstance(attachment, str) or not attachment:
                raise _invalid(f"an {part['type']} part needs an attachment_id")
            parts.append({"type": part["type"], "attachment_id": attachment})
    if not any(p["type"] == "plain" and p["text"].strip() for p in parts):
        raise _invalid("message needs some text")
    return parts


def _optional_text(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is None or (isinstance(value, str) and value.strip()):
        return value.strip() if value else None
    raise _invalid(f"{name} must be a non-empty string")


@dataclass
class ChatRequest:
    """A checked ``send`` (socket) or ``POST /api/v1/chat`` (HTTP) body."""

    username: str
    parts: list[Part]
    session_id: str | None = None
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    streaming: bool = True

    @classmethod
    def parse(cls, username: str, body: dict[str, Any]) -> ChatRequest:
        streaming = body.get("enable_streaming", True)
        if not isinstance(streaming, bool):
            raise _invalid("enable_streaming must be true or false")
        return cls(
            username=username,
            parts=parse_parts(body.get("message")),
            session_id=_optional_text(body, "session_id"),
            message_id=_optional_text(body, "message_id") or str(uuid.uuid4()),
            streaming=streaming,
        )


class ChatTurn:
    """One running reply; ``cancel`` stops it and keeps what was produced."""

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.reply: list[str] = []
        self.done: Deferred[None] = Deferred()
        self.upstream: Deferred[Any] | None = None
        self.interrupted = False

    def cancel(self) -> None:
        self.interrupted = True
        if self.upstream is not None and not self.upstream.called:
            self.upstream.cancel()


class ChatService:
    """Runs chat turns and delivers their events to the session's subscribers."""

    def __init__(
        self, *, store: ConversationStore, engines: Engines, clock: IReactorTime,
    ) -> None:
        # The model and its settings come the one way live sessions get them too.
        self._vision = engines.vision
        self._store = store
        self._llm = engines.llm
        self._clock = clock
        self._system_prompt = engines.system_prompt
        self._history_turns = engines.history_turns
        self._subscribers: dict[str, set[Subscriber]] = {}

    # -- subscriptions -----------------------------------------------------

    def bind(self, username: str, session_id: str, listener: Subscriber) -> Deferred[None]:
        """Subscribe ``listener`` to a session of ``username`` (else NoSuchSession, SessionForbidden)."""
        d = self._store.owner(session_id)

        def check(owner: str | None) -> None:
            if owner is None:
                raise NoSuchSession()
            if owner != username:
                raise SessionForbidden()
            self._subscribers.setdefault(session_id, set()).add(listener)

        return d.addCallback(check)

    def unbind(self, listener: Subscriber) -> None:
        for session_id in [s for s, ls in self._subscribers.items() if listener in ls]:
            listeners = self._subscribers[session_id]
            listeners.discard(listener)
            if not listeners:
                del self._subscribers[session_id]

    def _publish(self, session_id: str, sender: Subscriber, event: Event) -> None:
        event["session_id"] = session_id
        sender(event)
        for listener in list(self._subscribers.get(session_id, ())):
            if listener is not sender:
                listener(event)

    # -- turns ---------------------------------------------------------------

    def start(self, request: ChatRequest, listener: Subscriber) -> ChatTurn:
        """Run a turn; its events go to ``listener`` and the session's subscribers."""
        turn = ChatTurn(request)
        d = self._store.open_session(request.username, request.session_id, "chat")
        d.addCallback(lambda session: self._run(turn, session.id, listener))
        d.addErrback(self._failed, turn, listener)
        d.addBoth(lambda _: turn.done.callback(None))
        return turn

    async def _content(self, request: ChatRequest) -> str | list[dict[str, Any]]:
        """The user message for the model; images go along when the model takes them."""
        text = "".join(p["text"] for p in request.parts if p["type"] == "plain")
        images: list[dict[str, Any]] = []
        for part in request.parts:
            if "attachment_id" not in part:
                continue
            record = await self._store.attachment(part["attachment_id"])
            if record is None or record.username != request.username:
                raise _invalid(f"unknown attachment {part['attachment_id']!r}")
            if self._vision and record.mime.startswith("image/"):
                data = base64.b64encode(await self._store.attachment_data(record.id)).decode("ascii")
                images.append({"type": "image_url", "image_url": {"url": f"data:{record.mime};base64,{data}"}})
        return [{"type": "text", "text": text}, *images] if images else text

    def _run(self, turn: ChatTurn, session_id: str, listener: Subscriber) -> Deferred[None]:
        return Deferred.fromCoroutine(self._turn(turn, session_id, listener))

    async def _turn(self, turn: ChatTurn, session_id: str, listener: Subscriber) -> None:
        request = turn.request
        content = await self._content(request)
        history = await self._store.messages(session_id, limit=2 * self._history_turns)
        await self._store.add_message(session_id, "user", request.parts, input_type="chat")
        context: list[Message] = []
        if self._system_prompt:
            context.append({"role": "system", "content": self._system_prompt})
        context += [{"role": m.role, "content": m.text} for m in history if m.text]
        context.append({"role": "user", "content": content})

        def publish(kind: str, data: Any, streaming: bool = False) -> None:
            self._publish(session_id, listener, {
                "type": kind, "data": data, "streaming": streaming, "chain_type": None,
                "message_id": request.message_id,
            })

        started = self._clock.seconds()
        first: list[float] = []

        def on_delta(text: str) -> None:
            if turn.interrupted:
                return
            if not first:
                first.append(self._clock.seconds() - started)
            turn.reply.append(text)
            if request.streaming:
                publish("plain", text, streaming=True)

        if not turn.interrupted:  # interrupted while the history loaded: no model call
            turn.upstream = self._llm.stream(context, on_delta)
            try:
                await turn.upstream
            except CancelledError:
                pass
        reply = "".join(turn.reply)
        if not request.streaming and not turn.interrupted:
            publish("plain", reply)
        publish("agent_stats", {
            "time_to_first_token": first[0] if first else None,
            "total_time": self._clock.seconds() - started,
            "model": self._llm.model,
            "interrupted": turn.interrupted,
        })
        saved = await self._store.add_message(
            session_id, "assistant", [{"type": "plain", "text": reply}], interrupted=turn.interrupted,
        )
        publish("message_saved", {"id": saved.id, "created_at": saved.created_at})
        publish("end", "")

    def _failed(self, failure: Failure, turn: ChatTurn, listener: Subscriber) -> None:
        if isinstance(failure.value, LivetxError):  # a refusal, or an engine that failed
            code, message = failure.value.code, failure.value.message
        else:
            _log.failure("Chat turn failed", failure)
            code, message = describe_failure(failure, ErrorCode.INTERNAL_ERROR)
        listener({"type": "error", "code": code, "data": message, "message_id": turn.request.message_id})
        listener({"type": "end", "data": "", "streaming": False, "message_id": turn.request.message_id})
