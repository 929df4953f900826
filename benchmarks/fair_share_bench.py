"""Another user's first audio while one API key floods eSpeak (the figure moved here from tests/test_fair_share.py).

Starts ``twistd live`` on its defaults (echo model, eSpeak NG) as its own
process. A bystander's short text turns are timed by the server's own
``speak_to_first_frame``, in the same run: quiet, then with one long
sentence of its own (a sentence already being spoken is waited for however
fair the queue), then while ``--sockets`` sockets on one API key each speak a
40-sentence story. The figures are the flood's median and max over the floor
(quiet plus one sentence), so they carry to another machine; that the queue is fair
is held by the test, which counts the jobs that start first, not this timing.

    python benchmarks/fair_share_bench.py                # 30 flooding sockets, 7 timed turns
    python benchmarks/fair_share_bench.py --sockets 10 --turns 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import default_server  # noqa: E402

SENTENCE = "This is sentence number {} of a very long story that goes on and on."


async def first_audio(ws: websockets.ClientConnection, text: str) -> float:
    """The server's seconds from the turn's start to its first audio frame sent."""
    await ws.send(json.dumps({"t": "text_input", "text": text}))
    took = None
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("t") == "metrics" and "speak_to_first_frame" in frame.get("data", {}):
            took = float(frame["data"]["speak_to_first_frame"])
        if frame.get("t") == "end":
            assert took is not None, "no speak_to_first_frame: is [tts] on?"
            return took


async def flooding(url: str) -> websockets.ClientConnection:
    """A socket speaking a long story, once its first audio has come (it reads nothing after)."""
    ws = await websockets.connect(url, max_size=None)
    await ws.send(json.dumps({"t": "text_input", "text": " ".join(SENTENCE.format(i) for i in range(40))}))
    while json.loads(await ws.recv()).get("t") != "response":
        pass
    return ws


async def measure(live: str, flood: str, sockets: int, turns: int) -> dict[str, float]:
    async with websockets.connect(live, max_size=None) as ws:
        await first_audio(ws, "Hello there.")  # warm the engine
        quiet = statistics.median([await first_audio(ws, "Hello there.") for _ in range(5)])
        one_job = statistics.median([await first_audio(ws, SENTENCE.format(i)) for i in range(3)])
        floods = await asyncio.gather(*[flooding(f"{flood}&username=bot{i}") for i in range(sockets)])
        try:
            loaded = [await first_audio(ws, "Hello there.") for _ in range(turns)]
        finally:
            for socket in floods:
                await socket.close()
    floor = quiet + one_job
    # The max as well: behind a queue in arrival order the first turn waits out the whole flood,
    # and the turns after it find the engine idle.
    return {"quiet_s": quiet, "one_sentence_s": one_job, "flood_median_s": statistics.median(loaded),
            "flood_max_s": max(loaded), "ratio_median": statistics.median(loaded) / floor,
            "ratio_max": max(loaded) / floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=30)
    parser.add_argument("--turns", type=int, default=7)
    args = parser.parse_args()
    with default_server("[server]\nmax_frames_per_second = 0\nmax_connections_per_key = 0\n") as (port, data, live):
        from livetx.auth.keys import KeyStore

        key = KeyStore(data).create(["chat"], name="flood")[1]
        flood = f"ws://127.0.0.1:{port}/api/v1/live/ws?api_key={key}"
        result = asyncio.run(measure(live, flood, args.sockets, args.turns))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
