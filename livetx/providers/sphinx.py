"""PocketSphinx speech-to-text, offline, with the English model its wheel ships.

Open vocabulary is rough; with a JSGF grammar or a keyword list it is exact,
which is what command-style devices need. PocketSphinx keeps Python's GIL for
the whole of a decode, long enough to stall the reactor (benchmarks/RESULTS.md),
so decoding runs in a bounded pool of child processes, one decoder
per process, loaded on first use to keep idle memory low. It is cheap enough
to give talk mode partial transcripts while the user is still speaking.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed

from livetx.audio import SAMPLE_RATE
from livetx.config import STTConfig
from livetx.providers.base import recognizer_input
from livetx.providers.threads import ProcessWorker

#: Silence around the segment: the decoder needs some to find word edges.
_PAD = b"\0\0" * (SAMPLE_RATE // 4)
#: Detection threshold for a keyword phrase without one of its own ("lights on /1e-30/").
_KEYWORD_THRESHOLD = "1e-45"
#: In a decoding process: its decoder for each set of options.
_decoders: dict[tuple[tuple[str, Any], ...], Any] = {}


class SphinxRecognizer:
    """Transcribes one WAV segment per call."""

    name = "pocketsphinx"

    def __init__(self, config: STTConfig, http: Any, reactor: Any) -> None:
        options: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if config.grammar:
            options["jsgf"] = str(Path(config.grammar).expanduser())
        elif config.keywords:
            options["kws"] = _keyword_file(config.keywords)
        self._options = tuple(sorted(options.items()))
        self._worker = ProcessWorker(reactor, config.threads)

    def transcribe(self, wav: bytes) -> Deferred[str]:
        return self._worker.run(_transcribe, self._options, wav)

    def partial(self, pcm: bytes) -> Deferred[str]:
        """The utterance so far, decoded again from its start by the same processes.

        Skipped (no new text) while every process is busy: a final transcript,
        which a reply waits for, must never queue behind partials."""
        if not self._worker.idle:
            return succeed("")
        return self._worker.run(_decode, self._options, pcm)


def _transcribe(options: tuple[tuple[str, Any], ...], wav: bytes) -> str:
    """Runs in a decoding process; a bad file raises STTError there, which comes back."""
    return _decode(options, recognizer_input(wav))


def _decode(options: tuple[tuple[str, Any], ...], pcm: bytes) -> str:
    """Runs in a decoding process: the whole utterance in one call, so the
    decoder normalizes its cepstra over all of it (batch CMN, the decoder's
    default; feeding it in pieces would switch the decoder to a running mean
    for good, and later transcripts would depend on earlier ones)."""
    decoder = _decoders.get(options)
    if decoder is None:
        from pocketsphinx import Decoder

        decoder = _decoders[options] = Decoder(**dict(options))
    decoder.start_utt()
    decoder.process_raw(_PAD + pcm + _PAD, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""


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
