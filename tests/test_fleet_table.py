"""The fleet's pure parts, and the scheduler's seam for cluster mode, without etcd or engines: the table's
entries and what changes in them, a follower's mirroring plan, the manifests' digest, and a scheduler whose
loads are delegated (a follower's) making a model ready from the table without holding memory, then owning
it (a new leader's take-over) with its placement back in the budgets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from backends.base import ReplicaInfo
from backends.demand import Option
from gateway.config.loading import LoadedManifest
from gateway.config.manifest import ModelManifest
from gateway.config.settings import Settings
from gateway.control.build import build_hosts
from gateway.fleet.table import Entry, Published, changes, digest, mirror_plan
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.scheduler import Scheduler

MiB = 2**20
REPLICA = Published(url="http://127.0.0.1:1", capacity=4, devices=("e1:ram",), engine="e1", container="c1")


def manifest(name: str) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": name,
            "health_check_interval": "0",
            "backend": {"kind": "remote", "endpoints": [{"url": "http://127.0.0.1:1"}]},
        }
    )


class Upstream:
    """A replica that records its life."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @property
    def capacity(self) -> int:
        return 1

    async def start(self) -> None:
        self.log.append("start")

    async def stop(self) -> None:
        self.log.append("stop")

    async def health(self) -> bool:
        return True

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo(url="http://127.0.0.1:1")

    async def forward(self, request: Any) -> Any:
        raise NotImplementedError


def slot(name: str, log: list[str]) -> ModelSlot:
    demand = [[Option({"e1:ram": 100 * MiB}, engine="e1")]]
    return ModelSlot(manifest(name), demand, lambda _: [Upstream(log)], max_queue=4)


def test_changes_write_what_differs_and_delete_what_is_gone() -> None:
    ready = Entry("ready", (REPLICA,))
    published = {"a": ready, "b": Entry("unloaded"), "gone": ready}
    now = {"a": ready, "b": Entry("loading"), "new": Entry("unloaded")}
    writes, deletes = changes(published, now)
    assert writes == {"b": Entry("loading"), "new": Entry("unloaded")}
    assert deletes == ["gone"]


def test_an_entry_survives_the_store_and_says_whether_a_new_leader_can_adopt_it() -> None:
    placement = ({"claims": {"e1:ram": 100 * MiB}, "engine": "e1", "gpus": [0]},)
    entry = Entry("ready", (REPLICA,), placement, None, None)
    again = Entry.from_json(entry.as_json())
    assert again == entry
    assert again.adoptable
    assert again.options() == (Option({"e1:ram": 100 * MiB}, engine="e1", gpus=(0,)),)
    process = Entry("ready", (Published(url="http://127.0.0.1:2", capacity=1, process=True),))
    assert process.ready and not process.adoptable  # a llama_server process died with its gateway
    assert not Entry("ready").ready  # ready without replicas: nothing to route to
    assert Entry.from_json({"nonsense": 1}) is None


def test_a_follower_mirrors_ready_entries_and_stops_when_they_go_or_move() -> None:
    log: list[str] = []
    a, b, c, d = (slot(n, log) for n in "abcd")
    for s in (b, c, d):
        s.state = State.READY  # as if mirrored
    moved = Published(url="http://127.0.0.1:9", capacity=4)
    table = {"a": Entry("ready", (REPLICA,)), "b": Entry("draining"), "c": Entry("ready", (moved,))}
    table["d"] = Entry("ready", (REPLICA,))
    mirrored = {"b": Entry("ready", (REPLICA,)), "c": Entry("ready", (REPLICA,)), "d": table["d"]}
    plan = mirror_plan(table, [a, b, c, d], mirrored)
    assert plan.start == ["a"]
    assert plan.stop == ["b", "c"]  # b: drained by the leader; c: its replica moved (a restart)


def test_the_manifests_digest_ignores_order_and_sees_any_change(tmp_path: Path) -> None:
    one, two = LoadedManifest(manifest("a"), tmp_path / "a"), LoadedManifest(manifest("b"), tmp_path / "b")
    changed = manifest("b").model_copy(update={"pinned": True})
    assert digest([one, two]) == digest([two, one])
    assert digest([one, two]) != digest([one, LoadedManifest(changed, tmp_path / "b")])


def test_cluster_settings_take_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CLUSTER_ETCD", "127.0.0.1:2379, 127.0.0.1:2380")
    settings = Settings()
    assert settings.cluster_etcd == ["127.0.0.1:2379", "127.0.0.1:2380"]
    assert settings.cluster_name == "default" and settings.cluster_ttl == 10.0
    monkeypatch.delenv("GATEWAY_CLUSTER_ETCD")
    assert Settings().cluster_etcd == []  # alone by default


def test_a_swarm_engine_is_refused_in_cluster_mode(tmp_path: Path) -> None:
    """A swarm engine removes the services of its instance that it does not track; in a fleet the instance
    label is shared, so a gateway joining would remove the leader's: refused at startup, with the reason."""
    swarm = Settings(
        manifests=tmp_path,
        engines=[{"name": "sw", "kind": "swarm", "url": "unix:///nonexistent.sock"}],
        cluster_etcd=["127.0.0.1:1"],
    )
    with pytest.raises(ValueError, match="swarm engines are not supported in cluster mode"):
        build_hosts(swarm)


class Follower:
    """A delegate as a follower is: every load goes to the leader, which 'loads' by publishing."""

    def __init__(self, sched: Scheduler, log: list[str]) -> None:
        self.sched = sched
        self.log = log
        self.asked: list[str] = []

    def delegates(self, slot: ModelSlot) -> bool:
        return True

    async def request(self, slot: ModelSlot) -> None:
        self.asked.append(slot.name)
        await self.sched.mirror(slot, [Upstream(self.log)])  # the table says ready: mirrored

    async def drained(self, slot: ModelSlot, timeout: float) -> bool:
        return True


def test_a_delegated_load_is_mirrored_without_holding_memory_until_taken_over() -> None:
    async def run() -> None:
        log: list[str] = []
        a = slot("a", log)
        sched = Scheduler([a], {"e1:ram": 150 * MiB}, drain_grace=1, load_failure_backoff=1)
        follower = Follower(sched, log)
        sched.delegate = follower
        leases = await asyncio.gather(*(sched.acquire(a, timeout=10) for _ in range(3)))
        for lease in leases:
            lease.release()
        assert follower.asked == ["a"]  # concurrent requests share one request to the leader
        assert a.state is State.READY and log == ["start"]  # the mirror's replica, not a load here
        assert sched.used() == {"e1:ram": 0}  # the leader's budgets hold it, not this gateway's
        await sched.take_over(a, a.demand[0][:1])  # elected: the model is this gateway's now
        assert sched.used() == {"e1:ram": 100 * MiB}
        assert await sched.unload(a, "test")
        assert log == ["start", "stop"] and sched.used() == {"e1:ram": 0}

    asyncio.run(run())
