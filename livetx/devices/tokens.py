"""The WebSocket token the OTA endpoint gives an approved board, bound to its Device-Id and Client-Id.

HS256 with the server's JWT secret, like the call and dashboard tokens; the
audience keeps the kinds apart (a device token opens no Live API socket).
It is long-lived because the firmware keeps it in NVS and asks for a new
one only at boot; revocation goes through the registry, checked at every
connection, not through the token's expiry.
"""

from __future__ import annotations

from livetx.auth.audience import AudienceTokens
from livetx.auth.tokens import INVALID, AuthFailure

AUDIENCE = "livetx-device"


class DeviceTokens(AudienceTokens):
    audience = AUDIENCE

    def issue(self, device_id: str, client_id: str) -> str:
        return self._issue({"device": device_id.lower(), "client": client_id})

    def verify(self, authorization: str | None, device_id: str | None, client_id: str | None) -> str:
        """The Device-Id the ``Authorization: Bearer`` token was issued to, if the headers match it."""
        claims = self._claims((authorization or "").removeprefix("Bearer").strip(), ["device", "client"])
        if claims["device"] != (device_id or "").lower() or claims["client"] != client_id:
            raise AuthFailure(INVALID)
        return str(claims["device"])
