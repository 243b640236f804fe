"""The pure parts of the metrics: the text writer against prometheus-client's parser, vLLM's buckets, the
reading of usage out of responses, and the engines' expositions."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from backends.base import UpstreamResponse
from backends.engine_stats import delta, parse, slots_usage
from gateway.api.usage import _COUNTS, StreamReader, Usage, _parse_usage_scan, parse_usage, read_body
from gateway.http.openai_front import ask_for_usage, learn_usage, with_usage
from gateway.http.relay import relay
from gateway.observability.exposition import Histogram, buckets_1_2_5
from gateway.observability.metrics import TOKEN_LATENCY_BUCKETS, Metrics, RequestSeries, Trace

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


# llama.cpp's server ends a stream with its ``timings``, and gives no usage unless asked (captured from this
# project's llama-server, SmolLM2, the same prompt a second time: 38 of its 39 prompt tokens were cached).
TIMED = (
    b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1,"id":"c","model":"m",'
    b'"object":"chat.completion.chunk","timings":{"cache_n":38,"prompt_n":1,"prompt_ms":7.847,'
    b'"prompt_per_token_ms":7.847,"prompt_per_second":127.4,"predicted_n":5,"predicted_ms":33.2,'
    b'"predicted_per_token_ms":8.3,"predicted_per_second":120.4}}\n\n'
)


@given(st.lists(st.integers(1, len(TIMED) + len(DONE) - 1), max_size=6), st.booleans())
def test_llama_cpp_timings_give_the_usage_unasked(cuts: list[int], every_chunk: bool) -> None:
    stream = CONTENT[0] + TIMED + DONE
    start = len(CONTENT[0])
    bounds = [0, start, *sorted({start + c for c in cuts}), len(stream)]
    reader = StreamReader(strip_usage=False, every_chunk=every_chunk)
    out = b"".join(reader.feed(stream[a:b]) for a, b in itertools.pairwise(bounds)) + reader.close()
    assert out == stream and reader.timings and reader.finish_reasons == ["length"]
    # llama-server's own usage for this answer: prompt_tokens 39 (cache_n + prompt_n), 38 cached, 5 generated
    assert reader.usage == Usage(prompt_tokens=39, completion_tokens=5, cached_tokens=38)


def test_a_usage_object_outweighs_the_timings_and_timings_without_counts_are_none() -> None:
    usage = b'"usage":{"completion_tokens":5,"prompt_tokens":40,"total_tokens":45},'
    both = TIMED.replace(b'"timings"', usage + b'"timings"')
    reader = StreamReader(strip_usage=False)
    for chunk in (CONTENT[0], both, DONE):
        reader.keep(chunk)
    reader.close()
    assert reader.usage == Usage(40, 5) and reader.timings
    for missing in (b'"predicted_n"', b'"cache_n"'):  # without cache_n a cached prompt would be undercounted
        reader = StreamReader(strip_usage=False)
        for chunk in (CONTENT[0], TIMED.replace(missing, b'"other"'), DONE):
            reader.keep(chunk)
        reader.close()
        assert reader.usage is None and not reader.timings


@pytest.mark.parametrize("every_chunk", [False, True])
def test_timings_on_the_usage_event_the_gateway_takes_out_are_noted(every_chunk: bool) -> None:
    """Asked for the usage, llama.cpp's server puts its timings on the usage event; the gateway takes that
    event out, and must note the timings first, or it would keep asking."""
    finish = TIMED[: TIMED.index(b',"timings"')] + b"}\n\n"
    timings = TIMED[TIMED.index(b'"timings"') : -3]
    usage = USAGE[: -len(b"}\n\n")] + b"," + timings + b"}\n\n"
    reader = StreamReader(strip_usage=True, every_chunk=every_chunk)
    out = b"".join(reader.feed(c) for c in (CONTENT[0], finish, usage, DONE)) + reader.close()
    assert out == CONTENT[0] + finish + DONE
    assert reader.timings and reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (31, 3)  # the usage object's


def test_per_token_timings_of_several_choices_count_the_last() -> None:
    """``timings_per_token``: every chunk has timings; with several choices each chunk is read as it
    passes, and the last timings are the stream's counts."""
    reader = StreamReader(strip_usage=False, every_chunk=True)
    for n in range(1, 5):
        reader.feed(TIMED.replace(b'"predicted_n":5', b'"predicted_n":%d' % n))
    reader.feed(DONE)
    reader.close()
    assert reader.usage == Usage(prompt_tokens=39, completion_tokens=4, cached_tokens=38)


def test_usage_is_asked_for_until_a_stream_shows_timings_and_again_when_one_unasked_has_no_usage() -> None:
    unasked: set[str] = set()
    learn_usage(unasked, "m", timings=False, asked=True, got=True)  # an OpenAI server: keep asking
    assert unasked == set()
    learn_usage(unasked, "m", timings=True, asked=True, got=True)  # llama.cpp's server: ask no more
    assert unasked == {"m"}
    learn_usage(unasked, "m", timings=True, asked=False, got=True)
    learn_usage(unasked, "m", timings=False, asked=False, got=True)  # the client asked itself: no change
    assert unasked == {"m"}
    learn_usage(unasked, "m", timings=False, asked=False, got=False)  # unasked, and none came: ask again
    assert unasked == set()


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


# -- the relay with metrics on: its per-chunk path, against the whole stream cut anywhere ----------------
def _relayed(
    pieces: list[bytes], strip: bool, n: int = 1, gone_after: int | None = None
) -> tuple[bytes, list[bytes], Trace]:
    """What the client gets (all of it, and each piece sent) and the trace, for an upstream's ``pieces``;
    ``gone_after``: the client leaves after that many pieces (a send fails)."""

    async def run() -> tuple[bytes, list[bytes], Trace]:
        async def body() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        sent: list[bytes] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body":
                if gone_after is not None and len(sent) == gone_after:
                    raise OSError("the client is gone")
                sent.append(message["body"])

        finished = asyncio.get_running_loop().create_future()
        upstream = UpstreamResponse(
            200, {"content-type": "text/event-stream"}, body(), lambda: None, finished
        )
        trace = Trace("m", "chat/completions", arrived=1.0, n=n)
        try:
            await relay(upstream, send, trace, strip)
        except OSError:
            return b"".join(sent), sent, trace
        return b"".join(sent), sent[:-1], trace

    return asyncio.run(run())


@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=12), st.booleans())
@example(cuts=[STREAM.index(USAGE) - 1], strip=True)  # between the two newlines that end the event before
@example(cuts=[STREAM.index(USAGE) + 10], strip=True)  # inside the usage event
def test_the_relay_strips_only_the_usage_event_however_the_stream_is_cut(
    cuts: list[int], strip: bool
) -> None:
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    out, pieces, trace = _relayed([STREAM[a:b] for a, b in itertools.pairwise(bounds)], strip)
    assert out == (STREAM.replace(USAGE, b"") if strip else STREAM)
    assert trace.usage is not None and (trace.usage.prompt_tokens, trace.usage.completion_tokens) == (31, 3)
    assert trace.finish_reasons == ["length"] and trace.completed
    assert (
        trace.first > 0 and len(trace.gaps) == len([p for p in pieces if p]) - 1
    )  # one per piece after the first
    assert all(g >= 0 for g in trace.gaps)


def test_empty_pieces_pass_as_they_came() -> None:
    for strip in (True, False):
        out, _, trace = _relayed([b"", CONTENT[0], b"", FINISH, USAGE, b"", DONE], strip=strip)
        assert out == CONTENT[0] + FINISH + (b"" if strip else USAGE) + DONE and trace.completed


def test_the_relay_reads_every_chunk_of_several_choices() -> None:
    events = [_event({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}) for i in range(2)]
    out, _, trace = _relayed([CONTENT[0], events[0], CONTENT[1], events[1], USAGE, DONE], strip=True, n=2)
    assert out == CONTENT[0] + events[0] + CONTENT[1] + events[1] + DONE
    assert trace.finish_reasons == ["stop", "stop"] and trace.usage is not None and trace.completed


def test_a_usage_event_begun_in_a_chunk_already_sent_goes_on_whole() -> None:
    """An upstream that names its events: a chunk may end after a usage event's ``event:`` line. Half an
    event would break the client's stream; the whole event, unasked for, does not."""
    named = b"event: chunk\n" + USAGE
    out, _, trace = _relayed([CONTENT[0] + FINISH + b"event: chunk\n", USAGE + DONE], strip=True)
    assert out == CONTENT[0] + FINISH + named + DONE
    assert (
        trace.usage is not None and trace.usage.completion_tokens == 3 and trace.finish_reasons == ["length"]
    )
    out, _, _ = _relayed([CONTENT[0] + FINISH, named + DONE], strip=True)  # the event whole in one chunk
    assert out == CONTENT[0] + FINISH + DONE


def test_a_client_gone_before_done_is_not_complete_and_an_error_event_gives_its_status() -> None:
    pieces = [CONTENT[0], CONTENT[1], FINISH, USAGE, DONE]
    _, _, trace = _relayed(pieces, strip=True, gone_after=1)
    assert not trace.completed and trace.usage is None and trace.finish_reasons == []
    _, _, trace = _relayed(pieces, strip=True, gone_after=3)  # gone once [DONE] has passed: complete
    assert trace.completed and trace.usage is not None and trace.finish_reasons == ["length"]
    error = b'data: {"error":{"message":"x","type":"server_error","code":"model_unavailable"}}\n\n'
    _, _, trace = _relayed([CONTENT[0], error], strip=True)
    assert trace.status == 503 and not trace.completed


# -- histograms: a batch of values counts as the values one by one --------------------------------------
@given(
    st.lists(
        st.one_of(st.floats(0, 200, allow_nan=False), st.sampled_from(TOKEN_LATENCY_BUCKETS)), max_size=80
    )
)
def test_observing_many_values_at_once_counts_as_one_by_one(values: list[float]) -> None:
    one, many = Histogram("", TOKEN_LATENCY_BUCKETS), Histogram("", TOKEN_LATENCY_BUCKETS)
    for value in values:
        one.observe(value)
    many.observe_many(list(values))
    assert many.counts == one.counts
    assert many.sum == pytest.approx(one.sum)


# -- a batch of finished requests records what each one records alone -----------------------------------
def record_one(m: Metrics, t: Trace) -> None:
    """One request, as ``Metrics.flush`` recorded each before the batch became column by column."""
    m.count_request(t.model, t.endpoint, t.status)
    if t.engine is not None:
        s: RequestSeries = m.series(t.model, t.engine)
        if t.body is not None:
            t.usage, t.finish_reasons = read_body(t.body, t.n)
        for gap in t.gaps:
            s.itl.observe(gap)
        ended = t.ended
        started, first = t.scheduled or ended, t.first or ended
        s.e2e.observe(ended - t.arrived)
        s.queue.observe(started - t.arrived)
        s.inference.observe(ended - started)
        s.prefill.observe(first - started)
        s.decode.observe(ended - first)
        if t.first:
            s.ttft.observe(t.first - t.arrived)
        s.n.observe(t.n)
        if t.max_tokens is not None:
            s.max_tokens.observe(t.max_tokens)
        if t.usage is not None:
            s.prompt.inc(t.usage.prompt_tokens)
            s.gen.inc(t.usage.completion_tokens)
            s.prompt_hist.observe(t.usage.prompt_tokens)
            s.gen_hist.observe(t.usage.completion_tokens)
            s.max_gen.observe(t.usage.completion_tokens)
            if t.usage.completion_tokens > 1:
                s.tpot.observe((ended - first) / (t.usage.completion_tokens - 1))
        if not t.completed:
            s.success["abort"].inc()
        elif t.status == 200:
            for reason in t.finish_reasons or ("stop",):
                (s.success.get(reason) or s.success["stop"]).inc()
    if t.scheduled:
        m.queue_wait.labels(t.model, t.priority, t.key).observe(t.scheduled - t.arrived)


seconds = st.floats(0.0, 100.0, allow_nan=False)


@st.composite
def traces(draw: st.DrawFn) -> dict[str, Any]:
    arrived = draw(seconds)
    scheduled = draw(st.sampled_from([0.0, arrived + draw(seconds)]))
    first = draw(st.sampled_from([0.0, max(arrived, scheduled) + draw(seconds)]))
    fields: dict[str, Any] = {
        "model": draw(st.sampled_from(["a", "b"])),
        "arrived": arrived,
        "n": draw(st.sampled_from([1, 1, 2])),
        "max_tokens": draw(st.sampled_from([None, 1, 64, 5000])),
        "scheduled": scheduled,
        "first": first,
        "status": draw(st.sampled_from([200, 200, 499, 502, 429])),
        "engine": draw(st.sampled_from([None, "0", "1"])),
        "completed": draw(st.booleans()),
        "finish_reasons": draw(
            st.lists(st.sampled_from(["stop", "length", "tool_calls", "abort"]), max_size=2)
        ),
        "gaps": draw(st.lists(st.floats(0.0, 100.0, allow_nan=False), max_size=20)),
        "key": draw(st.sampled_from(["", "alice"])),
        "priority": draw(st.sampled_from(["interactive", "batch"])),
        "ended": max(arrived, scheduled, first) + draw(seconds),
    }
    if draw(st.booleans()):
        fields["usage"] = Usage(draw(st.integers(0, 9000)), draw(st.integers(0, 9000)))
    elif draw(st.booleans()):
        fields["body"] = json.dumps(
            {"choices": [{"finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}
        ).encode()
    return fields


def _trace(fields: dict[str, Any]) -> Trace:
    t = Trace(fields["model"], "chat/completions", fields["arrived"])
    for name, value in fields.items():
        setattr(t, name, list(value) if isinstance(value, list) else value)
    return t


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(m.render().decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


@given(st.lists(traces(), min_size=1, max_size=40))
def test_a_batch_records_what_its_requests_record_one_by_one(batch: list[dict[str, Any]]) -> None:
    together, alone = Metrics(["a", "b"]), Metrics(["a", "b"])
    for fields in batch:
        together.finished(_trace(fields), fields["ended"])
        record_one(alone, _trace(fields))
    got, want = _samples(together), _samples(alone)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (pytest.approx(value) if key[0].endswith("_sum") else value), key


# -- usage out of the bytes: the one-match reading against the general scan -----------------------------
@given(
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.one_of(st.none(), st.integers(0, 10**7)),
    st.sampled_from(["openai", "vllm", "sorted"]),
    st.sampled_from([(",", ":"), (", ", ": ")]),
    st.booleans(),
)
def test_usage_read_by_one_match_is_usage_read_by_the_scan(
    prompt: int,
    completion: int,
    cached: int | None,
    order: str,
    separators: tuple[str, str],
    tail: bool,
) -> None:
    """The usage objects of OpenAI, of vLLM (``prompt_tokens``, ``total_tokens``, ``completion_tokens``:
    its ``UsageInfo``'s field order) and of llama-server (sorted) are read by the one match, and it reads
    what the general scan reads."""
    usage: dict[str, Any] = {"prompt_tokens": prompt}
    if order == "vllm":
        usage["total_tokens"] = prompt + completion
    usage["completion_tokens"] = completion
    usage["total_tokens"] = prompt + completion
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    event: dict[str, Any] = {"id": "x", "choices": [], "usage": usage}
    if tail:
        event["timings"] = {"prompt_n": 1, "predicted_n": 2}
    body = json.dumps(event, sort_keys=order == "sorted", separators=separators).encode()
    at = body.find(b'"usage"')
    assert _COUNTS.match(body, at) is not None
    found = parse_usage(body, at)
    assert found == _parse_usage_scan(body, at)
    assert found == Usage(prompt, completion, cached)


def read_body_reference(body: bytes) -> tuple[Usage | None, list[str]]:
    """A one-choice body read by the general searches only (``read_body`` before its one-match path)."""
    at = body.rfind(b'"usage"')
    usage = _parse_usage_scan(body, at) if at != -1 else None
    last = body.rfind(b'"finish_reason"')
    found = re.match(rb'"finish_reason":\s*"(\w+)"', body[last:]) if last != -1 else None
    return usage, [found.group(1).decode()] if found else []


@given(
    st.sampled_from(["stop", "length", None]),
    st.one_of(
        st.none(), st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.none() | st.integers(0, 99))
    ),
    st.sampled_from(["openai", "vllm", "usage first", "llama.cpp", "usage twice"]),
    st.sampled_from([(",", ":"), (", ", ": ")]),
)
def test_a_body_read_from_its_finish_reason_is_the_body_read_by_the_searches(
    reason: str | None, counts: tuple[int, int, int | None] | None, shape: str, separators: tuple[str, str]
) -> None:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "a } ] { ["}}
    choice["finish_reason"] = reason
    if shape == "vllm":
        choice["stop_reason"] = None
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "choices": [choice]}
    if counts is not None:
        usage: dict[str, Any] = {"prompt_tokens": counts[0]}
        if shape == "vllm":  # its UsageInfo's field order
            usage["total_tokens"] = 1
        usage["completion_tokens"] = counts[1]
        usage["total_tokens"] = 1
        if counts[2] is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": counts[2]}
        body = {"usage": usage, **body} if shape == "usage first" else {**body, "usage": usage}
    if shape == "openai":
        body["system_fingerprint"] = "fp"
    if shape == "usage twice":  # the last one is the one read
        body["extra"] = {"usage": {"prompt_tokens": 5, "completion_tokens": 6}}
    raw = json.dumps(body, sort_keys=shape == "llama.cpp", separators=separators).encode()
    assert read_body(raw) == read_body_reference(raw)


# -- asking for the stream's usage on the client's behalf ---------------------------------------------
@pytest.mark.parametrize(
    ("sent", "asked", "spliced"),
    [
        ({"model": "m", "stream": True}, True, True),
        ({"model": "m", "stream": True, "stream_options": None}, True, False),
        ({"model": "m", "stream": True, "stream_options": {}}, True, False),
        ({"model": "m", "stream": True, "stream_options": {"include_usage": False}}, True, False),
        ({"model": "m", "stream": True, "stream_options": {"include_usage": True}}, False, False),
    ],
)
def test_the_usage_option_is_added_to_the_clients_own_bytes_when_it_sent_none(
    sent: dict[str, Any], asked: bool, spliced: bool
) -> None:
    raw = b" \n" + json.dumps(sent).encode()  # JSON may begin with white space
    data = json.loads(raw)
    assert ask_for_usage(data) is asked
    if not asked:
        return
    out = with_usage(raw, data)
    assert json.loads(out) == {
        **sent,
        "stream_options": {**(sent.get("stream_options") or {}), "include_usage": True},
    }
    assert out.endswith(raw[3:].lstrip(b"{")) is spliced  # the client's bytes kept as they were
