"""The response bodies of ``/v1`` and ``/admin``, as pydantic models, for the OpenAPI document only.

Nothing serializes through these models: the handlers build plain dicts (and an HTTP upstream's body is passed
through untouched), so these models say what a client may rely on, and ``gateway.http.openapi`` turns them
into JSON schemas. The ``/v1`` shapes follow OpenAI's (``CreateChatCompletionResponse``, ``Model``, ...) with
the fields the gateway's in-process engine writes (``backends/llama_cpp/jobs.py``); fields an upstream may add
(``system_fingerprint``, ``tool_calls``, ...) are allowed because no model forbids extra fields. Open-ended
strings (``finish_reason``, ``object``) are not enums where an upstream may answer something this gateway does
not write itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# gateway.scheduling.lifecycle.State (a test checks)
ModelState = Literal["unloaded", "loading", "ready", "draining"]

# --- errors -------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, rate_limit_error, server_error"
    )
    param: str | None = Field(description="the offending request field, when one is to blame")
    code: str | None = Field(
        description="e.g. model_not_found, queue_full, model_load_failed, upstream_error"
    )
    source: Literal["gateway", "upstream"] = Field(
        description="who failed: the gateway itself, or the engine behind it"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- /v1 ----------------------------------------------------------------------------------------------------


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(description="the model's own, before logit_bias, penalties and temperature")
    bytes: list[int] | None = Field(description="the token's UTF-8 bytes (it may hold part of a character)")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the top_logprobs most likely tokens, best first")


class ChatChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = Field(description="the tokens of the content, in order")
    refusal: list[TokenLogprob] | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatChoiceLogprobs | None = Field(description="null unless the request asked for logprobs")
    finish_reason: str | None = Field(description="stop, length, tool_calls, or what the upstream says")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage


class ToolCallFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A call's first delta carries its ``id``, ``type`` and ``function.name``; later ones add arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


class ChatCompletionDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChatCompletionDelta
    logprobs: ChatChoiceLogprobs | None = Field(None, description="the tokens this chunk completes")
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """The data of one ``text/event-stream`` event; the stream ends with ``data: [DONE]``. With
    ``stream_options.include_usage`` the last chunk before it has empty ``choices`` and the ``usage``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="each token's offset in the choice's text, in characters")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = Field(
        None, description="null unless the request asked for logprobs"
    )
    finish_reason: str | None


class Completion(BaseModel):
    """A ``/v1/completions`` answer; streamed, each event's data has this shape too, with ``usage`` only in
    the last chunk (``stream_options.include_usage``), then ``data: [DONE]``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32s")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(BaseModel):
    id: str = Field(description="the name or alias a request's 'model' field may use")
    object: Literal["model"]
    created: int
    owned_by: str
    root: str = Field(description="the model this name serves (an alias's target)")
    status: ModelState


class ListModelsResponse(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Health(BaseModel):
    status: Literal["ok"]


# --- /admin -------------------------------------------------------------------------------------------------


class DeviceMemory(BaseModel):
    device: str = Field(description="a memory budget: this host, an engine's RAM, or one GPU")
    budget_bytes: int
    used_bytes: int
    host_down: bool = Field(
        False, description="its host (a swarm node) is down: its budget is 0 until it is back"
    )


class DeviceHolder(BaseModel):
    model: str
    state: Literal["loading", "ready", "draining", "reserved"] = Field(
        description="reserved: memory an eviction freed for this model's load, kept for it until it starts"
    )
    bytes: int


class Device(DeviceMemory):
    reserved_bytes: int = Field(description="of used_bytes, what loads under way hold (loading, or kept)")
    models: list[DeviceHolder] = Field(description="what holds the device's memory")


class DeviceList(BaseModel):
    devices: list[Device]


class ActivityEntry(BaseModel):
    id: int = Field(description="increasing: ask for the newer ones with ?since=<id>")
    time: float = Field(description="when it arrived (Unix seconds)")
    model: str = Field(description="empty when it was refused before it named a model")
    endpoint: str
    key: str | None = Field(description="the name of its API key (never the key); null without keys")
    status: int
    duration_seconds: float
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_seconds: float | None
    tokens_per_second: float | None = Field(
        description="completion tokens over the time after the first (a stream), else after scheduling"
    )


class ActivityList(BaseModel):
    size: int = Field(description="how many are kept (GATEWAY_ACTIVITY_SIZE)")
    entries: list[ActivityEntry] = Field(description="oldest first")


class ModelSeries(BaseModel):
    tokens_per_second: list[float | None]
    queued: list[int | None]
    in_flight: list[int | None]


class DeviceSeries(BaseModel):
    used_bytes: list[int | None]


class Series(BaseModel):
    interval_seconds: float
    time: list[float] = Field(description="each sample's time (Unix seconds); the lists below align with it")
    models: dict[str, ModelSeries] = Field(description="models that held memory or had requests")
    devices: dict[str, DeviceSeries]


class Session(BaseModel):
    key: str | None = Field(description="the name of the key the request carried (null: none needed)")
    actions: bool = Field(description="false: read-only (GATEWAY_CONSOLE_READ_ONLY, no key)")


class ManifestProblem(BaseModel):
    file: str
    field: str | None
    reason: str


class AdminReplica(BaseModel):
    index: int
    healthy: bool
    reason: str | None = Field(description="why it is out of rotation, when it is")
    outstanding: int
    capacity: int
    served: int
    failures: int = Field(description="consecutive failed requests")
    ejected_for: float = Field(description="seconds left out of rotation after failures")
    url: str | None
    metrics_url: str | None
    pid: int | None
    container: str | None
    engine: str | None = Field(description="the engine or swarm node (<engine>.<node>) it runs on")
    devices: list[str]
    exit_status: str | None
    restarts: int | None = Field(None, description="times its engine restarted it by itself (a Swarm task)")
    last_exit: str | None = Field(None, description="why its engine's last restart was needed")
    kv_cache_usage: float | None
    memory_bytes: int | None
    in_process: bool = Field(description="runs in the gateway's own process")


class Budget(BaseModel):
    estimate_bytes: int = Field(description="the estimate before any load (or the manifest's memory)")
    learned_bytes: int | None = Field(
        description="the peak this manifest version was measured to hold here, all replicas together"
    )
    budget_bytes: int = Field(description="what its next load is budgeted with")
    uses: Literal["estimate", "learned", "manifest"] = Field(
        description="learned: the peak plus the learned margin, where that is above the estimate"
    )


class AdminModel(BaseModel):
    name: str
    aliases: list[str]
    kind: str = Field(description="the backend kind: llama_cpp, llama_server, remote, container")
    state: ModelState
    pinned: bool
    memory_bytes: int = Field(
        description="what it holds in the budget; unloaded, what its next load would (budget.budget_bytes)"
    )
    memory_by_device: dict[str, int]
    budget: Budget | None = Field(description="the figure its loads are budgeted with, and its source")
    measured_bytes: int | None
    in_flight: int
    queued: int
    interactive_reserve: int = Field(
        description="slots kept for interactive requests (its manifest's, else the gateway's default); "
        "batch ones may hold the rest, and always at least one"
    )
    preempted: int = Field(
        description="batch requests cut for an interactive one since it loaded (they ran again: "
        "GATEWAY_PREEMPT_BATCH)"
    )
    replicas: list[AdminReplica]
    idle_seconds: float | None
    idle_ttl: float | None
    loads: int
    last_error: str | None
    load_seconds: float | None
    waiting_seconds: float | None = Field(
        description="how long the request waiting longest for the model itself (its load, a swap) has waited"
    )
    loading_seconds: float | None = Field(description="while it loads: since the load began")
    load_eta_seconds: float | None = Field(
        description="while it loads: what is left by its last load's time (null before a first load)"
    )
    load_phase: str | None = Field(
        description='while it loads: what the load is doing, as its kind says ("pulling image ...", '
        '"starting container", "starting process", "loading weights", "loading weights / warming up")'
    )
    fits: bool = Field(description="false: it cannot fit in any budget, even with everything else unloaded")
    never_fits_reason: str | None


class AdminModelList(BaseModel):
    devices: list[Device]
    models: list[AdminModel]
    manifest_problems: list[ManifestProblem]


class ReplicaLog(BaseModel):
    index: int
    log: list[str] = Field(description="the last lines it wrote, oldest first")


class ModelLogs(BaseModel):
    replicas: list[ReplicaLog]


class PlanBlocker(BaseModel):
    model: str
    reason: str = Field(description="why it cannot be evicted (pinned, ...)")


class PlanPlacement(BaseModel):
    devices: list[str]


class Plan(BaseModel):
    model: str
    fits: bool
    already_loaded: bool
    evict: list[str]
    drain: list[str] = Field(description="models to evict that have requests in flight")
    blocked_by: list[PlanBlocker]
    placement: list[PlanPlacement] = Field(description="per replica, the devices it would be placed on")
    memory_after: list[DeviceMemory]
    reason: str | None
    budget: Budget | None = Field(description="the figure this load is budgeted with, and its source")


class ReloadResult(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: int
    problems: list[ManifestProblem]


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CreateEmbeddingResponse,
    Model,
    ListModelsResponse,
    Health,
    AdminModel,
    AdminModelList,
    DeviceList,
    ActivityList,
    Series,
    Session,
    ModelLogs,
    Plan,
    ReloadResult,
)
