"""The console's rarer paths in a real Chromium: the voice picker, a resume refused because the
server no longer keeps the session's frames, and a request in two breaths (its ``user_msg`` comes
again for the same turn with the whole text, and replaces the first line).

The main tour of the page is :mod:`tests.test_browser`; this file shares its browser and helpers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread, deferToThread

from livetx.audio import read_wav, to_wav
from livetx.config import TTSConfig
from livetx.providers.espeak import EspeakSpeech

from .test_browser import CHROMIUM, FLAGS, LONG_REPLY, TIMEOUT_MS, chromium, cut_off, token_page
from .test_ops import get

#: The grammar of tests.test_voice, and a second breath that may follow a command.
GRAMMAR = """#JSGF V1.0;
grammar home;
public <command> = (turn on | turn off) the <room> lights [and the <room> lights];
<room> = kitchen | bedroom | hallway;
"""
HEAD, TAIL = "turn off the bedroom lights", "and the kitchen lights"
COMMAND = r"turn (on|off) the (kitchen|bedroom|hallway) lights"


def log_frames(page: Any, kind: str, direction: str = "in") -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = page.evaluate(
        f"window.livetx.log.entries.filter(e => e.dir === '{direction}' && e.t === '{kind}').map(e => e.frame)")
    return frames


def voice_tab(browser: Any, url: str, token: str, errors: list[str]) -> dict[str, Any]:
    """Pick a voice and a variant the server lists; then the server's own again."""
    seen: dict[str, Any] = {}
    page = token_page(browser, url, token, errors)
    page.wait_for_function("document.querySelector('#setting-voice').options.length > 100", timeout=TIMEOUT_MS)
    seen["offered"] = page.evaluate("""['#setting-voice', '#setting-variant']
        .map(s => [...document.querySelector(s).options].map(o => o.value))""")
    seen["default_label"] = page.evaluate("document.querySelector('#setting-voice').options[0].text")
    page.select_option("#setting-variant", "f3")  # a variant without a voice: refused on the page
    page.click("#settings button[type=submit]")
    seen["refused"] = {"error": page.inner_text("#settings-error"), "sent": len(log_frames(page, "session_update", "out"))}
    page.select_option("#setting-voice", "de")
    page.click("#settings button[type=submit]")
    page.wait_for_function("document.querySelector('#applied').textContent.includes('de+f3')", timeout=TIMEOUT_MS)
    seen["applied"] = json.loads(page.inner_text("#applied"))
    page.fill("#text", "Guten Tag.")
    page.press("#text", "Enter")
    page.wait_for_function("window.livetx.stats.turnsEnded >= 1 && window.livetx.stats.chunksScheduled >= 1",
                           timeout=TIMEOUT_MS)
    page.select_option("#setting-voice", "")
    page.select_option("#setting-variant", "")
    page.click("#settings button[type=submit]")
    page.wait_for_function("JSON.parse(document.querySelector('#applied').textContent).voice === null",
                           timeout=TIMEOUT_MS)
    seen["sent"] = [frame.get("voice", "absent") for frame in log_frames(page, "session_update", "out")]
    page.close()
    return seen


def expired_tab(browser: Any, url: str, token: str, drop: Callable[[], None], errors: list[str]) -> dict[str, Any]:
    """The socket drops mid-reply and comes back after the server has let the session's frames go."""
    seen: dict[str, Any] = {}
    page = token_page(browser, url, token, errors)
    page.wait_for_function("document.querySelector('#setting-voice').options.length > 100", timeout=TIMEOUT_MS)
    page.select_option("#setting-voice", "fr")
    page.click("#settings button[type=submit]")
    page.wait_for_function("document.querySelector('#applied').textContent.includes('fr')", timeout=TIMEOUT_MS)
    first_session = log_frames(page, "session_updated")[-1]["session_id"]
    page.fill("#text", LONG_REPLY)
    page.press("#text", "Enter")
    page.wait_for_function("(document.querySelector('.msg.bot')?.textContent || '').split(' ').length >= 3",
                           timeout=TIMEOUT_MS)
    drop()
    page.wait_for_selector(".msg.notice[data-state=resume-expired]", timeout=TIMEOUT_MS)
    page.wait_for_function(f"""window.livetx.log.entries.some(e => e.t === 'session_updated'
        && e.frame.session_id !== '{first_session}' && e.frame.data.voice === 'fr')""", timeout=TIMEOUT_MS)
    seen["after_drop"] = {
        "notices": page.locator(".msg.notice").all_inner_texts(),
        "status": page.inner_text("#status"),
        "stats": page.evaluate("({...window.livetx.stats})"),
        "cut_off": page.evaluate("[...document.querySelectorAll('.msg.bot')].map(m => m.className)"),
        "notes": page.evaluate("window.livetx.log.entries.filter(e => e.note).map(e => [e.t, e.note])"),
        "errors_shown": page.locator(".msg.error").count(),
        "resumed_from": log_frames(page, "resume", "out"),
    }
    ended = page.evaluate("window.livetx.stats.turnsEnded")
    page.fill("#text", "Still here.")
    page.press("#text", "Enter")
    page.wait_for_function(f"window.livetx.stats.turnsEnded > {ended}", timeout=TIMEOUT_MS)
    seen["next_turn"] = {"bot": page.locator(".msg.bot").last.inner_text(),
                         "session": log_frames(page, "session_updated")[-1]["session_id"],
                         "first_session": first_session}
    page.close()
    return seen


def two_breaths_tab(browser: Any, url: str, token: str, errors: list[str]) -> dict[str, Any]:
    """Talk mode; the fake microphone says a command, pauses, and goes on with it."""
    page = token_page(browser, url, token, errors)
    page.select_option("#setting-turn_detection", "server")
    page.select_option("#setting-vad", "webrtc")
    # The pause is long enough for the first half's transcript to come first however busy the
    # machine, and within continue_ms: the rest continues the request, over its first audio.
    page.fill("#setting-continue_ms", "5000")
    page.click("#settings button[type=submit]")
    page.wait_for_function("document.querySelector('#mic').textContent === 'Talk mode'", timeout=TIMEOUT_MS)
    page.click("#mic")
    page.wait_for_function("window.livetx.log.entries.some(e => e.t === 'end')", timeout=TIMEOUT_MS)
    page.click("#mic")
    return {
        "heard": page.evaluate("""window.livetx.log.entries.filter(e => e.dir === 'in' && e.t !== 'response')
            .map(e => [e.t, e.frame.turn ?? null])"""),
        "user_msgs": [(f["turn"], f["data"]["text"]) for f in log_frames(page, "user_msg")],
        "user_lines": page.locator(".msg.user").all_inner_texts(),
        "bot_lines": page.locator(".msg.bot").all_inner_texts(),
        "ends": [f["turn"] for f in log_frames(page, "end")],
        "errors_shown": page.locator(".msg.error").all_inner_texts(),
        # What the page did with the withdrawn turn's stop_play, and what the server said.
        "cut": page.evaluate("""window.livetx.log.entries.filter(e => ['truncate', 'truncated'].includes(e.t)
            || e.frame.code === 'UNKNOWN_TURN').map(e => [e.dir, e.t, e.frame.code || null])"""),
        "stop_play": [f["turn"] for f in log_frames(page, "stop_play")],
    }


def drive(sync_playwright: Any, profile: Path, microphone: Path, tabs: list[Callable[[Any, list[str]], Any]]) -> Any:
    """Runs in a thread: the tabs in one Chromium whose fake microphone plays ``microphone``."""
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=FLAGS + [f"--use-file-for-fake-audio-capture={microphone}%noloop"],
        )
        try:
            errors: list[str] = []
            return [tab(browser, errors) for tab in tabs], errors
        finally:
            browser.close()


async def two_breaths_wav(directory: Path) -> Path:
    """Half a second of silence, the command, a pause of 2.5 s (past silence_ms, within continue_ms), the rest."""
    speech = EspeakSpeech(TTSConfig(), None, reactor)
    (head, rate), (tail, _) = read_wav(await speech.synthesize(HEAD)), read_wav(await speech.synthesize(TAIL))
    pause = b"\0\0" * (rate * 5 // 2)
    path = directory / "two-breaths.wav"
    path.write_bytes(to_wav(b"\0\0" * (rate // 2) + head + pause + tail + b"\0\0" * (3 * rate), rate))
    return path


@pytest_twisted.ensureDeferred
async def test_the_voice_picker_an_expired_resume_and_a_request_in_two_breaths(livetx: Any, tmp_path: Path) -> None:
    sync_playwright = chromium()
    server = await livetx()
    # Frames are kept 50 ms; the page reconnects after at least 200 ms, while the echo model writes a word
    # every 150 ms: a frame it missed is always gone.
    forgetful = await livetx("[llm]\necho_delay = 0.15\n\n[cluster]\nresume_seconds = 0.05\n")
    grammar = tmp_path / "home.jsgf"
    grammar.write_text(GRAMMAR)
    talk = await livetx(f'[stt]\nprovider = "pocketsphinx"\ngrammar = "{grammar}"\n')
    listed = json.loads((await get(server, "/api/v1/voices"))[2])
    microphone = await two_breaths_wav(tmp_path)

    def tab(run: Callable[..., Any], on: Any, *more: Any) -> Callable[[Any, list[str]], Any]:
        return lambda browser, errors: run(browser, on.url("/", scheme="http"), on.token("pat"), *more, errors)

    (voice, expired, breaths), errors = await deferToThread(drive, sync_playwright, tmp_path / "profile", microphone, [
        tab(voice_tab, server),
        tab(expired_tab, forgetful, lambda: blockingCallFromThread(reactor, cut_off, forgetful)),
        tab(two_breaths_tab, talk),
    ])
    assert errors == []

    # The picker offers exactly what the server lists, and sends what the server takes.
    assert voice["offered"] == [["", *listed["voices"]], ["", *listed["variants"]]]
    assert voice["default_label"] == "the server's (en-us)"
    assert voice["refused"] == {"error": "voice: pick a voice for the variant", "sent": 0}
    assert voice["applied"]["voice"] == "de+f3"
    # Every settings frame names the voice; the last one goes back to the server's own.
    assert voice["sent"] == ["de+f3", None]

    # A refused resume reads as one: the notice says so, nothing counts as replayed, the
    # cut-off reply is marked, no error line, and a new session goes on with the voice in force.
    after = expired["after_drop"]
    assert after["resumed_from"] and after["stats"]["reconnects"] == 1 and after["stats"]["resumesExpired"] == 1
    assert after["stats"]["replayed"] == 0 and after["notes"] == [["error", "resume refused"]]
    assert after["notices"][-1].startswith("Reconnected, but the session could not be resumed")
    assert after["status"] == "connected: new session (could not resume)"
    assert after["cut_off"] == ["msg bot interrupted"] and after["errors_shown"] == 0
    nxt = expired["next_turn"]
    assert nxt["bot"] == "Still here." and nxt["session"] != nxt["first_session"]

    # The second user_msg of turn 1 carries the whole request and replaces the first line.
    # (The browser's noise suppression blurs a word at times: "off" heard as "on".)
    assert len(breaths["user_msgs"]) == 2, breaths["heard"]
    (first_turn, first), (again_turn, whole) = breaths["user_msgs"]
    assert first_turn == again_turn == 1, breaths["heard"]
    assert re.fullmatch(COMMAND, first) and re.fullmatch(f"{COMMAND} {TAIL}", whole), breaths["user_msgs"]
    assert breaths["user_lines"] == [whole] and breaths["bot_lines"] == [whole]
    assert breaths["ends"] == [1] and breaths["errors_shown"] == []
    # The first half's reply had begun to play: its stop_play came, and the page's truncate of it
    # was refused as the turn went on (nothing of it stored), which the page does not show as an error.
    assert breaths["stop_play"] == [1]
    assert breaths["cut"] == [["out", "truncate", None], ["in", "error", "UNKNOWN_TURN"]]
