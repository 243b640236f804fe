"""The fault matrix's slow-loris row (README, "Fault matrix"), against a real ``llm-gateway serve`` process
(uvicorn with the limits ``serve`` gives it, ``gateway/http/server_limits.py``): connections that send
nothing, heads and bodies that arrive a byte at a time, and a client that never reads its stream. Other
clients must be served meanwhile; a request too slow to arrive is a 408 and its connection closes; a request
that arrived is never cut by those deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_for, write_manifests
from tests.fake_upstream import FakeUpstream, RunningUpstream
from tests.test_fault_matrix import CHAT, Bystanders, remote


def _status(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code
    except httpx.HTTPError:
        return None


@contextlib.contextmanager
def serve_process(directory: Path, manifests: list[dict[str, Any]], **env: str) -> Iterator[str]:
    """``llm-gateway serve`` (uvicorn with the limits ``serve`` gives it) in a process of its own; its URL."""
    write_manifests(directory, manifests)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(directory), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, **{f"GATEWAY_{k.upper()}": v for k, v in env.items()}},
    )  # fmt: skip
    try:
        wait_for(lambda: _status(port) == 200, "the gateway to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def _request_bytes(stream: bool, model: str = "other") -> bytes:
    body = json.dumps({**CHAT, "model": model, "stream": stream}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


class Loris:
    """Slow clients of ``url``, each on its own connection: ``silent`` ones send nothing; ``head`` ones send a
    request's head a byte at a time, ``body`` ones its body (all but its last byte). They keep at it until
    closed; ``closed`` counts the connections the gateway ended under them."""

    def __init__(self, url: str, silent: int = 0, head: int = 0, body: int = 0) -> None:
        self.url = url
        self.stop = threading.Event()
        self.closed = 0
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        for kind, count in (("silent", silent), ("head", head), ("body", body)):
            for _ in range(count):
                sock = _connect(url)
                self.sockets.append(sock)
                self.threads.append(threading.Thread(target=getattr(self, f"_{kind}"), args=(sock,)))

    def _trickle(self, sock: socket.socket, data: bytes) -> None:
        try:
            for i in range(len(data)):
                if self.stop.wait(0.02):  # the pace of the attack, not a synchronisation
                    return
                sock.sendall(data[i : i + 1])
        except OSError:
            self.closed += 1

    def _silent(self, sock: socket.socket) -> None:
        self.stop.wait()

    def _head(self, sock: socket.socket) -> None:
        self._trickle(sock, _request_bytes(stream=False).split(b"\r\n\r\n")[0])

    def _body(self, sock: socket.socket) -> None:
        head, body = _request_bytes(stream=False).split(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        self._trickle(sock, body[:-1])  # never the last byte

    def __enter__(self) -> Loris:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        for sock in self.sockets:
            sock.close()


def test_slow_loris_clients_do_not_hold_up_the_others(
    tmp_path: Path, stack: ExitStack, healthy: RunningUpstream
) -> None:
    long = stack.enter_context(RunningUpstream(FakeUpstream(chunks=100_000), free_port()))
    manifests = [remote("other", healthy.url), remote("long", long.url)]
    with (
        serve_process(tmp_path, manifests) as url,
        Loris(url, silent=20, head=10, body=10) as loris,
        contextlib.closing(_connect(url)) as reader,
    ):
        # and a reader: a stream of 100,000 events that it never reads, on a model of its own
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(_request_bytes(stream=True, model="long"))
        wait_for(lambda: long.app.requests == 1, "the reader's stream to start")
        with Bystanders(url, at_least=40):
            pass
        assert loris.closed == 0  # within their deadlines (10 s for a head): all still there, costing nobody


@pytest.mark.parametrize("kind", ["silent", "head", "body"])
def test_a_slow_loris_connection_is_closed_after_its_request_deadline(
    tmp_path: Path, healthy: RunningUpstream, kind: str
) -> None:
    timeouts = {"request_head_timeout": "0.5s", "request_body_timeout": "0.5s"}
    with serve_process(tmp_path, [remote("other", healthy.url)], **timeouts) as url:
        loris = Loris(url, **{kind: 1})
        with loris:
            sock = loris.sockets[0]
            received = bytearray()

            def closed() -> bool:
                sock.settimeout(0.1)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    return False
                except OSError:
                    return True
                received.extend(data)
                return data == b""

            wait_for(closed, "the gateway to close the slow connection", deadline=10)  # 20x its timeout
        if kind == "silent":
            assert received == b""  # nothing was asked, nothing is answered
        else:
            head, _, body = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), head
            assert b"connection: close" in head.lower()
            error = json.loads(body)["error"]
            assert error["code"] == "request_timeout" and error["source"] == "gateway"
            assert f"request's {kind}" in error["message"]


def test_a_request_that_arrives_in_time_is_not_cut_by_its_deadline(
    tmp_path: Path, healthy: RunningUpstream
) -> None:
    """The deadlines bound the arrival of a request, not its answer nor the idle time of a kept-alive
    connection: a stream that outlives them, and a second request after a pause longer than them, are
    served on the same connection."""
    slow = RunningUpstream(FakeUpstream(chunks=20, chunk_delay=0.1), free_port())
    with (
        slow,
        serve_process(
            tmp_path,
            [remote("other", healthy.url), remote("slow", slow.url)],
            request_head_timeout="0.5s",
            request_body_timeout="0.5s",
        ) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        request = {**CHAT, "model": "slow", "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=request) as r:
            assert r.status_code == 200
            first = _local_address(r)
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) == 21  # 2 s of stream past a 0.5 s deadline
        time.sleep(1.0)  # idle past both deadlines: kept alive (the keep-alive timeout is 30 s), not cut
        r = client.post("/v1/chat/completions", json={**CHAT, "model": "other"})
        assert r.status_code == 200
        assert _local_address(r) == first  # the same connection


def _local_address(response: httpx.Response) -> Any:
    return response.extensions["network_stream"].get_extra_info("socket").getsockname()


def test_slow_loris_connections_cannot_take_every_connection(
    tmp_path: Path, healthy: RunningUpstream
) -> None:
    manifests = [remote("other", healthy.url)]
    with (
        serve_process(tmp_path, manifests, max_connections="8", request_head_timeout="0.5s") as url,
        Loris(url, silent=8),
    ):
        wait_for(lambda: _status(int(url.rsplit(":", 1)[1])) == 200, "a request to be served", deadline=10)


def test_a_client_that_stops_reading_is_cut_and_its_slot_freed(tmp_path: Path, stack: ExitStack) -> None:
    """A stream's client that reads nothing: after the send timeout its connection is reset, its upstream
    request ends, and the model's only slot serves the next client (a reader on the same model)."""
    long = stack.enter_context(RunningUpstream(FakeUpstream(chunks=100_000), free_port()))
    manifest = remote("long", long.url)
    manifest["backend"]["endpoints"][0]["max_concurrency"] = 1  # one slot: the reader needs it back
    with (
        serve_process(tmp_path, [manifest], send_timeout="1s") as url,
        contextlib.closing(_connect(url)) as idle,
    ):
        idle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        idle.sendall(_request_bytes(stream=True, model="long"))
        wait_for(lambda: long.app.requests == 1, "the idle client's stream to start")
        # The reader waits in the queue behind it, and is served once the gateway has cut the idle one.
        answer = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "long"}, timeout=120)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "ok"
        assert long.app.requests == 2
        idle.settimeout(60)
        with pytest.raises(ConnectionResetError):  # reset, not a clean end: the answer was never whole
            while idle.recv(1 << 20):
                pass
