"""The gauges of ``/metrics``, read from the scheduler at scrape time, and the engines' own numbers carried
over (``gateway.observability.engine_scrape``). Nothing here runs on the request path."""

from __future__ import annotations

import os
from pathlib import Path

from backends.engine_stats import EngineStats, delta
from gateway.observability.metrics import Metrics
from gateway.routing.pool import Replica
from gateway.scheduling.lifecycle import HOLDS_MEMORY, ModelSlot, State
from gateway.scheduling.placement import HOST
from gateway.scheduling.scheduler import Scheduler

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int | None:
    """A process's resident set, or None when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def refresh(m: Metrics, scheduler: Scheduler, now: float) -> None:
    """Set every gauge from the current state (``now``: ``time.monotonic()``, for replicas' cooldowns)."""
    for family in (
        m.model_state,
        m.running,
        m.waiting,
        m.kv_cache,
        m.model_memory_estimated,
        m.model_memory_measured,
        m.replica_up,
        m.replica_out,
        m.backend_processing,
        m.backend_deferred,
        m.memory_used,
        m.memory_budget,
    ):
        family.clear()
    for device, n in scheduler.budgets.items():
        m.memory_budget.labels(device).set(n)
    for device, n in scheduler.used().items():
        m.memory_used.labels(device).set(n)
    for slot in scheduler.slots.values():
        _model(m, slot, now)


def _model(m: Metrics, slot: ModelSlot, now: float) -> None:
    name = slot.name
    for state in State:
        m.model_state.labels(name, state.value).set(1.0 if slot.state is state else 0.0)
    if slot.state in HOLDS_MEMORY:
        for device, n in slot.claims.items():
            m.model_memory_estimated.labels(name, device).set(n)
    pool = slot.pool
    m.waiting.labels(name, "gateway").set(slot.queued)
    if pool is None:
        m.running.labels(name, "0").set(0)
        return
    measured: dict[str, float] = {}
    for replica in pool.replicas:
        engine = str(replica.index)
        m.running.labels(name, engine).set(replica.outstanding)
        out = {"health_check": replica.down, "ejected": replica.ejected(now)}
        m.replica_up.labels(name, engine).set(0.0 if any(out.values()) else 1.0)
        for why, is_out in out.items():
            m.replica_out.labels(name, engine, why).set(1.0 if is_out else 0.0)
        info = replica.backend.describe()
        held = info.memory_bytes
        if held is None and info.pid is not None:
            held = resident_bytes(info.pid)
        if held is not None:
            device = info.devices[0] if info.devices else HOST
            measured[device] = measured.get(device, 0.0) + held
        _engine_gauges(m, name, engine, replica.engine_stats)
        if info.kv_cache_usage is not None:
            m.kv_cache.labels(name, engine).set(info.kv_cache_usage)
    for device, rss_sum in measured.items():
        m.model_memory_measured.labels(name, device).set(rss_sum)


def _engine_gauges(m: Metrics, name: str, engine: str, stats: EngineStats | None) -> None:
    waiting = 0.0
    if stats is not None:
        if stats.kv_cache_usage is not None:
            m.kv_cache.labels(name, engine).set(stats.kv_cache_usage)
        if stats.processing is not None:
            m.backend_processing.labels(name, engine).set(stats.processing)
        if stats.deferred is not None:
            m.backend_deferred.labels(name, engine).set(stats.deferred)
        waiting = float(stats.deferred or stats.waiting or 0)
    m.waiting.labels(name, engine).set(waiting)


def carry_engine_stats(m: Metrics, model: str, replica: Replica, stats: EngineStats) -> None:
    """Record a fresh scrape of a replica's engine: its gauges are read at the next scrape of ours; its
    cumulative prefix-cache counters are added to ours as deltas."""
    before = replica.engine_stats or EngineStats()
    series = m.series(model, str(replica.index))
    series.prefix_queries.inc(delta(before.prefix_queries, stats.prefix_queries))
    series.prefix_hits.inc(delta(before.prefix_hits, stats.prefix_hits))
    replica.engine_stats = stats
