"""Reading an engine's own ``/metrics`` (and llama-server's ``/slots``) on the engine-scrape timer: the I/O,
with a deadline and a size cap, that never raises. What the numbers mean is ``backends.engine_stats``. The
gateway re-exports them under the model's labels (``/metrics`` stays the one scrape target) and adds the
engines' cumulative counters to its own as deltas, so a restart of the engine (its counters back to zero)
does not make the gateway's counters go down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import httpx

from backends.engine_stats import EngineStats, parse, slots_usage

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 2.0
MAX_BYTES = 1 << 20  # an engine's exposition is a few KiB; more is not an engine's metrics page


async def scrape(client: httpx.AsyncClient, url: str) -> EngineStats | None:
    """An engine's stats, or None when it has none to give (unreachable, slow, not Prometheus text).

    llama-server's metrics lack its KV cache use (it dropped the gauge); its ``/slots`` gives it: the tokens
    of the requests in its slots (prompt and generated so far) over the slots' contexts."""
    try:
        text = await _get(client, url)
        if text is None:
            return None
        stats = parse(text)
        if stats.processing is not None and stats.kv_cache_usage is None:
            slots = await _get(client, url.removesuffix("/metrics") + "/slots")
            if slots is not None:
                stats = replace(stats, kv_cache_usage=slots_usage(json.loads(slots)))
        return stats
    except (httpx.HTTPError, ValueError, OSError) as exc:
        log.debug("scrape of %s failed: %s", url, exc)
        return None


async def _get(client: httpx.AsyncClient, url: str) -> str | None:
    async with client.stream("GET", url, timeout=SCRAPE_TIMEOUT) as resp:
        if resp.status_code != 200:
            return None
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > MAX_BYTES:
                return None
    return body.decode("utf-8", "replace")
