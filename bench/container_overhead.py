"""The container kind against the same container reached directly, side by side in one run.

1. Cold start to first token. Through the gateway: a streamed request for an unloaded model; the gateway
   makes sure the image is there, creates and starts the container on a Docker engine, waits for its
   /health, then forwards. Directly: the same container spec (the gateway's own preset), created and started
   through the same engine with the docker SDK, /health polled every 10 ms, then the same request. The
   difference is the gateway's overhead. Rounds alternate which goes first. Target: overhead <= 100 ms.
2. Tokens/s once loaded: streams through the gateway against the same container's published port, at
   concurrency 1 and 4, alternating batches. Target: >= 0.97x.

    tests/engine/start.sh && python bench/container_overhead.py [--rounds N]

It needs the engines of tests/engine/start.sh and `llm-gateway build-llama-server`.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script
from proxy_overhead import pct, stream_stats, wait_http

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.container.presets import llamacpp_run  # noqa: E402
from backends.container.spec import LlamaCppContainer  # noqa: E402
from backends.llama_server.build import built_binary  # noqa: E402

MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ENGINE = "unix:///tmp/llm-gateway-engines/e1.sock"
IMAGE = "localhost/llm-gateway-llamacpp:test"
PORT = 18951


def backend() -> dict[str, object]:
    server = built_binary("llama-server")
    assert server is not None, "run `llm-gateway build-llama-server`"
    return {
        "kind": "container",
        "preset": "llamacpp",
        "image": IMAGE,
        "pull": "never",
        "model": str(MODEL),
        "volumes": ["/usr:/usr:ro", f"{server.parent}:/app:ro"],
        "n_ctx": 8192,
        "parallel": 4,
        "threads": 2,
        "stop_timeout": 2,
    }


def start_gateway() -> subprocess.Popen[bytes]:
    d = Path(tempfile.mkdtemp())
    (d / "manifests").mkdir()
    manifest = {"name": "m", "backend": backend(), "health_check_interval": "10s"}
    (d / "manifests" / "m.yaml").write_text(yaml.safe_dump(manifest))
    (d / "engines.yaml").write_text(yaml.safe_dump([{"name": "e1", "url": ENGINE}]))
    command = [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d / "manifests")]
    proc = subprocess.Popen(
        [*command, "--engines", str(d / "engines.yaml"), "--port", str(PORT), "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{PORT}/health")
    return proc


def first_token(port: int) -> float:
    """Seconds from sending a streamed chat to its first content token (raw socket, as stream_stats)."""
    _, ttfts = stream_stats(f"http://127.0.0.1:{port}", "m", 1, 1)
    return ttfts[0]


def cold_gateway() -> float:
    httpx.post(f"http://127.0.0.1:{PORT}/admin/models/m/evict", timeout=60).raise_for_status()
    return first_token(PORT)  # measured from the request: the load is inside it


def health_ok(port: int) -> bool:
    """GET /health over a raw socket: a new httpx client per poll costs milliseconds of its own."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def cold_direct(client: docker.DockerClient) -> tuple[float, float, float]:
    """Seconds from the first engine call to: the container started, its /health 200, its first token."""
    run = llamacpp_run(LlamaCppContainer.model_validate(backend()), ())
    start = time.perf_counter()
    client.images.get(run.image)  # as the gateway does (pull: never still checks)
    container = client.containers.create(name=f"bench-direct-{time.time_ns()}", **run.run_kwargs("127.0.0.1"))
    try:
        container.start()
        started = time.perf_counter() - start
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"][f"{run.port}/tcp"][0]["HostPort"])
        while not health_ok(port):
            time.sleep(0.01)
        ready = time.perf_counter() - start
        return started, ready, ready + first_token(port)
    finally:
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = docker.DockerClient(base_url=ENGINE, timeout=60)
    gw = start_gateway()
    rows = []
    try:
        cold_gateway()  # warm-up: page cache, the engine's first container
        cold_direct(client)
        gateway_cold: list[float] = []
        direct_parts: list[tuple[float, float, float]] = []
        for i in range(args.rounds):
            for which in ("gw", "direct") if i % 2 == 0 else ("direct", "gw"):
                if which == "gw":
                    gateway_cold.append(cold_gateway())
                else:
                    direct_parts.append(cold_direct(client))
        started, ready, d = (statistics.median(p[k] for p in direct_parts) for k in range(3))
        g = statistics.median(gateway_cold)
        low = min(gateway_cold) - max(p[2] for p in direct_parts)
        high = max(gateway_cold) - min(p[2] for p in direct_parts)
        rows += [
            ("cold start: container created and started (engine API), ms", f"{started * 1000:.0f}", "", ""),
            ("cold start: its /health says 200 (own start + model load), ms", f"{ready * 1000:.0f}", "", ""),
            (
                f"cold start to first token, median of {args.rounds}, ms",
                f"{d * 1000:.0f}",
                f"{g * 1000:.0f} ({(g - d) * 1000:+.0f}; extremes {low * 1000:+.0f}..{high * 1000:+.0f})",
                "added <= 100 ms",
            ),
        ]
        first_token(PORT)  # loaded again
        url = httpx.get(f"http://127.0.0.1:{PORT}/admin/models", timeout=10).json()["models"][0]["replicas"][
            0
        ]["url"]
        direct_port = int(url.rsplit(":", 1)[1])
        bases = (f"http://127.0.0.1:{direct_port}", f"http://127.0.0.1:{PORT}")
        for base in bases:
            stream_stats(base, "m", 4, 8)  # warm-up
        for conc, batches in ((1, 12), (4, 6)):
            tps: dict[str, list[float]] = {b: [] for b in bases}
            ttft: dict[str, list[float]] = {b: [] for b in bases}
            for i in range(batches):
                for base in bases if i % 2 == 0 else bases[::-1]:
                    rate, firsts = stream_stats(base, "m", conc, conc * 2)
                    tps[base].append(rate)
                    ttft[base] += firsts
            dt, gt = (statistics.mean(tps[b]) for b in bases)
            rows += [
                (f"container, c={conc}: tok/s", f"{dt:.1f}", f"{gt:.1f} ({gt / dt:.3f}x)", ">= 0.97x"),
                (
                    f"container, c={conc}: TTFT p50 ms",
                    f"{pct(ttft[bases[0]], 0.5):.1f}",
                    f"{pct(ttft[bases[1]], 0.5):.1f}",
                    "",
                ),
            ]
    finally:
        gw.terminate()
        gw.wait(60)
        client.close()
    print_table(("measure", "direct", "gateway", "target"), rows)
    print(f"cores: {len(os.sched_getaffinity(0))}, host: {socket.gethostname()}")


if __name__ == "__main__":
    main()
