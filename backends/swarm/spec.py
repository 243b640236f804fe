"""A replica's container as a Swarm service of one task, pinned to the node the placement chose: the keyword
arguments of ``DockerClient.services.create``. Pure: no engine calls.

- One replicated task, constrained to the node (``node.id==``).
- Host networking: the server listens on a port the gateway chose (``ContainerRun.on_port``), at the node's
  address; the overlay and ingress networks need iptables, which the gateway does not ask of its hosts.
- The labels on the service and on its container (the same as the ``container`` kind's), so the gateway finds
  its services, and an operator its containers on any node.
- GPUs: the service reserves that many generic resources (``gpu_kind``, as the nodes advertise them), so
  Swarm's accounting agrees with the gateway's, and the container sees the GPUs the placement chose
  (``NVIDIA_VISIBLE_DEVICES``, read by nvidia's container runtime, which the nodes must use by default).
- Swarm restarts a task that fails (``restart_attempts`` times, 1 s apart): the gateway shows those restarts,
  and recreates the replica itself once Swarm gives up.
"""

from __future__ import annotations

from typing import Any

from backends.docker.interface import ContainerRun

RESTART_DELAY_NS = 1_000_000_000


def service_kwargs(
    run: ContainerRun,
    name: str,
    labels: dict[str, str],
    node_id: str,
    *,
    stop_grace: float,
    restart_attempts: int,
    gpu_kind: str = "gpu",
) -> dict[str, Any]:
    env = dict(run.environment)
    resources: dict[str, Any] | None = None
    if run.gpu_ids:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in run.gpu_ids)
        resources = {
            "Reservations": {
                "GenericResources": [{"DiscreteResourceSpec": {"Kind": gpu_kind, "Value": len(run.gpu_ids)}}]
            }
        }
    kwargs: dict[str, Any] = {
        "image": run.image,
        "name": name,
        "command": run.entrypoint,  # the image's entrypoint, replaced when given
        "args": run.command or None,  # None: the image's own CMD
        "labels": labels,
        "container_labels": labels,
        "env": [f"{k}={v}" for k, v in env.items()],
        "mounts": [f"{host}:{path}:{mode}" for host, (path, mode) in run.mounts.items()],
        "constraints": [f"node.id=={node_id}"],
        "networks": ["host"],
        "mode": {"Replicated": {"Replicas": 1}},
        "restart_policy": {
            "Condition": "on-failure",
            "Delay": RESTART_DELAY_NS,
            "MaxAttempts": restart_attempts,
        },
        "stop_grace_period": int(stop_grace * 1e9),
    }
    if resources is not None:
        kwargs["resources"] = resources
    return kwargs
