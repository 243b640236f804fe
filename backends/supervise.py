"""Restarting a replica that died while it should be serving: the one backoff loop that the launched kinds
(``backends.process``, ``backends.container``) share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0


async def restart_with_backoff(
    label: str, why: str, relaunch: Callable[[], Awaitable[None]], stopping: Callable[[], bool]
) -> None:
    """Call ``relaunch`` after 1 s, then after doubling waits (up to 30 s) until it succeeds or ``stopping()``
    says the replica is being stopped. Meanwhile the replica reports unhealthy, and requests go elsewhere or
    fail fast with why it is down."""
    backoff = FIRST_BACKOFF
    while not stopping():
        log.warning("%s: %s; restarting in %.0fs", label, why, backoff)
        await asyncio.sleep(backoff)  # restart backoff
        if stopping():  # stop() may have run during the sleep
            return
        try:
            await relaunch()
            return
        except Exception as exc:
            why = f"restart failed: {exc}"
            backoff = min(backoff * 2, MAX_BACKOFF)
