"""Names and aliases to model slots, built from the validated manifests.

Building a slot asks the model's kind (``backends.kinds``) for its memory estimate, its demand on the devices
and how to make its replicas; nothing here knows any kind. The demand is asked for the figure the budget uses
(``learned.budget_figure``): the estimate, or the peak learned for the manifest's version where that is
higher, for a model whose demand is all on ``host`` (what the learned peaks measure: resident memory here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from backends.demand import HOST, Unit
from backends.errors import ModelNotFound
from backends.kinds import Hosts, Kinds, Model
from gateway.config.loading import ManifestSet
from gateway.config.manifest import ModelManifest
from gateway.config.settings import Settings
from gateway.scheduling.learned import Budgeted, budget_figure, manifest_version
from gateway.scheduling.learned_store import LearnedStore
from gateway.scheduling.lifecycle import ModelSlot

log = logging.getLogger(__name__)


@dataclass
class Registry:
    slots: dict[str, ModelSlot]  # by canonical name
    names: dict[str, ModelSlot]  # canonical names and aliases
    estimate_sources: dict[str, str]  # how each model's memory was estimated

    def resolve(self, name: str) -> ModelSlot:
        slot = self.names.get(name)
        if slot is None:
            raise ModelNotFound(name)
        return slot

    @classmethod
    def build(
        cls, manifests: ManifestSet, settings: Settings, hosts: Hosts, kinds: Kinds, learned: LearnedStore
    ) -> Registry:
        registry = cls({}, {}, {})
        for item in manifests.models:
            registry.add(make_slot(item.manifest, settings, hosts, kinds, learned))
        return registry

    def add(self, made: tuple[ModelSlot, str]) -> None:
        slot, source = made
        self.slots[slot.name] = slot
        self.estimate_sources[slot.name] = source
        for n in (slot.name, *slot.manifest.aliases):
            self.names[n] = slot

    def remove(self, slot: ModelSlot) -> None:
        """Stop resolving ``slot``'s name and aliases (a new request gets 404)."""
        for n in (slot.name, *slot.manifest.aliases):
            if self.names.get(n) is slot:
                del self.names[n]
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]
            self.estimate_sources.pop(slot.name, None)


def memory(m: ModelManifest, kinds: Kinds) -> tuple[int, str]:
    """The budgeted bytes of all the model's replicas together, and where the figure comes from."""
    if m.memory is not None:
        return int(m.memory), "manifest override"
    return kinds.of(m.backend).estimate(m.backend)


def budgeted_demand(
    m: ModelManifest, estimate: int, learned: int | None, margin: float, kinds: Kinds, hosts: Hosts
) -> tuple[Budgeted, Sequence[Unit]]:
    """The figure a model is budgeted with, and its demand for that figure. A learned peak counts only for a
    demand all on ``host``: elsewhere (an engine's RAM and GPUs) nothing measures it."""
    kind = kinds.of(m.backend)
    on_host = all(set(o.claims) <= {HOST} for unit in kind.demand(m.backend, estimate, hosts) for o in unit)
    budget = budget_figure(estimate, learned if on_host else None, margin, overridden=m.memory is not None)
    return budget, kind.demand(m.backend, budget.figure, hosts)


def make_slot(
    m: ModelManifest, settings: Settings, hosts: Hosts, kinds: Kinds, learned: LearnedStore
) -> tuple[ModelSlot, str]:
    """A model's slot, and how its memory was estimated."""
    kind = kinds.of(m.backend)
    total, source = memory(m, kinds)
    if source.startswith("unreadable"):
        log.warning("%s: %s", m.name, source)
    peak = learned.peak(manifest_version(m))
    budget, demand = budgeted_demand(m, total, peak, settings.learned_margin, kinds, hosts)
    slot = ModelSlot(
        m,
        demand,
        kind.factory(Model(m.name, tuple(m.aliases)), m.backend, hosts),
        m.max_queue if m.max_queue is not None else settings.max_queue,
        budget=budget,
        interactive_reserve=(
            m.interactive_reserve if m.interactive_reserve is not None else settings.interactive_reserve
        ),
        preempt_batch=settings.preempt_batch,
    )
    return slot, source
