"""The gateway's own overhead in front of HTTP upstreams, measured side by side in one run.

1. Non-streaming chat against a fast fake upstream, with wrk (16 connections and 1 connection): direct to the
   upstream, then through the gateway (one core for the gateway, ``taskset``). Targets: >= 2,500 req/s and
   >= 0.5x direct; added median latency <= 1 ms at 1 connection.
2. Streaming: 32 concurrent streams of 64 SSE chunks each through the gateway; forwarded chunks/s.
3. A real llama-server (SmolLM2, -np 4) at concurrency 1, 4 and 16: aggregate tokens/s and TTFT p50/p99,
   direct against through the gateway.

    python bench/proxy_overhead.py    # needs wrk (apt-get install wrk) and `llm-gateway build-llama-server`
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.build import built_binary  # noqa: E402

MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
"""


def wait_http(url: str) -> None:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def spawn(cmd: list[str], core: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", core, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wrk(url: str, body: dict[str, object], connections: int, seconds: int = 8) -> tuple[float, float]:
    """Requests/s and median latency (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % json.dumps(body))
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            f.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return rps, float(p50.group(1)) * scale


def gateway(manifest: dict[str, object], port: int, cores: str = "0") -> subprocess.Popen[bytes]:
    """The gateway on ``cores`` (the processes it launches inherit them)."""
    d = Path(tempfile.mkdtemp())
    (d / "m.yaml").write_text(yaml.safe_dump(manifest))
    proc = spawn(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--manifests",
            str(d),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--max-queue",
            "1000",
        ],
        cores,
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def remote_gateway(upstream: str, cap: int, port: int) -> subprocess.Popen[bytes]:
    """The gateway in front of one upstream, as a ``remote`` model named "m"."""
    endpoint = {"url": upstream, "max_concurrency": cap}
    return gateway({"name": "m", "backend": {"kind": "remote", "endpoints": [endpoint]}}, port)


def stream_stats(base: str, model: str, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """Aggregate completion tokens/s and the TTFTs, for ``requests`` streams at ``concurrency``."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "logit_bias": {"2": -100},
    }
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    todo = list(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                start = time.perf_counter()
                first = None
                n = 0
                with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"content"' in line:
                            first = first or time.perf_counter() - start
                            n += 1
                with lock:
                    ttfts.append(first or float("nan"))
                    tokens[0] += n

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tokens[0] / (time.perf_counter() - start), ttfts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def replicas_rows() -> list[tuple[str, str, str, str]]:
    """Tokens/s at concurrency 8: one llama-server replica (2 threads) against two (1 thread each)."""
    out = {}
    for replicas, threads, port in ((1, 2, 18945), (2, 1, 18946)):
        manifest = {
            "name": "m",
            "backend": {
                "kind": "llama_server",
                "model": str(MODEL),
                "replicas": replicas,
                "parallel": 4,
                "threads": threads,
                "n_ctx": 8192,
            },
        }
        gw = gateway(manifest, port, "0,1")
        try:
            base = f"http://127.0.0.1:{port}"
            stream_stats(base, "m", 2 * replicas, 2 * replicas)  # load and warm every replica
            out[replicas], _ = stream_stats(base, "m", 8, 24)
        finally:
            gw.terminate()
            gw.wait(30)
    return [
        (
            "llama-server x2 vs x1, c=8: tok/s",
            f"{out[1]:.1f} one replica",
            f"{out[2]:.1f} two replicas ({out[2] / out[1]:.2f}x)",
            "report",
        )
    ]


def main() -> None:
    rows: list[tuple[str, str, str, str]] = []
    if sys.argv[1:] == ["--replicas-only"]:
        rows = replicas_rows()
        print_table(("measure", "reference", "gateway", "target"), rows)
        return
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    upstream = spawn([sys.executable, "tests/fake_upstream.py", "--port", "18941", "--chunks", "64"], "1")
    wait_http("http://127.0.0.1:18941/health")
    gw = remote_gateway("http://127.0.0.1:18941", 1000, 18942)
    try:
        d16, _ = wrk("http://127.0.0.1:18941/v1/chat/completions", body, 16)
        g16, _ = wrk("http://127.0.0.1:18942/v1/chat/completions", body, 16)
        _, d1 = wrk("http://127.0.0.1:18941/v1/chat/completions", body, 1)
        _, g1 = wrk("http://127.0.0.1:18942/v1/chat/completions", body, 1)
        s32, _ = wrk("http://127.0.0.1:18942/v1/chat/completions", {**body, "stream": True}, 32)
    finally:
        gw.terminate()
        upstream.terminate()
    rows += [
        (
            "non-streaming req/s, 16 conns",
            f"{d16:.0f} direct",
            f"{g16:.0f} ({g16 / d16:.2f}x)",
            ">= 2500 and >= 0.5x",
        ),
        ("p50 latency ms, 1 conn", f"{d1:.2f} direct", f"{g1:.2f} (+{g1 - d1:.2f})", "added <= 1 ms"),
        ("SSE chunks/s, 32 streams x 64 chunks", "", f"{s32 * 64:.0f}", ">= 20000"),
    ]

    server = built_binary("llama-server")
    if server is not None:
        direct = spawn(
            [str(server), "-m", str(MODEL), "--port", "18943", "-c", "8192", "-np", "4", "-t", "2"], "0,1"
        )
        wait_http("http://127.0.0.1:18943/health")
        gw = remote_gateway("http://127.0.0.1:18943", 4, 18944)
        try:
            for conc in (1, 4, 16):
                n = max(8, 2 * conc)
                d_tps, d_ttft = stream_stats("http://127.0.0.1:18943", "m", conc, n)
                g_tps, g_ttft = stream_stats("http://127.0.0.1:18944", "m", conc, n)
                rows.append(
                    (
                        f"llama-server c={conc}: tok/s",
                        f"{d_tps:.1f} direct",
                        f"{g_tps:.1f} ({g_tps / d_tps:.2f}x)",
                        ">= 0.97x",
                    )
                )
                rows.append(
                    (
                        f"llama-server c={conc}: TTFT p50/p99 ms",
                        f"{pct(d_ttft, 0.5):.1f} / {pct(d_ttft, 0.99):.1f}",
                        f"{pct(g_ttft, 0.5):.1f} / {pct(g_ttft, 0.99):.1f}",
                        "added <= 2 / 10 ms",
                    )
                )
        finally:
            gw.terminate()
            direct.terminate()
    print_table(("measure", "direct", "through the gateway", "target"), rows)


if __name__ == "__main__":
    main()
