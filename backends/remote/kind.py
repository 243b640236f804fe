"""The ``remote`` kind declared to the registry (``backends.kinds``): no local memory, one replica per
endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.base import Backend
from backends.demand import Option, Unit
from backends.kinds import Hosts, MakeBackends, Model
from backends.remote.spec import RemoteBackend


class RemoteKind:
    name = "remote"
    spec: Any = RemoteBackend
    tags: frozenset[str] = frozenset()

    def check(self, spec: RemoteBackend, memory: int | None) -> None:
        pass

    def estimate(self, spec: RemoteBackend) -> tuple[int, str]:
        return 0, "remote: no local memory"

    def demand(self, spec: RemoteBackend, total: int, hosts: Hosts) -> list[Unit]:
        return [[Option({})]]

    def factory(self, model: Model, spec: RemoteBackend, hosts: Hosts) -> MakeBackends:
        def make(_: Sequence[Option]) -> list[Backend]:
            from backends.remote.replica import RemoteReplica

            return [RemoteReplica(e, spec.upstream_model) for e in spec.endpoints]

        return make


REMOTE = RemoteKind()
