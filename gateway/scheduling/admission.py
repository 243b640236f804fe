"""Swap-aware admission: when may a model that is not loaded evict one that is busy? Pure: no I/O; the
clock's reading comes in as ``now``.

Serving more models than fit at once means swapping, and a swap costs a load (seconds to minutes) during
which nobody is served. First-come order swaps for nearly every request when clients of several models send
at once: load, serve one request, be evicted, load again (measured on SmolLM2: 43 loads per model per minute,
bench/README.md). The swap-aware policy trades a bounded wait for far fewer swaps:

- a busy resident (requests in flight or queued, or one served within the last ``linger`` seconds: a
  closed-loop client's next request is on its way) is **protected**: a load that would have to evict it
  waits while it serves, and its queue keeps being served;
- until its turn: the oldest request waiting for the load must have its model within ``max_swap_wait`` (per
  model, with a gateway default), and a swap takes time (the busy residents' drain: their requests in
  flight finish; then the load), so the turn comes that much earlier: at the oldest request's start plus
  ``max_swap_wait`` less the expected drain and load (``turn_due``: the model's last load time, the
  residents' requests in flight times their measured pace), and earlier still when other loads wait
  behind it (each waits for this swap, then evicts this model: its turn must leave room for theirs).
  Never earlier than ``floor`` of ``max_swap_wait``: a busy model keeps a turn worth having even when
  loads are slow. Then the busy
  residents are evicted (drained for the drain grace), and the load serves all of its waiting requests at
  once (they share the one load);
- idle residents are evicted at once, as before; pinned ones never (``placement``);
- **priorities**: a resident busy with batch work only (``X-Priority: batch``, or a batch key) protects
  itself only from loads that batch requests wait for. An interactive request's model does not wait for a
  batch flood's turn to end: the batch model is drained at once (its requests in flight finish) and its
  queued requests wait for their own turn, which their bound still guarantees.

So a request waits for its model about ``max_swap_wait`` at most when the estimates hold, and never longer
than ``max_swap_wait`` plus one drain and one load (the property tests simulate arbitrary arrivals against
it, with loads and drains that take time), and a model with clients keeps its turn for up to
``max_swap_wait`` (less a swap's time) instead of one request. ``fifo`` (first come, first served, with the
livelock fixed by the scheduler's reservations) stays available as a setting; ``bench/swap_thrash.py``
compares the two.

A load with no request waiting for it (an operator's ``load``, a pinned model at startup) protects nothing:
the operator asked for it now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["swap-aware", "fifo"]
LINGER = 0.5  # seconds after its last request that a model still counts as busy (a client's next request)
FLOOR = 0.5  # a turn comes no earlier than this fraction of max_swap_wait, however long a swap may take
# A turn comes this fraction of max_swap_wait before the estimates say it must: loads and drains measured on
# a busy machine vary from one to the next (bench/swap_thrash.py saw one wait in a thousand past the bound
# without it).
MARGIN = 0.05
# A turn due within this many seconds is due now: a timer set for the rest could wake before it (the rest is
# a difference of floats), and asking again at once would wait for it again.
DUE_WITHIN = 1e-6


@dataclass(frozen=True)
class Policy:
    mode: Mode = "swap-aware"
    linger: float = LINGER
    floor: float = FLOOR
    margin: float = MARGIN


@dataclass(frozen=True)
class Waiting:
    """The model that wants to load: when its oldest waiting request began (None: no request waits), and
    how long such a request may wait for a swap."""

    oldest: float | None
    max_swap_wait: float
    interactive: bool = True  # an interactive request is among those waiting (else batch requests only)
    load: float = 0.0  # seconds its load is expected to take (its last load's)
    # For each load queued behind this one (it waits for this one's swap, then evicts it): the latest this
    # one's turn may begin, before the residents' drain, for that load to keep its own bound
    # (``Scheduler._behind``).
    behind: tuple[float, ...] = ()


@dataclass(frozen=True)
class Activity:
    """A resident model's work, as admission sees it."""

    name: str
    in_flight: int
    queued: int
    last_used: float
    interactive: bool = True  # some of its work is interactive (in flight, queued or just served)
    drain: float = 0.0  # seconds its work in flight is expected to take to end (``expected_drain``)


@dataclass(frozen=True)
class Admission:
    protected: frozenset[str]  # residents the load may not evict now
    recheck_at: float | None  # when the answer may change without any other event (None: it will not)


OPEN = Admission(frozenset(), None)


def busy(resident: Activity, now: float, linger: float) -> bool:
    """Work in flight or queued, or its last request ended within ``linger``. The linger's end is
    ``last_used + linger``, the very sum ``admit`` asks again at. Written as ``now - last_used < linger``,
    rounding kept a resident busy at that instant (512.2492132783482 - 511.74921327834824 reads
    0.49999999999994), and the load asked again at once, forever (tests/test_admission.py)."""
    return resident.in_flight > 0 or resident.queued > 0 or now < resident.last_used + linger


def expected_drain(in_flight: int, pace: float | None, grace: float) -> float:
    """How long a resident's requests in flight (leases: in service, or queued for a replica) are expected
    to take to end: one ``pace`` each (the busy seconds per request that ended, measured: its service time
    over its concurrency), at most the drain ``grace`` (then they are cut)."""
    return min(in_flight * (pace or 0.0), grace)


def turn_due(target: Waiting, drain: float, policy: Policy) -> float:
    """When ``target``'s turn comes (``target.oldest`` set): early enough for the residents' ``drain`` and its
    own load to end within ``max_swap_wait``, and for the loads queued behind it to keep theirs
    (``target.behind``), with ``policy.margin`` of its ``max_swap_wait`` to spare for the estimates' errors;
    never before ``policy.floor`` of its ``max_swap_wait``."""
    assert target.oldest is not None
    wait, drain = target.max_swap_wait, max(drain, 0.0)
    own = target.oldest + wait - (max(target.load, 0.0) + drain)
    latest = min([own, *(later - drain for later in target.behind)]) - policy.margin * wait
    return max(latest, target.oldest + policy.floor * wait)


def admit(target: Waiting, residents: Sequence[Activity], now: float, policy: Policy) -> Admission:
    """Which residents ``target``'s load must leave alone now, and when to ask again."""
    if policy.mode == "fifo" or target.oldest is None:
        return OPEN
    protected = [
        r for r in residents if busy(r, now, policy.linger) and (r.interactive or not target.interactive)
    ]
    if not protected:
        return OPEN
    due = turn_due(target, max(r.drain for r in protected), policy)
    if now >= due - DUE_WITHIN:
        return OPEN  # its turn: its oldest request has its model within its bound if the swap is on time
    # Ask again at the bound, or when a resident without work could have stopped counting as busy (one
    # with work: its last request is at least as recent as now, so a linger from now).
    soonest = min(
        r.last_used + policy.linger if r.in_flight == 0 and r.queued == 0 else now + policy.linger
        for r in protected
    )
    return Admission(frozenset(r.name for r in protected), min(due, max(soonest, now)))
