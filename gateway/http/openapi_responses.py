"""OpenAI's Responses API in the OpenAPI document (``/v1/responses`` and its stored responses): its request
and answer bodies as pydantic models, for ``gateway.http.openapi`` only. Answers are as ``response_object``
and ``responses_stream`` write them; fields of a response that echo the request are as loose as the
handler's echo (it echoes what it does not itself check)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from gateway.http.openapi_base import (
    IGNORED,
    TOOL_NAME,
    Closed,
    NoDefault,
    Off,
    Open,
    Positive,
    Temperature,
    TopP,
)


class InputTextPart(Open):
    type: Literal["input_text"]
    text: str


class OutputTextPart(Open):
    type: Literal["output_text"]
    text: str


class RefusalPartParam(Open):
    type: Literal["refusal"]
    refusal: str


class InputMessageParam(Open):
    """A message; ``type`` may be left out. Images, files and audio parts are a 400."""

    type: Literal["message"] | SkipJsonSchema[None] = NoDefault
    role: Literal["user", "system", "developer"]
    content: str | list[InputTextPart]
    id: str | None = None


class OutputMessageParam(Open):
    """An earlier answer of the assistant's, given back."""

    type: Literal["message"] | SkipJsonSchema[None] = NoDefault
    role: Literal["assistant"]
    content: str | list[OutputTextPart | RefusalPartParam]
    id: str | None = None


class FunctionCallParam(Open):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="JSON text")
    id: str | None = None


class FunctionCallOutputParam(Open):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputTextPart | OutputTextPart]
    id: str | None = None


InputItemParam = InputMessageParam | OutputMessageParam | FunctionCallParam | FunctionCallOutputParam


class FunctionToolParam(Open):
    """A function tool; built-in tools (web_search, file_search, ...) are a 400."""

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: Any = Field(None, description="Ignored: the engine always holds to the parameters.")


class FunctionToolChoice(Open):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormatText(Open):
    type: Literal["text"]


class TextFormatJsonObject(Open):
    type: Literal["json_object"]


class TextFormatJsonSchema(Open):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")
    name: Annotated[str, Field(max_length=64)] | None = Field(None, description='"response" when empty')
    strict: Any = Field(None, description="Ignored: the engine always holds to the schema.")


class TextConfig(Closed):
    format: TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None = None
    verbosity: Any = Field(None, description=IGNORED)


class ResponsesRequest(Closed):
    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItemParam], Field(min_length=1)] = Field(
        description="a string (one user message) or items: messages, function calls and their outputs"
    )
    instructions: str | None = Field(None, description="The system prompt; not carried over to a next turn.")
    tools: list[FunctionToolParam] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_output_tokens: Positive | None = None
    text: TextConfig | None = None
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    stream: bool | None = None
    store: bool | None = Field(None, description="Default true: kept for previous_response_id and GET.")
    previous_response_id: str | None = Field(
        None,
        description="A stored response this turn continues (its input and output come first); one that is "
        "not stored (or was made with another API key) is a 400, code previous_response_not_found.",
    )
    user: str | None = Field(None, description="Session affinity, as a chat request's user.")
    prompt_cache_key: str | None = Field(None, description="Session affinity when user is not given.")
    truncation: Literal["disabled"] | None = None
    include: list[Literal["reasoning.encrypted_content"]] | None = Field(
        None, description="Accepted: there is no reasoning content to include."
    )
    service_tier: Any = Field(None, description=IGNORED)
    prompt_cache_retention: Any = Field(None, description=IGNORED)
    prompt_cache_options: Any = Field(None, description=IGNORED)
    stream_options: Any = Field(None, description=IGNORED)
    safety_identifier: Any = Field(None, description=IGNORED)
    context_management: Any = Field(None, description=IGNORED)
    background: Off = Field(None, description="Not supported: only an empty value.")
    conversation: Off = Field(
        None, description="Not supported (use previous_response_id): only an empty value."
    )
    prompt: Off = Field(None, description="Stored prompts are not supported: only an empty value.")
    reasoning: Annotated[
        Any,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"enum": [None, "none"]}},
                    {"enum": [None, False, 0, []]},
                ],
                "description": "These models do not reason: only {effort: none} or an empty value.",
            }
        ),
    ] = None
    top_logprobs: Off = Field(None, description="Not supported on /v1/responses: only an empty value.")
    max_tool_calls: Off = Field(None, description="Not supported: only an empty value.")
    moderation: Off = Field(None, description="Not supported: only an empty value.")
    image: Off = Field(None, description="Image generation is not supported: only an empty value.")


class ResponsesInputTokensRequest(ResponsesRequest):
    """A Responses body whose prompt is counted by the model itself (the engine generates one token)."""

    max_output_tokens: Any = Field(None, description="Ignored: the count generates one token.")
    stream: Any = Field(None, description="Ignored: the count is never streamed.")
    store: Any = Field(None, description="Ignored: a count is never stored.")


# answers


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any] | None = None


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    type: Literal["message"]
    id: str
    role: Literal["assistant"]
    status: ItemStatus
    content: list[OutputText] = Field(description="empty only in response.output_item.added")


class FunctionCall(BaseModel):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it (empty while in progress)")
    status: ItemStatus


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int | None = None


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: str = Field(description="max_output_tokens")


class Reasoning(BaseModel):
    effort: None
    summary: None


class Response(BaseModel):
    """A response; the fields after ``reasoning`` echo the request (as given, or their defaults)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    model: str = Field(description="the name the request asked for")
    output: list[OutputMessage | FunctionCall]
    usage: ResponseUsage | None = Field(description="null while in progress or failed")
    store: bool
    truncation: Literal["disabled"]
    reasoning: Reasoning
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Any = None
    tools: list[Any] | None = None
    text: dict[str, Any] | None = None
    user: Any = None
    prompt_cache_key: Any = None


class ResponseInputTokens(BaseModel):
    object: Literal["response.input_tokens"]
    input_tokens: int


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]


class InputContent(BaseModel):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None


class InputMessage(BaseModel):
    type: Literal["message"]
    id: str
    role: Literal["user", "system", "developer", "assistant"]
    status: Literal["completed"]
    content: list[InputContent]


class FunctionCallOutput(BaseModel):
    type: Literal["function_call_output"]
    id: str
    call_id: str
    output: str
    status: Literal["completed"]


class InputItemList(BaseModel):
    """One page of a stored response's input items (``order``: desc, the last item first, by default)."""

    object: Literal["list"]
    data: list[InputMessage | FunctionCall | FunctionCallOutput]
    first_id: str | None
    last_id: str | None
    has_more: bool


class _Numbered(BaseModel):
    sequence_number: int


class ResponseLifecycleEvent(_Numbered):
    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: Response


class OutputItemEvent(_Numbered):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputMessage | FunctionCall


class ContentPartEvent(_Numbered):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDeltaEvent(_Numbered):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any]


class OutputTextDoneEvent(_Numbered):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any]


class FunctionCallArgumentsDeltaEvent(_Numbered):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(_Numbered):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    name: str
    arguments: str


class ResponseStreamEvent(
    RootModel[
        ResponseLifecycleEvent
        | OutputItemEvent
        | ContentPartEvent
        | OutputTextDeltaEvent
        | OutputTextDoneEvent
        | FunctionCallArgumentsDeltaEvent
        | FunctionCallArgumentsDoneEvent
    ]
):
    """The data of one event (``event: <its type>``), numbered from 0 by ``sequence_number``:
    ``response.created``, ``response.in_progress``, the output items' events, then ``response.completed``
    (``response.incomplete`` when ``max_output_tokens`` cut it), or ``response.failed``, which ends a stream
    that failed after it began."""
