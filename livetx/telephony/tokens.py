"""The short-lived token that ties a carrier's stream socket to the call the webhook answered.

The webhook signs one per call (HS256 with the server's JWT secret, as the
dashboard tokens are) and hands it to the carrier as a stream parameter;
the stream's ``start`` must bring it back, for the same call, within
``[telephony] token_seconds``. The audience claim keeps the two kinds
apart: a call token opens no Live API socket, and a Live API token opens
no call.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from livetx.auth.tokens import EXPIRED, INVALID, MISSING, AuthFailure

AUDIENCE = "livetx-call"


class CallTokens:
    """Issues and checks call tokens."""

    def __init__(self, secret: str, seconds: float, clock: IReactorTime) -> None:
        self._secret = secret
        self._seconds = seconds
        self._clock = clock

    def issue(self, username: str, caller: str, call_id: str) -> str:
        """A token for one call (PyJWT checks ``exp`` against the wall clock, which the reactor's is)."""
        import jwt

        now = int(self._clock.seconds())
        claims = {"aud": AUDIENCE, "username": username, "caller": caller, "call": call_id,
                  "iat": now, "exp": now + max(1, int(self._seconds))}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str | None, call_id: str) -> str:
        """The username the token was issued for, if it is valid for ``call_id``; else :class:`AuthFailure`."""
        if not token:
            raise AuthFailure(MISSING)
        import jwt

        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=AUDIENCE,
                                options={"require": ["exp", "aud", "call", "username"]},
                                leeway=0)
        except jwt.ExpiredSignatureError:
            raise AuthFailure(EXPIRED) from None
        except jwt.InvalidTokenError:
            raise AuthFailure(INVALID) from None
        if claims["call"] != call_id or not isinstance(claims["username"], str):
            raise AuthFailure(INVALID)
        return claims["username"]

