"""A replica served from containers on a Docker engine: the server container, and for a llama.cpp model spread
over several hosts, its RPC worker containers (started first, stopped with it).

- Start: wait for the engine's cleanup of an earlier run's leftovers; make sure the image is there (pulled
  per the manifest's ``pull``); run the container with an engine-assigned host port; wait until its health
  path answers 200 (an RPC worker: until its port accepts connections), all within the manifest's
  ``load_timeout``. Each probe has its own short timeout, so a slow load is never killed by one.
  A start that fails or is cancelled removes every container it had started.
- Logs: a thread per container follows its log into a bounded ring buffer; the stream ending means the
  container exited, and its exit code is read then.
- A container that exits while serving: in-flight requests fail on their broken connections (502, tagged
  upstream), the replica reports unhealthy with the exit code and last log lines, and the whole replica
  (workers included) is recreated with backoff (``backends.supervise``).
- Stop: each container gets SIGTERM and ``stop_timeout`` to exit, then is killed and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.container_presets import ContainerRun
from backends.docker_engine import LABEL_INSTANCE, LABEL_MODEL, LABEL_ROLE, DockerEngine
from backends.errors import UpstreamUnavailable
from backends.http import HttpUpstream
from backends.supervise import restart_with_backoff

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 3.0
LOG_LINES = 200
REMOVE_SLACK = 30.0  # on top of the stop grace, for the engine to kill and remove


@dataclass(frozen=True)
class Placed:
    """A container to run on an engine, with the budget devices it was placed on (for operators)."""

    engine: DockerEngine
    run: ContainerRun
    devices: tuple[str, ...] = ()


class ManagedContainer:
    """One running container: its id, published port, log tail and exit."""

    def __init__(self, engine: DockerEngine, name: str, container: Any, port: int) -> None:
        self.engine = engine
        self.name = name
        self.port = port
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self._container = container
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        threading.Thread(target=self._follow, args=(loop,), name=f"logs-{name}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.engine.address}:{self.port}"

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: copy the log into the ring buffer until the container stops; then read its exit code.

        The SDK's read timeout also ends a log stream that is merely quiet, so an ended stream is checked
        against the container's state, and followed again (new lines only) while it still runs."""
        code: int | None = None
        tail: str | int = "all"
        while True:
            try:
                stream = self._container.logs(stream=True, follow=True, tail=tail)
                try:
                    self._copy(stream)
                finally:
                    stream.close()  # its socket: the SDK does not close it when the stream ends
            except Exception as exc:  # a quiet stream timed out, or the engine went away
                log.debug("%s: log stream ended: %s", self.name, exc)
            try:
                self._container.reload()
            except Exception:  # removed (by us, on stop) or unreachable: over either way
                break
            state = self._container.attrs.get("State", {})
            if not state.get("Running"):
                code = int(state.get("ExitCode", -1))
                break
            tail = 0
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, self.exited, code)

    def _copy(self, chunks: Iterable[bytes]) -> None:
        pending = b""
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self.log.extend(line.decode(errors="replace").rstrip() for line in lines)
            pending = pending[-8192:]  # a line without an end is not kept whole forever

    def last_lines(self, n: int = 5) -> str:
        return " | ".join(list(self.log)[-n:]) or "(no output)"

    async def remove(self, grace: float) -> None:
        """SIGTERM, ``grace`` seconds, kill, remove. Never raises: an engine that is gone is logged."""

        def stop_and_remove(_client: Any) -> None:
            import docker.errors

            with contextlib.suppress(docker.errors.NotFound):
                self._container.stop(timeout=int(grace))
            with contextlib.suppress(docker.errors.NotFound):
                self._container.remove(force=True)

        try:
            await self.engine.call(stop_and_remove, f"removing {self.name}", grace + REMOVE_SLACK)
        except Exception as exc:
            log.warning("%s: could not remove container on %s: %s", self.name, self.engine.name, exc)
            return
        # The log follower sees the end and makes its last engine call; wait for it, so that no thread
        # still uses the engine's client when the gateway closes it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.engine.timeout):
                await asyncio.shield(self.exited)


def _resolve(future: asyncio.Future[int | None], code: int | None) -> None:
    if not future.done():
        future.set_result(code)


async def run_container(
    placed: Placed, name: str, labels: dict[str, str], pull: str, timeout: float
) -> ManagedContainer:
    """Create and start ``placed.run`` on its engine; returns once the engine has published its port."""
    import docker.errors
    from docker.types import DeviceRequest

    engine, spec = placed.engine, placed.run
    await engine.ready()

    def ensure_image(client: Any) -> None:
        if pull == "always":
            client.images.pull(spec.image)
            return
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            if pull == "never":
                raise
            client.images.pull(spec.image)

    try:
        await engine.call(ensure_image, f"getting image {spec.image}", timeout)
    except docker.errors.APIError as exc:
        raise UpstreamUnavailable(
            f"image '{spec.image}' is not on Docker engine '{engine.name}' and cannot be pulled "
            f"(pull: {pull}): {exc.explanation or exc}"
        ) from exc

    kwargs = spec.run_kwargs("" if spec.public else engine.publish_ip)
    if "device_requests" in kwargs:
        kwargs["device_requests"] = [DeviceRequest(**r) for r in kwargs["device_requests"]]

    def run(client: Any) -> tuple[Any, int]:
        container = client.containers.create(name=name, labels=labels, **kwargs)
        try:  # the SDK's run() leaves a container whose start failed behind: remove it here
            container.start()
            container.reload()
            bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{spec.port}/tcp") or []
            if not bindings:
                raise UpstreamUnavailable(f"engine '{engine.name}' published no port for {name}")
            return container, int(bindings[0]["HostPort"])
        except BaseException:
            container.remove(force=True)
            raise

    # Shielded: a start cancelled while the engine creates the container must still remove what it made.
    starting = asyncio.ensure_future(engine.call(run, f"starting {name}", timeout))
    try:
        container, port = await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(lambda task: _discard(engine, name, task))
        raise
    except docker.errors.APIError as exc:
        raise UpstreamUnavailable(
            f"Docker engine '{engine.name}' refused to start {name}: {exc.explanation or exc}"
        ) from exc
    return ManagedContainer(engine, name, container, port)


def _discard(engine: DockerEngine, name: str, started: asyncio.Future[tuple[Any, int]]) -> None:
    """Remove a container whose start was cancelled once the engine has created it anyway."""
    if started.cancelled() or started.exception() is not None:
        return
    container, _ = started.result()

    def remove(_client: Any) -> None:
        container.remove(force=True)

    async def discard() -> None:
        try:
            await engine.call(remove, f"removing {name}")
        except Exception as exc:
            log.warning("%s: could not remove the container of a cancelled start: %s", name, exc)

    engine.spawn(discard())


def container_name(model: str, role: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", model)[:40]
    return f"llmgw-{safe}-{role}-{secrets.token_hex(3)}"


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
        self._healthy = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.exit_status: str | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    async def start(self) -> None:
        if self._healthy:
            return
        self._stopping = False
        await self._launch()

    def _labels(self, role: str) -> dict[str, str]:
        return {LABEL_INSTANCE: self._engine.instance, LABEL_MODEL: self._model, LABEL_ROLE: role}

    async def _launch(self) -> None:
        deadline = time.monotonic() + self._load_timeout
        try:
            started = await asyncio.gather(
                *(self._start_one(w, "rpc-worker", deadline) for w in self._workers), return_exceptions=True
            )
            self._running = [c for c in started if isinstance(c, ManagedContainer)]
            failed = next((e for e in started if isinstance(e, BaseException)), None)
            if failed is not None:
                raise failed
            run = self._server([c.address for c in self._running])
            server = await self._start_one(Placed(self._engine, run), "server", deadline)
            self._running.append(server)
            self._health_path = run.health_path
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
        container = await run_container(placed, name, self._labels(role), self._pull, remaining)
        if not placed.run.health_path:  # an RPC worker: ready when its port accepts a connection
            try:
                await _wait_port(container, deadline)
            except BaseException:
                await container.remove(self._stop_timeout)
                raise
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
        running, self._running = self._running, []
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        await asyncio.gather(*(c.remove(self._stop_timeout) for c in reversed(running)))

    async def stop(self) -> None:
        self._stopping = True
        self._healthy = False
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.wait({supervisor})
        await self._remove_all()

    async def health(self) -> bool:
        if not self._healthy or self._http is None or any(c.exited.done() for c in self._running):
            return False
        return await self._http.get(self._health_path, timeout=HEALTH_TIMEOUT) == 200

    def describe(self) -> ReplicaInfo:
        server = self._running[-1] if self._running else None
        return ReplicaInfo(
            url=self._http.base_url if self._http else None,
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
