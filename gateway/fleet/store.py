"""The fleet's store: etcd through ``aetcd``, over several members, every call under a deadline.

``aetcd`` talks to one member. An attempt that fails (a member killed, a timeout) closes that connection and
the call tries the next member, and so on until the call's deadline: losing one member of three, or the
election that follows losing the etcd leader, makes a call slower, not a failure. Only a call that no member
answered within its deadline fails, with ``StoreUnavailable``, whose message names the store and what failed;
the callers (``gateway.fleet.node``) run in loops that try again on their next turn. Every operation here
may be repeated safely (a retried write writes the same value; a retried claim finds its own).

Keys are strings here (UTF-8 in etcd); values are JSON documents (``gateway.fleet.table``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT = 4.0  # one call, every attempt included: longer than an etcd election (about 1-2 s)
ATTEMPT_TIMEOUT = 1.5  # one attempt on one member; a healthy member answers in milliseconds
RETRY_PAUSE = 0.1


class StoreUnavailable(Exception):
    """The store could not be reached (or did not answer in time)."""


class Store:
    def __init__(
        self, endpoints: Sequence[str], timeout: float = CALL_TIMEOUT, attempt: float = ATTEMPT_TIMEOUT
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        if importlib.util.find_spec("aetcd") is None:
            raise RuntimeError("cluster mode needs etcd's client: pip install 'llm-gateway[cluster]'")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.attempt = attempt
        self._next = 0
        self._client: Any = None
        self._lock = asyncio.Lock()  # one (re)connection at a time

    def describe(self) -> str:
        return f"etcd ({', '.join(self.endpoints)})"

    async def _connected(self) -> Any:
        import aetcd  # type: ignore[import-untyped]  # the cluster extra; a gateway alone never needs it

        async with self._lock:
            if self._client is None:
                host, _, port = self.endpoints[self._next % len(self.endpoints)].rpartition(":")
                client = aetcd.Client(
                    host=host or "127.0.0.1", port=int(port), timeout=max(1, int(self.attempt))
                )
                await client.connect()
                self._client = client
            return self._client

    async def _drop(self, client: Any) -> None:
        """Forget a connection that failed; the next call tries the next member."""
        async with self._lock:
            if self._client is client:
                self._client = None
                self._next += 1
        try:
            async with asyncio.timeout(self.attempt):  # closing a channel to a dead member can hang
                await client.close()
        except Exception as exc:  # a broken channel may fail to close: it is gone either way
            log.debug("closing a failed etcd connection: %s", exc)

    async def call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        from aetcd.exceptions import ClientError  # type: ignore[import-untyped]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            client = None
            try:
                async with asyncio.timeout_at(min(deadline, loop.time() + self.attempt)):
                    client = await self._connected()
                    return await fn(client)
            except (TimeoutError, ClientError, OSError, asyncio.CancelledError) as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise  # this task was cancelled, not the call
                # A CancelledError that is not this task's: grpc cancels the calls under way on a channel
                # that another call closed after it failed. A failed attempt like any other.
                if client is not None:
                    await self._drop(client)
                else:
                    async with self._lock:
                        self._next += 1
                if loop.time() + RETRY_PAUSE >= deadline:
                    message = f"the fleet's store, {self.describe()}, failed {what}: {exc!r}"
                    raise StoreUnavailable(message) from exc
            await asyncio.sleep(RETRY_PAUSE)  # between attempts on the next member

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- operations ----------------------------------------------------------------------------------
    async def grant(self, ttl: float) -> int:
        lease = await self.call("granting a lease", lambda c: c.lease(max(1, round(ttl))))
        return int(lease.id)

    async def refresh(self, lease: int) -> bool:
        """False when the lease has expired (its keys are gone)."""
        answer = await self.call("refreshing a lease", lambda c: c.refresh_lease(lease))
        return int(answer.TTL) > 0

    async def revoke(self, lease: int) -> None:
        await self.call("revoking a lease", lambda c: c.revoke_lease(lease))

    async def put(self, key: str, value: Any, lease: int | None = None) -> None:
        data = json.dumps(value, sort_keys=True).encode()
        await self.call(f"writing {key}", lambda c: c.put(key.encode(), data, lease=lease))

    async def delete(self, key: str) -> None:
        await self.call(f"deleting {key}", lambda c: c.delete(key.encode()))

    async def get(self, key: str) -> Any:
        found = await self.call(f"reading {key}", lambda c: c.get(key.encode()))
        return None if found is None else _decode(found.value)

    async def prefix(self, prefix: str) -> dict[str, Any]:
        """Every key under ``prefix`` (the prefix cut off) with its value."""
        found = await self.call(f"reading {prefix}", lambda c: c.get_prefix(prefix.encode()))
        return {kv.key.decode()[len(prefix) :]: _decode(kv.value) for kv in found}

    async def create(self, key: str, value: Any, lease: int) -> Any:
        """Write ``key`` only if it does not exist (leader election); returns the value it holds after."""
        data = json.dumps(value, sort_keys=True).encode()

        async def txn(c: Any) -> Any:
            t = c.transactions
            won, answers = await c.transaction(
                compare=[t.create(key.encode()) == 0],
                success=[t.put(key.encode(), data, lease=lease)],
                failure=[t.get(key.encode())],
            )
            if won:
                return value
            held = answers[0]
            return _decode(held[0][0]) if held else None

        return await self.call(f"claiming {key}", txn)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("the fleet's store holds a value that is not JSON: %r", raw[:80])
        return None
