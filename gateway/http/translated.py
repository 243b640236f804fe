"""Relaying a chat-completion stream translated to another API's events (Anthropic's Messages, OpenAI's
Responses): the upstream's server-sent events are cut at their boundaries, each is translated by the API's
pure state machine (``gateway.api.anthropic_stream``, ``gateway.api.responses_stream``), and what they make
goes to the client in one send per upstream read. The trace gets what the metrics read from a stream passed
through: the first byte, the gaps between pieces, the usage and the finish."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.types import Send

from backends.base import UpstreamResponse
from gateway.api.usage import Usage
from gateway.observability.metrics import Trace

DONE = b"data: [DONE]"


class Translator(Protocol):
    ended: bool
    finish: str | None
    input_tokens: int
    output_tokens: int

    def feed_raw(self, data: bytes) -> list[bytes]: ...

    def end(self) -> list[bytes]: ...

    def error(self, message: str) -> list[bytes]: ...


def translate_event(raw: bytes, events: Translator) -> list[bytes]:
    """One server-sent event of the chat stream, as the other API's events."""
    if not raw.startswith(b"data:"):
        return []  # a comment or a keep-alive
    if raw.startswith(DONE):
        return events.end()
    payload = raw[5:].strip()
    if b'"error"' in payload and b'"choices"' not in payload:
        data = json.loads(payload)
        error = data.get("error")
        message = error.get("message", "upstream error") if isinstance(error, dict) else str(error)
        return events.error(message)
    return events.feed_raw(payload)


async def relay_translated(
    upstream: UpstreamResponse,
    send: Send,
    trace: Trace | None,
    events: Translator,
    content_type: list[tuple[bytes, bytes]],
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The stream, translated. ``before_end`` runs once the answer is whole and before its last events go
    out (the Responses API stores the response there, so a client that has the end can already use it)."""
    await send({"type": "http.response.start", "status": 200, "headers": content_type})
    pending = b""
    last = 0.0
    try:
        async for chunk in upstream.body:
            pending += chunk
            *whole, pending = pending.split(b"\n\n")
            out: list[bytes] = []
            for raw in whole:
                out += translate_event(raw.strip(), events)
            if not out:
                continue
            if trace is not None:
                now = time.perf_counter()
                if last:
                    trace.gaps.append(now - last)
                else:
                    trace.first = now
                last = now
            if events.ended:
                break
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        else:
            out = []
        out += events.end()
        if before_end is not None:
            await before_end()
        await send({"type": "http.response.body", "body": b"".join(out), "more_body": False})
    finally:
        if trace is not None:
            trace.usage = Usage(events.input_tokens, events.output_tokens)
            trace.finish_reasons = [events.finish] if events.finish else []
            trace.completed = events.ended and events.finish is not None
