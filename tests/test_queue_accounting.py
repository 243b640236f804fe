"""``max_queue`` counts every request that waits for a model: for its load as much as for a free replica."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import RunningGateway, wait_for
from tests.test_llama_server import server_manifest


def test_requests_waiting_for_a_load_take_queue_places(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path], tmp_path: Path
) -> None:
    slow = tmp_path / "slow-llama-server"  # loads for as long as the test wants: it never becomes healthy
    slow.write_text("#!/bin/sh\nexec sleep 600\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    gw = serve(
        [{**server_manifest("m", model_files["a"], binary=str(slow), load_timeout=600), "max_queue": 2}]
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    statuses: list[int] = []

    def ask() -> None:
        statuses.append(httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, timeout=120).status_code)

    waiters = [threading.Thread(target=ask) for _ in range(2)]
    for w in waiters:
        w.start()
    wait_for(lambda: gw.model_state("m")["queued"] == 2, "two requests to wait for the load")
    refused = httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, timeout=30)
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "queue_full"
    metrics = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    assert 'vllm:num_requests_waiting{model_name="m",engine="gateway"} 2.0' in metrics
    assert httpx.post(f"{gw.base_url}/admin/models/m/unload", timeout=60).status_code == 200  # cancels it
    for w in waiters:
        w.join(60)
    assert statuses == [503, 503]  # told the load was cancelled, not left waiting
    assert gw.model_state("m")["queued"] == 0
