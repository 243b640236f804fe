"""This gateway as a member of a fleet (cluster mode): its lease, the election, and what it does each turn
as the leader or as a follower. Built only when ``GATEWAY_CLUSTER_ETCD`` is set (``gateway.control.build``).

One loop (``tick``, every ``TICK`` seconds) reads and writes the store (``gateway.fleet.store``); the
decisions are ``gateway.fleet.table``'s. Polling, not etcd watches: one turn reads the fleet's whole prefix
in one call (a few dozen small keys), and the same loop survives the loss of an etcd member or of the whole
store with nothing to resume: each turn starts from what the store holds.

- Membership and election (``gateway.fleet.membership``): a lease of ``cluster_ttl``; ``members/<id>`` and
  the ``leader`` key on it. A dead leader's key goes with its lease; the next turn of another member creates
  it.
- The leader runs the scheduler for the models that can be shared (every kind but the in-process one): it
  loads them (for its own requests, for followers' ``loads/`` requests, for pins), evicts and health-checks
  them as a lone gateway does, and publishes each one's entry in ``models/``.
- A follower never loads a shared model (``delegates``): a request for one that is not ready writes
  ``loads/<model>/<member>`` and waits until the table says it is ready (the slot is then mirrored), until
  the leader reports a failure, or until the load timeout, with the errors of a local load. It mirrors
  every ready entry as HTTP replicas (``gateway.fleet.mirror``) and stops mirroring what the leader unloads.
- Taking over (``gateway.fleet.adoption``): a follower elected leader owns the mirrored models it can adopt
  (their placement goes back into its budgets, so the device ledger is what runs), unloads those it cannot,
  and removes this fleet's containers that no entry claims. Nothing is restarted.
- Pins, reloads and last uses are shared through ``pins/``, ``reload`` and ``use/``.
- The store down: every gateway keeps routing to what it has; a load that needs the store is a 503 with
  Retry-After naming it; the next turn that reaches the store carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from backends.docker.engine import DockerEngine
from backends.errors import LoadFailed, ModelUnavailable
from gateway.fleet.adoption import adopt
from gateway.fleet.membership import Membership
from gateway.fleet.mirror import MirroredReplica
from gateway.fleet.store import Store, StoreUnavailable
from gateway.fleet.table import Entry, Keys, Snapshot, changes, entry_of, mirror_plan
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.pins import Pins
from gateway.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between turns: how fast a follower sees a load finish, and a leader a request
USE_EVERY = 1.0  # a follower reports a model's last use at most this often
RETRY_AFTER = 5.0  # what a client is told when the store is down
TURN_TIMEOUT = 30.0  # one turn, whatever hangs in it (each store call has its own, shorter deadline)
# A drain waits this long before it trusts the followers' reports: the leader's turn publishes the drain,
# a follower's turn sees it (and stops taking requests) and reports what still runs, the leader's reads it.
SETTLE = 3 * TICK + 0.1


class Node:
    def __init__(
        self,
        *,
        member: str,
        url: str,
        cluster: str,
        ttl: float,
        load_timeout: float,
        store: Store,
        scheduler: Scheduler,
        pins: Pins,
        engines: Mapping[str, DockerEngine],
        engines_in_use: Callable[[], list[DockerEngine]],
        shared: Callable[[ModelSlot], bool],
        digest: Callable[[], str],
        reload: Callable[[], Awaitable[Any]],
    ) -> None:
        self.id = member
        self.cluster = cluster
        self.keys = Keys(cluster)
        self.load_timeout = load_timeout
        self.store = store
        self.scheduler = scheduler
        self.pins = pins
        self.engines = engines
        self.engines_in_use = engines_in_use  # where a take-over looks for containers nobody claims
        self._leaving = False  # shutting down: the fleet's loop has stopped
        self.shared = shared
        self._reload = reload
        self.role = "starting"  # then "leader" or "follower"
        self.connected = False
        self.problem: str | None = None  # the store's last failure, while it lasts
        self.table: dict[str, Entry] = {}
        self.membership = Membership(store, self.keys, member, url, ttl, digest)
        self._published: dict[str, Entry] = {}
        self._mirrored: dict[str, Entry] = {}  # the entry each mirrored slot was made from
        self._work: dict[str, asyncio.Task[None]] = {}  # mirroring or unmirroring, by model
        self._spawned: set[asyncio.Task[Any]] = set()
        self._reload_seen: Any = None
        self._turns = 0
        self._use_sent: dict[str, float] = {}
        self._busy_sent: set[str] = set()  # a follower's models with requests running, as last reported
        self._busy: set[str] = set()  # the leader's view: models some follower has requests of
        self._busy_read = 0.0  # when the leader last read that
        self.became_leader: float | None = None  # time.time() of the last election won

    # -- the scheduler's delegate ----------------------------------------------------------------------
    def delegates(self, slot: ModelSlot) -> bool:
        """A follower's shared models, and the leader's while the store is away: a load it could not
        record in the table is refused (``request`` answers 503), as a follower's is."""
        return self.shared(slot) and (self.role != "leader" or not self.connected)

    def _store_error(self, what: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"{what}: the fleet's store, {self.store.describe()}, is unreachable ({self.problem})",
            retry_after=RETRY_AFTER,
        )

    async def request(self, slot: ModelSlot) -> None:
        """Ask the leader to load ``slot``'s model and wait until it is mirrored here (see the module)."""
        name = slot.name
        if not self.connected or self.lease is None:
            raise self._store_error(f"cannot load '{name}'")
        first = self.table.get(name)
        if first is not None and first.error and (first.retry_at or 0) > time.time():
            raise LoadFailed(
                f"model '{name}' failed to load: {first.error}",
                retry_after=max(1.0, (first.retry_at or 0) - time.time()),
            )
        key = self.keys.load(name, self.id)
        try:
            await self.store.put(key, {"at": time.time()}, lease=self.lease)
        except StoreUnavailable as exc:
            raise self._store_error(f"cannot load '{name}'") from exc
        deadline = time.monotonic() + self.load_timeout
        try:
            while slot.state is not State.READY and not slot.retired:
                if self.role == "leader" and self.connected:
                    return  # elected meanwhile: the scheduler loads it here
                entry = self.table.get(name)
                if entry is not None and entry.error and (first is None or entry != first):
                    raise LoadFailed(
                        f"model '{name}' failed to load: {entry.error}",
                        retry_after=max(1.0, (entry.retry_at or 0) - time.time()),
                    )
                if not self.connected:
                    raise self._store_error(f"cannot load '{name}'")
                if self.membership.leader_differs() and name not in self.table:
                    raise ModelUnavailable(
                        f"the fleet's leader ({self.leader}) does not serve '{name}': the gateways' "
                        "manifests differ (GET /admin/cluster)",
                        retry_after=RETRY_AFTER,
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelUnavailable(
                        f"model '{name}' was not loaded by the fleet's leader ({self.leader}) within "
                        f"{self.load_timeout:.0f}s",
                        retry_after=RETRY_AFTER,
                    )
                await slot.wait_change(min(remaining, TICK))
        finally:
            self._spawn(self._quietly(self.store.delete(key)))

    # -- the loop --------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """One turn; a store failure is remembered (and logged once), never raised."""
        try:
            async with asyncio.timeout(TURN_TIMEOUT):
                await self._turn()
        except (StoreUnavailable, TimeoutError) as exc:
            if self.connected or self._turns == 0:
                log.error("cluster: %s; serving what is loaded, refusing new loads", exc)
            self.connected, self.problem = False, str(exc)
            self._check_lease()
            return
        self._turns += 1

    def _reached(self) -> None:
        """The store answered this turn: loads that need it are served again."""
        if not self.connected and self._turns:
            log.warning("cluster: the store %s answers again (%s)", self.store.describe(), self.role)
        self.connected, self.problem = True, None

    async def _turn(self) -> None:
        if await self.membership.keep_lease() and self.role == "leader":
            self._step_down()
        read_at = time.monotonic()
        snapshot = Snapshot(await self.store.prefix(self.keys.root))
        self._reached()
        leader = await self.membership.elect(snapshot)
        if leader == self.id and self.role != "leader":
            await self._take_over()
        elif leader != self.id:
            if self.role == "leader":
                self._step_down()
            self.role = "follower"
        await self.membership.publish(self.role == "leader", snapshot)
        table = snapshot.under("models/")
        self.table = {n: e for n, raw in table.items() if (e := Entry.from_json(raw)) is not None}
        await self._apply_pins(snapshot.under("pins/"))
        await self._follow_reloads(snapshot.get("reload"))
        if self.role == "leader":
            await self._lead(snapshot, read_at)
        else:
            await self._follow()

    def _check_lease(self) -> None:
        """Without the store for longer than the lease, the leader must assume another one leads now."""
        if self.role == "leader" and self.membership.lease_stale():
            self._step_down()

    def _step_down(self) -> None:
        log.error(
            "cluster: %s no longer leads the fleet; its loaded models keep serving until they unload, and "
            "loads go to the new leader",
            self.id,
        )
        self.role = "follower"

    @property
    def lease(self) -> int | None:
        return self.membership.lease

    @property
    def leader(self) -> str | None:
        return self.membership.leader

    # -- shared settings -------------------------------------------------------------------------------
    async def set_pin(self, name: str, pinned: bool) -> None:
        """A pin (or unpin) for the whole fleet."""
        try:
            await self.store.put(self.keys.pins + name, pinned)
        except StoreUnavailable as exc:
            raise self._store_error(f"cannot {'pin' if pinned else 'unpin'} '{name}'") from exc

    async def _apply_pins(self, pins: Mapping[str, Any]) -> None:
        for name, pinned in pins.items():
            slot = self.scheduler.slots.get(name)
            if slot is not None and isinstance(pinned, bool) and slot.pinned != pinned:
                slot.pinned = pinned
                self.pins.record(name, pinned)

    async def reload_all(self) -> Any:
        """Reload every gateway of the fleet: this one now (its result is returned), the others on their
        next turn."""
        mark = {"id": uuid.uuid4().hex, "by": self.id}
        try:
            await self.store.put(self.keys.reload, mark)
        except StoreUnavailable as exc:
            raise self._store_error("cannot reload the fleet") from exc
        self._reload_seen = mark
        return await self._reload()

    async def _follow_reloads(self, mark: Any) -> None:
        if self._turns == 0:
            self._reload_seen = mark  # what was asked before this gateway started is in its manifests
        elif mark != self._reload_seen:
            self._reload_seen = mark
            log.info("cluster: reloading the manifests, as %s asked", (mark or {}).get("by"))
            self._spawn(self._reload())

    # -- the leader ------------------------------------------------------------------------------------
    def _shared_slots(self) -> list[ModelSlot]:
        return [s for s in self.scheduler.slots.values() if self.shared(s)]

    async def _take_over(self) -> None:
        log.warning("cluster: %s leads the fleet '%s' now", self.id, self.cluster)
        self.role = "leader"
        self.became_leader = time.time()
        if self._work:
            await asyncio.gather(*self._work.values(), return_exceptions=True)
        mirrored, self._mirrored = self._mirrored, {}
        for unload in await adopt(self.scheduler, self._shared_slots(), mirrored, self.engines_in_use()):
            self._spawn(unload)
        self._published = dict(self.table)

    async def _lead(self, snapshot: Snapshot, read_at: float) -> None:
        wall, mono = time.time(), time.monotonic()
        now = {s.name: entry_of(s, wall, mono) for s in self._shared_slots()}
        writes, deletes = changes(self._published, now)
        for name, entry in writes.items():
            await self.store.put(self.keys.models + name, entry.as_json())
            self._published[name] = entry
        for name in deletes:
            await self.store.delete(self.keys.models + name)
            self._published.pop(name, None)
        asked = {key.split("/", 1)[0] for key in snapshot.under("loads/")}
        for slot in self._shared_slots():
            wanted = slot.name in asked or slot.pinned
            in_backoff = slot.failure is not None and mono < slot.failure.retry_at
            if wanted and slot.state is State.UNLOADED and not slot.retired and not in_backoff:
                self.scheduler.load(slot)
        self._busy = {key.split("/", 1)[0] for key in snapshot.under("inflight/")}
        self._busy_read = read_at
        for name, used in snapshot.under("use/").items():
            user = self.scheduler.slots.get(name)
            if user is not None and isinstance(used, int | float):
                user.last_used = max(user.last_used, mono - max(0.0, wall - used))

    async def drained(self, slot: ModelSlot, timeout: float) -> bool:
        """The leader's drain of ``slot`` waits for the followers' requests of it: until no follower reports
        any, in a reading of the store made after they have had time to see the drain and report."""
        if self.role != "leader" or not self.shared(slot) or self._leaving:
            return True  # leaving: this gateway is the last one (else it hands its models over)
        began = time.monotonic()
        end = began + timeout
        settle = began + SETTLE
        while time.monotonic() < end:
            if self._busy_read >= settle and slot.name not in self._busy:
                return True
            await asyncio.sleep(TICK)  # the next turn's reading
        return False

    # -- a follower ------------------------------------------------------------------------------------
    async def _follow(self) -> None:
        slots = [s for s in self._shared_slots() if s.name not in self._work]
        plan = mirror_plan(self.table, slots, self._mirrored)
        by_name = {s.name: s for s in slots}
        for name in plan.start:
            self._begin(name, self._mirror(by_name[name], self.table[name]))
        for name in plan.stop:
            self._begin(name, self._unmirror(by_name[name]))
        wall, mono = time.time(), time.monotonic()
        for slot in self._shared_slots():
            busy = slot.in_flight > 0
            if busy and slot.name not in self._busy_sent:
                await self.store.put(self.keys.busy + f"{slot.name}/{self.id}", True, lease=self.lease)
                self._busy_sent.add(slot.name)
            elif not busy and slot.name in self._busy_sent:
                await self.store.delete(self.keys.busy + f"{slot.name}/{self.id}")
                self._busy_sent.discard(slot.name)
            if slot.state is State.READY and slot.last_used > self._use_sent.get(slot.name, 0.0) + USE_EVERY:
                await self.store.put(self.keys.use + slot.name, wall - (mono - slot.last_used))
                self._use_sent[slot.name] = slot.last_used

    def _begin(self, name: str, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._work[name] = task
        task.add_done_callback(lambda t: self._done(name, t))

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._work.get(name) is task:
            del self._work[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster: mirroring %s failed: %s", name, task.exception())

    async def _mirror(self, slot: ModelSlot, entry: Entry) -> None:
        backends: list[Any] = [MirroredReplica(p, self.engines) for p in entry.replicas]
        if await self.scheduler.mirror(slot, backends):
            self._mirrored[slot.name] = entry
            log.info("cluster: %s ready from the leader's table (%d replicas)", slot.name, len(backends))

    async def _unmirror(self, slot: ModelSlot) -> None:
        self._mirrored.pop(slot.name, None)
        await self.scheduler.unload(slot, "unloaded by the fleet's leader", None)

    # -- running ---------------------------------------------------------------------------------------
    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _quietly(self, work: Awaitable[None]) -> None:
        try:
            await work
        except StoreUnavailable as exc:  # a load request's key: its lease removes it later anyway
            log.warning("cluster: %s", exc)

    async def hand_over(self) -> None:
        """At shutdown, before the scheduler's: a leader with other gateways alive leaves the shared models
        running for the next leader to adopt (followers keep routing to them meanwhile), instead of
        unloading them under the followers' requests. The last gateway out unloads them as a lone one."""
        self._leaving = True
        if self.role != "leader":
            return
        try:
            others = await self.membership.others()
        except StoreUnavailable as exc:
            log.warning("cluster: not handing over (the store is away): %s", exc)
            return
        if not others:
            return
        # Those the next leader can adopt; llama_server processes die with this gateway anyway.
        left = [
            s
            for s in self._shared_slots()
            if s.state is State.READY and (e := self._published.get(s.name)) is not None and e.adoptable
        ]
        for slot in left:
            self.scheduler.abandon(slot)
        log.warning(
            "cluster: leaving %d models running for the next leader (among %s)", len(left), ", ".join(others)
        )
        await self._leave()

    async def _leave(self) -> None:
        self.role = "follower"
        await self.membership.leave()

    async def close(self) -> None:
        """Leave the fleet: revoke the lease (so another gateway leads at once if this one did)."""
        for task in [*self._work.values(), *self._spawned]:
            task.cancel()
        await asyncio.gather(*self._work.values(), *self._spawned, return_exceptions=True)
        await self._leave()
        await self.store.close()

    def describe(self) -> dict[str, Any]:
        """``GET /admin/cluster``."""
        return {
            "cluster": self.cluster,
            "member": self.id,
            "role": self.role,
            "leader": self.leader,
            "leading_since": self.became_leader if self.role == "leader" else None,  # wall clock
            "store": {"endpoints": self.store.endpoints, "connected": self.connected, "error": self.problem},
            "manifests_agree": self.membership.manifests_agree,
            "members": sorted(self.membership.members.values(), key=lambda m: str(m.get("id"))),
            "models": {name: e.as_json() for name, e in sorted(self.table.items())},
        }
