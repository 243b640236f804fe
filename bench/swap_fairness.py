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
import contextlib
import json
import os
import re
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
    longest: float = 0.0  # the longest request, whole
    first: float = 0.0  # the longest time to a streamed request's first token (its admission, load, prefill)


def write_manifests(directory: Path) -> None:
    for name in MODELS:
        manifest = {
            "name": name,
            "backend": {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 2048, "n_threads": 1},
        }
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(manifest))


def serve(
    root: Path, manifests: Path, port: int, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``llm-gateway serve`` on ``port``, once its /health answers; its log to ``log`` if given."""
    with contextlib.ExitStack() as files:  # the child keeps its own copy of the log's descriptor
        stderr = None if log is None else files.enter_context(log.open("wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(manifests), "--port", str(port),
             "--memory-budget", "400MiB", "--log-level", LOG_LEVEL],
            cwd=root, env={**os.environ, **(env or {})}, stderr=stderr,
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


def first_token(response: httpx.Response, began: float) -> float:
    """Read a streamed chat completion to its end; the seconds from ``began`` to its first token (the first
    event with content or a finish reason: the SSE comments sent while the request waits do not count)."""
    first = None
    for line in response.iter_lines():
        if first is None and line.startswith("data: {"):
            choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content") or choices[0].get("finish_reason"):
                first = time.monotonic() - began
    return first if first is not None else time.monotonic() - began


def client(
    base: str, model: str, until: float, tally: Tally, lock: threading.Lock, stream: bool = False
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    if stream:
        body["stream"] = True
    with httpx.Client(timeout=60) as http:
        while time.monotonic() < until:
            began = time.monotonic()
            first = 0.0
            try:
                with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                    if response.status_code == 200 and stream:
                        first = first_token(response, began)
                    else:
                        response.read()
                outcome = "ok" if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            waited = time.monotonic() - began
            with lock:
                tally.longest = max(tally.longest, waited)
                tally.first = max(tally.first, first)
                if outcome == "ok":
                    tally.answers += 1
                else:
                    tally.errors[outcome] = tally.errors.get(outcome, 0) + 1
                    time.sleep(0.2)  # an error is answered at once: do not spin on it


def run(
    root: Path, seconds: float, port: int, env: dict[str, str] | None = None, stream: bool = False
) -> list[list[str]]:
    """Per model: the checkout, model, answers, errors, longest request s, loads; with ``stream``, also the
    longest time to a first token s, the gateway's count of waits for the model itself past swap-aware
    admission's bound (``gateway_model_wait_past_bound_total``: its ``max_swap_wait`` plus its load), and
    its last load's seconds. The gateway's log goes to a file in the run's folder."""
    with tempfile.TemporaryDirectory() as tmp:
        write_manifests(Path(tmp))
        log = Path(tmp) / "gateway.log"
        proc = serve(root, Path(tmp), port, env, log)
        base = f"http://127.0.0.1:{port}"
        try:
            tallies = {m: Tally() for m in MODELS}
            lock = threading.Lock()
            until = time.monotonic() + seconds
            threads = [
                threading.Thread(target=client, args=(base, m, until, tallies[m], lock, stream))
                for m in MODELS
                for _ in range(CLIENTS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            models = {m["name"]: m for m in httpx.get(f"{base}/admin/models", timeout=30).json()["models"]}
            metrics = httpx.get(f"{base}/metrics", timeout=30).text
        finally:
            proc.terminate()
            proc.wait(30)
        for line in log.read_text(errors="replace").splitlines():
            if "past its max_swap_wait" in line:  # the gateway's own numbers of a wait past the bound
                print(line)
    rows = []
    for m in MODELS:
        t = tallies[m]
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(t.errors.items())) or "0"
        row = [str(root), m, str(t.answers), errors, f"{t.longest:.1f}", str(models[m]["loads"])]
        if stream:
            series = f'gateway_model_wait_past_bound_total{{model_name="{m}"}}'
            past = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
            count = str(round(float(past.group(1)))) if past else "0"
            row += [f"{t.first:.1f}", count, str(models[m]["load_seconds"])]
        rows.append(row)
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
