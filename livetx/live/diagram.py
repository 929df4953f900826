"""Draw the session state table as a Mermaid diagram for the docs.

``python -m livetx.live.diagram > docs/state-machine.md``; a test checks the
committed file still matches the table, so the picture cannot drift.
"""

from __future__ import annotations

from transitions.extensions.diagrams import GraphMachine

from livetx.live.session import REJECTIONS, build_machine

HEADER = """\
# The live session state machine

Generated from `livetx/live/session.py` by `python -m livetx.live.diagram`;
do not edit by hand. Every client frame is an event. A label in brackets is
a condition; `[internal]` means the frame is handled without leaving the state.
The session's own events are `turn_done`, `unwound` (an interrupted turn has
finished cancelling) and `segment_dropped` (a voice segment grew too long);
in talk mode (`server_detection`) the voice detector adds `speech_started` and
`speech_stopped` (see [protocol-extensions.md](protocol-extensions.md)).

"""


def render() -> str:
    """The whole Markdown page: diagram plus the table of refusals."""
    machine = build_machine(GraphMachine, graph_engine="mermaid", show_conditions=True)
    model = type("Session", (), {})()
    machine.add_model(model)
    diagram = model.get_graph().draw(None)
    rows = "\n".join(
        f"| `{state}` | `{event}` | `{code}` | {message} |"
        for (state, event), (code, message) in sorted(REJECTIONS.items())
    )
    return (
        f"{HEADER}```mermaid\n{diagram.strip()}\n```\n\n"
        "## Refused frames\n\n"
        "A client frame with no transition from the current state is answered with an\n"
        "error frame and changes nothing. These pairs have their own code; every other\n"
        "refusal is `INVALID_STATE` (\"no voice segment is open\").\n\n"
        "| state | frame | code | message |\n|---|---|---|---|\n"
        f"{rows}\n"
    )


if __name__ == "__main__":
    print(render(), end="")
