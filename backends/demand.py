"""What a model asks of the memory devices: the vocabulary that each backend kind uses to state its demand and
that the gateway's placement (``gateway.scheduling.placement``) decides over.

Memory is budgeted per **device**: a named pool with its own budget. The gateway's own machine is one device
(``host``); each Docker engine adds its RAM (``<engine>:ram``) and each of its GPUs (``<engine>:gpu<i>``). A
model's demand is a list of **units** (a replica's container, an RPC worker...), and each unit has one or more
**options**, the alternative places it could go, each claiming bytes on some devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HOST = "host"  # the gateway's own machine: the in-process and launched-process kinds


@dataclass(frozen=True)
class Option:
    """One place a unit could go: the bytes it would hold on each device, and, for the backend that will run
    it there, the engine and GPU indices it names (opaque to the placement)."""

    claims: Mapping[str, int]
    engine: str | None = None
    gpus: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.claims.values())


Unit = Sequence[Option]


@dataclass(frozen=True)
class EngineDevices:
    """A host as the placement sees it: the device of its RAM and its GPUs (index, device). A host is a Docker
    engine, or a node of an orchestrating engine (a swarm), named ``<engine>.<node>``, with ``engine`` the
    engine's name: a manifest that names the engine may run on any of its nodes."""

    name: str
    ram: str
    gpus: tuple[tuple[int, str], ...] = ()
    engine: str | None = None


def on_host(total: int) -> list[Unit]:
    """The demand of a model that runs on the gateway's own machine: one unit, all of it on ``host``."""
    return [[Option({HOST: total})]]
