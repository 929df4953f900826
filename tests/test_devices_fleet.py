"""What an operator does to xiaozhi boards, and what a board says besides speech.

``livetx devices`` runs as a real command (a child process) against a
running server: listing, approving, revoking (which closes the board's open
socket, whether the registry is the data dir's file, PostgreSQL's table
shared by two nodes, or the revocation comes over Redis) and rebooting. The
board is the simulator of tests/devices.py over a real socket: its wake
word's ``detect`` (which drops the speech heard before it), the face (``llm`` ``emotion``) a reply shows, and a
device tool call cut by ``abort``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher

from livetx.cluster.revocation import DEVICES, announce
from livetx.devices.emotion import EMOJI, feeling
from livetx.devices.registry import DEVICES_FILE, REBOOT_SECONDS, DeviceRegistry, DeviceWatch

from .devices import Board, tools_taken
from .test_devices import CLIENT, MAC, board, device_server, ota
from .test_twistd import start_up_error
from .test_voice import spoken

OTHER = "aa:bb:cc:dd:ee:02"
OTHER_CLIENT = "6f1c2a4e-0000-4000-8000-000000000002"
HEADER = f"{'device id':17}  {'state':8}  {'code':6}  board"


async def command(*args: str) -> tuple[int, str, str]:
    """``livetx devices ARGS`` as a child process, with the reactor (and the server on it) running meanwhile."""
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "livetx", "devices", *args], env=dict(os.environ), reactor=reactor)
    return code, out.decode(), err.decode()


def rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[0] == HEADER
    return [line.split() for line in lines[1:]]


async def talking(server: Any, mac: str = MAC, client: str = CLIENT, mcp: bool = False) -> Board:
    """An approved board whose hello was answered."""
    b = await board(server, 1, mac, client)
    b.hello(mcp=mcp)
    await b.wait(lambda: bool(b.messages("hello")))
    return b


class Logged:
    """The server's log lines while it is held open."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Logged:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *_: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    @property
    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


# -- the command -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_command_lists_approves_and_revokes_what_the_server_sees(
    livetx: Any, openai: Any, tmp_path: Path,
) -> None:
    server = await device_server(livetx, openai, tmp_path)
    data = ["--data-dir", str(server.data_dir)]
    code, out, err = await command("list", *data)
    assert code == 0 and rows(out) == [] and "no boards have asked yet" in err
    _, first = await ota(server)
    activation = first["activation"]["code"]
    code, out, _ = await command("list", *data)
    assert code == 0 and rows(out) == [[MAC, "pending", activation, "bread-compact-wifi/1.8.2"]]
    code, out, _ = await command("approve", activation, *data)
    assert (code, out) == (0, f"approved {MAC} (user device-{MAC})\n")
    assert (await ota(server, "/xiaozhi/ota/activate", body=b"{}"))[0] == 200  # the running server sees it
    assert rows((await command("list", *data))[1])[0][1] == "approved"
    code, out, err = await command("approve", "nobody", *data)
    assert (code, out) == (1, "") and "no board with code or Device-Id 'nobody'" in err
    code, out, _ = await command("revoke", MAC.upper(), *data)  # a MAC as the board sends it, upper case
    assert code == 0 and out.startswith(f"revoked {MAC} (user device-{MAC})")
    assert rows((await command("list", *data))[1])[0][1] == "revoked"
    assert (await ota(server))[0] == 403
    code, _, err = await command("approve", *data)  # no code
    assert code == 2 and err.endswith("livetx: Wrong number of arguments.\n")


# -- activation by the board's HMAC -----------------------------------------------------

SERIAL = "SN-LIVETX-0000000000000000000001"  # 32 characters, as the firmware reads it from eFuse
KEY = bytes(range(32))


def proof(challenge: str, key: bytes = KEY, serial: str = SERIAL) -> bytes:
    """The firmware's activation body (its ``Ota::GetActivationPayload``), with the HMAC its eFuse key makes."""
    return json.dumps({"algorithm": "hmac-sha256", "serial_number": serial, "challenge": challenge,
                       "hmac": hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()}).encode()


@pytest_twisted.ensureDeferred
async def test_a_board_whose_serial_key_signs_its_challenge_is_approved_without_a_code(
    livetx: Any, openai: Any, tmp_path: Path,
) -> None:
    extra = f'[devices.hmac_keys]\n"{SERIAL}" = "{KEY.hex()}"\n'
    server = await device_server(livetx, openai, tmp_path, extra=extra)
    activate = "/xiaozhi/ota/activate"
    _, other = await ota(server, mac=OTHER, client=OTHER_CLIENT)
    with Logged() as log:
        # Signed with another key: refused, and the board stays pending.
        wrong = await ota(server, activate, mac=OTHER, client=OTHER_CLIENT,
                          body=proof(other["activation"]["challenge"], key=bytes(32)))
    assert wrong[0] == 403
    assert any(f"Device {OTHER} failed activation" in line for line in log.lines)
    # A serial with no key here, or no serial at all ({}): the operator approves by code.
    assert (await ota(server, activate, mac=OTHER, client=OTHER_CLIENT,
                      body=proof(other["activation"]["challenge"], serial="SN-UNKNOWN")))[0] == 202
    assert (await ota(server, activate, mac=OTHER, client=OTHER_CLIENT, body=b"{}"))[0] == 202
    # Another board's challenge, signed right: not this board's proof.
    _, first = await ota(server)
    assert (await ota(server, activate, mac=OTHER, client=OTHER_CLIENT,
                      body=proof(first["activation"]["challenge"])))[0] == 403
    assert (await ota(server, activate, body=proof(first["activation"]["challenge"])))[0] == 200
    _, answer = await ota(server)
    b = await board(server, socket=answer["websocket"])
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    listed = {row[0]: row[1] for row in rows((await command("list", "--data-dir", str(server.data_dir)))[1])}
    assert listed == {MAC: "approved", OTHER: "pending"}


@pytest.mark.parametrize(("key", "message"), [
    ("not hex", "livetx: [devices.hmac_keys] the key of 'SN1' is not hex"),
    ("00ff", "livetx: [devices.hmac_keys] the key of 'SN1' is not 32 bytes (an eFuse HMAC key is 256 bits)"),
])
def test_a_bad_hmac_key_stops_start_up_with_one_line(tmp_path: Path, key: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[devices]\nenabled = true\n[devices.hmac_keys]\n"SN1" = "{key}"\n')
    assert start_up_error(tmp_path, "--config", str(path)) == message


# -- revocation closes the open socket -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_revoking_a_board_closes_its_open_socket_and_leaves_the_others(
    livetx: Any, openai: Any, tmp_path: Path,
) -> None:
    server = await device_server(livetx, openai, tmp_path)
    b = await talking(server)
    bystander = await talking(server, OTHER, OTHER_CLIENT)
    with Logged() as log:
        code, out, _ = await command("revoke", MAC, "--data-dir", str(server.data_dir))
        assert code == 0
        # The watch looks every half second; unrevoked, the socket would stay open.
        await b.wait(lambda: b.close_code is not None, timeout=5)
    assert (b.close_code, b.close_reason) == (1008, "Device revoked")
    assert f"Closed device {MAC}: Device revoked" in log.lines
    assert bystander.close_code is None
    bystander.send_json({"session_id": bystander.session_id, "type": "listen", "state": "detect",
                         "text": "Turn off the kitchen lights."})
    await bystander.wait(lambda: any(m.get("state") == "stop" for m in bystander.messages("tts")), timeout=20)


@pytest_twisted.ensureDeferred
async def test_two_nodes_on_one_database_share_approvals_and_revocations(
    livetx: Any, openai: Any, tmp_path: Path, postgres_url: str,
) -> None:
    """Each node has a data dir of its own: only the database carries the board from one to the other."""
    store = f'[store]\nurl = "{postgres_url}"\n'
    one = await device_server(livetx, openai, tmp_path, extra=store)
    two = await device_server(livetx, openai, tmp_path, extra=store)
    config = ["--config", str(tmp_path / "livetx.toml"), "--data-dir", str(tmp_path / "elsewhere")]
    _, first = await ota(one)  # recorded by node one
    code, out, _ = await command("list", *config)
    assert code == 0 and rows(out) == [[MAC, "pending", first["activation"]["code"], "bread-compact-wifi/1.8.2"]]
    assert (await command("approve", first["activation"]["code"], *config))[0] == 0
    _, answer = await ota(two)  # node two never saw the board approved
    for _ in range(20):  # its copy of the registry is at most half a second old (the firmware asks again)
        if "websocket" in answer:
            break
        await deferLater(reactor, 0.1, lambda: None)
        _, answer = await ota(two)
    assert answer["websocket"]["url"] == two.url("/xiaozhi/v1/")
    b = await board(two, socket=answer["websocket"])
    b.hello()
    await b.wait(lambda: bool(b.messages("hello")))
    assert (await command("revoke", MAC, *config))[0] == 0
    await b.wait(lambda: b.close_code is not None, timeout=5)
    assert (b.close_code, b.close_reason) == (1008, "Device revoked")
    assert (await ota(one))[0] == 403


@pytest_twisted.ensureDeferred
async def test_a_revocation_over_redis_closes_the_socket_at_once(
    livetx: Any, openai: Any, tmp_path: Path, redis_url: str,
) -> None:
    server = await device_server(livetx, openai, tmp_path, extra=f'[cluster]\nredis = "{redis_url}"\n')
    b = await talking(server)
    other = await talking(server, OTHER, OTHER_CLIENT)
    # Published only, the registry untouched: only the pub/sub path can close this socket.
    assert await deferToThread(announce, redis_url, MAC, channel=DEVICES) == 1
    await b.wait(lambda: b.close_code is not None, timeout=5)
    assert (b.close_code, b.close_reason) == (1008, "Device revoked")
    assert other.close_code is None
    code, out, _ = await command("revoke", OTHER, "--config", str(tmp_path / "livetx.toml"),
                                 "--data-dir", str(server.data_dir))
    assert code == 0 and out.splitlines()[-1] == "told 1 server process(es), which close its socket"
    await other.wait(lambda: other.close_code is not None, timeout=5)
    assert other.close_reason == "Device revoked"


# -- reboot ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reboot_reaches_the_board(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path)
    b = await talking(server)
    bystander = await talking(server, OTHER, OTHER_CLIENT)
    code, out, _ = await command("reboot", MAC, "--data-dir", str(server.data_dir))
    assert code == 0 and out.startswith(f"asked the server to reboot {MAC}")
    await b.wait(lambda: bool(b.messages("system")), timeout=5)
    assert b.messages("system") == [{"session_id": b.session_id, "type": "system", "command": "reboot"}]
    assert not bystander.messages("system") and b.close_code is None


def test_the_watch_closes_what_is_no_longer_approved_and_sends_fresh_reboots(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / DEVICES_FILE)
    third = "aa:bb:cc:dd:ee:03"
    for mac, client in ((MAC, CLIENT), (OTHER, OTHER_CLIENT), (third, "three")):
        registry.ask(mac, client)
        registry.set_state(mac, "approved")
    clock = Clock()
    clock.advance(time.time())  # reboots are stamped with the wall clock
    sockets = {MAC: CLIENT, OTHER: OTHER_CLIENT, third: "three"}  # open, by Device-Id and Client-Id
    closed: dict[str, str] = {}

    def close(judge: Any) -> None:
        for device_id, client_id in list(sockets.items()):
            why = judge(device_id, client_id)
            if why is not None:
                closed[device_id] = why
                del sockets[device_id]

    reboots: list[frozenset[str]] = []
    watch = DeviceWatch(registry, clock)
    watch.subscribe(close, reboots.append)
    registry.ask_reboot(MAC)  # before the server looked: not news
    watch.startService()
    assert closed == {} and reboots == []
    registry.set_state(MAC, "revoked")
    registry.ask(OTHER, "reflashed")  # a new Client-Id: pending again, the old token's socket must go
    clock.advance(0.49)
    assert closed == {}  # not before the next look
    clock.advance(0.01)
    assert closed == {MAC: "Device revoked", OTHER: "Device not approved"}
    registry.ask_reboot(third)
    registry._change(OTHER, lambda d: replace(d, reboot=clock.seconds() - REBOOT_SECONDS - 1))  # long ago
    clock.advance(0.5)
    assert reboots == [frozenset({third})]
    clock.advance(0.5)
    assert reboots == [frozenset({third})] and sockets == {third: "three"}  # each once
    watch.publish(third)  # another node's revocation, over Redis: the registry here need not know yet
    assert closed[third] == "Device revoked" and sockets == {}
    watch.stopService()


# -- the wake word, the face, and a tool call cut short -----------------------------------


@pytest_twisted.ensureDeferred
async def test_a_wake_word_only_wakes_and_other_detected_text_is_answered(
    livetx: Any, openai: Any, tmp_path: Path,
) -> None:
    server = await device_server(livetx, openai, tmp_path)
    openai.reply = "Sorry, the kitchen lights do not answer."
    b = await talking(server)
    for text in ("你好小智", "Hi, ESP", "hey jarvis!"):  # the stock wake words, however spelled
        b.send_json({"session_id": b.session_id, "type": "listen", "state": "detect", "text": text})
    b.send_json({"session_id": b.session_id, "type": "listen", "state": "detect", "text": "Turn on the kitchen lights"})
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")), timeout=20)
    assert [m["text"] for m in b.messages("stt")] == ["Turn on the kitchen lights"]
    asked = openai.requests_to("/chat/completions")
    assert len(asked) == 1 and asked[0].json["messages"][-1]["content"] == "Turn on the kitchen lights"
    events = b.events()
    assert events[events.index("stt"):events.index("stt") + 3] == ["stt", "llm", "tts:start"]
    llm = b.messages("llm")[0]
    assert (llm["emotion"], llm["text"]) == ("sad", "😔")  # "Sorry"


@pytest_twisted.ensureDeferred
async def test_a_wake_word_drops_the_speech_heard_before_it(livetx: Any, openai: Any, tmp_path: Path) -> None:
    """The reference clears its audio buffer on ``detect``: talk before the wake word is no question."""
    server = await device_server(livetx, openai, tmp_path)
    b = await talking(server)
    b.listen("start", "auto")
    b.say(await spoken("turn off the kitchen lights"), trailing_ms=0)  # the utterance is still open...
    await b.wait(lambda: not b.outbox, timeout=20)
    b.send_json({"session_id": b.session_id, "type": "listen", "state": "detect", "text": "Hi, ESP"})  # ...when woken
    b.listen("start", "auto")
    b.say(await spoken("turn off the bedroom lights"))
    await b.wait(lambda: any(m.get("state") == "stop" for m in b.messages("tts")), timeout=40)
    assert [m["text"] for m in b.messages("stt")] == ["turn off the bedroom lights"]
    assert len(openai.requests_to("/chat/completions")) == 1


@pytest.mark.parametrize(("reply", "emotion"), [
    ("Haha, that one is good.", "laughing"),
    ("I would love to. 😎 Done.", "cool"),  # an emoji the firmware knows outweighs the words
    ("Congratulations on the new lamp!", "happy"),
    ("Hmm, let me see.", "thinking"),
    ("The greatest lamp is on.", "neutral"),  # whole words only: "greatest" is not "great"
    ("The light is on.", "neutral"),
])
def test_the_face_is_read_from_the_reply(reply: str, emotion: str) -> None:
    felt, emoji = feeling(reply)
    assert felt == emotion and EMOJI[emoji] == emotion


@pytest_twisted.ensureDeferred
async def test_abort_cancels_a_device_tool_call_in_flight(livetx: Any, openai: Any, tmp_path: Path) -> None:
    server = await device_server(livetx, openai, tmp_path)
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    openai.tool_calls = lambda messages, tools: (
        None if messages[-1]["role"] == "tool" else [{"name": "self_light_set", "arguments": {"colour": "red"}}])
    openai.reply = "The light is red now."
    b = await talking(server, mcp=True)
    b.tools["self.light.set"] = ("Set the light's colour.", schema, lambda arguments: None)  # never answers by itself
    await tools_taken(server, b)
    b.send_json({"session_id": b.session_id, "type": "listen", "state": "detect", "text": "Make the light red"})
    await b.wait(lambda: bool(b.held), timeout=20)  # the call is out, on the board
    b.send_json({"session_id": b.session_id, "type": "abort", "reason": "wake_word_detected"})

    async def calls() -> dict[str, float]:
        text = (await (await treq.get(server.url("/metrics", scheme="http"), reactor=reactor)).content()).decode()
        return {line.split('status="')[1].split('"')[0]: float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("livetx_tool_calls_total{") and 'tool="self_light_set"' in line}

    for _ in range(100):
        if (await calls()).get("cancelled") == 1:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert await calls() == {"cancelled": 1}
    b.answer_held("true")  # too late: nothing waits for it, and the model is not told
    b.tools["self.light.set"] = ("Set the light's colour.", schema, lambda arguments: "true")
    b.send_json({"session_id": b.session_id, "type": "listen", "state": "detect", "text": "Make the light red"})
    await b.wait(lambda: any(m.get("text") == "The light is red now." for m in b.messages("tts")), timeout=20)
    told = [r for r in openai.requests_to("/chat/completions") if r.json["messages"][-1]["role"] == "tool"]
    assert len(told) == 1 and len(b.tool_calls) == 2
    assert await calls() == {"cancelled": 1, "ok": 1}
