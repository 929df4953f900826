"""The short-lived token that ties a carrier's stream socket to the call the webhook answered.

The webhook signs one per call (HS256 with the server's JWT secret, as the
dashboard tokens are) and hands it to the carrier as a stream parameter;
the stream's ``start`` must bring it back, for the same call, within
``[telephony] token_seconds``. The audience claim keeps the two kinds
apart: a call token opens no Live API socket, and a Live API token opens
no call.
"""

from __future__ import annotations

from livetx.auth.audience import AudienceTokens
from livetx.auth.tokens import INVALID, AuthFailure

AUDIENCE = "livetx-call"


class CallTokens(AudienceTokens):
    """Issues and checks call tokens."""

    audience = AUDIENCE

    def issue(self, username: str, caller: str, call_id: str) -> str:
        """A token for one call."""
        return self._issue({"username": username, "caller": caller, "call": call_id})

    def verify(self, token: str | None, call_id: str) -> str:
        """The username the token was issued for, if it is valid for ``call_id``; else :class:`AuthFailure`."""
        claims = self._claims(token, ["call", "username"])
        if claims["call"] != call_id or not isinstance(claims["username"], str):
            raise AuthFailure(INVALID)
        return claims["username"]
