"""Clients of models that do not fit together, all at once: every model answers.

Three models, a budget that holds one, two closed-loop clients per model. Each client keeps asking until every
model has answered a few times. Before memory freed for a load was kept for it (and loads that must evict
took turns in the order they were asked for), one model's clients took the memory back every time and the
others never loaded: this test then ran into its bound with two models unanswered (measured with
SmolLM2: 206 reloads of one model in 60 s, 2 answers each for the others; ``bench/swap_fairness.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from backends.gguf.memory import MiB
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest

ANSWERS_EACH = 3
BOUND = 120.0  # bounds a livelock; a fair scheduler is done in a few seconds


def test_every_model_answers_when_they_do_not_fit_together(serve: Callable[..., RunningGateway]) -> None:
    # The real model: its load and unload take long enough (a few tenths of a second) for an evicted model's
    # next request to arrive while another model waits for the memory, as it happens in production.
    models = "abc"
    gw = serve(
        [llama_manifest(m, SMOLLM2, memory=f"{100 * MiB}", backend={"n_threads": 1}) for m in models],
        memory_budget=150 * MiB,
        load_timeout=BOUND,
    )
    answered = dict.fromkeys(models, 0)
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + BOUND

    def done() -> bool:
        with lock:
            return min(answered.values()) >= ANSWERS_EACH or time.monotonic() > end

    def client(model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        with httpx.Client(base_url=gw.base_url, timeout=BOUND) as http:
            while not done():
                r = http.post("/v1/chat/completions", json=body)
                with lock:
                    if r.status_code == 200:
                        answered[model] += 1
                    else:
                        errors.append(f"{model}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(m,)) for m in models for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert min(answered.values()) >= ANSWERS_EACH, answered
    loads = {m["name"]: m["loads"] for m in gw.admin()["models"]}
    assert all(n >= 1 for n in loads.values()), loads
