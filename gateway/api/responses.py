"""OpenAI's Responses API, translated to and from chat completions at the edge. Pure: no I/O.

- ``input_items``: a request's ``input`` (a string or a list of items) as whole items, each with an id, as
  they are stored and listed (``GET /v1/responses/{id}/input_items``).
- ``to_chat``: a ``POST /v1/responses`` body, after the conversation it continues (``previous_response_id``:
  the earlier turns' input and output items, from the store), to the chat-completions body every kind serves:
  ``instructions`` as the system prompt, messages, ``function_call`` items as the assistant's tool calls,
  ``function_call_output`` items as tool messages, function tools and ``tool_choice``, ``text.format`` as
  ``response_format``, the sampling fields, ``user`` or ``prompt_cache_key`` as ``user`` (session affinity).
  What would change the answer and cannot be honoured (``reasoning``, built-in tools, images, ``background``,
  ``conversation``...) is a 400 naming it, never silently dropped; hints that change nothing here
  (``service_tier``, ``prompt_cache_retention``...) are accepted.
- The answer's side (output items, the response object): ``gateway.api.responses_output``.
- The streamed answer's events: ``gateway.api.responses_stream``.

As OpenAI does, ``instructions`` are not carried over by ``previous_response_id``: each request gives its own.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from backends.errors import InvalidRequest
from gateway.api.validation import need

IGNORED = {
    "service_tier", "prompt_cache_retention", "prompt_cache_options", "stream_options", "safety_identifier",
    "context_management",
}  # fmt: skip
REFUSED = {
    "background": "background responses are not supported by this gateway",
    "conversation": "conversations are not supported by this gateway; use previous_response_id",
    "prompt": "stored prompts are not supported by this gateway",
    "reasoning": "this model does not expose reasoning",
    "top_logprobs": "log probabilities are not supported on /v1/responses",
    "max_tool_calls": "max_tool_calls is not supported by this gateway",
    "moderation": "moderation is not supported by this gateway",
    "image": "image generation is not supported by this gateway",
}
KNOWN = {
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
    "max_output_tokens", "text", "metadata", "stream", "store", "previous_response_id", "user",
    "prompt_cache_key", "truncation", "include",
} | IGNORED | set(REFUSED)  # fmt: skip
# What ``include`` may ask for: reasoning content (there is none, so there is nothing to add).
INCLUDABLE = {"reasoning.encrypted_content"}
ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
MAX_METADATA_KEYS = 16


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _refused(body: dict[str, Any], key: str) -> bool:
    """A refused field given a value that asks for something (``null``, ``false``, ``0`` or ``{}`` do not)."""
    value = body.get(key)
    if key == "reasoning" and isinstance(value, dict):
        return any(v not in (None, "none") for v in value.values())
    return value not in (None, False, 0, {}, [])


def _parts_text(content: Any, param: str, kinds: tuple[str, ...]) -> str:
    """The text of a string or a list of text parts of the given types."""
    if isinstance(content, str):
        return content
    need(isinstance(content, list), f"{param}: expected a string or a list of content parts", param)
    texts = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_image", "input_file", "input_audio"):
            raise InvalidRequest(f"{where}: this model does not take {kind} parts", param=where)
        need(kind in kinds, f"{where}: expected a part of type {' or '.join(kinds)}, not {kind!r}", where)
        text = part.get("text", part.get("refusal"))
        need(isinstance(text, str), f"{where}.text: expected a string", f"{where}.text")
        texts.append(text)
    return "".join(texts)


def _message_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    need(
        role in ("user", "system", "developer", "assistant"),
        f"{where}.role: expected user, system, developer or assistant",
        f"{where}.role",
    )
    kinds = ("output_text", "refusal") if role == "assistant" else ("input_text",)
    text = _parts_text(item.get("content"), f"{where}.content", kinds)
    part = "output_text" if role == "assistant" else "input_text"
    content: dict[str, Any] = {"type": part, "text": text}
    if role == "assistant":
        content["annotations"] = []
    return {
        "type": "message",
        "id": item.get("id") or new_id("msg"),
        "role": role,
        "status": "completed",
        "content": [content],
    }


def _call_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        need(isinstance(item.get(key), str), f"{where}.{key}: required, a string", f"{where}.{key}")
    return {
        "type": "function_call",
        "id": item.get("id") or new_id("fc"),
        "call_id": item["call_id"],
        "name": item["name"],
        "arguments": item["arguments"],
        "status": "completed",
    }


def _output_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    need(isinstance(item.get("call_id"), str), f"{where}.call_id: required, a string", f"{where}.call_id")
    output = _parts_text(item.get("output"), f"{where}.output", ("input_text", "output_text"))
    return {
        "type": "function_call_output",
        "id": item.get("id") or new_id("fco"),
        "call_id": item["call_id"],
        "output": output,
        "status": "completed",
    }


def input_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as whole items with ids: a string is one user message."""
    if isinstance(value, str):
        return [_message_item({"role": "user", "content": value}, "input")]
    need(isinstance(value, list) and bool(value), "input: required, a string or a non-empty list", "input")
    items = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        need(isinstance(item, dict), f"{where}: expected an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            items.append(_message_item(item, where))
        elif kind == "function_call":
            items.append(_call_item(item, where))
        elif kind == "function_call_output":
            items.append(_output_item(item, where))
        elif kind == "reasoning":
            raise InvalidRequest(f"{where}: this model does not take reasoning items", param=where)
        else:
            raise InvalidRequest(f"{where}.type: {kind!r} is not an item this gateway serves", param=where)
    return items


def _chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages: consecutive function calls join the assistant turn before them."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": item["content"][0]["text"]})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    need(isinstance(tools, list), "tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        need(isinstance(tool, dict), f"{where}: expected an object", where)
        kind = tool.get("type")
        need(
            kind == "function", f"{where}.type: {kind!r} tools are not supported; give function tools", where
        )
        need(isinstance(tool.get("name"), str), f"{where}.name: required, a string", f"{where}.name")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("parameters") is not None:
            need(
                isinstance(tool["parameters"], dict), f"{where}.parameters: an object", f"{where}.parameters"
            )
            function["parameters"] = tool["parameters"]
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    named = (
        isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str)
    )
    need(named, "tool_choice: expected auto, none, required or a function by name", "tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(text: Any) -> dict[str, Any] | None:
    need(isinstance(text, dict), "text: expected an object", "text")
    for key in text:
        need(key in ("format", "verbosity"), f"text.{key}: not supported by this gateway", f"text.{key}")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    need(kind == "json_schema", "text.format.type: expected text, json_schema or json_object", "text.format")
    schema = fmt.get("schema")
    need(isinstance(schema, dict), "text.format.schema: required, an object", "text.format.schema")
    spec: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": schema}
    if fmt.get("strict") is not None:
        spec["strict"] = bool(fmt["strict"])
    return {"type": "json_schema", "json_schema": spec}


def _check_fields(body: dict[str, Any]) -> None:
    for key in body:
        need(key in KNOWN, f"{key}: not a field of the Responses API this gateway serves", key)
    for key, why in REFUSED.items():
        if _refused(body, key):
            raise InvalidRequest(f"{key}: {why}", param=key)
    include = body.get("include") or []
    need(isinstance(include, list), "include: expected a list", "include")
    for value in include:
        ok = isinstance(value, str) and value in INCLUDABLE  # a list or an object is not hashable
        need(ok, f"include: {value!r} is not available from this gateway", "include")
    need(body.get("truncation") in (None, "disabled"), "truncation: only 'disabled' is served", "truncation")
    metadata = body.get("metadata")
    if metadata is not None:
        ok = isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        need(ok and len(metadata) <= MAX_METADATA_KEYS, "metadata: up to 16 string values", "metadata")
    maximum = body.get("max_output_tokens")
    if maximum is not None:
        # JSON has one number type: 64.0 is a whole number (as for chat)
        whole = (isinstance(maximum, int) and not isinstance(maximum, bool)) or (
            isinstance(maximum, float) and maximum.is_integer()
        )
        whole = whole and maximum >= 1
        need(whole, "max_output_tokens: a whole number >= 1", "max_output_tokens")


@dataclass
class Turn:
    """One ``POST /v1/responses``: its chat request, its input items (as stored), and the settings its
    response echoes."""

    chat: dict[str, Any]
    items: list[dict[str, Any]]
    echo: dict[str, Any] = field(default_factory=dict)
    store: bool = True


def to_chat(body: dict[str, Any], history: list[dict[str, Any]]) -> Turn:
    """A Responses body to a chat-completions body, after ``history`` (the items of the conversation it
    continues, oldest first). ``stream`` included; the caller adds the usage options."""
    _check_fields(body)
    items = input_items(body.get("input"))
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        need(isinstance(instructions, str), "instructions: expected a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    messages += _chat_messages([*history, *items])
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = int(body["max_output_tokens"])
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        choice = _tool_choice(body["tool_choice"])
        if chat.get("tools") or choice not in ("auto", "none"):  # auto or none without tools: nothing to say
            chat["tool_choice"] = choice
    if body.get("text") is not None:
        response_format = _response_format(body["text"])
        if response_format is not None:
            chat["response_format"] = response_format
    session = body.get("user") or body.get("prompt_cache_key")
    if isinstance(session, str):
        chat["user"] = session  # session affinity, as a chat request's user
    if body.get("stream"):
        chat["stream"] = True
    echo = {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": body.get("previous_response_id"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "text": body.get("text") or {"format": {"type": "text"}},
        "user": body.get("user"),
        "prompt_cache_key": body.get("prompt_cache_key"),
    }
    return Turn(chat, items, echo, body.get("store", True) is not False)
