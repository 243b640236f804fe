"""Reading the usage and stop reason of an engine's own Messages API answers
(``gateway.api.anthropic_native``), whole or streamed, however the stream is cut into pieces."""

from __future__ import annotations

import json

from gateway.api.anthropic_native import EventUsage, message_usage
from gateway.api.usage import Usage


def sse(kind: str, data: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


START = {
    "type": "message_start",
    "message": {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "srv",
                "usage": {"input_tokens": 1, "cache_read_input_tokens": 33, "output_tokens": 0}},
}  # fmt: skip
STREAM = b"".join(
    [
        sse("message_start", START),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {}}),
        *(
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f'usage {i} "usage"'},
                },
            )
            for i in range(5)
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 8}},
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
)


def test_a_stream_cut_anywhere_gives_the_same_usage_and_stop() -> None:
    """The prompt is input plus what came from a cache; the output from ``message_delta``; the stop reason as
    the chat finish reason the metrics count. Text that mentions "usage" changes nothing."""
    for size in (1, 2, 3, 7, 64, len(STREAM)):
        reader = EventUsage()
        for i in range(0, len(STREAM), size):
            reader.feed(STREAM[i : i + size])
        assert reader.usage == Usage(34, 8, 33), size
        assert reader.finish == "length", size


def test_a_stream_without_usage_says_none() -> None:
    reader = EventUsage()
    reader.feed(sse("ping", {"type": "ping"}))
    assert reader.usage is None and reader.finish is None


def test_a_message_and_a_count() -> None:
    usage = {"input_tokens": 5, "cache_creation_input_tokens": 2, "output_tokens": 3}
    message = {"type": "message", "stop_reason": "tool_use", "usage": usage}
    assert message_usage(json.dumps(message).encode()) == (Usage(7, 3, None), ["tool_calls"])
    assert message_usage(b'{"input_tokens": 34}') == (None, [])  # count_tokens: no prefill, no usage
    assert message_usage(b"not json") == (None, [])
