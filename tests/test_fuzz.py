"""Schemathesis against a real gateway over HTTP: every operation of ``/openapi.json`` (``/v1``, ``/admin``
and the operations routes), positive and negative cases, a bounded number of examples each.

What must hold for every generated request: no 5xx (``not_a_server_error``), an answer within the client's
timeout (a ``requests`` timeout, or an event stream that has not ended by then, is a hang, reported with the
request), and a status code, content type, headers and JSON body as the document says (schemathesis's
conformance checks; each event of a stream is checked against the schema the document names for it).

The gateway serves two synthetic in-process models under the names the document's examples use (``smollm2``
with the alias ``gpt-3.5-turbo``, and ``text-embedding-3-small``). The fuzzer reads the served document,
changed on the request side only (responses are checked against it as served), in these variants:

- ``as served``: unchanged; ``model`` is any string, so most bodies end in a 404.
- ``served names``: ``model`` and the ``{model}``/``{name}`` path parameters drawn from the served names, so
  that bodies reach the engine; known bugs kept out (below).
- ``streamed``: served names, token ids within the model's vocabulary (beyond it is a 400 before the engine,
  which ``served names`` covers), and ``stream: true`` always.
- ``every field``: as ``streamed`` but not always streamed, and every field of the body present (otherwise
  a fuzzer sends mostly the required ones: two or three fields).

What it found is fixed and kept as regression tests at the end of this file: token ids and
``logit_bias`` keys beyond the vocabulary, an empty list of token ids in a completion prompt (a 502), and a
``repeat_penalty`` of 1e307 that made sampling crawl past the client's timeout (now bounded, as ``top_k``).

``GET /admin/models/{name}/logs?follow=true`` stays open by design (a live log tail): its cases are sent
with ``follow=false``, and one test checks that the followed variant answers its head at once.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.config.settings import Settings
from gateway.http.openapi import build_document
from gateway.http.openapi_ops import OPERATIONS, Op
from tests.conftest import RunningGateway, free_port, llama_manifest, write_manifests

CHAT, EMBED = "smollm2", "text-embedding-3-small"
CHAT_NAMES = [CHAT, "gpt-3.5-turbo"]
N_VOCAB = 264  # tests/synthetic_gguf.py: 3 control tokens, 256 bytes, 5 words
N_CTX = 256  # small: n (up to 16) choices of up to a whole context each stay quick on one core
EXAMPLES_PER_OPERATION = 30
CLIENT_TIMEOUT = 120.0  # seconds; the slowest body seen here (16 choices of a whole context) takes ~5 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,  # the client's timeout is the deadline: a slow answer is not a failure, a hang is
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,  # the same cases every run: a failure here reproduces
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a hang would be re-run for minutes
)
DOC_URI = "urn:llm-gateway:openapi"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[RunningGateway]:
    """One gateway for every case (the ``serve`` fixture would start one per operation and variant)."""
    directory = write_manifests(
        tmp_path_factory.mktemp("fuzz") / "manifests",
        [
            llama_manifest(CHAT, model_files["a"], aliases=["gpt-3.5-turbo"], backend={"n_ctx": N_CTX}),
            llama_manifest(EMBED, model_files["b"], backend={"embeddings": True, "n_ctx": N_CTX}),
        ],
    )
    with RunningGateway(Settings(manifests=directory, port=free_port(), memory_budget=8 * 2**30)) as gw:
        yield gw


# --- the documents the fuzzer reads --------------------------------------------------------------------

# Anthropic's Messages API and OpenAI's Responses API, translated to chat completions by their handlers
AGENT_BODIES = ("MessagesRequest", "CountTokensRequest", "ResponsesRequest", "ResponsesInputTokensRequest")
BODIES = ("ChatRequest", "CompletionRequest", "EmbeddingRequest", *AGENT_BODIES)
SAMPLING = ("ChatRequest", "CompletionRequest")
STREAMING = (*SAMPLING, "MessagesRequest", "ResponsesRequest")
RESPONSES_BODIES = ("ResponsesRequest", "ResponsesInputTokensRequest")


class Stored:
    """A response stored on the gateway for one test, and the ids of its input items (given, to be known)."""

    ITEMS = ("msg_fuzz_a", "msg_fuzz_b")

    def __init__(self, gw: RunningGateway) -> None:
        items = [{"role": "user", "content": text, "id": i} for text, i in zip("ab", self.ITEMS, strict=True)]
        body = {"model": CHAT, "input": items, "max_output_tokens": 2}
        r = httpx.post(f"{gw.base_url}/v1/responses", json=body, timeout=CLIENT_TIMEOUT)
        assert r.status_code == 200, r.text
        self.id: str = r.json()["id"]


def served_names(doc: dict[str, Any], stored: Stored | None) -> dict[str, Any]:
    """Served names; with a stored response (a test of /v1/responses...), its id for {response_id} and
    previous_response_id (or null), its items' ids for input_items' after."""
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    names = (CHAT_NAMES, CHAT_NAMES, [EMBED], *[CHAT_NAMES] * len(AGENT_BODIES))
    for name, served in zip(BODIES, names, strict=True):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": served}
    parameters = doc["components"]["parameters"]
    for param in ("ModelName", "Name"):
        parameters[param]["schema"] = {"type": "string", "enum": [*CHAT_NAMES, EMBED]}
    if stored is not None:
        parameters["ResponseId"]["schema"] = {"type": "string", "enum": [stored.id]}
        parameters["After"]["schema"] = {"type": "string", "enum": list(Stored.ITEMS)}
        for name in RESPONSES_BODIES:
            schemas[name]["properties"]["previous_response_id"] = {"enum": [stored.id, None]}
    return doc


def in_vocabulary(doc: dict[str, Any], stored: Stored | None) -> dict[str, Any]:
    """Served names, with token ids (a completion's prompt, ``logit_bias`` keys) in the model's vocabulary:
    the document allows any, the gateway refuses ids beyond the model's with a 400 before the engine."""
    doc = served_names(doc, stored)
    schemas = doc["components"]["schemas"]
    _walk_integers(schemas["CompletionRequest"]["properties"]["prompt"])
    for name in SAMPLING:
        for alt in schemas[name]["properties"]["logit_bias"]["anyOf"]:
            if alt.get("type") == "object":
                alt["propertyNames"] = {"pattern": "^[0-9]{1,2}$"}  # < 100 <= N_VOCAB
    return doc


def _walk_integers(schema: Any) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            schema.update(minimum=0, maximum=N_VOCAB - 1)
        for value in schema.values():
            _walk_integers(value)
    elif isinstance(schema, list):
        for value in schema:
            _walk_integers(value)


def streamed(doc: dict[str, Any], stored: Stored | None) -> dict[str, Any]:
    doc = in_vocabulary(doc, stored)
    for name in STREAMING:
        schema = doc["components"]["schemas"][name]
        schema["properties"]["stream"] = {"const": True}
        schema["required"] = [*schema["required"], "stream"]
    return doc


def every_field(doc: dict[str, Any], stored: Stored | None) -> dict[str, Any]:
    doc = in_vocabulary(doc, stored)
    for name in BODIES:
        schema = doc["components"]["schemas"][name]
        schema["required"] = list(schema["properties"])
        if name in AGENT_BODIES and "tools" in schema["properties"]:
            # The synthetic model's template serves no tools (a 400 naming them, checked by the negative
            # cases), and a tool_choice other than auto or none needs tools: with every field present, most
            # bodies would be refused for that alone. Tools are proven by the SDK tests on a tool format.
            schema["properties"]["tools"] = {"type": "null"}
            schema["properties"]["tool_choice"] = {"type": "null"}
    return doc


DOCUMENTS: dict[str, Callable[[dict[str, Any], Stored | None], dict[str, Any]]] = {
    "as served": lambda doc, stored: doc,
    "served names": served_names,
    "streamed": streamed,
    "every field": every_field,
}


def _variants(op: Op) -> list[str]:
    if op.body is not None:
        return list(DOCUMENTS) if op.body in STREAMING else ["as served", "served names", "every field"]
    return ["as served", "served names"] if op.params else ["as served"]


def schema_for(gw: RunningGateway, variant: str, stored: Stored | None = None) -> Any:
    served = httpx.get(f"{gw.base_url}/openapi.json", timeout=30).json()
    assert served == build_document()
    schema = schemathesis.openapi.from_dict(DOCUMENTS[variant](served, stored))
    # its default cuts a stream at 20 events: read each to its end
    schema.config.max_stream_events = 1_000_000
    return schema


# --- sending and checking one case ---------------------------------------------------------------------


def _validator(name: str) -> jsonschema.Draft202012Validator:
    resource = referencing.Resource.from_contents(build_document(), referencing.jsonschema.DRAFT202012)
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(DOC_URI, resource)
    return jsonschema.Draft202012Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=registry
    )


EVENT_DATA = {op.path: _validator(op.event_data) for op in OPERATIONS if op.event_data}
ERROR = _validator("ErrorResponse")


# The events that may end a typed stream (Anthropic's, the Responses API's), which has no [DONE]
LAST_EVENTS = {
    "/v1/messages": {"message_stop", "error"},
    "/v1/responses": {"response.completed", "response.incomplete", "response.failed"},
}


def check_typed_events(path: str, text: str) -> None:
    """Anthropic's or the Responses API's stream: ``event: <type>`` and ``data: <that type's event>``, each
    of the schema the document names, in one order (sequence_number from 0), ended by a final event."""
    events = [event.split("\n") for event in text.split("\n\n") if event]
    assert events, text
    for i, (kind, data) in enumerate(events):
        value = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {value['type']}", text[-500:]
        EVENT_DATA[path].validate(value)
        assert value.get("sequence_number", i) == i
        assert (value["type"] in LAST_EVENTS[path]) == (i == len(events) - 1), text[-500:]


def check_events(path: str, text: str) -> None:
    """A /v1 stream: events of the schema the document names (``x-event-data``), then ``[DONE]``; an error
    event may come last before it."""
    if path in LAST_EVENTS:
        check_typed_events(path, text)
        return
    data = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", text[-500:]
    for i, event in enumerate(data[:-1]):
        value = json.loads(event)
        if "error" in value:
            ERROR.validate(value)
            assert i == len(data) - 2, f"events after an error event: {text[-500:]}"
        else:
            EVENT_DATA[path].validate(value)


def _follows(case: Any) -> bool:
    return str((case.query or {}).get("follow", "false")).lower() in ("1", "true", "yes")


def send(case: Any, gw: RunningGateway, session: requests.Session) -> Any:
    """Send ``case`` and check its answer."""
    if case.operation.path.endswith("/logs") and _follows(case):
        case.query = {**case.query, "follow": "false"}  # a live tail never ends; see the module doc
    hang = f"hang: {case.method} {case.formatted_path} query={case.query} body={case.body!r}"
    try:
        response = case.call(base_url=gw.base_url, session=session, timeout=CLIENT_TIMEOUT)
    except requests.Timeout as exc:
        raise AssertionError(f"{hang}: no answer within {CLIENT_TIMEOUT}s") from exc
    # schemathesis reads an event stream until the timeout and then says it was cut short
    assert not response.stream_cut_short, f"{hang}: the stream had not ended after {CLIENT_TIMEOUT}s"
    stream = response.headers.get("content-type", [""])[0].startswith("text/event-stream")
    # An OpenAPI 3.1 event-stream schema is each event's ({data, event, id}) to schemathesis, the whole
    # stream (a string) to this document: each event's data is checked by check_events instead.
    checks = [c for c in CHECKS if not (stream and c is response_schema_conformance)]
    case.validate_response(response, checks=checks)
    if stream:
        check_events(case.operation.path, response.content.decode())
    return response


# --- the tests -----------------------------------------------------------------------------------------

CASES = [
    pytest.param(op, mode, variant, id=f"{op.method.upper()} {op.path} {mode.value} {variant}")
    for op in OPERATIONS
    for variant in _variants(op)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or op.params or op.body  # nothing to make invalid otherwise
]


@pytest.mark.parametrize(("op", "mode", "variant"), CASES)
def test_no_5xx_no_hang_and_answers_as_documented(
    gateway: RunningGateway, op: Op, mode: GenerationMode, variant: str
) -> None:
    stored = Stored(gateway) if op.path.startswith("/v1/responses") and variant != "as served" else None
    operation = schema_for(gateway, variant, stored)[op.path][op.method.upper()]
    statuses: list[int] = []
    with requests.Session() as session:

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            statuses.append(send(case, gateway, session).status_code)

        run()
    # hypothesis sends each distinct case once: an operation without parameters has one
    assert len(statuses) >= (EXAMPLES_PER_OPERATION // 2 if op.params or op.body else 1), statuses
    if variant in ("streamed", "every field") and mode is GenerationMode.POSITIVE:
        # valid bodies for served models: the engine answered (not only the validation)
        assert statuses.count(200) >= len(statuses) // 3, statuses


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op.body], ids=lambda op: op.path)
def test_the_documents_examples_are_served(gateway: RunningGateway, op: Op) -> None:
    operation = schema_for(gateway, "as served")[op.path]["POST"]
    example = operation.definition.raw["requestBody"]["content"]["application/json"]["example"]
    for body in [example, {**example, "stream": True}] if op.events else [example]:
        with requests.Session() as session:
            response = send(operation.Case(body=body, media_type="application/json"), gateway, session)
        assert response.status_code == 200, response.content
        assert response.headers["content-type"][0].startswith(
            "text/event-stream" if body.get("stream") else "application/json"
        )


def test_a_followed_log_answers_its_head_at_once(gateway: RunningGateway) -> None:
    url = f"{gateway.base_url}/admin/models/{CHAT}/logs"
    with httpx.stream("GET", url, params={"follow": "true"}, timeout=CLIENT_TIMEOUT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")


# --- what the fuzzer found ------------------------------------------------------------------------------


def _post(gw: RunningGateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/{path}", json=body, timeout=CLIENT_TIMEOUT)


@pytest.mark.parametrize(
    "prompt", [[-139], [N_VOCAB], [377504], [2**40], [[5], [-1]]], ids=lambda p: json.dumps(p)
)
def test_a_prompt_of_token_ids_outside_the_vocabulary_is_a_400(gateway: RunningGateway, prompt: Any) -> None:
    """Found by this fuzzer: they were a 502 from the engine ('llama_decode returned -1', or an int32
    OverflowError)."""
    r = _post(gateway, "completions", {"model": CHAT, "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize("prompt", [[[]], [[5], []]], ids=lambda p: json.dumps(p))
def test_a_prompt_with_an_empty_list_of_token_ids_is_a_400(gateway: RunningGateway, prompt: Any) -> None:
    r = _post(gateway, "completions", {"model": CHAT, "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("prompt")  # prompt[i]: the list that is empty


@pytest.mark.parametrize("path", ["completions", "chat/completions"])
def test_a_logit_bias_outside_the_vocabulary_is_a_400(gateway: RunningGateway, path: str) -> None:
    """Found by this fuzzer: llama-cpp-python's sampler callback raised IndexError on every token (printed,
    then ignored), and the answer was a 200 with the bias silently dropped."""
    prompt = {"prompt": "hi"} if path == "completions" else {"messages": [{"role": "user", "content": "hi"}]}
    r = _post(gateway, path, {"model": CHAT, **prompt, "max_tokens": 2, "logit_bias": {"80314": 5}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "logit_bias"


def test_a_repeat_penalty_that_breaks_sampling_is_a_400(gateway: RunningGateway) -> None:
    body = {
        "model": CHAT,
        "prompt": "hi",
        "max_tokens": 2,
        "repeat_penalty": 1.966109688146203e307,
        "top_k": 2432902008176639999,
        "top_p": 2.821334388842069e-246,
    }
    r = _post(gateway, "completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in ("repeat_penalty", "top_k")


@pytest.mark.parametrize("thinking", ["on", [1], 5, None], ids=lambda t: json.dumps(t))
def test_a_thinking_that_is_not_an_object_is_a_400(gateway: RunningGateway, thinking: Any) -> None:
    """Found by this fuzzer: a string or a list was a 500 (AttributeError in the translation)."""
    body = {
        "model": CHAT,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": thinking,
    }
    r = _post(gateway, "messages", body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "key"), [("messages", "max_tokens"), ("responses", "max_output_tokens")])
def test_a_whole_number_written_as_a_float_is_a_token_limit(
    gateway: RunningGateway, path: str, key: str
) -> None:
    """Found by this fuzzer: JSON Schema's integer (which the document says) allows 2.0; it was a 400."""
    prompt = {"messages": [{"role": "user", "content": "hi"}]} if path == "messages" else {"input": "hi"}
    r = _post(gateway, path, {"model": CHAT, **prompt, key: 2.0})
    assert r.status_code == 200, r.text
