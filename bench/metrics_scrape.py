"""How long one scrape of ``/metrics`` takes with 50 declared models, all with traffic, and how many series
it holds; beside it, the same series written by prometheus-client's own ``generate_latest``, the peer this
gateway's writer replaced (gateway/observability/exposition.py says why).

A real gateway (one core) serves 50 ``remote`` models on a fake upstream; every model gets streamed and
non-streamed requests, so that every histogram of every model has observations; then ``GET /metrics`` is
timed over real HTTP. Target: at most 50 ms per scrape, series bounded.

    python bench/metrics_scrape.py [--models N] [--scrapes N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_overhead import median, spawn, wait_http  # noqa: E402


def arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def run_gateway(models: int) -> tuple[float, float, int, bytes]:
    """Median and worst ``GET /metrics`` time (ms) through a real gateway, its series, and the text."""
    upstream = spawn([sys.executable, "tests/fake_upstream.py", "--port", "18971", "--chunks", "8"], "1")
    wait_http("http://127.0.0.1:18971/health")
    d = Path(tempfile.mkdtemp())
    for i in range(models):
        endpoint = {"url": "http://127.0.0.1:18971", "max_concurrency": 64}
        manifest = {"name": f"model-{i:02d}", "backend": {"kind": "remote", "endpoints": [endpoint]}}
        (d / f"m{i}.yaml").write_text(yaml.safe_dump(manifest))
    gw = spawn(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d), "--port", "18972",
         "--log-level", "warning"],
        "0",
    )  # fmt: skip
    try:
        wait_http("http://127.0.0.1:18972/health")
        with httpx.Client(base_url="http://127.0.0.1:18972", timeout=30) as client:
            for i in range(models):
                body = {"model": f"model-{i:02d}", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 16}  # fmt: skip
                for stream in (False, True, False, True):
                    answer = client.post("/v1/chat/completions", json={**body, "stream": stream})
                    assert answer.status_code == 200
            times = []
            text = b""
            for _ in range(arg("--scrapes", 30)):
                start = time.perf_counter()
                text = client.get("/metrics").content
                times.append((time.perf_counter() - start) * 1000)
    finally:
        gw.terminate()
        upstream.terminate()
    series = sum(len(f.samples) for f in text_string_to_metric_families(text.decode()))
    return median(times), max(times), series, text


def run_prometheus_client(text: bytes) -> float:
    """The same families and label sets, in prometheus-client's own registry: ``generate_latest`` (ms)."""
    registry = CollectorRegistry()
    made: dict[str, object] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            key = family.name
            if key not in made:
                names = sorted(labels)
                if family.type == "histogram":
                    bounds = sorted({float(s.labels["le"]) for s in family.samples if "le" in s.labels})
                    made[key] = Histogram(key, family.documentation, names, buckets=bounds, registry=registry)
                elif family.type == "counter":
                    made[key] = Counter(key, family.documentation, names, registry=registry)
                else:
                    made[key] = Gauge(key, family.documentation, names, registry=registry)
            metric = made[key]
            child = metric.labels(**labels) if labels else metric  # type: ignore[attr-defined]
            if family.type == "histogram" and sample.name.endswith("_sum"):
                child.observe(sample.value)
            elif family.type == "counter":
                child.inc(sample.value)
            elif family.type == "gauge":
                child.set(sample.value)
    times = []
    for _ in range(arg("--scrapes", 30)):
        start = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def main() -> None:
    models = arg("--models", 50)
    p50, worst, series, text = run_gateway(models)
    peer = run_prometheus_client(text)
    size = f"{len(text) / 1024:.0f} KiB"
    rows = [
        (
            f"GET /metrics, {models} models with traffic: median / worst ms",
            f"{p50:.1f} / {worst:.1f}",
            "<= 50",
        ),
        (f"series in one scrape ({size})", f"{series} ({series / models:.0f} per model)", "bounded"),
        ("prometheus-client generate_latest, same series, in process: median ms", f"{peer:.1f}", "peer"),
    ]
    print_table(("measure", "value", "target"), rows)


if __name__ == "__main__":
    main()
