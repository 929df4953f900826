"""What a voice turn is waiting for, on stderr, until the reply starts to stream.

A voice turn can wait seconds with nothing to show: the audio goes up, the
server transcribes it, a model may load for the first turn. On a terminal a
spinner line says which of these it waits for and for how long, and is wiped
before anything else is printed; when stderr is a file or a pipe, one plain
line says the same once, since a log has no use for a spinner's frames.
"""

from __future__ import annotations

from typing import Any, TextIO

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall

SPINNER = "|/-\\"
#: Seconds between spinner frames.
TICK = 0.1
CLEAR = "\r\x1b[K"
#: Said once when a voice turn waits this long for its transcript, and why it may.
SLOW_TRANSCRIPT = (
    2.0, "a server's first voice turn also loads its speech model: a second or more, once per server process")


class Progress:
    """Shows the waiting stage of one turn; :meth:`frame` moves it on, :meth:`stop` wipes it."""

    def __init__(self, clock: Any, err: TextIO, what: str, slow: tuple[float, str] | None = None) -> None:
        """``slow``: after that many seconds still at ``what``, say the note (once), the likely reason."""
        self._clock, self._err = clock, err
        self._tty = bool(getattr(err, "isatty", lambda: False)())
        self._stage = what
        self._started = clock.seconds()
        self._ticks = 0
        self._loop: LoopingCall | None = None
        self._slow: IDelayedCall | None = None
        if slow is not None:
            self._slow = clock.callLater(slow[0], self._note, slow[1])
        if self._tty:
            self._spin(now=True)
        else:
            err.write(f"livetx: {what}; waiting for the reply\n")
            err.flush()

    def _note(self, note: str) -> None:
        self._slow = None
        if self._tty:
            self._stage = f"{self._stage} ({note})"
        else:
            self._err.write(f"livetx: still {self._stage.rpartition(', ')[2]} after "
                            f"{self._clock.seconds() - self._started:.1f} s: {note}\n")
            self._err.flush()

    def _waited(self) -> None:
        """The first stage is over: its note is no longer due."""
        if self._slow is not None and self._slow.active():
            self._slow.cancel()
        self._slow = None

    def frame(self, frame: dict[str, Any]) -> None:
        """Called before a frame is shown: the reply starting, or an error, ends the wait."""
        kind = frame.get("t")
        if kind == "user_msg":
            self.stop()  # "heard: ..." is printed next; the wait for the model goes on
            self._stage = "waiting for the reply"
            if self._tty:
                self._spin(now=False)  # after "heard: ..." has been printed
        elif kind in ("bot_delta_chunk", "bot_msg", "response", "end", "error", "stop_play"):
            self.stop()

    def _spin(self, now: bool) -> None:
        self._loop = LoopingCall(self._draw)
        self._loop.clock = self._clock
        self._loop.start(TICK, now=now)

    def _draw(self) -> None:
        spin = SPINNER[self._ticks % len(SPINNER)]
        self._ticks += 1
        elapsed = self._clock.seconds() - self._started
        self._err.write(f"{CLEAR}{spin} {self._stage} {elapsed:.1f} s")
        self._err.flush()

    def stop(self) -> None:
        """Wipe the spinner line (on a terminal) so what comes next starts at the left."""
        self._waited()
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
            self._err.write(CLEAR)
            self._err.flush()
