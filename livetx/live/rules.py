"""The live protocol as data: which event is taken in which state, and what it does.

:class:`livetx.live.session.LiveSession` is the model; the callbacks and
conditions named here are its methods. ``docs/state-machine.md`` is drawn
from this table (:mod:`livetx.diagram`).
"""

from __future__ import annotations

from typing import Any

from livetx.errors import ErrorCode
from livetx.live import frames
from livetx.live.machine import Table

STATES = ["idle", "capturing", "processing", "interrupted"]

_NO_TURN = ["idle", "capturing"]
_TURN = ["processing", "interrupted"]

# The whole protocol in one table. ``dest: None`` is an internal transition:
# the event is accepted and its callback runs, but the state stays.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "text_input", "source": _NO_TURN, "dest": "processing", "after": "_begin_text_turn"},
    {"trigger": "text_input", "source": "interrupted", "dest": None, "after": "_queue_text_turn"},
    {"trigger": "start_speaking", "source": _NO_TURN, "dest": "capturing",
     "unless": "server_detection", "after": "_open_segment"},
    {"trigger": "start_speaking", "source": _TURN, "dest": None,
     "unless": "server_detection", "after": "_open_segment"},
    # Talk mode: the stream goes to the voice detector, whatever the state.
    {"trigger": "speaking_part", "source": STATES, "dest": None,
     "conditions": "server_detection", "after": "_detect"},
    {"trigger": "speaking_part", "source": STATES, "dest": None,
     "conditions": "segment_open", "after": "_append_audio"},
    {"trigger": "end_speaking", "source": "capturing", "dest": "processing",
     "unless": "server_detection", "before": "_check_stamp", "after": "_begin_voice_turn"},
    {"trigger": "end_speaking", "source": "interrupted", "dest": None,
     "conditions": "segment_open", "unless": "server_detection",
     "before": "_check_stamp", "after": "_queue_voice_turn"},
    {"trigger": "interrupt", "source": "processing", "dest": "interrupted", "after": "_stop_turn"},
    {"trigger": "interrupt", "source": _NO_TURN + ["interrupted"], "dest": None},
    {"trigger": "segment_dropped", "source": "capturing", "dest": "idle"},
    {"trigger": "segment_dropped", "source": _TURN, "dest": None},
    {"trigger": "turn_done", "source": "processing", "dest": "capturing",
     "conditions": "segment_open"},
    {"trigger": "turn_done", "source": "processing", "dest": "idle"},
    {"trigger": "unwound", "source": "interrupted", "dest": "processing",
     "conditions": "turn_queued", "after": "_begin_queued_turn"},
    {"trigger": "unwound", "source": "interrupted", "dest": "capturing",
     "conditions": "segment_open"},
    {"trigger": "unwound", "source": "interrupted", "dest": "idle"},
    # Extensions (docs/protocol-extensions.md): accepted in every state.
    {"trigger": "session_update", "source": STATES, "dest": None, "after": "_update_settings"},
    {"trigger": "truncate", "source": STATES, "dest": None, "after": "_truncate"},
    # The voice detector's events. Speech during a turn interrupts it as
    # ``interrupt`` does, with the new utterance's segment already open.
    {"trigger": "speech_started", "source": _NO_TURN, "dest": "capturing", "after": "_hear"},
    # Before the reply is heard, or soon after a pause, it continues the turn's request (the session's docstring).
    {"trigger": "speech_started", "source": "processing", "dest": "interrupted",
     "conditions": "request_goes_on", "before": "_take_back", "after": "_withdraw"},
    {"trigger": "speech_started", "source": "processing", "dest": "interrupted",
     "before": "_hear", "after": "_stop_turn"},
    {"trigger": "speech_started", "source": "interrupted", "dest": None, "after": "_hear"},
    {"trigger": "speech_stopped", "source": "capturing", "dest": "processing",
     "conditions": "segment_open", "before": "_announce_stop", "after": "_begin_voice_turn"},
    {"trigger": "speech_stopped", "source": "interrupted", "dest": None,
     "conditions": "segment_open", "unless": "turn_queued",
     "before": "_announce_stop", "after": "_queue_voice_turn"},
    {"trigger": "speech_stopped", "source": STATES, "dest": None, "after": "_discard_utterance"},
]

#: Client frame types; the other triggers are the session's own.
CLIENT_EVENTS = (
    "text_input", "start_speaking", "speaking_part", "end_speaking", "interrupt", "session_update",
    "truncate",
)

BUSY = (ErrorCode.PROCESSING_ERROR, "Session is busy")
NO_SEGMENT = (ErrorCode.INVALID_STATE, "no voice segment is open; send start_speaking first")
SERVER_FRAMES = (
    ErrorCode.INVALID_STATE,
    "turn_detection is server: send only speaking_part, or switch back with session_update",
)

#: The table, compiled once; each session is a model of it with its own ``state``.
SESSION = Table("session", STATES, TRANSITIONS, "idle", refusals={
    ("processing", "text_input"): BUSY,
    ("processing", "end_speaking"): BUSY,
})
