"""An interactive client beside a batch flood on the same model: its latency with and without the flood, and
with the flood not marked batch (first come, first served among equals), side by side in one run (issue 18).

Two configurations of one in-process SmolLM2 model, each compared with itself, engine instances of one
thread each: one slot (``parallel: 1``), and two slots (``parallel: 2``: two engine instances), where
the gateway keeps one slot for interactive requests (``interactive_reserve``, default 1) and, as a
reference, the same two slots with ``interactive_reserve: 0``. The interactive client sends ``--requests``
short chat requests (16 tokens) one after another; the flood is ``--flood`` closed-loop clients sending the
same requests, with ``X-Priority: batch`` or without it. Every case runs against a fresh gateway
(``llm-gateway serve``). Target: the interactive p99 with a batch flood at most 1.5x its p99 without the
flood, on the same configuration. With one slot nothing is kept back (it would shut batch work out), so
there an interactive request waits for the batch request in service: only preemption could meet it.

    python bench/priority_flood.py [--requests 40] [--flood 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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


def run(
    config: dict[str, Any], case: str, flooders: int, headers: dict[str, str], requests: int, port: int
) -> list[str]:
    """``config``: the manifest's ``backend`` fields beyond the model, and ``interactive_reserve``."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 1024, **config["backend"]}
        manifest = {"name": "m", "backend": backend, "interactive_reserve": config["reserve"]}
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
    return [config["label"], case, f"{statistics.median(took):.3f}", f"{p99:.3f}"]


CONFIGS: list[dict[str, Any]] = [
    {"label": "1 slot", "backend": {"parallel": 1, "n_threads": 1}, "reserve": None},
    {"label": "2 slots, 1 kept for interactive", "backend": {"parallel": 2, "n_threads": 1}, "reserve": None},
    {"label": "2 slots, none kept", "backend": {"parallel": 2, "n_threads": 1}, "reserve": 0},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--flood", type=int, default=4)
    args = parser.parse_args()
    batch, n = {"x-priority": "batch"}, args.flood
    rows = []
    port = 18970
    for config in CONFIGS:
        cases = [("no flood", 0, {}), (f"{n} batch clients (X-Priority: batch)", n, batch)]
        if config["reserve"] is None:
            cases.append((f"{n} clients not marked batch", n, {}))
        block = []
        for case, flooders, headers in cases:
            block.append(run(config, case, flooders, headers, args.requests, port))
            port += 1
        base = float(block[0][3])  # the same configuration without the flood
        rows += [[*row, f"{float(row[3]) / base:.2f}x"] for row in block]
    print(f"one in-process SmolLM2, {args.requests} interactive requests of 16 tokens, {n} flood clients")
    print_table(["model", "case", "interactive p50 s", "interactive p99 s", "p99 x no flood"], rows)


if __name__ == "__main__":
    main()
