"""A new leader's take-over of what runs: the mirrored models it can adopt become its own, as they run; those
it cannot are unloaded; this fleet's containers that no model claims are removed.

- A mirrored model is adopted when its entry is adoptable (containers or remote servers: a ``llama_server``
  process died with the gateway that started it), every replica answers a health probe (a container the
  last leader removed on its way out does not), and every container is on an engine this gateway knows. Its
  placement goes back into the scheduler's budgets, so the device ledger is rebuilt from what runs.
- Unclaimed containers: those labelled with this fleet, on the engines models use, that no adopted model
  claims and that this gateway did not start itself (``gateway.fleet.mirror.unclaimed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from backends.docker.engine import DockerEngine
from backends.errors import UpstreamUnavailable
from gateway.fleet.mirror import MirroredReplica, remove, unclaimed
from gateway.fleet.table import Entry
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


async def adopt(
    scheduler: Scheduler,
    slots: Iterable[ModelSlot],
    mirrored: Mapping[str, Entry],
    engines: Iterable[DockerEngine],
) -> list[asyncio.Task[bool]]:
    """Take over ``slots`` (the shared ones) mirrored from ``mirrored``; returns the unloads begun."""
    claimed: set[str] = set()
    unloads = []
    for slot in slots:
        made = mirrored.get(slot.name)
        if slot.state is not State.READY or made is None or slot.pool is None:
            continue
        backends = [r.backend for r in slot.pool.replicas]
        alive = await asyncio.gather(*(b.health() for b in backends))  # gone with the last leader?
        mine = all(isinstance(b, MirroredReplica) and b.own() for b in backends)
        if made.adoptable and mine and all(alive):
            await scheduler.take_over(slot, made.options())
            claimed.update(r.container for r in made.replicas if r.container)
            log.info("cluster: adopted %s (%d replicas) as it runs", slot.name, len(made.replicas))
        else:
            why = "its replicas ended with the last leader"
            unloads.append(asyncio.create_task(scheduler.unload(slot, why, None, 0.0)))
    for engine in engines:
        try:
            for name in await unclaimed(engine, claimed):
                log.warning("cluster: removing container %s on %s: no model claims it", name, engine.name)
                await remove(engine, name)
        except UpstreamUnavailable as exc:  # an engine out of reach: its leftovers wait for the next leader
            log.error("cluster: could not list the fleet's containers on %s: %s", engine.name, exc)
    return unloads
