"""The life of one model: its state machine, its replicas while loaded, and the leases that keep it resident.

States and the only allowed moves::

    UNLOADED ──► LOADING ──► READY ──► DRAINING ──► UNLOADED
                    │                                  ▲
                    └──────────── (load failed) ───────┘

``ModelSlot._set`` is the single writer of ``state``. The scheduler drives the moves; request handlers only
take and return leases, through ``Scheduler.acquire`` (one entry point, so no caller acts on a stale read).
Memory counts as held from LOADING until the move back to UNLOADED, that is until the engine has let go: the
placement chosen at ``begin_load`` (one option per unit of the model's demand: where each replica, worker or
container goes) says on which devices, and the replicas are built for that placement.
While the slot has a pool (READY and DRAINING), a task probes its replicas' health
(``gateway.routing.health``); it is stopped before the replicas are.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from backends.base import Backend, phase_of
from backends.errors import GatewayError
from backends.kinds import MakeBackends
from gateway.config.manifest import ModelManifest
from gateway.routing.health import start_checks, stop_checks
from gateway.routing.pool import Pool
from gateway.scheduling.learned import Budgeted, manifest_version
from gateway.scheduling.placement import Option, Unit


class State(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"


ALLOWED: dict[State, frozenset[State]] = {
    State.UNLOADED: frozenset({State.LOADING}),
    State.LOADING: frozenset({State.READY, State.UNLOADED}),
    State.READY: frozenset({State.DRAINING}),
    State.DRAINING: frozenset({State.UNLOADED}),
}

HOLDS_MEMORY = frozenset({State.LOADING, State.READY, State.DRAINING})


LOST = Option({})  # in a placement: a unit whose host went down, holding nothing until it is placed again


class IllegalTransition(RuntimeError):
    pass


MAX_BACKOFF = 60.0
PACE_WEIGHT = 0.2  # the weight of the latest request in ``ModelSlot.pace`` (an exponential moving average)


@dataclass
class Failure:
    message: str
    retry_at: float
    count: int


class ModelSlot:
    def __init__(
        self,
        manifest: ModelManifest,
        demand: Sequence[Unit],
        make_backends: MakeBackends,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
        budget: Budgeted | None = None,
        interactive_reserve: int = 0,
        preempt_batch: int = 0,
    ) -> None:
        """``budget``: the figure ``demand`` was asked for (``gateway.scheduling.learned``); None where a test
        gives a demand of its own. ``interactive_reserve``: slots of its pool kept for interactive requests
        (``gateway.routing.fair_queue.batch_limit``); ``preempt_batch``: how many times one batch request
        may be preempted by interactive ones (``gateway.routing.pool``)."""
        self.manifest = manifest
        self.name = manifest.name
        self.demand = demand
        self.budget = budget
        self.placement: tuple[Option, ...] = ()  # chosen while the model holds memory
        self.pinned = manifest.pinned
        self.max_queue = max_queue
        self.interactive_reserve = interactive_reserve
        self.preempt_batch = preempt_batch
        self._make_backends = make_backends
        self._clock = clock
        self.state = State.UNLOADED
        self.failure: Failure | None = None
        self.last_used = 0.0
        self.in_flight = 0
        self.loads = 0  # load attempts, for operators (and the test that concurrent requests share one)
        self.load_seconds: float | None = None  # how long the last successful load took
        self.load_began = 0.0  # when the load under way (or the last one) began
        self.replaced_by: ModelSlot | None = None  # a reload's new version, serving once this one unloads
        self.removed = False  # a reload removed it: once unloaded, requests for it get 404
        self.retired = False  # a reload replaced or removed it: it never loads again
        self._waiting = 0  # requests waiting for the model itself (its load, its drain)
        self._wait_starts: list[float] = []  # when each of them began to wait (at most max_queue + 1)
        self._waiting_clients: list[Hashable] = []  # the clients they came from, where known (as many)
        self.last_client: Hashable | None = None  # the client of the request that ended last, where known
        # Interactive work, for swap-aware admission (``interactive_work``): requests waiting for the model,
        # leases held (a request queued for a replica holds its lease already), and the last one served.
        self._interactive_waits = 0
        self._interactive_leases = 0
        self.last_interactive = float("-inf")
        # How fast its work drains (``pace``): busy seconds per request that ended, from ``_paced_from`` (when
        # it became busy, or the last request ended) to each end; None until a request has ended.
        self.pace: float | None = None
        self._paced_from = 0.0
        self._none_waiting = asyncio.Event()
        self._none_waiting.set()
        self.pool: Pool | None = None
        self._starting: list[Backend] = []  # the replicas a load under way starts (for ``load_phase``)
        self._checks: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = asyncio.Event()

    @functools.cached_property
    def version(self) -> str:
        """The manifest version its learned memory peak is kept under."""
        return manifest_version(self.manifest)

    def rebudget(self, budget: Budgeted, demand: Sequence[Unit]) -> None:
        """Budget the model's next loads with ``budget``'s figure (a higher learned peak). A placement already
        held keeps its claims: the residents' claims only change through a decision (``placement.plan``), so
        they never add up past a budget."""
        self.budget = budget
        self.demand = demand

    # -- state: the one writer -------------------------------------------------------------------------
    def _move(self, expected: State, new: State) -> None:
        """Compare and set: the move happens only from the state the caller expects it to be in."""
        if self.state is not expected or new not in ALLOWED[expected]:
            raise IllegalTransition(f"{self.name}: {self.state} -> {new} (expected {expected})")
        self.state = new
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> bool:
        """Wait for the next state change; False on timeout.

        ``asyncio.timeout``, not ``wait_for``, here and in ``wait_idle``: on Python 3.11 ``wait_for`` swallows
        a cancellation that arrives as the event fires, so a client that left in that instant would have its
        request carry on, load and generate for nobody."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True

    @property
    def waiting(self) -> int:
        """Requests waiting for the model itself (its load, its drain). Once it is ready they take their
        leases as soon as they run: until then, it was loaded for them and must not be evicted."""
        return self._waiting

    def wait_begins(self, interactive: bool = True, client: Hashable | None = None) -> float:
        """A request (of the interactive class, or batch; from ``client``, its connection, where known)
        begins to wait for the model; returns its start, to give back to ``wait_ends``."""
        self._waiting += 1
        self._interactive_waits += interactive
        self._none_waiting.clear()
        began = self._clock()
        self._wait_starts.append(began)
        if client is not None:
            self._waiting_clients.append(client)
        return began

    def wait_ends(self, began: float, interactive: bool = True, client: Hashable | None = None) -> None:
        self._waiting -= 1
        self._interactive_waits -= interactive
        self._wait_starts.remove(began)
        if client is not None:
            self._waiting_clients.remove(client)
        if self._waiting == 0:
            self._none_waiting.set()

    @property
    def oldest_wait(self) -> float | None:
        """When the request that has waited longest for the model began to wait (None: none waits)."""
        return min(self._wait_starts, default=None)

    def waited_for_by(self, client: Hashable | None) -> bool:
        """A request from ``client`` waits for the model itself."""
        return client is not None and client in self._waiting_clients

    @property
    def interactive_waiting(self) -> bool:
        """An interactive request is among those waiting for the model itself."""
        return self._interactive_waits > 0

    def interactive_work(self, now: float, linger: float) -> bool:
        """Some of the model's work is interactive: a request waiting for it, one holding a lease (in flight
        or queued for a replica), or one that ended within ``linger`` (its client's next is on its way)."""
        held = self._interactive_waits > 0 or self._interactive_leases > 0
        return held or now < self.last_interactive + linger  # the sum admission asks again at (``busy``)

    async def waiters_served(self) -> None:
        """Returns once no request waits for the model itself (they have their leases, or gave up)."""
        await self._none_waiting.wait()

    @property
    def queued(self) -> int:
        """Every request waiting: for the model (a load, a drain) or for a free replica."""
        return self.waiting + (self.pool.queued if self.pool else 0)

    @property
    def claims(self) -> Mapping[str, int]:
        """Bytes held per device: those of the placement while loading, ready or draining; else none."""
        held: dict[str, int] = {}
        for option in self.placement:
            for device, n in option.claims.items():
                held[device] = held.get(device, 0) + n
        return held

    @property
    def memory(self) -> int:
        """Bytes held, or, while unloaded, what the model's cheapest placement would hold."""
        if self.placement:
            return sum(o.total for o in self.placement)
        return sum(min((o.total for o in unit), default=0) for unit in self.demand)

    # -- moves, called by the scheduler only -------------------------------------------------------------
    def begin_load(self, choice: Sequence[int]) -> None:
        """Reserve the memory of the placement that ``choice`` picks (one option index per unit). A slot a
        reload replaced or removed never loads again."""
        if self.retired:
            raise IllegalTransition(f"{self.name}: a retired version cannot load")
        self._move(State.UNLOADED, State.LOADING)
        self.placement = tuple(unit[i] for unit, i in zip(self.demand, choice, strict=True))
        self.loads += 1
        self.load_began = self._clock()

    async def start(self) -> None:
        """Start every replica; on any failure, or when cancelled (an operator cancelled the load, or the
        gateway shuts down), stop every replica (those that started and those half way) and re-raise."""
        await self.start_with(self._make_backends(self.placement))

    def begin_mirror(self) -> None:
        """LOADING without a placement of its own: the replicas are another gateway's (cluster mode,
        ``gateway.fleet``), so this gateway's budgets hold nothing for them."""
        if self.retired:
            raise IllegalTransition(f"{self.name}: a retired version cannot load")
        self._move(State.UNLOADED, State.LOADING)
        self.loads += 1
        self.load_began = self._clock()

    def take_over(self, placement: Sequence[Option]) -> None:
        """A mirrored model becomes this gateway's own (it now leads the fleet): it holds ``placement``."""
        assert self.state in HOLDS_MEMORY
        self.placement = tuple(placement)

    async def start_with(self, backends: list[Backend]) -> None:
        """``start`` with the replicas given (made for the placement, or mirrored from the fleet's table)."""
        self._starting = backends
        try:
            results = await asyncio.gather(*(b.start() for b in backends), return_exceptions=True)
        except BaseException:
            await asyncio.shield(asyncio.gather(*(b.stop() for b in backends), return_exceptions=True))
            raise
        finally:
            self._starting = []
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(b.stop() for b in backends))
            raise errors[0]
        self.pool = Pool(
            self.name,
            backends,
            self.max_queue,
            random.Random(),
            reserve=self.interactive_reserve,
            preempt=self.preempt_batch,
        )
        self._checks = start_checks(self.pool, self.manifest.health_check_interval)
        self.failure = None
        self.last_used = self._clock()
        self._move(State.LOADING, State.READY)

    @property
    def load_phase(self) -> str | None:
        """While it loads, what its load is doing: the phase of the first replica still starting that says
        (``backends.base.phase_of``); "starting" when none says."""
        if self.state is not State.LOADING:
            return None
        return next((p for b in self._starting if (p := phase_of(b)) is not None), "starting")

    def load_failed(self, message: str, backoff: float) -> Failure:
        """Back to UNLOADED; requests fail fast until ``retry_at`` (doubling per failure, up to a minute)."""
        count = (self.failure.count + 1) if self.failure else 1
        wait = min(backoff * 2 ** (count - 1), MAX_BACKOFF)
        self.failure = Failure(message, self._clock() + wait, count)
        self.placement = ()
        self._move(State.LOADING, State.UNLOADED)
        return self.failure

    def load_cancelled(self) -> None:
        """Back to UNLOADED after an operator cancelled the load: no failure, no backoff."""
        self.placement = ()
        self._move(State.LOADING, State.UNLOADED)

    def clear_failure(self) -> None:
        """Forget the last failure so that the next request tries to load at once (admin load)."""
        self.failure = None

    def begin_drain(self) -> None:
        self._cut = asyncio.Event()
        self._move(State.READY, State.DRAINING)

    def cut(self) -> None:
        """End a drain now: ``wait_idle`` returns and the requests still running are cut (forced unload)."""
        self._cut.set()

    @property
    def cut_short(self) -> bool:
        """The drain under way was cut (a forced unload)."""
        return self._cut.is_set()

    async def wait_idle(self, grace: float) -> bool:
        """True once no request runs; False when ``grace`` ran out or the drain was cut first."""
        if self._idle.is_set():  # a timeout of 0 would expire even when idle
            return True
        waits = [asyncio.ensure_future(self._idle.wait()), asyncio.ensure_future(self._cut.wait())]
        try:
            await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self._idle.is_set()

    async def finish_unload(self, error: GatewayError) -> int:
        """Fail queued requests, stop the replicas (which ends running ones), and return to UNLOADED."""
        pool, self.pool = self.pool, None
        checks, self._checks = self._checks, None
        cancelled = 0
        try:
            await stop_checks(checks)
            if pool is not None:
                cancelled = pool.fail_waiters(error) + pool.outstanding
                await asyncio.gather(*(r.backend.stop() for r in pool.replicas), return_exceptions=True)
        finally:
            self.placement = ()
            self._move(State.DRAINING, State.UNLOADED)  # even if cancelled: never count the memory forever
        return cancelled

    # -- hosts lost and replaced (``gateway.scheduling.host_loss``) -----------------------------------------
    def units_on(self, host: str) -> list[int]:
        """The units of the placement held on ``host`` (an engine's host: ``Option.engine``)."""
        return [i for i, o in enumerate(self.placement) if o.engine == host]

    def units_lost(self) -> list[int]:
        """The units whose host went down and that are not placed again yet."""
        return [i for i, o in enumerate(self.placement) if o is LOST]

    def lose(self, units: Sequence[int]) -> tuple[list[Backend], bool]:
        """``units`` are on a host that is gone: their memory is released (their options claim nothing any
        more) and their replicas leave the rotation at once. Returns the lost replicas' backends (to stop),
        and whether the model still serves: some replica is left, and no unit lost is a helper of them all
        (an RPC worker: the units past the replicas, by the kinds' convention in ``backends.kinds``)."""
        placement = list(self.placement)
        for i in units:
            placement[i] = LOST
        self.placement = tuple(placement)
        pool = self.pool
        if pool is None:
            return [], False
        lost = [pool.lose(i) for i in units if i < len(pool.replicas)]
        serving = all(i < len(pool.replicas) for i in units) and not all(r.lost for r in pool.replicas)
        return lost, serving

    def place(self, units: Sequence[int], options: Sequence[Option]) -> list[Backend]:
        """Hold ``options``' memory for ``units`` (lost ones), and make their new replicas (not started)."""
        placement = list(self.placement)
        for i, option in zip(units, options, strict=True):
            placement[i] = option
        self.placement = tuple(placement)
        backends = self._make_backends(self.placement)
        return [backends[i] for i in units]

    def unplace(self, unit: int) -> None:
        """A replacement for ``unit`` did not start: it holds nothing."""
        placement = list(self.placement)
        placement[unit] = LOST
        self.placement = tuple(placement)

    @property
    def health_checks(self) -> asyncio.Task[None] | None:
        """The running health-check task, if any (for tests and operators)."""
        return self._checks

    # -- leases ------------------------------------------------------------------------------------------
    def lease(self, interactive: bool = True, client: Hashable | None = None) -> Lease:
        assert self.state is State.READY and self.pool is not None
        if self.in_flight == 0:
            self._paced_from = self._clock()  # busy from now
        self.in_flight += 1
        self._idle.clear()
        self.last_used = self._clock()
        if interactive:
            self._interactive_leases += 1
            self.last_interactive = self.last_used
        return Lease(self, self.pool, interactive, client)

    def _return(self, interactive: bool, client: Hashable | None = None) -> None:
        self.in_flight -= 1
        self.last_used = self._clock()
        self.last_client = client
        took, self._paced_from = self.last_used - self._paced_from, self.last_used
        self.pace = took if self.pace is None else self.pace + PACE_WEIGHT * (took - self.pace)
        if interactive:
            self._interactive_leases -= 1
            self.last_interactive = self.last_used
        if self.in_flight == 0:
            self._idle.set()


class Lease:
    """Held from the moment a request is admitted to a ready model until its response is finished."""

    def __init__(
        self, slot: ModelSlot, pool: Pool, interactive: bool = True, client: Hashable | None = None
    ) -> None:
        self.slot = slot
        self.pool = pool
        self.interactive = interactive  # the request's priority class (swap-aware admission)
        self.client = client  # the connection it came on, where known (swap-aware admission's linger)
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.slot._return(self.interactive, self.client)
