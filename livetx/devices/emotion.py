"""The face a board shows with a reply: an emotion read cheaply from the reply's first sentence.

The firmware's screen has a face per emotion (its ``llm`` message's
``emotion``, with an emoji as ``text``): the 21 names below, the ones the
community servers send. As they do, the first of these emoji in the reply
decides; a model asked to speak rarely writes emoji, so without one a few
words decide ("sorry" looks sad, "haha" laughs); else the face is neutral.
No model call: it must cost nothing before the first sentence is spoken.
"""

from __future__ import annotations

import re

#: Emoji → the firmware's emotion name (xiaozhi-esp32-server's table).
EMOJI = {
    "😶": "neutral", "🙂": "happy", "😆": "laughing", "😂": "funny", "😔": "sad", "😠": "angry",
    "😭": "crying", "😍": "loving", "😳": "embarrassed", "😲": "surprised", "😱": "shocked",
    "🤔": "thinking", "😉": "winking", "😎": "cool", "😌": "relaxed", "🤤": "delicious",
    "😘": "kissy", "😏": "confident", "😴": "sleepy", "😜": "silly", "🙄": "confused",
}
#: The emoji shown for each emotion.
FACES = {emotion: emoji for emoji, emotion in EMOJI.items()}
#: Words (lower case, whole) → emotion, tried in order when the reply has none of the emoji.
WORDS: list[tuple[str, str]] = [
    (r"haha+|hehe|lol", "laughing"),
    (r"sorry|unfortunately|sadly|apologi[sz]e", "sad"),
    (r"congratulations|great|wonderful|glad|happy|awesome|hooray", "happy"),
    (r"wow|really\?|amazing|incredible", "surprised"),
    (r"hmm+|let me think|i wonder|perhaps", "thinking"),
    (r"love|adore", "loving"),
    (r"good night|sleepy|tired", "sleepy"),
    (r"delicious|yummy|tasty", "delicious"),
    (r"oops|embarrassing", "embarrassed"),
    (r"calm|relax|breathe", "relaxed"),
    (r"not sure|confus\w*|no idea", "confused"),
]
_WORDS = [(re.compile(rf"\b(?:{pattern})(?!\w)", re.IGNORECASE), emotion) for pattern, emotion in WORDS]
NEUTRAL = "neutral"


def feeling(text: str) -> tuple[str, str]:
    """(emotion, emoji) for a reply starting with ``text``."""
    for char in text:
        if char in EMOJI:
            return EMOJI[char], char
    for pattern, emotion in _WORDS:
        if pattern.search(text):
            return emotion, FACES[emotion]
    return NEUTRAL, FACES[NEUTRAL]
