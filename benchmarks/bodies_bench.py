"""A bystander's live turns while hostile HTTP bodies stream in (issue 13.1; the figure moved here by 27.17).

Starts ``twistd live`` (default engines: echo model, eSpeak) as its own
process and ``tests/hostile_http.py`` as another (100 MB bodies refused from
their headers, and 8 MiB uploads within the limit, read and parsed, again and
again), then times a bystander's first ``response`` quiet and under attack,
on one socket, in the same run. The figure is the ratio, so it carries to
another machine; the test that the parsing is off the reactor is
``tests/test_held_claims.py`` (it records the thread), not this timing.

    python benchmarks/bodies_bench.py                 # 8 s of attack, 40 turns
    python benchmarks/bodies_bench.py --seconds 4 --turns 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import default_server  # noqa: E402

HOSTILE = Path(__file__).resolve().parent.parent / "tests" / "hostile_http.py"


async def first_response(ws: websockets.ClientConnection) -> float:
    started = time.monotonic()
    await ws.send(json.dumps({"t": "text_input", "text": "Say something short."}))
    took = None
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("t") == "response" and took is None:
            took = time.monotonic() - started
        if frame.get("t") == "end":
            assert took is not None
            return took


async def measure(url: str, port: int, key: str, seconds: float, turns: int) -> dict[str, float]:
    async with websockets.connect(url, max_size=None) as ws:
        await first_response(ws)  # warm the engines
        quiet = [await first_response(ws) for _ in range(5)]
        hostile = subprocess.Popen([sys.executable, str(HOSTILE), str(port), key, str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
        await asyncio.sleep(0.5)
        during = [await first_response(ws) for _ in range(turns)]
        await asyncio.get_running_loop().run_in_executor(None, hostile.wait)
    sent = int((hostile.stdout.read() if hostile.stdout else "sent 0").split("sent ")[1])
    usual, p90 = statistics.median(quiet), statistics.quantiles(during, n=10)[-1]
    return {"usual_s": usual, "attack_p90_s": p90, "attack_max_s": max(during), "ratio_p90": p90 / usual,
            "attack_bytes": sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--turns", type=int, default=40)
    args = parser.parse_args()
    with default_server() as (port, data, url):
        from livetx.auth.keys import KeyStore

        key = KeyStore(data).create(["chat", "file"])[1]
        result = asyncio.run(measure(url, port, key, args.seconds, args.turns))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
