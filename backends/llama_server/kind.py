"""The ``llama_server`` kind declared to the registry (``backends.kinds``): child processes on ``host``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.base import Backend
from backends.demand import Option, Unit, on_host
from backends.gguf.memory import estimate_gguf
from backends.kinds import Hosts, MakeBackends, Model
from backends.llama_server.spec import LlamaServerBackend


class LlamaServerKind:
    name = "llama_server"
    spec: Any = LlamaServerBackend
    tags: frozenset[str] = frozenset()

    def check(self, spec: LlamaServerBackend, memory: int | None) -> None:
        pass  # the GGUF file is on this machine (the spec checks it)

    def estimate(self, spec: LlamaServerBackend) -> tuple[int, str]:
        return estimate_gguf(spec.model, spec, spec.instances, server_slots=spec.parallel)

    def demand(self, spec: LlamaServerBackend, total: int, hosts: Hosts) -> list[Unit]:
        return on_host(total)

    def factory(self, model: Model, spec: LlamaServerBackend, hosts: Hosts) -> MakeBackends:
        def make(_: Sequence[Option]) -> list[Backend]:
            from backends.llama_server.replica import LlamaServerReplica

            names = (model.name, *model.aliases)
            return [
                LlamaServerReplica(spec, f"{model.name}-{i}", hosts.llama_server, names)
                for i in range(spec.replicas)
            ]

        return make


LLAMA_SERVER = LlamaServerKind()
