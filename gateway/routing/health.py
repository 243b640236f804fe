"""Active health checks: while a model is loaded, probe every replica's ``health()`` on a timer and tell the
pool what each probe found.

This module is only the timer and the I/O. What a probe result means for a replica (down, back in rotation,
an ejection ended early) is decided by ``Replica.probed``, a pure method that is tested on its own. A probe
takes no slot: it runs beside the requests, never in the queue, and never counts as outstanding.

The model's lifecycle starts the checks when the model becomes ready and stops them (cancels the task and
waits for it) before its replicas are stopped, so a probe never races an unload.
"""

from __future__ import annotations

import asyncio
import logging

from backends.base import Backend
from gateway.routing.pool import Pool

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0


async def probe(backend: Backend, timeout: float) -> bool:
    """One probe. ``health()`` must never raise; if one does anyway, or outlasts ``timeout``, the probe counts
    as failed rather than ending the checks for good."""
    try:
        return await asyncio.wait_for(backend.health(), timeout)
    except TimeoutError:
        return False
    except Exception:
        log.exception("a replica's health() raised; counted as a failed probe")
        return False


async def check_forever(pool: Pool, interval: float, timeout: float = PROBE_TIMEOUT) -> None:
    """Probe every replica of ``pool`` each ``interval`` seconds, until cancelled. The first round comes one
    interval after the start: ``start()`` has just said that every replica can serve."""
    while True:
        await asyncio.sleep(interval)  # a timer, not synchronisation
        results = await asyncio.gather(*(probe(r.backend, timeout) for r in pool.replicas))
        for replica, ok in zip(pool.replicas, results, strict=True):
            if pool.probed(replica, ok):
                what = "passed its health check: back in" if ok else "failed its health check: out of"
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "%s replica %d %s rotation",
                    pool.model,
                    replica.index,
                    what,
                )


def start_checks(pool: Pool, interval: float) -> asyncio.Task[None] | None:
    """The checks' task, or None when ``interval`` is 0 (disabled)."""
    if interval <= 0:
        return None
    return asyncio.create_task(check_forever(pool, interval), name=f"health:{pool.model}")


async def stop_checks(task: asyncio.Task[None] | None) -> None:
    """Cancel the checks and wait until they have ended. Idempotent. A cancellation of the caller still
    propagates (``asyncio.wait`` does not swallow it, unlike awaiting the task under a suppress)."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
