"""The in-process engine through the gateway, against a direct ``llama_cpp.Llama`` and against
llama-cpp-python's own OpenAI server, in one run. SmolLM2-135M, the same prompt, temperature 0, 128 tokens
(no logit bias: llama-cpp-python's costs two thirds of its decode speed; tokens/s counts what came).

    python bench/gateway_vs_direct.py [--runs 5] [--threads N]

``--threads`` (default: every core) sets the engine's threads on both sides. With as many threads as cores,
whatever else runs per token (the gateway's event loop, the client reading the stream) takes a core from the
engine's threads, which wait for each other at every step; the table also says how much CPU that is.

Prints one table; the targets are in the issue and in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
TOKENS = 128
THREADS = os.cpu_count() or 2


def thread_cpu(pid: int, tid: int) -> float:
    """CPU seconds (user + system) one thread of a process has used."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class Run:
    ttft: float  # seconds to the first content token
    total: float  # seconds to the last token
    tokens: int

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / (self.total - self.ttft)


def direct_once(llm: Any) -> Run:
    start = time.perf_counter()
    first = None
    n = 0
    for chunk in llm.create_chat_completion(messages=MESSAGES, max_tokens=TOKENS, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content") is not None:
            first = first or time.perf_counter()
            n += 1
    return Run(first - start, time.perf_counter() - start, n)  # type: ignore[operator]


_local = threading.local()


def _socket(base: str, fresh: bool = False) -> socket.socket:
    # One kept-alive connection per thread and server, read raw: the lightest client there is in Python, so
    # that the client's own work per token (which takes a core from the engine as the gateway's does) stays
    # small (http.client reads a chunked body a line at a time, in Python).
    socks: dict[str, socket.socket] = _local.__dict__.setdefault("socks", {})
    if fresh and base in socks:
        socks.pop(base).close()
    if base not in socks:
        host, port = base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=600)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[base] = sock
    return socks[base]


_TOKEN = re.compile(rb'"content": ?"')  # a token (llama-cpp-python's server writes JSON with spaces)
_END = b"0\r\n\r\n"  # the last chunk of a chunked body


def stream_once(base: str, model: str, path: str = "/v1/chat/completions") -> Run:
    body = json.dumps(
        {"model": model, "messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0, "stream": True}
    ).encode()
    host = base.removeprefix("http://")
    request = (
        b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), len(body), body)
    )
    for attempt in (0, 1):
        sock = _socket(base, fresh=attempt == 1)
        start = time.perf_counter()
        try:
            sock.sendall(request)
            data = sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            data = b""
        if data:
            break
        # The server closed the kept-alive connection while it idled (uvicorn's keep-alive timeout, 5 s, can
        # pass while a slow direct run goes on): once more on a new one.
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(data[:500])
    first = None
    n = 0
    pending = b""
    while True:
        *events, pending = (pending + data).split(b"\n\n")
        for event in events:  # a token's chunk; parsing each chunk's JSON would take the engine's CPU
            if b'"error"' in event:
                raise RuntimeError(event[:500])
            if _TOKEN.search(event):
                first = first or time.perf_counter()
                n += 1
        if pending.endswith(_END):
            break
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the stream early")
    return Run(first - start, time.perf_counter() - start, n)  # type: ignore[operator]


def concurrent(base: str, model: str, streams: int) -> tuple[float, int]:
    """Aggregate tokens/s of ``streams`` simultaneous streams, and how many broke."""
    results: list[Run | Exception] = []

    def one() -> None:
        try:
            results.append(stream_once(base, model))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, Run) and r.tokens > 0]
    return sum(r.tokens for r in ok) / elapsed, streams - len(ok)


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_gateway(manifests: Path, port: int, budget: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--manifests",
            str(manifests),
            "--port",
            str(port),
            "--memory-budget",
            budget,
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def write_manifests(directory: Path, threads: int) -> None:
    def m(name: str, **backend: object) -> dict[str, object]:
        return {"name": name, "backend": {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 2048, **backend}}

    models = [
        m("smol", n_threads=threads),
        m("smol-b", n_threads=threads),
        m("smol-par2", n_threads=max(1, threads // 2), parallel=2, n_ctx=1024),
    ]
    for item in models:
        (directory / f"{item['name']}.yaml").write_text(yaml.safe_dump(item))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=THREADS, help="the engine's threads, both sides")
    args = parser.parse_args()
    threads = args.threads
    rows: list[tuple[str, str, str, str]] = []

    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(str(MODEL), n_ctx=2048, n_threads=threads, verbose=False)
    load_time = time.perf_counter() - t
    cold_ttft = direct_once(llm).ttft

    with tempfile.TemporaryDirectory() as tmp:
        write_manifests(Path(tmp), threads)
        port = 18931
        base = f"http://127.0.0.1:{port}"
        # Room for one 2k-context instance (233 MiB) but not two, so that asking for smol-b after smol is
        # a cold switch with an eviction.
        gw = start_gateway(Path(tmp), port, "450MiB")
        try:
            idle_rss = rss_mb(gw.pid)
            httpx.get(base + "/v1/models").raise_for_status()
            stream_once(base, "smol")  # load + warm
            # Direct and gateway runs alternate, so that both see the same machine (runs here drift by
            # 10-20% over minutes); the other engine is idle meanwhile.
            direct, via = [], []
            loop_cpu = client_cpu = 0.0
            for _ in range(args.runs):
                direct.append(direct_once(llm))
                before, mine = thread_cpu(gw.pid, gw.pid), own_cpu()
                via.append(stream_once(base, "smol"))
                loop_cpu += thread_cpu(gw.pid, gw.pid) - before  # the event loop's thread
                client_cpu += own_cpu() - mine
            via_tokens = sum(r.tokens for r in via)
            llm.close()
            d_tps = statistics.median(r.decode_tps for r in direct)
            d_ttft = statistics.median(r.ttft for r in direct)
            g_tps = statistics.median(r.decode_tps for r in via)
            g_ttft = statistics.median(r.ttft for r in via)
            switches = []
            for i in range(3):
                target = "smol-b" if i % 2 == 0 else "smol"
                switches.append(stream_once(base, target).ttft)
            switch = statistics.median(switches)
            httpx.post(base + "/admin/models/smol/evict", timeout=60)
            httpx.post(base + "/admin/models/smol-b/evict", timeout=60)
            stream_once(base, "smol-par2")
            g4_tps, g4_broken = concurrent(base, "smol-par2", 4)
        finally:
            gw.terminate()
            gw.wait(30)

    peer_port = 18932
    peer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(MODEL),
            "--n_ctx",
            "2048",
            "--n_threads",
            str(threads),
            "--port",
            str(peer_port),
            "--interrupt_requests",
            "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pbase = f"http://127.0.0.1:{peer_port}"
        wait_http(pbase + "/v1/models", peer)
        stream_once(pbase, "x")
        p4_tps, p4_broken = concurrent(pbase, "x", 4)
    finally:
        peer.terminate()
        peer.wait(30)

    rows += [
        (
            "single-stream decode tok/s",
            f"{d_tps:.1f} direct",
            f"{g_tps:.1f} ({g_tps / d_tps:.3f}x)",
            ">= 0.99x",
        ),
        ("gateway event loop CPU per token us", "", f"{loop_cpu / via_tokens * 1e6:.0f}", ""),
        ("client CPU per token us (reading the stream)", "", f"{client_cpu / via_tokens * 1e6:.0f}", ""),
        (
            "TTFT p50 ms",
            f"{d_ttft * 1e3:.1f} direct",
            f"{g_ttft * 1e3:.1f} (+{(g_ttft - d_ttft) * 1e3:.1f})",
            "added <= 2 ms",
        ),
        (
            "4 streams, parallel 2: tok/s",
            f"{p4_tps:.1f} llama_cpp.server",
            f"{g4_tps:.1f} ({g4_tps / p4_tps:.2f}x)",
            ">= 1.0x",
        ),
        ("4 streams: broken", f"{p4_broken} llama_cpp.server", f"{g4_broken}", "0"),
        (
            "cold switch, request to first token ms",
            f"{(load_time + cold_ttft) * 1e3:.1f} load + cold TTFT direct",
            f"{switch * 1e3:.1f} (+{(switch - load_time - cold_ttft) * 1e3:.1f})",
            "added <= 50 ms",
        ),
        ("gateway RSS, no model loaded MB", "", f"{idle_rss:.1f}", "<= 120"),
    ]
    print(f"SmolLM2-135M Q4_1, {TOKENS} tokens, temperature 0, {threads} threads, {args.runs} runs (medians)")
    print_table(("measure", "reference", "gateway", "target"), rows)


if __name__ == "__main__":
    main()
