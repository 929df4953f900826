"""The barge-in guard of ``Turn._play`` (issue 27.16), held with a Clock and hand-driven engines.

Audio is played in sentence order: a sentence synthesised early waits in the
turn's tail for the ones before it. When the user interrupts then, the
earlier sentence's synthesis is cancelled, the tail runs on, and only the
guard (the turn no longer runs) keeps the waiting audio from going out
after the user spoke.
"""

from __future__ import annotations

from .test_session import Harness


def test_audio_that_waited_for_an_earlier_sentence_is_not_played_after_an_interrupt() -> None:
    h = Harness()
    h.send("text_input", text="talk")
    h.llm.last.say("A first full sentence. ", "A second full sentence. ")
    h.clock.advance(0.2)
    h.tts.finish(1)  # the second sentence is ready first: it waits for the first
    assert "response" not in h.kinds()

    after = h.send("interrupt")
    assert after == [{"t": "stop_play"}]  # no caption, no audio of the waiting sentence, before or after
    assert h.tts.cancelled == ["A first full sentence."]
    h.clock.advance(5)
    assert h.kinds()[-1] == "stop_play" and "response" not in h.kinds()
    assert h.state == "idle"
