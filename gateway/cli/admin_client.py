"""The HTTP side of the operator commands (``llm-gateway ps``, ``load``, ...): calls to a running gateway's
admin API, each with a timeout, and every failure turned into one ``AdminError`` whose message is the one line
the command prints.

The gateway is ``--url``, else ``GATEWAY_URL``, else ``http://127.0.0.1:8080``. The key comes from the
environment only (a flag would put it in the shell history and in ``ps`` output): ``GATEWAY_ADMIN_KEY``, else
``GATEWAY_API_KEY`` (the single key of earlier versions, which also opens ``/admin``). It is sent as a bearer
token and never appears in a message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
# Reads of state answer at once; a load, a pin (which loads), an unload (which drains) and a reload (which
# drains what changed) may take as long as the gateway's own load timeout (600 s by default) and then some.
QUICK = httpx.Timeout(30.0, connect=5.0)
SLOW = httpx.Timeout(660.0, connect=5.0)
FOLLOW = httpx.Timeout(60.0, connect=5.0)  # a quiet log still gets an SSE keep-alive every 15 s


class AdminError(Exception):
    """Why a command failed, as the one line it prints."""


@dataclass(frozen=True)
class Auth:
    key: str | None
    source: str | None  # the variable the key came from, to say which one to fix


def auth_from_env(env: Mapping[str, str]) -> Auth:
    for var in ("GATEWAY_ADMIN_KEY", "GATEWAY_API_KEY"):
        if env.get(var):
            return Auth(env[var], var)
    return Auth(None, None)


def refusal(status: int, body: bytes, auth: Auth) -> str:
    """The one line for an error answer: its status, the message of its OpenAI-shaped body, and what to do
    about a missing or wrong key."""
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = " ".join(body.decode(errors="replace").split())[:200] or "(no message)"
    line = f"the gateway refused ({status}): {message}"
    if status == 401 and auth.source is None:
        line += " Set GATEWAY_ADMIN_KEY to the gateway's admin key."
    elif status == 401:
        line += (
            f" Check {auth.source}: the gateway does not know that key (GATEWAY_ADMIN_KEY: the admin key)."
        )
    elif status == 403:
        line += f" {auth.source} holds an API key: set GATEWAY_ADMIN_KEY to the admin key."
    return line


def failure(url: str, exc: Exception, timeout: httpx.Timeout) -> AdminError:
    """The one line for a call that got no answer: unreachable, too slow, or cut off."""
    detail = str(exc) or type(exc).__name__
    if isinstance(
        exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.UnsupportedProtocol | httpx.InvalidURL
    ):
        return AdminError(f"cannot reach the gateway at {url}: {detail}")
    if isinstance(exc, httpx.TimeoutException):
        return AdminError(f"the gateway at {url} did not answer within {timeout.read:.0f} s")
    return AdminError(f"lost the connection to the gateway at {url}: {detail}")


class AdminClient:
    def __init__(self, url: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.url = (url or env.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/")
        self.auth = auth_from_env(env)
        self._headers = {"authorization": f"Bearer {self.auth.key}"} if self.auth.key else {}

    def _path(self, name: str, action: str = "") -> str:
        return f"/admin/models/{quote(name, safe='/:')}" + (f"/{action}" if action else "")

    def _call(self, method: str, path: str, timeout: httpx.Timeout, **params: str) -> Any:
        try:
            with httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout) as client:
                response = client.request(method, path, params=params)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise failure(self.url, exc, timeout) from exc
        if response.status_code >= 400:
            raise AdminError(refusal(response.status_code, response.content, self.auth))
        try:
            return response.json()
        except ValueError as exc:
            raise AdminError(f"the gateway at {self.url} answered {path} with something not JSON") from exc

    def models(self) -> dict[str, Any]:
        return dict(self._call("GET", "/admin/models", QUICK))

    def model(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", self._path(name), QUICK))

    def plan(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", self._path(name, "plan"), QUICK))

    def logs(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", self._path(name, "logs"), QUICK))

    def load(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", self._path(name, "load"), SLOW))

    def pin(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", self._path(name, "pin"), SLOW))

    def unpin(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", self._path(name, "unpin"), QUICK))

    def unload(self, name: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else {}
        return dict(self._call("POST", self._path(name, "unload"), SLOW, **params))

    def cluster(self) -> dict[str, Any]:
        return dict(self._call("GET", "/admin/cluster", QUICK))

    def reload(self) -> dict[str, Any]:
        return dict(self._call("POST", "/admin/reload", SLOW))

    def follow_logs(self, name: str) -> Iterator[dict[str, Any]]:
        """Each ``{"replica": i, "line": ...}`` of the follow stream, as it comes, until the gateway closes it
        (the caller stops it with Ctrl-C)."""
        path = self._path(name, "logs")
        try:
            with (
                httpx.Client(base_url=self.url, headers=self._headers, timeout=FOLLOW) as client,
                client.stream("GET", path, params={"follow": "true"}) as response,
            ):
                if response.status_code >= 400:
                    raise AdminError(refusal(response.status_code, response.read(), self.auth))
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:])
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise failure(self.url, exc, FOLLOW) from exc
