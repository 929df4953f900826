"""The browser page in a real headless Chromium, against a real server.

Debian's ``chromium`` is driven by Playwright for Python (its sync API, in a
thread, while the test's reactor serves the page). A fake microphone plays
a WAV file made by the offline speech engine, so a voice turn goes through
the page's AudioWorklet, the socket, recognition and back.

Set ``LIVETX_SCREENSHOT=docs/live-page.png`` to refresh the docs' picture.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from livetx.audio import read_wav, to_wav
from livetx.config import TTSConfig
from livetx.providers.espeak import EspeakSpeech

from .test_ops import get
from .test_voice import GRAMMAR

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
#: No sandbox (tests run as root), and nothing that reaches for the network.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
SPOKEN = "turn off the bedroom lights"
LONG_REPLY = " ".join(f"Here is sentence {n}." for n in ("one", "two", "three", "four", "five", "six", "seven"))
TIMEOUT_MS = 30_000


def chromium() -> Any:
    """Playwright's sync API, or a failure that says what to install."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; run: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[test]'")
    return sync_playwright


async def microphone_file(directory: Path) -> tuple[Path, float]:
    """What the fake microphone hears: a short pause, the command, then silence."""
    wav = await EspeakSpeech(TTSConfig(), None, reactor).synthesize(SPOKEN)
    pcm, rate = read_wav(wav)
    pause = b"\0\0" * (rate // 4)
    path = directory / "command.wav"
    path.write_bytes(to_wav(pause + pcm + b"\0\0" * (3 * rate), rate))
    return path, len(pause + pcm) / 2 / rate


def connected_page(browser: Any, url: str, token: str, errors: list[str] | None = None) -> Any:
    """A new tab with the page open and connected with ``token``; script errors go to ``errors``."""
    page = browser.new_page()
    if errors is not None:
        page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.fill("#token", token)
    page.click("#connect-button")
    page.wait_for_selector("#status.open", timeout=TIMEOUT_MS)
    return page


def interrupt_a_reply(browser: Any, url: str, token: str) -> dict[str, Any]:
    """Click Interrupt once the first sentence is playing; see what stops."""
    page = connected_page(browser, url, token)
    page.fill("#text", LONG_REPLY)
    page.press("#text", "Enter")
    page.wait_for_function("window.livetx.stats.chunksScheduled >= 1", timeout=TIMEOUT_MS)
    playing = page.evaluate("window.livetx.player.playing")
    page.click("#interrupt")
    page.wait_for_selector(".msg.bot.interrupted", timeout=TIMEOUT_MS)
    stopped = page.evaluate("({sources: window.livetx.player.sources.size, playing: window.livetx.player.playing,"
                            " chunks: window.livetx.stats.chunksScheduled})")
    page.wait_for_timeout(1000)  # the rest of the reply would have arrived by now
    return {
        "playing_before": playing,
        "stopped": stopped,
        "chunks_later": page.evaluate("window.livetx.stats.chunksScheduled"),
        "bot": page.inner_text(".msg.bot"),
    }


def hands_free(browser: Any, url: str, token: str) -> dict[str, Any]:
    """Listen hands-free: the page opens and closes the segment by the sound level."""
    page = connected_page(browser, url, token)
    page.check("#hands-free")
    page.click("#mic")  # "Listen": the fake microphone starts its file again
    page.wait_for_function("window.livetx.stats.turnsEnded >= 1", timeout=TIMEOUT_MS)
    page.click("#mic")
    return {
        "segments": page.evaluate("window.livetx.stats.segments"),
        "user": page.locator(".msg.user").all_inner_texts(),
        "metrics": page.inner_text("#metrics"),
        "listening": page.get_attribute("#mic", "aria-pressed"),
    }


def drive_page(sync_playwright: Any, url: str, token: str, wav: Path,
               profile: Path, screenshot: Path, slow: tuple[str, str]) -> dict[str, Any]:
    """Runs in a thread: a text turn and a push-to-talk voice turn, as a user would;
    then, in new tabs, a hands-free turn and an interrupted reply (on the ``slow`` server)."""
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        try:
            errors: list[str] = []
            page = connected_page(browser, url, token, errors)

            page.fill("#text", "Good morning. The sun is out.")
            page.press("#text", "Enter")
            page.wait_for_function(
                "window.livetx.stats.turnsEnded >= 1 && window.livetx.stats.chunksScheduled >= 2",
                timeout=TIMEOUT_MS)
            text_turn = {
                "bot": page.locator(".msg.bot").all_inner_texts(),
                "caption": page.inner_text("#caption"),
                "stats": page.evaluate("({...window.livetx.stats})"),
                "metrics": page.inner_text("#metrics"),
            }

            page.hover("#mic")  # push to talk: hold while the fake microphone speaks
            page.mouse.down()
            # Release once the page has heard the command and then half a
            # second of silence: counted in 20 ms frames, however slow the machine.
            page.wait_for_function(
                "window.livetx.stats.loudFrames >= 25 && window.livetx.stats.quietFrames >= 25",
                timeout=TIMEOUT_MS)
            page.mouse.up()
            page.wait_for_function("window.livetx.stats.turnsEnded >= 2", timeout=TIMEOUT_MS)
            page.wait_for_function("window.livetx.stats.chunksScheduled >= 3", timeout=TIMEOUT_MS)
            page.screenshot(path=str(screenshot))
            seen = {
                "text_turn": text_turn,
                "user": page.locator(".msg.user").all_inner_texts(),
                "bot": page.locator(".msg.bot").all_inner_texts(),
                "errors_shown": page.locator(".msg.error").all_inner_texts(),
                "stats": page.evaluate("({...window.livetx.stats})"),
                "page_errors": errors,
            }
            seen["hands_free"] = hands_free(browser, url, token)
            seen["interrupted"] = interrupt_a_reply(browser, *slow)
            return seen
        finally:
            browser.close()


@pytest_twisted.ensureDeferred
async def test_text_and_voice_turns_in_a_real_browser(livetx: Any, tmp_path: Path) -> None:
    sync_playwright = chromium()
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    server = await livetx(f'[stt]\nprovider = "pocketsphinx"\ngrammar = "{grammar}"\n')
    wav, seconds = await microphone_file(tmp_path)
    screenshot = tmp_path / "live-page.png"
    slow = await livetx("[llm]\necho_delay = 0.15\n")  # the echo model, a word every 150 ms
    seen = await deferToThread(
        drive_page, sync_playwright, server.url("/", scheme="http"), server.token("browser"),
        wav, tmp_path / "profile", screenshot, (slow.url("/live", scheme="http"), slow.token()),
    )
    text_turn = seen["text_turn"]
    assert text_turn["bot"] == ["Good morning. The sun is out."]  # the echo model, streamed as deltas
    assert text_turn["caption"] == "The sun is out."  # the caption of the last audio chunk
    assert text_turn["stats"]["chunksScheduled"] == 2 and text_turn["stats"]["secondsScheduled"] > 1.0
    assert "speak_to_first_frame" in text_turn["metrics"] and "tts\tespeak" in text_turn["metrics"]

    assert seen["page_errors"] == [] and seen["errors_shown"] == []
    assert seen["stats"]["partsSent"] >= int(seconds * 50)  # 20 ms frames for the whole utterance
    assert seen["user"] == ["Good morning. The sun is out.", SPOKEN]
    assert seen["bot"][-1] == SPOKEN
    assert screenshot.stat().st_size > 10_000

    heard = seen["hands_free"]  # one utterance, one segment, opened and closed by the level alone
    assert heard["segments"] == 1 and heard["listening"] == "false"
    assert len(heard["user"]) == 1 and "input_type\taudio" in heard["metrics"]

    interrupted = seen["interrupted"]
    assert interrupted["playing_before"] is True
    assert interrupted["stopped"]["sources"] == 0 and interrupted["stopped"]["playing"] is False
    assert interrupted["chunks_later"] == interrupted["stopped"]["chunks"]  # nothing played after stop_play
    assert LONG_REPLY.startswith(interrupted["bot"]) and len(interrupted["bot"]) < len(LONG_REPLY)
    if os.environ.get("LIVETX_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["LIVETX_SCREENSHOT"])


@pytest_twisted.ensureDeferred
async def test_the_page_and_its_files_are_served(livetx: Any) -> None:
    server = await livetx()
    code, kind, page = await get(server, "/")
    assert code == 200 and kind.startswith("text/html") and '<script type="module" src="/static/live.js">' in page
    assert (await get(server, "/live"))[2] == page
    code, kind, worklet = await get(server, "/static/capture.js")
    assert code == 200 and kind.startswith("text/javascript") and 'registerProcessor("pcm16-capture"' in worklet
    for missing in ("/static/nothing.js", "/static/../pages.py", "/live/more"):
        assert (await get(server, missing))[0] == 404, missing
