"""eSpeak NG text-to-speech, offline, from the ``espeakng-loader`` wheel.

The wheel carries the library and its voice data, so nothing is installed
by apt and nothing is downloaded. eSpeak keeps process-wide state, so the
process has one engine and every call runs on its one thread; a sentence
takes a few milliseconds.
"""

from __future__ import annotations

import ctypes
from typing import Any

from twisted.internet.defer import Deferred

from livetx.audio import to_wav
from livetx.config import TTSConfig
from livetx.providers.base import TTSError
from livetx.providers.threads import Worker

_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1
_PITCH = 3
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    """The ctypes binding; lives on the worker thread only."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise TTSError("eSpeak NG failed to initialise")
        self._settings: tuple[str, int, int] | None = None
        self._pcm = bytearray()
        self._callback = _SynthCallback(self._collect)  # kept alive with the engine
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _collect(self, wav: Any, samples: int, events: Any) -> int:
        if wav and samples > 0:
            self._pcm += ctypes.string_at(wav, samples * 2)
        return 0

    def _configure(self, settings: tuple[str, int, int]) -> None:
        if settings == self._settings:
            return
        voice, rate, pitch = settings
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise TTSError(f"eSpeak NG has no voice {voice!r}")
        self._lib.espeak_SetParameter(_RATE, rate, 0)
        self._lib.espeak_SetParameter(_PITCH, pitch, 0)
        self._settings = settings

    def speak(self, settings: tuple[str, int, int], text: str) -> bytes:
        self._configure(settings)
        self._pcm = bytearray()
        data = text.encode("utf-8")
        if self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None):
            raise TTSError("eSpeak NG could not synthesize the sentence")
        return to_wav(self._pcm, self.rate)


_engine: _Engine | None = None
_worker: Worker | None = None


def _speak(settings: tuple[str, int, int], text: str) -> bytes:
    """Runs on the eSpeak thread."""
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine.speak(settings, text)


class EspeakSpeech:
    """One WAV per sentence from eSpeak NG."""

    name = "espeak"
    #: Sentences queue per owner and take turns (see :mod:`livetx.providers.threads`).
    fair_share = True

    def __init__(self, config: TTSConfig, http: Any, reactor: Any) -> None:
        global _worker
        if _worker is None:
            _worker = Worker(reactor, "espeak", 1)
        self._worker = _worker
        self._settings = (config.voice or "en-us", config.rate, config.pitch)

    def synthesize(self, text: str, owner: str = "") -> Deferred[bytes]:
        return self._worker.run(_speak, self._settings, text, owner=owner)
