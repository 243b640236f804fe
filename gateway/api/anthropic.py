"""Anthropic's Messages API, translated to and from chat completions at the edge. Pure: no I/O.

- ``to_chat``: a ``POST /v1/messages`` body to the chat-completions body every kind serves: the system prompt,
  text blocks, ``tool_use`` blocks as the assistant's tool calls, ``tool_result`` blocks as tool messages,
  tools and ``tool_choice``, ``stop_sequences``, the sampling fields, ``metadata.user_id`` as ``user``
  (session affinity). A field that would change the answer and cannot be honoured (``thinking``, images,
  server tools) is a 400 naming it, never silently dropped; hints that change nothing here (``cache_control``,
  ``service_tier``) are accepted.
- ``from_chat``: a chat completion to Anthropic's message object.
- The streamed answer's events: ``gateway.api.anthropic_stream``.
- ``error_body``: the gateway's errors in Anthropic's shape, with the same status codes.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from backends.errors import GatewayError, InvalidRequest
from gateway.api.validation import need

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
}
# Accepted and ignored: they change nothing in an answer from these engines (the 2026 SDK sends several).
IGNORED = {
    "service_tier", "container", "context_management", "cache_control", "diagnostics", "inference_geo",
    "speed", "user_profile_id", "workspace_id",
}  # fmt: skip
REFUSED = {
    "thinking": "this model does not expose extended thinking",
    "mcp_servers": "MCP servers are not supported by this gateway",
}
KNOWN = {
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream",
    "tools", "tool_choice", "metadata", "output_config",
} | IGNORED | set(REFUSED)  # fmt: skip
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def _text_of(blocks: Any, param: str) -> str:
    """The text of a string or a list of text blocks."""
    if isinstance(blocks, str):
        return blocks
    need(isinstance(blocks, list), f"{param}: expected a string or a list of blocks", param)
    parts = []
    for i, block in enumerate(blocks):
        where = f"{param}[{i}]"
        is_text = isinstance(block, dict) and block.get("type") == "text"
        need(is_text, f"{where}: expected a text block", where)
        parts.append(_text(block, where))
    return "\n".join(parts)


def _text(block: dict[str, Any], where: str) -> str:
    need(isinstance(block.get("text"), str), f"{where}.text: expected a string", f"{where}.text")
    return str(block["text"])


def _user_message(content: Any, param: str) -> list[dict[str, Any]]:
    """A user turn: its tool results become tool messages (first, as the chat format wants them right after
    the assistant's calls), its text one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    need(isinstance(content, list), f"{param}: expected a string or a list of blocks", param)
    tools: list[dict[str, Any]] = []
    text: list[str] = []
    for i, block in enumerate(content):
        where = f"{param}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(_text(block, where))
        elif kind == "tool_result":
            call = block.get("tool_use_id")
            has_id = isinstance(call, str) and bool(call)
            need(has_id, f"{where}.tool_use_id: required", f"{where}.tool_use_id")
            result = _text_of(block.get("content", ""), f"{where}.content")
            if block.get("is_error"):
                result = f"Error: {result}"
            tools.append({"role": "tool", "tool_call_id": call, "content": result})
        elif kind in ("image", "document"):
            raise InvalidRequest(f"{where}: this model does not take {kind} blocks", param=where)
        else:
            raise InvalidRequest(f"{where}: unknown block type {kind!r} in a user message", param=where)
    return [*tools, *([{"role": "user", "content": "\n".join(text)}] if text else [])]


def _assistant_message(content: Any, param: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    need(isinstance(content, list), f"{param}: expected a string or a list of blocks", param)
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        where = f"{param}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(_text(block, where))
        elif kind == "tool_use":
            need(isinstance(block.get("id"), str), f"{where}.id: required", f"{where}.id")
            need(isinstance(block.get("name"), str), f"{where}.name: required", f"{where}.name")
            need(isinstance(block.get("input", {}), dict), f"{where}.input: an object", f"{where}.input")
            arguments = json.dumps(block.get("input", {}))
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            raise InvalidRequest(f"{where}: this model does not expose extended thinking", param=where)
        else:
            raise InvalidRequest(f"{where}: unknown block type {kind!r} in an assistant message", param=where)
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    need(isinstance(tools, list), "tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        need(isinstance(tool, dict), f"{where}: expected an object", where)
        kind = tool.get("type", "custom")
        need(kind == "custom", f"{where}: server tools ({kind}) are not supported; give client tools", where)
        need(isinstance(tool.get("name"), str), f"{where}.name: required", f"{where}.name")
        schema = tool.get("input_schema")
        need(isinstance(schema, dict), f"{where}.input_schema: required, an object", f"{where}.input_schema")
        function = {"name": tool["name"], "parameters": schema}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    typed = isinstance(choice, dict) and "type" in choice
    need(typed, "tool_choice: expected an object with a type", "tool_choice")
    kind = choice["type"]
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        need(isinstance(name, str), "tool_choice.name: required for type tool", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidRequest(f"tool_choice.type: unknown {kind!r}", param="tool_choice.type")
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages body to a chat-completions body (``stream`` included; the caller adds usage options)."""
    for key in body:
        need(key in KNOWN, f"{key}: not a field of the Messages API this gateway serves", key)
    for key, why in REFUSED.items():
        disabled = isinstance(body.get(key), dict) and body[key].get("type") == "disabled"
        if key in body and not (key == "thinking" and disabled):
            raise InvalidRequest(f"{key}: {why}", param=key)
    config = body.get("output_config") or {}
    need(isinstance(config, dict), "output_config: expected an object", "output_config")
    for key in config:  # effort only tunes reasoning, which these models do not do
        need(key == "effort", f"output_config.{key}: not supported by this gateway", f"output_config.{key}")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, float) and max_tokens.is_integer():
        max_tokens = int(max_tokens)  # JSON has one number type: 64.0 is a whole number (as for chat)
    need(
        isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1,
        "max_tokens: required, a whole number >= 1",
        "max_tokens",
    )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: required, a non-empty list", param="messages")
    chat_messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        chat_messages.append({"role": "system", "content": _text_of(body["system"], "system")})
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        need(isinstance(m, dict), f"{where}: expected an object", where)
        role = m.get("role")
        if role == "user":
            chat_messages += _user_message(m.get("content"), f"{where}.content")
        elif role == "assistant":
            chat_messages.append(_assistant_message(m.get("content"), f"{where}.content"))
        else:
            raise InvalidRequest(f"{where}.role: expected user or assistant", param=f"{where}.role")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": chat_messages, "max_tokens": max_tokens}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    if body.get("stop_sequences"):
        stops = body["stop_sequences"]
        need(
            isinstance(stops, list) and all(isinstance(s, str) for s in stops),
            "stop_sequences: a list of strings",
            "stop_sequences",
        )
        chat["stop"] = stops
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
        if not chat.get("tools") and chat["tool_choice"] in ("auto", "none"):
            del chat["tool_choice"]  # auto or none without tools: nothing to say
    metadata = body.get("metadata")
    if metadata is not None:
        need(isinstance(metadata, dict), "metadata: expected an object", "metadata")
        if isinstance(metadata.get("user_id"), str):
            chat["user"] = metadata["user_id"]  # session affinity, as a chat request's user
    if body.get("stream"):
        chat["stream"] = True
    return chat


def from_chat(answer: dict[str, Any], model: str, msg_id: str | None = None) -> dict[str, Any]:
    """A (non-streamed) chat completion as Anthropic's message object, named as the client asked."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{secrets.token_hex(12)}",
                "name": function.get("name", ""),
                "input": _arguments(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    if message.get("tool_calls") and finish == "stop":
        finish = "tool_calls"
    usage = answer.get("usage") or {}
    return {
        "id": msg_id or message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(finish or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"value": value}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def gateway_error_body(err: GatewayError) -> dict[str, Any]:
    return error_body(err.status, err.message)
