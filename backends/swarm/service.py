"""One replica's service on a swarm (``backends.swarm.spec``): wait until its task runs, follow its log,
read how its task fares (from the engine's watch), remove it.

- ``wait_running``: the task runs on its node within the deadline, or the start fails with the task's own
  error (an image missing on the node, a binary that cannot start, no node that satisfies the constraint).
- The log: a thread follows ``service logs`` into a bounded ring buffer, again after a stream that ended
  (the SDK's read timeout ends a quiet one), until the service is removed.
- Restarts: the engine's watch reads every task of the service (``nodes.task_state``); Swarm's own restarts
  are counted, and once Swarm has given up the replica has exited (the supervisor recreates it).
- Removal: the service is removed through the manager (Swarm stops its task with the stop grace); on a node
  that is up the port is free once the task has stopped, on a node that is down whenever it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from backends.errors import UpstreamUnavailable
from backends.supervisor import LogTail
from backends.swarm.nodes import Node, TaskState, task_state

T = TypeVar("T")

log = logging.getLogger(__name__)

LOG_LINES = 200
POLL = 0.2  # between looks at a starting task: it bounds the time to the first token
FOLLOWER_JOIN = 2.0


class Manager(Protocol):
    """What a service needs of its engine (``backends.swarm.engine.SwarmEngine``)."""

    timeout: float
    restart_attempts: int

    def client(self) -> Any: ...

    async def call(
        self, fn: Callable[[Any], T], what: str, timeout: float | None = None, *, once: str | None = None
    ) -> T: ...

    async def remove_service(self, container: ServiceContainer, grace: float) -> None: ...


class ServiceContainer:
    """A ``RunningContainer`` (``backends.docker.interface``): one service of one task on one node."""

    def __init__(self, engine: Manager, node: Node, name: str, service_id: str, port: int) -> None:
        self.engine = engine
        self.node = node
        self.name = name
        self.service_id = service_id
        self.port = port
        self.log = LogTail(LOG_LINES)
        self.state = TaskState(running=False, restarts=0, last_exit=None, given_up=False, exit_code=None)
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self._removing = threading.Event()
        self._stream: Any = None
        self._follower = threading.Thread(target=self._follow, name=f"logs-{name}", daemon=True)
        self._follower.start()

    @property
    def address(self) -> str:
        return f"{self.node.address}:{self.port}"

    def last_lines(self, n: int = 5) -> str:
        return self.log.last(n)

    def restarts(self) -> tuple[int, str | None]:
        return self.state.restarts, self.state.last_exit

    def update(self, tasks: Iterable[dict[str, Any]]) -> None:
        """The engine's watch read the service's tasks: Swarm gave up on it, or restarted it."""
        self.state = task_state(tasks, self.engine.restart_attempts)
        if self.state.given_up and not self.exited.done():
            self.exited.set_result(self.state.exit_code)

    async def wait_running(self, deadline: float) -> None:
        """Returns once the task runs; raises with the task's error when it fails to start, or at the
        deadline."""
        service_id = self.service_id
        message = "no task yet"
        while time.monotonic() < deadline:
            tasks = await self.engine.call(
                lambda c: c.api.tasks(filters={"service": service_id}), f"reading the tasks of {self.name}"
            )
            self.update(tasks)
            if self.state.running:
                return
            if self.state.last_exit is not None:
                raise UpstreamUnavailable(
                    f"service {self.name} on swarm node '{self.node.name}' failed to start "
                    f"({self.state.last_exit}): {self.last_lines()}"
                )
            if tasks:
                status = tasks[-1].get("Status", {})
                message = f"{status.get('State')}: {status.get('Err') or status.get('Message')}"
            await asyncio.sleep(POLL)  # poll interval, not synchronisation
        raise UpstreamUnavailable(
            f"service {self.name} did not run on swarm node '{self.node.name}' in time (task {message})"
        )

    def _follow(self) -> None:
        """Thread: copy the service's log into the ring buffer until it is removed. The SDK's
        ``service_logs`` gives a generator that cannot be closed (nor its socket), and takes the read timeout
        off that socket: the request is made here, so that ``remove`` can end it."""
        since = 0
        while not self._removing.is_set():
            began = int(time.time())
            try:
                api = self.engine.client().api
                params = {"follow": True, "stdout": True, "stderr": True, "since": since}
                response = api._get(
                    api._url("/services/{0}/logs", self.service_id), params=params, stream=True
                )
                self._stream = response
                try:
                    api._raise_for_status(response)
                    if not self._removing.is_set():
                        self._copy(api._multiplexed_response_stream_helper(response))
                finally:
                    self._stream = None
                    response.close()
            except Exception as exc:  # the service went, or the manager did
                log.debug("%s: log stream ended: %s", self.name, exc)
            since = began
            self._removing.wait(1.0)  # then follow again: new lines only

    def _end_stream(self) -> None:
        response = self._stream
        if response is None:
            return
        with contextlib.suppress(Exception):
            raw = self.engine.client().api._get_raw_response_socket(response)
            getattr(raw, "_sock", raw).shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading it
        with contextlib.suppress(Exception):
            response.close()

    def _copy(self, chunks: Iterable[bytes]) -> None:
        pending = b""
        for chunk in chunks:
            if self._removing.is_set():
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.log.append(line.decode(errors="replace").rstrip())
            pending = pending[-8192:]

    async def remove(self, grace: float) -> None:
        """Remove the service; on a node that is up, wait (the stop grace and some) until its task is gone.
        Never raises: a manager that is gone is logged."""
        self._removing.set()
        self._end_stream()
        await self.engine.remove_service(self, grace)
        if not self.exited.done():
            self.exited.set_result(None)
        # Its stream was ended above; a follower still waiting for a new stream's head (from a manager slow
        # to answer for a node that is gone) ends with that request, on its own: a model's unload does not
        # wait for it.
        await asyncio.to_thread(self._follower.join, FOLLOWER_JOIN)
