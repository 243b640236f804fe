"""The fleet's shared state as data: where each key lives in etcd, the leader's routing table (one entry per
model: its state, its replicas, the placement that holds its memory, its last load error), members, and the
pure decisions made from them. No I/O here: ``gateway.fleet.node`` reads and writes the store.

Keys, under ``/llm-gateway/<cluster>/``:

- ``members/<id>``: each gateway, on its lease (id, url, started, manifest digest, leader or not);
- ``leader``: the id of the leader, on its lease, created only where absent (the election);
- ``models/<name>``: the leader's table entry of each shared model (not on a lease: followers keep routing
  from it while a new leader is elected);
- ``loads/<name>/<member>``: a follower's request for a load, on its lease;
- ``pins/<name>``: true or false, set through any gateway's admin API;
- ``use/<name>``: the last use of a model on a follower (wall-clock seconds), for the leader's LRU and TTL;
- ``inflight/<name>/<member>``: present (on the member's lease) while a follower has requests of the model
  running, so that the leader's drain of a model waits for them as for its own;
- ``reload``: changed by ``POST /admin/reload`` on any gateway; every gateway reloads when it changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from backends.demand import Option
from gateway.config.loading import LoadedManifest
from gateway.scheduling.lifecycle import ModelSlot, State


class Keys:
    def __init__(self, cluster: str) -> None:
        self.root = f"/llm-gateway/{cluster}/"
        self.members = self.root + "members/"
        self.leader = self.root + "leader"
        self.models = self.root + "models/"
        self.loads = self.root + "loads/"
        self.pins = self.root + "pins/"
        self.use = self.root + "use/"
        self.busy = self.root + "inflight/"
        self.reload = self.root + "reload"

    def load(self, model: str, member: str) -> str:
        return f"{self.loads}{model}/{member}"


class Snapshot:
    """Every key of the fleet, read in one call at the start of a turn (one round trip to etcd, however
    many kinds of keys a turn looks at), by path under the fleet's root."""

    def __init__(self, found: Mapping[str, Any]) -> None:
        self.found = found

    def get(self, key: str) -> Any:
        return self.found.get(key)

    def under(self, prefix: str) -> dict[str, Any]:
        return {k[len(prefix) :]: v for k, v in self.found.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class Published:
    """One replica as the table gives it: enough for another gateway to route to it, and for a new leader
    to adopt it (``container`` on ``engine``) or know it cannot (``process``: it died with its gateway)."""

    url: str
    capacity: int
    devices: tuple[str, ...] = ()
    engine: str | None = None
    container: str | None = None
    process: bool = False
    metrics_url: str | None = None  # the engine's own metrics: scraped by the leader only


@dataclass(frozen=True)
class Entry:
    state: str
    replicas: tuple[Published, ...] = ()
    placement: tuple[Mapping[str, Any], ...] = ()  # each unit's Option: claims, engine, gpus
    error: str | None = None  # the last load failed: why
    retry_at: float | None = None  # wall clock: the leader does not try again before

    @property
    def ready(self) -> bool:
        return self.state == State.READY and bool(self.replicas)

    @property
    def adoptable(self) -> bool:
        """Its replicas outlive the gateway that started them (containers, remote servers)."""
        return self.ready and not any(r.process for r in self.replicas)

    def options(self) -> tuple[Option, ...]:
        return tuple(
            Option(dict(p["claims"]), engine=p.get("engine"), gpus=tuple(p.get("gpus", ())))
            for p in self.placement
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Entry | None:
        if not isinstance(raw, dict):
            return None
        try:
            replicas = tuple(
                Published(**{**r, "devices": tuple(r.get("devices", ()))}) for r in raw.get("replicas", ())
            )
            return cls(
                state=str(raw["state"]),
                replicas=replicas,
                placement=tuple(raw.get("placement", ())),
                error=raw.get("error"),
                retry_at=raw.get("retry_at"),
            )
        except (KeyError, TypeError):
            return None


def entry_of(slot: ModelSlot, wall: float, mono: float) -> Entry:
    """What the leader publishes about ``slot`` now (``wall``/``mono``: the two clocks, read together)."""
    failure = slot.failure
    error, retry_at = None, None
    if failure is not None and slot.state is State.UNLOADED:
        error = failure.message
        retry_at = round(wall + (failure.retry_at - mono), 1)  # rounded: the entry changes once per failure
    replicas: tuple[Published, ...] = ()
    if slot.pool is not None and slot.state is State.READY:
        infos = [(r.backend.describe(), r.backend.capacity) for r in slot.pool.replicas]
        replicas = tuple(
            Published(
                url=i.url,
                capacity=cap,
                devices=tuple(i.devices),
                engine=i.engine,
                container=i.container,
                process=i.pid is not None,
                metrics_url=i.metrics_url,
            )
            for i, cap in infos
            if i.url
        )
    placement = tuple(
        {"claims": dict(o.claims), "engine": o.engine, "gpus": list(o.gpus)} for o in slot.placement
    )
    return Entry(str(slot.state), replicas, placement, error, retry_at)


def changes(published: Mapping[str, Entry], now: Mapping[str, Entry]) -> tuple[dict[str, Entry], list[str]]:
    """What to write (new or changed entries) and what to delete, to turn ``published`` into ``now``."""
    writes = {name: e for name, e in now.items() if published.get(name) != e}
    return writes, [name for name in published if name not in now]


@dataclass(frozen=True)
class Mirror:
    """What a follower does to match its mirrored slots to the table: start mirroring ``start``, stop
    mirroring ``stop`` (the leader unloaded them, or their replicas moved)."""

    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)


def mirror_plan(
    table: Mapping[str, Entry], slots: Iterable[ModelSlot], mirrored: Mapping[str, Entry]
) -> Mirror:
    """``slots``: the delegated ones; ``mirrored``: the entry each READY mirror was made from."""
    plan = Mirror()
    for slot in slots:
        entry = table.get(slot.name)
        if slot.state is State.UNLOADED and entry is not None and entry.ready:
            plan.start.append(slot.name)
        elif slot.state is State.READY:
            made = mirrored.get(slot.name)
            if entry is None or not entry.ready or (made is not None and made.replicas != entry.replicas):
                plan.stop.append(slot.name)
    return plan


def digest(manifests: Iterable[LoadedManifest]) -> str:
    """A short fingerprint of the manifests served (every gateway of a fleet should serve the same)."""
    docs = sorted(json.dumps(m.manifest.model_dump(mode="json"), sort_keys=True) for m in manifests)
    return hashlib.sha256("\n".join(docs).encode()).hexdigest()[:16]
