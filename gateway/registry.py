"""Names and aliases to model slots, built from the validated manifests.

Building a slot means estimating its memory and knowing how to make its replicas; the kind of backend is
decided here, once, from the manifest's discriminated ``backend`` union.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from backends.base import Backend
from gateway.config import LlamaCppBackend, ModelManifest, Settings
from gateway.errors import ModelNotFound
from gateway.estimate import estimate_bytes
from gateway.lifecycle import ModelSlot
from gateway.manifests import ManifestSet

log = logging.getLogger(__name__)


def backend_factory(manifest: ModelManifest) -> Callable[[], list[Backend]]:
    spec = manifest.backend
    if isinstance(spec, LlamaCppBackend):

        def make() -> list[Backend]:
            # Imported on first load: the engine's imports (numpy, llama_cpp) cost RSS with no model loaded.
            from backends.llama_cpp import LlamaCppReplica

            return [LlamaCppReplica(spec, f"{manifest.name}-{i}") for i in range(spec.replicas)]

        return make
    raise TypeError(f"no backend for kind {spec.kind}")  # unreachable while the union has one member


@dataclass
class Registry:
    slots: dict[str, ModelSlot]  # by canonical name
    names: dict[str, ModelSlot]  # canonical names and aliases
    estimate_warnings: dict[str, str]

    def resolve(self, name: str) -> ModelSlot:
        slot = self.names.get(name)
        if slot is None:
            raise ModelNotFound(name)
        return slot

    @classmethod
    def build(cls, manifests: ManifestSet, settings: Settings) -> Registry:
        slots: dict[str, ModelSlot] = {}
        names: dict[str, ModelSlot] = {}
        warnings: dict[str, str] = {}
        for item in manifests.models:
            m = item.manifest
            override = int(m.memory) if m.memory is not None else None
            memory, warning = estimate_bytes(m.backend, override)
            if warning:
                warnings[m.name] = warning
                log.warning("%s: cannot read GGUF metadata (%s); budgeting its file size", m.name, warning)
            slot = ModelSlot(
                m,
                memory,
                backend_factory(m),
                m.max_queue if m.max_queue is not None else settings.max_queue,
            )
            slots[m.name] = slot
            for n in (m.name, *m.aliases):
                names[n] = slot
        return cls(slots, names, warnings)
