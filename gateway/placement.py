"""Which models to evict so that a target model fits the memory budget. A pure function: no I/O, no clock.

Policy, in the spirit of Ollama and llama-swap:

- memory held by a model counts from the moment its load starts until its unload has finished, so models
  being loaded or drained are never candidates and always count;
- pinned models are never evicted;
- idle models go first, least recently used first; models with requests in flight go only when idle ones are
  not enough (the scheduler drains them with a grace period);
- if evicting every candidate still leaves too little room, nothing is evicted and the answer says who holds
  the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Resident:
    """A model that holds memory now (loading, ready or draining)."""

    name: str
    memory: int
    pinned: bool = False
    in_flight: int = 0
    last_used: float = 0.0
    evictable: bool = True  # False while loading or draining: it is already on its way in or out


@dataclass(frozen=True)
class Fits:
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class DoesNotFit:
    reason: str


Decision = Fits | DoesNotFit


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


def plan(target: str, need: int, residents: Sequence[Resident], budget: int) -> Decision:
    if any(r.name == target for r in residents):
        return Fits()
    if need > budget:
        return DoesNotFit(f"'{target}' needs {_mib(need)}, more than the whole budget of {_mib(budget)}")
    free = budget - sum(r.memory for r in residents)
    if need <= free:
        return Fits()
    candidates = sorted(
        (r for r in residents if r.evictable and not r.pinned),
        key=lambda r: (r.in_flight > 0, r.last_used),
    )
    chosen: list[str] = []
    for r in candidates:
        chosen.append(r.name)
        free += r.memory
        if need <= free:
            return Fits(tuple(chosen))
    holders = ", ".join(
        f"{r.name} {_mib(r.memory)} ({'pinned' if r.pinned else 'loading or draining'})"
        for r in residents
        if r.pinned or not r.evictable
    )
    return DoesNotFit(
        f"'{target}' needs {_mib(need)} but only {_mib(free)} of the {_mib(budget)} budget can be freed; "
        f"held by: {holders or 'nothing else'}"
    )
