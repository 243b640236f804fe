"""Every request field the in-process engine gets is acted on, ignored where that changes nothing, or a 400
that names it: logprobs and tools through llama-cpp-python, with the real SmolLM2 over a real socket and the
official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import llama_cpp
import openai
import pytest

from tests.conftest import SMOLLM2, RunningGateway, llama_manifest

HI: Any = [{"role": "user", "content": "Name three colours."}]
WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
GET_WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
GET_TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture
def gw(serve: Callable[..., RunningGateway]) -> RunningGateway:
    assert SMOLLM2.is_file(), "run `llm-gateway fetch-model` first (README's commands do)"
    return serve(
        [
            llama_manifest("smol", SMOLLM2, backend={"n_ctx": 1024, "n_threads": 2}),
            llama_manifest(
                "smol-tools", SMOLLM2, backend={"n_ctx": 1024, "chat_format": "chatml-function-calling"}
            ),
        ]
    )


def check_token(entry: Any, top: int) -> None:
    """One logprob entry: a negative float, its bytes, and ``top`` alternatives best first."""
    assert isinstance(entry.logprob, float) and entry.logprob <= 0
    assert bytes(entry.bytes) == entry.token.encode()
    assert len(entry.top_logprobs) == top
    values = [t.logprob for t in entry.top_logprobs]
    assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    # temperature 0 samples the most likely token, so the sampled token is the first alternative
    assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob)


def test_chat_logprobs_with_top_logprobs(gw: RunningGateway) -> None:
    r = gw.client().chat.completions.create(
        model="smol", messages=HI, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    for entry in choice.logprobs.content:
        check_token(entry, 3)
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    # cut by max_tokens: the last token, which the engine never feeds back, is reported too
    assert choice.finish_reason == "length"
    assert r.usage is not None and len(choice.logprobs.content) == r.usage.completion_tokens == 12


def test_sampled_tokens_are_the_ones_reported(gw: RunningGateway) -> None:
    """Sampled hot, the token is often not the likeliest: each reported token is the one sampled."""
    r = gw.client().chat.completions.create(
        model="smol", messages=HI, max_tokens=24, temperature=1.5, seed=5, logprobs=True, top_logprobs=20
    )
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(t.token for t in entries) == choice.message.content
    assert any(t.token != t.top_logprobs[0].token for t in entries)
    for entry in entries:
        alternatives = {t.token: t.logprob for t in entry.top_logprobs}
        assert alternatives.get(entry.token, entry.logprob) == entry.logprob


def test_streamed_chat_logprobs_come_with_the_text_that_holds_them(gw: RunningGateway) -> None:
    stream = gw.client().chat.completions.create(
        model="smol", messages=HI, max_tokens=12, temperature=0, logprobs=True, top_logprobs=1, stream=True
    )
    content, tokens = "", list[Any]()
    for chunk in stream:
        choice = chunk.choices[0]
        piece = choice.delta.content or ""
        mine = choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
        assert "".join(t.token for t in mine) == piece  # each chunk carries the tokens of its own text
        for entry in mine:
            check_token(entry, 1)
        content, tokens = content + piece, tokens + mine
    assert content and len(tokens) == 12


def test_no_logprobs_unless_asked(gw: RunningGateway) -> None:
    r = gw.client().chat.completions.create(model="smol", messages=HI, max_tokens=3, logprobs=False)
    assert r.choices[0].logprobs is None


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """llama-cpp-python's own logprobs: an engine built with logits_all=True."""
    llama = llama_cpp.Llama(str(SMOLLM2), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    yield llama
    llama.close()


def test_completion_logprobs_are_llama_cpp_pythons(gw: RunningGateway, reference: Any) -> None:
    prompt = "The capital of France is"
    r = gw.client().completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    want = reference.create_completion(prompt, max_tokens=8, temperature=0, logprobs=2)["choices"][0]
    got = r.choices[0]
    assert got.text == want["text"] and got.logprobs is not None
    assert got.logprobs.tokens == want["logprobs"]["tokens"]
    assert got.logprobs.token_logprobs == pytest.approx(want["logprobs"]["token_logprobs"], abs=1e-3)
    assert got.logprobs.top_logprobs is not None
    for mine, theirs in zip(got.logprobs.top_logprobs, want["logprobs"]["top_logprobs"], strict=True):
        assert len(mine) == 2 and mine == pytest.approx(theirs, abs=1e-3)
    offsets = got.logprobs.text_offset or []
    assert [
        got.text[a:b] for a, b in zip(offsets, [*offsets[1:], len(got.text)], strict=True)
    ] == got.logprobs.tokens


def test_completion_logprobs_streamed_and_cut_by_a_stop_string(gw: RunningGateway) -> None:
    stream = gw.client().completions.create(
        model="smol",
        prompt="Count: 1, 2, 3,",
        max_tokens=20,
        temperature=0,
        logprobs=0,
        stop=[" 6"],
        stream=True,
    )
    text, tokens = "", list[str]()
    for chunk in stream:
        choice = chunk.choices[0]
        mine = choice.logprobs.tokens if choice.logprobs and choice.logprobs.tokens else []
        text, tokens = text + choice.text, tokens + mine
        if choice.logprobs is not None:
            assert choice.logprobs.top_logprobs == [{}] * len(mine)
    assert text.startswith(" 4, 5") and " 6" not in text
    assert "".join(tokens) == text  # the tokens that the stop string cut off are not reported


def test_named_tool_choice_returns_a_call_with_schema_arguments(gw: RunningGateway) -> None:
    choice_: Any = {"type": "function", "function": {"name": "get_weather"}}
    r = gw.client().chat.completions.create(
        model="smol-tools",
        messages=WEATHER,
        tools=[GET_WEATHER, GET_TIME],
        tool_choice=choice_,
        max_tokens=40,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_streamed_tool_call_names_the_call_once(gw: RunningGateway) -> None:
    choice_: Any = {"type": "function", "function": {"name": "get_weather"}}
    stream = gw.client().chat.completions.create(
        model="smol-tools",
        messages=WEATHER,
        tools=[GET_WEATHER],
        tool_choice=choice_,
        stream=True,
        max_tokens=40,
    )
    deltas, finish = [], None
    for chunk in stream:
        deltas += chunk.choices[0].delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(deltas) > 1
    first, rest = deltas[0], deltas[1:]
    assert first.id and first.type == "function" and first.function and first.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None and d.function and d.function.name is None for d in rest)
    arguments = "".join((d.function.arguments or "") if d.function else "" for d in deltas)
    assert isinstance(json.loads(arguments)["city"], str)


def test_tools_without_tool_choice_let_the_model_decide(gw: RunningGateway) -> None:
    client = gw.client()
    called = client.chat.completions.create(model="smol-tools", messages=WEATHER, tools=[GET_WEATHER])
    assert called.choices[0].finish_reason == "tool_calls"
    assert (called.choices[0].message.tool_calls or [])[0].function.name == "get_weather"  # type: ignore[union-attr]
    # llama-cpp-python's own answer here is empty content (its follow-up grammar admits only a call)
    stream = client.chat.completions.create(
        model="smol-tools",
        messages=[{"role": "user", "content": "Say hello."}],
        tools=[GET_WEATHER],
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)


def test_developer_messages_and_text_parts_reach_the_prompt(gw: RunningGateway) -> None:
    def prompt_tokens(messages: Any) -> int:
        r = gw.client().chat.completions.create(model="smol-tools", messages=messages, max_tokens=1)
        assert r.usage is not None
        return r.usage.prompt_tokens

    rule, ask = "Answer in French.", {"role": "user", "content": "Hello there"}
    as_system = prompt_tokens([{"role": "system", "content": rule}, ask])
    assert prompt_tokens([{"role": "developer", "content": rule}, ask]) == as_system > prompt_tokens([ask])
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    assert prompt_tokens([{"role": "user", "content": parts}]) == prompt_tokens(
        [{"role": "user", "content": "Hello\nthere"}]
    )


def test_fields_ignored_on_purpose_change_nothing(gw: RunningGateway) -> None:
    base: dict[str, Any] = {"model": "smol", "messages": HI, "max_tokens": 8, "temperature": 0}
    ignored = {
        "user": "alice",
        "metadata": {"team": "a"},
        "store": True,
        "service_tier": "auto",
        "prediction": {"type": "content", "content": "Red, green"},
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "modalities": ["text"],
        "parallel_tool_calls": True,
        "stream_options": None,
    }
    # Both after the same prompt: llama.cpp reuses the cached prefix of an identical prompt, and on some CPUs
    # that path's arithmetic differs from a cold prompt's enough to change a greedy answer.
    httpx.post(f"{gw.base_url}/v1/chat/completions", json=base, timeout=60)
    plain = httpx.post(f"{gw.base_url}/v1/chat/completions", json=base, timeout=60)
    decorated = httpx.post(f"{gw.base_url}/v1/chat/completions", json={**base, **ignored}, timeout=60)
    assert plain.status_code == decorated.status_code == 200
    assert plain.json()["choices"] == decorated.json()["choices"]


CHAT: dict[str, Any] = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}]}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}

# body changes, the param the 400 names, and a word its message must hold (the kind that does it)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("chat/completions", {"stream": "yes"}, "stream", "boolean"),
    ("chat/completions", {"n": "2"}, "n", "integer"),
    ("chat/completions", {"temperature": "0.5"}, "temperature", "number"),
    ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
    ("chat/completions", {"reasoning_effort": "low"}, "reasoning_effort", "llama_server"),
    ("chat/completions", {"verbosity": "low"}, "verbosity", "llama_server"),
    ("chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, "audio", "remote"),
    ("chat/completions", {"modalities": ["text", "audio"]}, "modalities[1]", "remote"),
    ("chat/completions", {"web_search_options": {}}, "web_search_options", "remote"),
    ("chat/completions", {"functions": [GET_WEATHER["function"]]}, "functions", "tools"),
    ("chat/completions", {"function_call": "auto"}, "function_call", "tool_choice"),
    ("chat/completions", {"guided_json": {}}, "guided_json", "llama_server"),
    ("chat/completions", {"stream_options": {"chunk": 1}}, "stream_options.chunk", "llama_server"),
    ("chat/completions", {"tools": [{"type": "custom", "custom": {}}]}, "tools[0].type", "llama_server"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]},
        "messages[0].content[1].type",
        "mmproj",
    ),
    ("chat/completions", {"tool_choice": "auto"}, "tool_choice", "tools"),
    ("chat/completions", {"tools": [GET_WEATHER]}, "tools", "llama_server"),
    ("chat/completions", {"logit_bias": {"99999999": 5}}, "logit_bias", "vocabulary"),
    ("completions", {"prompt": [[1, 2], [3, 999999]]}, "prompt", "vocabulary"),
    ("completions", {"suffix": "end"}, "suffix", "llama_server"),
    ("completions", {"best_of": 2}, "best_of", "llama_server"),
    ("completions", {"echo": True}, "echo", "llama_server"),
    ("completions", {"logprobs": 6}, "logprobs", "5"),
    ("completions", {"prompt": ["a", 1]}, "prompt[1]", "valid"),
]
TOOLS = {"model": "smol-tools", "tools": [GET_WEATHER, GET_TIME]}
REFUSED += [
    ("chat/completions", {**TOOLS, "tool_choice": "required"}, "tool_choice", "llama_server"),
    (
        "chat/completions",
        {**TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice.function.name",
        "nope",
    ),
    ("chat/completions", {**TOOLS, "logprobs": True}, "logprobs", "llama_server"),
    (
        "chat/completions",
        {**TOOLS, "response_format": {"type": "json_object"}},
        "response_format",
        "llama_server",
    ),
    ("chat/completions", {**TOOLS, "parallel_tool_calls": False}, "parallel_tool_calls", "llama_server"),
    (
        "chat/completions",
        {"model": "smol-tools", "messages": [*WEATHER, {"role": "function", "name": "f", "content": "Sun"}]},
        "messages[1].role",
        "llama_server",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "change", "param", "word"), REFUSED, ids=[f"{e}:{p}" for e, _, p, _ in REFUSED]
)
def test_what_the_engine_cannot_do_is_a_400_naming_the_field(
    gw: RunningGateway, endpoint: str, change: dict[str, Any], param: str, word: str
) -> None:
    body = (
        {**CHAT, **change} if endpoint == "chat/completions" else {"model": "smol", "prompt": "Hi", **change}
    )
    r = httpx.post(f"{gw.base_url}/v1/{endpoint}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param.split("[")[0].split(".")[0] in err["message"] and word in err["message"]


def test_the_sdk_sees_a_refused_field_as_bad_request(gw: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().chat.completions.create(model="smol", messages=HI, tools=[GET_WEATHER])
    assert err.value.body["param"] == "tools"  # type: ignore[index]
    assert "chatml-function-calling" in err.value.message and "llama_server" in err.value.message
