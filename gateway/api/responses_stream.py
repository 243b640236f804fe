"""The Responses API's streamed answer, made from a chat-completion stream: chunks in, OpenAI's typed events
out, each with its ``sequence_number``, each whole, in order:

``response.created``, ``response.in_progress``; per message ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``; per function call
``response.output_item.added``, ``response.function_call_arguments.delta``..., ``.done``,
``response.output_item.done``; then ``response.completed`` (``response.incomplete`` when the output limit cut
it), or ``response.failed`` for a failure mid-stream. Pure: no I/O. The request's translation is
``gateway.api.responses``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.api.chat_chunks import chunk_usage, plain_text
from gateway.api.responses import new_id
from gateway.api.responses_output import Outcome, call_item, response_object, text_item

_DELTA_TAIL = b',"logprobs":[]}\n\n'
_DELTA_HEAD = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
)


def _encode(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class _Call:
    index: int  # its output index
    item_id: str
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class ResponseStream:
    """Chat-completion chunks in (parsed, or raw with ``feed_raw``), the Responses API's events out."""

    response_id: str
    model: str
    echo: dict[str, Any]
    store: bool = True
    created: float = 0.0
    sequence: int = 0
    started: bool = False
    output: list[dict[str, Any]] = field(default_factory=list)  # finished items, in output order
    next_index: int = 0
    text_id: str | None = None  # the open message's id, if one is open
    text_index: int = -1
    text_raw: list[bytes] = field(default_factory=list)  # its deltas, as JSON string literals
    _delta_ids: bytes = b""  # the open message's part of each delta event
    calls: dict[int, _Call] = field(default_factory=dict)  # a chat tool call's index -> its item
    open_call: _Call | None = None
    finish: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    ended: bool = False
    outcome: Outcome | None = None  # set at the end: what a stored response keeps
    final: dict[str, Any] = field(default_factory=dict)  # the response as completed, set at the end

    def _event(self, kind: str, **data: Any) -> bytes:
        out = _encode({"type": kind, "sequence_number": self.sequence, **data})
        self.sequence += 1
        return out

    def _snapshot(self, outcome: Outcome | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(
            self.response_id,
            self.model,
            self.echo,
            outcome,
            created=self.created,
            store=self.store,
            error=error,
        )

    def start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        snapshot = self._snapshot(None)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _open_text(self) -> list[bytes]:
        out = self._close_call()
        self.text_id = new_id("msg")
        self.text_index = self.next_index
        self.next_index += 1
        self.text_raw = []
        self._delta_ids = b',"item_id":"%s","output_index":%d,"content_index":0,"delta":' % (
            self.text_id.encode(),
            self.text_index,
        )
        item = {
            "type": "message",
            "id": self.text_id,
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        ids = {"item_id": self.text_id, "output_index": self.text_index}
        return [
            *out,
            self._event("response.output_item.added", output_index=self.text_index, item=item),
            self._event("response.content_part.added", **ids, content_index=0, part=part),
        ]

    def _close_text(self, status: str = "completed") -> list[bytes]:
        if self.text_id is None:
            return []
        joined = b"".join(piece[1:-1] for piece in self.text_raw)
        text = json.loads(b'"' + joined + b'"') if self.text_raw else ""
        item = text_item(self.text_id, text, status)
        ids = {"item_id": self.text_id, "output_index": self.text_index, "content_index": 0}
        self.output.append(item)
        self.text_id = None
        return [
            self._event("response.output_text.done", **ids, text=text, logprobs=[]),
            self._event("response.content_part.done", **ids, part=item["content"][0]),
            self._event("response.output_item.done", output_index=self.text_index, item=item),
        ]

    def _close_call(self) -> list[bytes]:
        call = self.open_call
        if call is None:
            return []
        self.open_call = None
        arguments = "".join(call.arguments)
        item = call_item(call.item_id, call.call_id, call.name, arguments, "completed")
        self.output.append(item)
        ids = {"item_id": call.item_id, "output_index": call.index}
        return [
            self._event("response.function_call_arguments.done", **ids, name=call.name, arguments=arguments),
            self._event("response.output_item.done", output_index=call.index, item=item),
        ]

    def _text_delta(self, raw: bytes) -> bytes:
        """A delta event around ``raw``, the text as a JSON string literal (quotes included), copied as is.
        Every piece but the sequence number is made once per message (``_open_text``)."""
        self.text_raw.append(raw)
        sequence = self.sequence
        self.sequence = sequence + 1
        return b"".join((_DELTA_HEAD, b"%d" % sequence, self._delta_ids, raw, _DELTA_TAIL))

    def feed_raw(self, data: bytes) -> list[bytes]:
        """One chunk as the upstream sent it (the JSON after ``data: ``). A plain text delta, nearly every
        chunk of an answer, is translated without parsing (``chat_chunks.plain_text``): its content string
        is copied into the event and kept for the final text. Anything else is parsed."""
        if self.text_id is not None:
            text = plain_text(data)
            if text is not None:
                return [self._text_delta(text)]
        return self.feed(json.loads(data))

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """One chat-completion chunk; the events it makes (none for a chunk that says nothing)."""
        out = self.start()
        self.input_tokens, self.output_tokens = chunk_usage(chunk, (self.input_tokens, self.output_tokens))
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.text_id is None:
                    out += self._open_text()
                out.append(self._text_delta(json.dumps(text).encode()))
            for call in delta.get("tool_calls") or []:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _call_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        known = self.calls.get(index)
        if known is None:
            out += self._close_text()
            out += self._close_call()
            known = _Call(
                self.next_index, new_id("fc"), call.get("id") or new_id("call"), function.get("name", "")
            )
            self.next_index += 1
            self.calls[index] = self.open_call = known
            item = call_item(known.item_id, known.call_id, known.name, "", "in_progress")
            out.append(self._event("response.output_item.added", output_index=known.index, item=item))
        arguments = function.get("arguments")
        if arguments and known is self.open_call:
            known.arguments.append(arguments)
            ids = {"item_id": known.item_id, "output_index": known.index}
            out.append(self._event("response.function_call_arguments.delta", **ids, delta=arguments))
        return out

    def end(self) -> list[bytes]:
        """The stream's end: the open items closed, then ``response.completed`` (or ``.incomplete``)."""
        if self.ended:
            return []
        self.ended = True
        status = "incomplete" if self.finish == "length" else "completed"
        out = [*self.start(), *self._close_text(status), *self._close_call()]
        if not self.output:  # nothing said: an empty message, as a non-streamed answer has
            out += self._open_text()
            out += self._close_text(status)
        self.outcome = Outcome(self.output, status, self.input_tokens, self.output_tokens)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        self.final = self._snapshot(self.outcome)
        return [*out, self._event(kind, response=self.final)]

    def error(self, message: str, code: str = "server_error") -> list[bytes]:
        """A failure mid-stream: ``response.failed`` ends the stream (nothing of it is stored)."""
        self.ended = True
        failed = self._snapshot(None, error={"code": code, "message": message})
        return [*self.start(), self._event("response.failed", response=failed)]
