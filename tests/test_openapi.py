"""GET /openapi.json: a valid OpenAPI 3.1 document whose request schemas agree with the gateway's own request
validation (a client or a fuzzer that follows it is not refused) and whose response schemas describe what the
in-process engine and the error edge really send."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, get_args

import jsonschema
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.generation import GenerationMode
from starlette.applications import Starlette
from starlette.testclient import TestClient

from backends import errors
from backends.base import OpenAIRequest
from backends.llama_cpp.jobs import RUNNERS, Job
from gateway.api import anthropic, anthropic_stream, responses, responses_output, responses_stream
from gateway.api.validation import ChatRequest, decode
from gateway.api.validation import validate as gateway_validate
from gateway.http import openapi_anthropic, openapi_responses
from gateway.http.errors import anthropic_error_response
from gateway.http.openapi import (
    AGENT_REQUEST_MODELS,
    REQUEST_MODELS,
    build_document,
    openapi_json,
    openapi_route,
)
from gateway.http.openapi_schemas import ModelState
from gateway.scheduling.lifecycle import State

try:
    import httpx2 as sdk_httpx  # the HTTP client under openai>=3
except ImportError:
    import httpx as sdk_httpx

DOC = build_document()
DOC_URI = "urn:llm-gateway:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(DOC_URI, Resource.from_contents(DOC, DRAFT202012))

EXPECTED = {  # method, path
    tuple(line.split())
    for line in """
    POST /v1/chat/completions
    POST /v1/completions
    POST /v1/embeddings
    POST /v1/messages
    POST /v1/messages/count_tokens
    POST /v1/responses
    POST /v1/responses/input_tokens
    GET /v1/responses/{response_id}
    DELETE /v1/responses/{response_id}
    GET /v1/responses/{response_id}/input_items
    GET /v1/models
    GET /v1/models/{model}
    GET /admin/models
    GET /admin/models/{name}
    POST /admin/models/{name}/load
    POST /admin/models/{name}/unload
    POST /admin/models/{name}/evict
    POST /admin/models/{name}/pin
    POST /admin/models/{name}/unpin
    GET /admin/models/{name}/logs
    GET /admin/models/{name}/plan
    GET /admin/devices
    POST /admin/reload
    GET /admin/activity
    GET /admin/series
    GET /admin/session
    GET /admin/cluster
    GET /health
    GET /metrics
    GET /openapi.json
""".strip().splitlines()
}


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, its $refs resolved within the document."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=REGISTRY
    )


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            yield method, path, op


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC, cls=OpenAPIV31SpecValidator)


def test_it_documents_exactly_the_gateways_routes() -> None:
    assert {(m.upper(), p) for m, p, _ in operations()} == EXPECTED
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))


def test_v1_needs_an_api_key_admin_the_admin_key_and_operations_none() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme", s.get("in"))) for s in schemes.values()} == {
        ("http", "bearer"),
        ("apiKey", "header"),
    }
    assert set(schemes) == {"apiKey", "anthropicKey", "adminKey"}
    assert schemes["anthropicKey"]["name"] == "x-api-key"  # what Anthropic's SDKs send; auth.py reads it
    for _, path, op in operations():
        area = path.split("/")[1]
        expected = {"v1": [{"apiKey": []}], "admin": [{"adminKey": []}]}.get(area, [])
        if path.startswith("/v1/messages"):
            expected = [{"apiKey": []}, {"anthropicKey": []}]
        assert op["security"] == expected, path


def test_the_anthropic_operations_have_their_tag_and_the_responses_api_openais() -> None:
    for _, path, op in operations():
        if path.startswith("/v1/"):
            assert op["tags"] == ["Anthropic" if path.startswith("/v1/messages") else "OpenAI"], path
    assert {t["name"] for t in DOC["tags"]} == {"OpenAI", "Anthropic", "Admin", "Operations"}


STREAMING = {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"}


def test_v1_posts_document_errors_streams_and_retry_after() -> None:
    components = DOC["components"]["responses"]
    for path in [*REQUEST_MODELS, *AGENT_REQUEST_MODELS]:
        op = DOC["paths"][path]["post"]
        documented = {str(code) for code in (200, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504)}
        assert set(op["responses"]) == documented
        streams = "text/event-stream" in op["responses"]["200"]["content"]
        assert streams == (path in STREAMING)
        anthropic_api = path.startswith("/v1/messages")
        for code, ref in op["responses"].items():
            if code != "200":  # 408 is written by the HTTP layer, before the handler: OpenAI's shape
                assert ref["$ref"].rsplit("/", 1)[1].startswith("Anthropic") == (
                    anthropic_api and code != "408"
                )
        if anthropic_api:
            assert op["responses"]["200"]["headers"] == {
                "request-id": {"$ref": "#/components/headers/RequestId"}
            }
    for name, response in components.items():
        shape = "AnthropicErrorResponse" if name.startswith("Anthropic") else "ErrorResponse"
        assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{shape}"}
        assert ("Retry-After" in response["headers"]) == (
            name.removeprefix("Anthropic") in {"TooManyRequests", "ServiceUnavailable"}
        )
        assert ("request-id" in response["headers"]) == name.startswith("Anthropic")


def test_model_states_are_the_lifecycles() -> None:
    assert set(get_args(ModelState)) == {s.value for s in State}


# Bodies as the OpenAI SDK and its users send them.
GOOD: list[tuple[str, dict[str, Any]]] = [
    ("ChatRequest", {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi!"}]}),
    (
        "ChatRequest",
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.7,
            "top_p": 1,
            "n": 2,
            "stop": ["\n\n"],
            "seed": 7,
            "max_completion_tokens": 64,
            "logit_bias": {"50256": -100},
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "user": "alice",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
        },
    ),
    ("ChatRequest", {"model": "m", "messages": [{"role": "developer", "content": "x"}], "logprobs": False}),
    (
        "CompletionRequest",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7},
    ),
    (
        "CompletionRequest",
        {"model": "m", "prompt": ["a", "b"], "stop": "\n", "stream": False, "temperature": 0},
    ),
    ("CompletionRequest", {"model": "m", "prompt": [1, 2, 3]}),
    ("CompletionRequest", {"model": "m", "prompt": [[1, 2], [3]], "n": 16, "echo": False}),
    ("EmbeddingRequest", {"model": "text-embedding-3-small", "input": "The food was delicious"}),
    ("EmbeddingRequest", {"model": "m", "input": ["one", "two"], "encoding_format": "base64", "user": "u"}),
    # Anthropic's Messages API, as its SDK sends it
    (
        "MessagesRequest",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4 C", "is_error": False}
                    ],
                },
            ],
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "stop_sequences": ["\n\n"],
            "temperature": 1,
            "top_p": 0.9,
            "top_k": 40,
            "stream": True,
            "metadata": {"user_id": "alice"},
            "thinking": {"type": "disabled"},
            "service_tier": "auto",
            "output_config": {"effort": "low"},
        },
    ),
    (
        "MessagesRequest",
        {"model": "m", "max_tokens": 8.0, "messages": [{"role": "assistant", "content": []}]},
    ),
    ("CountTokensRequest", {"model": "m", "messages": [{"role": "user", "content": "x"}], "system": "s"}),
    # OpenAI's Responses API, as its SDK sends it
    (
        "ResponsesRequest",
        {
            "model": "gpt-4.1",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "weather",
                    "arguments": "{}",
                    "id": "fc_1",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "4 C"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "4 C", "annotations": []}]},
            ],
            "tools": [
                {"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": True}
            ],
            "tool_choice": {"type": "function", "name": "weather"},
            "parallel_tool_calls": False,
            "temperature": 0.2,
            "top_p": 1,
            "max_output_tokens": 64,
            "text": {
                "format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}
            },
            "metadata": {"k": "v"},
            "stream": True,
            "store": False,
            "user": "alice",
            "truncation": "disabled",
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"effort": "none"},
            "background": False,
            "service_tier": "auto",
        },
    ),
    ("ResponsesRequest", {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}),
    ("ResponsesInputTokensRequest", {"model": "m", "input": "x", "max_output_tokens": 0, "stream": "x"}),
]
GOOD += [
    (op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1], example)
    for _, _, op in operations()
    if "requestBody" in op
    for example in [op["requestBody"]["content"]["application/json"]["example"]]
]

BAD: list[tuple[str, dict[str, Any]]] = [
    ("ChatRequest", {"messages": [{"role": "user", "content": "Hi!"}]}),
    ("ChatRequest", {"model": "", "messages": [{"role": "user", "content": "Hi!"}]}),
    ("ChatRequest", {"model": "m", "messages": []}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "robot", "content": "Hi!"}]}),
    ("ChatRequest", {"model": "m", "messages": [{"content": "Hi!"}]}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user", "content": 5}]}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "temperature": 2.5}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "n": 0}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "stream": "sometimes"}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "response_format": {"type": "xml"}}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "logprobs": True, "top_logprobs": 21}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "n": "2"}),
    ("ChatRequest", {"model": "m", "messages": [{"role": "user"}], "reasoning_effort": "low"}),
    ("CompletionRequest", {"model": "m"}),
    ("CompletionRequest", {"model": "m", "prompt": {"text": "x"}}),
    ("CompletionRequest", {"model": "m", "prompt": "x", "top_p": 1.5}),
    ("CompletionRequest", {"model": "m", "prompt": "x", "echo": True}),
    ("CompletionRequest", {"model": "m", "prompt": "x", "logprobs": 6}),
    ("EmbeddingRequest", {"model": "m"}),
    ("EmbeddingRequest", {"model": "m", "input": 5}),
    ("EmbeddingRequest", {"model": "m", "input": ""}),
    ("EmbeddingRequest", {"model": "m", "input": []}),
    ("EmbeddingRequest", {"model": "m", "input": "x", "encoding_format": "int8"}),
    ("EmbeddingRequest", {"model": 7, "input": "x"}),
    ("MessagesRequest", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),  # max_tokens
    ("MessagesRequest", {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
    ("MessagesRequest", {"model": "m", "max_tokens": 8, "messages": []}),
    ("MessagesRequest", {"model": "m", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}),
    ("MessagesRequest", {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": []}]}),
    (
        "MessagesRequest",
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
    ),
    (
        "MessagesRequest",
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], "thinking": "x"},
    ),
    (
        "MessagesRequest",
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], "mcp_servers": []},
    ),
    (
        "MessagesRequest",
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
    ),
    (
        "MessagesRequest",
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "has space", "input_schema": {}}],
        },
    ),
    ("MessagesRequest", {"model": "m", "max_tokens": 8, "messages": [{"role": "user"}], "temperature": 3}),
    ("ResponsesRequest", {"model": "m"}),
    ("ResponsesRequest", {"model": "m", "input": []}),
    ("ResponsesRequest", {"model": "m", "input": "x", "reasoning": {"effort": "high"}}),
    ("ResponsesRequest", {"model": "m", "input": "x", "background": True}),
    ("ResponsesRequest", {"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
    ("ResponsesRequest", {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
    ("ResponsesRequest", {"model": "m", "input": "x", "max_output_tokens": 0}),
    ("ResponsesRequest", {"model": "m", "input": "x", "truncation": "auto"}),
    ("ResponsesRequest", {"model": "m", "input": "x", "include": ["message.output_text.logprobs"]}),
    ("ResponsesRequest", {"model": "m", "input": "x", "metadata": {str(i): "v" for i in range(17)}}),
    ("ResponsesRequest", {"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}),
    ("ResponsesRequest", {"model": "m", "input": "x", "frequency_penalty": 1}),
]

MODELS = {m.__name__: m for m in REQUEST_MODELS.values()}
AGENTS = {m.__name__: path for path, m in AGENT_REQUEST_MODELS.items()}


def translated(path: str, data: dict[str, Any]) -> dict[str, Any]:
    """The chat completion a Messages or Responses body becomes, as its handler (``prepare``) makes it (a
    ``previous_response_id`` is looked up in the store there: here it is left out)."""
    if path.startswith("/v1/messages"):
        if path.endswith("count_tokens"):
            data = {**data, "max_tokens": 1, "stream": False}
        return anthropic.to_chat(data)
    data = {k: v for k, v in data.items() if k != "previous_response_id"}
    if path.endswith("input_tokens"):
        data = {**data, "max_output_tokens": 1, "stream": False, "store": False}
    return responses.to_chat(data, []).chat


def accepts_bytes(schema: str, raw: bytes) -> bool:
    """What the in-process engine makes of a body: True, or False for a 400; never another exception. A
    Messages or Responses body is translated, then validated as the chat completion it becomes."""
    try:
        if schema in AGENTS:
            gateway_validate(translated(AGENTS[schema], decode(raw)), ChatRequest)
        else:
            gateway_validate(decode(raw), MODELS[schema])
    except errors.InvalidRequest:
        return False
    return True


@pytest.mark.parametrize(
    ("model", "known"),
    [
        (openapi_anthropic.MessagesRequest, anthropic.KNOWN - set(anthropic.REFUSED) | {"thinking"}),
        (openapi_responses.ResponsesRequest, responses.KNOWN),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_the_agent_request_schemas_name_the_fields_the_translations_know(model: Any, known: set[str]) -> None:
    """Every field the translation accepts (KNOWN, IGNORED, REFUSED but for an empty value) is documented;
    a field it refuses whatever its value (mcp_servers) is not, as no unknown field is."""
    schema = DOC["components"]["schemas"][model.__name__]
    assert set(schema["properties"]) == known
    assert schema["additionalProperties"] is False


def gateway_accepts(schema: str, body: object) -> bool:
    return accepts_bytes(schema, json.dumps(body).encode())


@pytest.mark.parametrize(("schema", "body"), GOOD)
def test_the_schema_and_the_gateway_accept_a_good_request(schema: str, body: dict[str, Any]) -> None:
    schema_validator(schema).validate(body)
    assert gateway_accepts(schema, body)


@pytest.mark.parametrize(("schema", "body"), BAD)
def test_the_schema_and_the_gateway_refuse_a_bad_request(schema: str, body: dict[str, Any]) -> None:
    assert not schema_validator(schema).is_valid(body)
    assert not gateway_accepts(schema, body)


class FakeLlama:
    """llama-cpp-python's streaming calls, enough for the in-process engine's response framing."""

    def create_chat_completion(self, stream: bool = False, **kwargs: Any) -> Any:
        if stream:
            return self._chat_chunks()
        # Whole, as llama-cpp-python answers tool_choice "auto": a call of the first tool.
        name = kwargs["tools"][0]["function"]["name"]
        call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": "{}"}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}

    def _chat_chunks(self) -> Iterator[dict[str, Any]]:
        yield {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}
        yield {"choices": [{"delta": {"content": "Hello"}, "finish_reason": None}]}
        yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}

    def create_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield {"choices": [{"text": "upon", "finish_reason": None}]}
        yield {"choices": [{"text": " a time", "finish_reason": "length"}]}

    def embed(self, inputs: list[str], **kwargs: Any) -> tuple[list[list[float]], int]:
        return [[0.5, -0.5] for _ in inputs], 3 * len(inputs)


def engine_output(endpoint: str, body: dict[str, Any]) -> list[bytes]:
    out: list[bytes] = []
    request = OpenAIRequest(endpoint, body, bool(body.get("stream")))  # type: ignore[arg-type]
    RUNNERS[endpoint](FakeLlama(), Job(request, out.append))
    return out


ANSWERS = {  # endpoint: the 200 JSON body's schema, and the schema of a streamed event's data
    "chat/completions": ("ChatCompletion", "ChatCompletionChunk"),
    "completions": ("Completion", "Completion"),
    "embeddings": ("CreateEmbeddingResponse", None),
}


def check_engine_answer(endpoint: str, body: dict[str, Any]) -> None:
    """The in-process engine's answer to a validated body has the documented shape, streamed or not."""
    whole, chunk = ANSWERS[endpoint]
    out = engine_output(endpoint, body)
    if not body.get("stream"):
        schema_validator(whole).validate(json.loads(b"".join(out)))
        return
    assert chunk is not None
    assert out[-1] == b"data: [DONE]\n\n"
    for event in out[:-1]:
        schema_validator(chunk).validate(json.loads(event.removeprefix(b"data: ")))


def sdk_bodies() -> list[tuple[str, dict[str, Any]]]:
    """What the official openai SDK sends, captured by a transport that answers in place of the gateway with
    what the in-process engine makes of the request (so the SDK parses the engine's responses too)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def answer(request: sdk_httpx.Request) -> sdk_httpx.Response:
        endpoint = request.url.path.removeprefix("/v1/")
        body = json.loads(request.content)
        sent.append((REQUEST_MODELS[request.url.path].__name__, body))
        (whole,) = engine_output(endpoint, body)
        return sdk_httpx.Response(200, content=whole, headers={"content-type": "application/json"})

    client = openai.OpenAI(
        base_url="http://gateway.invalid/v1",
        api_key="k",
        max_retries=0,
        http_client=sdk_httpx.Client(transport=sdk_httpx.MockTransport(answer)),
    )
    hi: Any = [{"role": "user", "content": "Hi!"}]
    client.chat.completions.create(model="gpt-3.5-turbo", messages=hi)
    client.chat.completions.create(
        model="m", messages=hi, max_tokens=5, temperature=0, seed=1, stop=["x"], n=2
    )
    client.chat.completions.create(model="m", messages=hi, response_format={"type": "json_object"})
    client.completions.create(model="m", prompt="Once", max_tokens=8, presence_penalty=1)
    client.embeddings.create(model="text-embedding-3-small", input=["one vector", "per input"])
    client.embeddings.create(model="m", input="x", encoding_format="float")
    client.close()
    return sent


def test_what_the_openai_sdk_sends_is_valid() -> None:
    bodies = sdk_bodies()
    assert len(bodies) == 6
    assert bodies[4][1]["encoding_format"] == "base64"  # the SDK asks for base64 unless told otherwise
    for schema, body in bodies:
        schema_validator(schema).validate(body)
        assert gateway_accepts(schema, body)


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat/completions", {"model": "m", "messages": [{"role": "user"}], "n": 2}),
        ("completions", {"model": "m", "prompt": ["a", "b"]}),
        ("embeddings", {"model": "m", "input": ["a", "b"]}),
        ("embeddings", {"model": "m", "input": "a", "encoding_format": "base64"}),
    ],
)
def test_the_response_schemas_describe_what_the_engine_sends(endpoint: str, body: dict[str, Any]) -> None:
    check_engine_answer(endpoint, body)
    if endpoint != "embeddings":
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        check_engine_answer(endpoint, streamed)
        usage = json.loads(engine_output(endpoint, streamed)[-2].removeprefix(b"data: "))
        assert usage["choices"] == [] and usage["usage"]["total_tokens"] >= 0


@pytest.mark.parametrize(
    "err",
    [
        errors.InvalidRequest("bad", param="messages"),
        errors.Unauthorized("no key"),
        errors.ModelNotFound("nope"),
        errors.QueueFull("full", retry_after=1),
        errors.LoadFailed("crashed", retry_after=5),
        errors.UpstreamUnavailable("gone"),
        errors.GatewayError("boom"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_error_bodies_match_the_error_schema(err: errors.GatewayError) -> None:
    schema_validator("ErrorResponse").validate(err.body())
    op = DOC["paths"]["/v1/chat/completions"]["post"]
    assert str(err.status) in op["responses"]


@pytest.mark.parametrize("token", ["the", "1" * 20])
def test_the_gateway_refuses_a_logit_bias_key_that_is_not_a_token_id(token: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi!"}], "logit_bias": {token: 5}}
    assert not schema_validator("ChatRequest").is_valid(body)
    assert not gateway_accepts("ChatRequest", body)


def test_the_document_is_served_as_json() -> None:
    with TestClient(Starlette(routes=[openapi_route()])) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == DOC
    assert openapi_json() is openapi_json()  # built once


# --- bodies a schema-driven fuzzer makes from the document ---------------------------------------------

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SCHEMA = schemathesis.openapi.from_dict(DOC)


def sent_bytes(case: Any) -> bytes:
    """The body as schemathesis would send it: JSON, or raw bytes (negative cases)."""
    kwargs = case.as_transport_kwargs(base_url="http://gateway.invalid")
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data", b"")
    return data if isinstance(data, bytes) else str(data).encode()


def fuzz(path: str, mode: GenerationMode) -> Callable[[Callable[[Any], None]], Callable[[], None]]:
    return lambda test: FUZZ(given(case=SCHEMA[path]["POST"].as_strategy(mode))(test))


@pytest.mark.parametrize("path", list(REQUEST_MODELS))
def test_the_gateway_accepts_every_body_a_fuzzer_makes_from_the_document(path: str) -> None:
    """...and the in-process engine answers each in the documented shape."""
    seen = []
    model = REQUEST_MODELS[path]

    @fuzz(path, GenerationMode.POSITIVE)
    def check(case: Any) -> None:
        seen.append(case.body)
        raw = sent_bytes(case)
        assert accepts_bytes(model.__name__, raw), case.body
        check_engine_answer(path.removeprefix("/v1/"), gateway_validate(decode(raw), model))

    check()
    assert len(seen) >= 25


@pytest.mark.parametrize("path", list(REQUEST_MODELS))
def test_a_fuzzers_invalid_bodies_get_a_400_never_a_crash(path: str) -> None:
    """Every body that breaks the document (not JSON, or JSON the schema refuses) is a 400, never served and
    never another exception; a case that breaks only something else (a header) may be accepted."""
    name = REQUEST_MODELS[path].__name__
    refused = []

    @fuzz(path, GenerationMode.NEGATIVE)
    def check(case: Any) -> None:
        raw = sent_bytes(case)
        accepted = accepts_bytes(name, raw)  # raises on anything but a 400
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if body is None or not schema_validator(name).is_valid(body):
            assert not accepted, raw[:300]
            refused.append(raw)

    check()
    assert len(refused) >= 10  # the fuzzer did make invalid bodies


@pytest.mark.parametrize("path", list(AGENT_REQUEST_MODELS))
def test_the_translations_accept_every_body_a_fuzzer_makes_from_the_document(path: str) -> None:
    """Anthropic's and OpenAI's Responses bodies: translated, and the chat completion they become valid."""
    seen = []
    name = AGENT_REQUEST_MODELS[path].__name__

    @fuzz(path, GenerationMode.POSITIVE)
    def check(case: Any) -> None:
        seen.append(case.body)
        assert accepts_bytes(name, sent_bytes(case)), case.body

    check()
    assert len(seen) >= 25


@pytest.mark.parametrize("path", list(AGENT_REQUEST_MODELS))
def test_a_fuzzers_invalid_agent_bodies_never_crash_the_translation(path: str) -> None:
    """An invalid body is a 400 or served, never another exception. Served: the translations read some fields
    more loosely than the document (a falsy value for an unused one, extra fields of a part)."""
    name = AGENT_REQUEST_MODELS[path].__name__
    refused = []

    @fuzz(path, GenerationMode.NEGATIVE)
    def check(case: Any) -> None:
        raw = sent_bytes(case)
        if not accepts_bytes(name, raw):  # raises on anything but a 400
            refused.append(raw)

    check()
    assert len(refused) >= 10


# --- the answers of the Messages and Responses APIs -----------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
HI_CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi!"}]}


def chat_answers() -> list[dict[str, Any]]:
    """Non-streamed chat completions as the engine writes them: a tool call, and text cut by the limit."""
    (called,) = engine_output("chat/completions", {**HI_CHAT, "tools": TOOLS})
    text = json.loads(called)
    text["choices"][0] = {
        "index": 0,
        "message": {"role": "assistant", "content": "Hi"},
        "finish_reason": "length",
    }
    return [json.loads(called), text]


def chat_chunks() -> list[dict[str, Any]]:
    streamed = {**HI_CHAT, "stream": True, "stream_options": {"include_usage": True}}
    out = engine_output("chat/completions", streamed)
    assert out[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in out[:-1]]
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    more = {"index": 0, "function": {"arguments": ": 1}"}}
    tool = [
        {**chunks[0], "choices": [{"index": 0, "delta": {"tool_calls": [c]}, "finish_reason": None}]}
        for c in (call, more)
    ]
    return [*chunks[:-1], *tool, chunks[-1]]


def sse_data(events: list[bytes]) -> list[dict[str, Any]]:
    """Each event's data, its ``event:`` line checked against its type."""
    out = []
    for raw in events:
        kind, data = raw.decode().removesuffix("\n\n").split("\n")
        value = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {value['type']}"
        out.append(value)
    return out


def test_the_message_schemas_describe_what_the_messages_api_sends() -> None:
    for answer in chat_answers():
        schema_validator("Message").validate(anthropic.from_chat(answer, "m"))
    stream = anthropic_stream.MessageStream("m")
    events = sse_data([e for chunk in chat_chunks() for e in stream.feed(chunk)] + stream.end())
    assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= {e["type"] for e in events}
    for value in events + sse_data(anthropic_stream.MessageStream("m").error("boom")):
        schema_validator("MessageStreamEvent").validate(value)
    schema_validator("MessageTokensCount").validate({"input_tokens": 7})


def test_the_response_schemas_describe_what_the_responses_api_sends() -> None:
    turn = responses.to_chat({"model": "m", "input": "Hi!", "tools": [{"type": "function", "name": "f"}]}, [])
    for answer in chat_answers():
        response = responses_output.response_object(
            "resp_1", "m", turn.echo, responses_output.output_of(answer)
        )
        schema_validator("Response").validate(response)
    stream = responses_stream.ResponseStream("resp_1", "m", turn.echo)
    events = sse_data([e for chunk in chat_chunks() for e in stream.feed(chunk)] + stream.end())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed = sse_data(responses_stream.ResponseStream("resp_2", "m", turn.echo).error("boom"))
    for value in events + failed:
        schema_validator("ResponseStreamEvent").validate(value)
    assert failed[-1]["type"] == "response.failed"
    items = responses.input_items(
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "y"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "z"},
        ]
    )
    page = {"object": "list", "data": items, "first_id": items[0]["id"], "last_id": "x", "has_more": False}
    schema_validator("InputItemList").validate(page)
    schema_validator("ResponseDeleted").validate(
        {"id": "resp_1", "object": "response.deleted", "deleted": True}
    )
    schema_validator("ResponseInputTokens").validate({"object": "response.input_tokens", "input_tokens": 7})


@pytest.mark.parametrize(
    "err",
    [errors.InvalidRequest("bad"), errors.ModelNotFound("nope"), errors.QueueFull("full", retry_after=1)],
    ids=lambda e: type(e).__name__,
)
def test_anthropic_error_bodies_match_their_schema(err: errors.GatewayError) -> None:
    response = anthropic_error_response(err)
    schema_validator("AnthropicErrorResponse").validate(json.loads(response.body))
    assert response.headers["request-id"].startswith("req_")
    assert str(err.status) in DOC["paths"]["/v1/messages"]["post"]["responses"]
