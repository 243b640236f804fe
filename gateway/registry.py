"""Names and aliases to model slots, built from the validated manifests.

Building a slot means estimating its memory and knowing how to make its replicas; the kind of backend is
decided here, once, from the manifest's discriminated ``backend`` union.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.base import Backend
from gateway.config import LlamaCppBackend, LlamaServerBackend, ModelManifest, RemoteBackend, Settings
from gateway.containers import container_factory
from gateway.demand import demand
from gateway.engines import Hosts
from gateway.errors import ModelNotFound
from gateway.estimate import estimate_bytes
from gateway.lifecycle import MakeBackends, ModelSlot
from gateway.manifests import ManifestSet
from gateway.placement import Option

log = logging.getLogger(__name__)


def backend_factory(manifest: ModelManifest, binary: Path | None, hosts: Hosts) -> MakeBackends:
    """How to make the model's replicas for a placement (one ``Option`` per unit of its demand)."""
    spec = manifest.backend
    if isinstance(spec, LlamaCppBackend):

        def make(_: Sequence[Option]) -> list[Backend]:
            # Imported on first load: the engine's imports (numpy, llama_cpp) cost RSS with no model loaded.
            from backends.llama_cpp import LlamaCppReplica

            return [LlamaCppReplica(spec, f"{manifest.name}-{i}") for i in range(spec.replicas)]

        return make
    if isinstance(spec, LlamaServerBackend):

        def make_servers(_: Sequence[Option]) -> list[Backend]:
            from backends.process import LlamaServerReplica

            return [LlamaServerReplica(spec, f"{manifest.name}-{i}", binary) for i in range(spec.replicas)]

        return make_servers
    if isinstance(spec, RemoteBackend):
        remote = spec

        def make_remote(_: Sequence[Option]) -> list[Backend]:
            from backends.remote import RemoteReplica

            return [RemoteReplica(e, remote.upstream_model) for e in remote.endpoints]

        return make_remote
    return container_factory(manifest, spec, hosts)


@dataclass
class Registry:
    slots: dict[str, ModelSlot]  # by canonical name
    names: dict[str, ModelSlot]  # canonical names and aliases
    estimate_sources: dict[str, str]  # how each model's memory was estimated

    def resolve(self, name: str) -> ModelSlot:
        slot = self.names.get(name)
        if slot is None:
            raise ModelNotFound(name)
        return slot

    @classmethod
    def build(cls, manifests: ManifestSet, settings: Settings, hosts: Hosts) -> Registry:
        registry = cls({}, {}, {})
        for item in manifests.models:
            registry.add(make_slot(item.manifest, settings, hosts))
        return registry

    def add(self, made: tuple[ModelSlot, str]) -> None:
        slot, source = made
        self.slots[slot.name] = slot
        self.estimate_sources[slot.name] = source
        for n in (slot.name, *slot.manifest.aliases):
            self.names[n] = slot

    def remove(self, slot: ModelSlot) -> None:
        """Stop resolving ``slot``'s name and aliases (a new request gets 404)."""
        for n in (slot.name, *slot.manifest.aliases):
            if self.names.get(n) is slot:
                del self.names[n]
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]
            self.estimate_sources.pop(slot.name, None)


def make_slot(m: ModelManifest, settings: Settings, hosts: Hosts) -> tuple[ModelSlot, str]:
    """A model's slot, and how its memory was estimated."""
    override = int(m.memory) if m.memory is not None else None
    memory, source = estimate_bytes(m.backend, override)
    if source.startswith("unreadable"):
        log.warning("%s: %s", m.name, source)
    slot = ModelSlot(
        m,
        demand(m.backend, memory, hosts.inventory, hosts.budgets),
        backend_factory(m, settings.llama_server, hosts),
        m.max_queue if m.max_queue is not None else settings.max_queue,
    )
    return slot, source
