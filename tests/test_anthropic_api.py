"""Anthropic's Messages API through the gateway, with the official ``anthropic`` SDK as the client, on the
real SmolLM2 in process (translated to chat completions): plain and streamed answers, count_tokens,
models.list, a tool loop, errors as the SDK's own exception types, and keys sent as ``x-api-key``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from tests.conftest import SMOLLM2, RunningGateway, llama_manifest
from tests.test_llama_server import server_manifest
from tests.test_metrics import settled, total

HI = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0}  # the 2026 SDK has no sampling arguments; the API still takes them
TOOLS_FORMAT = "chatml-function-calling"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def models() -> list[dict[str, Any]]:
    assert SMOLLM2.is_file(), "run `llm-gateway fetch-model` first (README's commands do)"
    return [
        llama_manifest("smol", SMOLLM2, aliases=["claude-smol"], backend={"n_ctx": 1024, "n_threads": 2}),
        llama_manifest(
            "smol-tools", SMOLLM2, backend={"n_ctx": 1024, "chat_format": "chatml-function-calling"}
        ),
    ]


def client(gw: RunningGateway, key: str = "unused") -> anthropic.Anthropic:
    return gw.anthropic_client(key)


def test_messages_plain_streamed_and_counted(
    serve: Callable[..., RunningGateway], models: list[dict[str, Any]]
) -> None:
    gw = serve(models)
    c = client(gw)
    message = c.messages.create(
        model="claude-smol", max_tokens=16, messages=HI, system="Be brief.", extra_body=GREEDY
    )
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-smol"  # the name asked, not the file or the canonical name
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16

    with c.messages.stream(
        model="smol", max_tokens=16, messages=HI, system="Be brief.", extra_body=GREEDY
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.usage.input_tokens == message.usage.input_tokens
    assert final.stop_reason in ("end_turn", "max_tokens")

    counted = c.messages.count_tokens(model="smol", messages=HI, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens
    assert {"smol", "claude-smol", "smol-tools"} <= {m.id for m in c.models.list()}


def test_a_tool_loop(serve: Callable[..., RunningGateway], models: list[dict[str, Any]]) -> None:
    gw = serve(models)
    c = client(gw)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    call = c.messages.create(
        model="smol-tools", max_tokens=64, messages=ask, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )  # fmt: skip
    assert call.stop_reason == "tool_use"
    (use,) = [b for b in call.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and use.id
    answer = c.messages.create(
        model="smol-tools",
        max_tokens=32,
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": [b.model_dump() for b in call.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21C"}],
            },
        ],
    )
    assert answer.content and answer.content[0].type in ("text", "tool_use")
    assert answer.usage.input_tokens > call.usage.input_tokens  # the tool's result reached the prompt


def test_errors_are_the_sdks_own_types(
    serve: Callable[..., RunningGateway], models: list[dict[str, Any]]
) -> None:
    gw = serve(models)
    c = client(gw)
    with pytest.raises(anthropic.NotFoundError) as missing:
        c.messages.create(model="nope", max_tokens=8, messages=HI)
    assert missing.value.response.headers.get("request-id")
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as thinking:
        c.messages.create(
            model="smol", max_tokens=64, messages=HI, thinking={"type": "enabled", "budget_tokens": 32}
        )
    assert "thinking" in str(thinking.value)
    with pytest.raises(anthropic.BadRequestError) as image:
        c.messages.create(
            model="smol", max_tokens=8,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}],
        )  # fmt: skip
    assert "messages[0].content[0]" in str(image.value)


def test_keys_as_x_api_key(serve: Callable[..., RunningGateway], models: list[dict[str, Any]]) -> None:
    gw = serve(models, api_keys={"alice": "sk-alice"})
    assert client(gw, "sk-alice").messages.create(model="smol", max_tokens=4, messages=HI).content
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(gw, "sk-wrong").messages.create(model="smol", max_tokens=4, messages=HI)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize("native", [True, False], ids=["passed-through", "translated"])
def test_messages_on_llama_server_its_own_endpoint_or_translated(
    serve: Callable[..., RunningGateway], native: bool
) -> None:
    """llama-server speaks the Messages API itself: by default (``native_apis: [messages]``) the request goes
    to its own endpoint and its answer comes back untouched; with ``native_apis: []`` the gateway translates
    to and from chat completions. Which one answered shows in the id: llama-server names its messages like
    its chat completions (``chatcmpl-``), the translation ``msg_``. Either way the answer, the stream, the
    count and the metrics' token counts are right."""
    extra = {} if native else {"native_apis": []}
    gw = serve([server_manifest("srv", SMOLLM2, n_ctx=1024, **extra)])
    c = client(gw)
    message = c.messages.create(model="srv", max_tokens=8, messages=HI, extra_body=GREEDY)
    assert message.id.startswith("msg_") is not native
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.model == "srv" and message.stop_reason == "max_tokens"
    with c.messages.stream(model="srv", max_tokens=8, messages=HI, extra_body=GREEDY) as s:
        text = "".join(s.text_stream)
    final = s.get_final_message()
    assert final.id.startswith("msg_") is not native
    assert text == final.content[0].text and text.strip() and final.stop_reason == "max_tokens"
    counted = c.messages.count_tokens(model="srv", messages=HI).input_tokens
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert counted == prompt > 0
    # The metrics read each answer's usage, the engine's own events included (a prompt read from
    # llama-server's cache counts as prompt). llama-server counts without a prefill; the translation asks
    # the engine for one token, a prefill like any other.
    samples = settled(gw, lambda s: total(s, "vllm:request_success_total", model_name="srv") >= 2)
    assert total(samples, "vllm:generation_tokens_total", model_name="srv") == 16 + (0 if native else 1)
    assert total(samples, "vllm:prompt_tokens_total", model_name="srv") == (2 if native else 3) * prompt


def test_what_the_gateway_refuses_it_refuses_before_an_engine_that_speaks_the_api(
    serve: Callable[..., RunningGateway],
) -> None:
    """A field the gateway refuses is refused on a passed-through model too, before any load."""
    gw = serve([server_manifest("srv", SMOLLM2, n_ctx=1024)])
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(gw).messages.create(
            model="srv", max_tokens=8, messages=HI, extra_body={"thinking": {"type": "enabled"}}
        )
    assert "thinking" in refused.value.message
    assert gw.model_state("srv")["state"] == "unloaded"
