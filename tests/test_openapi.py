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
from gateway.api.validation import decode
from gateway.api.validation import validate as gateway_validate
from gateway.http.openapi import REQUEST_MODELS, build_document, openapi_json, openapi_route
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
    assert {(s["type"], s["scheme"]) for s in schemes.values()} == {("http", "bearer")}
    assert set(schemes) == {"apiKey", "adminKey"}
    for _, path, op in operations():
        area = path.split("/")[1]
        assert op["security"] == {"v1": [{"apiKey": []}], "admin": [{"adminKey": []}]}.get(area, []), path


def test_v1_posts_document_errors_streams_and_retry_after() -> None:
    responses = DOC["components"]["responses"]
    for path in REQUEST_MODELS:
        op = DOC["paths"][path]["post"]
        documented = {str(code) for code in (200, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504)}
        assert set(op["responses"]) == documented
        streams = "text/event-stream" in op["responses"]["200"]["content"]
        assert streams == (path != "/v1/embeddings")
    for name, response in responses.items():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
        assert ("Retry-After" in response["headers"]) == (name in {"TooManyRequests", "ServiceUnavailable"})


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
]

MODELS = {m.__name__: m for m in REQUEST_MODELS.values()}


def accepts_bytes(schema: str, raw: bytes) -> bool:
    """What the in-process engine makes of a body: True, or False for a 400; never another exception."""
    try:
        gateway_validate(decode(raw), MODELS[schema])
    except errors.InvalidRequest:
        return False
    return True


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
