"""A replica served from containers on a Docker engine: the server container, and for a llama.cpp model spread
over several hosts, its RPC worker containers (started first, stopped with it).

- Start: wait for the engine's cleanup of an earlier run's leftovers; make sure the image is there (pulled
  per the manifest's ``pull``); run the container with an engine-assigned host port; wait until its health
  path answers 200 (an RPC worker: until its port accepts connections), all within the manifest's
  ``load_timeout``. Each probe has its own short timeout, so a slow load is never killed by one.
  A start that fails or is cancelled removes every container it had started.
- Logs: a thread per container follows its log into a bounded ring buffer (``backends.managed_container``).
- A container that exits while serving: in-flight requests fail on their broken connections (502, tagged
  upstream), the replica reports unhealthy with the exit code and last log lines, and the whole replica
  (workers included) is recreated with backoff (``backends.supervise``).
- Stop: each container gets SIGTERM and ``stop_timeout`` to exit, then is killed and removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.container_presets import ContainerRun
from backends.docker_engine import LABEL_INSTANCE, LABEL_MODEL, LABEL_ROLE, LABEL_RUN, DockerEngine
from backends.errors import UpstreamUnavailable
from backends.http import HttpUpstream
from backends.managed_container import ManagedContainer, Placed, container_name, run_container
from backends.supervise import restart_with_backoff

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 3.0


class ContainerReplica:
    """One replica: a server container and any RPC worker containers. See ``backends.base``.

    ``server(rpc_addresses)`` gives the server container's spec once the workers' addresses are known."""

    def __init__(
        self,
        *,
        model: str,
        label: str,
        capacity: int,
        engine: DockerEngine,
        server: Callable[[Sequence[str]], ContainerRun],
        devices: Sequence[str],
        workers: Sequence[Placed] = (),
        pull: str = "missing",
        load_timeout: float = 600.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._model = model
        self._label = label
        self._capacity = capacity
        self._engine = engine
        self._server = server
        self._devices = tuple(devices)
        self._workers = tuple(workers)
        self._pull = pull
        self._load_timeout = load_timeout
        self._stop_timeout = stop_timeout
        self._running: list[ManagedContainer] = []  # workers first, the server last
        self._http: HttpUpstream | None = None
        self._health_path = "/health"
        self._metrics_path: str | None = None
        self._healthy = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._removals: set[asyncio.Future[list[None]]] = set()
        self.exit_status: str | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    async def start(self) -> None:
        if self._healthy:
            return
        self._stopping = False
        await self._launch()

    def _labels(self, role: str, engine: DockerEngine) -> dict[str, str]:
        return {
            LABEL_INSTANCE: engine.instance,
            LABEL_RUN: engine.run,
            LABEL_MODEL: self._model,
            LABEL_ROLE: role,
        }

    async def _launch(self) -> None:
        deadline = time.monotonic() + self._load_timeout
        try:
            started = await asyncio.gather(
                *(self._start_one(w, "rpc-worker", deadline) for w in self._workers), return_exceptions=True
            )
            failed = next((e for e in started if isinstance(e, BaseException)), None)
            if failed is not None:
                raise failed
            run = self._server([c.address for c in self._running])
            server = await self._start_one(Placed(self._engine, run), "server", deadline)
            self._health_path = run.health_path
            self._metrics_path = run.metrics_path
            key = run.api_key
            self._http = HttpUpstream(f"http://{server.address}", key)
            self._http.open()
            await self._wait_healthy(server, self._http, deadline)
        except BaseException:
            await self._remove_all()
            raise
        self._healthy = True
        self.exit_status = None
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise:{self._label}")
        log.info("%s: container %s ready at %s", self._label, server.name, server.address)

    async def _start_one(self, placed: Placed, role: str, deadline: float) -> ManagedContainer:
        name = container_name(self._model, role)
        remaining = max(1.0, deadline - time.monotonic())
        container = await run_container(
            placed, name, self._labels(role, placed.engine), self._pull, remaining
        )
        # Tracked at once: a start that fails or is cancelled later (another worker's, the server's)
        # removes every container that is up, this one included.
        self._running.append(container)
        if not placed.run.health_path:  # an RPC worker: ready when its port accepts a connection
            await _wait_port(container, deadline)
        return container

    async def _wait_healthy(self, server: ManagedContainer, http: HttpUpstream, deadline: float) -> None:
        while time.monotonic() < deadline:
            if server.exited.done():
                raise UpstreamUnavailable(
                    f"container {server.name} exited with {server.exited.result()} while loading: "
                    f"{server.last_lines()}"
                )
            if await http.get(self._health_path, timeout=HEALTH_TIMEOUT) == 200:
                return
            await asyncio.sleep(0.02)  # poll interval of a local GET: it bounds the time to first token
        raise UpstreamUnavailable(
            f"container {server.name} not healthy after {self._load_timeout:.0f}s: {server.last_lines()}"
        )

    async def _supervise(self) -> None:
        """Recreate the replica with backoff when any of its containers exits while it should serve."""
        exits = [c.exited for c in self._running]
        await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping:
            return
        dead = next(c for c in self._running if c.exited.done())
        self._healthy = False
        self.exit_status = f"{dead.name} exited with {dead.exited.result()}: {dead.last_lines()}"
        await self._remove_all()
        await restart_with_backoff(self._label, self.exit_status, self._launch, lambda: self._stopping)

    async def _remove_all(self) -> None:
        """Remove every container; returns when they are gone. The removal itself is shielded: a stop()
        that cancels the supervisor in the middle of one waits for it here instead of leaving it running
        unwatched (the model's memory counts until the containers are really gone)."""
        running, self._running = self._running, []
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        if running:
            removal = asyncio.gather(*(c.remove(self._stop_timeout) for c in reversed(running)))
            self._removals.add(removal)
            removal.add_done_callback(self._removals.discard)
        if self._removals:
            await asyncio.shield(asyncio.gather(*self._removals))

    async def stop(self) -> None:
        self._stopping = True
        self._healthy = False
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.wait({supervisor})
        await self._remove_all()  # what is running, and any removal the supervisor had begun

    async def health(self) -> bool:
        if not self._healthy or self._http is None or any(c.exited.done() for c in self._running):
            return False
        return await self._http.get(self._health_path, timeout=HEALTH_TIMEOUT) == 200

    def describe(self) -> ReplicaInfo:
        server = self._running[-1] if self._running else None
        return ReplicaInfo(
            url=self._http.base_url if self._http else None,
            metrics_url=f"{self._http.base_url}{self._metrics_path}"
            if self._http and self._metrics_path
            else None,
            container=server.name if server else None,
            engine=self._engine.name,
            devices=self._devices,
            exit_status=self.exit_status,
            log=tuple(server.log) if server else (),
        )

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        http = self._http
        if not self._healthy or http is None:
            raise UpstreamUnavailable(f"replica {self._label} is down ({self.exit_status or 'starting'})")
        return await http.forward(request)


async def _wait_port(container: ManagedContainer, deadline: float) -> None:
    host, port = container.engine.address, container.port
    while time.monotonic() < deadline:
        if container.exited.done():
            code = container.exited.result()
            raise UpstreamUnavailable(
                f"container {container.name} exited with {code}: {container.last_lines()}"
            )
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)  # poll interval, not synchronisation
    raise UpstreamUnavailable(
        f"container {container.name} did not open port {port}: {container.last_lines()}"
    )
