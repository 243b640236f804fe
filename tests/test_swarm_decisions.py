"""The swarm engine's pure parts (its nodes and tasks read from the Engine API's JSON, the service spec) and
the host-loss hook over the real ``Scheduler`` and ``ModelSlot`` with in-memory backends: what happens to
the models on a host at the moment it is reported down, and once they are recovered.
(``tests/test_swarm.py`` runs all of it against a real swarm.)"""

from __future__ import annotations

import asyncio
from typing import Any

from backends.base import ReplicaInfo
from backends.docker.interface import ContainerRun
from backends.swarm.nodes import changes, parse_nodes, task_state
from backends.swarm.spec import service_kwargs
from gateway.config.manifest import ModelManifest
from gateway.scheduling.host_loss import HostLoss
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.placement import Option
from gateway.scheduling.scheduler import Scheduler

GiB = 2**30


def node(node_id: str, hostname: str, state: str = "ready", **extra: Any) -> dict[str, Any]:
    return {
        "ID": node_id,
        "Description": {"Hostname": hostname, "Resources": {"MemoryBytes": 8 * GiB, **extra.pop("res", {})}},
        "Status": {"State": state, "Addr": "10.0.0.9"},
        "Spec": {"Availability": extra.pop("availability", "active"), "Labels": extra.pop("labels", {})},
    }


def test_nodes_are_named_addressed_and_counted_as_their_labels_and_resources_say() -> None:
    gpus = [
        {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}},
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-1"}},
        {"DiscreteResourceSpec": {"Kind": "fpga", "Value": 4}},
    ]
    found = parse_nodes(
        [
            node("n1aaaaaaaa", "vm", labels={"llm-gateway.name": "a", "llm-gateway.address": "127.0.0.1"}),
            node(
                "n2bbbbbbbb", "vm", res={"GenericResources": gpus}, labels={"llm-gateway.gpu-memory": "1024"}
            ),
            node("n3cccccccc", "vm", state="down"),
            node("n4dddddddd", "other", availability="drain"),
        ]
    )
    assert [n.name for n in found] == ["a", "vm-n2bbbb", "vm-n3cccc", "other"]
    assert [n.address for n in found] == ["127.0.0.1", "10.0.0.9", "10.0.0.9", "10.0.0.9"]
    assert [n.up for n in found] == [True, True, False, False]  # down and drained nodes are not up
    assert (found[1].gpus, found[1].gpu_memory, found[0].gpus) == (3, 1024, 0)
    assert found[0].memory == 8 * GiB


def test_hosts_that_went_down_and_came_back() -> None:
    before = {"s.a": True, "s.b": True, "s.c": False}
    assert changes(before, {"s.a": True, "s.b": False, "s.c": True}) == (["s.b"], ["s.c"])
    assert changes(before, {"s.a": True}) == (["s.b"], [])  # a node removed from the swarm is down
    assert changes(before, before) == ([], [])


def task(state: str, created: str, code: int | None = None, err: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Err": err}
    if code is not None:
        status["ContainerStatus"] = {"ExitCode": code}
    return {"CreatedAt": created, "Status": status}


def test_a_services_restarts_and_when_swarm_gives_up() -> None:
    assert task_state([task("running", "1")], 3).restarts == 0
    once = task_state([task("running", "2"), task("failed", "1", 137, "task: non-zero exit (137)")], 3)
    assert (once.running, once.restarts, once.given_up) == (True, 1, False)
    assert once.last_exit == "failed: exit code 137: task: non-zero exit (137)"
    ended = [task("failed", str(i), 1) for i in range(4)]
    assert task_state(ended, 3).given_up and task_state(ended, 3).exit_code == 1
    assert not task_state(ended[:3], 3).given_up  # a restart may still come


def test_a_replica_as_a_service_pinned_to_its_node_with_its_gpus() -> None:
    run = ContainerRun(
        image="img",
        command=["--model", "/models/m.gguf", "--port", "8080"],
        port=8080,
        mounts={"/srv/models": ("/models", "ro")},
        gpu_ids=(1, 3),
    ).on_port(20001)
    labels = {"llm-gateway.model": "m"}
    kwargs = service_kwargs(run, "llmgw-m", labels, "NODE", stop_grace=2, restart_attempts=3)
    assert kwargs["args"] == ["--model", "/models/m.gguf", "--port", "20001"]
    assert kwargs["constraints"] == ["node.id==NODE"] and kwargs["networks"] == ["host"]
    assert kwargs["labels"] == kwargs["container_labels"] == labels
    assert kwargs["mounts"] == ["/srv/models:/models:ro"]
    assert "NVIDIA_VISIBLE_DEVICES=1,3" in kwargs["env"] and "PORT=20001" in kwargs["env"]
    reserved = kwargs["resources"]["Reservations"]["GenericResources"]
    assert reserved == [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]
    assert kwargs["stop_grace_period"] == 2_000_000_000
    assert kwargs["restart_policy"]["MaxAttempts"] == 3


class Fake:
    """An in-memory replica: it starts and stops, and says where it was placed."""

    capacity = 1

    def __init__(self, host: str | None) -> None:
        self.host = host
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def health(self) -> bool:
        return True

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo(engine=self.host)

    async def forward(self, request: Any) -> Any:
        raise NotImplementedError


HOSTS = ("s.a", "s.b")
DEVICES = {h: [f"{h}:ram"] for h in HOSTS}


def slot(name: str, replicas: int, hosts: tuple[str, ...] = HOSTS, memory: int = GiB) -> ModelSlot:
    manifest = ModelManifest.model_validate(
        {"name": name, "health_check_interval": "1h", "backend": {"kind": "llama_cpp", "model": __file__}}
    )
    unit = [Option({f"{h}:ram": memory}, engine=h) for h in hosts]
    return ModelSlot(manifest, [unit] * replicas, lambda placement: [Fake(o.engine) for o in placement], 4)


def placed(s: ModelSlot) -> list[str | None]:
    assert s.pool is not None
    return [r.backend.describe().engine for r in s.pool.replicas if not r.lost]


def test_a_lost_host_takes_its_replicas_out_at_once_and_they_are_placed_again() -> None:
    async def run() -> None:
        spread, alone, other = (
            slot("spread", 2),
            slot("alone", 1, hosts=("s.b", "s.a")),
            slot("other", 1, ("s.a",)),
        )
        scheduler = Scheduler(
            [spread, alone, other],
            {"s.a:ram": 8 * GiB, "s.b:ram": 8 * GiB},
            drain_grace=0,
            load_failure_backoff=0,
        )
        for s in (other, spread, alone):
            (await scheduler.acquire(s, 5)).release()
        assert sorted(placed(spread)) == ["s.a", "s.b"] and placed(alone) == ["s.b"]
        other_pool = other.pool
        loss = HostLoss(scheduler, DEVICES)

        loss.host_down("s.b")
        # at once, before anything awaits: out of rotation, memory released, the host not placeable
        assert spread.pool is not None and [r.lost for r in spread.pool.replicas].count(True) == 1
        assert scheduler.used()["s.b:ram"] == 0 and scheduler.budgets["s.b:ram"] == 0
        assert spread.state is State.READY  # it serves on from the replica left

        await asyncio.wait_for(asyncio.gather(*loss._tasks), 5)
        assert placed(spread) == ["s.a", "s.a"]  # the lost replica placed again, beside the other
        await asyncio.wait_for(scheduler.load(alone), 5)  # none was left: unloaded, and loaded again
        assert alone.state is State.READY and placed(alone) == ["s.a"]
        assert other.pool is other_pool and other.loads == 1  # untouched
        assert scheduler.used() == {"s.a:ram": 4 * GiB, "s.b:ram": 0}

        loss.host_up("s.b")
        assert scheduler.budgets["s.b:ram"] == 8 * GiB
        await scheduler.shutdown()

    asyncio.run(run())


def test_lost_replicas_that_fit_nowhere_serve_from_fewer_until_their_host_is_back() -> None:
    async def run() -> None:
        spread = slot("spread", 2, memory=6 * GiB)
        scheduler = Scheduler(
            [spread], {"s.a:ram": 8 * GiB, "s.b:ram": 8 * GiB}, drain_grace=0, load_failure_backoff=0
        )
        (await scheduler.acquire(spread, 5)).release()
        loss = HostLoss(scheduler, DEVICES)
        loss.host_down("s.b")
        await asyncio.wait_for(asyncio.gather(*loss._tasks), 5)
        assert placed(spread) == ["s.a"] and spread.state is State.READY
        assert scheduler.used() == {"s.a:ram": 6 * GiB, "s.b:ram": 0}
        loss.host_up("s.b")  # back: the replica that fitted nowhere is placed again there
        await asyncio.wait_for(asyncio.gather(*loss._tasks), 5)
        assert sorted(placed(spread)) == ["s.a", "s.b"] and spread.loads == 1
        assert scheduler.used() == {"s.a:ram": 6 * GiB, "s.b:ram": 6 * GiB}
        await scheduler.shutdown()

    asyncio.run(run())


def test_a_placement_never_names_a_lost_host_twice() -> None:
    # host_down is idempotent: a second report of the same host changes nothing
    async def run() -> None:
        spread = slot("spread", 2)
        scheduler = Scheduler(
            [spread], {"s.a:ram": 8 * GiB, "s.b:ram": 8 * GiB}, drain_grace=0, load_failure_backoff=0
        )
        (await scheduler.acquire(spread, 5)).release()
        loss = HostLoss(scheduler, DEVICES)
        loss.host_down("s.b")
        loss.host_down("s.b")
        await asyncio.wait_for(asyncio.gather(*loss._tasks), 5)
        assert placed(spread) == ["s.a", "s.a"] and spread.loads == 1
        await scheduler.shutdown()

    asyncio.run(run())


class Slow(Fake):
    """A replica whose start waits until it is told to finish (a load under way)."""

    def __init__(self, host: str | None, gate: asyncio.Event) -> None:
        super().__init__(host)
        self.gate = gate

    async def start(self) -> None:
        await self.gate.wait()
        self.running = True


def test_a_load_under_way_onto_a_lost_host_is_started_again_on_the_hosts_left() -> None:
    async def run() -> None:
        gate = asyncio.Event()
        manifest = ModelManifest.model_validate(
            {"name": "m", "health_check_interval": "1h", "backend": {"kind": "llama_cpp", "model": __file__}}
        )
        made: list[Slow] = []

        def make(placement: Any) -> list[Any]:
            made.extend(Slow(o.engine, gate) for o in placement)
            return made[-len(placement) :]

        unit = [Option({f"{h}:ram": GiB}, engine=h) for h in ("s.b", "s.a")]
        m = ModelSlot(manifest, [unit], make, 4)
        scheduler = Scheduler(
            [m], {"s.a:ram": 8 * GiB, "s.b:ram": 9 * GiB}, drain_grace=0, load_failure_backoff=0
        )
        first = scheduler.load(m)
        await m.wait_change(5)  # to LOADING: the placement is chosen
        assert m.placement[0].engine == "s.b"
        loss = HostLoss(scheduler, DEVICES)
        loss.host_down("s.b")
        assert scheduler.used()["s.b:ram"] == 0
        await asyncio.wait_for(asyncio.gather(*loss._tasks), 5)
        assert first.cancelled() and m.state is State.LOADING and m.placement[0].engine == "s.a"
        gate.set()
        await asyncio.wait_for(scheduler.load(m), 5)
        assert m.state is State.READY and placed(m) == ["s.a"] and m.failure is None
        await scheduler.shutdown()

    asyncio.run(run())
