"""faster-whisper internals that let a short utterance be encoded in a short window.

faster-whisper pads every window's features to Whisper's 30 s
(``pad_or_trim`` with zeros) before ``WhisperModel.encode``, so the encoder,
most of a decode, costs the same for "hello" as for 30 s of speech.
CTranslate2 (4.x) encodes shorter inputs too, and the encoder's cost falls
with the frames it is given (about 8x less for 10 s than for 30 s on two
cores). Whisper was trained on 30 s windows, though: cut to the speech
alone it repeats itself or invents words (WER 5 to 19 on the bench's eSpeak
and Piper sets, against 0.1), while a window of 10 s or more, the speech
followed by at least 2 s of padding, hears the same words
(benchmarks/RESULTS.md, "Short windows").

:class:`ShortWindowModel` overrides ``encode`` (a public method, but its
being the one place every window passes through is faster-whisper's
internal shape) and trims the zero padding to the smallest of
:data:`WINDOWS` that still leaves :data:`PADDING_FRAMES` of it, inside
:func:`short_windows` only: a recording longer than one window is decoded
with timestamps, which place each next window, and those need the full 30 s.
:func:`encoded` tells which window was heard, so a decode that went wrong
in it can be heard again in the next.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import numpy
from faster_whisper import WhisperModel

#: Window lengths in feature frames (10 ms each), tried shortest first; past
#: the last, the 30 s window faster-whisper gave.
WINDOWS = (1000, 2000)
#: Zero padding kept after the last frame of audio: with less, Whisper
#: invents words (benchmarks/RESULTS.md, "Short windows").
PADDING_FRAMES = 200

_state = threading.local()


@contextmanager
def short_windows(longer_than: int = 0) -> Iterator[None]:
    """Within this block, decodes on this thread encode a short window when the audio is short,
    one of more than ``longer_than`` frames (a decode heard again in a longer window)."""
    _state.short, _state.encoded = longer_than, 0
    try:
        yield
    finally:
        _state.short = None


def encoded() -> int:
    """The frames of the last window encoded on this thread inside :func:`short_windows` (0: none)."""
    return int(getattr(_state, "encoded", 0))


def window(features: Any, longer_than: int = 0) -> Any:
    """``features`` (mel bins x frames, zero-padded to 30 s) cut to the shortest window that fits
    and is longer than ``longer_than`` frames."""
    frames = features.shape[-1]
    columns = numpy.flatnonzero(features.reshape(-1, frames).any(axis=0))
    used = int(columns[-1]) + 1 if columns.size else 0
    for length in WINDOWS:
        if used + PADDING_FRAMES <= length < frames and length > longer_than:
            return numpy.ascontiguousarray(features[..., :length])
    return features


class ShortWindowModel(WhisperModel):  # type: ignore[misc]  # faster-whisper has no type hints
    """A Whisper model whose encoder hears a short window for short audio (see the module)."""

    def encode(self, features: Any) -> Any:
        longer_than = getattr(_state, "short", None)
        if longer_than is not None:
            features = window(features, longer_than)
            _state.encoded = features.shape[-1]
        return super().encode(features)
