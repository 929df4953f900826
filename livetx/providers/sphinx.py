"""PocketSphinx speech-to-text, offline, with the English model its wheel ships.

Open vocabulary is rough (Whisper, the default, is the engine for
conversation); with a JSGF grammar or a keyword list it is exact and fast,
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
from livetx.providers.base import recognizer_input, reported
from livetx.threads import ProcessWorker

#: Quiet around the segment, a quarter second each side: the decoder needs
#: some to find word edges. Faint noise rather than digital zeros, whose
#: energy the front end cannot take a logarithm of.
_PAD_SAMPLES = SAMPLE_RATE // 4
#: Frames quieter than this (dB below the segment's loudest 10 ms) at either
#: end are silence, trimmed so that how much of it the client sent changes nothing.
_SILENCE_DB = 40
#: Detection threshold for a keyword phrase without one of its own ("lights on /1e-30/").
_KEYWORD_THRESHOLD = "1e-55"
#: In a decoding process: its decoder for each set of options.
_decoders: dict[tuple[tuple[str, Any], ...], Any] = {}


class SphinxRecognizer:
    """Transcribes one WAV segment per call."""

    name = "pocketsphinx"
    #: Segments queue per owner and take turns (see :mod:`livetx.threads`).
    fair_share = True

    def __init__(self, config: STTConfig, http: Any, reactor: Any) -> None:
        options: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if config.grammar:
            options["jsgf"] = str(Path(config.grammar).expanduser())
            # The second, lattice pass rescored grammar paths that had not
            # reached the grammar's end: it dropped the last word ("turn on the
            # kitchen") or swapped one ("off" for "on"). The first pass keeps
            # to the grammar.
            options["bestpath"] = False
        elif config.keywords:
            options["kws"] = _keyword_file(config.keywords)
        self._options = tuple(sorted(options.items()))
        self._worker = ProcessWorker(reactor, config.threads)

    def transcribe(self, wav: bytes, owner: str = "") -> Deferred[str]:
        return reported(self.name, wav, self._worker.run(_transcribe, self._options, wav, owner=owner))

    def partial(self, pcm: bytes, owner: str = "") -> Deferred[str]:
        """The utterance so far, decoded again from its start by the same processes.

        Skipped (no new text) while every process is busy: a final transcript,
        which a reply waits for, must never queue behind partials."""
        if not self._worker.idle:
            return succeed("")
        return self._worker.run(_decode, self._options, pcm, owner=owner)


def _transcribe(options: tuple[tuple[str, Any], ...], wav: bytes) -> str:
    """Runs in a decoding process; a bad file raises STTError there, which comes back."""
    return _decode(options, recognizer_input(wav))


def _decode(options: tuple[tuple[str, Any], ...], pcm: bytes) -> str:
    """Runs in a decoding process, one utterance decoded as if it were the
    decoder's first: a process serves every user, and a transcript must not
    depend on what was decoded there before.

    The whole utterance goes in one call, so the decoder normalizes its
    cepstra over all of it (batch CMN, the model's setting; feeding it in
    pieces would switch the decoder to a running mean for good). The model
    also turns on noise removal, whose noise estimate carries over from one
    utterance to the next: ``start_stream`` forgets it, or the same audio
    decoded differently after a partial, another user's words, or nothing
    (a fresh decoder's first utterance)."""
    decoder = _decoders.get(options)
    if decoder is None:
        from pocketsphinx import Decoder

        decoder = _decoders[options] = Decoder(**dict(options))
    decoder.start_stream()
    decoder.start_utt()
    decoder.process_raw(_framed(pcm), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""


def _framed(pcm: bytes) -> bytes:
    """The utterance without the silence at its ends, between two fixed pads.

    The decoder normalizes its features over the whole utterance (batch
    CMN): a second of silence on either side shifted that mean enough to
    change words, so every segment is framed the same way whatever the
    client sent around it."""
    import numpy

    samples = numpy.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)  # a partial may end mid-sample
    frame = SAMPLE_RATE // 100
    count = len(samples) // frame
    if count:
        energy = numpy.sqrt((samples[: count * frame].astype(numpy.float64).reshape(count, frame) ** 2).mean(axis=1))
        loud = numpy.flatnonzero(energy > energy.max() * 10 ** (-_SILENCE_DB / 20))
        if len(loud):  # keep 50 ms either side of the first and last loud frame
            samples = samples[max(0, (loud[0] - 5) * frame) : (loud[-1] + 6) * frame]
    pad = numpy.random.default_rng(0).integers(-4, 5, _PAD_SAMPLES).astype("<i2")
    return b"".join((pad.tobytes(), samples.tobytes(), pad.tobytes()))


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
