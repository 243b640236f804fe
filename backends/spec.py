"""What every backend kind's manifest spec shares: what the gateway reads of any spec (``KindSpec``),
durations, upstream deadlines, files relative to the manifest, and the GGUF engine settings of the llama.cpp
kinds.

Each kind owns its spec (the pydantic model of its manifest ``backend:`` block) beside its code, in
``backends/<kind>/spec.py``, and declares it to the kind registry (``backends.kinds``); the gateway's
manifest schema validates a ``backend:`` block with its kind's spec. Spec modules import nothing heavy, so
validating manifests never loads an engine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

# The APIs beside OpenAI's that an engine may speak itself: requests in them are passed through to the
# engine's own endpoint instead of translated to chat completions by the gateway.
NativeApi = Literal["messages"]
NATIVE_APIS_HELP = (
    "APIs the engine serves itself, passed through to it instead of translated by the gateway: "
    "'messages' (Anthropic's /v1/messages and /v1/messages/count_tokens)."
)


class KindSpec(Protocol):
    """What the gateway reads of any kind's spec. Optional fields a spec may have and the gateway reads by
    name: ``timeouts`` (``UpstreamTimeouts``), ``embeddings``, ``native_apis`` (``NativeApi``) and the
    context length (``n_ctx``, ``max_model_len``)."""

    # True where the gateway is the engine's OpenAI server, so it validates every request field itself
    gateway_validates: ClassVar[bool]

    @property
    def kind(self) -> str: ...

    @property
    def replicas(self) -> int: ...


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept seconds as a number, or a string such as ``"90s"``, ``"10m"``, ``"1.5h"``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected a duration such as 30, '30s', '10m' or '1h'")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class UpstreamTimeouts(BaseModel):
    """Deadlines on an HTTP upstream's answer to one request; each one left out takes the gateway's setting
    (``GATEWAY_UPSTREAM_*_TIMEOUT``). A timeout before the first byte retries the request on another
    replica, then answers 504 ``upstream_timeout``; a silent upstream after it ends the stream with an error
    event and is ejected."""

    model_config = ConfigDict(extra="forbid")

    connect: PositiveDuration | None = Field(default=None, description="To open a connection (default 10s).")
    first_byte: PositiveDuration | None = Field(
        default=None,
        description="From sending the request to the response's first bytes (default 10m): it covers the "
        "prompt's prefill, so keep it long for long prompts.",
    )
    idle: PositiveDuration | None = Field(
        default=None, description="Between two pieces of a response's body once it has started (default 2m)."
    )
    total: PositiveDuration | None = Field(
        default=None,
        description="The whole request, from the first try at a replica to its last byte (default 1h).",
    )


def resolve_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """A path relative to the manifest's directory (or absolute) that must exist."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    path = path.resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """A path on another machine (a Docker engine's host): made absolute against the manifest's directory
    when relative, not checked here (it may not exist on the gateway's machine)."""
    if value is None or value.startswith("/"):
        return value
    base = (info.context or {}).get("base_dir")
    return str((Path(base) / value).resolve()) if base is not None else value


class GgufSettings(BaseModel):
    """The llama.cpp engine settings that size its memory, whatever runs the engine."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(4096, ge=16)
    n_batch: int = Field(512, ge=1)
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads every layer.")
    flash_attn: bool = False
    embeddings: bool = Field(False, description="Serve /v1/embeddings (one pooled vector per input).")
    pooling: Literal["mean", "cls", "last"] = "mean"


class GgufEngine(GgufSettings):
    """A llama.cpp engine on the gateway's own machine: the GGUF file must be here."""

    model: Path = Field(description="GGUF file, relative to the manifest or absolute.")

    _file = field_validator("model")(resolve_file)
