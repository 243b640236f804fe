"""Validation of OpenAI request bodies. The first problem becomes a 400 naming the offending ``param`` the way
OpenAI does.

Two depths, by who runs the model:

- ``validate``: the in-process engine, where the gateway *is* the OpenAI server. Every field it acts on is
  checked; unknown fields are kept (clients send extensions).
- ``check_passthrough``: HTTP upstreams (llama-server, vLLM, remote APIs) are OpenAI servers themselves and
  support more than this gateway knows (logprobs, tools, guided decoding, ...). Only what the gateway acts on
  is checked (model, stream, the prompt field); the rest is the upstream's to judge, and its 400s come back in
  the OpenAI shape tagged ``source: upstream``. The original bytes are forwarded untouched.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidRequest


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _Sampling(_Body):
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # Token ids (strings, as OpenAI sends them) to a bias; another key is a 400, not an engine error.
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]] | None
    ) = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: None = None
    echo: Literal[False] | None = None


class EmbeddingRequest(_Body):
    input: str | list[str]  # token-id input is not supported by llama-cpp-python's embed()
    encoding_format: Literal["float", "base64"] = "float"


_REASONS: dict[tuple[str, ...], str] = {
    ("logprobs",): "logprobs are not supported by this engine",
    ("echo",): "echo is not supported by this engine",
}


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part[:1].isupper() and part not in {"str", "list[str]", "list[int]", "list[list[int]]"}:
            out += f".{part}" if out else part
    return out


def decode(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, with a non-empty string ``model``."""
    try:
        data = json.loads(raw)
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
        err = exc.errors()[0]
        param = _param(err["loc"])
        reason = _REASONS.get(tuple(str(p) for p in err["loc"][:1]), err["msg"])
        raise InvalidRequest(f"invalid '{param}': {reason}", param=param) from None
    if isinstance(parsed, EmbeddingRequest) and parsed.input in ("", []):
        raise InvalidRequest("'input' must not be empty", param="input")
    return parsed.model_dump(exclude_none=True)
