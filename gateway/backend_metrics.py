"""What only an engine knows, read from its own ``/metrics`` on the health-check timer.

llama-server (started with ``--metrics`` by both launched kinds) reports its slots (``requests_processing``,
``requests_deferred``) and its prompt-cache reuse; vLLM reports its KV cache use, its own queue and its
prefix cache. ``parse`` (pure) turns either exposition into ``EngineStats``; ``scrape`` is the I/O, with a
deadline, and never raises. The gateway re-exports these numbers under the model's labels (``/metrics``
stays the one scrape target) and adds the engines' cumulative counters to its own as deltas, so a restart
of the engine (its counters back to zero) does not make the gateway's counters go down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 2.0
MAX_BYTES = 1 << 20  # an engine's exposition is a few KiB; more is not an engine's metrics page


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
        key = _GAUGES.get(family.name) or _COUNTERS.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
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


async def scrape(client: httpx.AsyncClient, url: str) -> EngineStats | None:
    """An engine's stats, or None when it has none to give (unreachable, slow, not Prometheus text)."""
    try:
        async with client.stream("GET", url, timeout=SCRAPE_TIMEOUT) as resp:
            if resp.status_code != 200:
                return None
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    return None
        return parse(body.decode("utf-8", "replace"))
    except (httpx.HTTPError, ValueError, OSError) as exc:
        log.debug("scrape of %s failed: %s", url, exc)
        return None


def delta(before: float | None, after: float | None) -> float:
    """How much a cumulative engine counter grew; after a reset (an engine restart), all of it."""
    if after is None:
        return 0.0
    if before is None or after < before:
        return after  # the replica's engine started with it: everything it counted is this replica's
    return after - before
