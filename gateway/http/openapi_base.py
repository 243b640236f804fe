"""The pieces the OpenAPI models of the agent APIs share (``openapi_anthropic``, ``openapi_responses``).

Requests are as loose as the handlers and as strict as the in-process engine: a body is first translated
(``gateway.api.anthropic.to_chat``, ``gateway.api.responses.to_chat``, which refuse what they cannot honour
and accept what changes nothing: ``KNOWN``, ``IGNORED``, ``REFUSED`` there), then the chat completion it
becomes is validated as ``/v1/chat/completions`` validates (``ChatRequest``): so a tool's name follows
``FunctionDef``'s pattern, ``temperature`` is within [0, 2], ``top_k`` within [0, 2^20]. Parts the
translation reads field by field (content blocks, input items, tools) take extra fields, which it ignores
(``cache_control``, ``citations``, an item's ``status``: ``Open``); the bodies themselves take no unknown
field (``Closed``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # gateway.api.validation.FunctionDef: the chat request's tool names
IGNORED = "Accepted and ignored: it changes nothing in an answer from these engines."


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Open(BaseModel):
    """A part the translation reads field by field: other fields are ignored."""

    model_config = ConfigDict(extra="allow", strict=True)


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(ge=1)]


def no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # a field that may be left out, but not null: its default is no value


NoDefault = Field(None, json_schema_extra=no_default)

# A field the gateway refuses unless its value asks for nothing (null, false, 0, {} or []).
Off = Annotated[Any, WithJsonSchema({"enum": [None, False, 0, {}, []]})]
