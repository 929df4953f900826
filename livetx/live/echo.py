"""Talk mode: the reply's own voice coming back through the user's loudspeaker is not the user.

A device that plays the reply aloud hears it again in its microphone, a
little later and quieter. Without a check, that echo starts an utterance
(and interrupts the reply, or is answered as if the user had said it).

The server knows exactly what it sent and when: each reply audio file is
placed on the microphone stream's timeline where it starts playing (when it
was sent, or when the one before it ends: a client plays them back to
back). When the detector is about to confirm speech while a reply may still
be playing, the onset's audio is compared with what was playing, by
normalised cross-correlation over every delay up to :data:`MAX_DELAY_MS`:
an onset that is the reply again, however attenuated, correlates strongly
with it; a person talking over it does not, because their voice dominates
the onset. The onset that correlates is dropped as noise; the next one is
judged afresh, so real speech still barges in.

Correlation alone cannot tell an echo from a person who says what the reply
says in a voice like it (a caller repeating the bot's words, or, on the
calls benchmark, eSpeak answering eSpeak with the same sentence): each
onset dropped there delays the barge-in by another ``min_speech_ms``.
Level can: what comes back through a loudspeaker and a microphone is
quieter than what was played. An onset counts as echo only if it matches the
reply at :data:`MAX_ECHO_GAIN` of its level or less, Geigel's classic
double-talk rule (near-end speech is what is louder than half the far end,
an echo return loss of 6 dB).

Costs nothing when nothing plays; one FFT of about half a second of audio
per onset while a reply plays (benchmarks/RESULTS.md has the CPU per
connection). Memory is bounded: the reference is kept only while it may
still be heard.
"""

from __future__ import annotations

from typing import Any, Callable

from livetx.audio import SAMPLE_RATE, read_wav, resample
from livetx.live.events import Ignore

#: The longest delay from sending audio to hearing it back (network, the
#: client's buffer, the loudspeaker and the microphone) that is checked.
MAX_DELAY_MS = 800
#: Normalised correlation at or above which an onset is the reply again.
THRESHOLD = 0.5
#: The loudest an echo is heard, as a fraction of the reply's level: the
#: least-squares gain of the matching reply audio in the onset. 0.5 is 6 dB
#: of echo return loss, Geigel's double-talk threshold; anything louder that
#: matches is a person over the reply (speaking its words), not its echo.
MAX_ECHO_GAIN = 0.5
_PER_MS = SAMPLE_RATE // 1000


class EchoGuard(Ignore):
    """One connection's record of the reply audio that may be playing; a turn listener.

    ``stream_ms`` says where the microphone stream is now (the voice
    detector's count), or None when talk mode is off: then nothing is kept.
    """

    __slots__ = ("_stream_ms", "_playing", "_until")

    def __init__(self, stream_ms: Callable[[], int | None]) -> None:
        self._stream_ms = stream_ms
        #: (first sample on the stream's timeline, samples) of each reply audio that may still play.
        self._playing: list[tuple[int, Any]] = []
        self._until = 0

    def audio_sent(self, audio: bytes) -> None:
        now = self._stream_ms()
        if now is None:
            return
        try:
            pcm, rate = read_wav(audio)
        except ValueError:
            return  # not WAV ([tts] response_format): its echo cannot be told apart
        import numpy

        samples = numpy.frombuffer(resample(pcm, rate), dtype="<i2").astype(numpy.float32)
        start = max(now * _PER_MS, self._until)
        self._until = start + len(samples)
        horizon = now * _PER_MS - MAX_DELAY_MS * _PER_MS * 2
        self._playing = [(at, s) for at, s in self._playing if at + len(s) > horizon] + [(start, samples)]

    def is_echo(self, onset: bytes, end_ms: int) -> bool:
        """Whether ``onset`` (the microphone's audio ending at ``end_ms`` of the stream) is the reply again."""
        end = end_ms * _PER_MS
        span = len(onset) // 2
        first = end - span - MAX_DELAY_MS * _PER_MS
        self._playing = [(at, s) for at, s in self._playing if at + len(s) > first]
        if not self._playing or not span:
            return False
        import numpy

        reference = numpy.zeros(end - first, dtype=numpy.float32)
        for at, samples in self._playing:
            lo, hi = max(at, first), min(at + len(samples), end)
            if lo < hi:
                reference[lo - first : hi - first] = samples[lo - at : hi - at]
        if not reference.any():
            return False
        mic = numpy.frombuffer(onset, dtype="<i2").astype(numpy.float32)
        return _echo_correlation(mic, reference) >= THRESHOLD


def _echo_correlation(mic: Any, reference: Any) -> float:
    """The highest normalised correlation of ``mic`` with any window of ``reference`` as long as it,
    or 0 when that best match is heard louder than an echo can be (:data:`MAX_ECHO_GAIN`)."""
    import numpy

    n = len(mic)
    size = 1 << (len(reference) + n - 1).bit_length()
    product = numpy.fft.irfft(numpy.fft.rfft(reference, size) * numpy.conj(numpy.fft.rfft(mic, size)), size)
    dots = product[: len(reference) - n + 1]  # window j: reference[j : j + n]
    energy = numpy.concatenate(([0.0], numpy.cumsum(reference.astype(numpy.float64) ** 2)))
    windows = energy[n:] - energy[:-n]
    loudness = float(numpy.dot(mic.astype(numpy.float64), mic))
    # A reference window 20 dB quieter than the microphone cannot be what it hears
    # (the echo is quieter than what was played): such windows are not divided up to 1.
    floored = numpy.maximum(windows, loudness / 100)
    correlation = dots / numpy.sqrt(floored * loudness + 1e-9)
    best = int(numpy.argmax(correlation))
    # The best match places the onset against the reply; the reply's share of it there
    # (least squares: dot / the window's energy) says whether it came back as an echo does.
    if dots[best] > MAX_ECHO_GAIN * floored[best]:
        return 0.0
    return float(correlation[best])
