"""The Responses API's answer side: a chat completion's choice as output items, status and usage
(``output_of``), and the response object as the API returns it, echoing the request's settings
(``response_object``). Pure: no I/O. The request's side is ``gateway.api.responses``; the stream's events
``gateway.api.responses_stream``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from gateway.api.responses import new_id


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def text_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


@dataclass
class Outcome:
    """What the model produced, in the Responses API's terms."""

    output: list[dict[str, Any]]
    status: str  # completed | incomplete
    input_tokens: int
    output_tokens: int


def output_of(answer: dict[str, Any]) -> Outcome:
    """A (non-streamed) chat completion's first choice as output items."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    incomplete = choice.get("finish_reason") == "length"
    status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        output.append(text_item(new_id("msg"), message.get("content") or "", status))
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments or {})
        call_id = call.get("id") or new_id("call")
        output.append(call_item(new_id("fc"), call_id, function.get("name", ""), arguments, "completed"))
    counted = answer.get("usage") or {}
    return Outcome(output, status, counted.get("prompt_tokens", 0), counted.get("completion_tokens", 0))


def response_object(
    response_id: str,
    model: str,
    echo: dict[str, Any],
    outcome: Outcome | None,
    *,
    created: float | None = None,
    store: bool = True,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response as the API returns it; ``outcome`` None: still in progress (or failed, with ``error``)."""
    status = "failed" if error else outcome.status if outcome else "in_progress"
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created if created is not None else time.time()),
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": outcome.output if outcome else [],
        "usage": usage(outcome.input_tokens, outcome.output_tokens) if outcome else None,
        "store": store,
        "truncation": "disabled",
        "reasoning": {"effort": None, "summary": None},
        **echo,
    }


def output_text(response: dict[str, Any]) -> str:
    """The text of a response's messages (the SDK's ``output_text``), for tests and logs."""
    return "".join(
        part["text"]
        for item in response.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
        if part.get("type") == "output_text"
    )
