"""One socket's side of resume (docs/protocol-extensions.md#resume).

Sits on the socket's way out: once the client opts in (``?resume=1`` or
``session_update`` with ``resume: true``, both confirmed by a
``session_updated`` frame), every frame it is sent goes through the
journal's :class:`~livetx.live.journal.Writer` and carries ``seq``. A socket
that drops while a turn runs lets the turn go on into the journal; one that
starts with ``resume`` gets what it missed and the rest of that turn, routes
its ``interrupt`` to whichever process runs the turn, and takes the journal
over once the turn has ended. When a turn is over is told by the turns
themselves (their ``turn_over`` Deferreds), never read back from frames.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from livetx.errors import ErrorCode
from livetx.live.frames import Frame, FrameError
from livetx.live.journal import Journals, Tail, Writer

Send = Callable[[Frame | bytes], None]

#: Frames that start work; refused while a resumed turn still runs elsewhere.
_STARTS = frozenset({"text_input", "start_speaking", "speaking_part", "end_speaking", "send"})


class Resumable:
    """Numbering, resuming and outliving a drop, for one socket."""

    def __init__(self, journals: Journals, username: str, send: Send,
                 error: Callable[[ErrorCode, str], Frame], heard: bool = False, quota: str | None = None) -> None:
        self._journals = journals
        self._username = username
        #: Whose byte budget the journal counts this socket's frames against (its API key, or its user).
        self._quota = quota or username
        self._send = send
        self._error = error
        self.writer: Writer | None = None
        self.tail: Tail | None = None
        #: The socket received a frame before this one (so ``resume`` is no longer allowed).
        self._heard = heard

    def out(self, frame: Frame | bytes) -> None:
        """The session's ``emit``: number the frame when resume is on, then send it."""
        if isinstance(frame, dict):
            if frame.get("t") == "session_updated":
                frame = self._settings_changed(frame)
            if self.writer is not None:
                frame = self.writer.append(frame)
        self._send(frame)

    def _settings_changed(self, frame: Frame) -> Frame:
        wanted = bool(frame.get("data", {}).get("resume"))
        if wanted and self.writer is None and self.tail is None:
            self.writer = self._journals.open(self._username, quota=self._quota)
        elif not wanted and self.writer is not None:
            self.writer.release()
            self.writer = None
        return {**frame, "session_id": self.writer.session_id} if self.writer is not None else frame

    def receive(self, frame: Frame) -> bool:
        """Look at a client frame first; True when it was handled here."""
        first, self._heard = not self._heard, True
        kind = frame.get("t")
        if kind == "resume":
            self._resume(frame, first)
            return True
        if self.tail is None:
            return False
        if kind == "interrupt":
            self.tail.interrupt()
            return True
        if kind in _STARTS:
            self._send(self._error(ErrorCode.PROCESSING_ERROR, "Session is busy: the resumed turn is still running"))
            return True
        return False

    def _resume(self, frame: Frame, first: bool) -> None:
        # First, even on a socket opened with ``?resume=1`` (a reconnecting client
        # opens the URL it had): its fresh journal holds only ``session_updated``.
        session_id, seq = frame.get("session_id"), frame.get("seq")
        if not first:
            self._send(self._error(ErrorCode.INVALID_STATE, "resume must be the first frame on a socket"))
            return
        if not isinstance(session_id, str) or not session_id:
            self._send(self._error(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'session_id' must be a non-empty string"))
            return
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            self._send(self._error(ErrorCode.INVALID_MESSAGE_FORMAT, "field 'seq' must be an integer, 0 or more"))
            return
        d = self._journals.resume(session_id, self._username, seq, self._send)
        d.addCallbacks(self._resumed, self._refused, callbackArgs=(session_id,))

    def _resumed(self, tail: Tail, session_id: str) -> None:
        if self.writer is not None:  # the fresh session of ``?resume=1``: the resumed one replaces it
            self.writer.discard()
            self.writer = None
        self.tail = tail
        tail.done.addCallback(self._take_over, tail, session_id)

    def _take_over(self, last: int, tail: Tail, session_id: str) -> None:
        """The resumed turn is over: this socket writes on under the same id."""
        if self.tail is tail:
            self.tail = None
            self.writer = self._journals.open(self._username, session_id, last, self._quota)
            if tail.lost:  # the process running it was killed: say so, and end the turn
                self.out(self._error(ErrorCode.INTERNAL_ERROR, "the server running this turn stopped; "
                                     "the stored history has what was saved"))
                self.out({"t": "end"})

    def _refused(self, failure: Failure) -> None:
        failure.trap(FrameError)
        assert isinstance(failure.value, FrameError)
        self._send(self._error(failure.value.code, failure.value.message))

    def closed(
        self, turn_over: Deferred[None] | None, interrupt: Callable[[], None], finish: Callable[[], None]
    ) -> bool:
        """The socket closed. True when its running turn goes on into the journal.

        ``turn_over`` fires once the running turn (None: there is none) has
        sent its last frame and is stored; ``finish`` is called then, and
        the writer lets go right after it. ``interrupt`` is what a resumed
        socket's ``interrupt`` does meanwhile.
        """
        if self.tail is not None:
            self.tail.cancel()
            self.tail = None
        writer = self.writer
        if writer is None:
            return False
        if turn_over is None:
            writer.release()
            self.writer = None
            return False
        writer.detach(interrupt)

        def over() -> None:
            finish()
            writer.release()
            self.writer = None

        turn_over.addCallback(lambda _: over())
        return True

