"""The admin API under load, and a reload that changes nothing (issue 10's targets).

1. A gateway (one core) serves 20 ``remote`` models on a fake upstream whose streams send 64 chunks 20 ms
   apart. Admin calls (list, one model, plan, devices, pin) are timed alone, then while 16 streams run
   through the gateway. Target: median <= 20 ms with the streams.
2. 100 manifests, every model loaded (one request each), then ``POST /admin/reload`` with nothing changed:
   how long it takes, and whether any model was touched (its load count, state and replicas' served count
   as before). Target: no backend touched.

    python bench/admin_latency.py [--calls N]
"""

from __future__ import annotations

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

from bench.proxy_overhead import median, pct, spawn, wait_http  # noqa: E402

UPSTREAM = "http://127.0.0.1:18981"


def arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def gateway(models: int, port: int) -> tuple[object, str]:
    d = Path(tempfile.mkdtemp())
    for i in range(models):
        manifest = {"name": f"m{i:03d}", "backend": {"kind": "remote", "endpoints": [{"url": UPSTREAM}]}}
        (d / f"m{i:03d}.yaml").write_text(yaml.safe_dump(manifest))
    proc = spawn(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(d), "--port", str(port),
         "--log-level", "warning"],
        "0",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health")
    return proc, base


CALLS = [
    ("GET", "/admin/models"),
    ("GET", "/admin/models/m001"),
    ("GET", "/admin/models/m002/plan"),
    ("GET", "/admin/devices"),
    ("POST", "/admin/models/m003/pin"),
]


def time_calls(client: httpx.Client, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {path: [] for _, path in CALLS}
    for _ in range(n):
        for method, path in CALLS:
            start = time.perf_counter()
            assert client.request(method, path).status_code == 200
            out[path].append(time.perf_counter() - start)
    return out


def streams(base: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    body = {"model": "m000", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    def run() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    for _ in r.iter_bytes():
                        pass

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def admin_rows(calls: int) -> list[tuple[str, str, str, str]]:
    proc, base = gateway(20, 18982)
    stop = threading.Event()
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            client.post("/v1/chat/completions", json={"model": "m000", "messages": []})
            quiet = time_calls(client, calls)
            threads = streams(base, 16, stop)
            time.sleep(1)  # let the streams get going
            busy = time_calls(client, calls)
    finally:
        stop.set()
        proc.terminate()  # type: ignore[attr-defined]
    rows = []
    for method, path in CALLS:
        q, b = quiet[path], busy[path]
        rows.append(
            (
                f"{method} {path}: median / p99 ms",
                f"{median(q) * 1000:.2f} / {pct(q, 0.99):.2f}",
                f"{median(b) * 1000:.2f} / {pct(b, 0.99):.2f}",
                "median <= 20 ms",
            )
        )
    for t in threads:
        t.join(5)
    return rows


def reload_rows() -> list[tuple[str, str, str, str]]:
    proc, base = gateway(100, 18983)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(100):
                answer = client.post(
                    "/v1/chat/completions",
                    json={"model": f"m{i:03d}", "messages": [{"role": "user", "content": "x"}]},
                )
                assert answer.status_code == 200
            before = client.get("/admin/models").json()["models"]
            start = time.perf_counter()
            result = client.post("/admin/reload").json()
            took = (time.perf_counter() - start) * 1000
            after = client.get("/admin/models").json()["models"]
    finally:
        proc.terminate()  # type: ignore[attr-defined]

    def seen(models: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(m["name"], m["state"], m["loads"], str(m["replicas"])) for m in models]

    touched = sum(1 for a, b in zip(seen(before), seen(after), strict=True) if a != b)
    return [
        ("reload, 100 unchanged manifests: ms", "", f"{took:.0f}", "report"),
        (
            "reload, 100 unchanged: models touched (state, loads, replicas)",
            "",
            f"{touched} of 100 (unchanged: {result['unchanged']})",
            "0",
        ),
    ]


def main() -> None:
    upstream = spawn(
        [sys.executable, "tests/fake_upstream.py", "--port", "18981", "--chunk-delay", "0.02"], "1"
    )
    try:
        wait_http(f"{UPSTREAM}/health")
        rows = admin_rows(arg("--calls", 100)) + reload_rows()
    finally:
        upstream.terminate()
    print_table(("measure", "idle", "16 streams running", "target"), rows)


if __name__ == "__main__":
    main()
