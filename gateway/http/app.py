"""Builds the ASGI app around one ``Gateway`` (``gateway.control``): its routes, and its lifespan, which
starts and stops everything that runs in the background. No module-level singletons: the ``Gateway`` object is
passed to the route classes explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from backends.docker.interface import ContainerEngine
from backends.errors import GatewayError
from gateway.config.settings import Settings
from gateway.control.build import build_gateway
from gateway.control.reload import WATCH_INTERVAL, on_sighup, snapshot, watch
from gateway.control.state import Gateway
from gateway.fleet.node import TICK as FLEET_TICK
from gateway.http.admin_routes import AdminRoutes
from gateway.http.anthropic_routes import AnthropicRoutes
from gateway.http.auth import AuthMiddleware, Keys, load_key_file
from gateway.http.console import Console, SameOrigin
from gateway.http.edge import HotPath, asgi
from gateway.http.errors import error_response, internal_error
from gateway.http.openai_routes import OpenAIRoutes
from gateway.http.openapi import openapi_route
from gateway.http.responses_routes import ResponsesRoutes
from gateway.observability import timers
from gateway.observability.exposition import CONTENT_TYPE
from gateway.observability.footprint import INTERVAL as FOOTPRINT_INTERVAL
from gateway.observability.gauges import refresh

log = logging.getLogger(__name__)


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
    try:
        raise exc
    except Exception:
        return error_response(internal_error(request.url.path))


async def _start(gateway: Gateway, settings: Settings) -> list[ContainerEngine]:
    """The lifespan's start: the engines' cleanups and watches, the fleet's first turn, the background loops.
    Returns the engines in use, for ``_stop``."""
    engines = gateway.engines_in_use()
    for engine in engines:  # before any container of this run starts (DockerEngine.ready waits for it)
        engine.start_cleanup()
        engine.start_watch(gateway.host_loss)  # hosts going down and coming back (a swarm's nodes)
    node = gateway.fleet
    if node is not None:  # joined (or the store's failure logged) before pinned loads and requests
        await node.tick()
    gateway.scheduler.start_background()
    background = gateway.background
    timers.start(
        background,
        gateway.metrics,
        gateway.scheduler,
        settings.stats_interval if settings.metrics else 0,
        settings.engine_scrape_interval if settings.metrics else 0,
    )
    charts = timers.sample_series(gateway.series, gateway.metrics, gateway.scheduler)
    background.every("console-series", gateway.series.interval, charts)
    sched, footprints = gateway.scheduler, gateway.footprints
    background.every("footprint", FOOTPRINT_INTERVAL, lambda: footprints.sample([*sched.slots.values()]))
    if settings.watch:
        seen = await asyncio.to_thread(snapshot, settings.manifests)  # file I/O, off the loop
        background.every("manifest-watch", WATCH_INTERVAL, watch(gateway, seen))
    on_sighup(gateway)
    if node is not None:
        background.every("fleet", FLEET_TICK, node.tick)
    log.info(
        "serving %d models (%d manifest problems), memory budget %s",
        len(gateway.registry.slots),
        len(gateway.manifests.problems),
        ", ".join(f"{d} {b / 2**20:.0f} MiB" for d, b in gateway.scheduler.budgets.items()),
    )
    return engines


async def _stop(gateway: Gateway, engines: list[ContainerEngine]) -> None:
    """The lifespan's end, in order: background loops, host watches, the fleet's hand-over, the models,
    the fleet's lease, the footprints, the engines, the response store."""
    node = gateway.fleet
    await gateway.background.stop()
    await gateway.host_loss.close()
    if node is not None:
        await node.hand_over()
    await gateway.scheduler.shutdown()
    if node is not None:
        await node.close()
    gateway.footprints.store.flush()  # the peaks' last rises, under the write step
    for engine in engines:
        await engine.close()
    gateway.responses.close()


def build_app(settings: Settings, gw: Gateway | None = None) -> ASGIApp:
    gateway = gw or build_gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engines = await _start(gateway, settings)
        try:
            yield
        finally:
            await _stop(gateway, engines)

    async def health(request: Request) -> Response:
        failing = gateway.background.failing()
        if not failing:
            return JSONResponse({"status": "ok"})
        loops = {name: {"failures": h.failures, "last_error": h.last_error} for name, h in failing.items()}
        return JSONResponse({"status": "degraded", "failing": loops})

    async def metrics(request: Request) -> Response:
        refresh(gateway.metrics, gateway.scheduler, time.monotonic())
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    openai = OpenAIRoutes(gateway)
    anthropic = AnthropicRoutes(openai).endpoints()
    responses = ResponsesRoutes(openai)
    extra_posts = {**anthropic, **responses.endpoints()}  # the API families besides OpenAI's own endpoints
    posts = {**openai.endpoints(), **extra_posts}
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *openai.routes(),
        *(Route(path, asgi(h), methods=["POST"]) for path, h in extra_posts.items()),
        *responses.routes(),
        *AdminRoutes(gateway).routes(),
        *Console().routes(),  # GET /ui
        openapi_route(),  # GET /openapi.json
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.gateway = gateway
    served: ASGIApp = HotPath(app, posts)
    keys = api_keys(settings)
    if keys.any:
        served = AuthMiddleware(served, keys, read_only=settings.console_read_only)
    return SameOrigin(served)
