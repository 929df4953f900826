"""Property tests: no sequence of client frames can break a session.

In memory and on a fake clock, so Hypothesis can try many sequences fast;
the socket-level fuzzing against a running server builds on the same idea.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from livetx.domain import Engines
from livetx.live.rules import STATES
from livetx.live.session import LiveSession
from livetx.providers.echo import EchoChat

from .doubles import ManualSTT, b64

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
audio = st.binary(max_size=64).map(b64)
stamps = st.sampled_from(["a", "b", ""]) | json_values

frame = st.one_of(
    st.builds(lambda text: {"t": "text_input", "text": text}, st.text(max_size=30) | json_values),
    st.builds(lambda stamp: {"t": "start_speaking", "stamp": stamp}, stamps),
    st.builds(lambda data: {"t": "speaking_part", "data": data}, audio | json_values),
    st.builds(lambda stamp: {"t": "end_speaking", "stamp": stamp}, stamps),
    st.just({"t": "interrupt"}),
    st.builds(
        lambda fields: {"t": "session_update", **fields},
        st.dictionaries(
            st.sampled_from(["turn_detection", "audio_transport", "silence_ms", "min_speech_ms", "x"]),
            st.sampled_from(["server", "client", "binary", 100, 30]) | json_values,
            max_size=3,
        ),
    ),
    st.builds(lambda turn, end: {"t": "truncate", "turn": turn, "audio_end_ms": end}, json_values, json_values),
    st.builds(lambda t, extra: {"t": t, "x": extra}, st.text(max_size=12), json_values),
)
steps = st.lists(st.tuples(frame, st.sampled_from([0.0, 0.001, 0.05, 1.0])), max_size=25)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_sequence_keeps_the_session_usable(sequence: list[tuple[dict[str, Any], float]]) -> None:
    clock = Clock()
    out: list[dict[str, Any]] = []
    stt = ManualSTT()
    session = LiveSession(
        username="fuzz",
        engines=Engines(llm=EchoChat(clock, 0.01), tts=None, stt=stt, max_segment_seconds=0.001),
        clock=clock,
        emit=out.append,
    )
    for message, pause in sequence:
        session.receive(message)  # must never raise
        clock.advance(pause)
        for _, pending in stt.requests:
            if not pending.called:
                pending.callback("heard something")

    for produced in out:
        assert isinstance(produced.get("t"), str)
        if produced["t"] == "error":
            assert produced["code"] and isinstance(produced["data"], str)
            assert produced["code"] != "INTERNAL_ERROR", produced
    assert session.state in STATES

    # Whatever happened, an interrupt and a new text turn work.
    session.receive({"t": "interrupt"})
    mark = len(out)
    session.receive({"t": "text_input", "text": "are you still there"})
    clock.pump([0.01] * 10)
    kinds = [f["t"] for f in out[mark:]]
    assert kinds[-2:] == ["metrics", "end"] and "error" not in kinds, kinds
