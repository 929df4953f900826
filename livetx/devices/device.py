"""One xiaozhi board's conversation: its JSON and Opus drive a :class:`LiveSession`, as a phone call does.

No second pipeline, the same seam as :mod:`livetx.telephony.call`: the
device's messages become the frames a Live API client would send, and
the session's frames are answered in the device's terms.

In (device → server):

- ``hello`` opens the session (the socket answers with its own ``hello``);
- ``listen`` ``start`` in ``auto`` or ``realtime`` mode switches the
  session to server turn detection (``session_update``) and feeds it the
  decoded microphone audio; in ``manual`` mode (push to talk) ``start`` and
  ``stop`` are ``start_speaking`` and ``end_speaking``;
- ``realtime`` keeps feeding the microphone while the reply plays, so the
  server's detector hears a barge-in (``auto`` devices stop sending then);
- ``abort`` is ``interrupt``; ``listen`` ``detect`` (the wake word) stops
  a reply still playing, as the firmware also sends ``abort``, and drops
  the speech heard so far (the wake word itself, or talk before it); its
  ``text`` is answered as a question unless it is one of the wake words.

Out (server → device): ``stt`` with the transcript (``user_msg``); for a
reply ``llm`` (an emotion for the screen, :mod:`~livetx.devices.emotion`),
``tts`` ``start``, then per
sentence ``sentence_start`` with its text (without emoji, as the reference
sends it) and its Opus packets, then
``tts`` ``stop`` once the last packet is out, or at once on barge-in.

Packets go out paced at playback speed with :data:`AHEAD_MS` queued ahead,
because the firmware drops packets past its decode queue (a few seconds),
and a reply cut by barge-in must not be sitting in the device already.
"""

from __future__ import annotations

import base64
import uuid
from collections import deque
from typing import Any, Iterable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from livetx.audio import read_wav
from livetx.devices import framing
from livetx.devices.emotion import feeling
from livetx.devices.opus import FRAME_MS, Decoder, Encoder, OpusError
from livetx.errors import CloseCode, ErrorCode
from livetx.live.machine import Table
from livetx.live.segmenter import without_emoji
from livetx.live.session import LiveSession

_log = Logger()

Frame = dict[str, Any]

#: Reply audio queued in the device ahead of what it is playing.
AHEAD_MS = 360
#: The listen modes of docs/websocket.md.
MODES = ("auto", "manual", "realtime")
#: ``listen`` ``detect``'s text is a wake word or a few command words; longer is cut.
MAX_DETECT_TEXT = 200

#: A device connection: ``waiting`` for ``hello``, ``ready``, then ``over``.
DEVICE = Table("device", ["waiting", "ready", "over"], [
    {"trigger": "hello", "source": "waiting", "dest": "ready"},
    {"trigger": "end", "source": ["waiting", "ready"], "dest": "over"},
], initial="waiting")


def _plain(text: str) -> str:
    """Words compared as the community servers compare wake words: no punctuation, no spaces, any case."""
    return "".join(c for c in text if c.isalnum()).lower()


class DeviceError(Exception):
    """A message the device should not have sent: refused, logged and counted; the connection goes on."""

    def __init__(self, code: ErrorCode, message: str, close: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Close the socket with this code (the connection cannot go on).
        self.close = close


class DeviceHost(Protocol):
    """What a device conversation needs from its socket."""

    def send_json(self, message: Frame) -> None: ...

    def send_binary(self, data: bytes) -> None: ...

    def open_session(self, emit: Any) -> LiveSession:
        """The board's session (its own user and history)."""

    def refused(self, code: ErrorCode, message: str) -> None: ...

    def session_error(self, frame: Frame) -> None: ...

    def mcp(self, payload: Frame) -> None:
        """A JSON-RPC message from the device's MCP server."""


class DeviceConversation:
    """The protocol's rules for one connection; the socket only moves bytes."""

    def __init__(self, *, host: DeviceHost, clock: IReactorTime, version: int, output_rate: int,
                 turn: dict[str, Any] | None = None, wake_words: Iterable[str] = ()) -> None:
        self._host = host
        self._wake_words = frozenset(_plain(w) for w in wake_words)
        self._clock = clock
        self.version = version
        self.output_rate = output_rate
        self._turn_settings = dict(turn or {})
        self.state = DEVICE.initial
        self.session_id = uuid.uuid4().hex[:16]
        self.session: LiveSession | None = None
        self.features: dict[str, Any] = {}
        self.mode: str | None = None
        self.listening = False
        self._detection: str | None = None
        self._decoder: Decoder | None = None
        self._encoder: Encoder | None = None
        #: Packets (bytes) and control messages (dicts) still to go, in order.
        self._queue: deque[bytes | Frame] = deque()
        self._playhead = 0.0
        self._pump: IDelayedCall | None = None
        self._speaking = False
        self._sentence = ""
        self._sent_ms = 0
        #: Push-to-talk presses so far (each is one utterance, stamped with its number).
        self._utterances = 0

    @property
    def _stamp(self) -> str:
        return f"listen-{self._utterances}"

    # -- device messages in -----------------------------------------------------

    def receive_text(self, message: Frame) -> None:
        kind = message.get("type")
        if kind == "hello":
            self._hello(message)
            return
        if self.state != "ready":
            raise DeviceError(ErrorCode.INVALID_STATE, f"{kind!r} before 'hello'")
        if kind == "listen":
            self._listen(message)
        elif kind == "abort":
            self.abort(str(message.get("reason") or ""))
        elif kind == "mcp":
            payload = message.get("payload")
            if not isinstance(payload, dict) or payload.get("jsonrpc") != "2.0":
                raise DeviceError(ErrorCode.INVALID_MESSAGE_FORMAT, "an 'mcp' payload must be a JSON-RPC 2.0 object")
            self._host.mcp(payload)
        elif kind in ("device_status", "iot"):
            pass  # reported state the conversation has no use for
        else:
            raise DeviceError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {kind!r}")

    def _hello(self, message: Frame) -> None:
        if self.state != "waiting":
            raise DeviceError(ErrorCode.INVALID_STATE, "a second 'hello'")
        version = message.get("version", 1)
        if version != self.version:
            raise DeviceError(ErrorCode.INVALID_MESSAGE_FORMAT,
                              f"hello says version {version!r}, Protocol-Version said {self.version}", close=CloseCode.PROTOCOL_ERROR)
        if message.get("transport", "websocket") != "websocket":
            raise DeviceError(ErrorCode.INVALID_MESSAGE_FORMAT, "transport must be 'websocket'", close=CloseCode.PROTOCOL_ERROR)
        params = message.get("audio_params") or {}
        if not isinstance(params, dict) or params.get("format", "opus") != "opus" or params.get("channels", 1) != 1:
            raise DeviceError(ErrorCode.INVALID_AUDIO, f"audio {params!r} is not mono Opus", close=CloseCode.UNSUPPORTED_DATA)
        features = message.get("features")
        self.features = features if isinstance(features, dict) else {}
        self._decoder, self._encoder = Decoder(), Encoder(self.output_rate, FRAME_MS)
        DEVICE.fire(self, "hello")
        self._host.send_json({
            "type": "hello", "transport": "websocket", "version": self.version, "session_id": self.session_id,
            "audio_params": {"format": "opus", "sample_rate": self.output_rate, "channels": 1,
                             "frame_duration": FRAME_MS},
        })
        self.session = self._host.open_session(self.from_session)

    def _listen(self, message: Frame) -> None:
        assert self.session is not None
        state, mode = message.get("state"), message.get("mode", self.mode or "auto")
        if state == "detect":
            self._cut()
            self.session.forget_speech()  # as the reference clears its audio buffer
            self._woken(message.get("text"))
            return
        if state not in ("start", "stop"):
            raise DeviceError(ErrorCode.INVALID_MESSAGE_FORMAT, f"listen state {state!r} is not start, stop or detect")
        if mode not in MODES:
            raise DeviceError(ErrorCode.INVALID_MESSAGE_FORMAT, f"listen mode {mode!r} is not auto, manual or realtime")
        self.mode = mode
        if state == "start":
            if mode != "realtime":
                self._cut()  # a new question: what is left of the last answer is not wanted
            self._detect("client" if mode == "manual" else "server")
            self.listening = True
            if mode == "manual":
                self._utterances += 1
                self.session.receive({"t": "start_speaking", "stamp": self._stamp})
        else:
            self.listening = False
            if mode == "manual":
                self.session.receive({"t": "end_speaking", "stamp": self._stamp})

    def _woken(self, text: Any) -> None:
        """``detect``'s text: a wake word only wakes; other words (a command word list's) are a question.

        As the community servers do: the wake word itself gets no answer (the
        firmware goes on with ``listen start``), anything else is answered as
        if it had been said.
        """
        if not isinstance(text, str) or not _plain(text):
            return
        if _plain(text) not in self._wake_words:
            assert self.session is not None
            self.session.receive({"t": "text_input", "text": text[:MAX_DETECT_TEXT]})

    def _detect(self, detection: str) -> None:
        assert self.session is not None
        if self._detection != detection:
            settings = self._turn_settings if detection == "server" else {}
            self.session.receive({"t": "session_update", "turn_detection": detection, **settings})
            self._detection = detection

    def receive_binary(self, data: bytes) -> None:
        if self.state != "ready":
            raise DeviceError(ErrorCode.INVALID_STATE, "audio before 'hello'")
        try:
            packet = framing.unpack(self.version, data)
        except framing.FramingError as e:
            raise DeviceError(e.code, e.message) from None
        assert self._decoder is not None and self.session is not None
        try:
            pcm = self._decoder.decode(packet.opus)
        except OpusError as e:
            raise DeviceError(ErrorCode.INVALID_AUDIO, str(e)) from None
        hears = self.listening and (self.mode == "realtime" or not self._speaking)
        if pcm and hears:
            self.session.receive_audio(pcm)

    def abort(self, reason: str) -> None:
        """The device stopped playing (a button, its wake word): stop the turn and send nothing more of it."""
        assert self.session is not None
        if self.session.state == "processing":
            self.session.receive({"t": "interrupt"})
        self._cut()

    # -- session frames out ---------------------------------------------------

    def from_session(self, frame: Frame | bytes) -> None:
        if isinstance(frame, bytes):
            return
        kind = frame.get("t")
        if kind == "user_msg":
            text = (frame.get("data") or {}).get("text", "")
            if text:
                self._host.send_json({"session_id": self.session_id, "type": "stt", "text": text})
        elif kind == "bot_text_chunk":
            self._sentence = (frame.get("data") or {}).get("text", "")
        elif kind == "response":
            self._speak(self._sentence, base64.b64decode(frame["data"]))
            self._sentence = ""
        elif kind == "bot_msg":
            self._speak((frame.get("data") or {}).get("text", ""), None)
        elif kind == "stop_play":
            self._cut()
        elif kind == "speech_started" and self.mode == "realtime":
            self._cut()  # the user talks over a reply still playing from an ended turn
        elif kind == "end":
            if self._speaking:
                self._enqueue(self._tts("stop"))
        elif kind == "error":
            self._host.session_error(frame)

    def _tts(self, state: str, text: str | None = None) -> Frame:
        message: Frame = {"session_id": self.session_id, "type": "tts", "state": state}
        if text is not None:
            message["text"] = text
        return message

    def _speak(self, text: str, wav: bytes | None) -> None:
        if self.state != "ready":
            return
        if not self._speaking:
            self._speaking = True
            emotion, emoji = feeling(text)
            self._enqueue({"session_id": self.session_id, "type": "llm", "emotion": emotion, "text": emoji})
            self._enqueue(self._tts("start"))
        caption = without_emoji(text)  # the face shows the emoji; the caption is words
        if caption:
            self._enqueue(self._tts("sentence_start", caption))
        if wav is None:
            return
        try:
            pcm, rate = read_wav(wav)
        except ValueError:
            self._host.session_error({"t": "error", "code": ErrorCode.TTS_ERROR,
                                      "data": "a device needs WAV speech ([tts] response_format = \"wav\")"})
            return
        assert self._encoder is not None
        for packet in self._encoder.encode(pcm, rate):
            self._enqueue(packet)

    def _cut(self) -> None:
        """Drop the reply audio not yet sent and tell the device the speech is over."""
        self._queue.clear()
        if self._speaking:
            self._speaking = False
            self._host.send_json(self._tts("stop"))

    def _enqueue(self, item: bytes | Frame) -> None:
        self._queue.append(item)
        if self._pump is None or not self._pump.active():
            self._send_due()

    def _send_due(self) -> None:
        """Send what may go now: control messages at once, packets up to :data:`AHEAD_MS` ahead of playback."""
        now = self._clock.seconds()
        self._playhead = max(self._playhead, now)
        while self._queue and self.state == "ready":
            item = self._queue[0]
            if isinstance(item, bytes):
                if self._playhead - now >= AHEAD_MS / 1000:
                    break
                self._host.send_binary(framing.pack(self.version, item, self._sent_ms))
                self._playhead += FRAME_MS / 1000
                self._sent_ms += FRAME_MS
            else:
                if item.get("type") == "tts" and item.get("state") == "stop":
                    if not self._speaking:
                        self._queue.popleft()
                        continue
                    self._speaking = False
                self._host.send_json(item)
            self._queue.popleft()
        if self._queue and self.state == "ready":
            self._pump = self._clock.callLater(FRAME_MS / 1000, self._send_due)

    # -- the end ----------------------------------------------------------------

    def closed(self) -> None:
        if self.state == "over":
            return
        DEVICE.fire(self, "end")
        self._queue.clear()
        if self._pump is not None and self._pump.active():
            self._pump.cancel()
