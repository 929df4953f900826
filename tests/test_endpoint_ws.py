"""The transcript's cues over a real socket, on the default engines (Whisper, eSpeak NG): a
finished request ends sooner than an unfinished one, both measured on the microphone stream."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from livetx.live.endpoint import EAGERNESS

from .support import connect
from .test_live_ws import LIVE
from .test_talk_ws import silence
from .test_turn_taking_ws import real_time
from .test_voice import spoken


async def silence_after(server: Any, text: str) -> int:
    """Say ``text`` at real time with ``end_of_turn: transcript``: ms of silence after it (stream
    time, to where its speech ends) until the server's ``speech_stopped``."""
    client = await connect(server.url(LIVE, token=server.token(), turn_detection="server"))
    client.send({"t": "session_update", "end_of_turn": "transcript"})
    await client.until("session_updated")
    said = await spoken(text)
    await real_time(client, silence(300) + said + silence(EAGERNESS["medium"][1] + 600))
    stopped = (await client.until("speech_stopped", timeout=30))[-1]
    await client.close_and_wait()
    return int(stopped["data"]["audio_end_ms"]) - (300 + len(said) // 32)


@pytest_twisted.ensureDeferred
async def test_a_finished_request_ends_sooner_than_an_unfinished_one(livetx: Any) -> None:
    server = await livetx("[stt]\npreload = true\n")
    longest = EAGERNESS["medium"][1]
    # Whisper hears "Please call my sister and..." (its model loads meanwhile, at start-up).
    unfinished = await silence_after(server, "please call my sister and")
    finished = await silence_after(server, "turn on the kitchen lights")  # "Turn on the kitchen lights."
    assert unfinished >= longest - 300  # held for the longest wait, past silence_ms (600)
    assert finished < unfinished - 500  # ended when its transcript came, whatever that took here
