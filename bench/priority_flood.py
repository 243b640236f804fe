"""An interactive client beside a batch flood on the same model: its latency with and without the flood, and
with the flood not marked batch (first come, first served among equals), side by side in one run (issue 18).

One in-process SmolLM2 model (one slot). The interactive client sends ``--requests`` short chat requests
(16 tokens) one after another; the flood is ``--flood`` closed-loop clients sending the same requests, with
``X-Priority: batch`` or without it. Every case runs against a fresh gateway (``llm-gateway serve``). Target:
the interactive p99 with a batch flood at most 1.5x its p99 without the flood.

    python bench/priority_flood.py [--requests 40] [--flood 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script
from swap_fairness import MODEL, ROOT, serve

BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}


def interactive(base: str, requests: int) -> list[float]:
    took = []
    with httpx.Client(base_url=base, timeout=300) as http:
        for _ in range(requests):
            began = time.monotonic()
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
            took.append(time.monotonic() - began)
    return took


def flood(base: str, headers: dict[str, str], stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=300) as http:
        while not stop.is_set():
            http.post("/v1/chat/completions", json=BODY, headers=headers)


def run(case: str, flooders: int, headers: dict[str, str], requests: int, port: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = {"name": "m", "backend": {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 1024}}
        (Path(tmp) / "m.yaml").write_text(yaml.safe_dump(manifest))
        proc = serve(ROOT, Path(tmp), port)
        base = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        try:
            httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=300)  # loaded
            threads = [threading.Thread(target=flood, args=(base, headers, stop)) for _ in range(flooders)]
            for t in threads:
                t.start()
            time.sleep(1.0 if flooders else 0)  # the flood's queue has formed
            took = interactive(base, requests)
            stop.set()
            for t in threads:
                t.join(300)
        finally:
            proc.terminate()
            proc.wait(30)
    took.sort()
    p99 = took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
    return [case, f"{statistics.median(took):.3f}", f"{p99:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--flood", type=int, default=4)
    args = parser.parse_args()
    rows = [
        run("no flood", 0, {}, args.requests, 18970),
        run(f"{args.flood} batch clients (X-Priority: batch)", args.flood, {"x-priority": "batch"},
            args.requests, 18971),
        run(f"{args.flood} clients not marked batch", args.flood, {}, args.requests, 18972),
    ]  # fmt: skip
    base = float(rows[0][2])
    for row in rows:
        row.append(f"{float(row[2]) / base:.2f}x")
    print(f"one in-process SmolLM2 (one slot), {args.requests} interactive requests of 16 tokens")
    print_table(["case", "interactive p50 s", "interactive p99 s", "p99 x no flood"], rows)


if __name__ == "__main__":
    main()
