"""The two timers behind the metrics: the stats line in the log, and the reads of the engines' own metrics.

The stats line is modelled on vLLM's (``Avg prompt throughput: %.1f tokens/s, Avg generation throughput:
%.1f tokens/s, Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%``) so that log parsers written
for vLLM keep working; it starts with the model's name, and ends with what only a gateway knows (the model's
state and the memory it holds against its device's budget). One line per model that had traffic in the
interval, none for idle models. ``StatsLine.lines`` is the arithmetic, apart from the timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from gateway.observability.activity import Series
from gateway.observability.background import Background
from gateway.observability.engine_scrape import scrape
from gateway.observability.gauges import carry_engine_stats
from gateway.observability.metrics import Metrics
from gateway.scheduling.lifecycle import HOLDS_MEMORY, ModelSlot, State
from gateway.scheduling.scheduler import Scheduler

log = logging.getLogger("gateway.stats")


@dataclass(frozen=True)
class Totals:
    prompt: float
    generation: float
    requests: int


def totals(m: Metrics, model: str) -> Totals:
    prompt = generation = 0.0
    requests = 0
    for (name, _), series in m.series_items():
        if name == model:
            prompt += series.prompt.value
            generation += series.gen.value
            requests += series.e2e.count
    return Totals(prompt, generation, requests)


class StatsLine:
    def __init__(self, metrics: Metrics, scheduler: Scheduler, clock: Callable[[], float] = time.monotonic):
        self._metrics = metrics
        self._scheduler = scheduler
        self._clock = clock
        self._since = clock()
        self._last = {name: totals(metrics, name) for name in scheduler.slots}

    def lines(self) -> list[str]:
        """One line per model with traffic since the previous call (finished, running or waiting requests)."""
        self._metrics.flush()
        now = self._clock()
        elapsed = max(now - self._since, 1e-9)
        self._since = now
        out = []
        for name, slot in self._scheduler.slots.items():
            current = totals(self._metrics, name)
            before = self._last.get(name, Totals(0.0, 0.0, 0))
            self._last[name] = current
            running = slot.pool.outstanding if slot.pool else 0
            waiting = slot.queued
            if current.requests == before.requests and not running and not waiting:
                continue
            out.append(
                self._line(
                    slot,
                    (current.prompt - before.prompt) / elapsed,
                    (current.generation - before.generation) / elapsed,
                    running,
                    waiting,
                )
            )
        return out

    def _line(self, slot: ModelSlot, prompt: float, generation: float, running: int, waiting: int) -> str:
        parts = [
            f"Model {slot.name}: Avg prompt throughput: {prompt:.1f} tokens/s",
            f"Avg generation throughput: {generation:.1f} tokens/s",
            f"Running: {running} reqs",
            f"Waiting: {waiting} reqs",
        ]
        usage = [
            r.engine_stats.kv_cache_usage
            for r in (slot.pool.replicas if slot.pool else ())
            if r.engine_stats is not None and r.engine_stats.kv_cache_usage is not None
        ]
        if usage:
            parts.append(f"GPU KV cache usage: {100 * sum(usage) / len(usage):.1f}%")
        parts.append(f"State: {slot.state.value}")
        budgets = self._scheduler.budgets
        for device, n in slot.claims.items():
            parts.append(
                f"Memory: {n / 2**20:.0f} MiB of {budgets.get(device, 0) / 2**20:.0f} MiB ({device})"
            )
        return ", ".join(parts)


def log_stats(stats: StatsLine) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        for line in stats.lines():
            log.info("%s", line)

    return step


def scrape_engines(metrics: Metrics, scheduler: Scheduler) -> Callable[[], Awaitable[None]]:
    """Read the own metrics of every ready replica that has them, one round per call.

    The HTTP client lives for one round only, and only when there is something to read: a client held
    open for the gateway's life (its ~2,700 objects in the collector's oldest generation) cost the request
    path 10% of its CPU in the proxy benchmark (bench/README.md)."""

    async def step() -> None:
        targets = [
            (slot.name, replica, url)
            for slot in scheduler.slots.values()
            if slot.state is State.READY and slot.pool is not None
            for replica in slot.pool.replicas
            if (url := replica.backend.describe().metrics_url)
        ]
        if not targets:
            return
        async with httpx.AsyncClient(verify=False) as client:  # plain HTTP to the engines
            results = await asyncio.gather(*(scrape(client, url) for _, _, url in targets))
        for (model, replica, _), stats in zip(targets, results, strict=True):
            if stats is not None:
                carry_engine_stats(metrics, model, replica, stats)

    return step


def sample_series(series: Series, metrics: Metrics, scheduler: Scheduler) -> Callable[[], Awaitable[None]]:
    """One sample of the console's charts: tokens/s and queue depth per model that holds memory or has
    requests, and memory held per device (``gateway.observability.activity.Series``)."""

    async def step() -> None:
        metrics.flush()  # also brings the console's activity up to date
        generated: dict[str, float] = {}
        for (name, _), s in metrics.series_items():
            generated[name] = generated.get(name, 0.0) + s.gen.value
        queues = {
            name: (slot.queued, slot.in_flight)
            for name, slot in scheduler.slots.items()
            if slot.state in HOLDS_MEMORY or slot.queued or slot.in_flight
        }
        series.sample(time.time(), generated, queues, scheduler.used())

    return step


def start(
    background: Background,
    metrics: Metrics,
    scheduler: Scheduler,
    stats_interval: float,
    scrape_interval: float,
) -> None:
    if stats_interval > 0:
        background.every("stats-line", stats_interval, log_stats(StatsLine(metrics, scheduler)))
    if scrape_interval > 0:
        background.every("engine-scrape", scrape_interval, scrape_engines(metrics, scheduler))
