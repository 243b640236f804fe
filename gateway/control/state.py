"""The running gateway's state, as one object: what the routes, the reload and the CLI act on. Built by
``gateway.control.build``; nothing here is module-level."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

from backends.docker.interface import ContainerEngine
from backends.kinds import Hosts, Kinds
from gateway.config.loading import ManifestSet
from gateway.config.settings import Settings
from gateway.control.response_store import ResponseStore
from gateway.fleet.node import Node
from gateway.observability.activity import Activity, Series
from gateway.observability.background import Background
from gateway.observability.footprint import Footprints
from gateway.observability.metrics import Metrics
from gateway.scheduling.host_loss import HostLoss
from gateway.scheduling.lifecycle import ModelSlot
from gateway.scheduling.pins import Pins
from gateway.scheduling.registry import Registry
from gateway.scheduling.scheduler import Scheduler


@dataclass
class Gateway:
    settings: Settings
    kinds: Kinds
    manifests: ManifestSet
    registry: Registry
    scheduler: Scheduler
    metrics: Metrics
    hosts: Hosts
    pins: Pins
    never_fits: dict[str, str]  # models that cannot fit in any budget here, and why
    responses: ResponseStore  # stored responses of the Responses API
    footprints: Footprints  # what each model really took, learned for its budget (with its store)
    host_loss: HostLoss  # what an engine's hosts going down and coming back do to the models on them
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload at a time
    background: Background = field(default_factory=Background)  # loops that must not die silently
    activity: Activity = field(default_factory=Activity)  # the last requests (fed by the metrics' batch)
    series: Series = field(default_factory=Series)  # a few numbers over time, for the console's charts
    fleet: Node | None = None  # cluster mode: this gateway in its fleet (gateway.fleet); None: alone
    # Models (each version: a reload starts again) whose streams end with llama.cpp's ``timings``: their
    # usage is read from those, unasked (``gateway.http.openai_front.learn_usage``).
    usage_unasked: weakref.WeakSet[ModelSlot] = field(default_factory=weakref.WeakSet)

    def engines_in_use(self) -> list[ContainerEngine]:
        """The engines some model may run on: only those are touched (cleaned up at startup)."""
        names: set[str] = set()
        for slot in self.registry.slots.values():
            for unit in slot.demand:
                names.update(o.engine for o in unit if o.engine)
        return [self.hosts.engines[n] for n in sorted(names)]
