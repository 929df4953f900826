"""faster-whisper speech-to-text, offline, as the optional ``livetx[whisper]`` extra.

Whisper understands open vocabulary in many languages, where PocketSphinx
needs a grammar. ``[stt] model`` names a local CTranslate2 model directory
(``model.bin``, ``config.json``, ``tokenizer.json``); nothing is downloaded.
The base model transcribes a short command in about a second on two cores.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from livetx.config import STTConfig
from livetx.providers.base import recognizer_input
from livetx.providers.threads import Worker


class WhisperRecognizer:
    """Transcribes one WAV segment per call with a local Whisper model."""

    name = "faster_whisper"

    def __init__(self, config: STTConfig, http: Any, reactor: Any) -> None:
        self._directory = str(Path(config.model or "").expanduser())
        self._language = config.language
        self._threads = config.threads
        # One decode at a time; CTranslate2 spreads it over ``threads`` cores.
        self._worker = Worker(reactor, "whisper", 1)
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    self._directory, device="cpu", compute_type="int8", cpu_threads=self._threads
                )
        return self._model

    def _decode(self, wav: bytes) -> str:
        """Runs on the Whisper thread; the model loads on the first segment."""
        import numpy

        samples = numpy.frombuffer(recognizer_input(wav), dtype="<i2").astype(numpy.float32) / 32768
        segments, _ = self._load().transcribe(samples, language=self._language, beam_size=1)
        return " ".join(segment.text.strip() for segment in segments)

    def transcribe(self, wav: bytes) -> Deferred[str]:
        return self._worker.run(self._decode, wav)
