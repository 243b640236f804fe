"""The manifest spec of the remote kind: existing OpenAI-compatible servers (``backends.remote.replica``)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from backends.spec import NATIVE_APIS_HELP, NativeApi, UpstreamTimeouts


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
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    native_apis: list[NativeApi] = Field([], description=NATIVE_APIS_HELP)

    @property
    def replicas(self) -> int:
        return len(self.endpoints)
