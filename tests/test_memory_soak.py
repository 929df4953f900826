"""Memory under large text turns (issue 27.2): a soak against a real ``twistd live`` process.

One user's 8 sockets each sent 4 text turns of megabytes, round after round,
and the server's RSS climbed by hundreds of MB a round without end: every
turn sent all its ``history_turns`` earlier turns to the model whatever
their size, and glibc, once it had freed one large block, served the next
ones from a heap it never hands back. Now the context has a byte budget
(``[llm] context_bytes``) and large blocks stay returnable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from livetx.domain import Exchange
from livetx.live.history import Conversation

from .support import connect
from .test_live_ws import LIVE, openai_config
from .test_shutdown import Twistd

SOCKETS, TURNS, ROUNDS = 8, 4, 5
TEXT_BYTES = 1_000_000
#: RSS after any later round stays within this of RSS after the first (it grew 200-700 MB a round).
MARGIN_MB = 64


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def one_socket(server: Twistd, round_: int, n: int) -> None:
    # The same session each round: the store gives its history back to the new socket.
    client = await connect(server.url(LIVE, "ann") + f"&session_id=soak{n}")
    for turn in range(TURNS):
        words = " ".join(f"r{round_}s{n}t{turn}w{i}" + "x" * 990 for i in range(TEXT_BYTES // 1000))
        await client.turn(words, timeout=60)
    await client.close_and_wait()


@pytest_twisted.ensureDeferred
async def test_rss_levels_off_under_rounds_of_large_text_turns(tmp_path: Path, openai: Any) -> None:
    openai.reply = "Noted."
    server = Twistd(tmp_path, openai_config(openai.base_url, tts=False))
    try:
        after: list[float] = []
        for round_ in range(ROUNDS):
            await gatherResults([Deferred.fromCoroutine(one_socket(server, round_, n)) for n in range(SOCKETS)])
            await deferLater(reactor, 0.5, lambda: None)  # the last turns' bodies are let go
            after.append(rss_mb(server.process.pid))
        assert max(after[1:]) < after[0] + MARGIN_MB, f"RSS after each round: {after}"
        # And the model was never sent the megabytes of earlier turns.
        sent = [len(json.dumps(r.json)) for r in openai.requests_to("/chat/completions")]
        assert max(sent) < TEXT_BYTES + 256 * 1024 + 16 * 1024
    finally:
        await server.finish()


def test_the_context_holds_the_newest_turns_that_fit_its_budget_whatever_history_turns() -> None:
    conversation = Conversation("ann", 20, None, budget=10_000)
    for n in range(6):
        conversation.keep(n, None, Exchange(user=f"q{n} " + "x" * 3000, reply=f"a{n}"), "text", {})  # type: ignore[arg-type]
    messages = conversation.context("", "now")
    assert [m["content"][:2] for m in messages] == ["q3", "a3", "q4", "a4", "q5", "a5", "no"]
    # What will never fit again is not held either.
    assert [e.user[:2] for e in conversation.exchanges] == ["q3", "q4", "q5"]

