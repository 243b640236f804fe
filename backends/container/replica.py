"""A replica served from containers on a Docker engine: the server container, and for a llama.cpp model spread
over several hosts, its RPC worker containers (started first, stopped with it).

- Launch: wait for the engine's cleanup of an earlier run's leftovers; make sure the image is there (pulled
  per the manifest's ``pull``); run the workers, each ready when its port accepts connections, then the
  server container with an engine-assigned host port, all within the manifest's ``load_timeout``. A launch
  that fails or is cancelled removes every container it had started.
- The supervisor (``backends.supervisor``) waits for the server's health path, recreates the whole replica
  (workers included) with backoff when any of its containers exits while serving, and stops it.
- Logs: a thread per container follows its log into a bounded ring buffer (``backends.docker.container``).
- End: each container gets SIGTERM and ``stop_timeout`` to exit, then is killed and removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from backends.base import ReplicaInfo
from backends.docker.container import container_name
from backends.docker.engine import LABEL_INSTANCE, LABEL_MODEL, LABEL_ROLE, LABEL_RUN
from backends.docker.interface import ContainerEngine, ContainerRun, Placed, RunningContainer
from backends.errors import UpstreamUnavailable
from backends.supervisor import HEALTH_TIMEOUT, Run, SupervisedReplica
from backends.upstream.forward import HttpUpstream


class ContainersRun:
    """A server container and its workers (a ``backends.supervisor.Run``)."""

    def __init__(self, containers: list[RunningContainer], run: ContainerRun, stop_timeout: float) -> None:
        self.containers = containers  # workers first, the server last
        self.server = containers[-1]
        self.log = self.server.log
        self.health_path = run.health_path
        self.metrics_path = run.metrics_path
        self.http = HttpUpstream(f"http://{self.server.address}", run.api_key)
        self.http.open()
        self._stop_timeout = stop_timeout
        self.exited: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._watch = asyncio.create_task(self._first_exit(), name=f"exits:{self.server.name}")
        self._ending: asyncio.Future[None] | None = None

    async def _first_exit(self) -> None:
        await asyncio.wait([c.exited for c in self.containers], return_when=asyncio.FIRST_COMPLETED)
        dead = next(c for c in self.containers if c.exited.done())
        self.exited.set_result(f"{dead.name} exited with {dead.exited.result()}: {dead.last_lines()}")

    async def failure(self) -> UpstreamUnavailable:
        server, code = self.server, self.server.exited.result()
        return UpstreamUnavailable(
            f"container {server.name} exited with {code} while loading: {server.last_lines()}"
        )

    async def end(self) -> None:
        if self._ending is None:  # once, however many callers
            self._ending = asyncio.ensure_future(self._end())
        await self._ending

    async def _end(self) -> None:
        self._watch.cancel()
        await self.http.close()
        await _remove(self.containers, self._stop_timeout)


async def _remove(containers: Sequence[RunningContainer], grace: float) -> None:
    await asyncio.gather(*(c.remove(grace) for c in reversed(containers)))


class _Started:
    """The containers a launch has started so far, removable as one ``Run`` if the launch fails."""

    def __init__(self, stop_timeout: float) -> None:
        self.containers: list[RunningContainer] = []
        self._stop_timeout = stop_timeout

    async def end(self) -> None:
        await _remove(self.containers, self._stop_timeout)


class ContainerReplica(SupervisedReplica):
    STARTING = "waiting for the server to listen"
    LOADING = "loading weights / warming up"  # its health path answers, not 200 yet
    """One replica: a server container and any RPC worker containers. See ``backends.base``.

    ``server(rpc_addresses)`` gives the server container's spec once the workers' addresses are known."""

    def __init__(
        self,
        *,
        model: str,
        label: str,
        capacity: int,
        engine: ContainerEngine,
        server: Callable[[Sequence[str]], ContainerRun],
        devices: Sequence[str],
        workers: Sequence[Placed] = (),
        pull: str = "missing",
        load_timeout: float = 600.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(label, capacity, load_timeout)
        self._model = model
        self._engine = engine
        self._server = server
        self._devices = tuple(devices)
        self._workers = tuple(workers)
        self._pull = pull
        self._stop_timeout = stop_timeout

    def describe(self) -> ReplicaInfo:
        run = self._run
        info = dataclasses.replace(self._info(), engine=self._engine.name, devices=self._devices)
        if not isinstance(run, ContainersRun):
            return info
        metrics = f"{run.http.base_url}{run.metrics_path}" if run.metrics_path else None
        restarts, last_exit = run.server.restarts()
        return dataclasses.replace(
            info, metrics_url=metrics, container=run.server.name, restarts=restarts, last_exit=last_exit
        )

    def _labels(self, role: str, engine: ContainerEngine) -> dict[str, str]:
        return {
            LABEL_INSTANCE: engine.instance,
            LABEL_RUN: engine.run,
            LABEL_MODEL: self._model,
            LABEL_ROLE: role,
        }

    async def _launch_once(self, deadline: float) -> Run:
        started = _Started(self._stop_timeout)
        try:
            results = await asyncio.gather(
                *(self._start_one(w, "rpc-worker", deadline, started) for w in self._workers),
                return_exceptions=True,
            )
            failed = next((e for e in results if isinstance(e, BaseException)), None)
            if failed is not None:
                raise failed
            run = self._server([c.address for c in started.containers])
            await self._start_one(Placed(self._engine, run), "server", deadline, started)
            return ContainersRun(started.containers, run, self._stop_timeout)
        except BaseException:
            await self._end(started)
            raise

    def _set_phase(self, phase: str) -> None:
        """Called by the engine (from its thread, for a pull: a plain attribute write)."""
        self.phase = phase

    async def _start_one(
        self, placed: Placed, role: str, deadline: float, started: _Started
    ) -> RunningContainer:
        name = container_name(self._model, role)
        remaining = max(1.0, deadline - time.monotonic())
        labels = self._labels(role, placed.engine)
        self.phase = f"starting {role} container"
        container = await placed.engine.run_container(
            placed.run, name, labels, self._pull, remaining, phase=self._set_phase
        )
        # Tracked at once: a launch that fails or is cancelled later (another worker's, the server's)
        # removes every container that is up, this one included.
        started.containers.append(container)
        if not placed.run.health_path:  # an RPC worker: ready when its port accepts a connection
            await _wait_port(container, deadline)
        return container


async def _wait_port(container: RunningContainer, deadline: float) -> None:
    host, _, port = container.address.rpartition(":")
    while time.monotonic() < deadline:
        if container.exited.done():
            code = container.exited.result()
            raise UpstreamUnavailable(
                f"container {container.name} exited with {code}: {container.last_lines()}"
            )
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)  # poll interval, not synchronisation
    raise UpstreamUnavailable(
        f"container {container.name} did not open port {port}: {container.last_lines()}"
    )
