"""The manifest spec of the in-process llama.cpp kind (``backends.llama_cpp.replica``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from backends.spec import GgufEngine, resolve_file


class LlamaCppBackend(GgufEngine):
    """An in-process llama.cpp engine (llama-cpp-python). Each of ``parallel`` instances is a replica."""

    kind: Literal["llama_cpp"]
    # The gateway is the OpenAI server for this engine, so it validates every field
    # (gateway/api/validation.py).
    gateway_validates: ClassVar[bool] = True
    n_threads: int | None = Field(None, ge=1, description="Default: cores / parallel.")
    chat_format: str | None = Field(None, description="A llama-cpp-python chat format name, e.g. chatml.")
    chat_template: Path | None = Field(None, description="A Jinja chat template file.")
    parallel: int = Field(1, ge=1, le=64, description="Engine instances; each serves one request at a time.")
    seed: int = -1

    _template = field_validator("chat_template")(resolve_file)

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
