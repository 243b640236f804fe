"""A small metric store and Prometheus text-format (0.0.4) writer, built for the request path.

Why not prometheus-client's own ``Counter``/``Histogram``: measured on this machine (bench/README.md), 13
``observe()`` calls per request cost 11.8 us (each takes a lock and walks its buckets), and rendering 13
labelled histograms for 50 models took 137-158 ms, three times the 50 ms target for one scrape. Here a child
is a plain object updated without locks (everything runs on the event loop, scrapes included), a histogram
finds its bucket with ``bisect``, and rendering joins strings whose label part was escaped once, when the
child was made. prometheus-client remains the reference: the tests parse this output with its parser and
check it with ``promtool check metrics``.

No ``_created`` series are written. Children live until ``remove()``: their label values are bounded (the
declared models, their replicas, fixed enums), never taken from a request.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

INF = float("inf")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == INF:
        return "+Inf"
    if value == -INF:
        return "-Inf"
    if value != value:
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(float(value))


def buckets_1_2_5(maximum: int) -> tuple[float, ...]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``maximum``."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > maximum:
                return tuple(out)
            out.append(float(value))
        exponent += 1


class Counter:
    __slots__ = ("labels", "value")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Gauge(Counter):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value


class Histogram:
    __slots__ = ("bounds", "counts", "labels", "sum")

    def __init__(self, labels: str, bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def observe_many(self, values: list[float] | list[int]) -> None:
        """``observe`` each of ``values`` (a batch's, a stream's gaps), sorting them (``observe_sorted``)."""
        values.sort()
        self.observe_sorted(values)

    def observe_sorted(self, values: Sequence[float]) -> None:
        """``observe`` each of ``values``, given in ascending order: one binary search per bucket from the
        smallest value's to the largest's, not one per value (a 64-chunk stream's 63 gaps cost 10.9 us one by
        one, bench/README.md), and one update when they share a bucket."""
        n = len(values)
        if not n:
            return
        counts, bounds = self.counts, self.bounds
        last = len(bounds)
        i = bisect_left(bounds, values[0])  # no value is in a lower bucket
        if i == last or values[-1] <= bounds[i]:
            counts[i] += n
        else:
            done = 0  # values counted so far: those <= bounds[i - 1]
            while i < last:
                upto = bisect_right(values, bounds[i], done)  # values <= bounds[i]
                counts[i] += upto - done
                done = upto
                if done == n:
                    break
                i += 1
            else:
                counts[last] += n - done  # above every bound: +Inf
        self.sum += sum(values)

    @property
    def count(self) -> int:
        return sum(self.counts)


C = TypeVar("C", Counter, Gauge, Histogram)


class Family(Generic[C]):
    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], C] = {}
        self._constant = ""  # a label every series carries (``constant``)

    def constant(self, label: str, value: str) -> None:
        """Give every series of the family ``label="value"`` (cluster mode: the gateway that exports it).
        Call before any series exists."""
        assert not self.children
        self._constant = f'{label}="{_escape(value)}"'

    def labels(self, *values: str) -> C:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(self.labelnames, values, strict=True))
            text = ",".join(part for part in (self._constant, text) if part)
            child = self.children[values] = self._make(text)
        return child

    def _make(self, labels: str) -> C:
        raise NotImplementedError

    def remove_where(self, label: str, value: str) -> None:
        """Drop every child whose ``label`` is ``value`` (a model that is no longer declared)."""
        i = self.labelnames.index(label)
        for key in [k for k in self.children if k[i] == value]:
            del self.children[key]

    def clear(self) -> None:
        self.children.clear()

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.documentation}\n# TYPE {self.name} {self.kind}\n")
        self._samples(out)

    def _samples(self, out: list[str]) -> None:
        name = self.name
        for child in self.children.values():
            assert isinstance(child, Counter)
            out.append(f"{name}{{{child.labels}}} {_number(child.value)}\n")


class CounterFamily(Family[Counter]):
    kind = "counter"

    def _make(self, labels: str) -> Counter:
        return Counter(labels)


class GaugeFamily(Family[Gauge]):
    kind = "gauge"

    def _make(self, labels: str) -> Gauge:
        return Gauge(labels)


class HistogramFamily(Family[Histogram]):
    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Iterable[float]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets if b != INF))
        self._les = [f'le="{_number(b)}"' for b in (*self.bounds, INF)]

    def _make(self, labels: str) -> Histogram:
        return Histogram(labels, self.bounds)

    def _samples(self, out: list[str]) -> None:
        name = self.name
        for child in self.children.values():
            sep = "," if child.labels else ""
            prefix = f"{name}_bucket{{{child.labels}{sep}"
            running = 0
            for le, n in zip(self._les, child.counts, strict=True):
                running += n
                out.append(f"{prefix}{le}}} {running}.0\n")
            out.append(f"{name}_sum{{{child.labels}}} {_number(child.sum)}\n")
            out.append(f"{name}_count{{{child.labels}}} {running}.0\n")


def render(families: Iterable[Family[Counter] | Family[Gauge] | Family[Histogram]]) -> bytes:
    out: list[str] = []
    for family in families:
        family.render(out)
    return "".join(out).encode()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
