"""Twisted's application internals that ``twistd live`` leans on (:mod:`livetx.tap`).

``StreamServerEndpointService`` logs a port it cannot open as a traceback,
unless its private ``_raiseSynchronously`` is set, as ``strports.service``
sets it: then ``privilegedStartService`` raises, and the server can say
what went wrong in one line. ``tests/test_fences.py`` checks the flag is
still read there.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService


class RaisingEndpointService(StreamServerEndpointService):
    """A listening service whose port that cannot be opened raises from ``privilegedStartService``."""

    _raiseSynchronously = True
