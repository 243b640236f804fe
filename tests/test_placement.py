"""Eviction policy (``gateway.placement.plan``): who is evicted to make room, and why a model cannot fit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.placement import DoesNotFit, Fits, Resident, plan

MiB = 2**20


def idle(name: str, mib: int, last_used: float, **kw: object) -> Resident:
    return Resident(name=name, memory=mib * MiB, last_used=last_used, **kw)  # type: ignore[arg-type]


def test_fits_without_eviction_when_there_is_room() -> None:
    residents = [idle("a", 100, 1.0), idle("b", 100, 2.0)]
    assert plan("c", 50 * MiB, residents, 250 * MiB) == Fits(())


def test_fits_exactly_at_the_budget() -> None:
    assert plan("c", 50 * MiB, [idle("a", 200, 1.0)], 250 * MiB) == Fits(())


def test_least_recently_used_idle_model_goes_first() -> None:
    residents = [idle("recent", 100, 30.0), idle("oldest", 100, 10.0), idle("middle", 100, 20.0)]
    assert plan("new", 100 * MiB, residents, 300 * MiB) == Fits(("oldest",))
    # Needing two models' worth evicts the two least recently used, oldest first.
    assert plan("new", 200 * MiB, residents, 300 * MiB) == Fits(("oldest", "middle"))


def test_busy_models_are_evicted_only_after_every_idle_one() -> None:
    residents = [
        idle("busy-old", 100, 1.0, in_flight=3),
        idle("idle-new", 100, 50.0),
        idle("idle-newer", 100, 60.0),
    ]
    # The busy model is the least recently used, yet the idle ones go first.
    assert plan("new", 100 * MiB, residents, 300 * MiB) == Fits(("idle-new",))
    assert plan("new", 200 * MiB, residents, 300 * MiB) == Fits(("idle-new", "idle-newer"))
    # Only when every idle model is not enough does the busy one go too.
    assert plan("new", 300 * MiB, residents, 300 * MiB) == Fits(("idle-new", "idle-newer", "busy-old"))


def test_pinned_model_is_never_evicted() -> None:
    residents = [idle("pinned", 100, 1.0, pinned=True), idle("other", 100, 2.0)]
    assert plan("new", 100 * MiB, residents, 200 * MiB) == Fits(("other",))
    decision = plan("new", 150 * MiB, residents, 200 * MiB)
    assert isinstance(decision, DoesNotFit)


def test_loading_or_draining_models_count_but_are_never_evicted() -> None:
    residents = [idle("loading", 100, 1.0, evictable=False), idle("ready", 100, 2.0)]
    # "loading" holds 100 MiB: only 100 MiB are free, so 150 MiB needs "ready" evicted, not "loading".
    assert plan("new", 150 * MiB, residents, 300 * MiB) == Fits(("ready",))
    decision = plan("new", 250 * MiB, residents, 300 * MiB)
    assert isinstance(decision, DoesNotFit)
    assert "loading 100 MiB (loading or draining)" in decision.reason


def test_model_bigger_than_the_whole_budget_does_not_fit_and_says_so() -> None:
    decision = plan("huge", 500 * MiB, [], 300 * MiB)
    assert isinstance(decision, DoesNotFit)
    assert "huge" in decision.reason
    assert "500 MiB" in decision.reason and "300 MiB" in decision.reason
    assert "whole budget" in decision.reason


def test_cannot_fit_names_the_pinned_model_holding_memory() -> None:
    residents = [idle("keeper", 200, 1.0, pinned=True), idle("evictable", 50, 2.0)]
    decision = plan("new", 100 * MiB, residents, 250 * MiB)
    assert isinstance(decision, DoesNotFit)
    assert "keeper 200 MiB (pinned)" in decision.reason
    assert "'new' needs 100 MiB" in decision.reason
    assert "250 MiB" in decision.reason
    # The evictable model is not named as a holder: evicting it would not help enough.
    assert "evictable" not in decision.reason


def test_nothing_is_evicted_when_the_target_cannot_fit_anyway() -> None:
    residents = [idle("keeper", 200, 1.0, pinned=True), idle("a", 40, 2.0)]
    # Evicting "a" would free 40 MiB, still not enough: the answer is DoesNotFit, not a useless eviction.
    assert isinstance(plan("new", 100 * MiB, residents, 250 * MiB), DoesNotFit)


def test_already_resident_target_fits_without_eviction() -> None:
    residents = [idle("a", 200, 1.0), idle("b", 100, 2.0)]
    assert plan("a", 200 * MiB, residents, 300 * MiB) == Fits(())


# -- properties ------------------------------------------------------------------------------------------

resident_fields = st.tuples(
    st.integers(min_value=0, max_value=1000),  # memory
    st.booleans(),  # pinned
    st.integers(min_value=0, max_value=3),  # in_flight
    st.floats(min_value=0, max_value=100, allow_nan=False),  # last_used
    st.booleans(),  # evictable
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Resident], int]:
    fields = draw(st.lists(resident_fields, max_size=8))
    residents = [
        Resident(f"m{i}", memory, pinned, in_flight, last_used, evictable)
        for i, (memory, pinned, in_flight, last_used, evictable) in enumerate(fields)
    ]
    return draw(st.integers(min_value=0, max_value=1500)), residents, draw(st.integers(0, 3000))


def rank(r: Resident) -> tuple[bool, float]:
    """Eviction order: idle before busy, then least recently used first."""
    return (r.in_flight > 0, r.last_used)


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_plan_property(scenario: tuple[int, list[Resident], int]) -> None:
    need, residents, budget = scenario
    by_name = {r.name: r for r in residents}
    decision = plan("target", need, residents, budget)

    def fits_after_evicting(names: list[str] | tuple[str, ...]) -> bool:
        return sum(r.memory for r in residents if r.name not in names) + need <= budget

    if isinstance(decision, Fits):
        evict = decision.evict
        assert len(set(evict)) == len(evict)
        assert all(n in by_name for n in evict)
        assert fits_after_evicting(evict)
        for name in evict:
            assert not by_name[name].pinned
            assert by_name[name].evictable
        # Minimal: no strict prefix of the list would have been enough.
        for k in range(len(evict)):
            assert not fits_after_evicting(evict[:k])
        # Idle models go before busy ones, each group least recently used first...
        order = [rank(by_name[n]) for n in evict]
        assert order == sorted(order)
        # ... and no candidate that was kept ranks before one that was evicted.
        kept = [r for r in residents if r.evictable and not r.pinned and r.name not in evict]
        assert all(rank(by_name[n]) <= rank(r) for n in evict for r in kept)
    else:
        assert isinstance(decision, DoesNotFit)
        assert decision.reason
        every_candidate = [r.name for r in residents if r.evictable and not r.pinned]
        assert not fits_after_evicting(every_candidate)
