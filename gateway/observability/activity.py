"""The console's two bounded stores of what happened, kept in memory without Prometheus: the last requests
(``Activity``) and a few numbers over time (``Series``).

``Activity`` holds the last ``size`` requests, each one small tuple: when it arrived, its model, endpoint, the
name of its API key (never the key), its status, its prompt and completion tokens, its time to first token
and its decode speed. It is fed from ``Metrics.flush``, the batch that already reads every finished request's
usage (a request refused before it had a model is there too, with no tokens), so the request path pays
nothing for it. Each entry has a number, increasing, so that a reader polls for what is newer than the last
one it saw (``since``).

``Series`` samples, on a timer, each model's generation tokens per second over the interval, its queue
depth and its requests in flight, and each device's memory held; it keeps the last ``points`` samples.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway.api.usage import Usage

DEFAULT_SIZE = 200
SERIES_INTERVAL = 2.0  # seconds between samples
SERIES_POINTS = 450  # 15 minutes at 2 s


class Trace(Protocol):
    """What is read of a finished request's trace (``gateway.observability.metrics.Trace``)."""

    model: str
    endpoint: str
    arrived: float
    scheduled: float
    first: float
    status: int
    key: str
    usage: Usage | None
    gaps: list[float]
    ended: float


class Entry(NamedTuple):
    id: int
    time: float  # when it arrived (Unix seconds)
    model: str
    endpoint: str
    key: str  # the API key's name; "" without keys
    status: int
    duration: float  # seconds, arrival to the last byte
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft: float | None  # seconds, arrival to the first byte
    tokens_per_second: float | None  # completion tokens over the time they took to come

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": round(self.time, 3),
            "model": self.model,
            "endpoint": self.endpoint,
            "key": self.key or None,
            "status": self.status,
            "duration_seconds": round(self.duration, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_seconds": None if self.ttft is None else round(self.ttft, 4),
            "tokens_per_second": None if self.tokens_per_second is None else round(self.tokens_per_second, 2),
        }


def decode_rate(
    completion_tokens: int, streamed: bool, first: float, started: float, ended: float
) -> float | None:
    """Completion tokens per second: for a stream, over the time after its first piece (``first``), which
    the other tokens took; for an answer that came whole, over the time from its replica taking it
    (``started``: its prompt's time included, as the client saw it)."""
    if completion_tokens <= 0:
        return None
    if streamed and first and completion_tokens > 1 and ended - first > 1e-6:
        return (completion_tokens - 1) / (ended - first)
    elapsed = ended - started
    return completion_tokens / elapsed if elapsed > 1e-6 else None


class Activity:
    """The last ``size`` requests, oldest first."""

    def __init__(self, size: int = DEFAULT_SIZE, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self._entries: deque[_Raw] = deque(maxlen=size)
        self._next = 1  # the next entry's number
        self._clock = clock

    def traced(self, traces: Sequence[Trace], perf_now: float) -> None:
        """Finished requests (``ended``: when the last byte went out, on ``time.perf_counter``'s clock, as is
        ``perf_now``), their usage read already. What an entry needs is kept as it is, in a tuple (one per
        request, built in one comprehension); the entry is worked out when it is read, which is rarer."""
        if not self.size:
            return
        offset = self._clock() - perf_now  # perf_counter time to Unix time
        start = self._next
        self._next += len(traces)
        self._entries.extend(
            [
                (
                    i,
                    offset,
                    t.arrived,
                    t.model,
                    t.endpoint,
                    t.key,
                    t.status,
                    t.ended,
                    t.usage,
                    t.first,
                    t.scheduled,
                    bool(t.gaps),
                )
                for i, t in enumerate(traces, start)
            ]
        )

    def since(self, after: int = 0, limit: int | None = None) -> list[Entry]:
        """The entries numbered above ``after``, oldest first; the newest ``limit`` of them."""
        found = [e for e in self._entries if e[0] > after]
        return [_entry(*e) for e in (found[-limit:] if limit else found)]

    def __iter__(self) -> Iterator[Entry]:
        return (_entry(*e) for e in self._entries)


_Raw = tuple[int, float, float, str, str, str, int, float, Usage | None, float, float, bool]


def _entry(
    id: int,
    offset: float,
    arrived: float,
    model: str,
    endpoint: str,
    key: str,
    status: int,
    ended: float,
    usage: Usage | None,
    first: float,
    scheduled: float,
    streamed: bool,
) -> Entry:
    prompt = completion = rate = None
    if usage is not None:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        rate = decode_rate(completion, streamed, first, scheduled or arrived, ended)
    ttft = (first - arrived) if first else None
    return Entry(
        id, arrived + offset, model, endpoint, key, status, ended - arrived, prompt, completion, ttft, rate
    )


@dataclass(frozen=True)
class Sample:
    time: float  # Unix seconds
    models: dict[str, tuple[float, int, int]]  # name: (generation tokens/s, queued, in flight)
    devices: dict[str, int]  # device: bytes held


class Series:
    """The last ``points`` samples, oldest first. ``sample`` is given the current readings; the timer that
    calls it lives with the app (``gateway.http.app``)."""

    def __init__(self, points: int = SERIES_POINTS, interval: float = SERIES_INTERVAL) -> None:
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=points)
        self._last: dict[str, float] = {}  # model: generation tokens counted at the previous sample
        self._last_time: float | None = None

    def sample(
        self,
        now: float,
        generated: dict[str, float],
        queues: dict[str, tuple[int, int]],
        devices: dict[str, int],
    ) -> Sample:
        """``generated``: each model's generation tokens counted so far; ``queues``: its (queued, in
        flight)."""
        elapsed = None if self._last_time is None else max(now - self._last_time, 1e-9)
        models: dict[str, tuple[float, int, int]] = {}
        for name, (queued, in_flight) in queues.items():
            total = generated.get(name, 0.0)
            before = self._last.get(name)
            rate = 0.0 if elapsed is None or before is None else max(total - before, 0.0) / elapsed
            models[name] = (round(rate, 2), queued, in_flight)
        self._last = dict(generated)
        self._last_time = now
        point = Sample(now, models, dict(devices))
        self.samples.append(point)
        return point

    def as_json(self, after: float = 0.0) -> dict[str, Any]:
        """Column-wise, so a chart reads one list per line: ``time``, then per model its
        ``tokens_per_second``, ``queued`` and ``in_flight``, and per device ``used_bytes``, each aligned with
        ``time`` (null where a model was not there yet)."""
        points = [s for s in self.samples if round(s.time, 3) > after]  # as the times are sent
        names = sorted({n for s in points for n in s.models})
        devices = sorted({d for s in points for d in s.devices})

        def column(name: str, i: int) -> list[float | int | None]:
            return [s.models[name][i] if name in s.models else None for s in points]

        return {
            "interval_seconds": self.interval,
            "time": [round(s.time, 3) for s in points],
            "models": {
                n: {"tokens_per_second": column(n, 0), "queued": column(n, 1), "in_flight": column(n, 2)}
                for n in names
            },
            "devices": {d: {"used_bytes": [s.devices.get(d) for s in points]} for d in devices},
        }
