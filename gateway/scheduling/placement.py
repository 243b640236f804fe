"""Where a model goes, and which models to evict so that it fits. A pure function: no I/O, no clock.

Memory is budgeted per **device**: a named pool with its own budget. The gateway's own machine is one device
(``host``, the ``--memory-budget``); each Docker engine adds its RAM (``<engine>:ram``) and each of its GPUs
(``<engine>:gpu<i>``). A model's demand is a list of **units** (a replica's container, an RPC worker...), and
each unit has one or more **options**, the alternative places it could go, each claiming bytes on some
devices. ``plan`` picks one option per unit and the evictions that make room.

Policy, in the spirit of Ollama and llama-swap, per device:

- memory held by a model counts from the moment its load starts until its unload has finished, so models
  being loaded or drained are never candidates and always count;
- pinned models are never evicted, and a model is only evicted for a device it holds memory on: a model on
  GPU 0 never makes room on GPU 1, one on host A never makes room on host B;
- idle models go first, least recently used first; models with requests in flight go only when idle ones are
  not enough (the scheduler drains them with a grace period);
- among a unit's options, the one that evicts fewest models wins, then the one that shares fewest devices
  with the model's other units (replicas spread over hosts and GPUs), then the one with the most room left;
- if no choice fits, nothing is evicted and the answer says which devices are short and who holds them.

The invariant (a property test checks it): after any ``Fits``, no device holds more than its budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from backends.demand import HOST, Option, Unit

__all__ = ["HOST", "DoesNotFit", "Fits", "Option", "Resident", "Unit", "plan"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Resident:
    """A model that holds memory now (loading, ready or draining)."""

    name: str
    claims: Mapping[str, int]
    pinned: bool = False
    in_flight: int = 0
    last_used: float = 0.0
    evictable: bool = True  # False while loading or draining: it is already on its way in or out


@dataclass(frozen=True)
class Fits:
    evict: tuple[str, ...] = ()
    choice: tuple[int, ...] = ()  # the option picked for each unit; () when the target is already resident


@dataclass(frozen=True)
class DoesNotFit:
    reason: str


Decision = Fits | DoesNotFit


def mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


@dataclass
class _Room:
    """What is free per device, as evictions and chosen options are applied during one decision."""

    budgets: Mapping[str, int]
    free: dict[str, int] = field(default_factory=dict)

    def short(self, claims: Mapping[str, int]) -> dict[str, int]:
        return {d: n - self.free.get(d, 0) for d, n in claims.items() if n > self.free.get(d, 0)}

    def add(self, claims: Mapping[str, int], sign: int) -> None:
        for d, n in claims.items():
            self.free[d] = self.free.get(d, 0) + sign * n


def plan(
    target: str, units: Sequence[Unit], residents: Sequence[Resident], budgets: Mapping[str, int]
) -> Decision:
    if any(r.name == target for r in residents):
        return Fits()
    for unit in units:
        if not any(_within_budgets(o, budgets) for o in unit):
            return DoesNotFit(_never_fits(target, unit, budgets))
    room = _Room(budgets, dict(budgets))
    for r in residents:
        room.add(r.claims, -1)
    candidates = sorted(
        (r for r in residents if r.evictable and not r.pinned),
        key=lambda r: (r.in_flight > 0, r.last_used),
    )
    evicted: list[Resident] = []
    chosen: list[Option] = []
    choice: list[int] = []
    for unit in units:
        best: tuple[tuple[int, int, int], int, list[Resident]] | None = None
        for i, option in enumerate(unit):
            if not _within_budgets(option, budgets):
                continue
            extra = _evictions(option, room, [c for c in candidates if c not in evicted])
            if extra is None:
                continue
            shared = sum(1 for o in chosen for d in o.claims if d in option.claims)
            headroom = min((room.free.get(d, 0) - n for d, n in option.claims.items()), default=0)
            score = (len(extra), shared, -headroom)
            if best is None or score < best[0]:
                best = (score, i, extra)
        if best is None:
            remaining = [c for c in candidates if c not in evicted]
            return DoesNotFit(_short_reason(target, unit, room, residents, remaining))
        _, index, extra = best
        for r in extra:
            room.add(r.claims, +1)
        evicted += extra
        room.add(unit[index].claims, -1)
        chosen.append(unit[index])
        choice.append(index)
    return Fits(tuple(r.name for r in evicted), tuple(choice))


def _within_budgets(option: Option, budgets: Mapping[str, int]) -> bool:
    return all(d in budgets and n <= budgets[d] for d, n in option.claims.items())


def _evictions(option: Option, room: _Room, candidates: Sequence[Resident]) -> list[Resident] | None:
    """The candidates to evict, in order, so that ``option`` fits; None when even all of them are not enough.
    Only a candidate holding memory on a device that is short is taken."""
    short = room.short(option.claims)
    taken: list[Resident] = []
    for r in candidates:
        if not short:
            break
        if any(r.claims.get(d, 0) > 0 for d in short):
            taken.append(r)
            short = {d: n - r.claims.get(d, 0) for d, n in short.items() if n > r.claims.get(d, 0)}
    return None if short else taken


def _where(device: str) -> str:
    return "" if device == HOST else f" on {device}"


def _never_fits(target: str, unit: Unit, budgets: Mapping[str, int]) -> str:
    if not unit:
        return (
            f"'{target}' has nowhere to run: no engine it may use has what it asks for (the engines it "
            "names, enough GPUs)"
        )
    option = unit[0]
    if len(unit) == 1 and len(option.claims) == 1:
        device, need = next(iter(option.claims.items()))
        if device not in budgets:
            return f"'{target}' needs device {device}, which is not configured"
        return (
            f"'{target}' needs {mib(need)}{_where(device)}, more than the whole budget of "
            f"{mib(budgets[device])}"
        )
    needs = ", ".join(f"{mib(n)} on {d}" for d, n in option.claims.items())
    return (
        f"'{target}' needs {needs} (or as much on another of its {len(unit)} places), more than the whole "
        "budget of every device it may use"
    )


def _short_reason(
    target: str, unit: Unit, room: _Room, residents: Sequence[Resident], candidates: Sequence[Resident]
) -> str:
    """Why the unit's first option that is within the budgets cannot be made to fit."""
    option = next(o for o in unit if _within_budgets(o, room.budgets))
    parts = []
    for device, need in option.claims.items():
        freeable = room.free.get(device, 0) + sum(r.claims.get(device, 0) for r in candidates)
        if need > freeable:
            parts.append(
                f"'{target}' needs {mib(need)}{_where(device)} but only {mib(max(freeable, 0))} of the "
                f"{mib(room.budgets[device])} budget can be freed"
            )
    holders = ", ".join(
        f"{r.name} {mib(sum(r.claims.values()))} ({'pinned' if r.pinned else 'loading or draining'})"
        for r in residents
        if (r.pinned or not r.evictable) and any(r.claims.get(d, 0) for d in option.claims)
    )
    more = f" (and {len(unit) - 1} other places it may go)" if len(unit) > 1 else ""
    return f"{'; '.join(parts) or f'{target} does not fit'}{more}; held by: {holders or 'nothing else'}"
