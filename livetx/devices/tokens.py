"""The WebSocket token the OTA endpoint gives an approved board, bound to its Device-Id and Client-Id.

HS256 with the server's JWT secret, like the call and dashboard tokens; the
audience keeps the kinds apart (a device token opens no Live API socket).
It is long-lived because the firmware keeps it in NVS and asks for a new
one only at boot; revocation goes through the registry, checked at every
connection, not through the token's expiry.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from livetx.auth.tokens import EXPIRED, INVALID, MISSING, AuthFailure

AUDIENCE = "livetx-device"


class DeviceTokens:
    def __init__(self, secret: str, seconds: float, clock: IReactorTime) -> None:
        self._secret = secret
        self._seconds = seconds
        self._clock = clock

    def issue(self, device_id: str, client_id: str) -> str:
        import jwt

        now = int(self._clock.seconds())
        claims = {"aud": AUDIENCE, "device": device_id.lower(), "client": client_id,
                  "iat": now, "exp": now + max(1, int(self._seconds))}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, authorization: str | None, device_id: str | None, client_id: str | None) -> str:
        """The Device-Id the ``Authorization: Bearer`` token was issued to, if the headers match it."""
        token = (authorization or "").removeprefix("Bearer").strip()
        if not token:
            raise AuthFailure(MISSING)
        import jwt

        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=AUDIENCE,
                                options={"require": ["exp", "aud", "device", "client"]}, leeway=0)
        except jwt.ExpiredSignatureError:
            raise AuthFailure(EXPIRED) from None
        except jwt.InvalidTokenError:
            raise AuthFailure(INVALID) from None
        if claims["device"] != (device_id or "").lower() or claims["client"] != client_id:
            raise AuthFailure(INVALID)
        return str(claims["device"])
