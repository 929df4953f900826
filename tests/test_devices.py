"""xiaozhi-esp32 boards over real sockets: the simulator (tests/devices.py) speaks the firmware's protocol.

Questions are eSpeak speech encoded to Opus; PocketSphinx (with a grammar)
hears them; the reply comes back as Opus at the rate the server's hello
announced, and PocketSphinx must hear its first sentence again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher

from livetx import cli
from livetx.audio import resample, to_wav
from livetx.devices import framing
from livetx.devices.registry import DEVICES_FILE, DeviceRegistry
from livetx.errors import ErrorCode

from .devices import SILENCE, Board, connect, decode_reply, frame, tools_taken
from .test_live_ws import eventually
from .test_telephony import hear, heard_server  # noqa: F401 (hear: the fixture, one recognizer for the module)
from .test_voice import spoken

MAC = "aa:bb:cc:dd:ee:01"
CLIENT = "6f1c2a4e-0000-4000-8000-000000000001"
REPLY = "Turn off the kitchen lights. I have switched them off for you. Anything else?"


async def device_server(livetx: Any, openai: Any, tmp_path: Path, extra: str = "") -> Any:
    return await heard_server(livetx, openai, tmp_path, "devices", "enabled = true", extra, REPLY)


async def ota(server: Any, path: str = "/xiaozhi/ota/", mac: str = MAC, client: str = CLIENT,
              body: bytes = b'{"application": {"version": "1.8.2"}}') -> tuple[int, dict[str, Any]]:
    headers = {"Device-Id": [mac], "Client-Id": [client], "User-Agent": ["bread-compact-wifi/1.8.2"],
               "Content-Type": ["application/json"]}
    response = await treq.post(server.url(path, scheme="http"), data=body, headers=headers, reactor=reactor)
    return response.code, json.loads(await response.content())


def devices_cli(server: Any, *args: str) -> int:
    return cli.main(["devices", args[0], "--data-dir", str(server.data_dir), *args[1:]])


async def enrolled(server: Any, mac: str = MAC, client: str = CLIENT) -> dict[str, Any]:
    """The firmware's path: OTA (a code), the operator approves it, OTA again (the socket and a token)."""
    _, first = await ota(server, mac=mac, client=client)
    assert devices_cli(server, "approve", first["activation"]["code"]) == 0
    _, second = await ota(server, mac=mac, client=client)
    return second["websocket"]


async def board(server: Any, version: int = 1, mac: str = MAC, client: str = CLIENT,
                socket: dict[str, Any] | None = None) -> Board:
    socket = socket or await enrolled(server, mac, client)
    headers = {"Authorization": f"Bearer {socket['token']}", "Protocol-Version": str(version),
               "Device-Id": mac, "Client-Id": client}
    return await connect(socket["url"], headers, version)


async def asked(b: Board, question: str, mode: str = "auto") -> None:
    """Hello, then one spoken question in ``mode``; returns once the reply's ``tts stop`` came."""
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    b.listen("start", mode)
    b.say(await spoken(question))
    if mode == "manual":  # push to talk: released once the words are out
        await b.wait(lambda: len(b.outbox) <= 8, timeout=20)
        b.listen("stop")
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")), timeout=40)


def first_sentence_pcm(b: Board) -> bytes:
    """The reply's Opus up to the second ``sentence_start``, decoded at the announced rate."""
    packets: list[bytes] = []
    sentences = 0
    for _, kind, m in b.received:
        if kind == "json" and m.get("type") == "tts" and m.get("state") == "sentence_start":
            sentences += 1
            if sentences == 2:
                break
        elif kind == "audio" and sentences == 1:
            packets.append(m)
    return decode_reply(packets, b.messages("hello")[0]["audio_params"]["sample_rate"])


@pytest.mark.parametrize(("version", "mode"), [(1, "auto"), (2, "manual"), (3, "auto"), (3, "manual")])
@pytest_twisted.ensureDeferred
async def test_a_spoken_question_is_answered_in_order_at_the_announced_rate(
    livetx: Any, openai: Any, tmp_path: Path, hear: Any, version: int, mode: str,  # noqa: F811
) -> None:
    server = await device_server(livetx, openai, tmp_path)
    b = await board(server, version)
    await asked(b, "turn off the kitchen lights", mode)
    hello = b.messages("hello")[0]
    assert b.received[0][2] is hello  # the server's hello comes first
    assert hello["transport"] == "websocket" and hello["audio_params"]["sample_rate"] == 24000
    assert b.messages("stt")[0]["text"] == "turn off the kitchen lights"
    events = b.events()
    start = events.index("stt")
    assert events[start:start + 5] == ["stt", "llm", "tts:start", "tts:sentence_start", "audio"]
    assert events[-1] == "tts:stop"
    assert [m["text"] for m in b.messages("tts") if m["state"] == "sentence_start"][0] == "Turn off the kitchen lights."
    pcm = first_sentence_pcm(b)
    heard = await hear.transcribe(to_wav(resample(pcm, 24000)))
    assert heard == "turn off the kitchen lights"


@pytest_twisted.ensureDeferred
async def test_emoji_show_on_the_face_but_are_neither_spoken_nor_captioned(
    livetx: Any, openai: Any, tmp_path: Path, hear: Any,  # noqa: F811
) -> None:
    tts = f'[tts]\nprovider = "openai"\nbase_url = "{openai.base_url}"\napi_key = "sk-test-secret"\n'
    server = await device_server(livetx, openai, tmp_path, tts)
    openai.reply = "Turn off the kitchen lights 😂. I have switched them off 👍 for you. 🎉🎉👏🙌✨"
    b = await board(server)
    await asked(b, "turn off the kitchen lights")
    assert [(m["emotion"], m["text"]) for m in b.messages("llm")] == [("funny", "😂")]
    # What xiaozhi-esp32-server sends (textUtils.check_emoji): the emoji taken out, nothing else.
    captions = [m["text"] for m in b.messages("tts") if m["state"] == "sentence_start"]
    assert captions == ["Turn off the kitchen lights .", "I have switched them off  for you."]
    speech = [r.json["input"] for r in openai.requests_to("/audio/speech")]
    assert speech == ["Turn off the kitchen lights .", "I have switched them off for you."]
    assert b.events()[-1] == "tts:stop"


@pytest_twisted.ensureDeferred
async def test_abort_stops_the_reply_at_once_and_the_board_asks_again(
    livetx: Any, openai: Any, tmp_path: Path,
) -> None:
    server = await device_server(livetx, openai, tmp_path)
    openai.reply = " ".join(["This is a long answer that keeps going."] * 12)
    b = await board(server, 3)
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    b.listen("start", "auto")
    b.say(await spoken("turn on the hallway lights"))
    await b.wait(lambda: len(b.audio()) >= 3, timeout=40)
    b.send_json({"session_id": b.session_id, "type": "abort", "reason": "wake_word_detected"})
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")))
    stopped = len(b.received)
    await deferLater(reactor, 0.5, lambda: None)
    assert not [k for _, k, _ in b.received[stopped:] if k == "audio"]  # nothing more of that reply
    # Far fewer packets than the reply's length: it was cut, not played out.
    assert len(b.audio()) < 12 * 3000 // 60


@pytest_twisted.ensureDeferred
async def test_realtime_voice_barges_in(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path)
    openai.reply = " ".join(["This is a long answer that keeps going."] * 12)
    b = await board(server, 1)
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    b.listen("start", "realtime")
    request = await spoken("turn on the hallway lights")
    said_until = b.sent_ms + len(request) // 32  # where its speech ends on the microphone's stream
    b.say(request)
    await b.wait(lambda: len(b.audio()) >= 3, timeout=40)
    # The microphone streams on; past continue_ms (1200 ms) after the request, speech is a barge-in.
    # Counted on the stream, as the server counts it (1.3 s of wall time is less stream on a loaded machine).
    await b.wait(lambda: b.sent_ms >= said_until + 1300, timeout=30)
    b.say(await spoken("turn off the bedroom lights"))
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")), timeout=20)
    await b.wait(lambda: len(b.messages("stt")) >= 2, timeout=40)
    assert b.messages("stt")[1]["text"] == "turn off the bedroom lights"
    events = b.events()
    assert events.index("tts:stop") < len(events) - 1 - events[::-1].index("stt")


@pytest_twisted.ensureDeferred
async def test_the_model_calls_the_boards_own_tool_over_mcp(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path)
    colour = {"type": "integer", "minimum": 0, "maximum": 255}
    schema = {"type": "object", "properties": {"r": colour, "g": colour, "b": colour}, "required": ["r", "g", "b"]}

    def script(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        if messages[-1]["role"] == "tool":
            return None  # answer in words once the tool has answered
        assert "self_light_set_rgb" in [t["function"]["name"] for t in tools]
        return [{"name": "self_light_set_rgb", "arguments": {"r": 255, "g": 0, "b": 0}}]

    openai.tool_calls = script
    openai.reply = "The light is red now."
    b = await board(server, 1)
    b.tools["self.light.set_rgb"] = ("Set the colour of the light.", schema, lambda arguments: "true")
    b.hello(mcp=True)
    await tools_taken(server, b)
    b.listen("start", "auto")
    b.say(await spoken("turn on the kitchen lights"))
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")), timeout=40)
    assert b.tool_calls == [{"name": "self.light.set_rgb", "arguments": {"r": 255, "g": 0, "b": 0}}]
    last = openai.requests_to("/chat/completions")[-1].json["messages"]
    assert last[-1]["role"] == "tool" and last[-1]["tool_call_id"] == last[-2]["tool_calls"][0]["id"]
    assert "true" in last[-1]["content"]  # what the board answered is what the model was told
    assert [m["text"] for m in b.messages("tts") if m["state"] == "sentence_start"] == ["The light is red now."]


@pytest.mark.parametrize(("setting", "version"), [("", 1), ("protocol_version = 3", 3)])
@pytest_twisted.ensureDeferred
async def test_the_ota_answer_sets_the_boards_binary_version(
    livetx: Any, openai: Any, tmp_path: Path, setting: str, version: int,
) -> None:
    """The firmware keeps ``websocket.version`` (a number) and sends it as Protocol-Version: the board speaks it."""
    server = await heard_server(livetx, openai, tmp_path, "devices", f"enabled = true\n{setting}", "", REPLY)
    socket = await enrolled(server)
    assert socket["version"] == version and isinstance(socket["version"], int)
    b = await board(server, socket["version"], socket=socket)
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    assert b.messages("hello")[0]["version"] == version and b.close_code is None


@pytest_twisted.ensureDeferred
async def test_activation_by_code_then_revocation(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path)
    code, answer = await ota(server)
    assert code == 200 and "websocket" not in answer
    activation = answer["activation"]
    assert len(activation["code"]) == 6 and activation["code"].isdigit() and activation["challenge"]
    assert (await ota(server, "/xiaozhi/ota/activate", body=b"{}"))[0] == 202
    # An unapproved board has no token; one made up is refused.
    refused = await board(server, socket={"url": server.url("/xiaozhi/v1/"), "token": "nope"})
    await refused.wait(lambda: False, timeout=5)
    assert refused.close_code == 1008
    assert devices_cli(server, "approve", activation["code"]) == 0
    assert (await ota(server, "/xiaozhi/ota/activate", body=b"{}"))[0] == 200
    _, answer = await ota(server)
    socket = answer["websocket"]
    assert socket["url"] == server.url("/xiaozhi/v1/")
    b = await board(server, socket=socket)
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    assert b.close_code is None
    # The token is the board's: another Client-Id (a reflashed board, another board) cannot use it.
    other = await board(server, mac=MAC, client="someone-else", socket=socket)
    await other.wait(lambda: False, timeout=5)
    assert other.close_code == 1008 and other.close_reason == "Invalid token"
    assert devices_cli(server, "revoke", MAC) == 0
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        again = await board(server, socket=socket)
        await again.wait(lambda: False, timeout=5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert again.close_code == 1008 and again.close_reason == "Device revoked"
    assert f"Refused device {MAC}: Device revoked" in [formatEvent(e) for e in events]
    assert (await ota(server))[0] == 403
    registry = DeviceRegistry(server.data_dir / DEVICES_FILE)
    assert registry.get(MAC).username == "device-aa:bb:cc:dd:ee:01"  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_bad_input_is_refused_and_the_board_goes_on(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path, extra="[server]\nmax_message_bytes = 65536\n")
    socket = await enrolled(server)
    b = await board(server, 3, socket=socket)
    b.sendMessage(frame(3, SILENCE), isBinary=True)  # audio before hello: refused, not fatal
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    b.sendMessage(frame(3, b"\xff\xfe not opus at all"), isBinary=True)
    b.sendMessage(frame(3, SILENCE, kind=1), isBinary=True)  # not type 0
    b.sendMessage(b"\x00\x00\xff\xff" + SILENCE, isBinary=True)  # size in the header is wrong
    b.send_json({"session_id": b.session_id, "type": "mcp", "payload": {"method": "tools/list"}})
    b.sendMessage(b"{not json")
    b.send_json({"type": "listen", "state": "sideways", "mode": "auto"})
    b.send_json({"type": "listen", "state": "start", "mode": "turbo"})
    b.listen("start", "auto")
    b.say(await spoken("turn on the bedroom lights"))
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")), timeout=40)
    assert b.messages("stt")[0]["text"] == "turn on the bedroom lights"
    assert b.close_code is None
    metrics = (await (await treq.get(server.url("/metrics", scheme="http"), reactor=reactor)).content()).decode()
    refused = {line.split('code="')[1].split('"')[0]: float(line.split()[-1])
               for line in metrics.splitlines() if line.startswith("livetx_refused_frames_total{")}
    assert all('source="device"' in line for line in metrics.splitlines()
               if line.startswith("livetx_refused_frames_total{"))
    assert "livetx_errors_total{" not in metrics  # nothing was sent back: the board has no error frame
    # before hello; not Opus and the wrong size; type 1; the mcp payload, the bad listens; not JSON
    assert refused == {"INVALID_STATE": 1, "INVALID_AUDIO": 2, "UNSUPPORTED_FRAME": 1,
                       "INVALID_MESSAGE_FORMAT": 3, "INVALID_JSON": 1}
    # Oversize: the socket's message limit closes it (1009).
    b.sendMessage(frame(1, b"\x00" * 70000), isBinary=True)
    await b.wait(lambda: False, timeout=5)
    assert b.close_code == 1009
    # A Protocol-Version this server does not speak: closed as a protocol error.
    wrong = await connect(socket["url"], {"Authorization": f"Bearer {socket['token']}", "Protocol-Version": "7",
                                          "Device-Id": MAC, "Client-Id": CLIENT})
    await wrong.wait(lambda: False, timeout=5)
    assert wrong.close_code == 1002
    # hello's version must be the header's.
    mismatch = await board(server, 2, socket=socket)
    mismatch.binary_version = 3
    mismatch.hello()
    await mismatch.wait(lambda: False, timeout=5)
    assert mismatch.close_code == 1002


@pytest_twisted.ensureDeferred
async def test_a_board_that_never_says_hello_is_closed(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path, extra="[server]\nhandshake_timeout = 1.0\n")
    b = await board(server)
    await b.wait(lambda: False, timeout=5)
    assert b.close_code == 1008 and b.close_reason == "No hello"
    assert not b.received


# -- fast and deterministic -----------------------------------------------------


@pytest.mark.parametrize("version", framing.VERSIONS)
def test_framing_round_trips_and_matches_the_documented_layout(version: int) -> None:
    packet = b"\x01\x02\x03opus"
    data = framing.pack(version, packet, timestamp=1234)
    assert data == frame(version, packet, 1234)  # the simulator's layout, written from the document
    assert framing.unpack(version, data).opus == packet
    if version > 1:
        with pytest.raises(framing.FramingError):
            framing.unpack(version, data[:-1])


class _Host:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.refusals: list[ErrorCode] = []

    def send_json(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send_binary(self, data: bytes) -> None:
        self.sent.append(data)


def test_reply_packets_are_paced_at_playback_speed() -> None:
    from livetx.devices.device import AHEAD_MS, FRAME_MS, DeviceConversation

    clock, host = Clock(), _Host()
    device = DeviceConversation(host=host, clock=clock, version=1, output_rate=24000)  # type: ignore[arg-type]
    device.state = "ready"
    device._encoder = __import__("livetx.devices.opus", fromlist=["Encoder"]).Encoder(24000)
    device._speak("One.", to_wav(b"\x10\x00" * 16000))  # one second: 17 packets
    packets = [m for m in host.sent if isinstance(m, bytes)]
    assert len(packets) == AHEAD_MS // FRAME_MS
    clock.advance(FRAME_MS / 1000)
    assert len([m for m in host.sent if isinstance(m, bytes)]) == len(packets) + 1
    device.from_session({"t": "end"})
    clock.pump([FRAME_MS / 1000] * 30)
    assert host.sent[-1] == {"session_id": device.session_id, "type": "tts", "state": "stop"}
    assert len([m for m in host.sent if isinstance(m, bytes)]) == 17


@pytest_twisted.ensureDeferred
async def test_a_board_that_never_reads_is_dropped(livetx: Any, openai: Any, tmp_path: Path) -> None:
    """It answers no ping: the socket's keep-alive drops it, and its session is let go."""
    server = await device_server(livetx, openai, tmp_path, extra="[server]\nping_interval = 1.0\nping_timeout = 1.0\n")
    b = await board(server)
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    connections = server.service.getServiceNamed("connections")
    assert len(connections) == 1
    b.transport.pauseProducing()  # reads nothing more
    await eventually(lambda: len(connections) == 0, timeout=10)  # dropped while it still read nothing
    b.transport.resumeProducing()
    await b.wait(lambda: False, timeout=5)
    assert b.close_code is not None


def test_the_server_and_the_command_line_see_each_others_changes(tmp_path: Path) -> None:
    server, command = DeviceRegistry(tmp_path / DEVICES_FILE), DeviceRegistry(tmp_path / DEVICES_FILE)
    first = server.ask(MAC, CLIENT)
    assert first is not None and first.state == "pending"
    assert command.set_state(first.code, "approved") is not None
    server.ask("aa:bb:cc:dd:ee:02", "another-client")  # the server writes again after the approval
    assert {d.device_id: d.state for d in command.list()} == {MAC: "approved", "aa:bb:cc:dd:ee:02": "pending"}
    # A reflashed board (a new Client-Id) must be approved again; a revoked one stays revoked.
    assert server.ask(MAC, "reflashed").state == "pending"  # type: ignore[union-attr]
    command.set_state(MAC, "revoked")
    assert server.ask(MAC, "again").state == "revoked"  # type: ignore[union-attr]


def test_writers_at_the_same_time_lose_nothing(tmp_path: Path) -> None:
    """Each writer (the server, ``livetx devices``) rewrites the file whole: the lock keeps every change."""
    import threading

    def ask(i: int) -> None:
        DeviceRegistry(tmp_path / DEVICES_FILE).ask(f"02:00:00:00:00:{i:02x}", f"client-{i}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(DeviceRegistry(tmp_path / DEVICES_FILE).list()) == 24
