"""The Responses API's translation to and from chat completions (pure), and its bounded store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backends.errors import InvalidRequest
from gateway.api.responses import to_chat
from gateway.api.responses_output import output_of, output_text
from gateway.api.responses_stream import ResponseStream
from gateway.control.response_store import ResponseStore, Stored


def test_input_items_become_chat_messages() -> None:
    history = to_chat({"model": "m", "input": "What is the weather in Paris?"}, []).items
    call = {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'}
    turn = to_chat(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
                call,
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                {"role": "developer", "content": "Answer in French."},
            ],
            "max_output_tokens": 9,
            "temperature": 0,
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "prompt_cache_key": "session-7",
            "stream": True,
        },
        history,
    )
    assert turn.chat["messages"] == [
        {"role": "system", "content": "Be brief."},  # instructions first, before the history
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",  # the call joins the assistant turn before it
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "system", "content": "Answer in French."},
    ]
    chat = turn.chat
    assert (chat["max_tokens"], chat["temperature"], chat["user"], chat["stream"]) == (
        9,
        0,
        "session-7",
        True,
    )
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert [i["type"] for i in turn.items] == ["message", "function_call", "function_call_output", "message"]
    assert all(i["id"] for i in turn.items) and turn.store and turn.echo["instructions"] == "Be brief."


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"tools": [{"type": "file_search"}]}, "tools[0]"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"include": [["a list"]]}, "include"),  # found by the fuzzer: was a TypeError (unhashable)
        ({"metadata": {"a": 1}}, "metadata"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"frobnicate": True}, "frobnicate"),
        ({"input": []}, "input"),
    ],
)
def test_what_cannot_be_honoured_is_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat({"model": "m", "input": "Hi", **extra}, [])
    assert err.value.param == param


def test_harmless_values_of_refused_fields_pass() -> None:
    turn = to_chat({"model": "m", "input": "Hi", "reasoning": {"effort": None}, "background": False}, [])
    assert turn.chat["messages"] == [{"role": "user", "content": "Hi"}]
    assert to_chat({"model": "m", "input": "Hi", "store": False}, []).store is False


def test_a_chat_answer_as_output_items() -> None:
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "Checking.",
                    "tool_calls": [{"id": "call_9", "function": {"name": "w", "arguments": '{"a":1}'}}],
                },
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5},
    }
    outcome = output_of(answer)
    assert [i["type"] for i in outcome.output] == ["message", "function_call"]
    assert outcome.output[1]["call_id"] == "call_9" and outcome.output[1]["arguments"] == '{"a":1}'
    assert (outcome.status, outcome.input_tokens, outcome.output_tokens) == ("completed", 11, 5)
    cut = output_of({"choices": [{"finish_reason": "length", "message": {"content": "a b"}}]})
    assert cut.status == "incomplete" and cut.output[0]["status"] == "incomplete"


def _events(stream: ResponseStream, chunks: list[dict[str, Any]], raw: bool) -> list[dict[str, Any]]:
    out: list[bytes] = []
    for chunk in chunks:
        encoded = json.dumps(chunk, separators=(",", ":")).encode()
        out += stream.feed_raw(encoded) if raw else stream.feed(chunk)
    out += stream.end()
    events = []
    for blob in out:
        for piece in blob.split(b"\n\n"):
            if piece:
                head, data = piece.split(b"\n", 1)
                event = json.loads(data.removeprefix(b"data: "))
                assert head == b"event: " + event["type"].encode()
                events.append(event)
    return events


def _delta(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"choices": [{"index": 0, "delta": {**delta, **extra}, "finish_reason": finish}]}


TEXT_CHUNKS = [
    _delta(role="assistant", content=""),
    _delta("Hel"),
    _delta('lo "w\\'),
    _delta("orld\u00e9 \U0001f600"),  # escapes and a surrogate pair (as json.dumps encodes them), copied
    _delta(finish="stop"),
    {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
]


@pytest.mark.parametrize("raw", [True, False])
def test_a_text_stream_in_order(raw: bool) -> None:
    events = _events(ResponseStream("resp_1", "m", {}), TEXT_CHUNKS, raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    text = 'Hello "w\\orld\u00e9 \U0001f600'
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    done = events[-1]["response"]
    assert output_text(done) == text and done["status"] == "completed" and done["id"] == "resp_1"
    assert done["usage"]["input_tokens"] == 7 and done["usage"]["total_tokens"] == 10
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {done["output"][0]["id"]}


def test_a_tool_call_stream_and_a_cut_one() -> None:
    call = {"index": 0, "id": "call_3", "type": "function", "function": {"name": "w", "arguments": ""}}
    chunks = [
        _delta(tool_calls=[call]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": '"Rome"}'}}]),
        _delta(finish="tool_calls"),
    ]
    events = _events(ResponseStream("resp_2", "m", {}), chunks, raw=True)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["call_id"], item["arguments"]) == (
        "function_call",
        "call_3",
        '{"city":"Rome"}',
    )

    cut = _events(ResponseStream("resp_3", "m", {}), [_delta("a"), _delta(finish="length")], raw=True)
    assert cut[-1]["type"] == "response.incomplete"
    assert cut[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_mid_stream_ends_it_failed() -> None:
    stream = ResponseStream("resp_4", "m", {})
    stream.feed(_delta("partial"))
    (failed,) = stream.error("the engine died")
    event = json.loads(failed.split(b"data: ", 1)[1])
    assert event["type"] == "response.failed" and event["response"]["error"]["message"] == "the engine died"
    assert stream.outcome is None and stream.end() == []  # nothing to store, nothing after it


def _stored(response_id: str, size: int = 10) -> Stored:
    return Stored({"id": response_id, "pad": "x" * size}, [], [{"type": "message"}])


def test_the_store_is_bounded_owned_and_persistent(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "r.sqlite3"
    store = ResponseStore(path, max_count=3, max_bytes=10_000, max_age=60.0, clock=lambda: now[0])
    for i in range(5):
        now[0] += 1
        store.put("alice", _stored(f"r{i}"))
    assert [store.get("alice", f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert store.get("bob", "r4") is None and not store.delete("bob", "r4")  # another key's: not there
    assert store.delete("alice", "r4") and store.get("alice", "r4") is None
    store.put("alice", _stored("big", size=9_880))  # over the bytes with the others: the oldest go
    count, size = store.totals()
    assert size <= 10_000 and store.get("alice", "big") is not None and count < 3
    store.close()

    reopened = ResponseStore(path, max_count=3, max_bytes=10_000, max_age=60.0, clock=lambda: now[0])
    assert reopened.get("alice", "big") is not None  # survives a restart
    now[0] += 61
    assert reopened.get("alice", "big") is None  # past its age
    reopened.close()


def test_auto_or_none_without_tools_says_nothing() -> None:
    for choice in ("auto", "none"):
        assert (
            "tool_choice"
            not in to_chat({"model": "m", "input": "Hi", "tools": [], "tool_choice": choice}, []).chat
        )
    named = {"type": "function", "name": "f"}
    assert to_chat({"model": "m", "input": "Hi", "tool_choice": named}, []).chat["tool_choice"]  # a 400 later
