"""Cluster mode's wiring: this gateway as a member of its fleet (``gateway.fleet.node``), given what it
shares (every model but those of in-process kinds), its manifests' digest and its reload."""

from __future__ import annotations

from backends.docker.engine import DockerEngine
from backends.kinds import in_process
from gateway.control.reload import reload
from gateway.control.state import Gateway
from gateway.fleet.node import Node
from gateway.fleet.store import Store
from gateway.fleet.table import digest
from gateway.resources.hosts import instance_id
from gateway.scheduling.lifecycle import ModelSlot


def join_fleet(gw: Gateway) -> Node:
    settings = gw.settings

    def shared(slot: ModelSlot) -> bool:
        return not in_process(gw.kinds.of(slot.manifest.backend))

    node = Node(
        member=settings.cluster_member or instance_id(settings),
        url=settings.cluster_url or f"http://{settings.host}:{settings.port}",
        cluster=settings.cluster_name,
        ttl=settings.cluster_ttl,
        load_timeout=settings.load_timeout,
        store=Store(settings.cluster_etcd),
        scheduler=gw.scheduler,
        pins=gw.pins,
        engines={n: e for n, e in gw.hosts.engines.items() if isinstance(e, DockerEngine)},
        engines_in_use=lambda: [e for e in gw.engines_in_use() if isinstance(e, DockerEngine)],
        shared=shared,
        digest=lambda: digest(gw.manifests.models),
        reload=lambda: reload(gw),
    )
    gw.scheduler.delegate = node
    return node
