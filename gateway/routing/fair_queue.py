"""The order in which a model's waiting requests get a free replica: priority classes, then fairness between
API keys, then arrival. A data structure with no I/O; the clock's reading comes in as ``now``.

- **Classes**: ``interactive`` (the default) goes ahead of ``batch``. A key's class comes from the settings
  (``GATEWAY_KEY_PRIORITIES``); a request may lower its own with ``X-Priority: batch``, never raise it.
- **Aging**: a batch request that has waited ``aging`` seconds goes ahead of interactive ones, so a steady
  interactive load never starves batch work; it only slows it.
- **Fairness between keys** of a class: each key has its own FIFO line and the lines take turns, one request
  each (deficit round robin with a quantum of one request, as every request costs one replica slot). A key
  that floods a model waits behind its own requests, not in front of everyone else's: another key's request
  is at most one turn per waiting key away from a replica.
- **Capacity kept for interactive work** (``interactive_reserve``): on a model with several slots (replicas,
  or slots of one engine: llama-server's ``--parallel``, vLLM's ``max_num_seqs``), batch requests may hold
  at most ``batch_limit`` of them at once, so that a batch flood leaves ``reserve`` slots free and an
  interactive request that comes is served at once instead of waiting for a batch request to end (a slot
  taken cannot be taken back: nothing is preempted). Interactive requests may use every slot. The reserve
  never shuts batch work out: batch may always hold at least one slot (``batch_limit``), and a queue whose
  next batch request may not start yet serves its interactive ones (``FairQueue.take``). Batch requests
  still age ahead of interactive ones for the slots they may use, so they are slowed, never starved.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
T = TypeVar("T")


def batch_limit(capacity: int, reserve: int) -> int:
    """How many of a model's ``capacity`` slots (those in rotation, summed over its replicas) batch requests
    may hold at once: all but ``reserve``, and at least one (so a reserve as large as the model, or a
    replica out of rotation, never shuts batch work out). A model with one slot keeps none back."""
    if capacity <= 0:
        return 0
    return max(capacity - max(reserve, 0), 1)


class _Class(Generic[T]):
    """One priority class: a FIFO line per key, the keys taking turns."""

    def __init__(self) -> None:
        self.lines: OrderedDict[str, deque[tuple[float, T]]] = OrderedDict()

    def push(self, key: str, since: float, item: T) -> None:
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = deque()
        line.append((since, item))

    def oldest(self) -> float | None:
        """When the longest-waiting head of any line arrived."""
        return min((line[0][0] for line in self.lines.values()), default=None)

    def pop(self) -> T:
        key, line = next(iter(self.lines.items()))
        _, item = line.popleft()
        del self.lines[key]
        if line:
            self.lines[key] = line  # its next request waits for its next turn: to the back of the round
        return item

    def drop_dead_heads(self, dead: Callable[[T], bool]) -> int:
        """Forget the dead items at the heads of the lines (what ``oldest`` and the next ``pop`` see); how
        many."""
        dropped = 0
        for key in list(self.lines):
            line = self.lines[key]
            while line and dead(line[0][1]):
                line.popleft()
                dropped += 1
            if not line:
                del self.lines[key]
        return dropped

    def drop(self, dead: Callable[[T], bool]) -> None:
        for key in list(self.lines):
            line = deque(entry for entry in self.lines[key] if not dead(entry[1]))
            if line:
                self.lines[key] = line
            else:
                del self.lines[key]


class FairQueue(Generic[T]):
    """Waiting items (a request's future), taken in the order this module's docstring gives."""

    def __init__(self, aging: float, dead: Callable[[T], bool] = lambda _: False) -> None:
        """``dead``: items to skip and forget (a request that gave up)."""
        self.aging = aging
        self._dead = dead
        self._classes: dict[Priority, _Class[T]] = {p: _Class() for p in PRIORITIES}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, item: T, key: str, priority: Priority, now: float) -> None:
        self._classes[priority].push(key, now, item)
        self._count += 1

    def pop(self, now: float, batch: bool = True) -> T | None:
        """The next live item, or None when none waits (``take`` without the class)."""
        taken = self.take(now, batch)
        return None if taken is None else taken[0]

    def take(self, now: float, batch: bool = True) -> tuple[T, Priority] | None:
        """The next live item and its class, or None when none waits. ``batch`` False: a batch request may not
        start now (batch holds all the slots it may, ``batch_limit``): the next interactive item, even behind
        an aged batch one (the free slot is not left idle), or None when only batch items wait."""
        while self._count:
            priority = self.next_class(now, batch)
            if priority is None:
                return None
            item = self._classes[priority].pop()
            self._count -= 1
            if not self._dead(item):
                return item, priority
        return None

    def next_class(self, now: float, batch_allowed: bool = True) -> Priority | None:
        """The class whose item ``take`` would give next. Requests that gave up at the heads of the lines are
        forgotten first: a batch request that timed out in the queue must not count as aged."""
        for c in self._classes.values():
            self._count -= c.drop_dead_heads(self._dead)
        interactive, batch = self._classes["interactive"], self._classes["batch"]
        if not batch_allowed or not batch.lines:
            return "interactive" if interactive.lines else None
        if not interactive.lines:
            return "batch"
        oldest_batch = batch.oldest()
        if oldest_batch is not None and now - oldest_batch >= self.aging:
            return "batch"
        return "interactive"

    def items(self, priority: Priority | None = None) -> list[T]:
        """The items waiting (of ``priority``'s class only, when given), dead ones included."""
        classes = self._classes.values() if priority is None else [self._classes[priority]]
        return [item for c in classes for line in c.lines.values() for _, item in line]

    def compact(self) -> None:
        """Forget dead items (bounds the memory of requests that gave up while others kept waiting)."""
        for c in self._classes.values():
            c.drop(self._dead)
        self._count = sum(len(line) for c in self._classes.values() for line in c.lines.values())
