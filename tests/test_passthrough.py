"""Streams pass through byte for byte, and chunk by chunk: never re-chunked, never held back to be batched.
The fake upstream is used for what a real engine cannot promise: exact bytes and exact spacing in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import RunningGateway, free_port
from tests.fake_upstream import FakeUpstream, RunningUpstream, _chunk


def test_chunks_arrive_one_by_one_and_byte_for_byte(serve: Callable[..., RunningGateway]) -> None:
    chunks, delay = 6, 0.1
    with RunningUpstream(FakeUpstream(chunks=chunks, chunk_delay=delay), free_port()) as up:
        endpoint: dict[str, Any] = {"url": up.url, "max_concurrency": 4}
        gw = serve([{"name": "m", "backend": {"kind": "remote", "endpoints": [endpoint]}}])
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        arrivals: list[tuple[float, bytes]] = []
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200
            assert r.headers["x-accel-buffering"] == "no"
            for piece in r.iter_raw():
                arrivals.append((time.monotonic(), piece))
    sent = b"".join(_chunk(i) for i in range(chunks)) + b"data: [DONE]\n\n"
    assert b"".join(p for _, p in arrivals) == sent  # untouched
    events = [p for _, p in arrivals if p.startswith(b"data: {")]
    assert events == [_chunk(i) for i in range(chunks)]  # each event in its own read: nothing batched
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread >= (chunks - 1) * delay * 0.8  # delivered as produced, not collected and sent at the end
