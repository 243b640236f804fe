"""Dispatch: one request to one replica of a ready model, up to the response's first byte.

The retry and failover policy of the request path, apart from the HTTP handler (which only parses, calls
this, and answers):

- the pool picks a replica (least outstanding, or the one the request's affinity key prefers);
- the request is forwarded to it; a replica that fails before the first byte (``UpstreamUnavailable``,
  a timeout included) is ejected for a cooldown and the request goes to another one, every replica at most
  once: nothing has reached the client yet, so a retry is safe;
- once a replica answers, its slot is held until the response's ``finished`` resolves, and a response that
  failed mid-way (``finished`` is False) ejects the replica as a failure before the first byte would;
- a batch request may be preempted while it waits for its replica's answer (``Pool.preemptible``): its
  forward is cancelled by the pool, not by its client, so nothing has reached the client: its slot goes
  back, and it queues again, at most ``pool.preempt`` times;
- the request carries the model's ``Timeouts`` (``upstream_timeouts``: the manifest's, else the settings'),
  and its total deadline starts with the first try; while a replica has not answered it, the pool knows the
  request's first-byte deadline, so that a replica holding a request past it is not sent more.

It knows nothing of HTTP or metrics: the handler passes hooks (``scheduled``, ``upstream_error``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from backends.base import DEFAULT_TIMEOUTS, OpenAIRequest, Timeouts, UpstreamResponse
from backends.errors import UpstreamUnavailable
from gateway.routing.balancing import preferred_replica
from gateway.routing.fair_queue import Priority
from gateway.routing.pool import Pool, Replica

if TYPE_CHECKING:
    from gateway.config.settings import Settings

log = logging.getLogger(__name__)

UpstreamErrorHook = Callable[[str, str], None]  # (model, kind): a replica failed before the first byte
_ADDRESS = re.compile(r"(?:https?|unix|tcp)://[^\s,;)]+|\b[\w.-]+:\d{2,5}\b")


def hide_addresses(message: str) -> str:
    """A message for a client, without the addresses of the gateway's upstreams."""
    return _ADDRESS.sub("the upstream", message)


def _nothing() -> None:
    pass


def _ignore(model: str, kind: str) -> None:
    pass


async def dispatch(
    pool: Pool,
    request: OpenAIRequest,
    key: str | None,
    queue_timeout: float,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    scheduled: Callable[[], None] = _nothing,
    upstream_error: UpstreamErrorHook = _ignore,
    client: str = "",
    priority: Priority = "interactive",
) -> tuple[Replica, UpstreamResponse]:
    """The replica that answered and its response, up to its first byte. The replica's slot goes back to the
    pool when the response's ``finished`` resolves; the caller must ``close()`` the response.

    ``queue_timeout`` bounds each wait for a free replica; ``timeouts`` go with the request to the backend;
    ``scheduled`` is called each time a replica takes the request; ``upstream_error(model, kind)`` each time
    one fails before its first byte (``kind`` is the error's code). Raises the last replica's error when
    every try failed or the total deadline passed, and whatever the pool raises (``QueueFull``,
    ``ModelUnavailable``). ``client`` (the API key's name) and ``priority`` place a wait for a replica in the
    pool's queue (``gateway.routing.fair_queue``)."""
    loop = asyncio.get_running_loop()
    sent, deadline = request, 0.0
    tried = preempted = 0
    while True:
        preferred = preferred_replica(key, len(pool.replicas)) if key else None
        replica = await pool.acquire(queue_timeout, preferred, client, priority)
        scheduled()
        if not tried:  # the total deadline runs from the first try
            deadline = loop.time() + timeouts.total
            sent = replace(request, timeouts=timeouts, deadline=deadline)
        first_byte_by = time.monotonic() + timeouts.first_byte
        pool.sent(replica, first_byte_by)
        # On failure the replica is ejected before its request stops counting as unanswered: one that was
        # stuck is never handed to a queued request in between.
        try:
            response = await _answer(pool, replica, sent, priority == "batch" and preempted < pool.preempt)
        except UpstreamUnavailable as err:
            pool.release(replica, failed=True, priority=priority)
            pool.answered(replica, first_byte_by)
            upstream_error(pool.model, err.code or "upstream_unavailable")
            log.warning("model %s replica %d failed before answering: %s", pool.model, replica.index, err)
            tried += 1
            if tried >= len(pool.replicas) or loop.time() >= deadline:
                # The client learns which model and replica, not where it runs (the log has that).
                err.message = f"model '{pool.model}' replica {replica.index}: {hide_addresses(err.message)}"
                raise
        except BaseException:
            # The backend has let go (or, cancelled mid-prompt, stops at its next token; an in-process
            # replica runs one job at a time, so the next request simply starts after it).
            pool.release(replica, priority=priority)
            pool.answered(replica, first_byte_by)
            raise
        else:
            pool.answered(replica, first_byte_by)
            if response is None:  # preempted: nothing reached the client; it queues again
                pool.release(replica, priority=priority)
                preempted += 1
                log.info("model %s: a batch request was preempted for an interactive one", pool.model)
                continue
            replica.served += 1
            response.finished.add_done_callback(partial(_finished, pool, replica, priority))
            return replica, response


async def _answer(
    pool: Pool, replica: Replica, sent: OpenAIRequest, preemptible: bool
) -> UpstreamResponse | None:
    """The replica's answer, up to its first byte; None when the pool preempted the request for an
    interactive one (``Pool.preemptible``: only while ``preemptible``, a batch request)."""
    if not preemptible:
        return await replica.backend.forward(sent)
    answer = asyncio.ensure_future(replica.backend.forward(sent))
    pool.preemptible(answer)
    try:
        return await answer
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not answer.cancelled() or (current is not None and current.cancelling()):
            raise  # its own cancellation (its client left), not the pool's
        return None
    finally:
        pool.answered_batch(answer)


def _finished(pool: Pool, replica: Replica, priority: Priority, ended: asyncio.Future[bool]) -> None:
    pool.release(replica, failed=not replica_did_its_part(ended), priority=priority)


def upstream_timeouts(spec: object, settings: Settings) -> Timeouts:
    """A model's deadlines: its manifest's ``backend.timeouts`` (HTTP kinds), each one it leaves out from the
    gateway's settings."""
    own = getattr(spec, "timeouts", None)
    return Timeouts(
        connect=getattr(own, "connect", None) or settings.upstream_connect_timeout,
        first_byte=getattr(own, "first_byte", None) or settings.upstream_first_byte_timeout,
        idle=getattr(own, "idle", None) or settings.upstream_idle_timeout,
        total=getattr(own, "total", None) or settings.upstream_total_timeout,
    )


def replica_did_its_part(ended: asyncio.Future[bool]) -> bool:
    """How a response ended, for the replica's record: False when it failed mid-response (it is ejected as
    for a failure before the first byte). A client that left is not the replica's failure."""
    if ended.cancelled():
        return True
    return ended.exception() is None and ended.result()


def affinity_key(mode: str, body: dict[str, Any], headers: Mapping[str, str]) -> str | None:
    """What ties a request to a replica (to reuse its prompt cache): the session (``X-Session-Id``, else the
    body's ``user``), or with ``prefix`` also the start of the prompt; None for no preference."""
    if mode == "none":
        return None
    session = headers.get("x-session-id") or body.get("user")
    if session or mode == "session":
        return str(session) if session else None
    prompt = body.get("messages") or body.get("prompt") or body.get("input")
    return json.dumps(prompt)[:512]
