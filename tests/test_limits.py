"""What one client may cost the gateway: the body limit (413 before the body is buffered), the head limit
(431), the connection limit (503), over real sockets; and ``_read_body`` itself."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config.settings import Settings
from gateway.http.edge import _read_body
from gateway.http.errors import PayloadTooLarge
from gateway.http.relay import ClientGone
from gateway.http.server_limits import server_options
from tests.conftest import ROOT, RunningGateway, free_port, llama_manifest, wait_for, write_manifests

MiB = 2**20
LIMIT = MiB  # the body limit of these gateways


def _completion(size: int) -> bytes:
    """A valid completions request padded with JSON whitespace to exactly ``size`` bytes."""
    body = json.dumps({"model": "a", "prompt": "hi", "max_tokens": 2}).encode()
    return body + b" " * (size - len(body))


def _pieces(body: bytes, size: int = 64 * 2**10) -> Iterator[bytes]:
    """The body as an iterator, which httpx sends chunked (unless a content-length header is given)."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _too_large(headers: Any, body: bytes) -> None:
    """The 413's headers and body: the OpenAI error shape, and the connection closes."""
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_too_large"
    assert error["source"] == "gateway"
    assert "GATEWAY_MAX_BODY_BYTES" in error["message"]


@pytest.fixture
def gateway(serve: Any, model_files: dict[str, Path]) -> RunningGateway:
    gw: RunningGateway = serve([llama_manifest("a", model_files["a"])], max_body_bytes=LIMIT)
    return gw


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_at_the_limit_is_served_and_one_byte_more_is_a_413(
    gateway: RunningGateway, chunked: bool
) -> None:
    url = f"{gateway.base_url}/v1/completions"

    def post(body: bytes) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            return client.post(url, content=_pieces(body) if chunked else body)

    served = post(_completion(LIMIT))
    assert served.status_code == 200, served.text
    assert served.json()["usage"]["completion_tokens"] >= 1
    refused = post(_completion(LIMIT + 1))
    assert refused.status_code == 413
    _too_large(refused.headers, refused.content)


def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_sent(gateway: RunningGateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.settings.port, timeout=60)
    try:
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(50 * MiB))
        conn.endheaders()  # the head only: not a byte of the body follows
        response = conn.getresponse()
        assert response.status == 413
        _too_large(response.headers, response.read())
    finally:
        conn.close()


@contextmanager
def _serve_process(model: Path, directory: Path, **env: str) -> Iterator[tuple[int, int]]:
    """A real ``llm-gateway serve`` process (its port and pid), with settings as ``GATEWAY_*`` variables."""
    write_manifests(directory, [llama_manifest("a", model)])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(directory), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, **{f"GATEWAY_{k.upper()}": v for k, v in env.items()}},
    )  # fmt: skip
    try:
        wait_for(lambda: _status(port, "/health") == 200, "the gateway to start")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_50_mib_body_is_refused_without_being_buffered(
    tmp_path: Path, model_files: dict[str, Path], chunked: bool
) -> None:
    piece = b" " * (64 * 2**10)  # one object sent 800 times: the client holds 64 KiB of it
    headers = {} if chunked else {"content-length": str(50 * MiB)}
    # A fresh process each time: memory a previous request freed (and kept) would hide this one's growth.
    with _serve_process(model_files["a"], tmp_path, max_body_bytes="1MiB") as (port, pid):
        url = f"http://127.0.0.1:{port}/v1/completions"
        assert httpx.post(url, content=_completion(LIMIT), timeout=120).status_code == 200  # warmed up
        before = _peak_rss_kib(pid)
        with httpx.Client(timeout=120) as client:
            response = client.post(url, content=(piece for _ in range(800)), headers=headers)
        grown = _peak_rss_kib(pid) - before
    assert response.status_code == 413
    _too_large(response.headers, response.content)
    assert grown < 10 * 1024, f"the gateway's peak RSS grew by {grown} KiB for a 50 MiB body"


# _read_body, driven by a fake ``receive``


def _receive(chunks: list[bytes], calls: list[int] | None = None) -> Any:
    """An ASGI ``receive`` that hands out ``chunks`` as one request body, counting its calls in ``calls``."""
    last = len(chunks) - 1
    messages = iter({"type": "http.request", "body": c, "more_body": i < last} for i, c in enumerate(chunks))

    async def receive() -> dict[str, Any]:
        if calls is not None:
            calls.append(1)
        return next(messages)

    return receive


def _scope(content_length: int | None = None) -> dict[str, Any]:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return {"type": "http", "headers": headers}


def test_read_body_joins_10000_chunks_once() -> None:
    chunks = [i.to_bytes(4, "big") * 250 for i in range(10_000)]  # 1000 bytes each, all different
    size = 1000 * len(chunks)

    async def read() -> tuple[bytes, int]:
        tracemalloc.start()
        try:
            body = await _read_body(_scope(), _receive(chunks), 2 * size)
            return body, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    body, peak = asyncio.run(read())
    assert body == b"".join(chunks)
    # Joining once holds the body plus a Py_buffer (80 bytes) per chunk; growing the body chunk by chunk
    # (bytes +=, quadratic) holds the old body and the new one at once: twice the size.
    assert peak < 1.5 * size, f"reading {size} bytes peaked at {peak}"


def test_read_body_refuses_a_declared_length_without_reading() -> None:
    calls: list[int] = []
    with pytest.raises(PayloadTooLarge):
        asyncio.run(_read_body(_scope(1001), _receive([b"x" * 1001], calls), 1000))
    assert calls == []


def test_read_body_stops_at_the_chunk_that_passes_the_limit() -> None:
    calls: list[int] = []
    with pytest.raises(PayloadTooLarge):
        asyncio.run(_read_body(_scope(), _receive([b"x" * 100] * 50, calls), 1000))
    assert len(calls) == 11  # 1,100 bytes: the eleventh chunk passed the limit, and nothing more was read
    assert asyncio.run(_read_body(_scope(1000), _receive([b"x" * 100] * 10), 1000)) == b"x" * 1000


def test_read_body_raises_client_gone_on_a_disconnect() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientGone):
        asyncio.run(_read_body(_scope(), receive, 1000))


# A real `llm-gateway serve` process: the limits that go to uvicorn


HEAD_LIMIT = 8 * 1024
CONNECTIONS = 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]) -> Iterator[int]:
    """The port of ``llm-gateway serve`` with small limits."""
    with _serve_process(
        model_files["a"],
        tmp_path_factory.mktemp("limits"),
        max_header_bytes="8KiB",
        max_connections=str(CONNECTIONS),
        max_body_bytes="1KiB",
    ) as (port, _):
        yield port


def _status(port: int, path: str, **headers: str) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30).status_code
    except httpx.HTTPError:
        return None


def test_serve_takes_the_body_limit_from_its_environment(limited: int) -> None:
    response = httpx.post(f"http://127.0.0.1:{limited}/v1/completions", content=_completion(1025), timeout=30)
    assert response.status_code == 413
    _too_large(response.headers, response.content)


def _head_too_large(status: int, headers: Any, body: bytes) -> None:
    assert status == 431
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert (error["type"], error["code"], error["source"]) == (
        "invalid_request_error",
        "request_header_fields_too_large",
        "gateway",
    )


def test_a_head_over_the_limit_is_a_431(limited: int) -> None:
    assert _status(limited, "/health", **{"x-big": "a" * (HEAD_LIMIT - 1024)}) == 200
    for size in (HEAD_LIMIT, 100_000):
        response = httpx.get(f"http://127.0.0.1:{limited}/health", headers={"x-big": "a" * size}, timeout=30)
        _head_too_large(response.status_code, response.headers, response.content)


def test_a_head_that_never_ends_is_refused_while_it_arrives(limited: int) -> None:
    with socket.create_connection(("127.0.0.1", limited), timeout=60) as sock:
        # 100 KB of one header, and the head never ends: the answer cannot wait for its end.
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000)
        response = http.client.HTTPResponse(sock)
        response.begin()
        _head_too_large(response.status, response.headers, response.read())


def _hold(port: int, n: int) -> list[http.client.HTTPConnection] | None:
    """``n`` open connections that have each been served once, or None (all closed) if one was refused."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(n)]
    statuses = []
    for conn in conns:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    if statuses == [200] * n:
        return conns
    for conn in conns:
        conn.close()
    return None


def test_a_connection_beyond_the_limit_is_a_503(limited: int) -> None:
    # Connections of earlier requests may take a moment to be seen closed: retry until they are.
    held: list[http.client.HTTPConnection] = wait_for(
        lambda: _hold(limited, CONNECTIONS), f"{CONNECTIONS} connections served at once"
    )
    try:
        assert _hold(limited, 1) is None  # one more, while they are all open: 503
        extra = http.client.HTTPConnection("127.0.0.1", limited, timeout=60)
        extra.request("GET", "/health")
        response = extra.getresponse()
        assert (response.status, response.read()) == (503, b"Service Unavailable")
        extra.close()
        held.pop().close()
        again = wait_for(lambda: _hold(limited, 1), "a connection to be served once one has closed")
        again[0].close()
    finally:
        for conn in held:
            conn.close()


def test_serve_options_carry_the_settings() -> None:
    settings = Settings(
        max_header_bytes=4096, max_connections=10, keep_alive_timeout="45s", graceful_shutdown_timeout=7
    )
    options = server_options(settings)
    assert options["http"].max_head == 4096
    assert options["limit_concurrency"] == 11  # uvicorn counts the new connection among the open ones
    assert options["timeout_keep_alive"] == 45.0
    assert options["timeout_graceful_shutdown"] == 7.0
    defaults = server_options(Settings())
    assert (defaults["http"].max_head, defaults["limit_concurrency"]) == (64 * 1024, 1025)
    assert (defaults["timeout_keep_alive"], defaults["timeout_graceful_shutdown"]) == (30.0, 30.0)
    assert Settings().max_body_bytes == 32 * MiB


def test_uvicorn_is_the_version_the_limits_were_written_against() -> None:
    """``BoundedHttpTools`` subclasses uvicorn's httptools protocol, which is not a public API: on another
    uvicorn than pyproject.toml allows, this fails loudly instead of the limits failing quietly."""
    import re
    import tomllib

    import uvicorn
    from packaging.specifiers import SpecifierSet
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    root = Path(__file__).resolve().parents[1]
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("uvicorn")]
    allowed = SpecifierSet(re.sub(r"^uvicorn(\[[^\]]*\])?", "", pin))
    assert uvicorn.__version__ in allowed, f"uvicorn {uvicorn.__version__} is not {allowed}"
    for hook in ("on_message_begin", "on_headers_complete", "on_message_complete", "data_received",
                 "connection_made", "connection_lost", "send_400_response"):  # fmt: skip
        assert callable(getattr(HttpToolsProtocol, hook, None)), f"uvicorn's protocol has no {hook}"
