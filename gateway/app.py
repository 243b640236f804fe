"""Builds the ASGI app. Everything the app uses is created here, in the lifespan, and torn down there:
no module-level singletons. The one ``Gateway`` object is passed to the route classes explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from backends.docker_engine import DockerEngine
from gateway import observer
from gateway.admin import AdminRoutes
from gateway.auth import AuthMiddleware, Keys, load_key_file
from gateway.config import ModelManifest, Settings
from gateway.engines import Hosts, devices, docker_engine, engine_settings, instance_id
from gateway.errors import GatewayError, error_response
from gateway.manifests import ManifestSet, load_directory
from gateway.metrics import Metrics
from gateway.metrics_state import refresh
from gateway.openai_api import HotPath, OpenAIRoutes
from gateway.openapi import openapi_route
from gateway.pins import Pins
from gateway.placement import DoesNotFit, plan
from gateway.promtext import CONTENT_TYPE
from gateway.registry import Registry
from gateway.reload import Reloader, ReloadResult, on_sighup, watch
from gateway.scheduler import Scheduler

log = logging.getLogger(__name__)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


@dataclass
class Gateway:
    settings: Settings
    manifests: ManifestSet
    registry: Registry
    scheduler: Scheduler
    metrics: Metrics
    hosts: Hosts
    pins: Pins
    never_fits: dict[str, str]  # models that cannot fit in any budget here, and why
    reloader: Reloader | None = None

    async def reload(self) -> ReloadResult:
        if self.reloader is None:
            self.reloader = Reloader(self)
        return await self.reloader.reload()


def build_hosts(settings: Settings) -> Hosts:
    budget = (
        int(settings.memory_budget) if settings.memory_budget is not None else int(available_memory() * 0.9)
    )
    configured = engine_settings(settings)
    inventory, budgets = devices(configured, budget)
    instance = instance_id(settings)
    return Hosts({e.name: docker_engine(e, instance) for e in configured}, inventory, budgets)


def max_model_len(manifests: Iterable[ModelManifest]) -> int:
    """The longest context declared, for the token-count histograms' buckets (vLLM: max_model_len)."""
    longest = 0
    for m in manifests:
        for field in ("n_ctx", "ctx_size", "max_model_len"):
            value = getattr(m.backend, field, None)
            if isinstance(value, int):
                longest = max(longest, value)
    return longest or 32768


def build_gateway(settings: Settings) -> Gateway:
    manifests = load_directory(settings.manifests)
    for problem in manifests.problems:
        log.error("manifest skipped: %s", problem)
    hosts = build_hosts(settings)
    registry = Registry.build(manifests, settings, hosts)
    metrics = Metrics(list(registry.slots), max_model_len(m.manifest for m in manifests.models))
    scheduler = Scheduler(
        registry.slots.values(),
        hosts.budgets,
        drain_grace=settings.drain_grace,
        load_failure_backoff=settings.load_failure_backoff,
        events=metrics,
    )
    pins = Pins(settings.state_file or settings.manifests / ".llm-gateway-pins.json")
    never_fits = {}
    for slot in registry.slots.values():
        slot.pinned = pins.pinned(slot.name, slot.manifest.pinned)
        never = plan(slot.name, slot.demand, [], hosts.budgets)
        if isinstance(never, DoesNotFit):
            never_fits[slot.name] = never.reason
            log.warning("%s can never be loaded here: %s", slot.name, never.reason)
    return Gateway(settings, manifests, registry, scheduler, metrics, hosts, pins, never_fits)


def api_keys(settings: Settings) -> Keys:
    """The keys from the settings and the key file."""
    named = {name: key.get_secret_value() for name, key in settings.api_keys.items()}
    if settings.api_keys_file is not None:
        named.update(load_key_file(settings.api_keys_file))
    if settings.api_key is not None:
        named.setdefault("default", settings.api_key.get_secret_value())
    admin = settings.admin_key or settings.api_key
    return Keys(
        api={name: key.encode() for name, key in named.items()},
        admin=admin.get_secret_value().encode() if admin else None,
        metrics=settings.metrics_key.get_secret_value().encode() if settings.metrics_key else None,
    )


def engines_in_use(gw: Gateway) -> list[DockerEngine]:
    """The engines some container model may run on: only those are touched (cleaned up at startup)."""
    names: set[str] = set()
    for slot in gw.registry.slots.values():
        for unit in slot.demand:
            names.update(o.engine for o in unit if o.engine)
    return [gw.hosts.engines[n] for n in sorted(names)]


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = str(exc.detail).lower().replace(" ", "_")  # not_found, method_not_allowed
    err = GatewayError(f"{exc.detail}: {request.method} {request.url.path}", code=code)
    err.status, err.type = exc.status_code, "invalid_request_error"
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(GatewayError(f"internal error: {type(exc).__name__}: {exc}"))


def build_app(settings: Settings, gw: Gateway | None = None) -> ASGIApp:
    gateway = gw or build_gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engines = engines_in_use(gateway)
        for engine in engines:  # before any container of this run starts (DockerEngine.ready waits for it)
            engine.start_cleanup()
        gateway.scheduler.start_background()
        timers = observer.start(
            gateway.metrics,
            gateway.scheduler,
            settings.stats_interval if settings.metrics else 0,
            settings.engine_scrape_interval if settings.metrics else 0,
        )
        if settings.watch:
            timers.append(asyncio.create_task(watch(gateway), name="manifest-watch"))
        on_sighup(gateway)
        log.info(
            "serving %d models (%d manifest problems), memory budget %s",
            len(gateway.registry.slots),
            len(gateway.manifests.problems),
            ", ".join(f"{d} {b / 2**20:.0f} MiB" for d, b in gateway.scheduler.budgets.items()),
        )
        try:
            yield
        finally:
            for timer in timers:
                timer.cancel()
            await asyncio.gather(*timers, return_exceptions=True)
            await gateway.scheduler.shutdown()
            for engine in engines:
                await engine.close()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        refresh(gateway.metrics, gateway.scheduler, time.monotonic())
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    openai = OpenAIRoutes(gateway)
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *openai.routes(),
        *AdminRoutes(gateway).routes(),
        openapi_route(),  # GET /openapi.json
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.gateway = gateway
    served: ASGIApp = HotPath(app, openai.endpoints())
    keys = api_keys(settings)
    return AuthMiddleware(served, keys) if keys.any else served
