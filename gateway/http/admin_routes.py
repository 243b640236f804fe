"""The admin API: every model's state and memory; load, unload, pin and unpin by name or alias; logs; the
dry-run plan of a load; memory per device; reload of the manifests.

GET  /admin/models                    every model, the devices' memory, and the refused manifests
GET  /admin/models/{name}             one model
POST /admin/models/{name}/load        load now (waits for it; 503 with the reason if it cannot)
POST /admin/models/{name}/unload      drain then unload (?force=true: cut in-flight requests at once);
                                      a load under way is cancelled (/evict is the same, kept for old clients)
POST /admin/models/{name}/pin         never evict; loads it now; kept across reloads and restarts
POST /admin/models/{name}/unpin       evictable again
GET  /admin/models/{name}/logs        the last lines of each replica's process (?follow=true: SSE, live)
GET  /admin/models/{name}/plan        would it fit now, what would its load evict, memory per device after
GET  /admin/devices                   memory per device against its budget, what holds it, what loads take
POST /admin/reload                    read the manifests again (gateway.control.reload)
GET  /admin/activity                  the last requests (?since=<id>: only newer ones; ?limit=<n>)
GET  /admin/series                    tokens/s and queue depth per model, memory per device, over time
GET  /admin/session                   the key this request came with, and whether it may act (the console)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backends.errors import InvalidRequest
from gateway.control.reload import reload
from gateway.control.state import Gateway
from gateway.observability.gauges import resident_bytes
from gateway.routing.pool import Replica
from gateway.scheduling.explain import Plan
from gateway.scheduling.lifecycle import HOLDS_MEMORY, ModelSlot, State
from gateway.scheduling.placement import HOST

FOLLOW_POLL = 0.5  # seconds between looks at the replicas' log tails while following
KEEPALIVE = 15.0  # an SSE comment this often on a quiet log, so that a dead client is noticed


def budget_json(slot: ModelSlot) -> dict[str, Any] | None:
    """The estimate, the learned peak, and which of them the budget uses (``gateway.scheduling.learned``)."""
    b = slot.budget
    if b is None:
        return None
    return {
        "estimate_bytes": b.estimate,
        "learned_bytes": b.learned,
        "budget_bytes": b.figure,
        "uses": b.source,
    }


def describe(slot: ModelSlot, now: float, never_fits: str | None = None) -> dict[str, Any]:
    failure = slot.failure
    replicas = [_replica(r, now) for r in slot.pool.replicas] if slot.pool else []
    measured = [r["memory_bytes"] for r in replicas if r.get("memory_bytes") is not None]
    return {
        "name": slot.name,
        "aliases": slot.manifest.aliases,
        "kind": slot.manifest.backend.kind,
        "state": slot.state.value,
        "pinned": slot.pinned,
        "memory_bytes": slot.memory,
        "memory_by_device": dict(slot.claims),
        "budget": budget_json(slot),
        "measured_bytes": sum(measured) if measured else None,
        "in_flight": slot.in_flight,
        "queued": slot.queued,
        "interactive_reserve": slot.interactive_reserve,
        "preempted": slot.pool.preempted if slot.pool else 0,
        "replicas": replicas,
        "idle_seconds": round(now - slot.last_used, 3) if slot.last_used else None,
        "idle_ttl": slot.manifest.idle_ttl,
        "loads": slot.loads,
        "load_seconds": round(slot.load_seconds, 3) if slot.load_seconds is not None else None,
        **_progress(slot, now),
        "last_error": failure.message if failure else None,
        "fits": never_fits is None,
        "never_fits_reason": never_fits,
    }


def _progress(slot: ModelSlot, now: float) -> dict[str, Any]:
    """How long its requests have waited for it, and where its load is: the time since the load began and
    what is left by its last load's time (None when it has not loaded before)."""
    oldest = slot.oldest_wait
    loading = now - slot.load_began if slot.state is State.LOADING else None
    eta = None
    if loading is not None and slot.load_seconds is not None:
        eta = round(max(0.0, slot.load_seconds - loading), 3)
    return {
        "waiting_seconds": round(now - oldest, 3) if oldest is not None else None,
        "loading_seconds": round(loading, 3) if loading is not None else None,
        "load_eta_seconds": eta,
        "load_phase": slot.load_phase,
    }


def _replica(replica: Replica, now: float) -> dict[str, Any]:
    backend = replica.backend
    info = backend.describe()
    details = {k: v for k, v in dataclasses.asdict(info).items() if k != "log"}
    if info.memory_bytes is None and info.pid is not None:
        details["memory_bytes"] = resident_bytes(info.pid)
    return {
        "index": replica.index,
        "healthy": replica.healthy(now),
        "reason": replica.reason(now),  # why it is out of rotation, when it is
        "outstanding": replica.outstanding,
        "capacity": backend.capacity,
        "served": replica.served,
        "failures": replica.failures,  # consecutive failed requests
        "ejected_for": round(max(0.0, replica.ejected_until - now), 3),
        **details,
    }


def plan_json(plan: Plan, budgets: dict[str, int], slot: ModelSlot) -> dict[str, Any]:
    after = plan.used_after or {}
    return {
        "model": plan.model,
        "fits": plan.fits,
        "already_loaded": plan.already_loaded,
        "evict": list(plan.evict),
        "drain": list(plan.drain),
        "blocked_by": [{"model": m, "reason": why} for m, why in plan.blocked_by],
        "placement": [{"devices": list(d)} for d in plan.placement],
        "memory_after": [
            {"device": d, "used_bytes": after.get(d, 0), "budget_bytes": b} for d, b in budgets.items()
        ],
        "reason": plan.reason,
        "budget": budget_json(slot),
    }


def new_lines(before: Sequence[str], now: Sequence[str]) -> list[str]:
    """The lines of a bounded log tail ``now`` that were not in the tail seen ``before``: the longest end of
    ``before`` that ``now`` starts with is what both saw (the tail drops its oldest lines as new come)."""
    for start in range(len(before) + 1):
        overlap = len(before) - start
        if overlap <= len(now) and list(now[:overlap]) == list(before[start:]):
            return list(now[overlap:])
    return list(now)


class AdminRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def routes(self) -> list[Route]:
        one = "/admin/models/{name:path}"
        return [
            Route("/admin/models", self.list, methods=["GET"]),
            Route("/admin/devices", self.devices, methods=["GET"]),
            Route("/admin/reload", self.reload, methods=["POST"]),
            Route("/admin/activity", self.activity, methods=["GET"]),
            Route("/admin/series", self.series, methods=["GET"]),
            Route("/admin/session", self.session, methods=["GET"]),
            Route("/admin/cluster", self.cluster, methods=["GET"]),
            Route(f"{one}/load", self.load, methods=["POST"]),
            Route(f"{one}/unload", self.unload, methods=["POST"]),
            Route(f"{one}/evict", self.unload, methods=["POST"]),
            Route(f"{one}/pin", self.pin, methods=["POST"]),
            Route(f"{one}/unpin", self.unpin, methods=["POST"]),
            Route(f"{one}/logs", self.logs, methods=["GET"]),
            Route(f"{one}/plan", self.plan, methods=["GET"]),
            Route(one, self.one, methods=["GET"]),
        ]

    def _slot(self, request: Request) -> ModelSlot:
        return self.gw.registry.resolve(request.path_params["name"])

    def _model(self, slot: ModelSlot) -> dict[str, Any]:
        return describe(slot, time.monotonic(), self.gw.never_fits.get(slot.name))

    def _devices(self) -> list[dict[str, Any]]:
        sched, loss = self.gw.scheduler, self.gw.host_loss
        used, reserved = sched.used(), sched.reserved()
        # a down host's devices have budget 0 until it is back
        down = {d for host in loss.down for d in loss.devices.get(host, ())}
        holders: dict[str, list[dict[str, Any]]] = {d: [] for d in sched.budgets}
        for r in sched.residents():
            slot = sched.slots.get(r.name)
            state = slot.state.value if slot is not None and slot.state in HOLDS_MEMORY else "reserved"
            for device, n in r.claims.items():
                holders.setdefault(device, []).append({"model": r.name, "state": state, "bytes": n})
        return [
            {
                "device": d,
                "budget_bytes": b,
                "used_bytes": used.get(d, 0),
                "reserved_bytes": reserved.get(d, 0),
                "models": holders.get(d, []),
                "host_down": d in down,
            }
            for d, b in sched.budgets.items()
        ]

    async def list(self, request: Request) -> Response:
        sched = self.gw.scheduler
        return JSONResponse(
            {
                "memory_budget_bytes": sched.budgets[HOST],  # the gateway's own machine (also in devices)
                "memory_used_bytes": sched.used()[HOST],
                "devices": self._devices(),
                "models": [self._model(s) for s in self.gw.scheduler.slots.values()],
                "manifest_problems": [
                    {"file": str(p.file), "field": p.field, "reason": p.reason}
                    for p in self.gw.manifests.problems
                ],
            }
        )

    async def devices(self, request: Request) -> Response:
        return JSONResponse({"devices": self._devices()})

    async def one(self, request: Request) -> Response:
        return JSONResponse(self._model(self._slot(request)))

    async def load(self, request: Request) -> Response:
        slot = self._slot(request)
        slot.clear_failure()  # an operator asking for a load means: try now, not after the backoff
        lease = await self.gw.scheduler.acquire(slot, self.gw.settings.load_timeout)
        lease.release()
        return JSONResponse(self._model(slot))

    async def unload(self, request: Request) -> Response:
        slot = self._slot(request)
        force = request.query_params.get("force", "false").lower() in ("1", "true", "yes")
        sched = self.gw.scheduler
        if slot.state is State.LOADING:
            await sched.cancel_load(slot)
        await sched.unload(slot, "unloaded by an admin", "admin", grace=0.0 if force else None)
        return JSONResponse(self._model(slot))

    async def cluster(self, request: Request) -> Response:
        """The fleet as this gateway sees it (cluster mode); alone, just that."""
        node = self.gw.fleet
        return JSONResponse(node.describe() if node is not None else {"cluster": None, "role": "alone"})

    async def pin(self, request: Request) -> Response:
        slot = self._slot(request)
        if self.gw.fleet is not None:
            await self.gw.fleet.set_pin(slot.name, True)
        slot.pinned = True
        self.gw.pins.record(slot.name, True)
        return await self.load(request)

    async def unpin(self, request: Request) -> Response:
        slot = self._slot(request)
        if self.gw.fleet is not None:
            await self.gw.fleet.set_pin(slot.name, False)
        slot.pinned = False
        self.gw.pins.record(slot.name, False)
        return JSONResponse(self._model(slot))

    async def plan(self, request: Request) -> Response:
        slot = self._slot(request)
        return JSONResponse(plan_json(self.gw.scheduler.plan(slot), self.gw.scheduler.budgets, slot))

    async def reload(self, request: Request) -> Response:
        if self.gw.fleet is not None:  # every gateway of the fleet reloads; this one answers with its result
            result = await self.gw.fleet.reload_all()
        else:
            result = await reload(self.gw)
        return JSONResponse(result.as_json())

    async def activity(self, request: Request) -> Response:
        """The last requests, oldest first: those numbered above ``since``, the newest ``limit`` of them."""
        since = _int_param(request, "since", 0)
        limit = _int_param(request, "limit", 0)
        self.gw.metrics.flush()  # the requests finished since the last batch, with their usage
        entries = self.gw.activity.since(since, limit or None)
        return JSONResponse({"size": self.gw.activity.size, "entries": [e.as_json() for e in entries]})

    async def series(self, request: Request) -> Response:
        """The console's charts: samples after ``since`` (Unix seconds), column by column."""
        return JSONResponse(self.gw.series.as_json(_float_param(request, "since", 0.0)))

    async def session(self, request: Request) -> Response:
        """Who the console is: the name of the key this request carried (none when the admin API is open or
        read-only), and whether its actions would be allowed."""
        state = request.scope.get("state", {})
        return JSONResponse({"key": state.get("key_name"), "actions": not state.get("read_only", False)})

    async def logs(self, request: Request) -> Response:
        """The last lines each replica's process wrote (launched kinds); live as SSE with ``follow``."""
        slot = self._slot(request)
        if request.query_params.get("follow", "false").lower() in ("1", "true", "yes"):
            return StreamingResponse(
                _follow(slot),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        replicas = slot.pool.replicas if slot.pool else []
        return JSONResponse(
            {"replicas": [{"index": r.index, "log": list(r.backend.describe().log)} for r in replicas]}
        )


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise InvalidRequest(f"'{name}' must be a whole number, not {value!r}", param=name)
    return int(value)


def _float_param(request: Request, name: str, default: float) -> float:
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InvalidRequest(f"'{name}' must be a number, not {value!r}", param=name)
    return number


async def _follow(slot: ModelSlot) -> AsyncIterator[bytes]:
    """Each replica's log lines as SSE events (``{"replica": i, "line": ...}``), the tail first, then new
    lines as they are written, until the client leaves. Nothing accumulates: each replica's last tail only."""
    seen: dict[tuple[int, int], tuple[str, ...]] = {}  # (pool, replica index): the tail seen last
    quiet_since = time.monotonic()
    while True:
        pool = slot.pool
        now_seen: dict[tuple[int, int], tuple[str, ...]] = {}  # only the replicas there are now
        for replica in pool.replicas if pool else []:
            key = (id(pool), replica.index)
            tail = replica.backend.describe().log
            for line in new_lines(seen.get(key, ()), tail):
                yield b"data: " + json.dumps({"replica": replica.index, "line": line}).encode() + b"\n\n"
                quiet_since = time.monotonic()
            now_seen[key] = tail
        seen = now_seen
        if time.monotonic() - quiet_since >= KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(FOLLOW_POLL)  # a poll of bounded tails, not synchronisation
