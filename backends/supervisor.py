"""One supervisor for every replica that is a process or a container (``backends.llama_server``,
``backends.container``): start, wait until healthy, restart with backoff, log tail, stop.

A kind subclasses ``SupervisedReplica`` and writes one method, ``_launch_once(deadline)``, which starts one
run of the replica (a process; a server container and its RPC workers) and returns it as a ``Run``: its
HTTP upstream, its health path, a future that resolves when it exits, its log, and how to end it. The rest is
here, once:

- Start: launch, then poll the run's health path until it answers 200, within the manifest's load timeout
  (each probe has its own short timeout, so a slow load is never killed by one; one more probe after the
  deadline, so a gateway busy past it does not fail a healthy server). A run that exits meanwhile fails the
  start with its reason and last log lines; a ``LaunchAgain`` failure (a port taken between picking it and
  binding it) is tried again, up to ``LAUNCH_ATTEMPTS``. A start that fails or is cancelled ends the run.
- Crash: when a run exits while it should be serving, in-flight requests fail on their broken connections
  (502, tagged upstream), the replica reports unhealthy with the exit and its last log lines, and it is
  launched again after 1 s, then after doubling waits up to 30 s, until a launch succeeds or it is stopped.
- Stop: the supervisor is cancelled and awaited, then the run is ended (each kind: SIGTERM or the engine's
  stop, a grace period, then kill). Ending a run is shielded from cancellation, and ``stop`` waits for every
  ending already under way, so the replica's memory is only released once it is really gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Protocol

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.errors import UpstreamUnavailable
from backends.upstream.forward import HttpUpstream

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
HEALTH_TIMEOUT = 3.0  # one probe of a health path: a local GET
POLL_INTERVAL = 0.02  # between health probes while starting: it bounds the time to the first token
LAUNCH_ATTEMPTS = 3
LOG_LINES = 200


class LaunchAgain(UpstreamUnavailable):
    """A launch failed in a way another launch may not (a port taken after it was picked)."""


class LogTail:
    """The last lines a process or container wrote, bounded, and how many it wrote in all."""

    def __init__(self, size: int = LOG_LINES) -> None:
        self.lines: deque[str] = deque(maxlen=size)
        self.count = 0

    def append(self, line: str) -> None:
        self.lines.append(line)
        self.count += 1

    def since(self, count: int) -> list[str]:
        """The lines kept of those written after the first ``count``."""
        new = self.count - count
        return list(self.lines)[-new:] if new > 0 else []

    def last(self, n: int = 5) -> str:
        return " | ".join(list(self.lines)[-n:]) or "(no output)"


class Ending(Protocol):
    async def end(self) -> None:
        """Stop it (grace, then kill) and free what it held; returns when it is gone. Idempotent; never
        raises."""
        ...


class Run(Ending, Protocol):
    """One run of a replica, started: the kind's process, or its containers."""

    http: HttpUpstream
    health_path: str
    exited: asyncio.Future[str]  # resolves when it ends by itself, with why and its last log lines
    log: LogTail

    async def failure(self) -> UpstreamUnavailable:
        """The error for a run that exited while starting (``LaunchAgain`` where another try may do)."""
        ...


class SupervisedReplica:
    """A replica whose runs are supervised. See ``backends.base`` for the interface it implements.

    ``phase`` says what a start is doing (``backends.base``): the kind's own words while ``_launch_once``
    runs (it may set them), then ``STARTING`` while the run does not answer yet and ``LOADING`` once its
    health path answers, but not 200 yet (llama-server, vLLM: the weights are loading, or it warms up).

    ``exit_status`` says why its last run ended by itself (with the last log lines), and stays after a
    restart, so that an operator sees that a replica was restarted and why."""

    STARTING = "starting"
    LOADING = "loading weights"

    def __init__(self, label: str, capacity: int, load_timeout: float) -> None:
        self.phase: str | None = None
        self._label = label
        self._capacity = capacity
        self._load_timeout = load_timeout
        self._run: Run | None = None
        self._healthy = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Future[None]] = set()
        self.exit_status: str | None = None

    async def _launch_once(self, deadline: float) -> Run:
        """Start one run (not yet healthy). On failure or cancellation, end what it had started."""
        raise NotImplementedError

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def log(self) -> tuple[str, ...]:
        return tuple(self._run.log.lines) if self._run is not None else ()

    def _info(self) -> ReplicaInfo:
        """What every supervised replica shows; kinds add their own fields (``dataclasses.replace``)."""
        http = self._run.http if self._run is not None else None
        return ReplicaInfo(url=http.base_url if http else None, exit_status=self.exit_status, log=self.log)

    def describe(self) -> ReplicaInfo:
        return self._info()

    async def start(self) -> None:
        if self._healthy:
            return
        self._stopping = False
        self.phase = self.STARTING
        try:
            await self._launch()
        finally:
            self.phase = None

    async def _launch(self) -> None:
        for attempt in range(1, LAUNCH_ATTEMPTS + 1):
            deadline = time.monotonic() + self._load_timeout
            run = await self._launch_once(deadline)
            try:
                await self._wait_healthy(run, deadline)
            except LaunchAgain:
                await self._end(run)
                if attempt == LAUNCH_ATTEMPTS:
                    raise
                log.warning("%s: launch failed in a way another may not; launching again", self._label)
                continue
            except BaseException:
                await self._end(run)
                raise
            self._run = run
            self._healthy = True  # ``exit_status`` stays: the last exit, for operators, until the next
            self._supervisor = asyncio.create_task(self._supervise(run), name=f"supervise:{self._label}")
            return

    async def _wait_healthy(self, run: Run, deadline: float) -> None:
        last_try = False
        while not last_try:
            last_try = time.monotonic() >= deadline
            if run.exited.done():
                raise await run.failure()
            status = await run.http.get(run.health_path, timeout=HEALTH_TIMEOUT)
            if status == 200:
                return
            self.phase = self.LOADING if status else self.STARTING
            await asyncio.sleep(POLL_INTERVAL)  # poll interval of a health probe, not synchronisation
        raise UpstreamUnavailable(
            f"{self._label} not healthy after {self._load_timeout:.0f}s: {run.log.last()}"
        )

    async def _supervise(self, run: Run) -> None:
        """Launch again, with backoff, when the run ends while the replica should serve."""
        why = await run.exited
        if self._stopping:
            return
        self._healthy = False
        self.exit_status = why
        await self._end(run)
        backoff = FIRST_BACKOFF
        reason = self.exit_status
        while not self._stopped():
            log.warning("%s: %s; restarting in %.0fs", self._label, reason, backoff)
            await asyncio.sleep(backoff)  # restart backoff
            if self._stopped():  # stop() may have run during the sleep
                return
            try:
                await self._launch()
                return
            except Exception as exc:
                reason = f"restart failed: {exc}"
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _stopped(self) -> bool:
        return self._stopping

    async def _end(self, run: Ending) -> None:
        """End ``run``, shielded: a cancellation of the caller leaves the ending running, and ``stop`` waits
        for it."""
        ending = asyncio.ensure_future(run.end())
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)
        await asyncio.shield(ending)

    async def stop(self) -> None:
        self._stopping = True
        self._healthy = False
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.wait({supervisor})
        run = self._run
        if run is not None:
            await self._end(run)
        if self._endings:
            await asyncio.shield(asyncio.gather(*self._endings))

    async def health(self) -> bool:
        """Up, and its health path answers 200: a process that hangs without exiting fails it too. The probe
        is a GET with a short timeout, and it takes none of the slots."""
        run = self._run
        if not self._healthy or run is None or run.exited.done():
            return False
        return await run.http.get(run.health_path, timeout=HEALTH_TIMEOUT) == 200

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        run = self._run
        if not self._healthy or run is None:
            raise UpstreamUnavailable(f"replica {self._label} is down ({self.exit_status or 'starting'})")
        return await run.http.forward(request)
