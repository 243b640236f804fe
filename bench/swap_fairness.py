"""Clients of models that do not fit together: does every model answer, and how often does each reload?

Three in-process SmolLM2 models (2k context, 233 MiB each by the estimate) under a 400 MiB budget: each fits
alone, no two fit together. Two closed-loop clients per model send short chat requests (8 tokens) for
``--seconds``; each request has a 60 s timeout. The table gives, per model: answers, errors, the longest wait
of one request, and how many times the gateway loaded it (``/admin/models``).

    python bench/swap_fairness.py [--seconds 60] [--root DIR ...]

``--root`` runs the same workload against another checkout of the gateway (e.g. a ``git worktree`` of an
older commit), one after the other, on the same machine: the first row block is this checkout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = ("m1", "m2", "m3")
CLIENTS = 2
LOG_LEVEL = "warning"


@dataclass
class Tally:
    answers: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    longest: float = 0.0


def write_manifests(directory: Path) -> None:
    for name in MODELS:
        manifest = {
            "name": name,
            "backend": {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 2048, "n_threads": 1},
        }
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(manifest))


def serve(
    root: Path, manifests: Path, port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(manifests), "--port", str(port),
         "--memory-budget", "400MiB", "--log-level", LOG_LEVEL],
        cwd=root, env={**os.environ, **(env or {})},
    )  # fmt: skip
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the gateway did not come up")


def client(base: str, model: str, until: float, tally: Tally, lock: threading.Lock) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < until:
            began = time.monotonic()
            try:
                status = http.post(f"{base}/v1/chat/completions", json=body).status_code
                outcome = "ok" if status == 200 else str(status)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            waited = time.monotonic() - began
            with lock:
                tally.longest = max(tally.longest, waited)
                if outcome == "ok":
                    tally.answers += 1
                else:
                    tally.errors[outcome] = tally.errors.get(outcome, 0) + 1
                    time.sleep(0.2)  # an error is answered at once: do not spin on it


def run(root: Path, seconds: float, port: int, env: dict[str, str] | None = None) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        write_manifests(Path(tmp))
        proc = serve(root, Path(tmp), port, env)
        base = f"http://127.0.0.1:{port}"
        try:
            tallies = {m: Tally() for m in MODELS}
            lock = threading.Lock()
            until = time.monotonic() + seconds
            threads = [
                threading.Thread(target=client, args=(base, m, until, tallies[m], lock))
                for m in MODELS
                for _ in range(CLIENTS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            models = {m["name"]: m for m in httpx.get(f"{base}/admin/models", timeout=30).json()["models"]}
        finally:
            proc.terminate()
            proc.wait(30)
    rows = []
    for m in MODELS:
        t = tallies[m]
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(t.errors.items())) or "0"
        rows.append([str(root), m, str(t.answers), errors, f"{t.longest:.1f}", str(models[m]["loads"])])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--root", type=Path, action="append", default=[])
    args = parser.parse_args()
    rows = []
    for i, root in enumerate([ROOT, *args.root]):
        rows += run(root.resolve(), args.seconds, 18990 + i)
    print(f"{len(MODELS)} SmolLM2 models, 400 MiB budget, {CLIENTS} clients each, {args.seconds:g}s")
    print_table(["checkout", "model", "answers", "errors", "longest wait s", "loads"], rows)


if __name__ == "__main__":
    main()
