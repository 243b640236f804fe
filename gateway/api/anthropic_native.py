"""Reading the Messages API's answers from an engine that speaks it itself (``native_apis: [messages]``):
the usage and the stop reason the metrics need, from the message object or from the stream's events. The
bytes themselves go to the client untouched. Pure: no I/O.

Only two events of a stream carry usage (``message_start``, ``message_delta``), so the reader looks at
a piece's bytes for ``"usage"`` and parses only the events that hold it; a text delta costs one substring
search.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.api.usage import Usage

# The chat finish reasons the metrics count, from Anthropic's stop reasons.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_PENDING_LIMIT = 1 << 20  # an event is a few hundred bytes; a "usage" event larger than this is not one


def message_usage(body: bytes) -> tuple[Usage | None, list[str]]:
    """A message object's usage and finish reason; (None, []) for a body without them (``count_tokens``'s
    answer: counting is not a prefill, so it adds nothing to the token counters)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, []
    if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
        return None, []
    stop = data.get("stop_reason")
    return _usage(data["usage"], Usage()), [FINISH.get(stop, stop)] if isinstance(stop, str) else []


def _usage(raw: Any, known: Usage) -> Usage:
    """Anthropic counts a prompt in three parts: ``input_tokens`` (after the last cache breakpoint),
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens``; the prompt is their sum (llama-server
    reports its prompt cache's reuse as read), and what was read from a cache is its cached part."""
    if not isinstance(raw, dict):
        return known
    parts = [raw.get(k) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    read = parts[1] if isinstance(parts[1], int) else None
    completion = raw.get("output_tokens")
    return Usage(
        sum(p for p in parts if isinstance(p, int)) if isinstance(parts[0], int) else known.prompt_tokens,
        completion if isinstance(completion, int) else known.completion_tokens,
        read if read is not None else known.cached_tokens,
    )


class EventUsage:
    """The usage and stop reason of a Messages stream, fed its pieces as they pass."""

    __slots__ = ("_pending", "finish", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finish: str | None = None
        self._pending = b""  # the start of an event with usage in it, cut by the end of a piece

    def feed(self, chunk: bytes) -> None:
        if self._pending:
            chunk = self._pending + chunk
        end = chunk.rfind(b"\n\n") + 2  # past the last whole event; 1: none
        if end == 1:
            # No event ends here: keep it for the next piece, unless it is already too long to be one
            # that carries usage (the rest of it is not looked at).
            self._pending = chunk if len(chunk) <= _PENDING_LIMIT else b""
            return
        self._pending = chunk[end:]
        if chunk.find(b'"usage"', 0, end) == -1:
            return
        for event in chunk[:end].split(b"\n\n"):
            if b'"usage"' in event:
                self._read(event)

    def _read(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                data = json.loads(line[5:])
            except ValueError:
                return
            if not isinstance(data, dict):
                return
            message = data.get("message")
            holder = message if isinstance(message, dict) else data  # message_start nests it
            self.usage = _usage(holder.get("usage"), self.usage or Usage())
            delta = data.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if isinstance(stop, str):
                self.finish = FINISH.get(stop, stop)
