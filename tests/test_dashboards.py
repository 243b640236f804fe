"""A real Prometheus scrapes a running gateway while real traffic, streamed and not, goes to two real models
through the official SDK; then every query of every panel of both dashboards (vLLM's, unchanged, and ours),
with its variables substituted, must return data through Prometheus's query API."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SMOLLM2, RunningGateway, llama_manifest
from tests.prom import dashboard_exprs, running_prometheus
from tests.test_llama_server import server_manifest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "grafana" / "dashboards"
PROMPT = [{"role": "user", "content": "Write a long story about a cat."}]


def traffic(gw: RunningGateway, model: str, stop: threading.Event) -> None:
    client = gw.client()
    while not stop.is_set():
        client.chat.completions.create(model=model, messages=PROMPT, max_tokens=6)
        for _ in client.chat.completions.create(model=model, messages=PROMPT, max_tokens=24, stream=True):
            pass


def test_every_dashboard_query_returns_data(serve: Callable[..., RunningGateway], tmp_path: Path) -> None:
    assert SMOLLM2.is_file(), "run `llm-gateway fetch-model` first (README's commands do)"
    gw = serve(
        [
            llama_manifest("inproc", SMOLLM2, backend={"n_ctx": 1024}),
            server_manifest("server", SMOLLM2, n_ctx=1024, parallel=2),
        ],
        engine_scrape_interval=0.2,
    )
    host_port = gw.base_url.removeprefix("http://")
    stop = threading.Event()
    workers = [threading.Thread(target=traffic, args=(gw, m, stop)) for m in ("inproc", "server")]
    with running_prometheus(host_port, tmp_path) as prom:
        for w in workers:
            w.start()
        try:
            # A rate needs two scrapes of its series, and a series may first appear with the first request
            # that finishes: each query is polled until it has data, within one deadline for all of them.
            deadline = time.monotonic() + 120
            empty = []
            for model in ("inproc", "server"):
                for name in ("vllm.json", "gateway.json"):
                    for title, expr in dashboard_exprs(DASHBOARDS / name, {"model_name": model}):
                        while not prom.query(expr) and time.monotonic() < deadline:
                            time.sleep(0.5)
                        if not prom.query(expr):
                            empty.append(f"{name} [{model}] {title}: {expr}")
        finally:
            stop.set()
            for w in workers:
                w.join(60)
    assert not empty, "queries without data:\n" + "\n".join(empty)
