"""Chat messages and tools on the in-process engine: what depends on the model's chat format.

Of llama-cpp-python's chat formats, ``chatml-function-calling`` is the one that both puts tools in the prompt
and parses the model's calls back, for any ChatML model; it constrains the call's arguments to the tool's JSON
schema with a grammar. (The ``functionary`` formats need a Functionary model and its Hugging Face tokenizer,
and the GGUF's own Jinja template renders tools into the prompt but nothing parses the calls: both are
refused here, and the ``llama_server`` kind, whose Jinja templates parse calls, serves them.)

What its handler does, and what this module makes of it:

- ``tool_choice`` naming a function streams the arguments token by token; ``required`` with one tool is
  that tool named.
- ``auto`` (OpenAI's default when tools are given): the handler decides without streaming, and its answer
  when it decides against a call is empty (its follow-up grammar admits only another call). So the decision
  runs whole: a call comes back whole, and an answer in words is then generated, streamed, as for
  ``tool_choice: none``. The handler ignores ``max_tokens`` while it writes a call's arguments.
- Its template renders only system, user and assistant messages: a ``tool`` message (a call's result) would
  vanish from the prompt, so it goes in as a user turn that says which call it answers (a tool loop works:
  call, result, answer); a legacy ``function`` message is a 400. ``developer`` messages are passed as
  ``system`` ones (OpenAI's meaning) for every format.
- Logprobs and ``response_format`` do not reach its tool path, so with tools they are a 400.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from backends.errors import InvalidRequest

TOOL_FORMAT = "chatml-function-calling"
_TOOL_ROLES = ("system", "user", "assistant")
_SERVER = "the llama_server kind serves tools with its Jinja templates"


def _refuse(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {why}", param=param)


def tool_choice(body: dict[str, Any]) -> str | dict[str, Any]:
    """The choice for the engine's handler: ``none``, ``auto``, or the named function."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or ("auto" if tools else "none")
    if choice == "required" and len(tools) == 1:
        return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    return choice


def check_chat(body: dict[str, Any], chat_format: str | None) -> None:
    """Refuse, with a 400 naming the field, what this chat format cannot do with a validated chat body."""
    tools = body.get("tools") or []
    if chat_format == TOOL_FORMAT:
        for i, message in enumerate(body["messages"]):
            if message["role"] not in (*_TOOL_ROLES, "developer", "tool"):
                raise _refuse(
                    f"messages[{i}].role",
                    f"is '{message['role']}', which chat_format {TOOL_FORMAT} (llama_cpp) does not "
                    f"render; {_SERVER}",
                )
    choice = tool_choice(body)
    if not tools:
        if choice != "none":
            raise _refuse("tool_choice", "needs 'tools'")
        return
    if chat_format != TOOL_FORMAT:
        fmt = f"chat_format {chat_format}" if chat_format else "the GGUF's chat template"
        raise _refuse(
            "tools",
            f"cannot be served by the llama_cpp kind with {fmt}: llama-cpp-python calls tools with "
            f"chat_format {TOOL_FORMAT} (for a ChatML model); {_SERVER}",
        )
    if choice == "none":
        return
    if choice == "required":
        raise _refuse(
            "tool_choice", f"'required' with several tools is not supported by llama_cpp; {_SERVER}"
        )
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in {t["function"]["name"] for t in tools}:
            raise _refuse("tool_choice.function.name", f"names '{name}', which is not in 'tools'")
    elif body.get("parallel_tool_calls") is False:
        raise _refuse(
            "parallel_tool_calls", f"false needs tool_choice naming a function on llama_cpp; {_SERVER}"
        )
    if body.get("logprobs"):
        raise _refuse("logprobs", f"cannot be combined with tools on llama_cpp; {_SERVER}")
    if (body.get("response_format") or {}).get("type", "text") != "text":
        raise _refuse("response_format", f"cannot be combined with tools on llama_cpp; {_SERVER}")


def messages(body: dict[str, Any], chat_format: str | None = None) -> list[dict[str, Any]]:
    """The messages as the chat formats read them: content as one string, ``developer`` as ``system``, and,
    for the tool format (which renders no tool role), a tool's result as a user turn naming its call."""
    out = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, list):  # text (and refusal) parts, joined as vLLM joins them
            content = "\n".join(part.get("text", part.get("refusal", "")) for part in content)
        role = "system" if message["role"] == "developer" else message["role"]
        if role == "tool" and chat_format == TOOL_FORMAT:
            call = message.get("tool_call_id", "")
            out.append({"role": "user", "content": f"Result of tool call {call}: {content or ''}"})
            continue
        out.append({**message, "role": role, "content": content or ""})
    return out


def calls_as_chunks(calls: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A whole answer's tool calls as the engine's stream would carry them."""
    deltas = [{"index": i, **call} for i, call in enumerate(calls)]
    yield {"choices": [{"delta": {"role": "assistant", "tool_calls": deltas}, "finish_reason": None}]}
    yield {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}


class ToolCalls:
    """The tool calls of one streamed answer. The handler repeats each call's id and name in every delta
    (and a legacy ``function_call`` beside it); OpenAI sends them once, in the call's first delta."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def delta(self, engine: dict[str, Any]) -> dict[str, Any]:
        """The OpenAI delta for an engine delta: no nulls, no ``function_call``, each call named once."""
        out = {k: v for k, v in engine.items() if v is not None and k in ("role", "content")}
        calls = [self._add(call) for call in engine.get("tool_calls") or []]
        if calls:
            out["tool_calls"] = calls
        return out

    def _add(self, call: dict[str, Any]) -> dict[str, Any]:
        index = call.get("index", 0)
        arguments = (call.get("function") or {}).get("arguments") or ""
        if index < len(self.calls):
            self.calls[index]["function"]["arguments"] += arguments
            return {"index": index, "function": {"arguments": arguments}}
        name = call["function"]["name"]
        self.calls.append(
            {"id": call["id"], "type": "function", "function": {"name": name, "arguments": arguments}}
        )
        return {"index": index, **self.calls[index], "function": {"name": name, "arguments": arguments}}
