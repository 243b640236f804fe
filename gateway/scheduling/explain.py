"""The dry run of a load: would this model fit now, what would loading it evict, and what would each device
hold after. Pure, and built on ``placement.plan``, the function a real load calls with the same residents and
budgets, so that the plan and the load cannot disagree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.scheduling.placement import DoesNotFit, Resident, Unit, plan


@dataclass(frozen=True)
class Plan:
    model: str
    fits: bool
    already_loaded: bool = False
    evict: tuple[str, ...] = ()  # in the order the load would evict them
    drain: tuple[str, ...] = ()  # of those, the ones with requests in flight (drained, then cut)
    blocked_by: tuple[tuple[str, str], ...] = ()  # (model, why it cannot make room) when it does not fit
    placement: tuple[tuple[str, ...], ...] = ()  # the devices each unit (replica, worker) would use
    used_after: Mapping[str, int] | None = None  # bytes per device after the load (now, if it does not fit)
    reason: str | None = None  # why it does not fit


def held(residents: Sequence[Resident], budgets: Mapping[str, int]) -> dict[str, int]:
    used = dict.fromkeys(budgets, 0)
    for r in residents:
        for device, n in r.claims.items():
            used[device] = used.get(device, 0) + n
    return used


def explain(
    target: str, units: Sequence[Unit], residents: Sequence[Resident], budgets: Mapping[str, int]
) -> Plan:
    used = held(residents, budgets)
    decision = plan(target, units, residents, budgets)
    if isinstance(decision, DoesNotFit):
        needed = {d for unit in units for option in unit for d in option.claims}
        blocked = tuple(
            (r.name, "pinned" if r.pinned else "loading or draining")
            for r in residents
            if (r.pinned or not r.evictable) and any(r.claims.get(d, 0) for d in needed)
        )
        return Plan(target, fits=False, blocked_by=blocked, used_after=used, reason=decision.reason)
    if not decision.choice:  # already resident
        return Plan(target, fits=True, already_loaded=True, used_after=used)
    by_name = {r.name: r for r in residents}
    for name in decision.evict:
        for device, n in by_name[name].claims.items():
            used[device] -= n
    chosen = [unit[i] for unit, i in zip(units, decision.choice, strict=True)]
    for option in chosen:
        for device, n in option.claims.items():
            used[device] = used.get(device, 0) + n
    return Plan(
        target,
        fits=True,
        evict=decision.evict,
        drain=tuple(n for n in decision.evict if by_name[n].in_flight > 0),
        placement=tuple(tuple(sorted(o.claims)) for o in chosen),
        used_after=used,
    )
