"""This gateway's membership of the fleet: its lease, its ``members/<id>`` document, the election of the
leader, and the other members as the last turn read them (with the check that they all serve the same
manifests). ``gateway.fleet.node`` calls these once per turn; every call may raise ``StoreUnavailable``.

- The lease (``ttl``) is refreshed every third of it. One that expired (the store was out of reach longer
  than the TTL) is replaced by a new one, and ``keep_lease`` says so: a leader must then step down.
- The election: ``leader`` is created only where absent, on this member's lease; it goes with the lease.
- Manifests: each member publishes a digest of its manifests; a difference is logged as an error whenever
  the set of digests changes, and ``manifests_agree`` says it to ``/admin/cluster``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.fleet.store import Store, StoreUnavailable
from gateway.fleet.table import Keys, Snapshot

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self, store: Store, keys: Keys, member: str, url: str, ttl: float, digest: Callable[[], str]
    ) -> None:
        self.store = store
        self.keys = keys
        self.id = member
        self.url = url
        self.ttl = ttl
        self.digest = digest
        self.started = time.time()
        self.lease: int | None = None
        self.leader: str | None = None
        self.members: dict[str, dict[str, Any]] = {}
        self._refreshed = 0.0
        self._doc: dict[str, Any] | None = None
        self._mismatch_logged: frozenset[str] = frozenset()

    async def keep_lease(self) -> bool:
        """Refresh the lease when due (or take one); True when the previous one had expired."""
        now = time.monotonic()
        if self.lease is not None and now - self._refreshed < self.ttl / 3:
            return False
        lost = False
        if self.lease is not None and not await self.store.refresh(self.lease):
            log.error("cluster: this gateway's lease expired (the store was out of reach too long)")
            self.lease, self._doc, lost = None, None, True
        if self.lease is None:
            self.lease = await self.store.grant(self.ttl)
        self._refreshed = now
        return lost

    def lease_stale(self) -> bool:
        """Not refreshed for longer than the TTL: the store may have let it expire."""
        return time.monotonic() - self._refreshed > self.ttl

    async def elect(self, snapshot: Snapshot) -> str:
        """The leader's id, this member's if no one leads."""
        assert self.lease is not None
        leader = snapshot.get("leader")
        if leader is None:
            leader = await self.store.create(self.keys.leader, self.id, self.lease)
        self.leader = str(leader)
        return self.leader

    async def publish(self, leading: bool, snapshot: Snapshot) -> None:
        """This member's document (written when it changes), and every member's as the turn read them."""
        doc = {"id": self.id, "url": self.url, "started": self.started, "manifests": self.digest()}
        doc["leader"] = leading
        if doc != self._doc:
            await self.store.put(self.keys.members + self.id, doc, lease=self.lease)
            self._doc = doc
        found = snapshot.under("members/")
        found[self.id] = doc
        self.members = {k: v for k, v in found.items() if isinstance(v, dict)}
        digests = frozenset(str(m.get("manifests")) for m in self.members.values())
        if len(digests) > 1 and digests != self._mismatch_logged:
            by = {mid: m.get("manifests") for mid, m in self.members.items()}
            log.error("cluster: the gateways serve DIFFERENT manifests (digest by member: %s)", by)
        self._mismatch_logged = digests if len(digests) > 1 else frozenset()

    @property
    def manifests_agree(self) -> bool:
        return len({m.get("manifests") for m in self.members.values()}) <= 1

    def leader_differs(self) -> bool:
        """The leader serves other manifests than this gateway."""
        doc = self.members.get(self.leader or "")
        return doc is not None and doc.get("manifests") != self.digest()

    async def others(self) -> list[str]:
        """The other members alive now, read from the store."""
        return sorted(m for m in await self.store.prefix(self.keys.members) if m != self.id)

    async def leave(self) -> None:
        """Revoke the lease: this member's keys go, and another gateway leads at once if this one did."""
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                await self.store.revoke(lease)
            except StoreUnavailable as exc:
                log.warning("cluster: leaving without revoking the lease (it expires by itself): %s", exc)
