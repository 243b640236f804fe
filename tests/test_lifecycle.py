"""Lazy loads, shared loads, eviction, pinning, TTL, failures and disconnects, end to end over real sockets
with real llama.cpp engines (synthetic models). Memory overrides make the budget arithmetic exact."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import EOS, RunningGateway, llama_manifest, wait_for

MiB = 2**20


def chat(gw: RunningGateway, model: str, max_tokens: int = 2) -> str | None:
    r = gw.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )
    return r.choices[0].message.content


# A stream that runs to the end of a 64k context: far longer than any of these tests takes.
LONG_STREAM = {
    "model": "a",
    "messages": [{"role": "user", "content": "x"}],
    "stream": True,
    "max_tokens": 100_000,
    "logit_bias": {EOS: -100},
}


def states(gw: RunningGateway) -> dict[str, str]:
    return {m["name"]: m["state"] for m in gw.admin()["models"]}


def test_first_request_loads_lazily(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"])])
    assert states(gw) == {"a": "unloaded"}
    assert chat(gw, "a")
    assert states(gw) == {"a": "ready"}


def test_concurrent_first_requests_share_one_load(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"], backend={"parallel": 2})])
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(chat(gw, "a"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(results)
    assert gw.model_state("a")["loads"] == 1


def test_lru_idle_model_is_evicted_first(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve(
        [llama_manifest(n, model_files[n], memory=f"{100 * MiB}") for n in "abc"],
        memory_budget=250 * MiB,
    )
    chat(gw, "a")
    chat(gw, "b")
    chat(gw, "a")  # a is now more recently used than b
    chat(gw, "c")
    assert states(gw) == {"a": "ready", "b": "unloaded", "c": "ready"}
    admin = gw.admin()
    assert admin["memory_used_bytes"] == 200 * MiB <= admin["memory_budget_bytes"]


def test_pinned_model_loads_at_startup_and_survives(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve(
        [
            llama_manifest("a", model_files["a"], memory=f"{100 * MiB}", pinned=True),
            *(llama_manifest(n, model_files[n], memory=f"{100 * MiB}") for n in "bc"),
        ],
        memory_budget=250 * MiB,
    )
    wait_for(lambda: states(gw)["a"] == "ready", "pinned model to load at startup")
    chat(gw, "b")
    chat(gw, "c")
    chat(gw, "b")
    assert states(gw)["a"] == "ready"
    assert gw.model_state("a")["loads"] == 1


def test_model_that_cannot_fit_is_503_naming_what_holds_memory(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve(
        [
            llama_manifest("a", model_files["a"], memory=f"{200 * MiB}", pinned=True),
            llama_manifest("b", model_files["b"], memory=f"{100 * MiB}"),
        ],
        memory_budget=250 * MiB,
    )
    wait_for(lambda: states(gw)["a"] == "ready", "pinned model to load")
    r = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        timeout=30,
        json={"model": "b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 503 and "retry-after" in r.headers
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory" and "a 200 MiB (pinned)" in err["message"]


def test_idle_ttl_unloads(serve: Callable[..., RunningGateway], model_files: dict[str, Path]) -> None:
    gw = serve(
        [llama_manifest("a", model_files["a"], idle_ttl="300ms"), llama_manifest("b", model_files["b"])]
    )
    chat(gw, "a")
    chat(gw, "b")
    wait_for(lambda: states(gw)["a"] == "unloaded", "TTL unload")
    assert states(gw)["b"] == "ready"  # no TTL: stays


def test_corrupt_model_is_503_while_others_serve(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve(
        [llama_manifest("bad", model_files["corrupt"]), llama_manifest("good", model_files["a"])],
        load_failure_backoff=30,
    )
    r = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        timeout=30,
        json={"model": "bad", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "model_load_failed"
    assert chat(gw, "good")
    bad = gw.model_state("bad")
    assert bad["state"] == "unloaded" and bad["last_error"]
    # During the backoff, requests are answered at once with the same error, without another load.
    with pytest.raises(openai.InternalServerError):
        chat(gw, "bad")
    assert gw.model_state("bad")["loads"] == 1


def test_bad_manifest_is_reported_and_good_ones_serve(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    broken = llama_manifest("broken", model_files["a"], backend={"n_ctx": -5, "bogus": 1})
    gw = serve([broken, llama_manifest("a", model_files["a"])])
    assert chat(gw, "a")
    problems = gw.admin()["manifest_problems"]
    fields = {p["field"] for p in problems}
    assert {"backend.n_ctx", "backend.bogus"} <= fields
    assert all(p["file"].endswith("broken.yaml") for p in problems)
    with pytest.raises(openai.NotFoundError):
        chat(gw, "broken")


def _stream_some(gw: RunningGateway, model: str, chunks: int) -> None:
    """Open a long stream, read a few events, then drop the connection."""
    body = {**LONG_STREAM, "model": model}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(chunks):
            assert next(lines) is not None


def test_client_disconnect_stops_generation_and_frees_the_slot(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    # 64k context: run to the end, this stream would take well over a minute on this model.
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536}, max_queue=0)])
    _stream_some(gw, "a", 5)
    wait_for(lambda: gw.model_state("a")["in_flight"] == 0, "the slot to be freed")
    # The engine's own count of the tokens in its context: the prompt and what it generated until it saw
    # the cancel, not the whole context (the job ended because it was cancelled, not at its end).
    pool = gw.gateway.registry.slots["a"].pool
    assert pool is not None
    engine = pool.replicas[0].backend._llama  # type: ignore[attr-defined]
    # Of 65,536 it would reach if it ran on (this model writes thousands a second: the bound leaves a loaded
    # machine seconds to notice the client left).
    assert engine.n_tokens < 32768, engine.n_tokens
    assert chat(gw, "a")  # max_queue=0: this would be 429 if the engine were still busy


def test_full_queue_is_429(serve: Callable[..., RunningGateway], model_files: dict[str, Path]) -> None:
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536}, max_queue=0)])
    body = LONG_STREAM
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # keep a reference: a collected iterator closes the connection
        next(lines)
        with pytest.raises(openai.RateLimitError) as err:
            chat(gw, "a")
        assert err.value.code == "queue_full"


def test_evicting_a_busy_model_drains_then_cancels(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536})], drain_grace=0.2)
    body = LONG_STREAM
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        evicted = httpx.post(f"{gw.base_url}/admin/models/a/evict", timeout=60).json()
        assert evicted["state"] == "unloaded"
        events = [line for line in lines if line.startswith("data: ")]
    last = json.loads(events[-1].removeprefix("data: "))
    assert "unloaded" in last["error"]["message"] and last["error"]["source"] == "gateway"
    assert chat(gw, "a")  # and it loads again on the next request


def test_client_that_leaves_the_queue_gives_up_its_place(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536}, max_queue=1)])
    body = LONG_STREAM
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        with pytest.raises(httpx.ReadTimeout):  # queued behind the stream, then the client gives up
            httpx.post(f"{gw.base_url}/v1/chat/completions", json={**body, "stream": False}, timeout=0.5)
        wait_for(lambda: gw.model_state("a")["queued"] == 0, "the abandoned request to leave the queue")
        assert gw.model_state("a")["in_flight"] == 1
