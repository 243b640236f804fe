"""Building the running gateway from its settings: the hosts and their budgets, the manifests, the learned
memory peaks, the registry of models, the scheduler, the metrics and the pins."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from backends.kinds import Hosts, Kinds
from gateway.config.loading import load_directory
from gateway.config.manifest import ModelManifest, default_kinds
from gateway.config.settings import Settings
from gateway.control.fleet import join_fleet
from gateway.control.response_store import ResponseStore
from gateway.control.state import Gateway
from gateway.observability.activity import Activity
from gateway.observability.footprint import Footprints
from gateway.observability.metrics import Metrics
from gateway.resources.hosts import all_hosts, container_instance, engine_settings, instance_id
from gateway.scheduling.admission import Policy
from gateway.scheduling.host_loss import HostLoss
from gateway.scheduling.learned_store import LearnedStore
from gateway.scheduling.pins import Pins
from gateway.scheduling.placement import DoesNotFit, plan
from gateway.scheduling.registry import Registry
from gateway.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def build_hosts(settings: Settings) -> Hosts:
    budget = (
        int(settings.memory_budget) if settings.memory_budget is not None else int(available_memory() * 0.9)
    )
    engines, inventory, budgets = all_hosts(
        engine_settings(settings), budget, container_instance(settings), cleanup=not settings.cluster_etcd
    )
    return Hosts(engines, inventory, budgets, settings.llama_server)


def max_model_len(manifests: Iterable[ModelManifest]) -> int:
    """The longest context declared, for the token-count histograms' buckets (vLLM: max_model_len)."""
    longest = 0
    for m in manifests:
        for field in ("n_ctx", "ctx_size", "max_model_len"):
            value = getattr(m.backend, field, None)
            if isinstance(value, int):
                longest = max(longest, value)
    return longest or 32768


def build_gateway(settings: Settings, kinds: Kinds | None = None) -> Gateway:
    """``kinds``: the backend kinds to serve; default, the built-in ones (``backends.kinds``)."""
    kinds = kinds or default_kinds()
    manifests = load_directory(settings.manifests, kinds)
    for problem in manifests.problems:
        log.error("manifest skipped: %s", problem)
    hosts = build_hosts(settings)
    learned = LearnedStore(settings.learned_path())
    registry = Registry.build(manifests, settings, hosts, kinds, learned)
    footprints = Footprints(learned, settings.learned_margin, kinds, hosts)
    activity = Activity(settings.activity_size)
    member = (settings.cluster_member or instance_id(settings)) if settings.cluster_etcd else None
    metrics = Metrics(
        list(registry.slots), max_model_len(m.manifest for m in manifests.models), activity, member
    )
    scheduler = Scheduler(
        registry.slots.values(),
        hosts.budgets,
        drain_grace=settings.drain_grace,
        load_failure_backoff=settings.load_failure_backoff,
        events=metrics,
        policy=Policy(settings.swap_policy),
        max_swap_wait=settings.max_swap_wait,
        watch=footprints,
    )
    pins = Pins(settings.state_file or settings.manifests / ".llm-gateway-pins.json")
    never_fits = {}
    for slot in registry.slots.values():
        slot.pinned = pins.pinned(slot.name, slot.manifest.pinned)
        never = plan(slot.name, slot.demand, [], hosts.budgets)
        if isinstance(never, DoesNotFit):
            never_fits[slot.name] = never.reason
            log.warning("%s can never be loaded here: %s", slot.name, never.reason)
    responses = ResponseStore(
        settings.responses_path(),
        settings.responses_max_count,
        int(settings.responses_max_bytes),
        settings.responses_max_age,
    )
    host_devices = {e.name: [e.ram, *(d for _, d in e.gpus)] for e in hosts.inventory}
    gw = Gateway(
        settings, kinds, manifests, registry, scheduler, metrics, hosts, pins, never_fits, responses,
        footprints, HostLoss(scheduler, host_devices), activity=activity,
    )  # fmt: skip
    if settings.cluster_etcd:
        gw.fleet = join_fleet(gw)
    return gw
