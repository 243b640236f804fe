"""The schema of model manifests (``manifests/*.yaml``): pydantic models that refuse unknown keys.

The ``backend`` block is validated by its kind's own spec, looked up by ``kind`` in the kind registry
(``backends.kinds``) that the validation context carries (``{"kinds": ...}``; the built-in kinds without
one), so a kind that is not built in is served without a change here. ``manifest_json_schema()`` gives the
JSON schema for editors.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, PlainValidator, ValidationInfo, model_validator

from backends.builtin import builtin_kinds
from backends.kinds import Kinds
from backends.spec import Duration, KindSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$"


@cache
def default_kinds() -> Kinds:
    return builtin_kinds()


def kinds_of(info: ValidationInfo) -> Kinds:
    kinds = (info.context or {}).get("kinds")
    return kinds if isinstance(kinds, Kinds) else default_kinds()


def _validate_backend(value: Any, info: ValidationInfo) -> Any:
    return kinds_of(info).adapter.validate_python(value, context=info.context)


BackendSpec = Annotated[KindSpec, PlainValidator(_validate_backend)]


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    aliases: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = []
    description: str = ""
    backend: BackendSpec
    memory: ByteSize | None = Field(
        None, description="Overrides the estimate from the GGUF metadata (all replicas together)."
    )
    pinned: bool = Field(False, description="Load at startup and never evict.")
    idle_ttl: Duration | None = Field(None, description="Unload after this long unused.")
    max_swap_wait: Duration | None = Field(
        None,
        description="Longest a request for this model waits while other models that are busy keep the memory "
        "it needs (swap-aware admission); then it gets its turn. Default: the gateway's max_swap_wait.",
    )
    max_queue: int | None = Field(None, ge=0, description="Default: the gateway's max_queue.")
    interactive_reserve: int | None = Field(
        None,
        ge=0,
        description="Slots (summed over the replicas: instances, --parallel slots, max_num_seqs, "
        "max_concurrency) kept for interactive requests: batch ones may hold all but this many at once, "
        "and always at least one, so a model with one slot keeps none. Default: the gateway's "
        "interactive_reserve (1).",
    )
    health_check_interval: Duration = Field(
        10.0,
        description="While loaded, probe each replica's health this often; a failed probe takes the replica "
        "out of rotation until one passes. 0 disables the active checks (passive ejection still applies).",
    )
    affinity: Literal["none", "session", "prefix"] = Field(
        "session",
        description="Send related requests to the same replica, to reuse its prompt cache: 'session' by the "
        "X-Session-Id header (or the body's 'user'), 'prefix' also by the start of the prompt.",
    )

    @model_validator(mode="after")
    def _alias_not_name(self) -> ModelManifest:
        if self.name in self.aliases:
            raise ValueError(f"alias '{self.name}' repeats the model's own name")
        return self

    @model_validator(mode="after")
    def _kind_rules(self, info: ValidationInfo) -> ModelManifest:
        kinds_of(info).of(self.backend).check(
            self.backend, int(self.memory) if self.memory is not None else None
        )
        return self


class ManifestFile(BaseModel):
    """A manifest file holds one model, or several under ``models:``."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelManifest] = Field(min_length=1)


def manifest_json_schema(kinds: Kinds | None = None) -> dict[str, Any]:
    """The JSON schema of a manifest file, with every kind's ``backend`` block."""
    schema = ManifestFile.model_json_schema()
    backend = (kinds or default_kinds()).adapter.json_schema(ref_template="#/$defs/{model}")
    schema["$defs"].update(backend.pop("$defs", {}))
    schema["$defs"]["ModelManifest"]["properties"]["backend"] = backend
    return schema
