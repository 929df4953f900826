"""The browser console in a real headless Chromium, against real servers.

Debian's ``chromium`` is driven by Playwright for Python (its sync API, in a
thread, while the test's reactor serves the page). A fake microphone plays
a WAV file made by the offline speech engine, so a voice turn goes through
the page's AudioWorklet, the socket, recognition and back.

The screenshots in docs/ (desktop and phone width, after a voice turn) are
written by :func:`test_the_console_in_a_real_browser` on every run, so they
never show an older page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread, deferToThread

from livetx.audio import read_wav, to_wav
from livetx.auth.login_links import USED
from livetx.config import TTSConfig
from livetx.live import settings
from livetx.providers.espeak import EspeakSpeech

from .test_live_ws import openai_config
from .test_ops import get
from .test_tools_ws import once
from .test_twistd import run_cli
from .test_voice import grammar_server

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
#: Every sentence test_voice.GRAMMAR allows.
GRAMMAR_SENTENCE = r"turn (on|off) the (kitchen|bedroom|hallway) lights"
LONG_REPLY = " ".join(f"Here is sentence {n}." for n in ("one", "two", "three", "four", "five", "six", "seven"))
TIMEOUT_MS = 30_000
DOCS = Path(__file__).resolve().parent.parent / "docs"
#: The page's first load (HTML, CSS, modules; the worklet loads with the microphone), uncompressed.
FIRST_LOAD_BYTES = 64_000
STAGES = ["endpoint", "transcript", "delta", "caption", "audio", "end"]


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


def stat(page: Any, name: str) -> Any:
    return page.evaluate(f"window.livetx.stats.{name}")


def token_page(browser: Any, url: str, token: str, errors: list[str]) -> Any:
    """A new tab signed in by pasting a token (the page's placeholders name the commands)."""
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    assert "livetx token" in (page.get_attribute("#token", "placeholder") or "")
    assert "livetx keys create" in (page.get_attribute("#api-key", "placeholder") or "")
    page.fill("#token", token)
    page.click("#connect-button")
    page.wait_for_selector("#status.open", timeout=TIMEOUT_MS)
    assert page.inner_text("#who") == f"signed in as {token_user(token)}"
    return page


def token_user(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["username"])


def hold_mic_while_speaking(page: Any, keyboard: bool = False, meanwhile: Any = lambda: None) -> None:
    """Push to talk (the button, or Space) until the page has heard the command and then
    half a second of silence: counted in 20 ms frames, however slow the machine."""
    before = stat(page, "loudFrames")
    if keyboard:  # Space anywhere but in a field
        page.evaluate("document.activeElement.blur()")
        page.keyboard.down("Space")
    else:
        page.hover("#mic")
        page.mouse.down()
    page.wait_for_function("document.querySelector('#mic').getAttribute('aria-pressed') === 'true'")
    meanwhile()
    page.wait_for_function(f"window.livetx.stats.loudFrames >= {before + 25} && window.livetx.stats.quietFrames >= 25",
                           timeout=TIMEOUT_MS)
    if keyboard:
        page.keyboard.up("Space")
    else:
        page.mouse.up()


def timeline_rows(page: Any) -> list[dict[str, Any]]:
    """The newest turn's waterfall as drawn: stage and milliseconds per bar, in order."""
    return page.evaluate("""[...document.querySelector('#timeline .turn-timeline').querySelectorAll('.bar-row')]
        .map(r => ({stage: r.dataset.stage, ms: Number(r.dataset.ms), label: r.querySelector('.bar-ms').textContent}))""")


def main_tab(browser: Any, url: str, link: str, errors: list[str]) -> dict[str, Any]:
    """Sign in by the link, a second tab refused it; a text turn, a voice turn by Space,
    settings, screenshots, the export."""
    seen: dict[str, Any] = {}
    page = browser.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.on("pageerror", lambda e: errors.append(str(e)))
    referers: list[str] = []
    page.on("request", lambda r: referers.append(r.headers.get("referer", "")))
    page.goto(link)
    page.wait_for_selector("#status.open", timeout=TIMEOUT_MS)
    seen["referers"] = referers  # the files and the sign-in, loaded while the link was in the address
    seen["signed_in"] = {"who": page.inner_text("#who"), "address": page.url,
                         "form_hidden": page.is_hidden("#connect"),
                         "kept": page.evaluate("JSON.parse(sessionStorage.getItem('livetx.credential')).username")}
    again = browser.new_page()
    again.goto(link)
    again.wait_for_selector("#status.refused", timeout=TIMEOUT_MS)
    seen["second_use"] = {"status": again.inner_text("#status"), "form_shown": again.is_visible("#connect")}
    again.close()

    page.fill("#text", "Good morning. The sun is out.")
    page.press("#text", "Enter")
    page.wait_for_selector("#playback[data-state=playing]", timeout=TIMEOUT_MS)  # shown as it plays
    seen["playing"] = page.inner_text("#playback")
    seen["first_caption"] = page.inner_text("#caption")  # while the first sentence plays
    page.wait_for_function("window.livetx.stats.turnsEnded >= 1 && window.livetx.stats.chunksScheduled >= 2"
                           " && window.livetx.timeline.turns[0].metrics.wav_to_tts_total_time", timeout=TIMEOUT_MS)
    page.wait_for_selector("#playback[data-state=idle]", timeout=TIMEOUT_MS)
    seen["text_turn"] = {
        "bot": page.locator(".msg.bot").all_inner_texts(),
        "caption": page.inner_text("#caption"),
        "stats": page.evaluate("({...window.livetx.stats})"),
        "rows": timeline_rows(page),
        "server_total": page.evaluate("window.livetx.timeline.turns[0].metrics.wav_to_tts_total_time"),
    }

    hold_mic_while_speaking(page, keyboard=True)
    page.wait_for_function("window.livetx.stats.turnsEnded >= 2 && window.livetx.stats.chunksScheduled >= 3",
                           timeout=TIMEOUT_MS)
    seen["voice_turn"] = {
        "user": page.locator(".msg.user").all_inner_texts(),
        "bot": page.locator(".msg.bot").all_inner_texts(),
        "rows": timeline_rows(page),
        "stats": page.evaluate("({...window.livetx.stats})"),
        "turns_drawn": page.locator("#timeline .turn-timeline").count(),
        "vad": page.get_attribute("#vad", "data-state"),
    }

    sent = page.evaluate("window.livetx.log.entries.filter(e => e.t === 'session_update').length")
    page.fill("#setting-silence_ms", "50")
    page.click("#settings button[type=submit]")
    seen["refused_setting"] = {
        "error": page.inner_text("#settings-error"),
        "sent": page.evaluate("window.livetx.log.entries.filter(e => e.t === 'session_update').length") - sent,
    }
    page.fill("#setting-silence_ms", "900")
    page.select_option("#setting-vad", "webrtc")
    page.click("#settings button[type=submit]")
    page.wait_for_function("document.querySelector('#applied').textContent.includes('900')", timeout=TIMEOUT_MS)
    seen["applied"] = json.loads(page.inner_text("#applied"))

    seen["log_at_end"] = page.evaluate("(l => [l.scrollTop, l.clientHeight, l.scrollHeight])(document.querySelector('#log'))")
    page.screenshot(path=str(DOCS / "live-page.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 780})
    seen["phone_overflow"] = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    page.screenshot(path=str(DOCS / "live-page-phone.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#log-export")
    seen["export"] = Path(download.value.path()).read_text()
    seen["logged"] = page.evaluate("window.livetx.log.entries.length")
    page.fill("#log-filter", "user_msg")
    seen["filtered"] = page.locator("#log .entry").evaluate_all("rows => rows.map(r => r.dataset.t)")
    page.click("#log .entry summary")  # the first user_msg: its JSON opens, with a Copy button
    page.click("#log .entry .copy")
    page.wait_for_selector("#log .entry .copy:text('Copied')")
    seen["copied"] = json.loads(page.evaluate("navigator.clipboard.readText()"))
    page.fill("#log-filter", "")
    rows = page.locator("#log .entry").count()
    page.click("#log-pause")
    page.click("#settings button[type=submit]")  # a session_update and its answer, while paused
    page.wait_for_function(f"window.livetx.log.entries.length >= {seen['logged'] + 2}")
    seen["paused"] = {"rows": page.locator("#log .entry").count() - rows,
                      "pressed": page.get_attribute("#log-pause", "aria-pressed")}
    page.click("#log-pause")
    seen["unpaused"] = page.locator("#log .entry").count() - rows
    page.click("#log-clear")
    seen["cleared"] = [page.locator("#log .entry").count(), page.evaluate("window.livetx.log.entries.length")]
    seen["unlabelled"] = page.evaluate("""[...document.querySelectorAll('input, select, button, meter')]
        .filter(e => !(e.getAttribute('aria-label') || e.labels.length || e.textContent.trim())).map(e => e.outerHTML)""")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Tab")  # from the keyboard, the focus shows
    seen["focus"] = page.evaluate("""(e => [e.id, getComputedStyle(e).outlineStyle, getComputedStyle(e).outlineWidth])
        (document.activeElement)""")
    page.click("#sign-out")
    seen["signed_out"] = {"form_shown": page.is_visible("#connect"),
                          "kept": page.evaluate("sessionStorage.getItem('livetx.credential')")}
    return seen


def slow_tab(browser: Any, url: str, token: str, drop: Callable[[], None], errors: list[str]) -> dict[str, Any]:
    """On a server whose replies take seconds: barge-in by the microphone, Esc, and a dropped socket."""
    seen: dict[str, Any] = {}
    page = token_page(browser, url, token, errors)

    page.fill("#text", LONG_REPLY)
    page.press("#text", "Enter")
    page.wait_for_function("window.livetx.stats.chunksScheduled >= 1", timeout=TIMEOUT_MS)

    def barged_in() -> None:
        page.wait_for_selector(".msg.bot.interrupted", timeout=TIMEOUT_MS)
        seen["barge_in"] = {"badge": page.get_attribute("#barge-in", "data-state"),
                            "text": page.inner_text("#barge-in"), "vad": page.get_attribute("#vad", "data-state"),
                            "order": page.evaluate("""window.livetx.log.entries
                                .filter(e => ['interrupt', 'stop_play', 'start_speaking'].includes(e.t)).map(e => e.t)""")}

    hold_mic_while_speaking(page, meanwhile=barged_in)  # talking over the reply stops it, then asks its own question
    page.wait_for_function("window.livetx.stats.turnsEnded >= 2", timeout=TIMEOUT_MS)
    seen["barge_in"]["user"] = page.locator(".msg.user").all_inner_texts()
    seen["barge_in"]["truncated"] = page.evaluate("""window.livetx.log.entries
        .filter(e => e.t === 'truncate' || e.t === 'truncated').map(e => [e.dir, e.frame])""")

    chunks = stat(page, "chunksScheduled")
    page.fill("#text", LONG_REPLY)
    page.press("#text", "Enter")
    page.wait_for_function(f"window.livetx.stats.chunksScheduled > {chunks}", timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelectorAll('.msg.bot.interrupted').length >= 2", timeout=TIMEOUT_MS)
    seen["escape"] = {"playing": page.evaluate("window.livetx.player.playing")}

    ended = stat(page, "turnsEnded")
    page.fill("#text", LONG_REPLY)
    page.press("#text", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.bot').length >= 4", timeout=TIMEOUT_MS)
    drop()
    page.wait_for_function(f"window.livetx.stats.reconnects >= 1 && window.livetx.stats.turnsEnded > {ended}",
                           timeout=TIMEOUT_MS)
    seen["resume"] = {
        "bot": page.locator(".msg.bot").last.inner_text(),
        "seqs": page.evaluate("window.livetx.log.entries.filter(e => e.dir === 'in' && typeof e.frame.seq === 'number')"
                              ".map(e => e.frame.seq)"),
        "replayed": stat(page, "replayed"),
        "notice": page.locator(".msg.notice").last.inner_text(),
        "first_out_after_drop": page.evaluate("""(() => { const e = window.livetx.log.entries;
            const i = e.findIndex(x => x.note === 'replayed'); return e.slice(0, i).filter(x => x.dir === 'out').pop().t; })()"""),
    }
    drop()  # between turns this time: nothing to replay
    page.wait_for_function("window.livetx.stats.reconnects >= 2", timeout=TIMEOUT_MS)
    page.wait_for_function("[...document.querySelectorAll('.msg.notice')].pop().textContent.includes('nothing was missed')",
                           timeout=TIMEOUT_MS)
    page.fill("#text", "Still here.")
    page.press("#text", "Enter")
    page.wait_for_function(f"window.livetx.stats.turnsEnded > {ended + 1}", timeout=TIMEOUT_MS)
    seen["idle_drop"] = {
        "bot": page.locator(".msg.bot").last.inner_text(),
        "seqs": page.evaluate("window.livetx.log.entries.filter(e => e.dir === 'in' && typeof e.frame.seq === 'number')"
                              ".map(e => e.frame.seq)"),
    }
    return seen


def hands_free_tab(browser: Any, url: str, token: str, errors: list[str]) -> dict[str, Any]:
    """Listen hands-free: the page's own level detector opens and closes the segment."""
    page = token_page(browser, url, token, errors)
    page.check("#hands-free")
    page.click("#mic")  # "Listen": the fake microphone starts its file again
    page.wait_for_function("window.livetx.stats.turnsEnded >= 1", timeout=TIMEOUT_MS)
    page.click("#mic")
    return {"segments": stat(page, "segments"), "user": page.locator(".msg.user").all_inner_texts(),
            "listening": page.get_attribute("#mic", "aria-pressed")}


def talk_mode_tab(browser: Any, url: str, token: str, errors: list[str]) -> dict[str, Any]:
    """Talk mode from the settings: the server's detector frames the utterance, the page shows its state."""
    seen: dict[str, Any] = {}
    page = token_page(browser, url, token, errors)
    page.select_option("#setting-turn_detection", "server")
    page.select_option("#setting-vad", "webrtc")
    page.click("#settings button[type=submit]")
    page.wait_for_function("document.querySelector('#mic').textContent === 'Talk mode'", timeout=TIMEOUT_MS)
    seen["rules"] = page.evaluate("import('/static/settings.js').then(m => m.SETTINGS)")
    page.click("#mic")  # streams everything; the server's frames say when speech starts and stops
    page.wait_for_selector("#vad[data-state=speech]", timeout=TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#level').value > 0.1", timeout=TIMEOUT_MS)
    page.wait_for_selector("#vad[data-state=silence]", timeout=TIMEOUT_MS)
    page.wait_for_function("window.livetx.stats.turnsEnded >= 1", timeout=TIMEOUT_MS)
    page.click("#mic")
    seen["user"] = page.locator(".msg.user").all_inner_texts()
    seen["frames"] = page.evaluate("window.livetx.log.entries.filter(e => e.dir === 'in').map(e => e.t)")
    seen["sent"] = page.evaluate("[...new Set(window.livetx.log.entries.filter(e => e.dir === 'out').map(e => e.t))]")
    seen["rows"] = timeline_rows(page)
    return seen


def tools_tab(browser: Any, url: str, token: str, errors: list[str]) -> dict[str, Any]:
    refused = browser.new_page()  # a token the server refuses: the sign-in form comes back
    refused.goto(url)
    refused.fill("#token", token + "x")
    refused.click("#connect-button")
    refused.wait_for_function("document.querySelector('#status').textContent.includes('Invalid token')",
                              timeout=TIMEOUT_MS)
    assert refused.is_visible("#connect") and refused.evaluate("sessionStorage.getItem('livetx.credential')") is None
    refused.close()
    page = token_page(browser, url, token, errors)
    page.fill("#text", "What is six times seven?")
    page.press("#text", "Enter")
    page.wait_for_selector(".msg.tool[data-status=ok]", timeout=TIMEOUT_MS)
    page.wait_for_function("window.livetx.stats.turnsEnded >= 1", timeout=TIMEOUT_MS)
    card = page.locator(".msg.tool")
    return {"head": card.locator(".tool-head").inner_text(), "args": card.locator(".tool-args").inner_text(),
            "result": card.locator(".tool-result").inner_text(), "label": card.get_attribute("aria-label"),
            "after": page.evaluate("document.querySelector('.msg.tool').nextElementSibling?.className")}


def drive(sync_playwright: Any, wav: Path, profile: Path, main: tuple[str, str, str],
          slow: tuple[str, str, Callable[[], None]], tools: tuple[str, str]) -> dict[str, Any]:
    """Runs in a thread: every tab in one Chromium, as a user would."""
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, accept_downloads=True,
            permissions=["clipboard-read", "clipboard-write"],
            args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        try:
            errors: list[str] = []
            main_url, link, token = main
            return {"main": main_tab(browser, main_url, link, errors), "slow": slow_tab(browser, *slow, errors),
                    "hands_free": hands_free_tab(browser, main_url, token, errors),
                    "talk_mode": talk_mode_tab(browser, main_url, token, errors),
                    "tools": tools_tab(browser, *tools, errors), "errors": errors}
        finally:
            browser.close()


def cut_off(server: Any) -> None:
    """The network fails: every socket of ``server`` is dropped at the TCP level, no closing handshake."""
    for protocol in server.service.getServiceNamed("connections")._open:
        protocol.transport.abortConnection()


def in_order(rows: list[dict[str, Any]]) -> list[str]:
    """The stages drawn, checked to be in the waterfall's order with growing times."""
    stages = [r["stage"] for r in rows]
    assert stages == [s for s in STAGES if s in stages]
    times = [r["ms"] for r in rows]
    assert times == sorted(times) and all(r["label"] == f"{r['ms']} ms" for r in rows)
    return stages


@pytest_twisted.ensureDeferred
async def test_the_console_in_a_real_browser(livetx: Any, openai: Any, tmp_path: Path) -> None:
    sync_playwright = chromium()
    server = await grammar_server(livetx, tmp_path)
    slow = await grammar_server(livetx, tmp_path, "[llm]\necho_delay = 0.15\n")  # the echo model, a word every 150 ms
    openai.tool_calls = once({"id": "call_1", "name": "calculator", "arguments": {"expression": "6 * 7"}})
    tools = await livetx(openai_config(openai.base_url, tts=False) + '[tools]\nenabled = ["calculator"]\n')
    wav, seconds = await microphone_file(tmp_path)
    page_url = server.url("/", scheme="http")
    link = run_cli("open", "--data-dir", str(server.data_dir), "--url", page_url, cwd=tmp_path)
    seen = await deferToThread(
        drive, sync_playwright, wav, tmp_path / "profile", (page_url, link, server.token("talker")),
        (slow.url("/live", scheme="http"), slow.token("slow"), lambda: blockingCallFromThread(reactor, cut_off, slow)),
        (tools.url("/", scheme="http"), tools.token("tools")),
    )
    assert seen["errors"] == []
    main = seen["main"]
    # Signed in by the link, which then left the address bar; a second use is refused.
    assert main["signed_in"] == {"who": "signed in as web", "address": page_url, "form_hidden": True, "kept": "web"}
    assert USED in main["second_use"]["status"] and main["second_use"]["form_shown"]
    assert len(main["referers"]) >= 6 and not any("login=" in r for r in main["referers"])  # nor in access logs

    text_turn = main["text_turn"]
    assert text_turn["bot"] == ["Good morning. The sun is out."]  # the echo model, streamed as deltas
    assert text_turn["caption"] == "The sun is out."  # the caption of the last audio chunk played
    assert text_turn["stats"]["chunksScheduled"] == 2 and text_turn["stats"]["secondsScheduled"] > 1.0
    assert in_order(text_turn["rows"]) == STAGES  # the endpoint of a text turn is its send: 0 ms
    assert main["first_caption"] in ("", "Good morning.")  # never the next sentence's before its audio
    assert re.fullmatch(r"playing \d+\.\d / \d+\.\d s", main["playing"]), main["playing"]
    end_ms = text_turn["rows"][-1]["ms"]
    # The browser's window holds the server's own measure of the turn, and both are a real turn's.
    assert text_turn["server_total"] * 1000 <= end_ms + 5 and 0 < end_ms < TIMEOUT_MS

    voice = main["voice_turn"]
    assert voice["user"] == ["Good morning. The sun is out.", SPOKEN] and voice["bot"][-1] == SPOKEN
    assert voice["stats"]["partsSent"] >= int(seconds * 50)  # 20 ms frames for the whole utterance
    assert in_order(voice["rows"]) == STAGES and voice["turns_drawn"] == 2 and voice["vad"] == "off"

    assert main["refused_setting"] == {"error": "silence_ms must be an integer from 100 to 10000", "sent": 0}
    assert main["applied"]["silence_ms"] == 900 and main["applied"]["vad"] == "webrtc"
    assert main["applied"]["resume"] is True  # the page keeps resume on with every update
    top, height, scrolled = main["log_at_end"]
    assert scrolled > height and top + height >= scrolled - 4  # the log follows the newest frame
    assert main["phone_overflow"] <= 0  # nothing wider than a 360 px screen
    assert (DOCS / "live-page.png").stat().st_size > 10_000 and (DOCS / "live-page-phone.png").stat().st_size > 10_000

    lines = [json.loads(line) for line in main["export"].splitlines()]
    assert len(lines) == main["logged"] and {"time", "dir", "frame"} <= set(lines[0])
    kinds = [(e["dir"], e["frame"]["t"]) for e in lines]
    assert ("out", "text_input") in kinds and ("in", "session_updated") in kinds and ("out", "end_speaking") in kinds
    audio = [e["frame"]["data"] for e in lines if e["frame"]["t"] == "response"]
    assert len(audio) == 3 and all(a["audio_bytes"] > 10_000 and 0.2 < a["audio_seconds"] < 10 for a in audio)
    parts = [e["frame"]["data"] for e in lines if e["frame"]["t"] == "speaking_part"]
    assert parts and all(p["audio_bytes"] == 640 and p["audio_seconds"] == 0.02 for p in parts)
    assert "UklGR" not in main["export"]  # no Base64 WAV anywhere
    assert main["filtered"] == ["user_msg", "user_msg"]
    assert main["copied"] == {"t": "user_msg", "turn": 1, "seq": main["copied"]["seq"],
                              "data": {"text": "Good morning. The sun is out.", "ts": main["copied"]["data"]["ts"]}}
    assert main["paused"] == {"rows": 0, "pressed": "true"} and main["unpaused"] == 2 and main["cleared"] == [0, 0]
    assert main["signed_out"] == {"form_shown": True, "kept": None}
    assert main["unlabelled"] == [] and main["focus"][0] and main["focus"][1:] == ["solid", "3px"]

    slow_seen = seen["slow"]
    barge = slow_seen["barge_in"]
    assert barge["badge"] == "barged-in" and "barge-in" in barge["text"] and barge["vad"] == "recording"
    assert barge["order"][:3] == ["interrupt", "start_speaking", "stop_play"]
    assert barge["user"] == [LONG_REPLY, SPOKEN]
    # What was heard of the stopped reply goes back to the server, which keeps only those sentences.
    (_, asked), (_, kept) = barge["truncated"]
    assert asked["turn"] == kept["turn"] == 1 and kept["data"]["audio_end_ms"] == asked["audio_end_ms"] >= 0
    assert LONG_REPLY.startswith(kept["data"]["text"])
    assert slow_seen["escape"]["playing"] is False
    resumed = slow_seen["resume"]
    assert resumed["bot"] == LONG_REPLY  # nothing of the reply was lost with the socket
    seqs = resumed["seqs"]
    assert seqs == list(range(1, len(seqs) + 1))  # every numbered frame once, in order: none missing
    assert resumed["replayed"] >= 1 and "replayed" in resumed["notice"]
    assert resumed["first_out_after_drop"] == "resume"
    idle = slow_seen["idle_drop"]
    assert idle["bot"] == "Still here." and idle["seqs"] == list(range(1, len(idle["seqs"]) + 1))

    heard = seen["hands_free"]  # one utterance, one segment, opened and closed by the level alone
    # The browser's noise suppression (on for hands-free and talk mode) blurs the words at times
    # ("off" heard as "on", or nothing the grammar allows: NO_SPEECH); what is checked is the turn-taking.
    assert heard["segments"] == 1 and heard["listening"] == "false"
    assert len(heard["user"]) == 1 and re.fullmatch(f"({GRAMMAR_SENTENCE})?", heard["user"][0])

    talk = seen["talk_mode"]
    assert len(talk["user"]) == 1 and re.fullmatch(f"({GRAMMAR_SENTENCE})?", talk["user"][0])
    assert talk["frames"].index("speech_started") < talk["frames"].index("speech_stopped") < talk["frames"].index("user_msg")
    assert set(talk["sent"]) == {"session_update", "speaking_part"}  # no start/end_speaking: the server decides
    assert in_order(talk["rows"]) == (STAGES if talk["user"][0] else ["endpoint", "transcript", "end"])
    # The waterfall starts at the end of speech: the endpoint waits out the server's silence_ms (600).
    assert talk["rows"][0]["ms"] >= 600 - 20
    # The page's settings are the server's: every rule, range and default.
    assert {r["name"]: (tuple(r["choices"]) if "choices" in r else range(r["min"], r["max"] + 1)) for r in talk["rules"]} \
        == {k: v for k, v in settings._RULES.items() if k not in ("audio_transport", "resume")}
    assert {r["name"]: r["initial"] for r in talk["rules"]} == {
        r["name"]: getattr(settings.Settings(), r["name"]) for r in talk["rules"]}

    tool = seen["tools"]
    assert tool["head"].startswith("calculator · ok · ") and tool["head"].endswith(" ms")
    assert "6 * 7" in tool["args"] and "42" in tool["result"] and tool["label"] == "tool call calculator"
    assert tool["after"] == "msg bot"  # the reply's text goes on below the card


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
    # The first load: the page, its style and its modules, all from the server (no CDN).
    first = ["/", "/static/live.css", "/static/live.js", "/static/log.js", "/static/settings.js", "/static/timeline.js"]
    bodies = [await get(server, path) for path in first]
    assert all(code == 200 and "://" not in body for code, _, body in bodies)
    imported = {f"/static/{name}" for name in re.findall(r'from "/static/([a-z]+\.js)"', bodies[2][2])}
    assert imported == set(first[3:])  # every module the page loads, and each counted above
    assert sum(len(body.encode()) for *_, body in bodies) < FIRST_LOAD_BYTES
