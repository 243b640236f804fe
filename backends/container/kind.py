"""The ``container`` kind declared to the registry (``backends.kinds``): what its manifests ask of the
devices, its memory estimate, and its replicas for a placement (which engine and GPUs each container gets, and
the preset that generates its spec).

Demand:

- a container replica is one unit, with an option per engine it may use (and, with GPUs, per set of that
  engine's GPUs): on RAM without GPUs; with GPUs, a ``vllm`` container claims ``gpu_memory_utilization`` of
  each GPU it gets (that is what vLLM takes, whatever the model), and the others their estimate split evenly
  over their GPUs;
- a llama.cpp model with RPC worker containers: each worker is a unit on its named engine, claiming its
  declared memory; the server claims the estimate less what the workers hold (at least a tenth of the
  estimate, for its KV cache and buffers).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from backends.base import Backend
from backends.container.presets import llamacpp_run, raw_run, rpc_worker_run, vllm_run
from backends.container.spec import (
    PRESETS,
    ContainerBackend,
    LlamaCppContainer,
    RawContainer,
    RpcWorker,
    VllmContainer,
)
from backends.demand import EngineDevices, Option, Unit
from backends.docker.interface import ContainerEngine, ContainerRun, Placed
from backends.errors import UpstreamUnavailable
from backends.gguf.memory import estimate_gguf
from backends.kinds import Hosts, MakeBackends, Model

MAX_GPU_SETS = 64  # options per engine: placement stays cheap on an 8-GPU host asked for 4

Spec = LlamaCppContainer | VllmContainer | RawContainer


class ContainerKind:
    name = "container"
    spec: Any = ContainerBackend
    tags: frozenset[str] = PRESETS

    def check(self, spec: Spec, memory: int | None) -> None:
        if isinstance(spec, RawContainer) and memory is None:
            raise ValueError("a raw container's memory cannot be estimated: give memory (for all replicas)")
        if isinstance(spec, VllmContainer) and memory is not None:
            raise ValueError(
                "a vllm container holds gpu_memory_utilization of each GPU: memory does not apply"
            )
        if isinstance(spec, LlamaCppContainer) and memory is None and not Path(spec.model).is_file():
            raise ValueError(
                f"backend.model {spec.model} is not on this machine, so its memory cannot be estimated: "
                "give memory (for all replicas)"
            )

    def estimate(self, spec: Spec) -> tuple[int, str]:
        if isinstance(spec, VllmContainer):
            return 0, f"vllm: {spec.gpu_memory_utilization:g} of each GPU"
        if isinstance(spec, RawContainer):
            return 0, "raw container: no estimate (the manifest must give memory)"
        # a llama.cpp container's GGUF is on this machine (else ``check`` required memory)
        return estimate_gguf(Path(spec.model), spec, spec.replicas, server_slots=spec.parallel)

    def demand(self, spec: Spec, total: int, hosts: Hosts) -> list[Unit]:
        allowed = [e for e in hosts.inventory if not spec.engines or {e.name, e.engine} & set(spec.engines)]
        per_replica = total // spec.replicas
        workers = spec.rpc_workers if isinstance(spec, LlamaCppContainer) else []
        if workers:
            per_replica = max(per_replica - sum(int(w.memory) for w in workers), per_replica // 10)
        units: list[Unit] = []
        for _ in range(spec.replicas):
            units.append([o for e in allowed for o in _options(spec, per_replica, e, hosts.budgets)])
        for worker in workers:
            units.append(_worker_options(worker, hosts.inventory))
        return units

    def factory(self, model: Model, spec: Spec, hosts: Hosts) -> MakeBackends:
        return _factory(model, spec, hosts)


CONTAINER = ContainerKind()


def _gpu_sets(
    engine: EngineDevices, count: int, exact: Sequence[int] | None
) -> list[tuple[tuple[int, str], ...]]:
    if exact is not None:
        by_index = dict(engine.gpus)
        if not all(i in by_index for i in exact):
            return []
        return [tuple((i, by_index[i]) for i in exact)]
    return list(itertools.islice(itertools.combinations(engine.gpus, count), MAX_GPU_SETS))


def _options(spec: Spec, per_replica: int, engine: EngineDevices, budgets: Mapping[str, int]) -> list[Option]:
    if spec.gpus == 0:
        return [Option({engine.ram: per_replica}, engine=engine.name)]
    options = []
    for gpus in _gpu_sets(engine, spec.gpus, spec.gpu_ids):
        if isinstance(spec, VllmContainer):
            claims = {d: int(spec.gpu_memory_utilization * budgets[d]) for _, d in gpus}
        else:
            claims = {d: per_replica // len(gpus) for _, d in gpus}
        options.append(Option(claims, engine=engine.name, gpus=tuple(i for i, _ in gpus)))
    return options


def _worker_options(worker: RpcWorker, engines: Sequence[EngineDevices]) -> list[Option]:
    engine = next((e for e in engines if e.name == worker.engine), None)
    if engine is None:
        return []  # placement says it never fits: no such engine
    if worker.gpus == 0:
        return [Option({engine.ram: int(worker.memory)}, engine=engine.name)]
    return [
        Option(
            {d: int(worker.memory) // len(gpus) for _, d in gpus},
            engine=engine.name,
            gpus=tuple(i for i, _ in gpus),
        )
        for gpus in _gpu_sets(engine, worker.gpus, None)
    ]


def _factory(model: Model, spec: Spec, hosts: Hosts) -> MakeBackends:
    names = [model.name, *model.aliases]

    def server_spec(option: Option, rpc: Sequence[str]) -> ContainerRun:
        if isinstance(spec, LlamaCppContainer):
            return llamacpp_run(spec, option.gpus, rpc, names)
        if isinstance(spec, VllmContainer):
            return vllm_run(spec, names, option.gpus)
        return raw_run(spec, option.gpus)

    def engine(option: Option) -> ContainerEngine:
        found = hosts.engines.get(option.engine or "")
        if found is None:  # the placement only offers configured engines
            raise UpstreamUnavailable(f"no container engine or node named '{option.engine}'")
        return found

    def make(placement: Sequence[Option]) -> list[Backend]:
        from backends.container.replica import ContainerReplica

        replicas, workers = placement[: spec.replicas], placement[spec.replicas :]
        placed_workers = []
        if isinstance(spec, LlamaCppContainer):
            placed_workers = [
                Placed(engine(o), rpc_worker_run(spec, w, o.gpus), tuple(o.claims))
                for o, w in zip(workers, spec.rpc_workers, strict=True)
            ]
        return [
            ContainerReplica(
                model=model.name,
                label=f"{model.name}-{i}",
                capacity=spec.capacity,
                engine=engine(option),
                server=partial(server_spec, option),
                devices=tuple(option.claims),
                workers=placed_workers,
                pull=spec.pull,
                load_timeout=spec.load_timeout,
                stop_timeout=spec.stop_timeout,
            )
            for i, option in enumerate(replicas)
        ]

    return make
