"""Chat mode on one socket: ``send``, ``bind`` and ``interrupt`` frames.

One turn at a time per socket, like live mode; bound sessions deliver every
event of their turns, whoever started them.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from livetx.chat.service import MAX_ID_LENGTH, ChatRequest, ChatService, ChatTurn, Event
from livetx.deferreds import waiter_for
from livetx.errors import ErrorCode, NoSuchSession, SessionForbidden
from livetx.live import frames
from livetx.live.events import Ignore, Listeners, TurnListener
from livetx.live.frames import Frame, FrameError

Emit = Callable[[Frame], None]


def envelope(event: Event) -> Frame:
    """A chat event as a socket frame; errors keep the reference's ``t`` key."""
    if event.get("type") == "error":
        frame = frames.chat_error(event["code"], event["data"])
        for key in ("session_id", "message_id"):  # a turn's error names its session, as its other events do
            if event.get(key) is not None:
                frame[key] = event[key]
        return frame
    return {"ct": "chat", **event}


class ChatChannel:
    """The chat side of one connection."""

    def __init__(self, service: ChatService, username: str, emit: Emit, listener: TurnListener | None = None) -> None:
        self._service = service
        self._username = username
        self._emit = emit
        #: Told of this socket's chat turns and of the error frames it sends.
        self._listener: TurnListener = Ignore() if listener is None else Listeners(listener)
        self._turn: ChatTurn | None = None

    @property
    def busy(self) -> bool:
        """A chat turn is running (the server lets it finish before stopping)."""
        return self._turn is not None

    def turn_over(self) -> Deferred[None]:
        """Fires once no chat turn of this socket runs (at once if none does)."""
        return succeed(None) if self._turn is None else waiter_for(self._turn.done)

    def _deliver(self, event: Event) -> None:
        self._emit(envelope(event))

    def _error(self, code: ErrorCode, message: str) -> None:
        self._listener.error_sent(code)
        self._deliver({"type": "error", "code": code, "data": message})

    def receive(self, frame: Frame) -> None:
        kind = frame.get("t")
        handlers = {"send": self._send, "bind": self._bind, "interrupt": self._interrupt}
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._error(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown chat message type {kind!r}")
            return
        try:
            handler(frame)
        except FrameError as e:
            self._error(e.code, e.message)

    def _send(self, frame: Frame) -> None:
        if self._turn is not None:
            raise FrameError(ErrorCode.PROCESSING_ERROR, "Session is busy")
        turn = self._service.start(ChatRequest.parse(self._username, frame), self._deliver, self._listener)
        self._turn = turn
        turn.done.addCallback(self._finished, turn)

    def _finished(self, _: None, turn: ChatTurn) -> None:
        if self._turn is turn:
            self._turn = None

    def _bind(self, frame: Frame) -> None:
        session_id = frame.get("session_id")
        if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_ID_LENGTH:
            raise FrameError(ErrorCode.INVALID_MESSAGE_FORMAT,
                             f"session_id must be a non-empty string of at most {MAX_ID_LENGTH} characters")

        def bound(_: Any) -> None:
            self._deliver({"type": "session_bound", "session_id": session_id,
                           "message_id": f"ws_sub_{uuid.uuid4().hex[:12]}"})

        def refused(failure: Failure) -> None:
            failure.trap(SessionForbidden, NoSuchSession)
            self._error(ErrorCode.FORBIDDEN, "no such session for this user")

        self._service.bind(self._username, session_id, self._deliver).addCallbacks(bound, refused)

    def _interrupt(self, frame: Frame) -> None:
        if self._turn is not None:
            self._turn.cancel()

    def close(self) -> None:
        """The socket is gone: stop listening; a running turn finishes and is stored."""
        self._emit = _discard
        self._service.unbind(self._deliver)


def _discard(frame: Frame) -> None:
    """Where events go once the socket has closed."""
