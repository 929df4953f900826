"""The sentence cutter decides what TTS speaks and what captions show."""

from __future__ import annotations

import pytest

from livetx.live.segmenter import SentenceSegmenter, speakable, without_emoji


def run(deltas: list[str], min_chars: int = 10) -> list[str]:
    segmenter = SentenceSegmenter(min_chars)
    out: list[str] = []
    for delta in deltas:
        out += segmenter.feed(delta)
    return out + segmenter.flush()


def test_cuts_at_each_terminator_kind() -> None:
    text = "First sentence here. Second one, longer! Third question here?\nFourth line\n"
    assert run(list(text)) == [
        "First sentence here.",
        "Second one, longer!",
        "Third question here?",
        "Fourth line",
    ]


def test_cjk_punctuation() -> None:
    assert run(["今天天气很好，适合出去散步。", "你想去哪里玩呢？我们可以一起去！"]) == [
        "今天天气很好，适合出去散步。",
        "你想去哪里玩呢？我们可以一起去！",  # 8 characters: joined to the next
    ]


def test_short_pieces_join_the_next_one() -> None:
    assert run(["Ok. ", "Sure thing. ", "That is a longer sentence."]) == [
        "Ok. Sure thing.",
        "That is a longer sentence.",
    ]


def test_rest_is_flushed_at_the_end() -> None:
    assert run(["No terminator at all"]) == ["No terminator at all"]
    assert run(["Tiny."]) == ["Tiny."]
    assert run([]) == []
    assert run(["   "]) == []


@pytest.mark.parametrize("split", range(1, 30))
def test_same_sentences_however_the_stream_is_split(split: int) -> None:
    text = "Pi is about 3.14159 today. Then e is 2.71828 tomorrow!"
    pieces = [text[i : i + split] for i in range(0, len(text), split)]
    assert run(pieces) == ["Pi is about 3.14159 today.", "Then e is 2.71828 tomorrow!"]


def test_sentence_is_released_as_soon_as_its_terminator_arrives() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("Hello there, friend") == []
    assert segmenter.feed("!") == ["Hello there, friend!"]
    assert segmenter.feed(" And") == []


def test_trailing_number_waits_for_the_next_delta() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("The answer is 3.") == []
    assert segmenter.feed(" Really.") == ["The answer is 3."]
    assert segmenter.flush() == ["Really."]


@pytest.mark.parametrize(("sentence", "spoken"), [
    ("Great news 🎉 today!", "Great news today!"),
    ("👍🏽 Done.", "Done."),  # a skin tone is an emoji too
    ("Family: 👨\u200d👩\u200d👧 ok.", "Family: ok."),  # joined by ZWJ, nothing invisible left
    ("❤️ love it", "love it"),  # with its variation selector
    ("😂🤣", ""),
    ("😂 !", ""),  # nothing to say: not synthesised
    ("你好😊。", "你好。"),
])
def test_speech_has_no_emoji_and_an_emoji_only_sentence_none(sentence: str, spoken: str) -> None:
    assert speakable(sentence) == spoken


@pytest.mark.parametrize(("sentence", "spoken"), [
    ("This is **really** _quite_ ~~not~~ ***big***.", "This is really quite not big."),
    ("## Next steps", "Next steps"),
    ("- Buy milk.", "Buy milk."),
    ("* **Bold** item.", "Bold item."),
    ("> Quoted words.", "Quoted words."),
    ("See [the docs](https://example.org/a_b) now.", "See the docs now."),
    ("![a cat](cat.png) sits.", "a cat sits."),
    ("Run `livetx serve` first.", "Run livetx serve first."),
    ("```", ""),  # a fence alone is not spoken
    ("---", ""),
    ("**Half a bold sentence.", "Half a bold sentence."),  # the closing ** is in the next sentence
    ("Then it ends.**", "Then it ends."),
    ("2*3 is 6 and 2 * 3 too.", "2*3 is 6 and 2 * 3 too."),  # not emphasis
    ("Call snake_case_name and __init__.", "Call snake_case_name and init."),
    ("1. First item.", "1. First item."),  # a number is worth saying
])
def test_speech_has_no_markdown(sentence: str, spoken: str) -> None:
    assert speakable(sentence) == spoken


def test_captions_lose_emoji_and_line_breaks_as_the_reference_sends_them() -> None:
    assert without_emoji("Hi🙂\nthere🚀") == "Hithere"  # xiaozhi-esp32-server's check_emoji
