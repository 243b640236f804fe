"""What only an engine knows, as its own ``/metrics`` says it: llama-server (started with ``--metrics`` by
both launched kinds) reports its slots (``requests_processing``, ``requests_deferred``) and its prompt-cache
reuse; vLLM reports its KV cache use, its own queue and its prefix cache. ``parse`` (pure) turns either
exposition into ``EngineStats``; the gateway reads the pages (``gateway.observability.engine_scrape``).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class EngineStats:
    kv_cache_usage: float | None = None  # 0..1
    processing: float | None = None  # llama.cpp: requests in slots
    deferred: float | None = None  # llama.cpp: requests waiting for a slot
    waiting: float | None = None  # vLLM: requests in its scheduler's queue
    prefix_queries: float | None = None  # cumulative, tokens
    prefix_hits: float | None = None  # cumulative, tokens


_GAUGES = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # vLLM before 0.10
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage",  # llama.cpp before it dropped the gauge
    "llamacpp:requests_processing": "processing",
    "llamacpp:requests_deferred": "deferred",
    "vllm:num_requests_waiting": "waiting",
}
_COUNTERS = {
    "vllm:prefix_cache_queries": "prefix_queries",
    "vllm:prefix_cache_hits": "prefix_hits",
    "llamacpp:prompt_tokens": "llama_prompt",  # tokens evaluated (not taken from the cache)
    "llamacpp:prompt_tokens_cached": "prefix_hits",
}


def parse(text: str) -> EngineStats:
    """The numbers of interest in a Prometheus text exposition (summed over an engine's label sets)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # by sample name: TYPE lines differ on the ``_total`` suffix
            name = sample.name.removesuffix("_total")
            key = _GAUGES.get(name) or _COUNTERS.get(name)
            if key is not None:
                found[key] = found.get(key, 0.0) + sample.value
    queries = found.get("prefix_queries")
    if queries is None and "llama_prompt" in found:  # llama.cpp: every prompt token is a cache query
        queries = found["llama_prompt"] + found.get("prefix_hits", 0.0)
    return EngineStats(
        kv_cache_usage=found.get("kv_cache_usage"),
        processing=found.get("processing"),
        deferred=found.get("deferred"),
        waiting=found.get("waiting"),
        prefix_queries=queries,
        prefix_hits=found.get("prefix_hits"),
    )


def slots_usage(slots: object) -> float | None:
    """KV cache use from llama-server's ``/slots``: tokens of processing slots over all slots' contexts."""
    if not isinstance(slots, list) or not slots:
        return None
    capacity = used = 0
    for slot in slots:
        if not isinstance(slot, dict):
            return None
        capacity += int(slot.get("n_ctx") or 0)
        if slot.get("is_processing"):
            decoded = sum(int(t.get("n_decoded") or 0) for t in slot.get("next_token") or [])
            used += int(slot.get("n_prompt_tokens") or 0) + decoded
    return min(1.0, used / capacity) if capacity else None


def delta(before: float | None, after: float | None) -> float:
    """How much a cumulative engine counter grew; after a reset (an engine restart), all of it."""
    if after is None:
        return 0.0
    if before is None or after < before:
        return after  # the replica's engine started with it: everything it counted is this replica's
    return after - before
