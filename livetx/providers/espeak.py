"""eSpeak NG text-to-speech, offline, from the ``espeakng-loader`` wheel.

The wheel carries the library and its voice data, so nothing is installed
by apt and nothing is downloaded. eSpeak keeps process-wide state, so the
process has one engine, used by one caller at a time (a lock): synthesis on
its one thread, and the voice check at start-up. A sentence takes a few
milliseconds.

``python -m livetx.providers.espeak`` lists the voices ``[tts] voice`` accepts.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from twisted.internet.defer import Deferred

from livetx.audio import to_wav
from livetx.config import TTSConfig
from livetx.providers.base import TTSError, Voices
from livetx.threads import Worker

_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1
_PITCH = 3
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
#: Suggested when nothing is close to an unknown voice's name.
_COMMON = ("en-us", "en-gb", "de", "fr", "es", "it", "pt", "cmn")


class _Voice(ctypes.Structure):
    """eSpeak NG's ``espeak_VOICE``."""

    _fields_ = [
        ("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p),
    ]


class _Engine:
    """The ctypes binding; lives on the worker thread only."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
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

    def _list(self, spec: _Voice | None) -> list[str]:
        """The file names (``gmw/en-US`` → ``en-us``) of the voices, or variants, eSpeak lists for ``spec``."""
        found = self._lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
        names: list[str] = []
        i = 0
        while found[i]:
            identifier = (found[i].contents.identifier or b"").decode(errors="replace")
            names.append(identifier.rsplit("/", 1)[-1].lower())
            i += 1
        return names

    def voices(self) -> list[str]:
        """Names ``[tts] voice`` accepts (a variant may follow: ``en-us+f3``)."""
        return sorted(set(self._list(None)))

    def variants(self) -> list[str]:
        """What may follow a voice's name after a ``+``."""
        return sorted(set(self._list(_Voice(languages=b"variant"))))

    def unknown(self, voice: str) -> str | None:
        """Why eSpeak cannot speak as ``voice``, or None when it can."""
        import difflib  # only for the refusal's suggestions: an idle server need not load it

        base, _, variant = voice.partition("+")
        self._settings = None  # the next sentence sets its own voice again
        if not base or self._lib.espeak_SetVoiceByName(base.encode()) != 0:
            names = self.voices()
            close = difflib.get_close_matches(base.lower(), names, n=3, cutoff=0.6)
            few = (close + [name for name in _COMMON if name in names and name not in close])[:5]
            return (f"is not an eSpeak NG voice; try {', '.join(few)} "
                    f"({len(names)} voices: python -m livetx.providers.espeak)")
        if variant:
            variants = self._list(_Voice(languages=b"variant"))
            if variant.lower() not in variants:
                close = difflib.get_close_matches(variant, variants, n=5) or variants[:5]
                return f"has no eSpeak NG variant {variant!r}; try {', '.join(close)} (after the +)"
        return None

    def speak(self, settings: tuple[str, int, int], text: str) -> bytes:
        self._configure(settings)
        self._pcm = bytearray()
        data = text.encode("utf-8")
        if self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None):
            raise TTSError("eSpeak NG could not synthesize the sentence")
        return to_wav(self._pcm, self.rate)


_engine: _Engine | None = None
_worker: Worker | None = None
_lock = threading.Lock()


def _engine_in_use() -> _Engine:
    """The process's engine, made on first use; call with ``_lock`` held."""
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def _speak(settings: tuple[str, int, int], text: str) -> bytes:
    """Runs on the eSpeak thread."""
    with _lock:
        return _engine_in_use().speak(settings, text)


def check_voice(voice: str) -> str | None:
    """At start-up: why ``[tts] voice`` is no eSpeak NG voice, or None. Blocks briefly."""
    with _lock:
        return _engine_in_use().unknown(voice)


def voices() -> list[str]:
    with _lock:
        return _engine_in_use().voices()


def _offered(default: str) -> Voices:
    """Every voice and variant, for sessions to pick from. Blocks briefly."""
    with _lock:
        engine = _engine_in_use()
        return Voices(tuple(engine.voices()), default, tuple(engine.variants()))


class EspeakSpeech:
    """One WAV per sentence from eSpeak NG."""

    name = "espeak"
    #: Sentences queue per owner and take turns (see :mod:`livetx.threads`).
    fair_share = True

    def __init__(self, config: TTSConfig, http: Any, reactor: Any) -> None:
        global _worker
        if _worker is None:
            _worker = Worker(reactor, "espeak", 1)
        self._worker = _worker
        self._voice = config.voice or "en-us"
        self._rate, self._pitch = config.rate, config.pitch
        self._voices: Voices | None = None

    def synthesize(self, text: str, voice: str | None = None, owner: str = "") -> Deferred[bytes]:
        return self._worker.run(_speak, (voice or self._voice, self._rate, self._pitch), text, owner=owner)

    def voices(self) -> Voices:
        """Read when first asked, once: an idle server that no session asks never loads eSpeak for it."""
        if self._voices is None:
            self._voices = _offered(self._voice)
        return self._voices


if __name__ == "__main__":
    print("\n".join(voices()))
