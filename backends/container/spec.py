"""The manifest spec of the container kind (``backends.container.replica``): a model served from a container
that the gateway starts through a Docker Engine API, on the gateway's own host or on another host's engine.

One ``kind: container`` with a ``preset`` that generates the container's command line from manifest fields
(``backends.container.presets``):

- ``llamacpp``: llama.cpp's server image; the GGUF mounted read-only; every ``llama-server`` flag the process
  kind has (the same ``LlamaServerFlags``, the same ``backends.llama_server.args``); optionally RPC worker
  containers on named engines that the main server spreads its layers over;
- ``vllm``: vLLM's OpenAI server image and its flags;
- ``raw``: any image, command and port.

Paths (``model``, templates, ``volumes``) are paths on the engine's host. They are made absolute against the
manifest's directory, but not checked: the engine may be on another machine.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backends.llama_server.spec import LlamaServerFlags
from backends.spec import NATIVE_APIS_HELP, Duration, NativeApi, UpstreamTimeouts, resolve_path

ENGINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VOLUME = r"^[^:]+:/[^:]*(:(ro|rw))?$"


class ContainerCommon(BaseModel):
    """What every preset shares: where it may run, how many, which image, and the container's settings."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["container"]
    gateway_validates: ClassVar[bool] = False
    engines: list[Annotated[str, Field(pattern=ENGINE_NAME)]] = Field(
        [], description="Docker engines (names from the gateway's settings) it may run on; [] for any."
    )
    replicas: int = Field(1, ge=1, le=64, description="Containers, balanced by the gateway.")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per replica; placement picks which ones.")
    gpu_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Exactly these GPUs of the engine's host (then `gpus` is their number)."
    )
    image: str
    pull: Literal["missing", "never", "always"] = Field(
        "missing", description="Pull the image when the engine lacks it (missing), never, or on every start."
    )
    env: dict[str, str] = {}
    volumes: list[Annotated[str, Field(pattern=VOLUME)]] = Field(
        [], description="Extra bind mounts, 'HOST:CONTAINER[:ro|rw]', HOST on the engine's machine."
    )
    shm_size: str | None = Field(None, pattern=r"^\d+[bkmg]?$")
    ipc_mode: str | None = None
    network: str | None = None
    extra_args: list[str] = Field([], description="Appended to the generated command line.")
    load_timeout: Duration = Field(600.0, description="Pull, start and health within this.")
    stop_timeout: Duration = Field(10.0, description="SIGTERM grace before the engine kills the container.")
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    native_apis: list[NativeApi] = Field(
        [],
        description=NATIVE_APIS_HELP + " Recent llama.cpp server images serve it.",
    )

    @field_validator("volumes")
    @classmethod
    def _absolute_volumes(cls, volumes: list[str], info: ValidationInfo) -> list[str]:
        return [f"{resolve_path(host, info)}:{rest}" for host, _, rest in (v.partition(":") for v in volumes)]

    @model_validator(mode="after")
    def _gpu_ids_count(self) -> ContainerCommon:
        if self.gpu_ids is not None:
            if len(set(self.gpu_ids)) != len(self.gpu_ids):
                raise ValueError("gpu_ids repeats a GPU")
            if self.gpus not in (0, len(self.gpu_ids)):
                raise ValueError(f"gpus is {self.gpus} but gpu_ids names {len(self.gpu_ids)}")
            self.gpus = len(self.gpu_ids)
        return self


class RpcWorker(BaseModel):
    """A llama.cpp RPC worker container (``rpc-server``) on a named engine: it holds part of the layers."""

    model_config = ConfigDict(extra="forbid")

    engine: str = Field(pattern=ENGINE_NAME)
    memory: ByteSize = Field(
        description="What the worker may hold: its share of the model, its budget claim."
    )
    gpus: int = Field(0, ge=0, le=8, description="0: a CPU worker (RAM); else GPUs of that engine.")
    image: str | None = Field(None, description="Default: the main server's image.")
    command: list[str] = Field(
        ["/app/rpc-server"], description="The worker binary in the image (its entrypoint is replaced)."
    )
    port: int = Field(50052, ge=1, le=65535, description="The port it listens on inside the container.")
    threads: int | None = Field(None, ge=1, description="CPU threads of a CPU worker (rpc-server -t).")


class LlamaCppContainer(ContainerCommon, LlamaServerFlags):
    """llama.cpp's server image (default: the official CUDA build), whose entrypoint is ``llama-server``."""

    preset: Literal["llamacpp"]
    image: str = "ghcr.io/ggml-org/llama.cpp:server-cuda"
    model: str = Field(description="GGUF file on the engine's host; mounted read-only.")
    chat_template_file: str | None = Field(  # type: ignore[assignment]
        None, description="A Jinja template file on the engine's host (--chat-template-file), mounted."
    )
    rpc_workers: list[RpcWorker] = Field(
        [], description="RPC worker containers, started first, stopped with the model."
    )
    port: int = Field(8080, ge=1, le=65535, description="llama-server's port inside the container.")

    _paths = field_validator("model", "chat_template_file")(resolve_path)

    @model_validator(mode="after")
    def _workers_need_one_replica(self) -> LlamaCppContainer:
        if self.rpc_workers and self.replicas != 1:
            raise ValueError("rpc_workers serve one replica: set replicas to 1")
        if self.rpc_workers and self.rpc:
            raise ValueError("give rpc (existing workers) or rpc_workers (containers), not both")
        return self

    @property
    def capacity(self) -> int:
        return self.parallel


class VllmContainer(ContainerCommon):
    """vLLM's OpenAI server image. It takes ``gpu_memory_utilization`` of every GPU it is given."""

    preset: Literal["vllm"]
    image: str = "vllm/vllm-openai:latest"
    model: str = Field(description="A model id (fetched into cache_dir) or a directory on the engine's host.")
    served_model_name: str | None = Field(None, description="Default: the manifest's name.")
    quantization: str | None = Field(None, description="e.g. awq, gptq, fp8")
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    chat_template: str | None = Field(None, description="A Jinja file on the engine's host, mounted.")
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    enable_prefix_caching: bool | None = None
    max_num_seqs: int = Field(256, ge=1, description="Sequences it batches at once; its concurrency cap.")
    dtype: str | None = None
    cache_dir: str | None = Field(None, description="Host directory for the Hugging Face cache (a volume).")
    api_key: SecretStr | None = Field(None, description="vLLM's --api-key; the gateway sends it.")
    ipc_mode: str | None = "host"  # PyTorch's shared memory between vLLM's workers (vLLM's docs)
    port: int = Field(8000, ge=1, le=65535)

    _paths = field_validator("chat_template", "cache_dir")(resolve_path)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        # A directory path (relative or absolute) is on the host; anything else is a model id.
        if value.startswith(("/", "./", "../")):
            return resolve_path(value, info) or value
        return value

    @model_validator(mode="after")
    def _one_gpu_per_shard(self) -> VllmContainer:
        if self.gpus == 0:
            self.gpus = self.tensor_parallel_size
        if self.gpus != self.tensor_parallel_size:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} needs {self.gpus} GPUs")
        return self

    @property
    def capacity(self) -> int:
        return self.max_num_seqs

    @property
    def embeddings(self) -> None:
        return None  # whatever the model serves: requests pass through


class RawContainer(ContainerCommon):
    """Any image: the command, port and health path are the manifest's."""

    preset: Literal["raw"]
    command: list[str] | None = Field(None, description="Replaces the image's entrypoint.")
    args: list[str] = Field([], description="The arguments (the image's CMD is replaced when given).")
    port: int = Field(8000, ge=1, le=65535, description="The OpenAI server's port inside the container.")
    health_path: str = Field("/health", pattern=r"^/")
    max_concurrency: int = Field(64, ge=1)

    @property
    def capacity(self) -> int:
        return self.max_concurrency

    @property
    def embeddings(self) -> None:
        return None


ContainerBackend = Annotated[LlamaCppContainer | VllmContainer | RawContainer, Field(discriminator="preset")]
PRESETS = frozenset({"llamacpp", "vllm", "raw"})
