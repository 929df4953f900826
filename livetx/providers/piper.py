"""Piper neural text-to-speech, offline, as the optional ``livetx[piper]`` extra.

Much more natural than eSpeak, at about 0.1 s per sentence on two cores.
``[tts] model`` names the voice's ``.onnx`` file (its ``.onnx.json`` beside
it); voices come from the Piper project or from packages that bundle one.
A model trained on several speakers names them in its ``.onnx.json``;
``[tts] voice`` picks one, and is checked against them at start-up.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from livetx.config import TTSConfig
from livetx.providers.base import Voices
from livetx.threads import Worker


def speakers(model: str) -> dict[str, int]:
    """The speakers of a Piper model (empty for a one-speaker model), from its ``.onnx.json``."""
    with open(f"{model}.json", encoding="utf-8") as f:
        config = json.load(f)
    return dict(config.get("speaker_id_map") or {})


def check_voice(model: str, voice: str) -> str | None:
    """At start-up: why ``voice`` is no speaker of ``model``, or None."""
    try:
        known = speakers(model)
    except (OSError, ValueError) as e:
        return f"cannot be checked: {model}.json: {getattr(e, 'strerror', None) or e}"
    if not known:
        return "is set, but this Piper model has one speaker; remove [tts] voice or choose another model"
    if voice not in known:
        return f"is not a speaker of this Piper model; try {', '.join(sorted(known)[:5])} ({len(known)} speakers)"
    return None


class PiperSpeech:
    """One WAV per sentence from a Piper voice model."""

    name = "piper"
    #: Sentences queue per owner and take turns (see :mod:`livetx.threads`).
    fair_share = True

    def __init__(self, config: TTSConfig, http: Any, reactor: Any) -> None:
        # The factory's start-up check refuses piper without a model, or with a voice it lacks.
        self._model_path = config.model or ""
        known = speakers(self._model_path) if self._model_path else {}
        # A model of one speaker offers one voice, named after its file.
        self._speakers: dict[str, int | None] = dict(known) or {Path(self._model_path).stem: None}
        first = min(self._speakers, key=lambda name: self._speakers[name] or 0)
        self._voices = Voices(tuple(sorted(self._speakers)), config.voice or first)
        # onnxruntime parallelises inside one call; one call at a time is enough.
        self._worker = Worker(reactor, "piper", 1)
        self._voice: Any = None

    def _load(self) -> None:
        """Runs on the Piper thread: the model loads once, at start-up (:meth:`warm`) or on the first sentence."""
        if self._voice is None:
            from piper import PiperVoice

            self._voice = PiperVoice.load(self._model_path)

    def _speak(self, text: str, speaker: int | None) -> bytes:
        from piper import SynthesisConfig

        self._load()
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            self._voice.synthesize_wav(text, w, SynthesisConfig(speaker_id=speaker))
        return out.getvalue()

    def warm(self) -> Deferred[None]:
        """Load the model now rather than during the first reply."""
        return self._worker.run(self._load)

    def voices(self) -> Voices:
        return self._voices

    def synthesize(self, text: str, voice: str | None = None, owner: str = "") -> Deferred[bytes]:
        return self._worker.run(self._speak, text, self._speakers[voice or self._voices.default], owner=owner)
