"""Background loops that must not die silently: the stats line, the engine scrapes, the manifest watch.

Each loop runs one step on its interval. A step that raises is logged with its traceback, counted, and the
loop goes on after a backoff (doubling, up to a minute) instead of ending: before, such an exception
surfaced only at shutdown, and was dropped there. A loop whose last ``FAILING_AFTER`` steps all failed is
reported by ``GET /health`` (``"status": "degraded"``, with its last error), still with a 200: a stats line
that cannot be written is no reason for an orchestrator to restart the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FAILING_AFTER = 3
MAX_BACKOFF = 60.0


@dataclass
class LoopHealth:
    failures: int = 0  # in a row
    total_failures: int = 0
    last_error: str | None = None


class Background:
    def __init__(self) -> None:
        self.loops: dict[str, LoopHealth] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, name: str, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` every ``interval`` seconds until ``stop``."""
        health = self.loops[name] = LoopHealth()
        self._tasks.append(asyncio.create_task(self._run(name, interval, step, health), name=name))

    async def _run(
        self, name: str, interval: float, step: Callable[[], Awaitable[None]], health: LoopHealth
    ) -> None:
        wait = interval
        while True:
            await asyncio.sleep(wait)  # a timer, not synchronisation
            try:
                await step()
            except Exception as exc:
                health.failures += 1
                health.total_failures += 1
                health.last_error = f"{type(exc).__name__}: {exc}"
                wait = min(interval * 2**health.failures, MAX_BACKOFF)
                log.exception("%s failed (%d in a row); next try in %.0fs", name, health.failures, wait)
            else:
                health.failures = 0
                wait = interval

    def failing(self) -> dict[str, LoopHealth]:
        return {name: h for name, h in self.loops.items() if h.failures >= FAILING_AFTER}

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
