"""Twisted's option parser, whose help text ``twistd live --help`` trims.

``usage.Options`` has no hidden options: ``getUsage`` lists every name in
``self.longOpt``, the table it also parses with. Options only ``--workers``
passes its workers, and the conformance tests' socket, are for no reader
of the help, so the help is made from a copy of that table without them.
"""

from __future__ import annotations

from typing import Collection

from twisted.python import usage


def usage_without(options: usage.Options, hidden: Collection[str], width: int | None = None) -> str:
    """``options``'s help text leaving out the long options named in ``hidden`` (still parsed)."""
    every = options.longOpt
    options.longOpt = [name for name in every if name.rstrip("=") not in hidden]
    try:
        return usage.Options.getUsage(options, width)
    finally:
        options.longOpt = every
