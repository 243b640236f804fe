"""The Messages API's translation to and from chat completions (``gateway.api.anthropic``): pure, so every
case and every streamed event's order is checked here; the SDK tests prove it end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backends.errors import InvalidRequest
from gateway.api.anthropic import from_chat, to_chat
from gateway.api.anthropic_stream import MessageStream

BASE: dict[str, Any] = {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def test_text_system_sampling_stops_and_metadata() -> None:
    chat = to_chat(
        {
            **BASE,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "again"},
            ],
            "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop_sequences": ["END"],
            "metadata": {"user_id": "session-7"}, "stream": True, "service_tier": "auto",
        }
    )  # fmt: skip
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    assert (chat["temperature"], chat["top_p"], chat["top_k"], chat["stop"]) == (0.2, 0.9, 40, ["END"])
    assert chat["user"] == "session-7" and chat["stream"] is True and chat["max_tokens"] == 32
    assert "service_tier" not in chat  # accepted, and changes nothing


def test_tools_tool_use_and_tool_result_both_ways() -> None:
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object"}}
    chat = to_chat(
        {
            **BASE,
            "tools": [tool],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "42"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                    {"type": "text", "text": "and?"}]},
            ],
        }
    )  # fmt: skip
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                               "description": "d"}}]  # fmt: skip
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False
    assistant, result, failed, follow = chat["messages"][1:]
    assert assistant["content"] == "calling"
    assert assistant["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert result == {"role": "tool", "tool_call_id": "toolu_1", "content": "42"}
    assert failed == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"}
    assert follow == {"role": "user", "content": "and?"}
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    for theirs, ours in (("auto", "auto"), ("any", "required"), ("none", "none")):
        assert to_chat({**BASE, "tools": tools, "tool_choice": {"type": theirs}})["tool_choice"] == ours
    for says_nothing in ("auto", "none"):  # without tools
        assert "tool_choice" not in to_chat({**BASE, "tool_choice": {"type": says_nothing}})


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]}]},
         "messages[0].content[0]"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ],
)  # fmt: skip
def test_what_would_change_the_answer_is_a_400_naming_it(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat({**BASE, **change})
    assert err.value.param == param


def test_what_changes_nothing_is_accepted() -> None:
    body = {**BASE, "thinking": {"type": "disabled"}, "output_config": {"effort": "low"}, "speed": "fast",
            "cache_control": {"type": "ephemeral"}, "inference_geo": "us"}  # fmt: skip
    assert to_chat(body)["messages"] == [{"role": "user", "content": "hi"}]


def test_a_completion_as_a_message() -> None:
    answer = {
        "choices": [{"message": {"role": "assistant", "content": "Sure.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }  # fmt: skip
    message = from_chat(answer, "claude-local", "msg_1")
    assert message == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-local",
        "content": [{"type": "text", "text": "Sure."},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }  # fmt: skip
    for finish, reason in (("stop", "end_turn"), ("length", "max_tokens")):
        plain = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
        assert from_chat(plain, "m")["stop_reason"] == reason


def _events(raw: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for item in raw:
        kind, data = item.decode().strip().split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_streamed_text_answer_in_order() -> None:
    s = MessageStream("m", "msg_1")
    raw = [*s.feed(chunk({"role": "assistant"})), *s.feed(chunk({"content": "Hel"})),
           *s.feed(chunk({"content": "lo"})), *s.feed(chunk({}, "length")),
           *s.feed({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
           *s.end()]  # fmt: skip
    events = _events(raw)
    assert [k for k, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[0][1]["message"]["id"] == "msg_1" and events[0][1]["message"]["model"] == "m"
    assert events[1][1]["index"] == 0 and events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [e[1]["delta"]["text"] for e in events[2:4]] == ["Hel", "lo"]
    assert events[5][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[5][1]["usage"] == {"input_tokens": 5, "output_tokens": 2}
    assert s.end() == []  # once


def test_a_streamed_tool_call_after_text() -> None:
    s = MessageStream("m", "msg_2")
    call = {"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}
    raw = [*s.feed(chunk({"content": "Let me check."})), *s.feed(chunk({"tool_calls": [call]})),
           *s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]})),
           *s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]})),
           *s.feed(chunk({}, "tool_calls")), *s.end()]  # fmt: skip
    events = _events(raw)
    kinds = [k for k, _ in events]
    assert kinds == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[4][1]["index"] == 1
    assert events[4][1]["content_block"] == {"type": "tool_use", "id": "call_9", "name": "f", "input": {}}
    partial = "".join(e[1]["delta"]["partial_json"] for e in events[5:7])
    assert json.loads(partial) == {"x": 1}
    assert events[8][1]["delta"]["stop_reason"] == "tool_use"


def test_an_upstream_error_mid_stream_ends_it_with_an_error_event() -> None:
    s = MessageStream("m")
    s.feed(chunk({"content": "a"}))
    (raw,) = s.error("the replica went silent", 502)
    kind, data = _events([raw])[0]
    assert kind == "error"
    assert data == {"type": "error", "error": {"type": "api_error", "message": "the replica went silent"}}
    assert s.end() == []  # nothing after an error


@pytest.mark.parametrize(
    "text", ["plain", 'a "quoted" word', "back\\slash\\", "tab\tnew\nline", "é ✓ 🙂", '\\"']
)
def test_a_text_delta_copied_without_parsing_says_what_parsing_would(text: str) -> None:
    fast, parsed = MessageStream("m", "msg_1"), MessageStream("m", "msg_1")
    opening = chunk({"role": "assistant", "content": "x"})
    for s in (fast, parsed):
        s.feed(opening)
    for raw in (
        json.dumps(chunk({"content": text}), separators=(",", ":")).encode(),  # llama-server's spacing
        json.dumps(
            {"id": "c", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode(),
    ):
        got, want = fast.feed_raw(raw), parsed.feed(json.loads(raw))
        assert [_events([g]) for g in got] == [_events([w]) for w in want]
        assert _events(got)[0][1]["delta"]["text"] == text
