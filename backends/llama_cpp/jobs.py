"""OpenAI requests run against one ``llama_cpp.Llama`` instance, on that instance's worker thread.

Every generation runs through llama-cpp-python's streaming path, whether or not the client streams: one token
per step means a cancelled request (client gone, model evicted) stops within a token, and streamed and
non-streamed responses count usage the same way. The gateway frames the wire format itself, so every chunk
of a response carries the same ``id``/``created``, ``n`` gives ``n`` choices, and
``stream_options.include_usage`` gives a final usage chunk with empty ``choices``.

Functions here block for as long as the engine computes; they must only run on the replica's own thread.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.base import OpenAIRequest
from backends.errors import InvalidRequest
from backends.llama_cpp.logprobs import Token, TokenLogprobs, chat_logprobs, completion_logprobs
from backends.llama_cpp.tools import ToolCalls, calls_as_chunks, check_chat, messages, tool_choice

Emit = Callable[[bytes], None]

# OpenAI request fields passed through to llama-cpp-python's sampling, by their OpenAI name.
_SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "stop")
# llama.cpp extensions that llama-server and llama-cpp-python's server also accept.
_EXTENSIONS = ("top_k", "min_p", "repeat_penalty")


class Cancelled(Exception):
    """The request was cancelled (client disconnect or eviction) while generating."""


@dataclass(eq=False)
class Job:
    request: OpenAIRequest
    emit: Emit
    cancelled: threading.Event = field(default_factory=threading.Event)


class _TokenCounter:
    """Counts one generation's tokens from the engine's sampler hook (``Engine.on_sample``): the prompt's (the
    context's length when the first token is sampled) and the sampled ones. It touches no logits: a logits
    processor makes llama-cpp-python copy the whole vocabulary's logits for every token (~5% of decode)."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self.prompt_tokens: int | None = None
        self.sampled = 0

    def on_sample(self, token: int) -> None:
        if self.prompt_tokens is None:
            self.prompt_tokens = int(self._llama.n_tokens)
        self.sampled += 1


class _LogitBias:
    """``logit_bias`` as a logits processor, vectorised (llama-cpp-python 0.3.36 drops its own bias processor
    when another processor is given: ``list.extend`` returns None there; and its own copies the logits and
    loops in Python, a third of the decode speed here)."""

    def __init__(self, logit_bias: dict[str, float]) -> None:
        self._ids = np.array([int(k) for k in logit_bias], dtype=np.intp)
        self._bias = np.array(list(logit_bias.values()), dtype=np.float32)

    def __call__(self, input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        scores[self._ids] += self._bias
        return scores


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, counter: _TokenCounter, finish_reason: str | None, new_prompt: bool) -> None:
        # The end-of-generation token is sampled but is not part of the completion. (A stop string also
        # finishes with "stop"; then one real token goes uncounted.)
        eog = 1 if finish_reason in ("stop", "tool_calls") and counter.sampled > 0 else 0
        if new_prompt:  # n choices of one prompt count its tokens once, as OpenAI does
            self.prompt_tokens += counter.prompt_tokens or 0
        self.completion_tokens += counter.sampled - eog

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def check(request: OpenAIRequest, chat_format: str | None, n_vocab: int) -> None:
    """What validation cannot know without the model, as a 400 naming the field: token ids beyond its
    vocabulary (llama.cpp would fail on them, or skip the whole bias), and what its chat format cannot do."""
    body = request.body
    _in_vocabulary("logit_bias", [int(k) for k in body.get("logit_bias") or {}], n_vocab)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        _in_vocabulary("prompt", [t for p in prompt for t in (p if isinstance(p, list) else [p])], n_vocab)
    if request.endpoint == "chat/completions":
        check_chat(body, chat_format)


def _in_vocabulary(field: str, ids: list[int], n_vocab: int) -> None:
    beyond = [i for i in ids if not 0 <= i < n_vocab]
    if beyond:
        raise InvalidRequest(
            f"'{field}' holds token id {beyond[0]}, beyond the model's vocabulary (0 to {n_vocab - 1})",
            param=field,
        )


def _sampling_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    kw = {k: body[k] for k in (*_SAMPLING, *_EXTENSIONS) if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        kw["max_tokens"] = max_tokens
    return kw


_compact = json.JSONEncoder(separators=(",", ":")).encode


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + _compact(obj).encode() + b"\n\n"


def _streamed(chunks: Iterator[dict[str, Any]], cancelled: threading.Event) -> Iterator[dict[str, Any]]:
    """Yield engine chunks until done or cancelled; always closes the engine's generator."""
    try:
        for chunk in chunks:
            if cancelled.is_set():
                raise Cancelled
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class _Framer:
    """Builds the response for one request: SSE chunks as they come, or one JSON object at the end."""

    def __init__(self, job: Job, object_prefix: str, kind: str) -> None:
        body = job.request.body
        self.job = job
        self.kind = kind  # "chat.completion" or "text_completion"
        self.id = f"{object_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = body["model"]
        self.stream = job.request.stream
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.usage = _Usage()
        self.choices: list[dict[str, Any]] = []
        self.logprobs = chat_logprobs if kind == "chat.completion" else completion_logprobs

    def _envelope(self, choices: list[dict[str, Any]], obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def chunk(self, choice: dict[str, Any]) -> None:
        # Per token: only the choice is encoded; the envelope's bytes (the same in every chunk) are made once.
        self.job.emit(self._head + _compact(choice).encode() + b"]}\n\n")

    @functools.cached_property
    def _head(self) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        whole = _sse(self._envelope([], obj))  # b'data: {..."choices":[]}\n\n'
        return whole[: -len(b"]}\n\n")]

    def finish(self) -> None:
        if self.stream:
            if self.include_usage:
                tail = self._envelope(
                    [], "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
                )
                tail["usage"] = self.usage.as_dict()
                self.job.emit(_sse(tail))
            self.job.emit(b"data: [DONE]\n\n")
        else:
            full = self._envelope(self.choices, self.kind)
            full["usage"] = self.usage.as_dict()
            self.job.emit(json.dumps(full).encode())


def _choice(
    framer: _Framer,
    index: int,
    chunks: Iterator[dict[str, Any]],
    counter: _TokenCounter | None,
    new_prompt: bool,
    tracker: TokenLogprobs | None,
) -> None:
    """Run one generation: stream its chunks (if streaming) and record its choice and usage."""
    chat = framer.kind == "chat.completion"
    calls = ToolCalls()
    text: list[str] = []
    tokens: list[Token] = []
    finish: str | None = None
    for c in _streamed(chunks, framer.job.cancelled):
        engine = c["choices"][0]
        ended = engine.get("finish_reason")
        finish = ended or finish
        delta = calls.delta(engine.get("delta") or {}) if chat else {}
        piece = (delta.get("content") if chat else engine.get("text")) or ""
        text.append(piece)
        held = [] if tracker is None else tracker.take(piece) + (tracker.rest() if ended else [])
        tokens += held
        if framer.stream:
            payload = {"delta": delta} if chat else {"text": piece}
            logprobs = framer.logprobs(held) if held else None
            framer.chunk({"index": index, **payload, "logprobs": logprobs, "finish_reason": ended})
    if counter is not None:
        framer.usage.add(counter, finish, new_prompt)
    content = "".join(text)
    result: dict[str, Any] = {"text": content}
    if chat:
        message = {"role": "assistant", "content": content if content or not calls.calls else None}
        result = {"message": {**message, "tool_calls": calls.calls} if calls.calls else message}
    logprobs = None if tracker is None else framer.logprobs(tokens)
    framer.choices.append({"index": index, **result, "logprobs": logprobs, "finish_reason": finish})


def _counting(
    llama: Any, framer: _Framer, body: dict[str, Any], tracker: TokenLogprobs | None
) -> tuple[_TokenCounter | None, dict[str, Any]]:
    """The hooks of one generation: a token counter on the sampler when the response reports usage, the
    logprob tracker, and the logits processors: the tracker's (it reads the raw logits) and ``logit_bias``.
    Without logprobs or a bias nothing touches the logits."""
    processors: list[Any] = [] if tracker is None else [tracker.processor]
    bias = body.get("logit_bias")
    if bias:
        processors.append(_LogitBias(bias))
    counter = _TokenCounter(llama) if not framer.stream or framer.include_usage else None
    hooks = [h for h in (tracker.sampled if tracker else None, counter.on_sample if counter else None) if h]
    llama.on_sample = hooks[0] if len(hooks) == 1 else _both(*hooks) if hooks else None
    return counter, {"logits_processor": processors} if processors else {}


def _both(first: Callable[[int], None], second: Callable[[int], None]) -> Callable[[int], None]:
    def both(token: int) -> None:
        first(token)
        second(token)

    return both


def _tracker(llama: Any, top: int | None) -> TokenLogprobs | None:
    """A logprob tracker for the next generation (``top`` alternatives; None: no logprobs), hooked to the
    engine's sampler (``backends.llama_cpp.engine``)."""
    return None if top is None else TokenLogprobs(llama, top)


def _seed(body: dict[str, Any], i: int) -> int | None:
    seed = body.get("seed")
    return None if seed is None else seed + i  # n choices from one seed must still differ


def _chat_kwargs(body: dict[str, Any], chat_format: str | None = None) -> dict[str, Any]:
    kwargs = _sampling_kwargs(body)
    fmt = body.get("response_format")
    if fmt and fmt["type"] == "json_schema":
        # llama-cpp-python constrains output by a schema given as {"type": "json_object", "schema": ...}.
        schema = (fmt.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", "schema": schema}
    elif fmt:
        kwargs["response_format"] = fmt
    return {"messages": messages(body, chat_format), **kwargs}


def _chat_chunks(llama: Any, body: dict[str, Any], kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The engine's chunks of one chat answer. With tools and ``tool_choice: auto`` the handler decides
    whole (``backends.llama_cpp.tools``): a call comes back as chunks, words are generated afresh,
    streamed."""
    tools = body.get("tools")
    if not tools:
        return llama.create_chat_completion(**kwargs, stream=True)  # type: ignore[no-any-return]
    choice = tool_choice(body)
    if choice == "auto":
        whole = llama.create_chat_completion(**kwargs, tools=tools, tool_choice="auto", stream=False)
        calls = whole["choices"][0]["message"].get("tool_calls")
        if calls:
            return calls_as_chunks(calls)
        choice = "none"
    return llama.create_chat_completion(**kwargs, tools=tools, tool_choice=choice, stream=True)  # type: ignore[no-any-return]


def run_chat(llama: Any, job: Job) -> None:
    body = job.request.body
    framer = _Framer(job, "chatcmpl", "chat.completion")
    kwargs = _chat_kwargs(body, getattr(llama, "chat_format", None))
    top = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
    try:
        for i in range(body.get("n") or 1):
            tracker = _tracker(llama, top)
            counter, extra = _counting(llama, framer, body, tracker)
            chunks = _chat_chunks(llama, body, {**kwargs, "seed": _seed(body, i), **extra})
            _choice(framer, i, chunks, counter, i == 0, tracker)
    finally:
        llama.on_sample = None
    framer.finish()


def run_completion(llama: Any, job: Job) -> None:
    body = job.request.body
    framer = _Framer(job, "cmpl", "text_completion")
    kwargs = _sampling_kwargs(body)
    kwargs.setdefault("max_tokens", 16)  # the OpenAI default for /v1/completions
    prompts = body["prompt"]
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    n = body.get("n") or 1
    try:
        for p, prompt in enumerate(prompts):
            for i in range(n):
                tracker = _tracker(llama, body.get("logprobs"))
                counter, extra = _counting(llama, framer, body, tracker)
                chunks = llama.create_completion(
                    prompt=prompt, stream=True, seed=_seed(body, i), **kwargs, **extra
                )
                _choice(framer, p * n + i, chunks, counter, i == 0, tracker)
    finally:
        llama.on_sample = None
    framer.finish()


def run_embeddings(llama: Any, job: Job) -> None:
    body = job.request.body
    inputs = body["input"]
    if isinstance(inputs, str):
        inputs = [inputs]
    vectors, tokens = llama.embed(inputs, normalize=True, return_count=True, truncate=False)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, vec in enumerate(vectors):
        embedding: Any = vec
        if as_base64:
            embedding = base64.b64encode(np.asarray(vec, dtype=np.float32).tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    job.emit(
        json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        ).encode()
    )


RUNNERS: dict[str, Callable[[Any, Job], None]] = {
    "chat/completions": run_chat,
    "completions": run_completion,
    "embeddings": run_embeddings,
}
