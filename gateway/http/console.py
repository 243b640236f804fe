"""The web console, ``GET /ui``: three static files in the package (``gateway/http/console/``: the page, its
script and its stylesheet; plain JavaScript, no framework, nothing fetched from elsewhere), and the rule that
keeps other origins from acting through a browser.

The files are read once, at startup, with their ETag and a gzip of each; every answer carries a strict
Content-Security-Policy (only this origin's own script, styles and connections; no inline code, no frames),
``nosniff`` and ``no-referrer``. The page holds no secret: the admin key is typed into it, kept in the tab's
``sessionStorage`` (gone when the tab closes), and sent as ``Authorization: Bearer`` to the admin API,
never in a URL. ``SameOrigin`` refuses an ``/admin`` request that changes something when a browser says it
comes from another origin; the gateway sends no CORS headers, so no other origin can read an answer either.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from backends.errors import NotFound
from gateway.http.auth import Forbidden
from gateway.http.errors import error_response

CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",  # frame-ancestors, for browsers that predate it
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The console's files, from the installed package."""
    folder = resources.files("gateway.http").joinpath("console")
    assets = {}
    for name, content_type in CONTENT_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[name] = Asset(body, gzip.compress(body, 9, mtime=0), etag, content_type)
    return assets


class Console:
    def __init__(self) -> None:
        self.assets = load_assets()

    def routes(self) -> list[Route]:
        return [
            Route("/ui", self.page, methods=["GET", "HEAD"]),
            Route("/ui/{file}", self.page, methods=["GET", "HEAD"]),
        ]

    async def page(self, request: Request) -> Response:
        name = request.path_params.get("file") or "index.html"
        asset = self.assets.get(name)
        if asset is None:
            raise NotFound(f"no such file in the console: {name}")
        headers = {
            **SECURITY_HEADERS,
            "etag": asset.etag,
            "cache-control": "no-cache",
            "vary": "accept-encoding",
        }
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["content-encoding"] = "gzip"
        return Response(body, media_type=asset.content_type, headers=headers)


def _authority(scheme: str, netloc: str) -> tuple[str, int | None]:
    """(host, port) of a URL's authority, with the scheme's default port filled in."""
    parts = urlsplit(f"{scheme}://{netloc}")
    try:
        port = parts.port
    except ValueError:
        return netloc.lower(), None
    return (parts.hostname or "").lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the server it sent the request to (its ``Host``)."""
    parts = urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or not host:
        return False  # "null" (a sandboxed frame, a file:// page) or something unparsable
    return _authority(parts.scheme, parts.netloc) == _authority(parts.scheme, host)


class SameOrigin:
    """Refuses (403) a request to ``/admin`` other than a read when a browser marks it as coming from another
    origin: an ``Origin`` header that is not this server's ``Host``, or ``Sec-Fetch-Site: cross-site`` /
    ``same-site``. A form or a ``fetch`` on another site may send a simple POST without asking first; with no
    admin key set (``/admin`` open), it would unload models. Clients that are not browsers send neither
    header and are not affected. Behind a reverse proxy, the proxy must pass the ``Host`` header through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] not in SAFE_METHODS
            and scope["path"].startswith("/admin")
        ):
            origin = host = site = None
            for name, value in scope["headers"]:
                if name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"host":
                    host = value.decode("latin-1")
                elif name == b"sec-fetch-site":
                    site = value.decode("latin-1")
            if (origin is not None and not same_origin(origin, host or "")) or site in (
                "cross-site",
                "same-site",
            ):
                refused = Forbidden("Refused: a request from another origin may not act on /admin.")
                await error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)
