"""One way to write a state machine here: a ``transitions`` table compiled once.

Each kind of object with states (a connection's session, a turn, a talk-mode
capture, the voice detector) declares its table as data and gets one
:class:`Table`. The table's machine has no model of its own: an object is a
model by having a ``state`` attribute, and events are fired with
:meth:`Table.fire`. Binding a machine to each object (``transitions``'
usual ``Machine(model=self)``, or its ``add_model``) would put a bound
trigger and an ``is_<state>`` method on every object; at thousands of idle
connections that is most of a connection's memory, for nothing a table
lookup does not do. The same table draws the diagrams in
``docs/state-machine.md`` (:mod:`livetx.diagram`).

A transition with no conditions and no callbacks (all of a turn's, a
capture's, the voice detector's) is applied straight from the table: it
means only "the state becomes ``dest``", and going through ``transitions``'
event machinery for that would cost a turn more than all its other
bookkeeping together.
"""

from __future__ import annotations

from typing import Any, Sequence

from transitions import Machine

from livetx.errors import ErrorCode
from livetx.fences.transitions import trigger


class Table:
    """States, transitions and refusals of one kind of object."""

    def __init__(
        self, name: str, states: Sequence[str], transitions: Sequence[dict[str, Any]], initial: str,
        refusals: dict[tuple[str, str], tuple[ErrorCode, str]] | None = None,
    ) -> None:
        self.name = name
        self.states = list(states)
        self.transitions = list(transitions)
        self.initial = initial
        #: (state, event) → (code, message) for a client event refused there.
        self.refusals = refusals or {}
        self.machine = self.build()
        self._plain = _plain_moves(self.transitions)

    def build(self, cls: type[Machine] = Machine, **options: Any) -> Machine:
        """Compile the table (``cls`` may be a diagram-drawing machine)."""
        return cls(
            model=None, states=self.states, transitions=self.transitions, initial=self.initial,
            auto_transitions=False, send_event=True, **options,
        )

    def fire(self, model: Any, event: str, **kwargs: Any) -> bool:
        """Run ``event`` on ``model``; False when a condition refused it.

        Raises ``transitions.MachineError`` when the event has no transition
        from the model's state.
        """
        dest = self._plain.get((model.state, event), _NOT_PLAIN)
        if dest is _NOT_PLAIN:
            return trigger(self.machine, event, model, **kwargs)
        if dest is not None:
            model.state = dest
        return True


_NOT_PLAIN = object()
_CALLBACKS = ("conditions", "unless", "before", "after", "prepare")


def _plain_moves(transitions: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """(state, event) → dest, where that pair has exactly one transition and it runs no code."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in transitions:
        sources = [row["source"]] if isinstance(row["source"], str) else row["source"]
        for source in sources:
            rows.setdefault((source, row["trigger"]), []).append(row)
    return {
        pair: found[0]["dest"] for pair, found in rows.items()
        if len(found) == 1 and not any(found[0].get(key) for key in _CALLBACKS)
    }
