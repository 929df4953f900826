"""Draw every state machine as a Mermaid diagram for the docs.

``python -m livetx.diagram > docs/state-machine.md`` (or ``tox -e diagram``);
a test checks the committed file still matches the tables, so the pictures
cannot drift. It lives above the layers because it draws the chat turn's
machine as well as the live ones.
"""

from __future__ import annotations

from transitions.extensions.diagrams import GraphMachine

from livetx.chat.service import CHAT_TURN
from livetx.devices.device import DEVICE
from livetx.live.capture import CAPTURE
from livetx.live.machine import Table
from livetx.live.rules import SESSION
from livetx.live.turn import TURN
from livetx.live.vad import VOICE
from livetx.telephony.call import CALL

HEADER = """\
# The state machines

Generated from the tables in the code by `python -m livetx.diagram` (or
`tox -e diagram`); do not edit by hand. A label in brackets is a condition;
`[internal]` means the event is handled without leaving the state.

"""

#: Each machine, with what its events are.
MACHINES: list[tuple[Table, str, str]] = [
    (SESSION, "The live session (`livetx/live/rules.py`)", """\
One per connection. Every client frame is an event. The session's own
events are `turn_done` (a turn is stored and `end` sent), `unwound` (an
interrupted turn has finished cancelling and its text so far is stored) and
`segment_dropped` (a voice segment grew too long); in talk mode
(`server_detection`) the voice detector adds `speech_started` and
`speech_stopped` (see [protocol-extensions.md](protocol-extensions.md)).
While `interrupted`, a frame that starts a turn is queued (`turn_queued`)
and the turn starts once the interrupted one is unwound."""),
    (TURN, "A live turn (`livetx/live/turn.py`)", """\
One per reply. Only a running turn (`streaming`, `speaking`) sends frames."""),
    (CAPTURE, "Voice capture (`livetx/live/capture.py`)", """\
One per connection, beside the session: the open segment, pushed to talk
(`segment`) or heard by talk mode's detector (`utterance`)."""),
    (VOICE, "Talk mode's voice detector (`livetx/live/vad.py`)", """\
Per 30 ms frame of the stream: speech must last `min_speech_ms` to count
(`onset`), and `silence_ms` of silence ends it (or, with `end_of_turn`,
what was said: `livetx/live/endpoint.py`)."""),
    (CHAT_TURN, "A chat turn (`livetx/chat/service.py`)", """\
On a socket or over SSE. `cancel` is the client's `interrupt`, `stop` the
server shutting down; every way ends in `ended` once the text is stored."""),
    (CALL, "A phone call (`livetx/telephony/call.py`)", """\
One per carrier stream socket, around a live session in talk mode
([telephony.md](telephony.md)). `begin` is the carrier's `start` with a valid
call token; `end` is the caller hanging up, the socket closing, or a refused
`start`."""),
    (DEVICE, "A voice device (`livetx/devices/device.py`)", """\
One per xiaozhi-esp32 board's socket, around a live session
([devices.md](devices.md)). `hello` is the board's, answered with the
server's; `end` is the socket closing."""),
]


def diagram(table: Table) -> str:
    machine = table.build(GraphMachine, graph_engine="mermaid", show_conditions=True)
    model = type("Model", (), {})()
    machine.add_model(model)
    return str(model.get_graph().draw(None)).strip()


def refusals(table: Table) -> str:
    if not table.refusals:
        return ""
    rows = "\n".join(
        f"| `{state}` | `{event}` | `{code}` | {message} |"
        for (state, event), (code, message) in sorted(table.refusals.items())
    )
    return (
        "\n\n### Refused frames\n\n"
        "A client frame with no transition from the current state is answered with an\n"
        "error frame and changes nothing. These pairs have their own code; every other\n"
        "refusal is `INVALID_STATE` (\"no voice segment is open\").\n\n"
        "| state | frame | code | message |\n|---|---|---|---|\n"
        f"{rows}"
    )


def render() -> str:
    """The whole Markdown page: each machine's diagram, and the session's refusals."""
    sections = [
        f"## {title}\n\n{about}\n\n```mermaid\n{diagram(table)}\n```{refusals(table)}\n"
        for table, title, about in MACHINES
    ]
    return HEADER + "\n".join(sections)


if __name__ == "__main__":
    print(render(), end="")
