"""OpenAI's Responses API through the gateway, with the official ``openai`` SDK as the client, on the real
SmolLM2 in process and under llama-server (both translated to chat completions): plain and streamed answers
parsed by the SDK's own stream helper, a function-call loop, ``previous_response_id`` across a restart of the
gateway, retrieve, delete, input items, input tokens, one key's responses hidden from another, and errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.api.responses_output import output_text
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest
from tests.test_llama_server import server_manifest

TOOLS_FORMAT = "chatml-function-calling"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def models() -> list[dict[str, Any]]:
    assert SMOLLM2.is_file(), "run `llm-gateway fetch-model` first (README's commands do)"
    return [
        llama_manifest("smol", SMOLLM2, aliases=["gpt-smol"], backend={"n_ctx": 1024, "n_threads": 2}),
        llama_manifest("smol-tools", SMOLLM2, backend={"n_ctx": 1024, "chat_format": TOOLS_FORMAT}),
    ]


def _plain_and_streamed(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(
        model=model,
        input="Name three colours.",
        instructions="Be brief.",
        max_output_tokens=16,
        temperature=0,
    )
    assert first.id.startswith("resp_") and first.object == "response" and first.model == model
    assert first.status in ("completed", "incomplete") and first.output_text.strip()
    assert first.usage is not None and first.usage.input_tokens > 0 and 0 < first.usage.output_tokens <= 16
    assert first.instructions == "Be brief." and first.max_output_tokens == 16

    with client.responses.stream(
        model=model,
        input="Name three colours.",
        instructions="Be brief.",
        max_output_tokens=16,
        temperature=0,
    ) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    # completed, or incomplete at the token limit (the SDK's get_final_response wants completed)
    final = events[-1].response  # type: ignore[union-attr]
    # the same greedy answer, streamed: the SDK rebuilt it from the deltas and checked every event's identity
    assert final.output_text == first.output_text
    assert final.usage is not None and final.usage.input_tokens == first.usage.input_tokens
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and kinds.count("response.output_item.done") == 1

    counted = client.responses.input_tokens.count(
        model=model, input="Name three colours.", instructions="Be brief."
    )
    assert counted.input_tokens == first.usage.input_tokens


def test_plain_streamed_and_counted_in_process(
    serve: Callable[..., RunningGateway], models: list[dict[str, Any]]
) -> None:
    gw = serve(models)
    _plain_and_streamed(gw.client(), "gpt-smol")


def test_plain_streamed_and_counted_on_llama_server(serve: Callable[..., RunningGateway]) -> None:
    """Every kind serves chat completions, so every kind serves the Responses API through the translation."""
    gw = serve([server_manifest("srv", SMOLLM2, n_ctx=1024)])
    _plain_and_streamed(gw.client(), "srv")


def test_a_function_call_loop(serve: Callable[..., RunningGateway], models: list[dict[str, Any]]) -> None:
    gw = serve(models)
    client = gw.client()
    call = client.responses.create(
        model="smol-tools", input="What is the weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64,
    )  # fmt: skip
    (fc,) = [item for item in call.output if item.type == "function_call"]
    assert fc.name == "get_weather" and fc.call_id and fc.arguments.startswith("{")
    # The result goes back on top of the stored conversation: only the new item is sent.
    answer = client.responses.create(
        model="smol-tools", previous_response_id=call.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "Sunny, 21C"}],
        max_output_tokens=32,
    )  # fmt: skip
    assert answer.previous_response_id == call.id and answer.output
    assert answer.usage is not None and call.usage is not None
    assert answer.usage.input_tokens > call.usage.input_tokens  # the call and its result reached the prompt

    # The same loop streamed: the call arrives as argument deltas the SDK assembles.
    with client.responses.stream(
        model="smol-tools", input="What is the weather in Rome?", tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64,
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    (streamed_fc,) = [item for item in streamed.output if item.type == "function_call"]
    assert streamed_fc.name == "get_weather" and streamed_fc.arguments.startswith("{")
    assert "response.function_call_arguments.done" in kinds


def test_stored_responses_survive_a_restart_and_belong_to_their_key(
    serve: Callable[..., RunningGateway], models: list[dict[str, Any]], tmp_path: Path
) -> None:
    store = tmp_path / "state" / "responses.sqlite3"
    keys = {"alice": "sk-alice", "bob": "sk-bob"}
    first_gw = serve(models, responses_store=store, api_keys=keys)
    alice = first_gw.client(api_key="sk-alice")
    first = alice.responses.create(
        model="smol", input=[{"role": "user", "content": "My name is Ada. Say hello."}], max_output_tokens=8
    )
    unstored = alice.responses.create(model="smol", input="Hi", max_output_tokens=4, store=False)
    first_gw.__exit__()  # the gateway stops; its store is a file

    gw = serve(models, responses_store=store, api_keys=keys)
    alice = gw.client(api_key="sk-alice")
    bob = gw.client(api_key="sk-bob")
    again = alice.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text
    items = alice.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "My name is Ada. Say hello."  # type: ignore[union-attr]
    follow = alice.responses.create(
        model="smol", previous_response_id=first.id, input="What is my name?", max_output_tokens=8
    )
    assert follow.usage is not None and first.usage is not None
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens  # history in

    for missing in (lambda: bob.responses.retrieve(first.id), lambda: alice.responses.retrieve(unstored.id)):
        with pytest.raises(openai.NotFoundError):
            missing()
    with pytest.raises(openai.BadRequestError) as foreign:
        bob.responses.create(model="smol", previous_response_id=first.id, input="x", max_output_tokens=4)
    assert foreign.value.body["param"] == "previous_response_id"  # type: ignore[index]

    alice.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(first.id)


def test_what_cannot_be_honoured_is_a_400_naming_it(
    serve: Callable[..., RunningGateway], models: list[dict[str, Any]]
) -> None:
    gw = serve(models)
    client = gw.client()
    refused: list[tuple[dict[str, Any], str]] = [
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"background": True}, "background"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0]"),
        ({"truncation": "auto"}, "truncation"),
    ]
    for extra, param in refused:
        body: dict[str, Any] = {"model": "smol", "input": "Hi", "max_output_tokens": 4, **extra}
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(**body)
        assert err.value.body["param"].startswith(param), (extra, err.value.body)  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="Hi")


def test_translation_and_llama_servers_own_endpoints_give_the_same_text(
    serve: Callable[..., RunningGateway],
) -> None:
    """llama-server (the build the project makes) answers /v1/responses and /v1/messages itself: the
    gateway's translation to chat completions gives the same greedy text as its own endpoints."""
    gw = serve([server_manifest("srv", SMOLLM2, n_ctx=1024)])
    client = gw.client()
    ours = client.responses.create(
        model="srv",
        input="Name three colours.",
        instructions="Be brief.",
        max_output_tokens=16,
        temperature=0,
    )
    url = gw.model_state("srv")["replicas"][0]["url"]
    body = {"model": "srv", "input": "Name three colours.", "instructions": "Be brief.",
            "max_output_tokens": 16, "temperature": 0}  # fmt: skip
    theirs = httpx.post(f"{url}/v1/responses", json=body, timeout=120)
    assert theirs.status_code == 200, theirs.text
    assert ours.output_text == output_text(theirs.json())

    message = {"model": "srv", "max_tokens": 16, "temperature": 0, "system": "Be brief.",
               "messages": [{"role": "user", "content": "Name three colours."}]}  # fmt: skip
    via_gateway = httpx.post(f"{gw.base_url}/v1/messages", json=message, timeout=120).json()
    direct = httpx.post(f"{url}/v1/messages", json=message, timeout=120)
    assert direct.status_code == 200, direct.text
    assert via_gateway["content"][0]["text"] == direct.json()["content"][0]["text"]


def test_a_client_of_each_api_streams_while_another_models_load_fails(
    serve: Callable[..., RunningGateway], models: list[dict[str, Any]], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # not a model: its loads fail
    gw = serve([*models, llama_manifest("broken", broken, memory="100MiB")])
    results: dict[str, str] = {}

    def chat() -> None:
        stream = gw.client().chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24,
            stream=True,
        )
        results["chat"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def messages() -> None:
        with gw.anthropic_client().messages.stream(
            model="smol", max_tokens=24, messages=[{"role": "user", "content": "Name three colours."}]
        ) as s:
            results["messages"] = "".join(s.text_stream)

    def responses() -> None:
        with gw.client().responses.stream(
            model="smol", input="Name three colours.", max_output_tokens=24
        ) as s:
            # completed, or incomplete at the token limit (the SDK's get_final_response wants completed)
            ends = [e for e in s if e.type in ("response.completed", "response.incomplete")]
            results["responses"] = ends[-1].response.output_text  # type: ignore[union-attr]

    def failing() -> None:
        try:
            gw.client().chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
        except openai.APIStatusError as err:
            results["broken"] = str(err.status_code)

    threads = [threading.Thread(target=f) for f in (chat, messages, responses, failing, failing)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results["broken"] == "503"  # the failed load, told to its own clients
    for api in ("chat", "messages", "responses"):
        assert results.get(api, "").strip(), (api, results)  # every stream of the other model whole
