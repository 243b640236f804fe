"""The backend interface: one replica of one model, whatever runs it.

A backend is deliberately as narrow as httpx's transport: start, stop, health, forward. The gateway owns
everything else (queueing, balancing, lifecycle, metrics). All methods are called from the event loop and
must never block it; engines that block (llama.cpp, the docker SDK) run in their own threads.

- ``start()``: returns when the replica can serve; idempotent; raises ``BackendError`` if it cannot start.
  Not called concurrently with itself or ``stop()`` (the model's lifecycle serialises them).
- ``stop()``: ends in-flight work (each open response ends with an error event) and frees the replica;
  idempotent; never raises.
- ``health()``: cheap, never raises; may run at any time, concurrently with ``forward`` (the gateway's
  active health checks call it on a timer while the model is loaded, beside the requests, holding no slot).
- ``describe()``: what an operator may see about the replica (``ReplicaInfo``); cheap, synchronous, never
  raises, never does I/O.
- ``phase`` (optional attribute): while ``start()`` runs, what it is doing, in an operator's words ("pulling
  image", "starting process", "loading weights"...); None when it says nothing. Read with ``phase_of``.
- ``forward(request)``: may run concurrently up to ``capacity`` times. It returns once the status and the
  first body chunk are known, so that a failure before the first byte is a proper error, not a broken 200.
  The caller must call ``close()`` on the response, in a ``finally``. HTTP backends hold it to the
  request's ``timeouts``: one missed before the first byte raises ``GatewayTimeout``, one missed after it
  ends the stream with an error event (``finished`` resolves False when the upstream went silent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# The path under /v1 a replica is asked on: OpenAI's own, and the Messages API of engines that speak it.
Endpoint = Literal["chat/completions", "completions", "embeddings", "messages", "messages/count_tokens"]


@dataclass(frozen=True)
class Timeouts:
    """How long an upstream may take over one request, in seconds (a model's manifest ``timeouts``, with the
    gateway's settings as defaults).

    - ``connect``: to open a connection;
    - ``first_byte``: from sending the request to the response's head and first body bytes; long, since a
      long prompt's prefill comes before the first token;
    - ``idle``: between two pieces of the body once it has started;
    - ``total``: the whole request, from the first try at an upstream to the last byte, retries included
      (waits for a load or a free replica have their own deadlines).
    """

    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 120.0
    total: float = 3600.0


DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class OpenAIRequest:
    endpoint: Endpoint
    body: dict[str, Any]  # the validated request body; ``model`` is the public name the client asked for
    stream: bool
    raw: bytes | None = None  # the client's bytes, for an HTTP upstream to forward untouched
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    deadline: float | None = None  # the end of ``timeouts.total`` (loop.time()), set by the first try
    max_body: int = 128 * 2**20  # largest non-streamed answer read whole (GATEWAY_MAX_UPSTREAM_BODY_BYTES)


@dataclass
class UpstreamResponse:
    """A response whose body is still arriving.

    ``close()`` is synchronous, idempotent and never blocks: it asks the backend to stop producing (a client
    disconnect, for example). ``finished`` resolves when the backend has really let go of the request, which
    is when the replica's slot may be reused, to whether the replica did its part: ``False`` when it failed
    mid-response (a connection reset, an engine error), which counts against the replica like a failure
    before the first byte. A response the gateway closed early resolves ``True``: the client left, the
    replica did not fail. Neither is an exception: the body has already said what went wrong to the client.
    """

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    close: Callable[[], None]
    finished: asyncio.Future[bool] = field(repr=False)


@dataclass(frozen=True)
class ReplicaInfo:
    """What the admin API shows about one replica; each kind fills what it knows."""

    url: str | None = None  # where the gateway forwards to (HTTP kinds)
    metrics_url: str | None = None  # the engine's own Prometheus metrics (llama-server, vLLM), if it has them
    pid: int | None = None  # a launched process
    container: str | None = None  # a container's name
    engine: str | None = None  # the Docker engine it runs on
    devices: tuple[str, ...] = ()  # the budget devices it was placed on
    exit_status: str | None = None  # why it last died, with its last log lines
    restarts: int | None = None  # times its engine restarted it by itself (a Swarm task), where it can
    last_exit: str | None = None  # why the engine's last restart was needed
    log: tuple[str, ...] = ()  # the last lines it wrote (launched kinds), oldest first
    kv_cache_usage: float | None = None  # 0..1, where the replica knows it without a request (in process)
    memory_bytes: int | None = None  # what the engine reports it allocated (in process); else see ``pid``
    in_process: bool = False  # runs in the gateway's own process: its memory is the gateway's RSS growth


def phase_of(backend: object) -> str | None:
    """What ``backend``'s start is doing now (its optional ``phase`` attribute); None when it does not say."""
    phase = getattr(backend, "phase", None)
    return phase if isinstance(phase, str) else None


class BackendError(Exception):
    """A replica could not start or failed while serving; the message is safe to show to clients."""


class Backend(Protocol):
    @property
    def capacity(self) -> int:
        """Requests this replica serves at once; further requests wait in the gateway's queue."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> bool: ...

    def describe(self) -> ReplicaInfo: ...

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse: ...
