"""RSS of a server under rounds of large text turns (issue 27.2).

Starts the OpenAI-compatible simulator and ``twistd live`` as separate
processes; each round, one user's 8 sockets (each on its own stored session,
reopened every round, so the store gives its history back) send 4 text turns
of ``--size`` bytes each. Prints the server's RSS after each round: it should
level off after the first.

    python benchmarks/text_soak.py                        # 3.5 MB turns, 8 rounds
    python benchmarks/text_soak.py --size 1000000 --rounds 14
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import free_port, rss_mb, wait_for_port  # noqa: E402

SOCKETS, TURNS = 8, 4


async def one_socket(url: str, size: int, round_: int, n: int) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        for turn in range(TURNS):
            text = " ".join(f"r{round_}s{n}t{turn}w{i}" + "x" * 990 for i in range(size // 1000))
            await ws.send(json.dumps({"t": "text_input", "text": text}))
            while json.loads(await ws.recv()).get("t") != "end":
                pass


async def soak(url: str, pid: int, size: int, rounds: int) -> list[float]:
    after = []
    for round_ in range(rounds):
        started = time.monotonic()
        await asyncio.gather(*(one_socket(f"{url}&session_id=soak{n}", size, round_, n) for n in range(SOCKETS)))
        await asyncio.sleep(0.5)
        after.append(rss_mb(pid))
        print(f"round {round_}: RSS {after[-1]:.0f} MB ({time.monotonic() - started:.1f} s)", flush=True)
    return after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3_500_000, help="bytes of text per turn")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim_port, port, data = free_port(), free_port(), Path(tmp, "data")
        base = f"http://127.0.0.1:{sim_port}/v1"
        config = Path(tmp, "livetx.toml")
        config.write_text(f'[server]\nmax_connections_per_user = 0\n[llm]\nprovider = "openai"\nbase_url = "{base}"\n'
                          'model = "sim"\n[tts]\nprovider = "none"\n')
        sim = subprocess.Popen([sys.executable, "-m", "livetx.testing.openai_server", "--port", str(sim_port)],
                               stdout=subprocess.DEVNULL)
        server = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                                   "--pidfile=", "--logfile", str(Path(tmp, "twistd.log")), "live", "--listen",
                                   f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data), "--config", str(config)])
        try:
            wait_for_port(sim_port)
            wait_for_port(port)
            from livetx.auth.tokens import issue_token, load_or_create_secret

            token = issue_token(load_or_create_secret(data, None), "soak", 3600)
            print(f"start: RSS {rss_mb(server.pid):.0f} MB", flush=True)
            after = asyncio.run(soak(f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}", server.pid,
                                     args.size, args.rounds))
        finally:
            for process in (server, sim):
                process.terminate()
                process.wait()
    print(json.dumps({"size": args.size, "rounds": args.rounds, "rss_mb": [round(r) for r in after],
                      "growth_after_first_mb": round(max(after[1:], default=after[0]) - after[0])}))


if __name__ == "__main__":
    main()
