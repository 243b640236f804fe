"""Who may call what: API keys for ``/v1``, an admin key for ``/admin``, optionally a key for ``/metrics``.

- ``/v1/*``: any API key (each has a name, for the logs), or the admin key. With no API key configured it
  is open (and the gateway binds to loopback unless told otherwise: ``cli.serve`` warns loudly).
- ``/admin/*``: the admin key only. A valid API key gets 403 (known, not allowed); a missing or unknown key
  gets 401. Once any key is configured, ``/admin`` is never open: without an admin key it refuses everyone.
- ``/metrics``: open by default (Prometheus's convention), or the metrics key (or the admin key) when one is
  set. ``/health`` and ``/openapi.json`` are always open.
- ``GATEWAY_API_KEY``, the single key of earlier versions, still opens both ``/v1`` and ``/admin``.
- ``GATEWAY_CONSOLE_READ_ONLY``: a ``GET`` (or ``HEAD``) on ``/admin`` that carries no key at all is let
  through, marked read-only (the console at ``/ui`` shows without its actions); a wrong key is still refused,
  and every other method still needs the admin key.

Keys are compared in constant time, each against every configured key (the time does not say which key
nearly matched). They never appear in logs, metric labels or error messages: errors say only what was
wrong with the header, and logs name the key.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from backends.errors import GatewayError, Unauthorized
from gateway.http.errors import anthropic_error_response, error_response

log = logging.getLogger(__name__)


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"


@dataclass(frozen=True)
class Keys:
    api: dict[str, bytes] = field(default_factory=dict)  # name -> key, for /v1
    admin: bytes | None = None
    metrics: bytes | None = None

    @property
    def any(self) -> bool:
        return bool(self.api or self.admin or self.metrics)


def load_key_file(path: Path) -> dict[str, str]:
    """A YAML (or JSON) mapping of key names to keys."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of key names to non-empty keys")
    return {str(k): v for k, v in data.items()}


def _bearer(scope: Scope) -> bytes | None:
    """The key a request carries: ``Authorization: Bearer <key>`` (OpenAI's SDKs), or ``x-api-key: <key>``
    (Anthropic's); None without either, b"" for a malformed one."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else b""
        if name == b"x-api-key":
            return bytes(value.strip())
    return None


def _match(token: bytes, candidates: dict[str, bytes]) -> str | None:
    """The name of the key equal to ``token``; every candidate is compared, whatever matched before."""
    found = None
    for name, key in candidates.items():
        if hmac.compare_digest(token, key):
            found = name
    return found


READS = frozenset({"GET", "HEAD"})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: Keys, read_only: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.read_only = read_only  # /admin's reads need no key (GATEWAY_CONSOLE_READ_ONLY)
        self._v1 = {**keys.api, **({"admin": keys.admin} if keys.admin else {})}
        self._admin = {"admin": keys.admin} if keys.admin else {}
        self._metrics = {
            **({"metrics": keys.metrics} if keys.metrics else {}),
            **({"admin": keys.admin} if keys.admin else {}),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1"):
            allowed, area = (self._v1 if self.keys.api else {}), "/v1"
        elif path.startswith("/admin"):
            allowed, area = self._admin, "/admin"
            if not self.keys.any:
                allowed = {}
        elif path == "/metrics":
            allowed, area = (self._metrics if self.keys.metrics else {}), "/metrics"
        else:
            allowed, area = {}, ""
        if not allowed and not (area == "/admin" and self.keys.any):
            await self.app(scope, receive, send)
            return
        if area == "/admin" and self.read_only and scope["method"] in READS and _bearer(scope) is None:
            scope.setdefault("state", {})["read_only"] = True
            await self.app(scope, receive, send)
            return
        error = self._check(scope, allowed, area)
        if error is not None:
            render = anthropic_error_response if path.startswith("/v1/messages") else error_response
            await render(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, allowed: dict[str, bytes], area: str) -> GatewayError | None:
        token = _bearer(scope)
        if token is None:
            return Unauthorized(f"{area} needs an API key: 'Authorization: Bearer <key>' (or 'x-api-key').")
        name = _match(token, allowed) if token else None
        if name is not None:
            scope.setdefault("state", {})["key_name"] = name
            log.debug("%s %s by key '%s'", scope["method"], scope["path"], name)
            return None
        if area == "/admin" and _match(token, self.keys.api) is not None:
            return Forbidden("This API key may not use /admin: the admin key is needed.")
        return Unauthorized("Incorrect API key provided.")
