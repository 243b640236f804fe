"""Priorities in swap decisions, over real sockets: two SmolLM2 models under a budget that holds one, a batch
flood (``X-Priority: batch``) keeping one busy, and an interactive request for the other. The interactive
request's model is loaded at once (the batch model is drained), not after ``max_swap_wait``: that is set
far past the load timeout, so without the requests' classes reaching admission the interactive request gets
a 503. The flood's requests are all answered afterwards (the batch model's turn comes back)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

from backends.gguf.memory import MiB
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest, wait_for

LOAD_TIMEOUT = 30.0  # far under max_swap_wait: an interactive request held up by the flood gets a 503
FLOOD_CLIENTS = 2


def _ask(http: httpx.Client, model: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    return http.post("/v1/chat/completions", json=body, headers=headers)


def test_an_interactive_request_does_not_wait_for_a_batch_flood(
    serve: Callable[..., RunningGateway],
) -> None:
    gw = serve(
        [llama_manifest(m, SMOLLM2, memory=f"{100 * MiB}", backend={"n_threads": 1}) for m in "ab"],
        memory_budget=150 * MiB,
        max_swap_wait=60.0,
        load_timeout=LOAD_TIMEOUT,
        drain_grace=60.0,
    )
    stop = threading.Event()
    flood: list[httpx.Response] = []
    lock = threading.Lock()

    def flood_client() -> None:
        with httpx.Client(base_url=gw.base_url, timeout=300) as http:
            while not stop.is_set():
                r = _ask(http, "a", {"x-priority": "batch"})
                with lock:
                    flood.append(r)

    threads = [threading.Thread(target=flood_client) for _ in range(FLOOD_CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(flood) >= 2 * FLOOD_CLIENTS, "the flood to be served", deadline=120)
        with httpx.Client(base_url=gw.base_url, timeout=300) as http:
            interactive = _ask(http, "b", {})
        assert interactive.status_code == 200, interactive.text
        served_before = len(flood)
        # the batch model's turn comes back: its clients, which waited while b served, are answered again
        wait_for(lambda: len(flood) >= served_before + 2 * FLOOD_CLIENTS, "the flood to go on", deadline=120)
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    assert [r.status_code for r in flood if r.status_code != 200] == [], [r.text for r in flood][:3]
    loads = {m["name"]: m["loads"] for m in gw.admin()["models"]}
    assert loads["b"] == 1 and loads["a"] >= 2, loads  # a was swapped out for b, and back in
