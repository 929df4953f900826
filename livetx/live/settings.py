"""A connection's opt-in extensions, as ``session_update`` sets them.

Every setting starts at the reference behaviour, so a client that never sends
``session_update`` (nor ``?turn_detection=server``) gets exactly the reference
protocol. Checking is strict for the same reason the config file is: a typo
must come back as an error the client can see, not as a silently ignored key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.frames import Frame, FrameError
from livetx.providers.base import Voices

#: Frame fields that are not settings: the type, and the unified endpoint's mode.
_ENVELOPE = frozenset({"t", "ct"})


@dataclass(frozen=True)
class Settings:
    """What one connection asked for; the defaults are the reference protocol."""

    #: ``client``: start/end_speaking frame the turns; ``server``: the voice detector does.
    turn_detection: str = "client"
    #: ``json``: Base64 audio inside JSON frames; ``binary``: raw audio as binary messages.
    audio_transport: str = "json"
    #: Which voice detector: ``silero`` (a small neural network, the default:
    #: noise, clicks and music do not start turns) or ``webrtc`` (cheaper per frame).
    vad: str = "silero"
    #: WebRTC detector aggressiveness, 0 (keeps most audio as speech) to 3 (strictest).
    vad_aggressiveness: int = 2
    #: Speech must last this long before it counts (shorter noise is dropped).
    min_speech_ms: int = 200
    #: Silence that ends an utterance.
    silence_ms: int = 600
    #: ``silence``: ``silence_ms`` ends every utterance; ``transcript`` (the
    #: default: voice to voice 0.82x the silence rule's in benchmarks/RESULTS.md):
    #: the transcript at the first pause ends a finished one sooner and holds
    #: an unfinished one longer; ``semantic``: and the end-of-turn model
    #: decides when the transcript cannot tell (livetx.live.endpoint).
    end_of_turn: str = "transcript"
    #: ``transcript`` and ``semantic``: how soon a pause ends the turn (``high`` soonest).
    eagerness: str = "medium"
    #: Audio kept from before the detected start of speech.
    preroll_ms: int = 300
    #: Talk mode: speech that resumes this soon after the end of the last
    #: utterance's speech continues its request even once the reply is playing
    #: (``stop_play``, and both halves answered as one); later it is a barge-in.
    continue_ms: int = 1200
    #: Talk mode: start the reply's model call at the first short pause, on the transcript so far,
    #: and keep it unsent until the end of turn confirms it (or drop it if the user goes on):
    #: livetx.live.speculation. The server's default is ``[llm] speculative``.
    speculative: bool = False
    #: Number every frame (``seq``) and keep it, so a new socket can resume the session.
    resume: bool = False
    #: The reply's voice, one the speech engine offers (``GET /api/v1/voices``); None: the server's own.
    voice: str | None = None

    @property
    def server_detection(self) -> bool:
        return self.turn_detection == "server"

    @property
    def binary_audio(self) -> bool:
        return self.audio_transport == "binary"

    def frame(self) -> Frame:
        """The ``session_updated`` frame: every setting, as now in force."""
        return {"t": "session_updated", "data": dataclasses.asdict(self)}


#: Allowed values: a tuple of choices, or an inclusive integer range.
_RULES: dict[str, tuple[str, ...] | tuple[bool, ...] | range] = {
    "turn_detection": ("client", "server"),
    "audio_transport": ("json", "binary"),
    "vad": ("silero", "webrtc"),
    "vad_aggressiveness": range(0, 4),
    "min_speech_ms": range(30, 5_001),
    "silence_ms": range(100, 10_001),
    "end_of_turn": ("silence", "transcript", "semantic"),
    "eagerness": ("low", "medium", "high"),
    "preroll_ms": range(0, 2_001),
    "continue_ms": range(0, 5_001),
    "speculative": (False, True),
    "resume": (False, True),
}


def updated(current: Settings, frame: Frame, turn_end: object | None = None,
            voices: Callable[[], Voices] | None = None) -> Settings:
    """``current`` with the frame's settings applied, or ``FrameError`` naming the first bad one.

    ``end_of_turn: semantic`` needs the end-of-turn model (``turn_end``), which is an extra;
    ``voice`` must be one the speech engine offers (``voices``, asked only then: eSpeak NG
    loads to answer the first time; None: the server speaks no audio).
    """
    changes: dict[str, Any] = {}
    for key, value in frame.items():
        if key in _ENVELOPE:
            continue
        if key == "voice":
            changes[key] = _voice(value, voices)
            continue
        rule = _RULES.get(key)
        if rule is None:
            raise FrameError(ErrorCode.UNKNOWN_SETTING, f"unknown setting {key!r}")
        if isinstance(rule, range):
            if isinstance(value, bool) or not isinstance(value, int) or value not in rule:
                raise FrameError(
                    ErrorCode.INVALID_SETTING,
                    f"{key} must be an integer from {rule.start} to {rule.stop - 1}",
                )
        elif not isinstance(value, type(rule[0])) or value not in rule:
            choices = ", ".join(str(r).lower() if isinstance(r, bool) else str(r) for r in rule)
            raise FrameError(ErrorCode.INVALID_SETTING, f"{key} must be one of {choices}")
        changes[key] = value
    if changes.get("end_of_turn") == "semantic" and turn_end is None:
        raise FrameError(
            ErrorCode.INVALID_SETTING,
            "end_of_turn semantic needs the end-of-turn model: pip install 'livetx[turn]' on the server",
        )
    return dataclasses.replace(current, **changes)


def _voice(value: object, voices: Callable[[], Voices] | None) -> str | None:
    """A voice the engine has, or null for the server's own; ``FrameError`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise FrameError(ErrorCode.INVALID_SETTING, "voice must be a string, or null for the server's voice")
    if voices is None:
        raise FrameError(ErrorCode.INVALID_SETTING, "voice: this server speaks no audio ([tts] provider none)")
    problem = voices().problem(value)
    if problem is not None:
        raise FrameError(ErrorCode.INVALID_SETTING, f"voice {value[:64]!r} {problem}")
    return value
