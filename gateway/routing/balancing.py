"""Which replica serves the next request. A pure function over a snapshot of the replicas.

Least outstanding requests with power-of-two choices: sample two replicas that have a free slot and take the
less loaded (relative to its capacity). It keeps the spread of a full least-loaded scan without every
request herding onto the same "least loaded" replica. A preferred replica (affinity, to reuse a prompt
cache) wins when it has a free slot; when it is full or down, the choice degrades to least-loaded.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    index: int
    outstanding: int
    capacity: int
    healthy: bool = True

    @property
    def has_room(self) -> bool:
        return self.healthy and self.outstanding < self.capacity


def preferred_replica(key: str, count: int) -> int:
    """Rendezvous hashing: the same key maps to the same replica, and to the same one among the rest when
    another replica goes away."""
    return max(range(count), key=lambda i: zlib.crc32(f"{i}:{key}".encode()))


def choose(replicas: Sequence[ReplicaView], rng: random.Random, preferred: int | None = None) -> int | None:
    """The index of the replica to use, or None when every replica is full or down (the caller queues)."""
    open_ = [r for r in replicas if r.has_room]
    if not open_:
        return None
    if preferred is not None:
        for r in open_:
            if r.index == preferred:
                return r.index
    if len(open_) == 1:
        return open_[0].index
    a, b = rng.sample(open_, 2)
    return min((a, b), key=lambda r: (r.outstanding / r.capacity, r.outstanding)).index
