"""A Docker Swarm as one engine: the gateway talks to one manager; each node is a host of the placement.

- Inventory: at startup the manager lists the nodes (``nodes.parse_nodes``), each a host named
  ``<engine>.<node>`` with its RAM and GPUs (settings override them); ``host(node)`` is the node as a
  ``ContainerEngine`` (``backends.docker.interface``), which runs a replica as a one-task service pinned to
  it (``spec.service_kwargs``, ``service.ServiceContainer``).
- Ports: with host networking the server's port is the node's. The gateway picks it from the engine's range,
  never one of its live services' (on any node: nodes may share a machine), nor one taken on this machine.
- Watch: a loop reads the nodes and the tasks every ``watch_interval``. A node that stops being up, or comes
  back, is reported to the listener (the scheduler's host-loss hook) at once; the tasks tell each service
  how Swarm restarted it. An unreachable manager is logged, never taken for nodes that went down.
- Cleanup: the services an earlier run of this gateway instance left are removed before the first of this
  run's starts; when a node comes back, the services of this instance pinned to it that this run does not
  track are removed too (Swarm then removes their containers on the node).

The manager connection, its thread pool and its deadlines are ``DockerEngine``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from backends.docker.engine import LABEL_INSTANCE, LABEL_RUN, DockerEngine, EngineTls
from backends.docker.interface import ContainerRun, HostListener
from backends.errors import UpstreamUnavailable
from backends.swarm.nodes import Node, changes, parse_nodes
from backends.swarm.service import ServiceContainer
from backends.swarm.spec import service_kwargs

log = logging.getLogger(__name__)

LABEL_NODE = "llm-gateway.node"
REMOVE_SLACK = 30.0
MAX_NAME = 63


@dataclass(frozen=True)
class NodeOverride:
    """What the settings say of a node, over what it reports."""

    memory: int | None = None
    gpus: tuple[int, ...] | None = None  # memory of each GPU
    address: str | None = None


class SwarmEngine(DockerEngine):
    def __init__(
        self,
        name: str,
        url: str,
        *,
        instance: str,
        tls: EngineTls | None = None,
        timeout: float = 60.0,
        overrides: Mapping[str, NodeOverride] | None = None,
        ports: tuple[int, int] = (20000, 29999),
        watch_interval: float = 0.5,
        stop_grace: float = 10.0,
        restart_attempts: int = 3,
        gpu_kind: str = "gpu",
    ) -> None:
        super().__init__(name, url, instance=instance, address="", publish_ip="", tls=tls, timeout=timeout)
        self.overrides = dict(overrides or {})
        self.ports = ports
        self.watch_interval = watch_interval
        self.stop_grace = stop_grace
        self.restart_attempts = restart_attempts
        self.gpu_kind = gpu_kind
        self.nodes: dict[str, Node] = {}  # by host name
        self.unreachable: str | None = None  # why the last look at the manager failed
        self._services: dict[str, ServiceContainer] = {}  # this run's, by service id
        self._creating: set[str] = set()  # names of services being created (not tracked yet)
        self._ports: set[int] = set()
        self._held: dict[str, set[int]] = {}  # ports of services removed while their node was down, by host
        self._next_port = ports[0]
        self._up: dict[str, bool] = {}
        self._listeners: list[HostListener] = []
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SwarmEngine({self.name!r}, {self.url!r})"

    def client(self) -> Any:
        """The manager's client, for a service's log follower (a thread of its own)."""
        if self._closed:  # never a new client once closed: it would be left open
            raise UpstreamUnavailable(f"swarm engine '{self.name}' is closed")
        return self._connect()

    # -- inventory ---------------------------------------------------------------------------------------
    def discover(self) -> list[Node]:
        """The nodes, from the manager (blocking; at startup), with the settings' overrides. A manager that
        does not answer gives none: the engine's models cannot be placed until a restart finds it."""
        try:
            self._check_socket()
            attrs = self._connect().api.nodes()
        except UpstreamUnavailable as exc:
            log.error("%s; the engine has no nodes until the gateway restarts", exc)
            return []
        except Exception as exc:  # the SDK's errors: unreachable, a TLS handshake refused
            unreachable = self._unreachable("listing its nodes", exc)
            log.error("%s; the engine has no nodes until the gateway restarts", unreachable)
            return []
        nodes = []
        for node in parse_nodes(attrs):
            o = self.overrides.get(node.name, NodeOverride())
            node = replace(
                node,
                name=f"{self.name}.{node.name}",
                memory=o.memory if o.memory is not None else node.memory,
                gpus=len(o.gpus) if o.gpus is not None else node.gpus,
                address=o.address or node.address,
            )
            nodes.append(node)
        self.nodes = {n.name: n for n in nodes}
        self._up = {n.name: n.up for n in nodes}
        return nodes

    def gpu_memory(self, node: Node) -> list[int]:
        o = self.overrides.get(node.name.removeprefix(f"{self.name}."), NodeOverride())
        if o.gpus is not None:
            return list(o.gpus)
        return [node.gpu_memory or 0] * node.gpus

    def host(self, node: Node) -> SwarmNode:
        return SwarmNode(self, node)

    # -- running a replica -------------------------------------------------------------------------------
    def _take_port(self) -> int:
        low, high = self.ports
        for _ in range(high - low + 1):
            port, self._next_port = self._next_port, low + (self._next_port + 1 - low) % (high - low + 1)
            if port not in self._ports and _free_here(port):
                self._ports.add(port)
                return port
        raise UpstreamUnavailable(f"swarm engine '{self.name}': no free port in {low}-{high}")

    async def run_on(
        self, node: Node, run: ContainerRun, name: str, labels: dict[str, str], timeout: float
    ) -> ServiceContainer:
        import docker.errors

        await self.ready()
        self._start_watch()
        if (
            len(name) > MAX_NAME
        ):  # a service's name is a DNS label: keep the random suffix that makes it unique
            name = name[: MAX_NAME - 7] + name[-7:]
        deadline = time.monotonic() + timeout
        port = self._take_port()
        kwargs = service_kwargs(
            run.on_port(port),
            name,
            {**labels, LABEL_NODE: node.name},
            node.id,
            stop_grace=self.stop_grace,
            restart_attempts=self.restart_attempts,
            gpu_kind=self.gpu_kind,
        )
        self._creating.add(name)
        creating = asyncio.ensure_future(
            self.call(lambda c: c.services.create(**kwargs), f"creating service {name}", timeout)
        )
        try:
            service = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(lambda task: self._discard(name, port, task))
            raise
        except docker.errors.APIError as exc:
            self._ports.discard(port)
            raise UpstreamUnavailable(
                f"swarm engine '{self.name}' refused to create {name}: {exc.explanation or exc}"
            ) from exc
        except BaseException:
            self._ports.discard(port)
            raise
        finally:
            self._creating.discard(name)
        container = ServiceContainer(self, node, name, service.id, port)
        self._services[service.id] = container
        try:
            await container.wait_running(deadline)
        except BaseException:
            await asyncio.shield(container.remove(0))
            raise
        return container

    def _discard(self, name: str, port: int, created: asyncio.Future[Any]) -> None:
        """Remove a service whose start was cancelled once the manager has created it anyway."""
        if created.cancelled() or created.exception() is not None:
            self._ports.discard(port)
            return
        service = created.result()

        async def discard() -> None:
            try:
                await self.call(lambda _c: service.remove(), f"removing {name}")
            except Exception as exc:
                log.warning("%s: could not remove the service of a cancelled start: %s", name, exc)
            self._ports.discard(port)

        self.spawn(discard())

    async def remove_service(self, container: ServiceContainer, grace: float) -> None:
        """Remove ``container``'s service; wait for its task to stop where its node is up. Never raises."""
        import docker.errors

        service_id = container.service_id

        def remove(client: Any) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_service(service_id)

        try:
            await self.call(remove, f"removing {container.name}")
        except Exception as exc:
            log.warning("%s: could not remove service on %s: %s", container.name, self.name, exc)
            return
        finally:
            self._services.pop(service_id, None)
        if self._up.get(container.node.name, False):
            await self._until_stopped(container, grace + REMOVE_SLACK)
            self._ports.discard(container.port)
        else:  # the task may still hold it on the lost node: free once the node is back and has removed it
            self._held.setdefault(container.node.name, set()).add(container.port)

    async def _until_stopped(self, container: ServiceContainer, within: float) -> None:
        service_id = container.service_id
        end = time.monotonic() + within
        while time.monotonic() < end:
            try:
                tasks = await self.call(
                    lambda c: c.api.tasks(filters={"service": service_id}), f"waiting for {container.name}"
                )
            except UpstreamUnavailable:
                return
            if not any(t.get("Status", {}).get("State") == "running" for t in tasks):
                return
            await asyncio.sleep(0.2)  # poll interval, not synchronisation

    # -- watch -------------------------------------------------------------------------------------------
    def start_watch(self, listener: HostListener) -> None:
        self._listeners.append(listener)
        self._start_watch()

    def _start_watch(self) -> None:
        if self._watch is None and not self._closed:
            self._watch = asyncio.get_running_loop().create_task(self._watching(), name=f"watch:{self.name}")

    async def _watching(self) -> None:
        while True:
            try:
                nodes, tasks = await self.call(
                    lambda c: (c.api.nodes(), c.api.tasks()), "watching its nodes", self.watch_interval + 5
                )
            except UpstreamUnavailable as exc:
                if self.unreachable is None:
                    log.warning("%s; its nodes' state is unknown until it answers", exc)
                self.unreachable = str(exc)
            else:
                if self.unreachable is not None:
                    log.warning("swarm engine %s answers again", self.name)
                self.unreachable = None
                self._apply(parse_nodes(nodes), tasks)
            await asyncio.sleep(self.watch_interval)  # the watch's period

    def _apply(self, nodes: Sequence[Node], tasks: Sequence[dict[str, Any]]) -> None:
        now = {f"{self.name}.{n.name}": n.up for n in nodes}
        now = {h: up for h, up in now.items() if h in self._up}  # nodes the inventory does not know: ignored
        down, up = changes(self._up, now)
        self._up.update(now)
        for host in down:
            log.warning("swarm engine %s: node %s is down", self.name, host)
            for listener in self._listeners:
                listener.host_down(host)
        for host in up:
            log.warning("swarm engine %s: node %s is back", self.name, host)
            for listener in self._listeners:
                listener.host_up(host)
            self.spawn(self._remove_untracked(host))
            self._ports -= self._held.pop(host, set())  # and still skipped while anything listens on one
        by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            by_service.setdefault(task.get("ServiceID", ""), []).append(task)
        for service_id, container in list(self._services.items()):
            container.update(by_service.get(service_id, []))

    def is_up(self, host: str) -> bool:
        return self._up.get(host, False)

    # -- cleanup -----------------------------------------------------------------------------------------
    async def _remove_leftovers(self) -> None:
        try:
            gone = await self.call(self._remove_services(None), "removing leftover services")
        except UpstreamUnavailable as exc:
            log.warning("%s; leftovers of an earlier run were not removed", exc)
            self._cleanup = None
            return
        if gone:
            log.warning(
                "swarm engine %s: removed %d services an earlier run left: %s", self.name, len(gone), gone
            )

    async def _remove_untracked(self, host: str) -> None:
        try:
            gone = await self.call(self._remove_services(host), f"removing leftovers on {host}")
        except UpstreamUnavailable as exc:
            log.warning("%s; leftovers on %s were not removed", exc, host)
            return
        if gone:
            log.warning(
                "swarm engine %s: removed %d services left on %s: %s", self.name, len(gone), host, gone
            )

    def _remove_services(self, host: str | None) -> Any:
        """The removal of this instance's services that are not this run's (``host`` None), or that this run
        does not track and are pinned to ``host``."""

        def remove(client: Any) -> list[str]:
            gone = []
            for service in client.services.list(filters={"label": f"{LABEL_INSTANCE}={self.instance}"}):
                labels = service.attrs.get("Spec", {}).get("Labels", {})
                name = service.name
                if host is None:
                    stale = labels.get(LABEL_RUN) != self.run
                else:
                    stale = (
                        labels.get(LABEL_NODE) == host
                        and service.id not in self._services
                        and name not in self._creating
                    )
                if stale:
                    service.remove()
                    gone.append(name)
            return gone

        return remove

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await super().close()


def _free_here(port: int) -> bool:
    """Nothing listens on ``port`` on this machine (where nodes share it with the gateway, as in the tests;
    elsewhere a cheap check that does no harm)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class SwarmNode:
    """One node of a swarm as a ``ContainerEngine``: its replicas are services pinned to it."""

    def __init__(self, swarm: SwarmEngine, node: Node) -> None:
        self.swarm = swarm
        self.node = node
        self.name = node.name
        self.instance = swarm.instance
        self.run = swarm.run
        self.address = node.address

    def __repr__(self) -> str:
        return f"SwarmNode({self.name!r})"

    def start_cleanup(self) -> asyncio.Task[None]:
        return self.swarm.start_cleanup()

    async def ready(self) -> None:
        await self.swarm.ready()

    async def run_container(
        self,
        run: ContainerRun,
        name: str,
        labels: dict[str, str],
        pull: str,
        timeout: float,
        phase: Callable[[str], None] | None = None,
    ) -> ServiceContainer:
        """``pull`` is Swarm's to apply: each node pulls an image it lacks from the registry it names (the
        service's start covers it, so ``phase`` hears nothing more than the replica's own)."""
        return await self.swarm.run_on(self.node, run, name, labels, timeout)

    def start_watch(self, listener: HostListener) -> None:
        if listener not in self.swarm._listeners:
            self.swarm.start_watch(listener)

    async def close(self) -> None:
        await self.swarm.close()
