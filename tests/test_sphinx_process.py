"""PocketSphinx decodes in child processes: it keeps the GIL while it works,
so on a thread of the server's own process it stopped the reactor."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor

from livetx.audio import to_wav
from livetx.config import STTConfig
from livetx.providers import sphinx
from livetx.threads import ProcessWorker

from .test_engines import speech


@pytest_twisted.ensureDeferred
async def test_process_worker_runs_calls_in_another_process() -> None:
    worker = ProcessWorker(reactor, 1)
    assert await worker.run(os.getpid) != os.getpid()
    assert await worker.run(divmod, 7, 2) == (3, 1)
    with pytest.raises(BrokenProcessPool):
        await worker.run(os._exit, 1)  # a decoder that crashes takes its process with it
    assert await worker.run(divmod, 9, 4) == (2, 1)  # and the next call gets a new one


@pytest_twisted.ensureDeferred
async def test_no_decoder_in_the_server_process_and_no_history_in_transcripts() -> None:
    pcm = sphinx.recognizer_input(await speech("please turn on the kitchen lights and close the door"))
    other = await speech("what is the weather like in paris today")
    recognizer = sphinx.SphinxRecognizer(STTConfig(threads=1), None, reactor)  # one process serves all
    first = await recognizer.transcribe(to_wav(pcm))  # the fresh decoder's first utterance
    partials = [await recognizer.partial(pcm[: len(pcm) * n // 3]) for n in (1, 2, 3)]
    assert await recognizer.transcribe(other)  # another user's words in between
    # Neither the partials nor the other words changed anything.
    assert first and await recognizer.transcribe(to_wav(pcm)) == first
    assert partials[-1] == first  # a partial of all of it is the transcript: one way of decoding
    assert sphinx._decoders == {}  # the decoders live in the pool's process


class ThreadedMemoryReactor(MemoryReactor):
    """Holds what pool threads hand to the reactor thread until the test runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_threads.put((f, args))

    def run_calls(self) -> None:
        while not self.from_threads.empty():
            f, args = self.from_threads.get()
            f(*args)


def outcome(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_a_pool_that_is_shut_down_fails_the_call_instead_of_raising() -> None:
    worker = ProcessWorker(ThreadedMemoryReactor(), 1)
    worker._started().shutdown()  # as the reactor's shutdown trigger does; no process was started
    (failure,) = outcome(worker.run(divmod, 7, 2))
    assert failure.check(RuntimeError)


def test_a_call_cancelled_by_the_pools_shutdown_still_fires() -> None:
    fake = ThreadedMemoryReactor()
    worker = ProcessWorker(fake, 1)
    worker._pool = ThreadPoolExecutor(1)  # the same Executor contract, without processes
    started, release = threading.Event(), threading.Event()

    def busy() -> bool:
        started.set()
        return release.wait()

    running = outcome(worker.run(busy))
    waiting = outcome(worker.run(divmod, 7, 2))
    assert started.wait(timeout=30)
    worker._pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    worker._pool.shutdown(wait=True)
    fake.run_calls()
    assert running == [True]
    (failure,) = waiting  # it waited in the worker, and the shut pool refused it
    assert failure.check(CancelledError, RuntimeError)


@pytest_twisted.ensureDeferred
async def test_partials_are_skipped_while_every_decoder_is_busy() -> None:
    pcm = sphinx.recognizer_input(await speech("turn on the lights"))
    recognizer = sphinx.SphinxRecognizer(STTConfig(threads=1), None, reactor)
    final = recognizer.transcribe(to_wav(pcm))
    skipped = outcome(recognizer.partial(pcm))
    assert skipped == [""]  # at once, with no text: nothing was queued behind the final
    text = await final
    assert text and await recognizer.partial(pcm) == text  # a process is free again


@pytest_twisted.ensureDeferred
async def test_sigterm_after_a_voice_turn_leaves_no_semaphores_behind(tmp_path: Path) -> None:
    from .test_shutdown import Twistd
    from .test_voice import spoken, stream

    server = Twistd(tmp_path, '[stt]\nprovider = "pocketsphinx"\n')
    try:
        client = await server.client("dora")
        stream(client, await spoken("turn on the lights"), "s")
        frames = await client.until("end", timeout=60)
        assert any(f["t"] == "user_msg" for f in frames)
        await client.close_and_wait()
    finally:
        await server.finish()
    # The resource tracker, a process of its own, reports once the server has gone.
    await deferLater(reactor, 1.0, lambda: None)
    output = server.log.read_text()
    assert "leaked semaphore" not in output and "resource_tracker" not in output, output
