"""Voice devices: a xiaozhi-esp32 board talks to livetx with its stock firmware.

The firmware's protocol (its docs/websocket.md and docs/mcp-protocol.md):
a WebSocket with JSON control messages and Opus in binary frames, found
through an OTA endpoint the board asks at boot. Like a phone call
(:mod:`livetx.telephony`), a board drives a normal talk-mode
:class:`livetx.live.session.LiveSession` through the socket seam:
:mod:`~livetx.devices.device` is the protocol's rules,
:mod:`~livetx.devices.socket` the WebSocket, :mod:`~livetx.devices.ota` the
OTA and activation endpoint, :mod:`~livetx.devices.registry` which boards
are approved. docs/devices.md says how to point a board at livetx.
"""
