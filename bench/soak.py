"""Soak: many concurrent streams for a long time; the gateway's memory must stay flat and no stream may break.

Two runs, one after the other, each ``--streams`` concurrent streams (default 64) for ``--minutes`` (default
10) against one ``llm-gateway serve`` process:

1. a fake upstream (``tests/fake_upstream.py``, 64 events 5 ms apart per stream) as a ``remote`` model, the
   gateway on core 0 and the upstream on core 1;
2. the in-process engine (SmolLM2-135M, llama-cpp-python), 32-token answers at temperature 0.8 with a fresh
   prompt each time, its 64 streams queued in the gateway in front of its instance.

Every stream is checked whole: status 200, every event ``data: {JSON}`` (parsed), a last event
``data: [DONE]``, and a finish reason (the engine) or all 64 content events in order. Anything else counts as
broken, with its reason. The gateway's RSS is read every 5 s; the growth is against the reading at the end
of the warm-up (the first minute, or a tenth of the run if shorter: lazy imports, the first load, allocator
pools, and caches filling), twice: the last reading under load, and one 5 s after the last stream ended.
Targets (issue 11): growth at most 5%, zero broken streams.

    python bench/soak.py [--minutes 10] [--streams 64] [--only fake|engine] [--env NAME=VALUE] [--verbose]

The client is asyncio over raw sockets in this process (an httpx client per stream costs enough CPU on 2
cores to starve what it measures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from _table import print_table  # bench/, on the path when run as a script
from gateway_vs_direct import rss_mb
from proxy_overhead import spawn, wait_http

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FAKE_CHUNKS = 64
GATEWAY_PORT, UPSTREAM_PORT = 18961, 18962
READ_DEADLINE = 120.0  # one stream's whole answer, queueing included: past it, the stream counts as broken


@dataclass
class Tally:
    completed: int = 0
    broken: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)


def gateway(manifest: dict[str, object], cores: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    d = Path(tempfile.mkdtemp())
    (d / "m.yaml").write_text(yaml.safe_dump(manifest))
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d), "--port", str(GATEWAY_PORT),
           "--log-level", "warning", "--max-queue", "1000", "--memory-budget", "2GiB"]  # fmt: skip
    proc = spawn(cmd, cores, env)
    wait_http(f"http://127.0.0.1:{GATEWAY_PORT}/health")
    return proc


def request_bytes(body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)
    )


def judge(raw: bytes, fake: bool) -> tuple[str | None, int]:
    """Why this whole response is not a good stream (None: it is), and its content events."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        return f"status {head.split(b' ')[1:2]}", 0
    if b"transfer-encoding: chunked" not in head.lower():
        return "not chunked", 0
    payload, rest = bytearray(), body
    while True:  # undo the chunked framing
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payload += rest[:size]
        rest = rest[size + 2 :]
    events = [e for e in bytes(payload).split(b"\n\n") if e.strip()]
    if not events or events[-1] != b"data: [DONE]":
        return "no [DONE] at the end", 0
    contents, finish = [], None
    for event in events[:-1]:
        if not event.startswith(b"data: "):
            return "an event that is not data", 0
        chunk = json.loads(event[6:])
        if "error" in chunk:
            return f"error event: {chunk['error'].get('code')}", 0
        for choice in chunk.get("choices", []):
            if choice["delta"].get("content"):
                contents.append(choice["delta"]["content"])
            finish = choice.get("finish_reason") or finish
    if finish is None and not fake:  # the fake upstream's events carry none
        return "no finish reason", 0
    if fake and contents != [f"t{i}" for i in range(FAKE_CHUNKS)]:
        return f"{len(contents)} of {FAKE_CHUNKS} content events, or out of order", 0
    return None, len(contents)


async def one_stream(request: bytes, fake: bool, tally: Tally) -> None:
    try:
        async with asyncio.timeout(READ_DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", GATEWAY_PORT)
            try:
                writer.write(request)
                raw = await reader.read(-1)  # connection: close
            finally:
                writer.close()
        problem, tokens = judge(raw, fake)
    except (OSError, TimeoutError, ValueError, KeyError) as exc:
        problem, tokens = f"{type(exc).__name__}: {exc}", 0
    if problem is None:
        tally.completed += 1
        tally.tokens += tokens
    else:
        tally.broken[problem] += 1


async def soak(pid: int, seconds: float, streams: int, fake: bool) -> Tally:
    tally = Tally()
    end = time.monotonic() + seconds
    start_at = time.monotonic()

    async def client(i: int) -> None:
        n = 0
        while time.monotonic() < end:
            body: dict[str, object] = {"model": "m", "stream": True, "max_tokens": 32}
            if fake:
                body["messages"] = [{"role": "user", "content": "hi"}]
            else:
                body["messages"] = [{"role": "user", "content": f"Story {i}-{n}: tell me about colour."}]
                body["temperature"] = 0.8
            n += 1
            await one_stream(request_bytes(body), fake, tally)

    async def sample() -> None:
        while not drained.is_set():
            tally.rss_mb.append((time.monotonic() - start_at, rss_mb(pid)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), 5)  # the sampling period

    drained = asyncio.Event()
    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(client(i) for i in range(streams)))
    drained.set()
    await sampler
    tally.rss_mb.append((time.monotonic() - start_at, rss_mb(pid)))
    await asyncio.sleep(5)  # idle: what the gateway keeps once every request has ended
    tally.rss_mb.append((time.monotonic() - start_at, rss_mb(pid)))
    return tally


def run(kind: str, minutes: float, streams: int, env: dict[str, str], verbose: bool) -> list[str]:
    fake = kind == "fake"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if fake:
            upstream = [sys.executable, "tests/fake_upstream.py", "--port", str(UPSTREAM_PORT),
                        "--chunks", str(FAKE_CHUNKS), "--chunk-delay", "0.005"]  # fmt: skip
            procs.append(spawn(upstream, "1"))
            endpoint = {"url": f"http://127.0.0.1:{UPSTREAM_PORT}", "max_concurrency": 1000}
            remote = {"kind": "remote", "endpoints": [endpoint]}
            proc = gateway({"name": "m", "backend": remote}, "0", env)
        else:
            backend = {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 2048, "n_threads": 2}
            proc = gateway({"name": "m", "backend": backend, "max_queue": 1000}, "0,1", env)
        procs.append(proc)
        tally = asyncio.run(soak(proc.pid, minutes * 60, streams, fake))
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
    warm = min(60.0, minutes * 6)
    base = next(mb for t, mb in tally.rss_mb if t >= warm)
    in_run = [mb for t, mb in tally.rss_mb if t <= minutes * 60][-1]  # the last reading under load
    last = tally.rss_mb[-1][1]  # idle, once every stream has ended
    peak = max(mb for _, mb in tally.rss_mb)
    broken = sum(tally.broken.values())
    reasons = "; ".join(f"{n}x {why}" for why, n in tally.broken.most_common(3)) or "-"
    label = "fake upstream" if fake else "in-process SmolLM2"
    label += "".join(f", {k}={v}" for k, v in env.items())
    if verbose:
        print(label, "RSS MiB:", " ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in tally.rss_mb))
    return [
        label,
        f"{minutes:g} min x {streams}",
        str(tally.completed),
        f"{tally.tokens / (minutes * 60):.0f}",
        f"{broken} ({reasons})",
        f"{base:.1f} -> {in_run:.1f} -> {last:.1f} (peak {peak:.1f})",
        f"{(in_run - base) / base * 100:+.1f}% / {(last - base) / base * 100:+.1f}%",
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--only", choices=["fake", "engine"])
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway's environment")
    p.add_argument("--verbose", action="store_true", help="print every RSS reading")
    a = p.parse_args()
    os.chdir(ROOT)
    env = dict(item.split("=", 1) for item in a.env)
    kinds = [a.only] if a.only else ["fake", "engine"]
    rows = [run(kind, a.minutes, a.streams, env, a.verbose) for kind in kinds]
    print_table(
        [
            "backend",
            "run",
            "streams completed",
            "content events/s",
            "broken",
            "gateway RSS MiB: warm -> end of load -> idle",
            "growth: under load / idle",
        ],
        rows,
    )
    print("targets: growth <= +5.0%, broken 0")


if __name__ == "__main__":
    main()
