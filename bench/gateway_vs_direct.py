"""The in-process engine through the gateway, against a direct ``llama_cpp.Llama`` and against
llama-cpp-python's own OpenAI server, in one run. SmolLM2-135M, the same prompt, temperature 0, 128 tokens
(no logit bias: llama-cpp-python's costs two thirds of its decode speed; tokens/s counts what came).

    python bench/gateway_vs_direct.py [--runs 5]

Prints one table; the targets are in the issue and in bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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


def _connection(base: str) -> http.client.HTTPConnection:
    # One kept-alive connection per thread and server, with the standard library's client: the lightest
    # Python client, so that the client's own cost stays out of the gateway's numbers as far as possible.
    conns: dict[str, http.client.HTTPConnection] = _local.__dict__.setdefault("conns", {})
    if base not in conns:
        host, port = base.removeprefix("http://").split(":")
        conns[base] = http.client.HTTPConnection(host, int(port), timeout=600)
    return conns[base]


def stream_once(base: str, model: str, path: str = "/v1/chat/completions") -> Run:
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": True,
    }
    conn = _connection(base)
    start = time.perf_counter()
    first = None
    n = 0
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {resp.read()!r}")
    while line := resp.readline():
        if b'"error"' in line:
            raise RuntimeError(line)
        if b'"content"' in line:  # a token chunk; parsing every chunk's JSON would take CPU from the engine
            first = first or time.perf_counter()
            n += 1
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


def write_manifests(directory: Path) -> None:
    def m(name: str, **backend: object) -> dict[str, object]:
        return {"name": name, "backend": {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 2048, **backend}}

    models = [
        m("smol", n_threads=THREADS),
        m("smol-b", n_threads=THREADS),
        m("smol-par2", n_threads=max(1, THREADS // 2), parallel=2, n_ctx=1024),
    ]
    for item in models:
        (directory / f"{item['name']}.yaml").write_text(yaml.safe_dump(item))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []

    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(str(MODEL), n_ctx=2048, n_threads=THREADS, verbose=False)
    load_time = time.perf_counter() - t
    cold_ttft = direct_once(llm).ttft

    with tempfile.TemporaryDirectory() as tmp:
        write_manifests(Path(tmp))
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
            for _ in range(args.runs):
                direct.append(direct_once(llm))
                via.append(stream_once(base, "smol"))
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
            str(THREADS),
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
            ">= 0.95x",
        ),
        (
            "TTFT p50 ms",
            f"{d_ttft * 1e3:.1f} direct",
            f"{g_ttft * 1e3:.1f} (+{(g_ttft - d_ttft) * 1e3:.1f})",
            "added <= 5 ms",
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
    print(f"SmolLM2-135M Q4_1, {TOKENS} tokens, temperature 0, {THREADS} threads, {args.runs} runs (medians)")
    print_table(("measure", "reference", "gateway", "target"), rows)


if __name__ == "__main__":
    main()
