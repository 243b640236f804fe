"""One container on a Docker engine: create and start it, follow its log, read its exit, remove it.

- ``run_container`` makes sure the image is there (pulled per the manifest's ``pull``), creates and starts the
  container with an engine-assigned host port, and reads that port. A container whose start failed is
  removed (the SDK's own ``run()`` leaves it behind), and one whose start was cancelled while the engine
  created it is removed once it exists.
- ``ManagedContainer`` follows its log on a thread into a bounded ring buffer; the stream ending means the
  container exited (checked against its state: the SDK's read timeout also ends a quiet stream), and its exit
  code is read then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from backends.docker.engine import DockerEngine
from backends.docker.interface import ContainerRun
from backends.errors import UpstreamUnavailable
from backends.supervisor import LogTail

log = logging.getLogger(__name__)

LOG_LINES = 200
REMOVE_SLACK = 30.0  # on top of the stop grace, for the engine to kill and remove


class ManagedContainer:
    """One running container: its id, published port, log tail and exit."""

    def __init__(self, engine: DockerEngine, name: str, container: Any, port: int) -> None:
        self.engine = engine
        self.name = name
        self.port = port
        self.log = LogTail(LOG_LINES)
        self._container = container
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self._removing = threading.Event()  # set by remove(): the follower stops retrying
        threading.Thread(target=self._follow, args=(loop,), name=f"logs-{name}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.engine.address}:{self.port}"

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: copy the log into the ring buffer until the container stops; then read its exit code.

        The SDK's read timeout also ends a log stream that is merely quiet, so an ended stream is checked
        against the container's state, and followed again (new lines only) while it still runs. An engine
        that does not answer for a while is not an exit: the follower retries with backoff until the
        container is gone or is being removed."""
        import docker.errors

        code: int | None = None
        tail: str | int = "all"
        backoff = 0.0
        while not self._removing.is_set():
            began = time.monotonic()
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
            except docker.errors.NotFound:  # removed (by us, on stop, or by someone else): over
                break
            except Exception as exc:  # the engine does not answer: not an exit; ask again
                log.debug("%s: cannot read its state: %s", self.name, exc)
            else:
                state = self._container.attrs.get("State", {})
                if not state.get("Running"):
                    code = int(state.get("ExitCode", -1))
                    break
                tail = 0
            # A stream that ended at once (an engine that cannot give logs back, or is away) must not
            # become a busy loop: wait, doubling up to 5 s, until a stream lasts.
            backoff = 0.0 if time.monotonic() - began > 5 else min(max(backoff * 2, 0.1), 5.0)
            self._removing.wait(backoff)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, self.exited, code)

    def _copy(self, chunks: Iterable[bytes]) -> None:
        pending = b""
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.log.append(line.decode(errors="replace").rstrip())
            pending = pending[-8192:]  # a line without an end is not kept whole forever

    def last_lines(self, n: int = 5) -> str:
        return self.log.last(n)

    def restarts(self) -> tuple[int, str | None]:
        return 0, None  # the engine never restarts it: the supervisor recreates the replica

    async def remove(self, grace: float) -> None:
        """SIGTERM, ``grace`` seconds, kill, remove. Never raises: an engine that is gone is logged."""

        self._removing.set()

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
    engine: DockerEngine,
    spec: ContainerRun,
    name: str,
    labels: dict[str, str],
    pull: str,
    timeout: float,
    phase: Callable[[str], None] | None = None,
) -> ManagedContainer:
    """Create and start ``spec`` on ``engine``; returns once the engine has published its port. ``phase``
    hears "pulling image ..." when the image is pulled."""
    import docker.errors
    from docker.types import DeviceRequest

    await engine.ready()

    await ensure_image(engine, spec.image, pull, timeout, phase)

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


async def ensure_image(
    engine: DockerEngine, image: str, pull: str, timeout: float, phase: Callable[[str], None] | None = None
) -> None:
    """The image on the engine: pulled when missing (``pull: missing``), never, or always. ``phase`` hears
    "pulling image" (from the engine's thread) when it is pulled."""
    import docker.errors

    def pulling(client: Any) -> None:
        if phase is not None:
            phase(f"pulling image {image}")
        client.images.pull(image)

    def get(client: Any) -> None:
        if pull == "always":
            pulling(client)
            return
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            if pull == "never":
                raise
            pulling(client)

    try:
        await engine.call(get, f"getting image {image}", timeout, once=f"image:{image}")
    except docker.errors.APIError as exc:
        raise UpstreamUnavailable(
            f"image '{image}' is not on Docker engine '{engine.name}' and cannot be pulled "
            f"(pull: {pull}): {exc.explanation or exc}"
        ) from exc


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
