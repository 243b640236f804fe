"""Eviction policy (``gateway.scheduling.placement.plan``): who is evicted to make room, and why a model
cannot fit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.scheduling.placement import HOST, DoesNotFit, Fits, Option, Resident, plan

MiB = 2**20


def idle(name: str, mib: int, last_used: float, **kw: object) -> Resident:
    return Resident(name=name, claims={HOST: mib * MiB}, last_used=last_used, **kw)  # type: ignore[arg-type]


def single(target: str, need: int, residents: list[Resident], budget: int) -> Fits | DoesNotFit:
    """The one-device case: a model on the gateway's own machine."""
    return plan(target, [[Option({HOST: need})]], residents, {HOST: budget})


def memory(r: Resident) -> int:
    return sum(r.claims.values())


def test_fits_without_eviction_when_there_is_room() -> None:
    residents = [idle("a", 100, 1.0), idle("b", 100, 2.0)]
    assert single("c", 50 * MiB, residents, 250 * MiB) == Fits((), (0,))


def test_fits_exactly_at_the_budget() -> None:
    assert single("c", 50 * MiB, [idle("a", 200, 1.0)], 250 * MiB) == Fits((), (0,))


def test_least_recently_used_idle_model_goes_first() -> None:
    residents = [idle("recent", 100, 30.0), idle("oldest", 100, 10.0), idle("middle", 100, 20.0)]
    assert single("new", 100 * MiB, residents, 300 * MiB) == Fits(("oldest",), (0,))
    # Needing two models' worth evicts the two least recently used, oldest first.
    assert single("new", 200 * MiB, residents, 300 * MiB) == Fits(("oldest", "middle"), (0,))


def test_busy_models_are_evicted_only_after_every_idle_one() -> None:
    residents = [
        idle("busy-old", 100, 1.0, in_flight=3),
        idle("idle-new", 100, 50.0),
        idle("idle-newer", 100, 60.0),
    ]
    # The busy model is the least recently used, yet the idle ones go first.
    assert single("new", 100 * MiB, residents, 300 * MiB) == Fits(("idle-new",), (0,))
    assert single("new", 200 * MiB, residents, 300 * MiB) == Fits(("idle-new", "idle-newer"), (0,))
    # Only when every idle model is not enough does the busy one go too.
    assert single("new", 300 * MiB, residents, 300 * MiB) == Fits(
        ("idle-new", "idle-newer", "busy-old"), (0,)
    )


def test_pinned_model_is_never_evicted() -> None:
    residents = [idle("pinned", 100, 1.0, pinned=True), idle("other", 100, 2.0)]
    assert single("new", 100 * MiB, residents, 200 * MiB) == Fits(("other",), (0,))
    decision = single("new", 150 * MiB, residents, 200 * MiB)
    assert isinstance(decision, DoesNotFit)


def test_loading_or_draining_models_count_but_are_never_evicted() -> None:
    residents = [idle("loading", 100, 1.0, evictable=False), idle("ready", 100, 2.0)]
    # "loading" holds 100 MiB: only 100 MiB are free, so 150 MiB needs "ready" evicted, not "loading".
    assert single("new", 150 * MiB, residents, 300 * MiB) == Fits(("ready",), (0,))
    decision = single("new", 250 * MiB, residents, 300 * MiB)
    assert isinstance(decision, DoesNotFit)
    assert "loading 100 MiB (loading or draining)" in decision.reason


def test_model_bigger_than_the_whole_budget_does_not_fit_and_says_so() -> None:
    decision = single("huge", 500 * MiB, [], 300 * MiB)
    assert isinstance(decision, DoesNotFit)
    assert "huge" in decision.reason
    assert "500 MiB" in decision.reason and "300 MiB" in decision.reason
    assert "whole budget" in decision.reason


def test_cannot_fit_names_the_pinned_model_holding_memory() -> None:
    residents = [idle("keeper", 200, 1.0, pinned=True), idle("evictable", 50, 2.0)]
    decision = single("new", 100 * MiB, residents, 250 * MiB)
    assert isinstance(decision, DoesNotFit)
    assert "keeper 200 MiB (pinned)" in decision.reason
    assert "'new' needs 100 MiB" in decision.reason
    assert "250 MiB" in decision.reason
    # The evictable model is not named as a holder: evicting it would not help enough.
    assert "evictable" not in decision.reason


def test_nothing_is_evicted_when_the_target_cannot_fit_anyway() -> None:
    residents = [idle("keeper", 200, 1.0, pinned=True), idle("a", 40, 2.0)]
    # Evicting "a" would free 40 MiB, still not enough: the answer is DoesNotFit, not a useless eviction.
    assert isinstance(single("new", 100 * MiB, residents, 250 * MiB), DoesNotFit)


def test_already_resident_target_fits_without_eviction() -> None:
    residents = [idle("a", 200, 1.0), idle("b", 100, 2.0)]
    assert single("a", 200 * MiB, residents, 300 * MiB) == Fits()


# -- devices: GPUs and hosts -----------------------------------------------------------------------------

GPU0, GPU1, A, B = "a:gpu0", "a:gpu1", "a:ram", "b:ram"


def on(name: str, claims: dict[str, int], last_used: float, **kw: object) -> Resident:
    return Resident(name, {d: n * MiB for d, n in claims.items()}, last_used=last_used, **kw)  # type: ignore[arg-type]


def opt(engine: str, **claims: int) -> Option:
    return Option({d.replace("_", ":"): n * MiB for d, n in claims.items()}, engine=engine)


def test_a_model_on_one_gpu_never_evicts_one_on_another() -> None:
    residents = [on("old-on-gpu0", {GPU0: 70}, 1.0), on("new-on-gpu1", {GPU1: 70}, 9.0)]
    budgets = {GPU0: 80 * MiB, GPU1: 80 * MiB}
    # The target can only go on GPU 1: the holder there goes, though the one on GPU 0 is older.
    decision = plan("t", [[opt("a", a_gpu1=40)]], residents, budgets)
    assert decision == Fits(("new-on-gpu1",), (0,))


def test_a_gpu_with_room_is_chosen_over_evicting_on_a_full_one() -> None:
    residents = [on("holder", {GPU0: 70}, 1.0)]
    budgets = {GPU0: 80 * MiB, GPU1: 80 * MiB}
    decision = plan("t", [[opt("a", a_gpu0=40), opt("a", a_gpu1=40)]], residents, budgets)
    assert decision == Fits((), (1,))


def test_multi_gpu_claim_evicts_only_on_the_gpu_that_is_short() -> None:
    residents = [on("on-gpu0", {GPU0: 50}, 1.0), on("on-gpu1", {GPU1: 10}, 2.0)]
    budgets = {GPU0: 80 * MiB, GPU1: 80 * MiB}
    # 60 MiB on each: GPU 1 has room (70 free), GPU 0 does not (30 free).
    assert plan("t", [[opt("a", a_gpu0=60, a_gpu1=60)]], residents, budgets) == Fits(("on-gpu0",), (0,))


def test_replicas_spread_over_hosts_and_a_full_host_is_not_used() -> None:
    budgets = {A: 100 * MiB, B: 100 * MiB}
    two_replicas = [[opt("a", a_ram=40), opt("b", b_ram=40)]] * 2
    assert plan("t", two_replicas, [], budgets) == Fits((), (0, 1))
    # Host A is full with a pinned model: both replicas go to host B, nothing is evicted.
    residents = [on("pinned", {A: 90}, 1.0, pinned=True)]
    assert plan("t", two_replicas, residents, budgets) == Fits((), (1, 1))


def test_a_model_on_host_a_never_makes_room_on_host_b() -> None:
    residents = [on("on-a", {A: 90}, 1.0), on("on-b", {B: 90}, 5.0, pinned=True)]
    decision = plan("t", [[opt("b", b_ram=50)]], residents, {A: 100 * MiB, B: 100 * MiB})
    assert isinstance(decision, DoesNotFit)
    assert "on b:ram" in decision.reason and "on-b 90 MiB (pinned)" in decision.reason
    assert "on-a" not in decision.reason


def test_no_engine_to_run_on_says_so() -> None:
    decision = plan("t", [[]], [], {HOST: 100 * MiB})
    assert isinstance(decision, DoesNotFit) and "no engine" in decision.reason


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
        Resident(f"m{i}", {HOST: mib}, pinned, in_flight, last_used, evictable)
        for i, (mib, pinned, in_flight, last_used, evictable) in enumerate(fields)
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
    decision = single("target", need, residents, budget)

    def fits_after_evicting(names: list[str] | tuple[str, ...]) -> bool:
        return sum(memory(r) for r in residents if r.name not in names) + need <= budget

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
        # ... and no candidate that was kept ranks before one that was evicted (a model that holds nothing
        # is never evicted: it would free nothing).
        kept = [r for r in residents if r.evictable and not r.pinned and memory(r) and r.name not in evict]
        assert all(rank(by_name[n]) <= rank(r) for n in evict for r in kept)
    else:
        assert isinstance(decision, DoesNotFit)
        assert decision.reason
        every_candidate = [r.name for r in residents if r.evictable and not r.pinned]
        assert not fits_after_evicting(every_candidate)


DEVICES = ["h:ram", "h:gpu0", "h:gpu1", "g:ram", "g:gpu0"]
claims_st = st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 100), min_size=1, max_size=3)


@st.composite
def device_scenarios(draw: st.DrawFn) -> tuple[list[list[Option]], list[Resident], dict[str, int]]:
    budgets = {d: draw(st.integers(0, 200)) for d in DEVICES}
    residents: list[Resident] = []
    for i in range(draw(st.integers(0, 6))):
        claims = draw(claims_st)
        held = {d: sum(r.claims.get(d, 0) for r in residents) for d in DEVICES}
        if all(held[d] + n <= budgets[d] for d, n in claims.items()):  # residents start within budget
            residents.append(
                Resident(
                    f"m{i}",
                    claims,
                    draw(st.booleans()),
                    draw(st.integers(0, 2)),
                    float(i),
                    draw(st.booleans()),
                )
            )
    units = draw(st.lists(st.lists(claims_st.map(Option), min_size=1, max_size=3), min_size=1, max_size=3))
    return units, residents, budgets


@settings(max_examples=500, deadline=None)
@given(device_scenarios())
def test_no_device_budget_is_ever_exceeded(
    scenario: tuple[list[list[Option]], list[Resident], dict[str, int]],
) -> None:
    units, residents, budgets = scenario
    decision = plan("target", units, residents, budgets)
    if isinstance(decision, Fits):
        evicted = set(decision.evict)
        kept = [r for r in residents if r.name not in evicted]
        chosen = [unit[i] for unit, i in zip(units, decision.choice, strict=True)]
        for d, budget in budgets.items():
            held = sum(r.claims.get(d, 0) for r in kept) + sum(o.claims.get(d, 0) for o in chosen)
            assert held <= budget, d
        for r in residents:
            if r.name in evicted:
                assert r.evictable and not r.pinned
                # Evicted only for a device the target uses.
                assert any(r.claims.get(d, 0) for o in chosen for d in o.claims)
    elif len(units) == 1:
        # One unit: not even evicting every candidate makes any of its options fit.
        free = {
            d: budgets[d] - sum(r.claims.get(d, 0) for r in residents if r.pinned or not r.evictable)
            for d in DEVICES
        }
        assert not any(all(n <= free[d] for d, n in o.claims.items()) for o in units[0])
