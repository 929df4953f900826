"""One phone call: a carrier's events drive a talk-mode :class:`LiveSession`.

No second pipeline: the call feeds the session exactly what a Live API
socket in talk mode would (``session_update`` to server turn detection,
then the caller's audio as ``speaking_part``), and reads the session's
outgoing frames as a client would, answering them in the carrier's terms:

- each sentence's audio (``response``) becomes the carrier's ``media``,
  followed by a ``mark`` naming the turn and the sentence;
- barge-in (``speech_started`` while reply audio is still unplayed, or
  ``stop_play``) sends ``clear``, and once the turn is stored the reply is
  cut (``truncate``) to the sentences whose marks came back before the
  clear, so the history holds what the caller heard, not what was written;
- ``end`` after the model called ``end_call`` sends a last mark and hangs
  up when it comes back: the goodbye is heard to the end.

The caller hanging up (``stop``, or the socket dropping) stops a running
turn as a dropped Live API socket does, cuts the reply to what was heard,
and closes the session. A frame that breaks the carrier's rules is refused,
logged and counted through the host, and the call goes on where it can.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from livetx.audio import duration_ms, read_wav
from livetx.errors import ErrorCode
from livetx.live.machine import Table
from livetx.live.session import LiveSession
from livetx.telephony import Carrier, CarrierError, Connected, Dtmf, Event, Frame, Ignored, Mark, Media, Start, Stop
from livetx.telephony.codec import Inbound
from livetx.tools import Tool

_log = Logger()

#: The mark sent after the goodbye: the call hangs up when it comes back.
GOODBYE = "livetx-goodbye"
#: After the goodbye's mark is sent, hang up at the latest after the unplayed audio plus this.
GOODBYE_MARGIN_MS = 3000

#: A call's life: ``waiting`` for the carrier's ``start``, ``live``, then ``over`` (hung up, or refused).
CALL = Table("call", ["waiting", "live", "over"], [
    {"trigger": "begin", "source": "waiting", "dest": "live"},
    {"trigger": "end", "source": ["waiting", "live"], "dest": "over"},
], initial="waiting")


class CallHost(Protocol):
    """What a call needs from its socket."""

    def send_frame(self, frame: Frame | bytes) -> None:
        """Send one frame to the carrier (bytes: a binary message)."""

    def hang_up(self, code: int, reason: str) -> None:
        """Close the socket (which ends a ``<Connect><Stream>`` call)."""

    def open_session(self, start: Start, end_call: Tool) -> LiveSession | None:
        """The call's session, its user found from ``start``; None refuses the call (the host closed it)."""

    def refused(self, code: ErrorCode, message: str) -> None:
        """A carrier frame was refused: log and count it."""

    def session_error(self, frame: Frame) -> None:
        """The session sent an error frame (a provider failed…): log and count it."""


class Playback:
    """The reply audio of one turn as sent to the carrier, and how much of it came back as played."""

    __slots__ = ("turn", "durations", "played", "cleared")

    def __init__(self, turn: int) -> None:
        self.turn = turn
        #: Per sentence sent, how long its audio plays (ms), as the session measures it.
        self.durations: list[float] = []
        #: Sentences whose marks came back while the audio still counted.
        self.played = 0
        self.cleared = False

    @property
    def unplayed(self) -> bool:
        return not self.cleared and self.played < len(self.durations)

    def heard_ms(self) -> float:
        """Playback time up to the last acknowledged mark, summed as :meth:`TurnResult.heard` sums it."""
        played = 0.0
        for duration in self.durations[: self.played]:
            played += duration
        return played

    def mark_name(self) -> str:
        return f"livetx-{self.turn}-{len(self.durations)}"


class Pacer:
    """The way out to the carrier, holding reply audio back while the carrier holds ``ahead_ms`` unplayed.

    Twilio takes a whole reply at once; Vonage buffers about 20 s and drops
    the rest, so a long reply is sent as it plays, never more than
    ``ahead_ms`` ahead. Frames keep their order (a mark waits behind the
    audio before it).
    """

    def __init__(self, send: Callable[[Frame | bytes], None], clock: IReactorTime, ahead_ms: int | None) -> None:
        self._send = send
        self._clock = clock
        self._ahead = None if ahead_ms is None else ahead_ms / 1000
        self._held: deque[tuple[Frame | bytes, float]] = deque()
        #: When the audio sent so far ends playing, at the earliest.
        self._playing_until = 0.0
        self._timer: IDelayedCall | None = None

    def send(self, frame: Frame | bytes, seconds: float = 0.0) -> None:
        """Send ``frame`` (``seconds`` of audio) once the carrier has room for it."""
        if self._ahead is None:
            self._send(frame)
            return
        self._held.append((frame, seconds))
        self._pump()

    def _pump(self) -> None:
        self._timer = None
        assert self._ahead is not None
        while self._held:
            now = self._clock.seconds()
            wait = self._playing_until - now - self._ahead
            if wait > 0 and self._held[0][1] > 0:  # a mark takes no room: it goes once the audio before it has
                self._timer = self._clock.callLater(wait, self._pump)
                return
            frame, seconds = self._held.popleft()
            self._playing_until = max(self._playing_until, now) + seconds
            self._send(frame)

    def drop(self) -> None:
        """What is held is never sent (``clear`` dropped what the carrier held; or the call is over)."""
        self._held.clear()
        self._playing_until = 0.0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class PhoneCall:
    """A call's life: ``connected``, ``start``, media and marks, then ``stop`` (or a dropped socket)."""

    def __init__(
        self, *, carrier: Carrier, host: CallHost, clock: IReactorTime, dtmf: str = "text",
        dtmf_wait: float = 1.0, session_frames: tuple[Frame, ...] = (),
    ) -> None:
        self.carrier = carrier
        self._host = host
        self._clock = clock
        self._dtmf = dtmf
        self._dtmf_wait = dtmf_wait
        #: ``session_update`` frames sent to a new session (talk mode and its settings).
        self._session_frames = session_frames
        self.state = CALL.initial
        self.start: Start | None = None
        self.session: LiveSession | None = None
        self._inbound: Inbound | None = None
        self._sequence = -1
        self._playback: Playback | None = None
        self._digits: list[str] = []
        self._digit_timer: IDelayedCall | None = None
        #: The model called ``end_call``: hang up once the turn's audio has played.
        self.ending = False
        self._goodbye_timer: IDelayedCall | None = None
        self._out = Pacer(host.send_frame, clock, carrier.ahead_ms)
        #: Fires once the call is over and what was heard is stored.
        self.finished: Deferred[None] = Deferred()

    # -- carrier frames in ----------------------------------------------------

    def receive(self, frame: Frame | bytes) -> None:
        """One decoded carrier frame, or a binary message; refused frames are reported, never raised."""
        try:
            if isinstance(frame, bytes):
                self._handle(self.carrier.binary(frame))
            else:
                self._order(frame)
                self._handle(self.carrier.parse(frame))
        except CarrierError as e:
            self._host.refused(e.code, e.message)
            if e.fatal and self.state != "over":
                self._host.hang_up(1003, e.message)

    def _order(self, frame: Frame) -> None:
        """Carriers number their frames; one that comes after a later one is refused."""
        field = self.carrier.sequence_field
        raw = None if field is None else frame.get(field)
        if raw is None:
            return
        try:
            sequence = int(raw)
        except (TypeError, ValueError):
            raise CarrierError(ErrorCode.INVALID_MESSAGE_FORMAT, f"sequence number {raw!r} is not a number") from None
        if sequence <= self._sequence:
            raise CarrierError(ErrorCode.INVALID_STATE,
                               f"frame {sequence} arrived after frame {self._sequence}: out of order")
        self._sequence = sequence

    def _handle(self, event: Event) -> None:
        if isinstance(event, Connected):
            if self.state != "waiting":
                raise CarrierError(ErrorCode.INVALID_STATE, "'connected' after the stream started")
            return
        if isinstance(event, Start):
            self._begin(event)
            return
        if self.state == "waiting":
            raise CarrierError(ErrorCode.INVALID_STATE, f"{type(event).__name__.lower()!r} before 'start'")
        if self.state == "over":
            return  # the call is over; late frames change nothing
        assert self.start is not None
        if event.stream_id is not None and event.stream_id != self.start.stream_id:
            raise CarrierError(ErrorCode.INVALID_MESSAGE_FORMAT,
                               f"stream id {event.stream_id!r} is not this call's {self.start.stream_id!r}")
        if isinstance(event, Media):
            self._hear(event.payload)
        elif isinstance(event, Mark):
            self._played(event.name)
        elif isinstance(event, Dtmf):
            self._pressed(event.digit)
        elif isinstance(event, Stop):
            self.hung_up()
        elif isinstance(event, Ignored):
            pass

    def _begin(self, start: Start) -> None:
        if self.state != "waiting":
            raise CarrierError(ErrorCode.INVALID_STATE, "a second 'start'")
        session = self._host.open_session(start, self.end_call_tool())
        if session is None:
            CALL.fire(self, "end")
            self.finished.callback(None)
            return
        CALL.fire(self, "begin")
        self.start, self.session = start, session
        self._inbound = Inbound(start.audio)
        for frame in self._session_frames:
            session.receive(frame)

    def _hear(self, payload: bytes) -> None:
        assert self._inbound is not None and self.session is not None
        if len(payload) % (2 if self._inbound.format.encoding == "l16" else 1):
            raise CarrierError(ErrorCode.INVALID_AUDIO, "16-bit audio with an odd number of bytes")
        pcm = self._inbound.feed(payload)
        if pcm:
            self.session.receive_audio(pcm)

    # -- DTMF -----------------------------------------------------------------

    def _pressed(self, digit: str) -> None:
        if self._dtmf == "ignore":
            return
        if digit not in "0123456789*#ABCD" or len(digit) != 1:
            raise CarrierError(ErrorCode.INVALID_MESSAGE_FORMAT, f"{digit!r} is not a DTMF digit")
        # A key press interrupts the reply at once; the digits typed together make one turn.
        self._barge_in()
        assert self.session is not None
        if self.session.state == "processing":
            self.session.receive({"t": "interrupt"})
        self._digits.append(digit)
        if self._digit_timer is not None and self._digit_timer.active():
            self._digit_timer.cancel()
        self._digit_timer = self._clock.callLater(self._dtmf_wait, self._digits_typed)

    def _digits_typed(self) -> None:
        digits, self._digits = " ".join(self._digits), []
        if self.session is not None and self.state == "live":
            self.session.receive({"t": "text_input", "text": f"(The caller pressed {digits} on the phone's keypad.)"})

    # -- session frames out ---------------------------------------------------

    def from_session(self, frame: Frame | bytes) -> None:
        """The session's way out (its ``emit``): answered in the carrier's frames."""
        if isinstance(frame, bytes):
            return  # binary audio transport is never asked for
        kind = frame.get("t")
        if kind == "response":
            self._speak(frame)
        elif kind in ("speech_started", "stop_play"):
            self._barge_in()
        elif kind == "end":
            if self.ending:
                self._goodbye()
        elif kind == "error":
            self._host.session_error(frame)

    def _speak(self, frame: Frame) -> None:
        if self.state != "live":
            return
        assert self.start is not None
        turn = frame.get("turn", 0)
        if self._playback is None or self._playback.turn != turn:
            self._playback = Playback(turn)
        playback = self._playback
        wav = base64.b64decode(frame["data"])
        try:
            pcm, rate = read_wav(wav)
        except ValueError:
            self._host.session_error({"t": "error", "code": ErrorCode.TTS_ERROR,
                                      "data": "a phone call needs WAV speech ([tts] response_format = \"wav\")"})
            return
        audio = self.start.audio
        wire = audio.to_wire(pcm, rate)
        step = int(self.carrier.piece_ms * audio.bytes_per_ms) & ~1
        for i in range(0, len(wire), step):
            piece = wire[i : i + step]
            seconds = len(piece) / audio.bytes_per_ms / 1000
            self._out.send(self.carrier.media(self.start.stream_id, piece, audio), seconds)
        name = playback.mark_name()
        playback.durations.append(duration_ms(wav) or 0.0)
        self._out.send(self.carrier.mark(self.start.stream_id, name))

    def _played(self, name: str) -> None:
        if name == GOODBYE:
            self._host.hang_up(1000, "Call ended")
            return
        playback = self._playback
        if playback is None:
            return
        # Marks the carrier returns for cleared audio come after the cut was taken: they change nothing.
        prefix = f"livetx-{playback.turn}-"
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            playback.played = max(playback.played, int(name[len(prefix):]) + 1)

    def _barge_in(self) -> Deferred[None]:
        """The caller spoke over the reply: drop what the carrier holds, and cut the stored reply to what was heard."""
        playback = self._playback
        if playback is None or not playback.unplayed:
            return succeed(None)
        playback.cleared = True
        assert self.start is not None and self.session is not None
        self._out.drop()
        if self.state == "live":
            self._host.send_frame(self.carrier.clear(self.start.stream_id))
        session, heard = self.session, playback.heard_ms()
        truncate = {"t": "truncate", "turn": playback.turn, "audio_end_ms": heard}
        # The turn may still be unwinding: cut it once it is stored.
        return session.turn_over().addCallback(lambda _: session.receive(truncate))

    # -- ending the call -----------------------------------------------------

    def end_call_tool(self) -> Tool:
        """The built-in ``end_call`` tool, bound to this call."""

        def end_call() -> dict[str, Any]:
            self.ending = True
            return {"ok": True, "note": "The call ends once your reply has been spoken. Say goodbye now."}

        return Tool(
            name="end_call",
            description="Hang up this phone call. Call it when the caller says goodbye or asks to end "
                        "the call; your reply in the same turn is spoken in full before the line closes.",
            parameters={"type": "object", "properties": {}, "additionalProperties": False},
            call=end_call,
        )

    def _goodbye(self) -> None:
        """The last turn is over: hang up once its audio has played (the carrier echoes the last mark)."""
        assert self.start is not None
        self._out.send(self.carrier.mark(self.start.stream_id, GOODBYE))
        playback = self._playback
        unplayed = 0.0 if playback is None else sum(playback.durations[playback.played :])
        self._goodbye_timer = self._clock.callLater((unplayed + GOODBYE_MARGIN_MS) / 1000,
                                                    self._host.hang_up, 1000, "Call ended")

    def hung_up(self) -> Deferred[None]:
        """The call is over (``stop``, or the socket closed): stop the turn, keep what was heard, let go."""
        if self.state == "over":
            return self.finished
        CALL.fire(self, "end")
        for timer in (self._digit_timer, self._goodbye_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._out.drop()
        session = self.session
        if session is None:
            self.finished.callback(None)
            return self.finished
        session.stop_listening()
        cut = self._barge_in()
        session.stop()  # a running turn ends as dropped, stored with its text so far
        done = session.turn_over().addCallback(lambda _: cut).addCallback(lambda _: session.close())
        done.addBoth(lambda _: self.finished.callback(None))
        return self.finished


def session_frames(settings: dict[str, Any]) -> tuple[Frame, ...]:
    """What a call's session is told first: talk mode, with the configured turn-taking settings."""
    return ({"t": "session_update", "turn_detection": "server", **settings},)

