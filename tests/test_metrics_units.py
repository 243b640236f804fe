"""The pure parts of the metrics: the text writer against prometheus-client's parser, vLLM's buckets, the
reading of usage out of responses, and the engines' expositions."""

from __future__ import annotations

import itertools
import json
import subprocess

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from backends.engine_stats import delta, parse, slots_usage
from gateway.api.usage import StreamReader, read_body
from gateway.observability.exposition import buckets_1_2_5
from gateway.observability.metrics import Metrics, Trace

LLAMA_SERVER_METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 32
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens taken from the cache.
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 30
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""
VLLM_METRICS = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e9
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 40.0
"""


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


CONTENT = [_event({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in "abc"]
FINISH = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
USAGE = _event(
    {"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 3, "prompt_tokens_details": {}}}
)
DONE = b"data: [DONE]\n\n"
STREAM = b"".join([*CONTENT, FINISH, USAGE, DONE])


def test_token_histograms_use_vllms_1_2_5_buckets() -> None:
    assert buckets_1_2_5(2048) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
    assert buckets_1_2_5(1) == (1,)


def test_the_exposition_parses_and_carries_what_was_recorded() -> None:
    m = Metrics(["a", 'we"ird\\name'])
    trace = Trace("a", "chat/completions", arrived=10.0, n=1, max_tokens=16)
    trace.scheduled, trace.first, trace.status, trace.completed = 10.5, 11.0, 200, True
    trace.usage = read_body(b'{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5}}')[0]
    trace.finish_reasons = ["length"]
    trace.engine, trace.gaps = "0", [0.5] * 4
    m.finished(trace, ended=13.0)
    m.load_finished("a", 1.5, "success")
    m.evicted("a", "lru")

    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    key = (("engine", "0"), ("model_name", "a"))

    def le(bound: str) -> tuple[tuple[str, str], ...]:
        return (("engine", "0"), ("le", bound), ("model_name", "a"))

    assert samples["vllm:prompt_tokens_total", key] == 7
    assert samples["vllm:generation_tokens_total", key] == 5
    assert samples["vllm:e2e_request_latency_seconds_sum", key] == 3.0
    assert samples["vllm:request_queue_time_seconds_sum", key] == 0.5
    assert samples["vllm:time_to_first_token_seconds_sum", key] == 1.0
    assert samples["vllm:request_decode_time_seconds_sum", key] == 2.0
    assert samples["vllm:request_time_per_output_token_seconds_sum", key] == 0.5  # 2 s over 4 gaps
    assert samples["vllm:inter_token_latency_seconds_count", key] == 4
    assert samples["vllm:inter_token_latency_seconds_sum", key] == 2.0
    assert samples["gateway_requests_total", (("endpoint", "chat/completions"), ("model_name", "a"),
                                              ("status", "200"))] == 1  # fmt: skip
    reason = (("engine", "0"), ("finished_reason", "length"), ("model_name", "a"))
    assert samples["vllm:request_success_total", reason] == 1
    # cumulative buckets: the 3 s request is in le=5.0 but not in le=2.5
    assert samples["vllm:e2e_request_latency_seconds_bucket", le("2.5")] == 0
    assert samples["vllm:e2e_request_latency_seconds_bucket", le("5.0")] == 1
    assert samples["gateway_model_loads_total", (("model_name", "a"), ("result", "success"))] == 1
    assert samples["gateway_model_evictions_total", (("model_name", "a"), ("reason", "lru"))] == 1
    # declared models start at zero for every reason, so rates exist before the first event
    assert samples["gateway_model_evictions_total", (("model_name", 'we"ird\\name'), ("reason", "ttl"))] == 0
    assert not any(name.endswith("_created") for name, _ in samples)


def test_promtool_finds_nothing_but_vllms_colons() -> None:
    m = Metrics(["a"])
    m.series("a", "0").ttft.observe(0.1)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=m.render(), capture_output=True, check=False
    )
    problems = (result.stdout + result.stderr).decode().splitlines()
    assert problems, "promtool always flags the ':' in vLLM's names"
    assert all(p.startswith("vllm:") and p.endswith("metric names should not contain ':'") for p in problems)


def test_forget_drops_every_series_of_a_model() -> None:
    m = Metrics(["a", "b"])
    m.count_request("a", "chat/completions", 200)
    m.forget("a")
    text = m.render().decode()
    assert 'model_name="a"' not in text and 'model_name="b"' in text


def test_read_body_finds_usage_and_every_finish_reason() -> None:
    usage, reasons = read_body(
        b'{"choices":[{"finish_reason": "stop"},{"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":4,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":2}}}',
        choices=2,
    )
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (4, 9, 2)
    assert reasons == ["stop", "length"]


@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=12), st.booleans(), st.booleans())
def test_stream_reader_strips_only_the_usage_event_however_the_stream_is_cut(
    cuts: list[int], strip: bool, every_chunk: bool
) -> None:
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    reader = StreamReader(strip_usage=strip, every_chunk=every_chunk)
    out = b"".join(reader.feed(STREAM[a:b]) for a, b in itertools.pairwise(bounds)) + reader.close()
    assert out == (STREAM.replace(USAGE, b"") if strip else STREAM)
    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (31, 3)
    assert reader.finish_reasons == ["length"]
    assert reader.error_status is None


def test_finish_reasons_of_several_choices_are_all_read() -> None:
    events = [_event({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}) for i in range(2)]
    filler = [_event({"choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": None}]})] * 20
    reader = StreamReader(strip_usage=False, every_chunk=True)
    for chunk in [events[0], *filler, events[1], DONE]:
        reader.feed(chunk)
    reader.close()
    assert reader.finish_reasons == ["stop", "stop"]


def test_whole_events_pass_as_the_same_bytes() -> None:
    reader = StreamReader(strip_usage=True)
    chunk = CONTENT[0] + CONTENT[1]
    assert reader.feed(chunk) is chunk


def test_an_error_event_is_counted_with_its_status() -> None:
    reader = StreamReader(strip_usage=False)
    reader.feed(CONTENT[0])
    reader.feed(b'data: {"error":{"message":"x","type":"server_error","code":"model_unavailable"}}\n\n')
    reader.close()
    assert reader.error_status == 503


def test_engine_expositions() -> None:
    llama = parse(LLAMA_SERVER_METRICS)
    assert (llama.processing, llama.deferred) == (2, 1)
    assert (llama.prefix_queries, llama.prefix_hits) == (62, 30)  # evaluated + cached
    assert llama.kv_cache_usage is None
    vllm = parse(VLLM_METRICS)
    assert (vllm.kv_cache_usage, vllm.waiting, vllm.prefix_queries, vllm.prefix_hits) == (0.25, 3, 100, 40)


def test_engine_counter_deltas_survive_a_restart() -> None:
    assert delta(None, 10) == 10
    assert delta(10, 25) == 15
    assert delta(25, 4) == 4  # the engine restarted: its counters began again at zero
    assert delta(5, None) == 0


def test_kv_cache_use_from_llama_servers_slots() -> None:
    slots = [
        {"id": 0, "n_ctx": 1024, "is_processing": False, "n_prompt_tokens": 900},  # idle: its cache is free
        {"id": 1, "n_ctx": 1024, "is_processing": True, "n_prompt_tokens": 200,
         "next_token": [{"n_decoded": 56}]},
    ]  # fmt: skip
    assert slots_usage(slots) == 256 / 2048
    assert slots_usage([]) is None and slots_usage({"error": "x"}) is None
