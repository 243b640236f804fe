"""The ``llama_cpp`` kind declared to the registry (``backends.kinds``): in-process engines on ``host``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.base import Backend
from backends.demand import Option, Unit, on_host
from backends.gguf.memory import estimate_gguf
from backends.kinds import Hosts, MakeBackends, Model
from backends.llama_cpp.spec import LlamaCppBackend


class LlamaCppKind:
    name = "llama_cpp"
    in_process = True  # its replicas live in the gateway's process: never shared by a fleet (backends.kinds)
    spec: Any = LlamaCppBackend
    tags: frozenset[str] = frozenset()

    def check(self, spec: LlamaCppBackend, memory: int | None) -> None:
        pass  # the GGUF file is on this machine (the spec checks it): the estimate can always be made

    def estimate(self, spec: LlamaCppBackend) -> tuple[int, str]:
        return estimate_gguf(spec.model, spec, spec.instances)

    def demand(self, spec: LlamaCppBackend, total: int, hosts: Hosts) -> list[Unit]:
        return on_host(total)

    def factory(self, model: Model, spec: LlamaCppBackend, hosts: Hosts) -> MakeBackends:
        def make(_: Sequence[Option]) -> list[Backend]:
            # Imported on first load: the engine's imports (numpy, llama_cpp) cost RSS with no model loaded.
            from backends.llama_cpp.replica import LlamaCppReplica

            return [LlamaCppReplica(spec, f"{model.name}-{i}") for i in range(spec.replicas)]

        return make


LLAMA_CPP = LlamaCppKind()
