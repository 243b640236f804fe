"""Every metric the gateway exports, defined in one place on a per-app store (no globals).

Two groups, both labelled with the public ``model_name``:

- vLLM v1's request metrics, with its names, types, label names (``model_name``, ``engine`` = the replica
  index) and buckets, so that vLLM's own Grafana dashboard works unchanged for every backend kind. They are
  measured here, at the edge, from what the gateway sees: timestamps of the request's arrival, of a replica
  taking it, of the first and last body bytes; token counts from the response's ``usage``. What only an
  engine knows (KV cache use, prefix cache hits, llama.cpp's slot counts) comes from scraping the engine's
  own ``/metrics`` on the health-check timer (``gateway.observability.engine_scrape``); the gateway is meant
  to be the one scrape target, because scraping the engines too would count every token twice in
  ``sum(rate(...))``.
- ``gateway_*``: the gateway's own state (models, memory per device, loads, evictions, replicas, errors).

Gauges are read from the scheduler at scrape time (``gateway.observability.gauges``); the request path only
adds to counters and histograms, through ``RequestSeries`` objects cached per (model, replica).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.api.usage import Usage, read_body
from gateway.observability.activity import Activity
from gateway.observability.exposition import (
    CounterFamily,
    Family,
    GaugeFamily,
    HistogramFamily,
    buckets_1_2_5,
    render,
)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                         10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
N_BUCKETS = (1, 2, 5, 10, 20)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                 120.0, 300.0, 600.0)  # fmt: skip
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)

FINISH_REASONS = ("stop", "length", "abort")
LOAD_RESULTS = ("success", "failure", "cancelled")
EVICTION_REASONS = ("lru", "swap", "ttl", "admin", "failure", "reload", "host-down")
UPSTREAM_ERRORS = ("upstream_unavailable", "upstream_timeout", "upstream_error", "mid_stream")
OUT_REASONS = ("health_check", "ejected")
# A batch's length is a pause of the event loop (~10 us per request): 1,024 requests made the proxy's p99
# at 16 connections 9 ms against 4 ms with metrics off; 64 gives that 4 ms at the same throughput
# (bench/README.md, "Tail latency").
MAX_PENDING = 64
MAX_PENDING_BYTES = 1 << 20  # bodies still to be parsed for their usage: a pause too
MODEL = ("model_name",)
ENGINE = ("model_name", "engine")


@dataclass(slots=True)
class Trace:
    """One request's timeline (``time.perf_counter`` seconds) and what its response said about itself."""

    model: str
    endpoint: str
    arrived: float
    n: int = 1
    max_tokens: int | None = None
    scheduled: float = 0.0  # a replica took it
    first: float = 0.0  # the first body bytes went to the client
    status: int = 0
    engine: str | None = None  # the replica that served it (None: refused before one was chosen)
    completed: bool = False  # the response ended as the upstream meant it to (not cut, not broken)
    usage: Usage | None = None
    finish_reasons: list[str] = field(default_factory=list)
    body: bytes | None = None  # a complete (non-streamed) body, read for usage in the batch
    gaps: list[float] = field(default_factory=list)  # between streamed pieces (inter-token latency)
    timings: bool = False  # the stream ended with llama.cpp's ``timings`` (its usage, unasked)
    key: str = ""  # the API key's name from the settings ("" on an open gateway), never the key itself
    priority: str = "interactive"  # the request's priority class
    ended: float = 0.0  # its last byte went out (``Metrics.finished``)


class RequestSeries:
    """The labelled children of one (model, replica), so that recording a request is attribute access."""

    __slots__ = ("decode", "e2e", "gen", "gen_hist", "inference", "itl", "max_gen", "max_tokens", "n",
                 "prefill", "prefix_hits", "prefix_queries", "prompt", "prompt_hist", "queue", "success",
                 "tpot", "ttft")  # fmt: skip

    def __init__(self, m: Metrics, model: str, engine: str) -> None:
        key = (model, engine)
        self.prompt = m.prompt_tokens.labels(*key)
        self.gen = m.generation_tokens.labels(*key)
        self.prefix_queries = m.prefix_cache_queries.labels(*key)
        self.prefix_hits = m.prefix_cache_hits.labels(*key)
        self.success = {r: m.request_success.labels(model, engine, r) for r in FINISH_REASONS}
        self.ttft = m.ttft.labels(*key)
        self.itl = m.itl.labels(*key)
        self.tpot = m.tpot.labels(*key)
        self.e2e = m.e2e.labels(*key)
        self.queue = m.queue_time.labels(*key)
        self.inference = m.inference_time.labels(*key)
        self.prefill = m.prefill_time.labels(*key)
        self.decode = m.decode_time.labels(*key)
        self.prompt_hist = m.request_prompt_tokens.labels(*key)
        self.gen_hist = m.request_generation_tokens.labels(*key)
        self.max_gen = m.request_max_generation_tokens.labels(*key)
        self.n = m.params_n.labels(*key)
        self.max_tokens = m.params_max_tokens.labels(*key)

    def record(self, batch: list[Trace]) -> None:
        """Everything a batch of finished requests adds (``Metrics.flush``). Column by column: each
        histogram gets its values at once (``Histogram.observe_many``: one update when they share a bucket,
        else sorted and counted in one pass over the buckets), which costs a fraction of observing them one
        by one (bench/README.md, issue 16). Each request adds what it added when it was recorded alone
        (tests/test_metrics_units.py holds that one-by-one recording, and checks the two agree)."""
        for t in batch:
            if t.body is not None:
                t.usage, t.finish_reasons = read_body(t.body, t.n)
                t.body = None
            if t.gaps:
                self.itl.observe_many(t.gaps)
        self.e2e.observe_many([t.ended - t.arrived for t in batch])
        self.queue.observe_many([(t.scheduled or t.ended) - t.arrived for t in batch])
        self.inference.observe_many([t.ended - (t.scheduled or t.ended) for t in batch])
        self.prefill.observe_many([(t.first or t.ended) - (t.scheduled or t.ended) for t in batch])
        self.decode.observe_many([t.ended - (t.first or t.ended) for t in batch])
        self.ttft.observe_many([t.first - t.arrived for t in batch if t.first])
        self.n.observe_many([t.n for t in batch])
        self.max_tokens.observe_many([t.max_tokens for t in batch if t.max_tokens is not None])
        used = [t for t in batch if t.usage is not None]
        if used:
            prompt = [t.usage.prompt_tokens for t in used]  # type: ignore[union-attr]
            completion = [t.usage.completion_tokens for t in used]  # type: ignore[union-attr]
            self.prompt.inc(sum(prompt))
            self.gen.inc(sum(completion))
            self.prompt_hist.observe_many(prompt)
            self.gen_hist.observe_many(completion)
            self.max_gen.observe_many(completion)
            self.tpot.observe_many(
                [
                    (t.ended - (t.first or t.ended)) / (t.usage.completion_tokens - 1)  # type: ignore[union-attr]
                    for t in used
                    if t.usage.completion_tokens > 1  # type: ignore[union-attr]
                ],
            )
        success = self.success
        ends = [
            reason
            for t in batch
            for reason in (((t.finish_reasons or STOP) if t.status == 200 else ()) if t.completed else ABORT)
        ]  # a completed request: its finish reasons ("stop" when it gave none), none but a 200's
        for reason, count in Counter(ends).items():
            (success.get(reason) or success["stop"]).inc(count)


STOP = ("stop",)
ABORT = ("abort",)
K = TypeVar("K")


def _groups(items: list[Trace], keys: list[K]) -> dict[K, list[Trace]]:
    """``items`` by their ``keys``: one group when all share one key (the usual batch: one model)."""
    if keys.count(keys[0]) == len(keys):
        return {keys[0]: items}
    groups: dict[K, list[Trace]] = {}
    for item, key in zip(items, keys, strict=True):
        groups.setdefault(key, []).append(item)
    return groups


class Metrics:
    def __init__(
        self,
        models: list[str],
        max_model_len: int = 32768,
        activity: Activity | None = None,
        gateway: str | None = None,
    ) -> None:
        """``activity``: the last requests, fed from the batch (``gateway.observability.activity``).
        ``gateway``: cluster mode's member name, a ``gateway`` label on every series, so that the gateways
        of a fleet export distinct series (the engines' own gauges come from the leader alone)."""
        self.activity = activity
        token_buckets = buckets_1_2_5(max_model_len)
        c, g, h = CounterFamily, GaugeFamily, HistogramFamily
        self._vllm_counts(c, g)
        self._vllm_histograms(h, token_buckets)
        self._gateway_families(c, g, h)
        if gateway is not None:
            for family in self.families():
                family.constant("gateway", gateway)
        self._series: dict[tuple[str, str], RequestSeries] = {}
        self._pending: list[Trace] = []
        self._pending_bytes = 0
        for model in models:
            self.declare(model)

    def _vllm_counts(self, c: type[CounterFamily], g: type[GaugeFamily]) -> None:
        # vLLM's names (vllm/v1/metrics/loggers.py)
        self.running = g(
            "vllm:num_requests_running", "Number of requests in model execution batches.", ENGINE
        )
        self.waiting = g("vllm:num_requests_waiting", "Number of requests waiting to be processed.", ENGINE)
        self.kv_cache = g("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", ENGINE)
        self.prefix_cache_queries = c(
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            ENGINE,
        )
        self.prefix_cache_hits = c(
            "vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.", ENGINE
        )
        self.prompt_tokens = c("vllm:prompt_tokens_total", "Number of prefill tokens processed.", ENGINE)
        self.generation_tokens = c(
            "vllm:generation_tokens_total", "Number of generation tokens processed.", ENGINE
        )
        self.request_success = c(
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            (*ENGINE, "finished_reason"),
        )

    def _vllm_histograms(self, h: type[HistogramFamily], token_buckets: tuple[float, ...]) -> None:
        self.ttft = h(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ENGINE,
            TTFT_BUCKETS,
        )
        self.itl = h(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ENGINE,
            TOKEN_LATENCY_BUCKETS,
        )
        self.tpot = h(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ENGINE,
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = h(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            ENGINE,
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = h(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            ENGINE,
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = h(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            ENGINE,
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = h(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            ENGINE,
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = h(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            ENGINE,
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_prompt_tokens = h(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", ENGINE, token_buckets
        )
        self.request_generation_tokens = h(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", ENGINE, token_buckets
        )
        self.request_max_generation_tokens = h(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            ENGINE,
            token_buckets,
        )
        self.params_n = h("vllm:request_params_n", "Histogram of the n request parameter.", ENGINE, N_BUCKETS)
        self.params_max_tokens = h(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            ENGINE,
            token_buckets,
        )

    def _gateway_families(
        self, c: type[CounterFamily], g: type[GaugeFamily], h: type[HistogramFamily]
    ) -> None:
        # the gateway's own
        self.model_state = g(
            "gateway_model_state", "1 for the model's current state, 0 for the others.", (*MODEL, "state")
        )
        self.load_duration = h(
            "gateway_model_load_duration_seconds",
            "Time to load a model (successful loads).",
            MODEL,
            LOAD_BUCKETS,
        )
        self.model_wait = h(
            "gateway_model_wait_seconds",
            "Time a request waited for its model itself (its load, a swap, a drain) before it was admitted; "
            "requests that found it ready are not counted.",
            MODEL,
            LOAD_BUCKETS,
        )
        self.model_wait_past_bound = c(
            "gateway_model_wait_past_bound_total",
            "Requests that waited for their model longer than swap-aware admission's bound (its "
            "max_swap_wait plus its load): the estimates of a swap's time were off.",
            MODEL,
        )
        self.queue_wait = h(
            "gateway_queue_wait_seconds",
            "Time from a request's arrival until a replica took it (waits for its model and for a replica), "
            "by priority class and API key name (from the settings; empty on an open gateway).",
            (*MODEL, "priority", "key"),
            QUEUE_BUCKETS,
        )
        self.loads = c("gateway_model_loads_total", "Model loads by result.", (*MODEL, "result"))
        self.evictions = c("gateway_model_evictions_total", "Model unloads by reason.", (*MODEL, "reason"))
        self.memory_budget = g(
            "gateway_memory_budget_bytes", "Memory budget for models, per device.", ("device",)
        )
        self.memory_used = g(
            "gateway_memory_used_bytes", "Estimated memory held by models, per device.", ("device",)
        )
        self.model_memory_estimated = g(
            "gateway_model_memory_estimated_bytes",
            "Memory a loaded model holds by the estimate, per device.",
            (*MODEL, "device"),
        )
        self.model_memory_measured = g(
            "gateway_model_memory_measured_bytes",
            "Memory a loaded model's processes hold, measured (resident set), per device.",
            (*MODEL, "device"),
        )
        self.replica_up = g("gateway_replica_up", "1 when the replica is in rotation.", ENGINE)
        self.replica_out = g(
            "gateway_replica_out",
            "1 while the replica is out of rotation, for this reason.",
            (*ENGINE, "reason"),
        )
        self.upstream_errors = c(
            "gateway_upstream_errors_total", "Upstream failures by kind.", (*MODEL, "kind")
        )
        self.queue_rejections = c(
            "gateway_queue_rejections_total", "Requests refused because the queue was full.", MODEL
        )
        self.requests = c(
            "gateway_requests_total",
            "Requests by model, endpoint and final status.",
            (*MODEL, "endpoint", "status"),
        )
        self.backend_processing = g(
            "gateway_backend_requests_processing",
            "Requests the engine reports processing (llama.cpp slots).",
            ENGINE,
        )
        self.backend_deferred = g(
            "gateway_backend_requests_deferred", "Requests the engine reports deferred (llama.cpp).", ENGINE
        )

    def families(self) -> list[Family]:  # type: ignore[type-arg]
        return [v for v in vars(self).values() if isinstance(v, Family)]

    def declare(self, model: str) -> None:
        """Start a model's counters at zero, so that a rate over them exists before the first event."""
        for result in LOAD_RESULTS:
            self.loads.labels(model, result)
        for reason in EVICTION_REASONS:
            self.evictions.labels(model, reason)
        for kind in UPSTREAM_ERRORS:
            self.upstream_errors.labels(model, kind)
        self.queue_rejections.labels(model)
        self.model_wait_past_bound.labels(model)
        self.series(model, "0")

    def forget(self, model: str) -> None:
        """Drop every series of a model that is no longer declared."""
        for family in self.families():
            if "model_name" in family.labelnames:
                family.remove_where("model_name", model)
        for key in [k for k in self._series if k[0] == model]:
            del self._series[key]

    def series_items(self) -> list[tuple[tuple[str, str], RequestSeries]]:
        return list(self._series.items())

    def render(self) -> bytes:
        self.flush()
        return render(self.families())

    # -- the request path: a finished request is queued, and recorded in a batch -------------------------
    def finished(self, trace: Trace, ended: float) -> None:
        """Queue a finished request for recording. Recording one request is some twenty counter and bucket
        updates; done here, one by one, between the request path's own work, it cost about 17% of the
        gateway's CPU per proxied request, and 4% done in a batch (bench/README.md). The batch runs before
        every scrape and stats line, and whenever the queue reaches ``MAX_PENDING`` requests or
        ``MAX_PENDING_BYTES`` of bodies still to be read."""
        trace.ended = ended
        self._pending.append(trace)
        if trace.body is not None:
            self._pending_bytes += len(trace.body)
        if len(self._pending) >= MAX_PENDING or self._pending_bytes >= MAX_PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        requests = Counter([(t.model, t.endpoint, t.status) for t in pending])
        for (model, endpoint, status), count in requests.items():
            self.requests.labels(model, endpoint, str(status)).inc(count)
        served = [t for t in pending if t.engine is not None]
        if served:
            for (model, engine), batch in _groups(served, [(t.model, t.engine) for t in served]).items():
                self.series(model, str(engine)).record(batch)
        waited = [t for t in pending if t.scheduled]
        if waited:
            for labels, batch in _groups(waited, [(t.model, t.priority, t.key) for t in waited]).items():
                self.queue_wait.labels(*labels).observe_many([t.scheduled - t.arrived for t in batch])
        if self.activity is not None:
            self.activity.traced(pending, time.perf_counter())

    def series(self, model: str, engine: str) -> RequestSeries:
        s = self._series.get((model, engine))
        if s is None:
            s = self._series[model, engine] = RequestSeries(self, model, engine)
        return s

    def count_request(self, model: str, endpoint: str, status: int) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()

    def rejected(self, model: str) -> None:
        self.queue_rejections.labels(model).inc()

    def upstream_error(self, model: str, kind: str) -> None:
        self.upstream_errors.labels(model, kind).inc()

    # -- the scheduler's events (gateway.scheduling.hooks.Events)
    # -------------------------------------------------
    def load_finished(self, model: str, seconds: float, result: str) -> None:
        self.loads.labels(model, result).inc()
        if result == "success":
            self.load_duration.labels(model).observe(seconds)

    def waited_for_model(self, model: str, seconds: float) -> None:
        self.model_wait.labels(model).observe(seconds)

    def waited_past_bound(self, model: str) -> None:
        self.model_wait_past_bound.labels(model).inc()

    def evicted(self, model: str, reason: str) -> None:
        self.evictions.labels(model, reason).inc()
