"""The Docker engines container models run on, and the memory devices they add to the budget.

Settings name the engines (``GATEWAY_ENGINES`` or ``--engines FILE``); with none named, the default engine is
``DOCKER_HOST`` or the local socket, called ``local``. Each engine adds devices to the placement
(``backends.demand``): its RAM (``<engine>:ram``, from settings; a ``unix://`` engine without its
own figure shares the gateway's ``host`` budget, because it is the same machine) and each of its GPUs
(``<engine>:gpu<i>`` from settings; or, for a ``unix://`` engine, this machine's GPUs read with NVML where
the gateway can, ``host:gpu<i>``, shared by every local engine).
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
from backends.docker.engine import DockerEngine, EngineTls
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


def docker_engine(e: EngineSettings, instance: str, cleanup: bool = True) -> DockerEngine:
    url = urlparse(e.url)
    address = e.address or (url.hostname if not e.local and url.hostname else "127.0.0.1")
    tls = EngineTls(**e.tls.model_dump()) if e.tls is not None else None
    return DockerEngine(
        e.name,
        e.url,
        instance=instance,
        address=address,
        publish_ip=e.publish_ip if e.publish_ip is not None else ("127.0.0.1" if e.local else ""),
        tls=tls,
        timeout=e.timeout,
        cleanup=cleanup,
    )
