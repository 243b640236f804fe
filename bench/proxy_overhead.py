"""The gateway's own overhead in front of HTTP upstreams, measured side by side in one run.

1. Non-streaming chat against a fast fake upstream, with wrk (16 connections and 1 connection): direct to the
   upstream, then through the gateway (one core for the gateway, ``taskset``). Targets: >= 2,500 req/s and
   >= 0.5x direct; added median latency <= 1 ms at 1 connection.
2. Streaming: 32 concurrent streams of 64 SSE chunks each through the gateway; forwarded chunks/s.
3. A real llama-server (SmolLM2, -np 4) at concurrency 1, 4 and 16: aggregate tokens/s and TTFT p50/p99,
   direct against through the gateway.

    python bench/proxy_overhead.py [--overhead-only | --llama-server-only [--engine-core]] [--rounds N]
    python bench/proxy_overhead.py --replicas-only
    python bench/proxy_overhead.py --metrics-only [--rounds N] [--control]   (metrics on against off;
        --control: both gateways with metrics off, the method's own bias)
    python bench/proxy_overhead.py --tail-only [--rounds N]      (p99: upstream, gateway, GC untuned)

It needs wrk (apt-get install wrk) and `llm-gateway build-llama-server`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.llama_server.build import built_binary  # noqa: E402

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


def spawn(cmd: list[str], core: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", core, *cmd],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def wrk(url: str, body: dict[str, object], connections: int, seconds: int = 8) -> tuple[float, float, float]:
    """Requests/s, median and 99th percentile latency (ms)."""
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
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None and p99 is not None, out
    return rps, float(p50.group(1)) * scale[p50.group(2)], float(p99.group(1)) * scale[p99.group(2)]


def gateway(
    manifest: dict[str, object], port: int, cores: str = "0", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
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
        env,
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def remote_gateway(
    upstream: str, cap: int, port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The gateway in front of one upstream, as a ``remote`` model named "m"."""
    endpoint = {"url": upstream, "max_concurrency": cap}
    return gateway({"name": "m", "backend": {"kind": "remote", "endpoints": [endpoint]}}, port, env=env)


def _stream_once(port: int, request: bytes) -> tuple[float, int]:
    """One streamed chat over a raw socket (``connection: close``, read to the end): the time to the first
    content token and the number of content events. A raw client keeps the load generator's own CPU small:
    on 2 cores an httpx client competes with what it measures."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(request)
        first, events, pending = float("nan"), 0, b""
        while data := sock.recv(65536):
            *complete, pending = (pending + data).split(b"\n\n")
            for event in complete:
                if b"data: {" in event and b'"content":"' in event:
                    if not events:
                        first = time.perf_counter() - start
                    events += 1
    return first, events


def stream_stats(base: str, model: str, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """Aggregate completion tokens/s and the TTFTs, for ``requests`` streams at ``concurrency``."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
            "logit_bias": {"2": -100},
        }
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    port = int(base.rsplit(":", 1)[1])
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    todo = list(range(requests))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            first, n = _stream_once(port, request)
            with lock:
                ttfts.append(first)
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


def overhead_rows(rounds: int = 3) -> list[tuple[str, str, str, str]]:
    """Non-streaming and streaming overhead on fake upstreams; direct and gateway runs alternate, medians."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    path = "/v1/chat/completions"
    rows = []
    for label, flags, port in (
        ("raw ASGI upstream", [], 18941),
        ("Starlette upstream", ["--starlette"], 18947),
    ):
        upstream = spawn([sys.executable, "tests/fake_upstream.py", "--port", str(port), *flags], "1")
        wait_http(f"http://127.0.0.1:{port}/health")
        gw = remote_gateway(f"http://127.0.0.1:{port}", 1000, port + 1)
        try:
            for url in (f"http://127.0.0.1:{port}{path}", f"http://127.0.0.1:{port + 1}{path}"):
                wrk(url, body, 16, 3)  # warm-up: a fresh gateway's first seconds run at about half speed
            direct, through, d1, g1 = [], [], [], []
            for _ in range(rounds):
                direct.append(wrk(f"http://127.0.0.1:{port}{path}", body, 16)[0])
                through.append(wrk(f"http://127.0.0.1:{port + 1}{path}", body, 16)[0])
                d1.append(wrk(f"http://127.0.0.1:{port}{path}", body, 1, 4)[1])
                g1.append(wrk(f"http://127.0.0.1:{port + 1}{path}", body, 1, 4)[1])
            if not flags:
                s32 = median([wrk(f"http://127.0.0.1:{port + 1}{path}", {**body, "stream": True}, 32)[0]])
        finally:
            gw.terminate()
            upstream.terminate()
        d, g = median(direct), median(through)
        rows += [
            (
                f"non-streaming req/s, 16 conns, {label}",
                f"{d:.0f}",
                f"{g:.0f} ({g / d:.2f}x)",
                ">= 2500, 0.5x",
            ),
            (
                f"p50 latency ms, 1 conn, {label}",
                f"{median(d1):.2f}",
                f"{median(g1):.2f} (+{median(g1) - median(d1):.2f})",
                "added <= 1 ms",
            ),
        ]
    rows.append(("SSE chunks/s, 32 streams x 64 chunks", "", f"{s32 * 64:.0f}", ">= 20000"))
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


NGINX_CONF = """worker_processes 1;
daemon off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(dir)s;
    proxy_temp_path %(dir)s;
    upstream fake { server 127.0.0.1:%(upstream)d; keepalive 64; }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
"""


def nginx(upstream: int, port: int) -> subprocess.Popen[bytes]:
    """nginx (one worker) as a plain reverse proxy on core 0: a peer in the gateway's own layout, to tell
    the proxy's share of the tail from the rig's (wrk and the upstream share core 1)."""
    d = Path(tempfile.mkdtemp())
    (d / "nginx.conf").write_text(NGINX_CONF % {"dir": d, "upstream": upstream, "port": port})
    proc = spawn(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], "0")
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def tail_rows(rounds: int = 3) -> list[tuple[str, str, str, str]]:
    """p50 and p99 at 16 connections: the bare upstream, nginx in front of it (a peer, where installed), the
    gateway as it serves (GC tuned at startup), and the gateway with GATEWAY_GC_FREEZE=false; runs
    alternate, medians of ``rounds``."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    path = "/v1/chat/completions"
    upstream = spawn([sys.executable, "tests/fake_upstream.py", "--port", "18991"], "1")
    wait_http("http://127.0.0.1:18991/health")
    ports = {"upstream": 18991, "gateway": 18992, "gateway, GC untuned": 18993}
    procs = [
        remote_gateway("http://127.0.0.1:18991", 1000, 18992),
        remote_gateway("http://127.0.0.1:18991", 1000, 18993, {"GATEWAY_GC_FREEZE": "false"}),
    ]
    if shutil.which("nginx"):
        procs.append(nginx(18991, 18994))
        ports["nginx (peer, 1 worker)"] = 18994
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in ports}
    try:
        for port in ports.values():
            wrk(f"http://127.0.0.1:{port}{path}", body, 16, 3)  # warm-up
        for i in range(rounds):
            for key in list(ports) if i % 2 == 0 else list(ports)[::-1]:
                runs[key].append(wrk(f"http://127.0.0.1:{ports[key]}{path}", body, 16, 8))
    finally:
        for proc in procs:
            proc.terminate()
        upstream.terminate()
    up99 = median([r[2] for r in runs["upstream"]])
    rows = []
    for key, results in runs.items():
        rps, p50, p99 = (median([r[i] for r in results]) for i in range(3))
        target = "" if key == "upstream" else f"p99 <= {2 * up99 + 2:.1f} ms (2x upstream + 2)"
        rows.append((f"{key}: req/s, p50 / p99 ms, 16 conns", f"{rps:.0f}", f"{p50:.2f} / {p99:.2f}", target))
    return rows


def metrics_rows(rounds: int = 5, control: bool = False) -> list[tuple[str, str, str, str]]:
    """The cost of the metrics: two gateways of the same build, one with GATEWAY_METRICS=false, pinned to the
    same core and loaded at the same time (a wrk each, 8 connections, on the other core with the fake
    upstream). Both share every moment of the machine's drift, which on this machine moves one gateway's CPU
    per request by 10-40% between runs a few seconds apart (bench/README.md): their ratio, taken round by
    round, is what is steady. Reported: each one's CPU time per request (from /proc) and req/s, medians of
    ``rounds``, and the median of the rounds' ratios. Streams are measured against two upstreams: one that
    gives its usage only when asked (OpenAI's servers, vLLM: the gateway asks and takes the event out again)
    and one that ends its streams with llama.cpp's ``timings`` (llama-server: read unasked).

    ``control``: the "on" gateway has its metrics off too (an A/A run): the ratios it gives are the method's
    own bias and noise, against which the real run is read."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    seconds = 4
    rows: list[tuple[str, str, str, str]] = []
    cases = [
        ("non-streaming", False, []),
        ("streamed, 64 chunks, usage asked (OpenAI-style upstream)", True, []),
        ("streamed, 64 chunks, llama.cpp timings (llama-server-style upstream)", True, ["--timings"]),
    ]
    for what, stream, upstream_flags in cases:
        upstream = spawn([sys.executable, "tests/fake_upstream.py", "--port", "18951", *upstream_flags], "1")
        wait_http("http://127.0.0.1:18951/health")
        ports = {"off": 18952, "on": 18953}
        metrics = {"off": "False", "on": str(not control)}
        gateways = {
            key: remote_gateway("http://127.0.0.1:18951", 1000, port, {"GATEWAY_METRICS": metrics[key]})
            for key, port in ports.items()
        }
        request = {**body, "stream": True} if stream else body
        rps: dict[str, list[float]] = {k: [] for k in ports}
        cpu: dict[str, list[float]] = {k: [] for k in ports}
        try:
            _paired(gateways, ports, request, 2)  # warm-up (and the llama.cpp upstream's usage is learned)
            for i in range(rounds):
                rate, used = _paired(gateways, ports, request, seconds, reverse=i % 2 == 1)
                for k in ports:
                    rps[k].append(rate[k])
                    cpu[k].append(used[k])
        finally:
            for gw in gateways.values():
                gw.terminate()
            upstream.terminate()
        if "--verbose" in sys.argv:
            print(what, "req/s", rps, "\ncpu us/request", cpu)
        rows += [
            _paired_row(f"{what}: req/s ({rounds} rounds)", rps, ">= 0.97x (issue 16)"),
            _paired_row(f"{what}: gateway CPU us per request", cpu, ""),
        ]
    return rows


def _paired_row(what: str, runs: dict[str, list[float]], target: str) -> tuple[str, str, str, str]:
    """Medians of both sides, and the median of the rounds' ratios (on / off)."""
    ratio = median([on / off for on, off in zip(runs["on"], runs["off"], strict=True)])
    return what, f"{median(runs['off']):.0f}", f"{median(runs['on']):.0f} ({ratio:.3f}x)", target


def _paired(
    gateways: dict[str, subprocess.Popen[bytes]],
    ports: dict[str, int],
    body: dict[str, object],
    seconds: int,
    reverse: bool = False,
) -> tuple[dict[str, float], dict[str, float]]:
    """Both gateways loaded at once for ``seconds``: each one's req/s and CPU microseconds per request.
    ``reverse``: the second gateway's load is started first (the rounds alternate, so that whatever the
    first one started gains falls on both alike)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % json.dumps(body))
    before = {k: cpu_seconds(gw.pid) for k, gw in gateways.items()}
    wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c8", f"-d{seconds}s", "-s", f.name]
    path = "/v1/chat/completions"
    order = list(ports.items())[:: -1 if reverse else 1]
    runs = {
        k: subprocess.Popen([*wrk, f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE, text=True)
        for k, port in order
    }
    out = {k: run.communicate()[0] for k, run in runs.items()}
    os.unlink(f.name)
    rate = {k: float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)) for k, o in out.items()}  # type: ignore[union-attr]
    used = {k: (cpu_seconds(gateways[k].pid) - before[k]) / (rate[k] * seconds) * 1e6 for k in gateways}
    return rate, used


def llama_server_rows(rounds: int = 1, isolated: bool = False) -> list[tuple[str, str, str, str]]:
    """A real llama-server, -np 4, at concurrency 1, 4, 16, warmed up. Direct and gateway batches alternate
    one by one (which goes first alternates too), so that the machine's drift, which is larger than the
    effect measured here, falls on both sides alike.

    ``isolated``: llama-server gets core 1 to itself (one thread), the gateway and the bench's client share
    core 0, as on a GPU host where the engine does not compete with the proxy for CPU. Otherwise llama-server
    computes on both cores (two threads) and every byte the gateway forwards preempts one of its threads."""
    server = built_binary("llama-server")
    if server is None:
        print("llama-server is not built (llm-gateway build-llama-server): skipping its rows")
        return []
    engine_cores, threads = ("1", "1") if isolated else ("0,1", "2")
    if isolated:
        os.sched_setaffinity(0, {0})
    setup = "engine on core 1" if isolated else "shared cores"
    rows = []
    direct = spawn(
        [str(server), "-m", str(MODEL), "--port", "18943", "-c", "8192", "-np", "4", "-t", threads],
        engine_cores,
    )
    wait_http("http://127.0.0.1:18943/health")
    gw = remote_gateway("http://127.0.0.1:18943", 4, 18944)
    bases = ("http://127.0.0.1:18943", "http://127.0.0.1:18944")
    try:
        for base in bases:
            stream_stats(base, "m", 4, 8)  # warm-up: prompt cache, page cache, connections
        for conc, batches in ((1, 24), (4, 8), (16, 5)):
            tps: dict[str, list[float]] = {b: [] for b in bases}
            ttft: dict[str, list[float]] = {b: [] for b in bases}
            for i in range(batches * rounds):
                for base in bases if i % 2 == 0 else bases[::-1]:
                    rate, firsts = stream_stats(base, "m", conc, conc)
                    tps[base].append(rate)
                    ttft[base] += firsts
            d, g = (sum(tps[b]) / len(tps[b]) for b in bases)
            (dp50, dp99), (gp50, gp99) = ((pct(ttft[b], 0.5), pct(ttft[b], 0.99)) for b in bases)
            rows += [
                (f"llama-server, {setup}, c={conc}: tok/s", f"{d:.1f}", f"{g:.1f} ({g / d:.2f}x)", ">=0.97x"),
                (
                    f"llama-server, {setup}, c={conc}: TTFT p50 / p99 ms ({len(ttft[bases[0]])} each)",
                    f"{dp50:.1f} / {dp99:.1f}",
                    f"{gp50:.1f} / {gp99:.1f} ({gp50 - dp50:+.1f} / {gp99 - dp99:+.1f})",
                    "added <= 2 / 10 ms",
                ),
            ]
    finally:
        gw.terminate()
        direct.terminate()
    return rows


FLAGS = {"--overhead-only", "--llama-server-only", "--engine-core", "--replicas-only", "--metrics-only",
         "--tail-only", "--verbose", "--rounds", "--control"}  # fmt: skip


def main() -> None:
    args = sys.argv[1:]
    unknown = [a for i, a in enumerate(args) if a not in FLAGS and not (i and args[i - 1] == "--rounds")]
    if unknown:  # --help included: print the usage rather than run the whole default bench
        sys.exit(f"{__doc__}\nunknown: {' '.join(unknown)}")
    if sys.argv[1:] == ["--replicas-only"]:
        print_table(
            ("measure", "one replica (2 threads)", "two replicas (1 thread each)", "target"), replicas_rows()
        )
        return
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else None
    if "--tail-only" in sys.argv:
        print_table(("measure", "req/s", "p50 / p99 ms", "target"), tail_rows(rounds or 3))
        return
    if "--metrics-only" in sys.argv:
        on = "metrics off too (control)" if "--control" in sys.argv else "metrics on"
        rows = metrics_rows(rounds or 5, control="--control" in sys.argv)
        print_table(("measure", "metrics off", on, "target"), rows)
        return
    rows = [] if "--llama-server-only" in sys.argv else overhead_rows(rounds or 3)
    if "--overhead-only" not in sys.argv:
        rows += llama_server_rows(rounds or 1, isolated="--engine-core" in sys.argv)
    print_table(("measure", "direct", "through the gateway", "target"), rows)


if __name__ == "__main__":
    main()
