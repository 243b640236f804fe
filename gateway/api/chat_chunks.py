"""Reading a chat-completion stream's chunks without parsing them, where that is safe: the translations of
the stream to other APIs (``anthropic_stream``, ``responses_stream``) copy a plain text delta's content string
into their own events, escapes and all. Measured: parsing and encoding each chunk cost 3.6x the gateway CPU
per token of a chat stream passed through (bench/README.md, "Messages API overhead")."""

from __future__ import annotations

from typing import Any

_TEXT_DELTA = b'"delta":{"content":"'


def plain_text(data: bytes) -> bytes | None:
    """The content of a chunk (the JSON after ``data: ``) that is only a text delta, as its JSON string
    literal (quotes included); None for any other chunk (tool calls, the finish, usage), which the caller
    parses."""
    start = data.find(_TEXT_DELTA)
    if start == -1 or b'"tool_calls"' in data or b'"usage"' in data or b'"finish_reason":null' not in data:
        return None
    begin = start + len(_TEXT_DELTA) - 1  # the opening quote
    end = _string_end(data, begin + 1)
    if end == -1 or data.find(_TEXT_DELTA, end) != -1:
        return None
    return data[begin : end + 1]


def _string_end(data: bytes, i: int) -> int:
    """The index of the quote that ends the JSON string whose content starts at ``i``; -1 if none."""
    while True:
        i = data.find(b'"', i)
        if i == -1:
            return -1
        slashes = 0
        while data[i - 1 - slashes] == 0x5C:  # backslash
            slashes += 1
        if slashes % 2 == 0:
            return i
        i += 1


def chunk_usage(chunk: dict[str, Any], tokens: tuple[int, int]) -> tuple[int, int]:
    """A parsed chunk's usage (prompt and completion tokens), else ``tokens`` (those known so far)."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return tokens
    return usage.get("prompt_tokens", tokens[0]) or 0, usage.get("completion_tokens", tokens[1]) or 0
