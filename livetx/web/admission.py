"""Who may open a socket, decided from the handshake alone.

Each endpoint has a gate: a callable from Autobahn's ``ConnectionRequest`` to
an :class:`Admission`. Refusals are not handshake failures: like the
reference, we accept the upgrade and then close with 1008 and a reason (the
Open API endpoint first sends an error frame), because that is what existing
clients know how to show.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Callable, Sequence, TypeVar
from urllib.parse import urlsplit

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from livetx.auth.keys import KeyStore, key_from_request, resolve_username
from livetx.auth.tokens import AuthFailure, BadUsername, token_username, verify_token
from livetx.chat.service import MAX_ID_LENGTH
from livetx.errors import ErrorCode, LivetxError
from livetx.live.frames import Frame, chat_error, error

CHAT_SCOPE = "chat"
MODES = ("live", "chat")
#: The close reason for a token whose username breaks the rules (an error frame with ``BAD_USER`` first).
BAD_USERNAME = "Invalid username"


@dataclass(frozen=True)
class Admission:
    """The outcome of a handshake: a user and a mode, or a refusal."""

    username: str | None = None
    #: ``live`` or ``chat`` for the whole connection; None lets each frame's ``ct`` choose.
    mode: str | None = "live"
    #: Close reason when refused.
    refusal: str | None = None
    #: Error frame sent before the close, when the endpoint's clients expect one.
    notice: Frame | None = None
    #: The conversation the client asked to continue (``?session_id=``), if any.
    session_id: str | None = None
    #: The id of the API key that opened an Open API socket (for per-key limits).
    key_id: str | None = None
    #: The refusal is a failed credential (counted by :class:`FailedAuth`).
    auth_failed: bool = False


Gate = Callable[[ConnectionRequest], Admission]
#: A gate that may first wait for something off the reactor (a key looked up in the database).
WaitingGate = Callable[[ConnectionRequest], "Admission | Deferred[Admission]"]


def _first(request: ConnectionRequest, name: str) -> str | None:
    values = request.params.get(name) or []
    return values[0] if values else None


def jwt_gate(secret: str, mode: str | None) -> Gate:
    """Dashboard endpoints: a JWT in ``?token=``; refusals close with no frame."""

    def admit(request: ConnectionRequest) -> Admission:
        try:
            username = token_username(verify_token(secret, _first(request, "token")))
        except AuthFailure as e:
            return Admission(refusal=e.reason, auth_failed=True)
        except BadUsername as e:
            return Admission(refusal=BAD_USERNAME, notice=error(e.code, e.message))
        return _with_session(Admission(username=username, mode=mode), _first(request, "session_id"))

    return admit


def refusal(reason: str, code: ErrorCode, *, notice: bool = True, message: str | None = None) -> Admission:
    """Close with ``reason``; with ``notice``, first an error frame of ``code`` saying ``message`` (or the reason)."""
    frame = chat_error(code, message or reason) if notice else None
    return Admission(refusal=reason, notice=frame, auth_failed=code == ErrorCode.UNAUTHORIZED)


def api_key_gate(keys: KeyStore) -> Gate:
    """The Open API endpoint: an API key with the ``chat`` scope, and a username."""

    def admit(request: ConnectionRequest) -> Admission:
        key = key_from_request(request.params, request.headers)
        if key is None:
            return refusal("Missing API key", ErrorCode.UNAUTHORIZED)
        record = keys.verify(key, CHAT_SCOPE)
        if record is None:
            return refusal(keys.refusal(key), ErrorCode.UNAUTHORIZED)
        username, problem = resolve_username(_first(request, "username"))
        if username is None:
            problem = problem or "Invalid username"
            return refusal(problem, ErrorCode.BAD_USER)
        mode = (_first(request, "ct") or "").strip() or "live"
        if mode not in MODES:
            return refusal("Invalid ct", ErrorCode.INVALID_MESSAGE, message="ct must be 'live' or 'chat'")
        admission = Admission(username=username, mode=mode, key_id=record.id)
        return _with_session(admission, _first(request, "session_id"), notice=True)

    return admit


def key_looked_up(keys: KeyStore, gate: Gate) -> WaitingGate:
    """``gate``, after a key this node's copy of the keys lacks has been looked up.

    A key made a moment ago on a PostgreSQL store is not in the copy yet;
    the handshake waits for the look-up (off the reactor) rather than refuse it.
    """

    def admit(request: ConnectionRequest) -> Admission | Deferred[Admission]:
        waiting = keys.lookup(key_from_request(request.params, request.headers))
        return gate(request) if waiting is None else waiting.addCallback(lambda _: gate(request))

    return admit


def _with_session(admission: Admission, session_id: str | None, notice: bool = False) -> Admission:
    """The admission continuing ``?session_id=``, unless the id is too long to be one.

    Every frame of a chat turn echoes the id; a client must not make the
    server repeat a megabyte in each of them.
    """
    if session_id is not None and len(session_id) > MAX_ID_LENGTH:
        message = f"session_id must be at most {MAX_ID_LENGTH} characters"
        frame = (chat_error if notice else error)(ErrorCode.INVALID_MESSAGE_FORMAT, message)
        return Admission(refusal="Invalid session_id", notice=frame)
    return dataclasses.replace(admission, session_id=session_id)


class Verdict(Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"
    CLOSE = "close"


#: Seconds of messages a client may send at once: a recorded utterance is
#: often uploaded faster than real time (a 20 s clip in 20 ms frames is 1000).
BURST_SECONDS = 5.0


class FrameRate:
    """A token bucket per connection: ``rate`` messages a second on average.

    A message past the rate is refused (the client gets an error frame and
    can slow down); a client that keeps on regardless, a whole second's worth
    of refusals, is closed: answering a flood message by message would let it
    make the server write as fast as it reads.
    """

    def __init__(self, rate: float, clock: IReactorTime, burst: float = BURST_SECONDS) -> None:
        self._rate = rate
        self._clock = clock
        self._capacity = rate * burst
        self._tokens = self._capacity
        self._refused = 0.0
        self._at = clock.seconds()

    def admit(self) -> Verdict:
        if self._rate <= 0:
            return Verdict.ACCEPT
        now = self._clock.seconds()
        elapsed, self._at = now - self._at, now
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._refused = max(0.0, self._refused - elapsed * self._rate)
        if self._tokens >= 1:
            self._tokens -= 1
            return Verdict.ACCEPT
        self._refused += 1
        return Verdict.CLOSE if self._refused > self._rate else Verdict.REFUSE


def origin_allowed(request: ConnectionRequest, allowed: Sequence[str]) -> bool:
    """Whether a browser page from this ``Origin`` may open the socket.

    Devices and apps send no ``Origin``; browsers always do, so checking it
    stops another site's page from opening a socket with the user's token
    (cross-site WebSocket hijacking). The page's own host is always allowed.
    Autobahn's ``allowedOrigins`` compares with one configured port and
    scheme; livetx may listen on several endpoints, so the ``Host`` header
    the browser sent is what "same origin" is checked against.
    """
    origin = (request.origin or "").strip()
    if not origin or "*" in allowed:
        return True
    normalized = origin.rstrip("/").lower()
    if normalized in (a.rstrip("/").lower() for a in allowed):
        return True
    try:
        netloc = urlsplit(normalized).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc == request.headers.get("host", "").strip().lower()


def client_address(peer: str) -> str:
    """The IP address in a peer descriptor such as ``tcp4:1.2.3.4:5678`` (or ``tcp6:::1:5678``).

    Autobahn gives sockets that descriptor; HTTP requests get the same from
    ``autobahn.twisted.util.peer2str``, so both count failures alike.
    """
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0] if kind.startswith("tcp") else peer


T = TypeVar("T")


class TooManyFailures(LivetxError):
    """The address failed to authenticate too often; its credentials go unchecked."""

    code = ErrorCode.RATE_LIMITED
    status = 429


class FailedAuth:
    """Failed authentications per client address in the last minute, to slow guessing.

    Past ``limit`` failures an address is refused without its credentials
    being checked, until its oldest failure is a minute old. Memory stays
    bounded: old entries go as new ones come, and at most ``max_addresses``
    addresses are remembered.
    """

    WINDOW = 60.0

    def __init__(self, limit: int, clock: IReactorTime, max_addresses: int = 10_000) -> None:
        self._limit = limit
        self._clock = clock
        self._max = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.get(address, deque())
        cutoff = self._clock.seconds() - self.WINDOW
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            self._failures.pop(address, None)
        return times

    def blocked(self, address: str) -> bool:
        return 0 < self._limit <= len(self._recent(address))

    def failed(self, address: str) -> None:
        if self._limit <= 0:
            return
        times = self._recent(address)
        times.append(self._clock.seconds())
        self._failures[address] = times
        if len(self._failures) > self._max:  # forget the address seen longest ago
            del self._failures[next(iter(self._failures))]

    def admit(self, peer: str) -> str:
        """The address of a client at ``peer``; :class:`TooManyFailures` when it is blocked."""
        address = client_address(peer)
        if self.blocked(address):
            raise TooManyFailures("Too many failed attempts")
        return address

    def attempt(self, peer: str, verify: Callable[[], T], failed: Callable[[T], bool]) -> T:
        """``verify()`` for a client at ``peer``, counting it when ``failed(result)``.

        Raises :class:`TooManyFailures`, without verifying, when the address is blocked.
        """
        address = self.admit(peer)
        result = verify()
        if failed(result):
            self.failed(address)
        return result


def guarded(
    gate: Gate, *, failures: FailedAuth, origins: Sequence[str] | None = None, notice: bool = False
) -> Gate:
    """``gate`` behind the origin check (browser endpoints) and the failed-auth limit.

    ``notice``: the endpoint's clients expect an error frame before the close.
    """

    def admit(request: ConnectionRequest) -> Admission:
        if origins is not None and not origin_allowed(request, origins):
            return refusal("Origin not allowed", ErrorCode.FORBIDDEN, notice=notice)
        try:
            return failures.attempt(request.peer, lambda: gate(request), lambda a: a.auth_failed)
        except TooManyFailures as e:
            return refusal(e.message, e.code, notice=notice)

    return admit


@functools.lru_cache(maxsize=1024)
def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


class AddressLimit:
    """Open connections per remote address, of every kind (HTTP, WebSocket, half-open).

    Per-user and per-key caps count only what has authenticated; this one
    bounds what a single address may hold open before it authenticates, or
    without ever doing so. Loopback is exempt unless ``limit_loopback``: a
    reverse proxy on the same host, the tests and the benchmarks all come
    from there.
    """

    def __init__(self, limit: int, limit_loopback: bool = False) -> None:
        self._limit = limit
        self._limit_loopback = limit_loopback
        self._open: Counter[str] = Counter()

    def __len__(self) -> int:
        return sum(self._open.values())

    def admit(self, addr: object) -> Callable[[], None] | None:
        """A release to call when the connection closes, or None: one too many for its address."""
        host = getattr(addr, "host", None)
        if not host or self._limit <= 0 or (not self._limit_loopback and _loopback(host)):
            return _nothing
        if self._open[host] >= self._limit:
            return None
        self._open[host] += 1
        return partial(self._release, host)

    def _release(self, host: str) -> None:
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]


def _nothing() -> None:
    pass
