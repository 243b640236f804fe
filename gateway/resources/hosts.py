"""The container engines models run on, their hosts, and the memory devices those add to the budget.

Settings name the engines (``GATEWAY_ENGINES`` or ``--engines FILE``); with none named, the default engine is
``DOCKER_HOST`` or the local socket, called ``local``. Each engine adds devices to the placement
(``backends.demand``): its RAM (``<engine>:ram``, from settings; a ``unix://`` engine without its
own figure shares the gateway's ``host`` budget, because it is the same machine) and each of its GPUs
(``<engine>:gpu<i>`` from settings; or, for a ``unix://`` engine, this machine's GPUs read with NVML where
the gateway can, ``host:gpu<i>``, shared by every local engine).

An engine of kind ``swarm`` is a manager: each of its nodes is a host (``<engine>.<node>``), listed from the
manager at startup, with its RAM (``<engine>.<node>:ram``) and GPUs (``<engine>.<node>:gpu<i>``) as the node
reports them or as the engine's ``nodes`` settings say (``backends.swarm``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from urllib.parse import urlparse

import yaml
from pydantic import TypeAdapter

from backends.demand import HOST, EngineDevices
from backends.docker.engine import EngineTls
from backends.docker.host import DockerHost
from backends.docker.interface import ContainerEngine
from backends.swarm.engine import NodeOverride, SwarmEngine
from gateway.config.settings import EngineSettings, Settings

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def engine_settings(settings: Settings) -> list[EngineSettings]:
    """The configured engines, or the default one."""
    engines = list(settings.engines)
    if settings.engines_file is not None:
        raw = yaml.safe_load(settings.engines_file.read_text())
        engines += TypeAdapter(list[EngineSettings]).validate_python(raw)
    if not engines:
        url = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
        engines = [EngineSettings.model_validate({"name": "local", "url": url})]
    names = [e.name for e in engines]
    if len(set(names)) != len(names):
        raise ValueError(f"engine names repeat: {names}")
    return engines


def instance_id(settings: Settings) -> str:
    """Stable across restarts of the same gateway (so it can remove what a killed run left), distinct between
    gateways on one host."""
    if settings.instance_id:
        return settings.instance_id
    key = json.dumps([socket.gethostname(), settings.port, str(settings.manifests.resolve())])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def container_instance(settings: Settings) -> str:
    """What labels this gateway's containers: its instance, or in cluster mode the fleet's (so whichever
    gateway leads can adopt them)."""
    if settings.cluster_etcd:
        return f"fleet-{settings.cluster_name}"
    return instance_id(settings)


def _nvml_gpus() -> list[int]:
    """Total memory of each local GPU, by index; [] without NVML (no driver, no GPU, no nvidia-ml-py)."""
    try:
        import pynvml  # type: ignore[import-not-found]  # from nvidia-ml-py, where installed
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [
            int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total)
            for i in range(count)
        ]
    finally:
        pynvml.nvmlShutdown()


def devices(engines: list[EngineSettings], host_budget: int) -> tuple[list[EngineDevices], dict[str, int]]:
    """Each engine's devices, and the budget of every device (the gateway's own ``host`` included)."""
    budgets = {HOST: host_budget}
    inventory = []
    for e in engines:
        if e.kind == "swarm":
            continue  # its nodes' devices come from its manager (``swarm_hosts``)
        ram = f"{e.name}:ram"
        if e.memory is not None:
            budgets[ram] = int(e.memory)
        elif e.local:
            ram = HOST
        else:
            budgets[ram] = 0  # CPU containers need a figure for a remote engine: none fit until it is given
        if e.gpus is not None:
            gpu_memory, prefix = [int(g) for g in e.gpus], e.name
        else:  # this machine's GPUs: one budget each, however many local engines can reach them
            gpu_memory, prefix = (_nvml_gpus() if e.local else []), HOST
        gpus = tuple((i, f"{prefix}:gpu{i}") for i in range(len(gpu_memory)))
        budgets.update({device: gpu_memory[i] for i, device in gpus})
        inventory.append(EngineDevices(e.name, ram, gpus))
    return inventory, budgets


def docker_engine(e: EngineSettings, instance: str, cleanup: bool = True) -> DockerHost:
    url = urlparse(e.url)
    address = e.address or (url.hostname if not e.local and url.hostname else "127.0.0.1")
    tls = EngineTls(**e.tls.model_dump()) if e.tls is not None else None
    return DockerHost(
        e.name,
        e.url,
        instance=instance,
        address=address,
        publish_ip=e.publish_ip if e.publish_ip is not None else ("127.0.0.1" if e.local else ""),
        tls=tls,
        timeout=e.timeout,
        cleanup=cleanup,
    )


def swarm_engine(e: EngineSettings, instance: str) -> SwarmEngine:
    overrides = {
        name: NodeOverride(
            memory=int(n.memory) if n.memory is not None else None,
            gpus=tuple(int(g) for g in n.gpus) if n.gpus is not None else None,
            address=n.address,
        )
        for name, n in e.nodes.items()
    }
    return SwarmEngine(
        e.name,
        e.url,
        instance=instance,
        tls=EngineTls(**e.tls.model_dump()) if e.tls is not None else None,
        timeout=e.timeout,
        overrides=overrides,
        ports=e.ports,
        watch_interval=e.watch_interval,
        stop_grace=e.stop_grace,
        gpu_kind=e.gpu_kind,
    )


def swarm_hosts(
    swarm: SwarmEngine,
) -> tuple[dict[str, ContainerEngine], list[EngineDevices], dict[str, int]]:
    """A swarm's nodes as hosts (asks its manager: blocking, at startup), their devices and budgets."""
    engines: dict[str, ContainerEngine] = {}
    inventory, budgets = [], {}
    for node in swarm.discover():
        ram = f"{node.name}:ram"
        budgets[ram] = node.memory
        gpus = tuple((i, f"{node.name}:gpu{i}") for i in range(node.gpus))
        budgets.update(
            {device: memory for (_, device), memory in zip(gpus, swarm.gpu_memory(node), strict=True)}
        )
        inventory.append(EngineDevices(node.name, ram, gpus, engine=swarm.name))
        engines[node.name] = swarm.host(node)
    return engines, inventory, budgets


def all_hosts(
    engines: list[EngineSettings], host_budget: int, instance: str, cleanup: bool = True
) -> tuple[dict[str, ContainerEngine], list[EngineDevices], dict[str, int]]:
    """Every host of every engine, by name; the placement's inventory; every device's budget. ``cleanup``:
    Docker engines remove what an earlier run of ``instance`` left (not in cluster mode, where the leader
    adopts what runs)."""
    if not cleanup and any(e.kind == "swarm" for e in engines):
        # A swarm engine removes its instance's services that it does not track (at startup, and on a node
        # that comes back): in a fleet, whose gateways share the instance label, that would be the leader's.
        raise ValueError("swarm engines are not supported in cluster mode yet (GATEWAY_CLUSTER_ETCD)")
    inventory, budgets = devices(engines, host_budget)
    by_name: dict[str, ContainerEngine] = {}
    for e in engines:
        if e.kind == "swarm":
            nodes, more, node_budgets = swarm_hosts(swarm_engine(e, instance))
            clash = sorted(set(nodes) & {x.name for x in engines})
            if clash:
                raise ValueError(f"swarm {e.name}'s nodes are named as engines: {clash}")
            by_name.update(nodes)
            inventory += more
            budgets.update(node_budgets)
        else:
            by_name[e.name] = docker_engine(e, instance, cleanup)
    return by_name, inventory, budgets
