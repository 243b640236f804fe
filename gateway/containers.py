"""Container replicas for a placement: which engine and GPUs each container of a model gets, and the preset
that generates its spec. The only place where the gateway's placement meets ``backends.container``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from backends.base import Backend
from backends.container import ContainerReplica
from backends.container_presets import ContainerRun, llamacpp_run, raw_run, rpc_worker_run, vllm_run
from backends.container_spec import LlamaCppContainer, RawContainer, VllmContainer
from backends.docker_engine import DockerEngine
from backends.errors import UpstreamUnavailable
from backends.managed_container import Placed
from gateway.config import ModelManifest
from gateway.engines import Hosts
from gateway.lifecycle import MakeBackends
from gateway.placement import Option


def container_factory(
    manifest: ModelManifest, spec: LlamaCppContainer | VllmContainer | RawContainer, hosts: Hosts
) -> MakeBackends:
    names = [manifest.name, *manifest.aliases]

    def server_spec(option: Option, rpc: Sequence[str]) -> ContainerRun:
        if isinstance(spec, LlamaCppContainer):
            return llamacpp_run(spec, option.gpus, rpc)
        if isinstance(spec, VllmContainer):
            return vllm_run(spec, names, option.gpus)
        return raw_run(spec, option.gpus)

    def engine(option: Option) -> DockerEngine:
        found = hosts.engines.get(option.engine or "")
        if found is None:  # the placement only offers configured engines
            raise UpstreamUnavailable(f"no Docker engine named '{option.engine}'")
        return found

    def make(placement: Sequence[Option]) -> list[Backend]:
        replicas, workers = placement[: spec.replicas], placement[spec.replicas :]
        placed_workers = []
        if isinstance(spec, LlamaCppContainer):
            placed_workers = [
                Placed(engine(o), rpc_worker_run(spec, w, o.gpus), tuple(o.claims))
                for o, w in zip(workers, spec.rpc_workers, strict=True)
            ]
        return [
            ContainerReplica(
                model=manifest.name,
                label=f"{manifest.name}-{i}",
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
