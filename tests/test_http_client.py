"""The hot-path HTTP/1.1 client (backends/upstream/client.py) against raw socket servers that misbehave on
purpose.

Every test runs under both event loops: asyncio's, and uvloop, which ``llm-gateway serve`` uses (their
transports differ: uvloop's is not an ``asyncio.Transport`` subclass).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from backends.upstream.client import HIGH_WATER, Client, ConnectFailed, Disconnected
from tests.conftest import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return lambda coro: runner(coro)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's body (b"" when the connection ended first)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    port = free_port()
    return await asyncio.start_server(closing, "127.0.0.1", port, ssl=ssl_context), port


def test_keep_alive_reuses_one_connection(run: Callable[[Awaitable[None]], None]) -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while body := await read_request(reader):
            writer.write(answer(b"echo " + body))
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        client = Client(f"http://127.0.0.1:{port}")
        for i in range(5):
            resp = await client.request("POST", "/v1/x", b"", b"n%d" % i)
            assert (resp.status, resp.headers["content-type"]) == (200, "text/plain")
            assert await resp.read() == b"echo n%d" % i
            resp.close()
        await client.aclose()
        server.close()

    run(main())
    assert len(connections) == 1


def test_chunked_stream_arrives_piece_by_piece(run: Callable[[Awaitable[None]], None]) -> None:
    async def main() -> None:
        go = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await go.wait()  # the second chunk only after the client has seen the first
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

        server, port = await serve(handler)
        client = Client(f"http://127.0.0.1:{port}")
        resp = await client.request("POST", "/", b"", b"{}")
        assert await resp.next_chunk() == b"first"
        go.set()
        assert await resp.next_chunk() == b"second"
        assert await resp.next_chunk() == b""
        assert resp.complete
        resp.close()
        await client.aclose()
        server.close()

    run(main())


def test_body_delimited_by_the_end_of_the_connection(run: Callable[[Awaitable[None]], None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        client = Client(f"http://127.0.0.1:{port}")
        resp = await client.request("GET", "/")
        assert await resp.read() == b"all of it"
        resp.close()
        assert not client._idle  # connection: close is not kept
        await client.aclose()
        server.close()

    run(main())


def test_a_reused_connection_closed_by_the_server_is_reported_stale(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """llama-server's quirk: a kept-alive connection dropped silently when the next request arrives. The
    request never ran there, so it may be retried; a fresh connection dropping is not "stale"."""

    async def drops_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"one"))
        await read_request(reader)
        writer.close()

    async def drops_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async def main() -> None:
        server, port = await serve(drops_second)
        client = Client(f"http://127.0.0.1:{port}")
        resp = await client.request("POST", "/", b"", b"1")
        assert await resp.read() == b"one"
        resp.close()
        with pytest.raises(Disconnected) as err:
            await client.request("POST", "/", b"", b"2")
        assert err.value.stale
        resp = await client.request("POST", "/", b"", b"3", fresh=True)  # what the caller's retry does
        assert await resp.read() == b"one"
        resp.close()
        await client.aclose()
        server.close()

        server, port = await serve(drops_first)
        client = Client(f"http://127.0.0.1:{port}")
        with pytest.raises(Disconnected) as err:
            await client.request("POST", "/", b"", b"1")
        assert not err.value.stale
        await client.aclose()
        server.close()

    run(main())


def test_a_body_cut_short_raises_and_the_connection_is_not_reused(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        client = Client(f"http://127.0.0.1:{port}")
        resp = await client.request("POST", "/", b"", b"{}")
        assert await resp.next_chunk() == b"only ten b"
        with pytest.raises(Disconnected) as err:
            await resp.next_chunk()
        assert not err.value.stale
        resp.close()
        assert not client._idle
        await client.aclose()
        server.close()

    run(main())


def test_a_slow_reader_pauses_the_connection(run: Callable[[Awaitable[None]], None]) -> None:
    size = 16 * HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 4096):
            writer.write(b"x" * 4096)
            await writer.drain()

    async def main() -> None:
        server, port = await serve(handler)
        client = Client(f"http://127.0.0.1:{port}")
        resp = await client.request("POST", "/", b"", b"{}")
        got = len(await resp.next_chunk())
        await asyncio.sleep(0.5)  # the server keeps writing; the client must stop taking it in
        assert resp._buffered <= 2 * HIGH_WATER
        assert got + resp._buffered < size
        while chunk := await resp.next_chunk():
            got += len(chunk)
        assert got == size
        resp.close()
        assert len(client._idle) == 1  # read to the end: kept for the next request
        await client.aclose()
        server.close()

    run(main())


def test_cancelling_a_request_closes_its_connection(run: Callable[[Awaitable[None]], None]) -> None:
    """A client that goes away must stop the upstream's work: the upstream sees its connection close."""

    async def main() -> None:
        seen_close, arrived = asyncio.Event(), asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            arrived.set()
            if await reader.read(1) == b"":  # no answer; wait for the connection's end
                seen_close.set()

        server, port = await serve(handler)
        client = Client(f"http://127.0.0.1:{port}")
        task = asyncio.create_task(client.request("POST", "/", b"", b"{}"))
        await asyncio.wait_for(arrived.wait(), 10)  # the request is with the upstream, waiting for its answer
        task.cancel()
        await asyncio.wait_for(seen_close.wait(), 10)
        await client.aclose()
        server.close()

    run(main())


def test_connection_refused(run: Callable[[Awaitable[None]], None]) -> None:
    async def main() -> None:
        client = Client(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await client.request("GET", "/")
        await client.aclose()

    run(main())


def test_https(run: Callable[[Awaitable[None]], None], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while body := await read_request(reader):
            writer.write(answer(b"secure " + body))

    async def main() -> None:
        server, port = await serve(handler, server_ctx)
        client = Client(f"https://localhost:{port}", ssl_context=client_ctx)
        for _ in range(2):
            resp = await client.request("POST", "/", b"", b"hello")
            assert await resp.read() == b"secure hello"
            resp.close()
        await client.aclose()
        server.close()

    run(main())
