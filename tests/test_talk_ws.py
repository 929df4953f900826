"""Protocol extensions over a real socket: turn ids, talk mode, truncation, binary audio."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from .support import connect
from .test_live_ws import LIVE, kinds
from .test_talk import REFERENCE_FIELDS


@pytest_twisted.ensureDeferred
async def test_reference_client_sees_reference_frames_plus_turn_ids(livetx: Any) -> None:
    server = await livetx()
    client = await connect(server.url(LIVE, token=server.token()))
    await client.turn("hello there. how are you")
    await client.turn("and again")
    await client.until("metrics")  # the last metrics follow end
    ids = [f["turn"] for f in client.frames]
    assert ids == sorted(ids) and set(ids) == {1, 2} and kinds(client.frames).count("end") == 2
    for frame in client.frames:
        assert set(frame) - {"turn"} == REFERENCE_FIELDS.get(frame["t"], {"t", "data"})
    assert "session_updated" not in kinds(client.frames)
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_turn_detection_query_parameter(livetx: Any) -> None:
    server = await livetx()
    talk = await connect(server.url(LIVE, token=server.token(), turn_detection="server"))
    updated = await talk.next()
    assert updated["t"] == "session_updated" and updated["data"]["turn_detection"] == "server"
    wrong = await connect(server.url(LIVE, token=server.token(), turn_detection="psychic"))
    error = await wrong.next()
    assert (error["t"], error["code"]) == ("error", "INVALID_SETTING")
    assert kinds(await wrong.turn("still usable")).count("end") == 1
    for client in (talk, wrong):
        await client.close_and_wait()
