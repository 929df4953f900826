"""``transitions`` internals the state tables (:mod:`livetx.live.machine`) lean on.

A table's machine is built with ``model=None`` and never given a model:
its events are fired on any object with a ``state`` attribute by calling
the compiled ``Event.trigger(model, **kwargs)`` directly. ``transitions``
documents triggering through the model's bound methods, which a machine
adds to each model it is given; ``Event.trigger`` taking the model as an
argument, and reading and writing only its ``state``, is what lets one
compiled table serve thousands of objects without binding each.
``tests/test_fences.py`` checks that shape.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine


def trigger(machine: Machine, event: str, model: Any, **kwargs: Any) -> bool:
    """Fire ``event`` of ``machine`` on ``model`` (never added to it); False when a condition refused it."""
    return bool(machine.events[event].trigger(model, **kwargs))
