"""Twisted's log publisher, which ``--workers`` leans on to name the worker in each line.

Workers of one supervisor write to the same stream, so each line must say
whose it is. ``LogPublisher`` hands an event to its observers in the order
they were added, the same ``dict`` to each; an observer added before twistd
begins logging (that is, while ``makeService`` runs) therefore sees every
later event first and can add to it what the file, JSON and syslog observers
then print. Neither the order nor the sharing is promised.
"""

from __future__ import annotations

from twisted.logger import ILogObserver, LogEvent, LogPublisher
from zope.interface import provider


def name_every_event(publisher: LogPublisher, key: str, value: int) -> None:
    """From now on every event says ``key``: as a field (JSON lines) and in the text line's ``[system]``."""

    @provider(ILogObserver)
    def name(event: LogEvent) -> None:
        event[key] = value
        level = event.get("log_level")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        event["log_system"] = f"{key}-{value} {system}"

    publisher.addObserver(name)
