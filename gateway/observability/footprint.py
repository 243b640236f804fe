"""Each model's real memory footprint: measured right after its load and every few seconds while it serves,
kept as its manifest version's peak (``gateway.scheduling.learned_store``, a file that survives restarts),
and used for the budget of its next loads (``gateway.scheduling.learned``, the pure choice).

What is measured, by what each replica says it is (``ReplicaInfo``):

- a launched process (``pid``: ``llama_server``): its resident set (``/proc/<pid>/statm``), summed over the
  model's replicas;
- in the gateway's own process (``in_process``: ``llama_cpp``): the growth of the gateway's resident set over
  what it was just before the load began. This is imprecise: whatever else grows in the process meanwhile
  (other requests' buffers, the engine's imports on the first in-process load of a run) counts as the
  model's, which only ever errs high. Another in-process model would count too, so a model is not sampled
  while one that began loading after it (in process, or still loading) holds memory; memory an unloaded
  in-process model leaves in the allocator is still counted afterwards;
- a container, or an upstream elsewhere: not measured (the container's memory statistics through the Engine
  API are not read here), so such a model is budgeted with its estimate; so is a model with any replica that
  cannot be measured.

The measurement is cheap (one ``statm`` read per process) and runs on the event loop after the load and on
the background loop's timer, never on a request's path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from backends.kinds import Hosts, Kinds
from gateway.observability.gauges import resident_bytes
from gateway.scheduling.learned import exceeds_estimate
from gateway.scheduling.learned_store import LearnedStore
from gateway.scheduling.lifecycle import HOLDS_MEMORY, ModelSlot, State
from gateway.scheduling.placement import HOST
from gateway.scheduling.registry import budgeted_demand

log = logging.getLogger(__name__)

INTERVAL = 2.0  # seconds between samples of the loaded models
MiB = 1 << 20


@dataclass(frozen=True)
class _Baseline:
    rss: int  # the gateway's resident bytes just before the load
    order: int  # loads begun before it


class Footprints:
    """Measures loaded models and learns their peaks. The scheduler calls ``starting`` and ``loaded`` around
    each load (``gateway.scheduling.hooks.LoadWatch``); the background loop calls ``sample``."""

    def __init__(self, store: LearnedStore, margin: float, kinds: Kinds, hosts: Hosts) -> None:
        self.store = store
        self.margin = margin
        self.kinds = kinds
        self.hosts = hosts
        self._baselines: dict[ModelSlot, _Baseline] = {}
        self._order = 0
        self._warned: set[str] = set()  # versions whose peak over the estimate was logged

    # -- hooks.LoadWatch -------------------------------------------------------------------------------------
    def starting(self, slot: ModelSlot) -> None:
        rss = resident_bytes(os.getpid())
        self._order += 1
        if rss is not None:
            self._baselines[slot] = _Baseline(rss, self._order)

    def loaded(self, slot: ModelSlot) -> None:
        self._learn(slot, list(self._baselines))

    # -- the background loop -------------------------------------------------------------------------------
    async def sample(self, slots: list[ModelSlot]) -> None:
        for gone in [s for s in self._baselines if s.state not in HOLDS_MEMORY]:
            del self._baselines[gone]
        for slot in slots:
            if slot.state is State.READY:
                self._learn(slot, list(self._baselines))

    # -- measuring and learning ----------------------------------------------------------------------------
    def measure(self, slot: ModelSlot, holders: list[ModelSlot]) -> int | None:
        """The bytes ``slot``'s replicas hold on this machine now; None where they cannot be measured."""
        pool = slot.pool
        if pool is None or not pool.replicas:
            return None
        total = 0
        in_process = False
        for replica in pool.replicas:
            info = replica.backend.describe()
            if info.container is not None:
                return None
            if info.pid is not None:
                rss = resident_bytes(info.pid)
                if rss is None:  # the process is gone: its slot is on its way out
                    return None
                total += rss
            elif info.in_process:
                in_process = True
            else:
                return None
        if in_process:
            growth = self._growth(slot, holders)
            if growth is None:
                return None
            total += growth
        return total

    def _growth(self, slot: ModelSlot, holders: list[ModelSlot]) -> int | None:
        base = self._baselines.get(slot)
        now = resident_bytes(os.getpid())
        if base is None or now is None:
            return None
        for other in holders:
            later = self._baselines.get(other)
            if other is slot or later is None or later.order < base.order or other.state not in HOLDS_MEMORY:
                continue
            if other.pool is None or any(r.backend.describe().in_process for r in other.pool.replicas):
                return None  # its growth would count as this model's
        return max(0, now - base.rss)

    def _learn(self, slot: ModelSlot, holders: list[ModelSlot]) -> None:
        measured = self.measure(slot, holders)
        if measured is None or measured <= 0:
            return
        if not self.store.record(slot.version, slot.name, {HOST: measured}):
            return
        peak = self.store.peak(slot.version)
        budget = slot.budget
        if budget is None or peak is None:
            return
        m, estimate = slot.manifest, budget.estimate
        new, demand = budgeted_demand(m, estimate, peak, self.margin, self.kinds, self.hosts)
        slot.rebudget(new, demand)
        if exceeds_estimate(budget.estimate, peak, self.margin) and slot.version not in self._warned:
            self._warned.add(slot.version)
            what = "its manifest's memory" if new.source == "manifest" else "its estimate"
            log.warning(
                "%s: took %.1f MiB, over %s of %.1f MiB by more than %.0f%%; its next loads are budgeted "
                "with %.1f MiB (%s)",
                slot.name, peak / MiB, what, estimate / MiB, self.margin * 100, new.figure / MiB, new.source,
            )  # fmt: skip
