"""A swarm's nodes as the gateway sees them, and the tasks of its services: pure readings of the Engine API's
JSON, and the decisions taken on them (which hosts went down or came back, how a service's task fared).

A node's name in the inventory is ``<engine>.<node>``, ``<node>`` being its label ``llm-gateway.name``, else
its hostname (with its id's first characters when two nodes share a hostname). Its address (where its
host-network containers answer) is its label ``llm-gateway.address``, else the address the manager sees it
at. Its RAM is what it reports (``Description.Resources.MemoryBytes``); its GPUs are its generic resources
(a discrete ``gpu`` count, or named ``NVIDIA-GPU`` ids as nvidia's runtime advertises them), each with the
memory of its label ``llm-gateway.gpu-memory`` (bytes). The engine's settings override any of these.

A node is up while it is ``ready`` and ``active``; ``down``, ``unknown``, ``disconnected``, or drained, it is
not (a drained node's tasks would be moved, and ours are pinned to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LABEL_NAME = "llm-gateway.name"
LABEL_ADDRESS = "llm-gateway.address"
LABEL_GPU_MEMORY = "llm-gateway.gpu-memory"
GPU_KINDS = ("gpu", "nvidia-gpu")  # generic resource kinds counted as GPUs (case-insensitive)
TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    address: str
    up: bool
    memory: int
    gpus: int = 0
    gpu_memory: int | None = None


def _gpus(resources: Mapping[str, Any]) -> int:
    count = 0
    for generic in resources.get("GenericResources") or []:
        discrete, named = generic.get("DiscreteResourceSpec"), generic.get("NamedResourceSpec")
        if discrete and str(discrete.get("Kind", "")).lower() in GPU_KINDS:
            count += int(discrete.get("Value", 0))
        elif named and str(named.get("Kind", "")).lower() in GPU_KINDS:
            count += 1
    return count


def parse_nodes(attrs: Sequence[Mapping[str, Any]]) -> list[Node]:
    """Nodes from ``GET /nodes``, named as the module's docstring says."""
    hostnames = [a.get("Description", {}).get("Hostname", "") for a in attrs]
    nodes = []
    for a, hostname in zip(attrs, hostnames, strict=True):
        labels = a.get("Spec", {}).get("Labels") or {}
        name = labels.get(LABEL_NAME) or hostname or a["ID"][:12]
        if LABEL_NAME not in labels and hostnames.count(hostname) > 1:
            name = f"{hostname}-{a['ID'][:6]}"
        status, spec = a.get("Status", {}), a.get("Spec", {})
        resources = a.get("Description", {}).get("Resources", {})
        gpu_memory = labels.get(LABEL_GPU_MEMORY)
        nodes.append(
            Node(
                id=a["ID"],
                name=name,
                address=labels.get(LABEL_ADDRESS) or status.get("Addr", ""),
                up=status.get("State") == "ready" and spec.get("Availability", "active") == "active",
                memory=int(resources.get("MemoryBytes", 0)),
                gpus=_gpus(resources),
                gpu_memory=int(gpu_memory) if gpu_memory and gpu_memory.isdigit() else None,
            )
        )
    return nodes


def changes(before: Mapping[str, bool], now: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """The hosts that went down and those that came back between two readings (host: up). A host that
    vanished from the swarm (removed) is down; a host seen for the first time is neither: it is not in the
    inventory the placement knows."""
    down = [h for h, up in before.items() if up and not now.get(h, False)]
    up = [h for h, was in before.items() if not was and now.get(h, False)]
    return down, up


@dataclass(frozen=True)
class TaskState:
    """How a service's one-task replica fares: its task running now (if any), how often Swarm restarted it,
    why the last one ended, and whether Swarm has given up (no task left that may still run)."""

    running: bool
    restarts: int
    last_exit: str | None
    given_up: bool
    exit_code: int | None


def task_state(tasks: Iterable[Mapping[str, Any]], max_attempts: int) -> TaskState:
    """Read a service's tasks (``GET /tasks?service=ID``), oldest first by creation."""
    ordered = sorted(tasks, key=lambda t: str(t.get("CreatedAt", "")))
    ended = [t for t in ordered if t.get("Status", {}).get("State") in TERMINAL]
    live = [t for t in ordered if t.get("Status", {}).get("State") not in TERMINAL]
    running = any(t["Status"].get("State") == "running" for t in live)
    last_exit, code = None, None
    if ended:
        status = ended[-1].get("Status", {})
        code = status.get("ContainerStatus", {}).get("ExitCode")
        last_exit = f"{status.get('State')}: exit code {code}" + (
            f": {status['Err']}" if status.get("Err") else ""
        )
    # a task that ended while a newer one exists (or may come) was restarted by Swarm
    restarts = len(ended) if live else max(len(ended) - 1, 0)
    given_up = not live and len(ended) > max_attempts
    return TaskState(running, restarts, last_exit, given_up, code)
