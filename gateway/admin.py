"""The admin API: see every model's state and memory; load, evict, pin and unpin by name or alias.

GET  /admin/models                  every model (state, memory, leases, last load error), and the
                                    manifests that were refused, with file, field and reason
POST /admin/models/{name}/load      load now (waits for it; 503 with the reason if it cannot)
POST /admin/models/{name}/evict     drain and unload now
POST /admin/models/{name}/pin       never evict; loads it if needed
POST /admin/models/{name}/unpin     evictable again
GET  /admin/models/{name}/logs      the last output lines of each replica's process
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.base import ReplicaInfo
from gateway.lifecycle import ModelSlot
from gateway.placement import HOST
from gateway.pool import Replica

if TYPE_CHECKING:
    from gateway.app import Gateway


def describe(slot: ModelSlot, now: float) -> dict[str, Any]:
    failure = slot.failure
    return {
        "name": slot.name,
        "aliases": slot.manifest.aliases,
        "kind": slot.manifest.backend.kind,
        "state": slot.state.value,
        "pinned": slot.pinned,
        "memory_bytes": slot.memory,
        "memory_by_device": dict(slot.claims),
        "in_flight": slot.in_flight,
        "queued": slot.pool.queued if slot.pool else 0,
        "replicas": [_replica(r, now) for r in slot.pool.replicas] if slot.pool else [],
        "idle_seconds": round(now - slot.last_used, 3) if slot.last_used else None,
        "idle_ttl": slot.manifest.idle_ttl,
        "loads": slot.loads,
        "last_error": failure.message if failure else None,
    }


def _replica(replica: Replica, now: float) -> dict[str, Any]:
    backend = replica.backend
    return {
        "index": replica.index,
        "healthy": replica.healthy(now),
        "reason": replica.reason(now),  # why it is out of rotation, when it is
        "outstanding": replica.outstanding,
        "capacity": backend.capacity,
        "served": replica.served,
        "failures": replica.failures,  # consecutive failed requests
        "ejected_for": round(max(0.0, replica.ejected_until - now), 3),
        **_details(backend.describe()),
    }


def _details(info: ReplicaInfo) -> dict[str, Any]:
    """What the backend kind knows about the replica (a pid, a URL, a container...), without its log."""
    return {k: v for k, v in dataclasses.asdict(info).items() if k != "log"}


class AdminRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def routes(self) -> list[Route]:
        return [
            Route("/admin/models", self.list, methods=["GET"]),
            Route("/admin/models/{name:path}/load", self.load, methods=["POST"]),
            Route("/admin/models/{name:path}/evict", self.evict, methods=["POST"]),
            Route("/admin/models/{name:path}/pin", self.pin, methods=["POST"]),
            Route("/admin/models/{name:path}/unpin", self.unpin, methods=["POST"]),
            Route("/admin/models/{name:path}/logs", self.logs, methods=["GET"]),
        ]

    def _state(self) -> dict[str, Any]:
        now = time.monotonic()
        sched = self.gw.scheduler
        used = sched.used()
        return {
            "memory_budget_bytes": sched.budgets[HOST],
            "memory_used_bytes": used[HOST],
            "devices": [
                {"device": d, "budget_bytes": b, "used_bytes": used.get(d, 0)}
                for d, b in sched.budgets.items()
            ],
            "models": [describe(s, now) for s in sched.slots.values()],
            "manifest_problems": [
                {"file": str(p.file), "field": p.field, "reason": p.reason}
                for p in self.gw.manifests.problems
            ],
        }

    async def list(self, request: Request) -> Response:
        return JSONResponse(self._state())

    async def load(self, request: Request) -> Response:
        slot = self.gw.registry.resolve(request.path_params["name"])
        slot.clear_failure()  # an operator asking for a load means: try now, not after the backoff
        lease = await self.gw.scheduler.acquire(slot, self.gw.settings.load_timeout)
        lease.release()
        return JSONResponse(describe(slot, time.monotonic()))

    async def evict(self, request: Request) -> Response:
        slot = self.gw.registry.resolve(request.path_params["name"])
        await self.gw.scheduler.unload(slot, "evicted by an admin")
        return JSONResponse(describe(slot, time.monotonic()))

    async def pin(self, request: Request) -> Response:
        slot = self.gw.registry.resolve(request.path_params["name"])
        slot.pinned = True
        return await self.load(request)

    async def logs(self, request: Request) -> Response:
        """The last lines each replica's process wrote (launched backends only)."""
        slot = self.gw.registry.resolve(request.path_params["name"])
        replicas = slot.pool.replicas if slot.pool else []
        return JSONResponse(
            {"replicas": [{"index": r.index, "log": list(r.backend.describe().log)} for r in replicas]}
        )

    async def unpin(self, request: Request) -> Response:
        slot = self.gw.registry.resolve(request.path_params["name"])
        slot.pinned = False
        return JSONResponse(describe(slot, time.monotonic()))
