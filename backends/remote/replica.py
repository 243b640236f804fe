"""An existing OpenAI-compatible server: nothing to launch. Start opens a connection pool; health probes."""

from __future__ import annotations

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.remote.spec import RemoteEndpoint
from backends.upstream.forward import HttpUpstream


class RemoteReplica:
    def __init__(self, endpoint: RemoteEndpoint, upstream_model: str | None) -> None:
        key = endpoint.api_key.get_secret_value() if endpoint.api_key else None
        self._http = HttpUpstream(endpoint.url, key, upstream_model)
        self._capacity = endpoint.max_concurrency

    @property
    def capacity(self) -> int:
        return self._capacity

    async def start(self) -> None:
        self._http.open()

    async def stop(self) -> None:
        await self._http.close()

    async def health(self) -> bool:
        return await self._http.get("/v1/models", timeout=5) == 200

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo(url=self._http.base_url)

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        return await self._http.forward(request)
