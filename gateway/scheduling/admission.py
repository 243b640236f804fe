"""Swap-aware admission: when may a model that is not loaded evict one that is busy? Pure: no I/O; the
clock's reading comes in as ``now``.

Serving more models than fit at once means swapping, and a swap costs a load (seconds to minutes) during
which nobody is served. First-come order swaps for nearly every request when clients of several models send
at once: load, serve one request, be evicted, load again (measured on SmolLM2: 43 loads per model per minute,
bench/README.md). The swap-aware policy trades a bounded wait for far fewer swaps:

- a busy resident (requests in flight or queued, or one served within the last ``linger`` seconds: a
  closed-loop client's next request is on its way) is **protected**: a load that would have to evict it
  waits while it serves, and its queue keeps being served;
- until the oldest request waiting for the load has waited ``max_swap_wait`` (per model, with a gateway
  default): then the model gets its turn, busy residents are evicted (drained for the drain grace), and the
  load serves all of its waiting requests at once (they share the one load);
- idle residents are evicted at once, as before; pinned ones never (``placement``);
- **priorities**: a resident busy with batch work only (``X-Priority: batch``, or a batch key) protects
  itself only from loads that batch requests wait for. An interactive request's model does not wait for a
  batch flood's turn to end: the batch model is drained at once (its requests in flight finish) and its
  queued requests wait for their own turn, which their bound still guarantees.

So no request waits for its model longer than its ``max_swap_wait`` plus one drain and one load (the
property test simulates arbitrary arrivals against it), and a model with clients keeps its turn for up to
``max_swap_wait`` instead of one request. ``fifo`` (first come, first served, with the livelock fixed by
the scheduler's reservations) stays available as a setting; ``bench/swap_thrash.py`` compares the two.

A load with no request waiting for it (an operator's ``load``, a pinned model at startup) protects nothing:
the operator asked for it now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["swap-aware", "fifo"]
LINGER = 0.5  # seconds after its last request that a model still counts as busy (a client's next request)


@dataclass(frozen=True)
class Policy:
    mode: Mode = "swap-aware"
    linger: float = LINGER


@dataclass(frozen=True)
class Waiting:
    """The model that wants to load: when its oldest waiting request began (None: no request waits), and
    how long such a request may wait for a swap."""

    oldest: float | None
    max_swap_wait: float
    interactive: bool = True  # an interactive request is among those waiting (else batch requests only)


@dataclass(frozen=True)
class Activity:
    """A resident model's work, as admission sees it."""

    name: str
    in_flight: int
    queued: int
    last_used: float
    interactive: bool = True  # some of its work is interactive (in flight, queued or just served)


@dataclass(frozen=True)
class Admission:
    protected: frozenset[str]  # residents the load may not evict now
    recheck_at: float | None  # when the answer may change without any other event (None: it will not)


OPEN = Admission(frozenset(), None)


def busy(resident: Activity, now: float, linger: float) -> bool:
    return resident.in_flight > 0 or resident.queued > 0 or now - resident.last_used < linger


def admit(target: Waiting, residents: Sequence[Activity], now: float, policy: Policy) -> Admission:
    """Which residents ``target``'s load must leave alone now, and when to ask again."""
    if policy.mode == "fifo" or target.oldest is None:
        return OPEN
    due = target.oldest + target.max_swap_wait
    if now >= due:
        return OPEN  # its turn: the oldest request has waited its bound
    protected = [
        r for r in residents if busy(r, now, policy.linger) and (r.interactive or not target.interactive)
    ]
    if not protected:
        return OPEN
    # Ask again at the bound, or when a resident without work could have stopped counting as busy (one
    # with work: its last request is at least as recent as now, so a linger from now).
    soonest = min(
        r.last_used + policy.linger if r.in_flight == 0 and r.queued == 0 else now + policy.linger
        for r in protected
    )
    return Admission(frozenset(r.name for r in protected), min(due, max(soonest, now)))
