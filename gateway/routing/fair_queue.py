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
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
T = TypeVar("T")


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

    def pop(self, now: float) -> T | None:
        """The next live item, or None when none waits."""
        while self._count:
            item = self._classes[self._next_class(now)].pop()
            self._count -= 1
            if not self._dead(item):
                return item
        return None

    def _next_class(self, now: float) -> Priority:
        interactive, batch = self._classes["interactive"], self._classes["batch"]
        if not interactive.lines:
            return "batch"
        oldest_batch = batch.oldest()
        if oldest_batch is not None and now - oldest_batch >= self.aging:
            return "batch"
        return "interactive"

    def items(self) -> list[T]:
        return [item for c in self._classes.values() for line in c.lines.values() for _, item in line]

    def compact(self) -> None:
        """Forget dead items (bounds the memory of requests that gave up while others kept waiting)."""
        for c in self._classes.values():
            c.drop(self._dead)
        self._count = sum(len(line) for c in self._classes.values() for line in c.lines.values())
