"""A clean shutdown: loads under way are cancelled (what they had started is stopped), every model drains at
once, the streams still running end, and nothing is left running."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import httpx

from gateway.config.settings import Settings
from gateway.scheduling.lifecycle import State
from tests.conftest import (
    EOS,
    RunningGateway,
    free_port,
    llama_manifest,
    process_gone,
    wait_for,
    write_manifests,
)
from tests.test_llama_server import server_manifest


def test_shutdown_cancels_loads_and_drains_every_model(model_files: dict[str, Path], tmp_path: Path) -> None:
    slow = tmp_path / "slow-llama-server"  # a load that would take ten minutes
    pidfile = tmp_path / "pid"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    manifests = [
        server_manifest("slow", model_files["a"], binary=str(slow), load_timeout=600),
        llama_manifest("a", model_files["a"], backend={"n_ctx": 65536}),
        llama_manifest("b", model_files["b"], backend={"n_ctx": 65536}),
    ]
    directory = write_manifests(tmp_path / "m", manifests)
    gw = RunningGateway(Settings(manifests=directory, port=free_port(), drain_grace=0.5))
    gw.server.config.timeout_graceful_shutdown = 0.5  # uvicorn's wait for open connections (cli sets it)
    gw.__enter__()
    ended: list[str] = []

    def stream(model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True,
                "max_tokens": 100_000, "logit_bias": {EOS: -100}}  # fmt: skip
        try:
            with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=120) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the connection closed under it: also an end
        ended.append(model)

    streams = [threading.Thread(target=stream, args=(m,)) for m in "ab"]
    for s in streams:
        s.start()
    threading.Thread(
        target=lambda: httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
            timeout=120,
        ),
        daemon=True,
    ).start()
    wait_for(lambda: pidfile.exists(), "the slow load to start")
    wait_for(lambda: gw.model_state("a")["in_flight"] and gw.model_state("b")["in_flight"], "two streams")

    gw.__exit__()
    assert not gw.thread.is_alive(), "the gateway finished shutting down"
    for s in streams:
        s.join(60)
    assert sorted(ended) == ["a", "b"]
    wait_for(lambda: process_gone(int(pidfile.read_text())), "the half-started llama-server to be stopped")
    assert {s.name: s.state for s in gw.gateway.scheduler.slots.values()} == dict.fromkeys(
        ["slow", "a", "b"], State.UNLOADED
    )
