"""Tokens of one kind: HS256 with the server's JWT secret, kept apart from the others by their audience.

The call tokens (:mod:`livetx.telephony.tokens`) and the device tokens
(:mod:`livetx.devices.tokens`) differ in what they bind (a call, a board)
and how long they live, not in how they are signed and checked.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from livetx.auth.tokens import EXPIRED, INVALID, MISSING, AuthFailure


class AudienceTokens:
    """Issues and checks the tokens of ``audience``, valid for ``seconds`` from issue."""

    audience: str

    def __init__(self, secret: str, seconds: float, clock: IReactorTime) -> None:
        self._secret = secret
        self._seconds = seconds
        self._clock = clock

    def _issue(self, claims: dict[str, Any]) -> str:
        """A token with ``claims`` (PyJWT checks ``exp`` against the wall clock, which the reactor's is)."""
        import jwt

        now = int(self._clock.seconds())
        claims = {"aud": self.audience, **claims, "iat": now, "exp": now + max(1, int(self._seconds))}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def _claims(self, token: str | None, required: list[str]) -> dict[str, Any]:
        """The claims of a valid, unexpired ``token`` of this audience that has ``required``; else :class:`AuthFailure`."""
        if not token:
            raise AuthFailure(MISSING)
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(token, self._secret, algorithms=["HS256"], audience=self.audience,
                                                options={"require": ["exp", "aud", *required]}, leeway=0)
        except jwt.ExpiredSignatureError:
            raise AuthFailure(EXPIRED) from None
        except jwt.InvalidTokenError:
            raise AuthFailure(INVALID) from None
        return claims
