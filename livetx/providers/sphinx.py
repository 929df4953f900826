"""PocketSphinx speech-to-text, offline, with the English model its wheel ships.

Open vocabulary is rough; with a JSGF grammar or a keyword list it is exact,
which is what command-style devices need. Decoding blocks for a fraction of
a second, so it runs on a bounded pool of threads, one decoder per thread
(decoders are not thread-safe), loaded on first use to keep idle memory low.
It is cheap enough to give talk mode partial transcripts while the user is
still speaking.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from livetx.audio import SAMPLE_RATE
from livetx.config import STTConfig
from livetx.providers.base import recognizer_input
from livetx.providers.threads import Worker

#: Silence around the segment: the decoder needs some to find word edges.
_PAD = b"\0\0" * (SAMPLE_RATE // 4)
#: Audio per decoder call. A call holds the GIL throughout (measured: a 3 s
#: utterance in one call stalled the reactor for 0.3 s), so feed it in slices
#: of 0.1 s, about 15 ms of work each, and the reactor runs in between.
_CHUNK = SAMPLE_RATE // 10 * 2
#: Detection threshold for a keyword phrase without one of its own ("lights on /1e-30/").
_KEYWORD_THRESHOLD = "1e-45"


class SphinxRecognizer:
    """Transcribes one WAV segment per call."""

    name = "pocketsphinx"

    def __init__(self, config: STTConfig, http: Any, reactor: Any) -> None:
        self._options: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if config.grammar:
            self._options["jsgf"] = str(Path(config.grammar).expanduser())
        elif config.keywords:
            self._options["kws"] = _keyword_file(config.keywords)
        self._worker = Worker(reactor, "pocketsphinx", config.threads)
        self._local = threading.local()

    def _decoder(self) -> Any:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            from pocketsphinx import Decoder

            decoder = self._local.decoder = Decoder(**self._options)
        return decoder

    def _decode(self, wav: bytes) -> str:
        """Runs on a recognizer thread."""
        return self._decode_pcm(recognizer_input(wav), whole=True)

    def _decode_pcm(self, pcm: bytes, whole: bool = False) -> str:
        decoder = self._decoder()
        decoder.start_utt()
        audio = _PAD + pcm + _PAD
        if whole:  # one call: the decoder normalizes over the whole utterance
            decoder.process_raw(audio, full_utt=True)
        else:
            for start in range(0, len(audio), _CHUNK):
                decoder.process_raw(audio[start : start + _CHUNK])
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    def transcribe(self, wav: bytes) -> Deferred[str]:
        return self._worker.run(self._decode, wav)

    def partial(self, pcm: bytes) -> Deferred[str]:
        """The utterance so far, decoded again from its start on the same bounded threads."""
        return self._worker.run(self._decode_pcm, pcm)


def _keyword_file(keywords: list[str]) -> str:
    """PocketSphinx reads keyword spotting lists from a file."""
    handle = tempfile.NamedTemporaryFile("w", prefix="livetx-kws-", suffix=".txt", delete=False)
    with handle:
        for phrase in keywords:
            phrase = phrase.strip().lower()
            if not phrase.endswith("/"):
                phrase += f" /{_KEYWORD_THRESHOLD}/"
            handle.write(phrase + "\n")
    return handle.name
