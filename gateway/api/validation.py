"""Validation of OpenAI request bodies. The first problem becomes a 400 naming the offending ``param`` the way
OpenAI does.

Two depths, by who runs the model:

- ``validate``: the in-process engine (``llama_cpp``), where the gateway *is* the OpenAI server. Every field
  of OpenAI's request schema is either acted on, ignored on purpose because ignoring it changes nothing the
  client can observe (``user``, ``metadata``, ``store``, ``service_tier``, ``prediction``, ...: each says
  why below), or refused with a 400 that names the field and the kinds that forward it to an engine that may
  do it. Unknown fields are refused too: a field the engine never sees must not look accepted. The models are
  strict where OpenAI is: ``"stream": "yes"`` or ``"n": "2"`` is a 400 (an integer is a valid number).
- ``check_passthrough``: HTTP upstreams (llama-server, vLLM, remote APIs) are OpenAI servers themselves and
  support more than this gateway knows (logprobs, tools, guided decoding, ...). Only what the gateway acts on
  is checked (model, stream, the prompt field); the rest is the upstream's to judge, and its 400s come back in
  the OpenAI shape tagged ``source: upstream``. The original bytes are forwarded untouched.

What depends on the model's chat format (``tools`` needs ``chat_format: chatml-function-calling``) is checked
by the engine's replica (``backends.llama_cpp.tools.check``), which knows the format; the README's table "What
each backend kind does with each request field" lists every field.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from backends.errors import InvalidRequest

FORWARDED = "the llama_server, container and remote kinds forward it to their engine"

# Why a known OpenAI field is refused by the in-process engine, by its name.
UNSUPPORTED: dict[str, str] = {
    "audio": "it writes text only; the remote kind forwards audio output to an API that speaks",
    "web_search_options": "it cannot search the web; the remote kind forwards it to an API that can",
    "reasoning_effort": f"llama-cpp-python has no reasoning budget; {FORWARDED}",
    "verbosity": f"llama-cpp-python has no verbosity control; {FORWARDED}",
    "functions": "deprecated by OpenAI: send 'tools' (served with chat_format chatml-function-calling)",
    "function_call": "deprecated by OpenAI: send 'tool_choice' (with 'tools')",
    "suffix": f"llama-cpp-python's fill-in-the-middle is unfinished; {FORWARDED}",
    "dimensions": f"the model's embedding size is fixed; {FORWARDED}",
}
# Hints for values outside what the engine does, by the param with its list indices removed.
LIMITS: dict[str, str] = {
    "modalities": UNSUPPORTED["audio"],
    "best_of": f"best_of > 1 is not supported by the llama_cpp kind; {FORWARDED}",
    "echo": f"echo is not supported by the llama_cpp kind; {FORWARDED}",
    "tools.type": "the llama_cpp kind calls function tools only; the llama_server kind serves others",
    "messages.content.type": (
        "the llama_cpp kind reads text only; the llama_server kind reads images and audio with a "
        "multimodal projector (--mmproj in extra_args), and the remote kind forwards them"
    ),
}


def _whole(value: Any) -> Any:
    # JSON has one number type: 2.0 is an integer to JSON Schema (and to OpenAI), "2" and true are not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = BeforeValidator(_whole)
Int = Annotated[int, Whole]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Body(_Strict):
    model: str = Field(min_length=1)
    user: str | None = Field(None, description="Ignored by the engine (used for session affinity).")


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = Field(None, description="Ignored: no obfuscation padding is added.")


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = Field(None, description="Ignored: the engine always holds to the schema.")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Body):
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=16), Whole] = 1
    max_tokens: Annotated[int, Field(ge=1), Whole] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: Int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # Token ids (strings, as OpenAI sends them) to a bias; another key is a 400, not an engine error.
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]] | None
    ) = None
    # llama.cpp's own samplers, as llama-server and llama-cpp-python's server take them.
    top_k: Annotated[int, Field(ge=0, le=1 << 20), Whole] | None = None  # bounded: no vocabulary is larger
    min_p: float | None = Field(None, ge=0, le=1)
    # llama.cpp's own range is about 1-2; past 10 it only slows sampling down (1e307 made it 40x slower)
    repeat_penalty: float | None = Field(None, ge=0, le=10)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


class ChatMessage(BaseModel):
    # name, tool_calls, tool_call_id, refusal, ...: the chat template's to render.
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | RefusalPart] | None = None


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(None, description="Ignored: the engine always holds to the parameters.")


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class Prediction(_Strict):
    type: Literal["content"]
    content: str | list[TextPart]


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), Whole] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), Whole] | None = Field(
        None, description="Needs logprobs: true."
    )
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[Literal["text"]] | None = None
    # Ignored on purpose: nothing a client can observe depends on them here.
    metadata: dict[str, str] | None = Field(None, description="Ignored: nothing is stored.")
    store: bool | None = Field(None, description="Ignored: nothing is stored.")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        None, description="Ignored: every request is served alike."
    )
    prediction: Prediction | None = Field(None, description="Ignored: it could only make the answer faster.")
    prompt_cache_key: str | None = Field(None, description="Ignored: llama.cpp reuses the cached prefix.")
    safety_identifier: str | None = Field(None, description="Ignored, as user.")


class CompletionRequest(_Sampling):
    # Token-id prompts must hold tokens: an empty list crashed llama-cpp-python's sampler (a 502).
    prompt: (
        str
        | list[str]
        | Annotated[list[Int], Field(min_length=1)]
        | Annotated[list[Annotated[list[Int], Field(min_length=1)]], Field(min_length=1)]
    )
    logprobs: Annotated[int, Field(ge=0, le=5), Whole] | None = None
    echo: Literal[False] | None = None
    best_of: Annotated[Literal[1], Whole] | None = None


class EmbeddingRequest(_Body):
    input: str | list[str]  # token-id input is not supported by llama-cpp-python's embed()
    encoding_format: Literal["float", "base64"] = "float"


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param(loc: tuple[int | str, ...]) -> str:
    """``messages[0].content[1].type`` from pydantic's location, without its union-branch tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_NAMES and not part[:1].isupper():
            out += f".{part}" if out else part
    return out


def _worst(errors: list[ErrorDetails]) -> ErrorDetails:
    """The error to report: the first failing field's deepest one (a union's deepest branch says most)."""
    top = errors[0]["loc"][:1]
    return max((e for e in errors if e["loc"][:1] == top), key=lambda e: len(e["loc"]))


def _invalid(err: ErrorDetails) -> InvalidRequest:
    param = _param(err["loc"])
    if err["type"] == "extra_forbidden":
        reason = UNSUPPORTED.get(param, f"unknown field; {FORWARDED}")
        return InvalidRequest(f"'{param}' is not supported by the llama_cpp kind: {reason}", param=param)
    hint = LIMITS.get(re.sub(r"\[\d+\]", "", param))
    message = f"invalid '{param}': {err['msg']}" + (f" ({hint})" if hint else "")
    return InvalidRequest(message, param=param)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        again = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise InvalidRequest(f"the key '{again}' appears twice in one object of the body", param=again)
    return obj


# The keys the gateway reads in a body it passes on (routing, streaming, metrics, affinity): one of them twice
# could be read one way here and the other way by the upstream's parser. Any other key is read by one side
# only (the upstream for a passed-on body; the gateway's own parse for the in-process engine).
READ_KEYS = tuple(
    f'"{k}"'.encode()
    for k in ("model", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "user",
              "messages", "prompt", "input")
)  # fmt: skip


def need(condition: bool, message: str, param: str) -> None:
    """A 400 naming ``param`` unless ``condition`` holds (the translated APIs' field checks)."""
    if not condition:
        raise InvalidRequest(message, param=param)


def decode(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, with a non-empty string ``model``. A key the gateway reads, twice
    in one object, is a 400: the gateway would route on one value ({"model": "a", "model": "b"}: the last)
    while an upstream's parser may read the other. Only a body where such a key's name appears twice (a
    byte count, in C) pays for the slower parse that finds duplicates."""
    twice = max(map(raw.count, READ_KEYS)) > 1
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys) if twice else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("invalid 'model': a model name (a non-empty string) is required", param="model")
    return data


PROMPT_FIELD = {"chat/completions": "messages", "completions": "prompt", "embeddings": "input"}


def check_passthrough(data: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The checks on a body bound for an HTTP upstream: what the gateway itself reads."""
    if not isinstance(data.get("stream", False), bool):
        raise InvalidRequest("invalid 'stream': Input should be a valid boolean", param="stream")
    field = PROMPT_FIELD[endpoint]
    value = data.get(field)
    if value is None or value == "" or value == []:
        raise InvalidRequest(f"invalid '{field}': Field required", param=field)
    if field == "messages" and not isinstance(value, list):
        raise InvalidRequest("invalid 'messages': Input should be a valid list", param="messages")
    return data


def validate(data: dict[str, Any], schema: type[_Body]) -> dict[str, Any]:
    """Full validation for the in-process engine; returns the body with defaults for the fields it needs."""
    try:
        parsed = schema.model_validate(data)
    except ValidationError as exc:
        raise _invalid(_worst(exc.errors())) from None
    if isinstance(parsed, EmbeddingRequest) and parsed.input in ("", []):
        raise InvalidRequest("'input' must not be empty", param="input")
    return parsed.model_dump(exclude_none=True, by_alias=True)
