"""Anthropic's streamed answer, made from a chat-completion stream: chunks in, Anthropic's event sequence
out (``message_start``, ``content_block_start`` / ``_delta`` / ``_stop`` for text and tool calls,
``message_delta`` with the stop reason and usage, ``message_stop``; ``error`` for a failure mid-stream), each
event whole, in order. Pure: no I/O. The request's translation is ``gateway.api.anthropic``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from gateway.api.anthropic import STOP_REASONS, error_body, message_id
from gateway.api.chat_chunks import chunk_usage, plain_text


def event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class MessageStream:
    """Chat-completion chunks in (parsed), Anthropic's streamed events out (encoded), in order."""

    model: str
    msg_id: str = field(default_factory=message_id)
    started: bool = False
    block: int = -1  # the index of the open content block; -1: none yet
    open_kind: str | None = None  # "text" or "tool_use"
    tool_blocks: dict[int, int] = field(default_factory=dict)  # a chat tool call's index -> its block
    finish: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    ended: bool = False

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [event("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self.block})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.block += 1
        self.open_kind = kind
        start = {"type": "content_block_start", "index": self.block, "content_block": block}
        return [*out, event("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event(
            "content_block_delta", {"type": "content_block_delta", "index": self.block, "delta": delta}
        )

    def feed_raw(self, data: bytes) -> list[bytes]:
        """One chunk as the upstream sent it (the JSON after ``data: ``). A plain text delta, nearly every
        chunk of an answer, is translated without parsing (``chat_chunks.plain_text``); anything else (tool
        calls, the finish, usage) is parsed."""
        if self.open_kind == "text":
            text = plain_text(data)
            if text is not None:
                return [_TEXT_EVENT_HEAD + b"%d" % self.block + _TEXT_EVENT_MID + text + _TEXT_EVENT_TAIL]
        return self.feed(json.loads(data))

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """One chat-completion chunk; the events it makes (none for a chunk that says nothing)."""
        out = self._start()
        self.input_tokens, self.output_tokens = chunk_usage(chunk, (self.input_tokens, self.output_tokens))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in self.tool_blocks:
                    tool_id = call.get("id") or f"toolu_{secrets.token_hex(12)}"
                    block = {"type": "tool_use", "id": tool_id, "name": function.get("name", ""), "input": {}}
                    out += self._open("tool_use", block)
                    self.tool_blocks[index] = self.block
                if function.get("arguments"):
                    out.append(
                        self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
                    )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> list[bytes]:
        """The stream's end: the open block closed, the stop reason and usage, ``message_stop``."""
        if self.ended:
            return []
        self.ended = True
        finish = "tool_calls" if self.tool_blocks and self.finish in (None, "stop") else self.finish
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS.get(finish or "stop", "end_turn"), "stop_sequence": None},
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        }
        return [
            *self._start(),
            *self._close(),
            event("message_delta", delta),
            event("message_stop", {"type": "message_stop"}),
        ]

    def error(self, message: str, status: int = 500) -> list[bytes]:
        """A failure mid-stream (the upstream's error event): Anthropic's ``error`` event ends the stream."""
        self.ended = True
        return [event("error", error_body(status, message))]


_TEXT_EVENT_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_EVENT_MID = b',"delta":{"type":"text_delta","text":'
_TEXT_EVENT_TAIL = b"}}\n\n"
