"""What the foreign-protocol benchmarks share: the ladder of levels and the command line.

``calls_bench.py`` (phone calls) and ``devices_bench.py`` (xiaozhi boards)
each simulate their own peers; climbing the levels until the voice-to-voice
p95 passes the target, running against a local server, and reporting are
the same for both and live here once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any, Awaitable, Callable

from live_bench import local_server

TARGET_P95_MS = 1500.0


async def climb(levels: list[int], measure: Callable[[int], Awaitable[dict[str, Any]]], unit: str) -> dict[str, Any]:
    """Each level in turn (its row printed as it comes) until the p95 misses the target; the largest that held."""
    rows = []
    for n in levels:
        row = await measure(n)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if row["v2v_p95_ms"] > TARGET_P95_MS:
            break
    held = [r[unit] for r in rows if r["v2v_p95_ms"] <= TARGET_P95_MS]
    return {"levels": rows, f"max_{unit}_p95_within_1_5_s": max(held) if held else 0}


def arguments(doc: str, what: str, levels_help: str, turns_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=(what, "codec"), default=what)
    parser.add_argument("--levels", default="1,2,4,8,16", help=levels_help)
    parser.add_argument("--turns", type=int, default=2, help=turns_help)
    parser.add_argument("--offline", action="store_true", help="livetx on its defaults: echo model, eSpeak NG")
    return parser


def run(args: argparse.Namespace, codec_cost: Callable[[], dict[str, Any]], extra: str,
        ladder: Callable[[str, int, list[int]], Awaitable[dict[str, Any]]],
        notes: dict[str, str] | None = None) -> None:
    """The codec's cost, or the ladder against a local server (``extra`` in its config); printed, and to ``--json``."""
    if args.what == "codec":
        summary: dict[str, Any] = codec_cost()
        print(json.dumps(summary, indent=2))
    else:
        levels = [int(n) for n in args.levels.split(",")]
        with local_server(tokens=20, sentences=2, delay=0.0, offline=args.offline, config_extra=extra) as (
                url, pid, _):
            base = url.split("/api/", 1)[0]
            summary = asyncio.run(ladder(base, pid, levels))
        summary["model"] = "echo (offline)" if args.offline else "OpenAI-compatible simulator"
        summary.update(notes or {})
        print(json.dumps({k: v for k, v in summary.items() if k != "levels"}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
