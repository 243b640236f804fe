"""Anthropic's Messages API and OpenAI's Responses API in the OpenAPI document: their request and answer
bodies as pydantic models, for ``gateway.http.openapi`` only (nothing validates or serializes through them).

Requests are as loose as the handlers and as strict as the in-process engine: a body is first translated
(``gateway.api.anthropic.to_chat``, ``gateway.api.responses.to_chat``, which refuse what they cannot honour
and accept what changes nothing: ``KNOWN``, ``IGNORED``, ``REFUSED`` there), then the chat completion it
becomes is validated as ``/v1/chat/completions`` validates (``ChatRequest``): so a tool's name follows
``FunctionDef``'s pattern, ``temperature`` is within [0, 2], ``top_k`` within [0, 2^20]. Parts the
translation reads field by field (content blocks, input items, tools) take extra fields, which it ignores
(``cache_control``, ``citations``, an item's ``status``); the bodies themselves take no unknown field.

Answers are as ``from_chat`` / ``response_object`` and the stream translators (``anthropic_stream``,
``responses_stream``) write them. Fields of a response that echo the request are as loose as the handler's
echo (it echoes what it does not itself check).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # gateway.api.validation.FunctionDef: the chat request's tool names
IGNORED = "Accepted and ignored: it changes nothing in an answer from these engines."


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    """A part the translation reads field by field: other fields are ignored."""

    model_config = ConfigDict(extra="allow", strict=True)


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(ge=1)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # a field that may be left out, but not null: its default is no value


NoDefault = Field(None, json_schema_extra=_no_default)

# A field the gateway refuses unless its value asks for nothing (null, false, 0, {} or []).
Off = Annotated[Any, WithJsonSchema({"enum": [None, False, 0, {}, []]})]


# --- Anthropic: POST /v1/messages, /v1/messages/count_tokens ----------------------------------------------


class TextBlockParam(_Open):
    type: Literal["text"]
    text: str


class ToolResultBlockParam(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlockParam] = Field("", description="text only: images are refused")
    is_error: bool | None = Field(None, description="true: the content is sent to the model as 'Error: ...'")


class ToolUseBlockParam(_Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class UserMessageParam(_Open):
    role: Literal["user"]
    content: str | Annotated[list[TextBlockParam | ToolResultBlockParam], Field(min_length=1)] = Field(
        description="text and tool_result blocks (image, document: a 400 naming the block)"
    )


class AssistantMessageParam(_Open):
    role: Literal["assistant"]
    content: str | list[TextBlockParam | ToolUseBlockParam] = Field(
        description="text and tool_use blocks (thinking blocks: a 400)"
    )


class AnthropicTool(_Open):
    """A client tool; server tools (``web_search_...``, ``bash_...``) are a 400."""

    type: Literal["custom"] | SkipJsonSchema[None] = NoDefault
    name: str = Field(pattern=TOOL_NAME)
    input_schema: dict[str, Any]
    description: str | None = None


class ToolChoiceAuto(_Open):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Open):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Open):
    type: Literal["none"]


class ToolChoiceTool(_Open):
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class AnthropicMetadata(_Open):
    user_id: str | None = Field(None, description="Session affinity, as a chat request's user.")


class ThinkingDisabled(_Open):
    type: Literal["disabled"]


class OutputConfig(_Closed):
    effort: Any = Field(None, description="Ignored: it tunes reasoning, which these models do not do.")


class MessagesRequest(_Closed):
    model: str = Field(min_length=1)
    max_tokens: Positive
    messages: Annotated[list[UserMessageParam | AssistantMessageParam], Field(min_length=1)]
    system: str | list[TextBlockParam] | None = None
    stop_sequences: list[str] | None = None
    temperature: Temperature | None = Field(
        None, description="Anthropic's range is [0, 1]; the engine's [0, 2]."
    )
    top_p: TopP | None = None
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] | None = None
    stream: bool | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceNone | ToolChoiceTool | None = None
    metadata: AnthropicMetadata | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingDisabled | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_no_default,
        description="Only {type: disabled}: these models do not expose extended thinking.",
    )
    service_tier: Any = Field(None, description=IGNORED)
    container: Any = Field(None, description=IGNORED)
    context_management: Any = Field(None, description=IGNORED)
    cache_control: Any = Field(None, description=IGNORED)
    diagnostics: Any = Field(None, description=IGNORED)
    inference_geo: Any = Field(None, description=IGNORED)
    speed: Any = Field(None, description=IGNORED)
    user_profile_id: Any = Field(None, description=IGNORED)
    workspace_id: Any = Field(None, description=IGNORED)


class CountTokensRequest(MessagesRequest):
    """A Messages body whose prompt is counted by the model itself (the engine generates one token)."""

    max_tokens: Any = Field(None, description="Ignored: the count generates one token.")
    stream: Any = Field(None, description="Ignored: the count is never streamed.")


# answers


class TextBlock(BaseModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(description="the arguments the model wrote ({} in a content_block_start)")


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


StopReason = Literal["end_turn", "max_tokens", "tool_use"]


class Message(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str = Field(description="the name the request asked for")
    content: list[TextBlock | ToolUseBlock]
    stop_reason: StopReason | None = Field(description="null only in message_start")
    stop_sequence: None
    usage: AnthropicUsage


class MessageTokensCount(BaseModel):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str = Field(
        description="invalid_request_error, authentication_error, not_found_error, request_too_large, "
        "rate_limit_error, overloaded_error, timeout_error, api_error"
    )
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


class MessageStart(BaseModel):
    type: Literal["message_start"]
    message: Message


class ContentBlockStart(BaseModel):
    type: Literal["content_block_start"]
    index: int
    content_block: TextBlock | ToolUseBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"]
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"]
    partial_json: str


class ContentBlockDelta(BaseModel):
    type: Literal["content_block_delta"]
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(BaseModel):
    type: Literal["content_block_stop"]
    index: int


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason
    stop_sequence: None


class MessageDelta(BaseModel):
    type: Literal["message_delta"]
    delta: MessageDeltaBody
    usage: AnthropicUsage


class MessageStop(BaseModel):
    type: Literal["message_stop"]


class MessageStreamEvent(
    RootModel[
        Annotated[
            MessageStart
            | ContentBlockStart
            | ContentBlockDelta
            | ContentBlockStop
            | MessageDelta
            | MessageStop
            | AnthropicErrorResponse,
            Field(discriminator="type"),
        ]
    ]
):
    """The data of one event (``event: <its type>``): ``message_start``, per block ``content_block_start``,
    ``content_block_delta``..., ``content_block_stop``, then ``message_delta`` and ``message_stop``; or an
    ``error`` event, which ends the stream."""


# --- OpenAI Responses: /v1/responses ------------------------------------------------------------------------


class InputTextPart(_Open):
    type: Literal["input_text"]
    text: str


class OutputTextPart(_Open):
    type: Literal["output_text"]
    text: str


class RefusalPartParam(_Open):
    type: Literal["refusal"]
    refusal: str


class InputMessageParam(_Open):
    """A message; ``type`` may be left out. Images, files and audio parts are a 400."""

    type: Literal["message"] | SkipJsonSchema[None] = NoDefault
    role: Literal["user", "system", "developer"]
    content: str | list[InputTextPart]
    id: str | None = None


class OutputMessageParam(_Open):
    """An earlier answer of the assistant's, given back."""

    type: Literal["message"] | SkipJsonSchema[None] = NoDefault
    role: Literal["assistant"]
    content: str | list[OutputTextPart | RefusalPartParam]
    id: str | None = None


class FunctionCallParam(_Open):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="JSON text")
    id: str | None = None


class FunctionCallOutputParam(_Open):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputTextPart | OutputTextPart]
    id: str | None = None


InputItemParam = InputMessageParam | OutputMessageParam | FunctionCallParam | FunctionCallOutputParam


class FunctionToolParam(_Open):
    """A function tool; built-in tools (web_search, file_search, ...) are a 400."""

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: Any = Field(None, description="Ignored: the engine always holds to the parameters.")


class FunctionToolChoice(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormatText(_Open):
    type: Literal["text"]


class TextFormatJsonObject(_Open):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Open):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")
    name: Annotated[str, Field(max_length=64)] | None = Field(None, description='"response" when empty')
    strict: Any = Field(None, description="Ignored: the engine always holds to the schema.")


class TextConfig(_Closed):
    format: TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None = None
    verbosity: Any = Field(None, description=IGNORED)


class ResponsesRequest(_Closed):
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


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/responses": ResponsesRequest,
    "/v1/responses/input_tokens": ResponsesInputTokensRequest,
}
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Message,
    MessageTokensCount,
    MessageStreamEvent,
    AnthropicErrorResponse,
    Response,
    ResponseInputTokens,
    ResponseDeleted,
    InputItemList,
    ResponseStreamEvent,
)
