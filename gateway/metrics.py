"""Every Prometheus metric the gateway exports, defined in one place on a per-app registry (no globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.lifecycle import State
from gateway.scheduler import Scheduler

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _ModelCollector(Collector):
    """Reads model state at scrape time, so the hot path does not update gauges."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self):  # type: ignore[no-untyped-def]
        state = GaugeMetricFamily(
            "gateway_model_state", "1 for the model's current state", labels=["model", "state"]
        )
        running = GaugeMetricFamily(
            "gateway_requests_running", "Requests holding a replica", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "gateway_requests_waiting", "Requests queued for a replica", labels=["model"]
        )
        memory = GaugeMetricFamily(
            "gateway_model_memory_bytes", "Estimated memory of the model", labels=["model"]
        )
        for slot in self._scheduler.slots.values():
            for s in State:
                state.add_metric([slot.name, s.value], 1.0 if slot.state is s else 0.0)
            running.add_metric([slot.name], float(slot.pool.outstanding if slot.pool else 0))
            waiting.add_metric([slot.name], float(slot.pool.queued if slot.pool else 0))
            memory.add_metric([slot.name], float(slot.memory))
        used = GaugeMetricFamily(
            "gateway_memory_used_bytes", "Estimated memory held by models, per device", labels=["device"]
        )
        for device, n in self._scheduler.used().items():
            used.add_metric([device], float(n))
        budget = GaugeMetricFamily(
            "gateway_memory_budget_bytes", "Memory budget for models, per device", labels=["device"]
        )
        for device, n in self._scheduler.budgets.items():
            budget.add_metric([device], float(n))
        yield from (state, running, waiting, memory, used, budget)


class Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests",
            "Requests by model, endpoint and status",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.time_to_first_byte = Histogram(
            "gateway_time_to_first_byte_seconds",
            "From request to the first response byte",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ModelCollector(scheduler))
        # Labelled children, cached: ``labels()`` takes a lock and validates on every call, which was ~8% of
        # the gateway's CPU per proxied request. The label sets are bounded (models x endpoints x statuses).
        self._counted: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._timed: dict[tuple[str, str], Callable[[float], None]] = {}

    def count_request(self, model: str, endpoint: str, status: int) -> None:
        inc = self._counted.get((model, endpoint, status))
        if inc is None:
            inc = self._counted[model, endpoint, status] = self.requests.labels(
                model, endpoint, str(status)
            ).inc
        inc()

    def first_byte_observer(self, model: str, endpoint: str) -> Callable[[float], None]:
        observe = self._timed.get((model, endpoint))
        if observe is None:
            observe = self._timed[model, endpoint] = self.time_to_first_byte.labels(model, endpoint).observe
        return observe
