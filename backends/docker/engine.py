"""One Docker Engine API endpoint (a host's Docker daemon, or podman serving the same API), driven with the
``docker`` SDK.

The SDK blocks, so every call runs on the engine's own small thread pool, under a deadline: the SDK's HTTP
timeout bounds each request, and ``asyncio.timeout`` bounds the whole call (a pull, a stop). A failure to
reach the engine, or a call past its deadline, is ``UpstreamUnavailable`` naming the engine, so a model on an
unreachable host answers 503 with Retry-After (through the load backoff) and the others keep serving.

Containers the gateway starts carry labels: the gateway's instance id, this run's id, the model, the role.
The cleanup removes what an earlier run of the same instance left (it may have been SIGKILLed); it runs
before the engine's first container (again, if it failed), never touches a container without our instance
label, and never one of this run's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from backends.errors import UpstreamUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL_INSTANCE = "llm-gateway.instance"
LABEL_MODEL = "llm-gateway.model"
LABEL_ROLE = "llm-gateway.role"
LABEL_RUN = "llm-gateway.run"  # this process's run: the cleanup never removes a container of its own run


@dataclass(frozen=True)
class EngineTls:
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True


class DockerEngine:
    """A named engine. ``address`` is how the gateway (and other hosts' containers, for RPC) reach the ports
    it publishes; ``publish_ip`` is the host interface they are published on."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        instance: str,
        address: str,
        publish_ip: str,
        tls: EngineTls | None = None,
        timeout: float = 60.0,
        cleanup: bool = True,
    ) -> None:
        """``cleanup``: remove what an earlier run of the same instance left before the first container.
        Off where the instance is a fleet's (cluster mode): its containers are the fleet's leader's to adopt
        or remove (``gateway.fleet``), never one gateway's leftovers."""
        self.name = name
        self.url = url
        self.instance = instance
        self.address = address
        self.publish_ip = publish_ip
        self.timeout = timeout
        self._tls = tls
        self._client: Any = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"docker-{name}")
        self.run = secrets.token_hex(6)
        self._cleanup: asyncio.Task[None] | None = None
        self._cleans = cleanup
        self._background: set[asyncio.Task[None]] = set()
        self._shared: dict[str, concurrent.futures.Future[Any]] = {}

    def __repr__(self) -> str:
        return f"DockerEngine({self.name!r}, {self.url!r})"

    # -- calls -------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        import docker  # imported on first use: only container models need the SDK

        if self._client is None:
            tls: Any = False
            if self._tls is not None:
                cert = (
                    (self._tls.client_cert, self._tls.client_key)
                    if self._tls.client_cert and self._tls.client_key
                    else None
                )
                tls = docker.tls.TLSConfig(
                    client_cert=cert, ca_cert=self._tls.ca_cert, verify=self._tls.verify
                )
            client = docker.DockerClient(
                base_url=self.url,
                timeout=int(self.timeout),
                tls=tls,
                use_ssh_client=self.url.startswith("ssh://"),
                # The API version is asked for below, once the session is set up: the SDK asks in its
                # constructor, before anything can be changed.
                version=docker.constants.MINIMUM_DOCKER_API_VERSION,
            )
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the session's CA (the engine's): with
            # either set (Debian's images set them), an engine's certificate would never verify.
            client.api.trust_env = False
            try:
                client.api._version = client.api._retrieve_server_version()
            except BaseException:
                client.close()
                raise
            self._client = client
        return self._client

    def _check_socket(self) -> None:
        """A ``unix://`` engine whose socket does not answer is reported here: the SDK's own unix transport
        leaks the socket of every connect that fails (docker 7.x), one per call to an absent engine."""
        if not self.url.startswith("unix://"):
            return
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(self.timeout)
            try:
                probe.connect(self.url.removeprefix("unix://"))
            except OSError as exc:
                raise self._unreachable("connecting", exc) from exc

    async def call(
        self, fn: Callable[[Any], T], what: str, timeout: float | None = None, *, once: str | None = None
    ) -> T:
        """Run ``fn(client)`` on the engine's threads within ``timeout`` (default: the engine's).

        A call past its deadline raises, but its thread runs on until the SDK's own timeout ends it. For
        calls that may legitimately run long (a pull), ``once`` names the work: while one such thread
        runs, a new call with the same name waits for it instead of starting another, so retries under
        the load backoff never pile threads up."""
        import docker.errors
        import requests.exceptions

        def run() -> T:
            self._check_socket()
            return fn(self._connect())

        deadline = timeout if timeout is not None else self.timeout
        self._shared = {k: f for k, f in self._shared.items() if not f.done()}
        work = self._shared.get(once) if once else None
        if work is None:
            work = self._pool.submit(run)
            if once:
                self._shared[once] = work
        waited = asyncio.wrap_future(work)
        waited.add_done_callback(_retrieve)  # its error is the caller's, or nobody's after a timeout
        try:
            async with asyncio.timeout(deadline):
                return await asyncio.shield(waited)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"Docker engine '{self.name}' ({self.url}) did not finish {what} within {deadline:.0f}s"
            ) from None
        except docker.errors.APIError as exc:
            if exc.response is not None:  # the engine answered (no such image, a conflict): the caller's
                raise
            raise self._unreachable(what, exc) from exc
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise self._unreachable(what, exc) from exc

    def _unreachable(self, what: str, exc: Exception) -> UpstreamUnavailable:
        if self._tls is not None and _tls_failure(exc):
            return UpstreamUnavailable(
                f"Docker engine '{self.name}' ({self.url}): the TLS handshake failed ({what}); check its CA "
                f"certificate and the gateway's client certificate and key: {exc}"
            )
        return UpstreamUnavailable(f"Docker engine '{self.name}' ({self.url}) is unreachable ({what}): {exc}")

    # -- startup cleanup ---------------------------------------------------------------------------------
    def start_cleanup(self) -> asyncio.Task[None]:
        """Start the cleanup of this instance's leftovers, once (the gateway calls it at startup)."""
        if self._cleanup is None:
            self._cleanup = asyncio.create_task(self._remove_leftovers(), name=f"cleanup:{self.name}")
        return self._cleanup

    async def ready(self) -> None:
        """Wait for that cleanup before starting a container, so it never removes one of this run's."""
        await asyncio.shield(self.start_cleanup())

    async def _remove_leftovers(self) -> None:
        if not self._cleans:
            return
        label = f"{LABEL_INSTANCE}={self.instance}"

        def remove(client: Any) -> list[str]:
            import docker.errors

            gone = []
            # sparse: no inspect per container (one removed between the listing and the inspect fails it)
            for container in client.containers.list(all=True, sparse=True, filters={"label": label}):
                if (container.attrs.get("Labels") or {}).get(LABEL_RUN) == self.run:
                    continue
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    continue  # removed meanwhile (by another gateway of the fleet)
                gone.append(str(container.attrs["Names"][0]).lstrip("/"))
            return gone

        try:
            gone = await self.call(remove, "removing leftover containers")
        except UpstreamUnavailable as exc:
            log.warning("%s; leftovers of an earlier run were not removed", exc)
            self._cleanup = None  # try again before the next container (it spares this run's own)
            return
        if gone:
            log.warning(
                "engine %s: removed %d containers an earlier run left: %s", self.name, len(gone), gone
            )

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run engine work that nobody waits for (removing a container whose start was cancelled)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=self.timeout)
        client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, client.close)
        self._pool.shutdown(wait=False)


def _tls_failure(exc: BaseException) -> bool:
    """An SSL error anywhere in the chain (the SDK wraps requests' errors in its own), or a connection the
    server reset during the handshake (how a refused client certificate shows under TLS 1.3)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if "SSL" in text or "certificate" in text.lower() or "tlsv1 alert" in text.lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
