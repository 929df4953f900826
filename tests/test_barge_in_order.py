"""The barge-in guard of ``Turn._play`` (issue 27.16), held with a Clock and hand-driven engines.

Audio is played in sentence order: a sentence synthesised early waits in the
turn's tail for the ones before it. When the user interrupts then, the
earlier sentence's synthesis is cancelled, the tail runs on, and only the
guard (the turn no longer runs) keeps the waiting audio from going out
after the user spoke.
"""

from __future__ import annotations

from .test_session import Harness, SlowWrites, harness_with


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


def test_an_interrupt_while_a_finished_reply_is_stored_unwinds_once_it_is() -> None:
    """The long fuzz's server-side race (issue 27.14): the reply is complete, its commit not yet.

    The interrupt used to unwind at once (idle, or the next turn started),
    and the commit's completion then fired ``turn_done`` again: a
    ``MachineError`` from ``idle``, or an ``end`` that ended the *next* turn
    before it had said a word.
    """
    memory = SlowWrites()
    h = harness_with(memory)
    h.send("text_input", text="one")
    h.llm.last.say("Done.")
    h.llm.last.finish()
    (_, stored), = memory.writes
    assert h.state == "processing"  # until the reply is stored
    assert h.send("interrupt") == [{"t": "stop_play"}]
    assert h.state == "interrupted"
    h.send("text_input", text="two")  # waits for the unwinding, as during any interrupt
    assert len(h.llm.calls) == 1
    stored.callback(None)
    assert "end" not in h.kinds()  # nothing of the interrupted turn follows stop_play
    assert h.state == "processing" and len(h.llm.calls) == 2
    h.llm.last.say("Two.")
    h.llm.last.finish()
    memory.writes[-1][1].callback(None)
    assert h.kinds()[-1] == "end" and h.state == "idle"
    assert [f["data"]["text"] for f in h.out if f["t"] == "bot_delta_chunk"] == ["Done.", "Two."]
