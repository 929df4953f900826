"""PocketSphinx decodes in child processes: it keeps the GIL while it works,
so on a thread of the server's own process it stopped the reactor."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest
import pytest_twisted
from twisted.internet import reactor

from livetx.audio import to_wav
from livetx.config import STTConfig
from livetx.providers import sphinx
from livetx.providers.threads import ProcessWorker

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
    recognizer = sphinx.SphinxRecognizer(STTConfig(threads=1), None, reactor)  # one process serves all
    first = await recognizer.transcribe(to_wav(pcm))
    partials = [await recognizer.partial(pcm[: len(pcm) * n // 3]) for n in (1, 2, 3)]
    assert first and await recognizer.transcribe(to_wav(pcm)) == first  # the partials changed nothing
    assert partials[-1] == first  # a partial of all of it is the transcript: one way of decoding
    assert sphinx._decoders == {}  # the decoders live in the pool's process
