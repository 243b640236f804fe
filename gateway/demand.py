"""What a model asks of the placement: its units (replicas, RPC workers) and, for each, the places it could go
with the bytes it would hold on each device there. Pure: the inventory and the estimate are passed in.

- The in-process and launched-process kinds run on the gateway's machine: one unit on ``host``. A remote
  upstream holds nothing here.
- A container replica is one unit, with an option per engine it may use (and, with GPUs, per set of that
  engine's GPUs): on RAM without GPUs; with GPUs, a ``vllm`` container claims ``gpu_memory_utilization`` of
  each GPU it gets (that is what vLLM takes, whatever the model), and the others their estimate split evenly
  over their GPUs.
- A llama.cpp model with RPC worker containers: each worker is a unit on its named engine, claiming its
  declared memory; the server claims the estimate less what the workers hold (at least a tenth of the
  estimate, for its KV cache and buffers).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from backends.container_spec import LlamaCppContainer, RawContainer, RpcWorker, VllmContainer
from gateway.config import BackendSpec, RemoteBackend
from gateway.engines import EngineDevices
from gateway.placement import HOST, Option, Unit

MAX_GPU_SETS = 64  # options per engine: placement stays cheap on an 8-GPU host asked for 4


def demand(
    spec: BackendSpec,
    total: int,
    engines: Sequence[EngineDevices],
    budgets: Mapping[str, int],
) -> list[Unit]:
    """``total``: the estimate (or the manifest's ``memory``) for all replicas together."""
    if isinstance(spec, RemoteBackend):
        return [[Option({})]]
    if not isinstance(spec, LlamaCppContainer | VllmContainer | RawContainer):
        return [[Option({HOST: total})]]
    allowed = [e for e in engines if not spec.engines or e.name in spec.engines]
    per_replica = total // spec.replicas
    workers = spec.rpc_workers if isinstance(spec, LlamaCppContainer) else []
    if workers:
        per_replica = max(per_replica - sum(int(w.memory) for w in workers), per_replica // 10)
    units: list[Unit] = []
    for _ in range(spec.replicas):
        units.append([o for e in allowed for o in _options(spec, per_replica, e, budgets)])
    for worker in workers:
        units.append(_worker_options(worker, engines))
    return units


def _gpu_sets(
    engine: EngineDevices, count: int, exact: Sequence[int] | None
) -> list[tuple[tuple[int, str], ...]]:
    if exact is not None:
        by_index = dict(engine.gpus)
        if not all(i in by_index for i in exact):
            return []
        return [tuple((i, by_index[i]) for i in exact)]
    return list(itertools.islice(itertools.combinations(engine.gpus, count), MAX_GPU_SETS))


def _options(
    spec: LlamaCppContainer | VllmContainer | RawContainer,
    per_replica: int,
    engine: EngineDevices,
    budgets: Mapping[str, int],
) -> list[Option]:
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
