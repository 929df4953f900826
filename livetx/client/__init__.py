"""A Live API client: one turn, text or voice, from the command line or from code.

:mod:`livetx.client.session` speaks the protocol (Autobahn on Twisted),
:mod:`livetx.client.audio` turns any WAV into frames of 16 kHz PCM16 (100 ms for
a recording sent at once, 20 ms at speaking pace)
and the reply's chunks into one file, :mod:`livetx.client.console` is what
``livetx say`` and ``livetx talk`` print.
"""
