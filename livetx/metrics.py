"""What a running server counts, told by the turns themselves.

A connection's :class:`TurnObserver` is a
:class:`livetx.live.events.TurnListener` of its session, and of its chat
turns (an SSE request has one too): each turn reports its start, first
delta, first audio, provider timings, failed providers and its end with an
outcome and its values, and whoever sends an error frame reports its code. Each
server owns a :class:`ServerMetrics` with its own ``CollectorRegistry``, so
several servers in one process (as in the tests) count independently.

The counting is done here, in plain numbers, from the start; the
``prometheus_client`` registry that shows them is made, and the library
(with its HTTP, WSGI and gzip modules) imported, at the first scrape.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from twisted.logger import Logger

from livetx.live.events import Ignore, Outcome

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

_log = Logger()

#: Seconds: from 10 ms (a local echo) to a minute (a stuck upstream).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Value:
    """One series of a counter or gauge; ``created`` is when it first appeared."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Histogram:
    """One series of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sum += value


class _Family:
    """A metric as ``prometheus_client`` has it (``labels(...)``, ``inc``, ``observe``), minus the library.

    A labelled series exists once its labels are first used; an unlabelled
    metric has its one series from the start, as in ``prometheus_client``.
    Only the reactor thread counts; a scrape (in a thread) reads a copy.
    """

    def __init__(
        self, kind: str, name: str, documentation: str, labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
    ) -> None:
        self.kind, self.name, self.documentation = kind, name, documentation
        self.labelnames = tuple(labelnames)
        self._bounds = (*buckets, float("inf"))
        self._series: dict[tuple[str, ...], Any] = {}
        if not self.labelnames:
            self._series[()] = self._new()

    def _new(self) -> Any:
        return _Histogram(self._bounds) if self.kind == "histogram" else _Value()

    def labels(self, *values: Any) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, not {values!r}")
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new()
        return series

    def inc(self, amount: float = 1.0) -> None:
        self._series[()].inc(amount)

    def dump(self) -> list[list[Any]]:
        """Every series in plain numbers: ``[labels, value]`` or ``[labels, counts, sum]``."""
        return [[list(key), value.value] if isinstance(value, _Value) else [list(key), list(value.counts), value.sum]
                for key, value in list(self._series.items())]

    def empty(self) -> _Family:
        """A family of the same name, kind and labels, with no counts."""
        return _Family(self.kind, self.name, self.documentation, self.labelnames, self._bounds[:-1])

    def add(self, dumped: list[list[Any]], gauges: bool = True) -> None:
        """Add another process's :meth:`dump` to these counts (its gauges only when ``gauges``)."""
        if self.kind == "gauge" and not gauges:
            return
        for key, *numbers in dumped:
            series = self.labels(*key)
            if isinstance(series, _Histogram):
                for i, count in enumerate(numbers[0]):
                    series.counts[i] += count
                series.sum += numbers[1]
            else:
                series.value += numbers[0]

    def metric(self) -> Metric:
        """The family as ``prometheus_client`` shows it, with ``_created`` samples as its own metrics have."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family: Metric
        series = list(self._series.items())  # one step, so a scrape never sees the dict change under it
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, value in series:
                family.add_metric(key, value.value, created=value.created)
        elif self.kind == "gauge":
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, value in series:
                family.add_metric(key, value.value)
        else:
            family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, histogram in series:
                counts, total = list(histogram.counts), histogram.sum
                cumulative = [(floatToGoString(b), float(c)) for b, c in zip(self._bounds, itertools.accumulate(counts))]
                family.add_metric(key, cumulative, total)
                family.add_sample(self.name + "_created", dict(zip(self.labelnames, key)), histogram.created)
        return family


class _Collector:
    """Hands a registry the families, read afresh at each scrape."""

    def __init__(self, families: Callable[[], Sequence[_Family]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families():
            yield family.metric()


class ServerMetrics:
    """The Prometheus metrics of one server, in a registry of its own."""

    def __init__(self) -> None:
        self._families: list[_Family] = []
        #: What a scrape shows: this process's families, or (``--workers``) every worker's summed.
        self.source: Callable[[], Sequence[_Family]] = lambda: self._families
        self.connections = self._add(
            "counter", "livetx_connections", "Accepted WebSocket connections.", ["endpoint", "mode"])
        self.closed = self._add(
            "counter", "livetx_connections_closed", "Accepted WebSocket connections since closed.",
            ["endpoint", "mode"])
        self.refused = self._add(
            "counter", "livetx_connections_refused", "WebSocket connections refused at admission.", ["endpoint"])
        self.open = self._add("gauge", "livetx_open_connections", "WebSocket connections open now.", ["endpoint"])
        self.turns = self._add(
            "counter", "livetx_turns", "Finished turns (live and chat) by input and outcome (ok, interrupted, failed).",
            ["input_type", "outcome"])
        self.first_delta = self._add(
            "histogram", "livetx_turn_first_delta_seconds", "Turn start to the first text delta.",
            ["input_type"], LATENCY_BUCKETS)
        self.first_audio = self._add(
            "histogram", "livetx_turn_first_audio_seconds", "Turn start to the first audio chunk.",
            ["input_type"], LATENCY_BUCKETS)
        self.voice_to_voice = self._add(
            "histogram", "livetx_voice_to_voice_seconds",
            "Talk mode: the user's last voiced audio frame to the reply's first audio, measured on the server.",
            buckets=LATENCY_BUCKETS)
        self.turn_seconds = self._add(
            "histogram", "livetx_turn_seconds", "Turn start to its end frame.", ["input_type"], LATENCY_BUCKETS)
        self.interrupts = self._add("counter", "livetx_interrupts", "Turns stopped by the client (barge-in).")
        self.errors = self._add(
            "counter", "livetx_errors",
            "Error frames sent, by code (a call's or a board's session errors, which their protocols cannot carry, "
            "are logged and counted here too).", ["code"])
        # Apart from ``errors``: nothing is sent back for them, and a carrier's or a board's bugs are not the turns'.
        self.refused_frames = self._add(
            "counter", "livetx_refused_frames",
            "Frames a carrier or a device sent that were refused (logged and dropped; the call or the board "
            "goes on), by source (the carrier, or device) and code.", ["source", "code"])
        self.provider_seconds = self._add(
            "histogram", "livetx_provider_seconds",
            "Provider latency: stage first (first token or audio) or total; stt is the transcription.",
            ["kind", "provider", "stage"], LATENCY_BUCKETS)
        self.provider_failures = self._add(
            "counter", "livetx_provider_failures", "Provider failures reported to clients.", ["kind"])
        self.tool_calls = self._add(
            "counter", "livetx_tool_calls",
            "Tool calls (live and chat turns) by tool and status (ok, failed, refused, timeout, cancelled).",
            ["tool", "status"])
        self.tool_seconds = self._add(
            "histogram", "livetx_tool_seconds", "Tool call latency.", ["tool"], LATENCY_BUCKETS)
        self.speculations = self._add(
            "counter", "livetx_speculations",
            "Talk mode: replies started at a pause before the end of turn, by outcome: committed (the turn "
            "took it) or discarded (the user went on; the model call was cancelled, nothing sent).",
            ["outcome"])

    def _add(
        self, kind: str, name: str, documentation: str, labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
    ) -> _Family:
        family = _Family(kind, name, documentation, labelnames, buckets)
        self._families.append(family)
        return family

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """The ``prometheus_client`` registry showing these metrics; made at the first scrape."""
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        registry.register(_Collector(lambda: self.source()))
        return registry

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every family in plain numbers, for another process to add up (see :meth:`combine`)."""
        return {family.name: family.dump() for family in self._families}

    def combine(self, snapshots: Iterable[tuple[Mapping[str, list[list[Any]]], bool]]) -> list[_Family]:
        """The families summed over ``(snapshot, alive)`` pairs; a dead process's gauges are left out."""
        combined = [family.empty() for family in self._families]
        for snapshot, alive in snapshots:
            for family in combined:
                family.add(snapshot.get(family.name, []), gauges=alive)
        return combined

    def opened(self, endpoint: str, mode: str | None, username: str) -> TurnObserver:
        """An accepted socket; ``mode`` None is the unified endpoint (mode per frame)."""
        mode = mode or "per-frame"
        self.connections.labels(endpoint, mode).inc()
        self.open.labels(endpoint).inc()
        return self.observer(endpoint, mode, username)

    def observer(self, endpoint: str, mode: str, username: str) -> TurnObserver:
        """A listener for turns that are not a socket's own (its chat channel's, an SSE request's)."""
        return TurnObserver(self, endpoint, mode, username)

    def refused_at(self, endpoint: str) -> None:
        self.refused.labels(endpoint).inc()

    def frame_refused(self, source: str, code: str) -> None:
        """A carrier's or a device's frame was refused: nothing is sent back, the socket goes on."""
        self.refused_frames.labels(source, code).inc()

    def tool_ended(self, name: str, status: str, seconds: float) -> None:
        """A tool call of a live or chat turn ended (livetx.tools)."""
        self.tool_calls.labels(name, status).inc()
        self.tool_seconds.labels(name).observe(seconds)


class TurnObserver(Ignore):
    """One connection's (or chat channel's, or SSE request's) view: its turns' events, and its error frames."""

    def __init__(self, metrics: ServerMetrics, endpoint: str, mode: str, username: str) -> None:
        self._m = metrics
        self._endpoint = endpoint
        self._mode = mode
        self._username = username
        self._turn: _TurnRecord | None = None

    def closed(self) -> None:
        """The socket closed (a turn it ran was reported ended first)."""
        self._m.open.labels(self._endpoint).dec()
        self._m.closed.labels(self._endpoint, self._mode).inc()

    # -- TurnListener --------------------------------------------------------

    def error_sent(self, code: str) -> None:
        self._m.errors.labels(code).inc()
        if self._turn is not None:
            self._turn.errors.append(code)

    def provider_failed(self, kind: str) -> None:
        self._m.provider_failures.labels(kind).inc()

    def turn_started(self, turn_id: int, input_type: str, assemble_seconds: float | None) -> None:
        self._turn = _TurnRecord(input_type)

    def provider_timing(self, kind: str, provider: str, first: float | None, total: float) -> None:
        if first is not None:
            self._provider(kind, provider, "first", first)
        self._provider(kind, provider, "total", total)

    def first_delta(self, seconds: float) -> None:
        if self._turn is not None:
            self._turn.first_delta = seconds

    def first_audio(self, seconds: float) -> None:
        if self._turn is not None:
            self._turn.first_audio = seconds

    def tool_finished(self, call_id: str, name: str, ok: bool, status: str, seconds: float) -> None:
        self._m.tool_ended(name, status, seconds)

    def speculated(self, outcome: str) -> None:
        self._m.speculations.labels(outcome).inc()

    def turn_ended(self, outcome: Outcome, seconds: float, values: Mapping[str, Any]) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        m, kind = self._m, turn.input_type
        if outcome is Outcome.INTERRUPTED:
            m.interrupts.inc()
        label = "interrupted" if outcome is Outcome.DROPPED else outcome.value
        m.turns.labels(kind, label).inc()
        if turn.first_delta is not None:
            m.first_delta.labels(kind).observe(turn.first_delta)
        if turn.first_audio is not None:
            m.first_audio.labels(kind).observe(turn.first_audio)
        voice_to_voice = values.get("voice_to_voice_ms")
        if voice_to_voice is not None:
            m.voice_to_voice.labels().observe(voice_to_voice / 1000)
        end = None
        if label != "interrupted":
            end = seconds
            m.turn_seconds.labels(kind).observe(seconds)
        # One structured event per turn: timings and engine names, never text or credentials.
        _log.info(
            "Turn {outcome} for {username} on {endpoint} ({input_type}): first delta {first_delta}, "
            "first audio {first_audio}, end {end}",
            livetx_event="turn",
            outcome=label,
            username=self._username,
            endpoint=self._endpoint,
            input_type=kind,
            first_delta=_rounded(turn.first_delta),
            first_audio=_rounded(turn.first_audio),
            end=_rounded(end),
            errors=list(turn.errors),
            metrics=dict(values),
        )

    def _provider(self, kind: str, name: str, stage: str, seconds: float) -> None:
        self._m.provider_seconds.labels(kind, name, stage).observe(seconds)


class _TurnRecord:
    __slots__ = ("input_type", "first_delta", "first_audio", "errors")

    def __init__(self, input_type: str) -> None:
        self.input_type = input_type
        self.first_delta: float | None = None
        self.first_audio: float | None = None
        self.errors: list[str] = []


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)
