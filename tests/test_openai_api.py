"""The OpenAI surface, driven by the official SDK over a real socket against real llama.cpp engines."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import EOS, RunningGateway, llama_manifest


@pytest.fixture
def gw(serve: Callable[..., RunningGateway], model_files: dict[str, Path]) -> RunningGateway:
    return serve(
        [
            llama_manifest("chat", model_files["a"], aliases=["gpt-3.5-turbo"]),
            llama_manifest("embed", model_files["b"], backend={"embeddings": True}),
        ]
    )


def test_models_lists_every_name_and_alias_loaded_or_not(gw: RunningGateway) -> None:
    ids = {m.id for m in gw.client().models.list()}
    assert ids == {"chat", "gpt-3.5-turbo", "embed"}
    assert gw.client().models.retrieve("gpt-3.5-turbo").id == "gpt-3.5-turbo"


def test_chat_non_streamed_has_usage_and_the_requested_model(gw: RunningGateway) -> None:
    r = gw.client().chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        temperature=0,
        logit_bias={EOS: -100},
    )
    assert r.object == "chat.completion"
    assert r.model == "gpt-3.5-turbo"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_chat_stream_frames_usage_chunk_and_done(gw: RunningGateway) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {EOS: -100},
    }
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_chat_stream_through_the_sdk_with_n_choices(gw: RunningGateway) -> None:
    stream = gw.client().chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        n=2,
        seed=7,
        stream=True,
        logit_bias={EOS: -100},
    )
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_seed_and_temperature_zero_are_reproducible(gw: RunningGateway) -> None:
    def ask() -> str | None:
        r = gw.client().chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            temperature=0.9,
            seed=123,
            logit_bias={EOS: -100},
        )
        return r.choices[0].message.content

    assert ask() == ask()


def test_stop_sequence_ends_the_completion(gw: RunningGateway) -> None:
    r = gw.client().completions.create(
        model="chat", prompt="hello", max_tokens=40, temperature=0, logit_bias={EOS: -100}
    )
    text = r.choices[0].text
    assert len(text) > 2
    stop = text[1:3]
    r2 = gw.client().completions.create(
        model="chat", prompt="hello", max_tokens=40, temperature=0, logit_bias={EOS: -100}, stop=[stop]
    )
    assert r2.choices[0].finish_reason == "stop"
    assert stop not in r2.choices[0].text


def test_completions_stream_and_multiple_prompts(gw: RunningGateway) -> None:
    r = gw.client().completions.create(model="chat", prompt=["a", "b"], max_tokens=2, logit_bias={EOS: -100})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens == 4
    chunks = list(
        gw.client().completions.create(
            model="chat", prompt="a", max_tokens=3, stream=True, logit_bias={EOS: -100}
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"


def test_json_response_format_constrains_output(gw: RunningGateway) -> None:
    r = gw.client().chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "json"}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
    )
    content = r.choices[0].message.content or ""
    if r.choices[0].finish_reason == "stop":
        json.loads(content)
    else:  # cut by max_tokens: still a prefix of JSON
        assert content.lstrip().startswith(("{", "["))


def test_embeddings_float_and_base64_one_vector_per_input(gw: RunningGateway) -> None:
    client = gw.client()
    r = client.embeddings.create(model="embed", input=["hello world", "a"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1]
    vec = np.array(r.data[0].embedding)
    assert vec.shape == (64,) and abs(np.linalg.norm(vec) - 1) < 1e-3
    r64 = client.embeddings.create(model="embed", input="hello world")  # the SDK asks for base64
    assert np.allclose(np.array(r64.data[0].embedding), vec, atol=1e-5)
    raw = httpx.post(
        f"{gw.base_url}/v1/embeddings",
        timeout=30,
        json={"model": "embed", "input": "a", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype=np.float32)
    assert np.allclose(decoded, np.array(r.data[1].embedding), atol=1e-5)
    assert raw["usage"]["prompt_tokens"] > 0


def test_unknown_model_is_404_model_not_found(gw: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        gw.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    assert err.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "chat"}, "messages"),
        ({"model": "chat", "messages": []}, "messages"),
        ({"model": "chat", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
        ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_malformed_body_is_400_with_param(gw: RunningGateway, body: dict[str, object], param: str) -> None:
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_invalid_json_is_400(gw: RunningGateway) -> None:
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_prompt_longer_than_context_is_400(gw: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().completions.create(model="chat", prompt="x" * 2000, max_tokens=1)
    assert "context" in str(err.value)


def test_chat_on_an_embedding_model_is_400(gw: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().chat.completions.create(model="embed", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["param"] == "model"  # type: ignore[index]


def test_api_key_is_required_when_set(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("chat", model_files["a"])], api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="wrong").models.list()
    assert [m.id for m in gw.client(api_key="s3cret").models.list()] == ["chat"]
