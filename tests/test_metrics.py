"""``/metrics`` and the stats line against real traffic: the real SmolLM2 in process and in a launched
llama-server, the official SDK as the client, real sockets. What the metrics say is checked against what the
clients received."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EOS, SMOLLM2, RunningGateway, free_port, llama_manifest, wait_for
from tests.fake_upstream import FakeUpstream, RunningUpstream
from tests.test_llama_server import server_manifest

pytestmark = pytest.mark.slow

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(gw: RunningGateway) -> Samples:
    text = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def settled(gw: RunningGateway, done: Callable[[Samples], bool]) -> Samples:
    """A scrape once ``done`` holds: a request is counted when the gateway's handler has ended, a moment
    after its client has read the last byte."""
    return wait_for(lambda: (s := scrape(gw)) and done(s) and s, "the requests to be counted")  # type: ignore[no-any-return]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def two_models(serve: Callable[..., RunningGateway], **settings: Any) -> RunningGateway:
    assert SMOLLM2.is_file(), "run `llm-gateway fetch-model` first (README's commands do)"
    return serve(
        [
            llama_manifest("inproc", SMOLLM2, backend={"n_ctx": 1024}),
            server_manifest("server", SMOLLM2, n_ctx=1024, parallel=2),
        ],
        **settings,
    )


PROMPT = [{"role": "user", "content": "Name three colours."}]


def test_token_counts_and_latencies_match_what_the_clients_received(
    serve: Callable[..., RunningGateway],
) -> None:
    gw = two_models(serve, engine_scrape_interval=0.2)
    client = gw.client()
    for model in ("inproc", "server"):
        expected_prompt = expected_generation = 0
        requests = 0
        for _ in range(2):
            r = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)
            assert r.usage is not None
            expected_prompt += r.usage.prompt_tokens
            expected_generation += r.usage.completion_tokens
            requests += 1
            twin = r.usage
        # The client asks for usage: it gets the usage chunk.
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=PROMPT,
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None and chunks[-1].choices == []
        expected_prompt += usage.prompt_tokens
        expected_generation += usage.completion_tokens
        requests += 1
        # llama.cpp's server ended that stream with its ``timings``: from now on its usage is read from those,
        # and not asked for; the in-process engine gives none, and is asked.
        slot = gw.gateway.registry.slots[model]
        if model == "server":  # learned as the handler ends, a moment after the client has the last byte
            wait_for(lambda: slot in gw.gateway.usage_unasked, "the stream's timings to be noted")  # noqa: B023
        else:
            assert slot not in gw.gateway.usage_unasked
        # The client does not ask: the gateway asks on its behalf (or reads the timings), counts it, and
        # takes the chunk out again. Greedy decoding of the same prompt gives the same counts as the
        # non-streamed twin.
        chunks = list(
            client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=8, temperature=0, stream=True
            )
        )
        assert chunks and all(c.usage is None and c.choices for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
        expected_prompt += twin.prompt_tokens
        expected_generation += twin.completion_tokens
        requests += 1

        # A request is recorded when the gateway's handler has ended, a moment after the client has read
        # the last byte: wait for the last one, then compare.
        m = wait_for(
            lambda: (
                (s := scrape(gw))
                and total(s, "vllm:e2e_request_latency_seconds_count", model_name=model) == requests  # noqa: B023
                and s
            ),
            "every request to be recorded",
        )
        assert total(m, "vllm:prompt_tokens_total", model_name=model) == expected_prompt
        assert total(m, "vllm:generation_tokens_total", model_name=model) == expected_generation
        assert total(m, "vllm:time_to_first_token_seconds_count", model_name=model) == requests
        assert total(m, "vllm:e2e_request_latency_seconds_count", model_name=model) == requests
        assert total(m, "vllm:request_success_total", model_name=model) == requests
        assert total(m, "vllm:request_generation_tokens_sum", model_name=model) == expected_generation
        assert total(m, "vllm:request_params_max_tokens_sum", model_name=model) == 8 * requests
        assert total(m, "vllm:inter_token_latency_seconds_count", model_name=model) > 0
        assert total(m, "gateway_requests_total", model_name=model, status="200") == requests
        assert total(m, "gateway_model_loads_total", model_name=model, result="success") == 1
        assert total(m, "gateway_replica_up", model_name=model, engine="0") == 1
        assert total(m, "gateway_model_state", model_name=model, state="ready") == 1

    # The launched llama-server: its own numbers, scraped by the gateway, under the model's labels.
    m = wait_for(
        lambda: (
            (s := scrape(gw))
            and total(s, "vllm:prefix_cache_queries_total", model_name="server") > 0
            and total(s, "vllm:prefix_cache_hits_total", model_name="server") > 0  # the same prompt, 4 times
            and s
        ),
        "the engine's metrics to be carried over",
    )
    deferred = [labels for labels, _ in m["gateway_backend_requests_deferred"]]
    assert deferred == [{"model_name": "server", "engine": "0"}]
    assert total(m, "vllm:prefix_cache_hits_total", model_name="server") > 0  # the same prompt, 4 times
    assert total(m, "gateway_model_memory_measured_bytes", model_name="server") > 50 * 2**20  # its RSS
    assert total(m, "gateway_model_memory_estimated_bytes", model_name="server") > 0
    assert total(m, "gateway_memory_used_bytes") == total(m, "gateway_model_memory_estimated_bytes")


def test_a_llama_server_stream_is_counted_from_its_timings_without_asking_for_its_usage(
    serve: Callable[..., RunningGateway],
) -> None:
    """The real llama-server: the gateway asks for the first stream's usage (for a client that did not),
    takes that event out, and finds llama.cpp's ``timings`` on it; from then on it does not ask, and counts
    the streams from their timings. Every count equals the non-streamed twin's usage (the prompt repeats:
    right only if the cached part is counted)."""
    gw = serve([server_manifest("server", SMOLLM2, n_ctx=1024)], engine_scrape_interval=0)
    client = gw.client()
    twin = client.chat.completions.create(model="server", messages=PROMPT, max_tokens=8, temperature=0).usage
    assert twin is not None
    slot = gw.gateway.registry.slots["server"]
    assert slot not in gw.gateway.usage_unasked
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model="server", messages=PROMPT, max_tokens=8, temperature=0, stream=True
            )
        )
        assert chunks and all(c.usage is None and c.choices for c in chunks)  # no usage event: not asked
        # noted as the handler ends, a moment after the client has its last byte
        wait_for(lambda: slot in gw.gateway.usage_unasked, "llama.cpp's timings to be noted")
    m = settled(gw, lambda s: total(s, "vllm:e2e_request_latency_seconds_count", model_name="server") == 3)
    assert total(m, "vllm:prompt_tokens_total", model_name="server") == 3 * twin.prompt_tokens
    assert total(m, "vllm:generation_tokens_total", model_name="server") == 3 * twin.completion_tokens


def test_usage_is_not_asked_for_once_a_stream_showed_timings_and_asked_again_after_one_without(
    serve: Callable[..., RunningGateway],
) -> None:
    """The wiring, on the fake upstream (which records whether each stream asked for the usage): llama.cpp's
    timings seen on the first stream's usage event, the next streams are not asked; an upstream that then
    gives no usage unasked (another server behind the name) is asked again from the stream after."""
    with RunningUpstream(FakeUpstream(chunks=4, timings=True), free_port()) as up:
        gw = serve([{"name": "m", "backend": {"kind": "remote", "endpoints": [{"url": up.url}]}}])
        client = gw.client()
        slot = gw.gateway.registry.slots["m"]

        def stream() -> None:
            chunks = list(client.chat.completions.create(model="m", messages=PROMPT, stream=True))
            assert chunks and all(c.usage is None and c.choices for c in chunks)  # the client never asked

        stream()
        wait_for(lambda: slot in gw.gateway.usage_unasked, "the timings to be noted")
        stream()
        up.app.timings = False  # now an upstream that reports nothing unasked
        stream()
        wait_for(lambda: slot not in gw.gateway.usage_unasked, "the model to be asked again")
        stream()
        assert list(up.app.asked_usage) == [True, False, False, True]
        m = settled(gw, lambda s: total(s, "vllm:e2e_request_latency_seconds_count", model_name="m") == 4)
        # Counted from the usage event, the timings, nothing (the third: unasked, none came), the usage event.
        assert total(m, "vllm:generation_tokens_total", model_name="m") == 64 + 4 + 64


def test_a_stream_cut_by_an_eviction_is_counted_as_what_it_was(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536})], drain_grace=0.2)
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 100_000,
        "logit_bias": {EOS: -100},
    }
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        assert httpx.post(f"{gw.base_url}/admin/models/a/evict", timeout=60).status_code == 200
        last = [line for line in lines if line.startswith("data: ")][-1]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "model_unavailable"
    m = settled(gw, lambda s: total(s, "gateway_requests_total", model_name="a") == 1)
    assert total(m, "gateway_requests_total", model_name="a", status="503") == 1
    assert total(m, "gateway_requests_total", model_name="a", status="200") == 0
    assert total(m, "vllm:request_success_total", model_name="a", finished_reason="abort") == 1
    assert total(m, "gateway_model_evictions_total", model_name="a", reason="admin") == 1
    assert total(m, "gateway_model_state", model_name="a", state="unloaded") == 1


def test_refusals_are_counted_under_their_status(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"])])
    bad = {"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": 9}
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json={"model": "nope", "messages": []}).status_code == 404
        assert client.post("/v1/chat/completions", json=bad).status_code == 400
    m = settled(gw, lambda s: total(s, "gateway_requests_total") == 2)
    # an unknown name is never a label value (it would make the series unbounded)
    assert total(m, "gateway_requests_total", model_name="", status="404") == 1
    assert total(m, "gateway_requests_total", model_name="a", status="400") == 1
    assert not any(lab.get("model_name") == "nope" for v in m.values() for lab, _ in v)


def test_stats_line_for_active_models_only(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.stats")
    gw = serve(
        [llama_manifest("busy", model_files["a"]), llama_manifest("idle", model_files["b"])],
        stats_interval=0.2,
    )
    client = gw.client()
    client.chat.completions.create(model="idle", messages=PROMPT, max_tokens=2)  # loaded, then idle
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # traffic to "busy" over several intervals
        client.chat.completions.create(model="busy", messages=PROMPT, max_tokens=4)
    caplog.clear()

    def stats_lines() -> list[str]:
        return [r.message for r in caplog.records if r.name == "gateway.stats"]

    deadline = time.monotonic() + 60  # bounds a hang only
    while len(stats_lines()) < 3 and time.monotonic() < deadline:  # three intervals, "idle" idle in each
        client.chat.completions.create(model="busy", messages=PROMPT, max_tokens=4)
    lines = stats_lines()
    assert len(lines) >= 3
    assert lines and all(line.startswith("Model busy: Avg prompt throughput: ") for line in lines)
    line = lines[-1]
    for part in ("Avg generation throughput: ", " tokens/s, Running: ", " reqs, Waiting: ", "State: ready",
                 "Memory: "):  # fmt: skip
        assert part in line


def test_queue_time_by_priority_class_and_key_name(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    """``gateway_queue_wait_seconds``: one observation per served request, under its class (the key's,
    lowered by X-Priority) and its key's name from the settings, never the key itself."""
    keys = {"alice": "sk-alice", "bulk": "sk-bulk"}
    gw = serve([llama_manifest("a", model_files["a"])], api_keys=keys, key_priorities={"bulk": "batch"})
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    alice, bulk = {"authorization": "Bearer sk-alice"}, {"authorization": "Bearer sk-bulk"}
    sent = [alice, alice, {**alice, "x-priority": "batch"}, bulk, bulk, {**bulk, "x-priority": "interactive"}]
    with httpx.Client(base_url=gw.base_url, timeout=120) as client:
        for headers in sent:
            assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    name = "gateway_queue_wait_seconds_count"
    m = settled(gw, lambda s: total(s, name) == len(sent))
    counts = {(lab["priority"], lab["key"]): v for lab, v in m[name] if lab["model_name"] == "a"}
    # a header may lower a request's class, never raise it
    assert counts == {("interactive", "alice"): 2, ("batch", "alice"): 1, ("batch", "bulk"): 3}, counts
    assert not any("sk-" in value for v in m.values() for lab, _ in v for value in lab.values())
