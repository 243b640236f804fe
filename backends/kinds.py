"""The kind registry: everything the gateway needs to know about a backend kind, declared by the kind itself,
beside its code (``backends/<kind>/kind.py``).

A kind gives:

- ``name``: the manifest's ``backend.kind``;
- ``spec``: the pydantic type of its manifest ``backend:`` block (a class, or a discriminated union of its
  own, as the container kind's presets); the gateway composes the manifest schema from every kind's;
- ``check``: rules that tie the spec to the rest of the manifest (whether ``memory`` must be given);
- ``estimate``: the memory of all its replicas together, and where the figure comes from;
- ``demand``: the units it asks of the devices (``backends.demand``), given that total;
- ``factory``: how to make its replicas (``backends.base.Backend``) once the placement chose an option per
  unit;
- optionally ``in_process = True``: its replicas run inside the gateway's own process, so in cluster mode
  each gateway serves its own under its own budget instead of the fleet sharing them (``in_process``).

The gateway reads a ``Kinds`` registry and never tests for a kind itself: a new kind is a package with a
``kind.py``, and one line in ``backends.builtin`` (or, for a kind that lives elsewhere, the registry handed
to ``build_gateway``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar, Union

from pydantic import Field, TypeAdapter

from backends.base import Backend
from backends.demand import EngineDevices, Option, Unit

if TYPE_CHECKING:
    from backends.docker.interface import ContainerEngine

S_contra = TypeVar("S_contra", contravariant=True)

MakeBackends = Callable[[Sequence[Option]], list[Backend]]


@dataclass(frozen=True)
class Model:
    """What a kind knows of the model it makes replicas for, beyond its spec."""

    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hosts:
    """Where models can run, as the gateway's settings describe it: the Docker engines by name, the devices
    they add to the placement, every device's budget (the gateway's own ``host`` included), and the
    ``llama-server`` binary the settings name (``GATEWAY_LLAMA_SERVER``), if any."""

    engines: Mapping[str, ContainerEngine] = field(default_factory=dict)  # by host (an engine, a node)
    inventory: Sequence[EngineDevices] = ()
    budgets: Mapping[str, int] = field(default_factory=dict)
    llama_server: Path | None = None


class Kind(Protocol[S_contra]):
    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> Any:
        """The pydantic type of the manifest's ``backend:`` block, with ``kind: Literal[name]``."""
        ...

    @property
    def tags(self) -> frozenset[str]:
        """Tags of the spec's own discriminated union, which pydantic puts in error locations; else empty."""
        ...

    def check(self, spec: S_contra, memory: int | None) -> None:
        """Raise ``ValueError`` when the manifest's ``memory`` (None: not given) does not suit the spec."""
        ...

    def estimate(self, spec: S_contra) -> tuple[int, str]:
        """The bytes all replicas hold together, and where that figure comes from."""
        ...

    def demand(self, spec: S_contra, total: int, hosts: Hosts) -> list[Unit]:
        """``total``: the estimate, or the manifest's ``memory`` when it gives one."""
        ...

    def factory(self, model: Model, spec: S_contra, hosts: Hosts) -> MakeBackends: ...


def in_process(kind: Kind[Any]) -> bool:
    """Whether ``kind``'s replicas run inside the gateway's process (an optional attribute of a kind)."""
    return bool(getattr(kind, "in_process", False))


class Kinds:
    """The kinds a gateway serves, by name."""

    def __init__(self, kinds: Iterable[Kind[Any]]) -> None:
        self._kinds = {k.name: k for k in kinds}
        specs = tuple(k.spec for k in self._kinds.values())
        union: Any = Union[specs] if len(specs) > 1 else specs[0]  # noqa: UP007 (a union built at run time)
        self.adapter: TypeAdapter[Any] = TypeAdapter(Annotated[union, Field(discriminator="kind")])

    def __iter__(self) -> Iterator[Kind[Any]]:
        return iter(self._kinds.values())

    def names(self) -> frozenset[str]:
        return frozenset(self._kinds)

    def get(self, name: str) -> Kind[Any] | None:
        return self._kinds.get(name)

    def of(self, spec: Any) -> Kind[Any]:
        """The kind of a validated spec."""
        return self._kinds[spec.kind]

    def with_kind(self, kind: Kind[Any]) -> Kinds:
        return Kinds([*self._kinds.values(), kind])
