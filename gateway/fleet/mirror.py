"""Replicas of the fleet's table as backends, and the containers a new leader adopts or removes.

- ``MirroredReplica``: one published replica, served over HTTP by URL like any upstream
  (``backends.upstream.forward``), so a follower's routing, balancing, retries and error shapes are the
  ones of a local model. Stopping it closes its connections and nothing else: the replica is the leader's.
- Adoption: when its gateway becomes the leader, each mirrored replica that runs in a container becomes its
  own (``own``): stopping it then stops and removes the container, as the gateway that started it would.
  It is served as it runs, without a restart; what it loses is supervision (a crash is not restarted: the
  model's health checks take it out, and its next load starts a fresh one).
- ``unclaimed``: the containers labelled with this fleet that no model of the table claims (their model was
  removed, or a load was under way when the leader died); the new leader removes them. Only containers
  carrying this fleet's label are ever listed, so nothing else on the engines is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.docker.engine import LABEL_INSTANCE, LABEL_RUN, DockerEngine
from backends.errors import UpstreamUnavailable
from backends.upstream.forward import HttpUpstream
from gateway.fleet.table import Published

log = logging.getLogger(__name__)

HEALTH_PATH = "/v1/models"  # what every OpenAI-compatible server answers (llama-server, vLLM, remote)
STOP_GRACE = 5


class MirroredReplica:
    def __init__(self, published: Published, engines: Mapping[str, DockerEngine]) -> None:
        self.published = published
        self._http = HttpUpstream(published.url)
        self._engines = engines
        self.owned = False

    @property
    def capacity(self) -> int:
        return self.published.capacity

    def own(self) -> bool:
        """This gateway now owns the replica (its container, if any: stopping it removes the container);
        False when its container is on an engine this gateway does not know."""
        p = self.published
        self.owned = p.container is None or p.engine in self._engines
        return self.owned

    async def start(self) -> None:
        self._http.open()

    async def stop(self) -> None:
        await self._http.close()
        p = self.published
        if self.owned and p.container is not None and p.engine is not None:
            await remove(self._engines[p.engine], p.container)

    async def health(self) -> bool:
        return await self._http.get(HEALTH_PATH, timeout=3) == 200

    def describe(self) -> ReplicaInfo:
        p = self.published
        # The engine's own metrics are exported once for the fleet, by the leader: a follower's mirror has
        # none (several gateways each exporting them doubled every sum: vLLM production-stack's issue #943).
        metrics = p.metrics_url if self.owned else None
        return ReplicaInfo(
            url=p.url, container=p.container, engine=p.engine, devices=p.devices, metrics_url=metrics
        )

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        return await self._http.forward(request)


async def remove(engine: DockerEngine, name: str) -> None:
    """Stop (grace, then kill) and remove container ``name``; a container already gone is fine."""

    def stop(client: Any) -> None:
        import docker.errors

        try:
            container = client.containers.get(name)
            container.stop(timeout=STOP_GRACE)
            container.remove(force=True)
        except docker.errors.NotFound:
            return

    try:
        await engine.call(stop, f"removing container {name}", timeout=engine.timeout + STOP_GRACE)
    except UpstreamUnavailable as exc:
        log.error("container %s on engine %s was not removed: %s", name, engine.name, exc)


async def unclaimed(engine: DockerEngine, claimed: Iterable[str]) -> list[str]:
    """The names of this fleet's containers on ``engine`` that are not in ``claimed`` and that this gateway
    did not start itself (a gateway that leads again after the store was away has loads of its own)."""
    keep = set(claimed)
    label = f"{LABEL_INSTANCE}={engine.instance}"

    def listing(client: Any) -> list[tuple[str, str | None]]:
        found = client.containers.list(all=True, sparse=True, filters={"label": label})
        return [
            (str(c.attrs["Names"][0]).lstrip("/"), c.attrs.get("Labels", {}).get(LABEL_RUN)) for c in found
        ]

    listed = await engine.call(listing, "listing the fleet's containers")
    return [name for name, run in listed if name not in keep and run != engine.run]
