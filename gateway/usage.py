"""What a response says about itself: token usage and finish reasons, read from the bytes as they pass.

Pure and byte-level: the gateway forwards responses untouched, so nothing here parses a whole JSON body.
A non-streamed body is searched from its ``"usage"`` key (at its end, where OpenAI servers put it). A stream
is read event by event with ``StreamReader``, which also removes the usage event that the gateway asked for
on the client's behalf (``stream_options.include_usage``) when the client did not ask for it itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from backends.errors import GatewayError

_FINISH = re.compile(rb'"finish_reason":\s*"(\w+)"')
_USAGE = re.compile(rb'"usage":\s*\{')
_PROMPT = re.compile(rb'"prompt_tokens":\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens":\s*(\d+)')
_CACHED = re.compile(rb'"cached_tokens":\s*(\d+)')
_EMPTY_CHOICES = re.compile(rb'"choices":\s*\[\]')
_EVENT_END = b"\n\n"
_USAGE_WINDOW = 512
_ERROR_EVENT = b'data: {"error":'
_ERROR_CODE = re.compile(rb'"code":\s*"(\w+)"')


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None


def parse_usage(data: bytes, start: int = 0) -> Usage | None:
    """The usage object at or after ``start`` (the position of its ``"usage"`` key), if any. A usage object
    is small: its numbers are looked for in the next few hundred bytes only."""
    match = _USAGE.search(data, start)
    if match is None:
        return None
    begin, stop = match.end(), match.end() + _USAGE_WINDOW
    prompt = _PROMPT.search(data, begin, stop)
    completion = _COMPLETION.search(data, begin, stop)
    cached = _CACHED.search(data, begin, stop)
    return Usage(
        prompt_tokens=int(prompt.group(1)) if prompt else 0,
        completion_tokens=int(completion.group(1)) if completion else 0,
        cached_tokens=int(cached.group(1)) if cached else None,
    )


def read_body(body: bytes) -> tuple[Usage | None, list[str]]:
    """Usage and finish reasons of a complete (non-streamed) response body."""
    at = body.rfind(b'"usage"')
    usage = parse_usage(body, at) if at != -1 else None
    return usage, [m.decode() for m in _FINISH.findall(body)]


@dataclass
class StreamReader:
    """Reads an SSE response chunk by chunk: counts events, collects finish reasons and usage, and, with
    ``strip_usage``, removes the usage event (the one with empty ``choices``) from what goes on.

    A chunk that holds whole events and no usage event to strip passes on as the very same bytes object. A
    chunk that ends inside an event is held back until that event is complete (the upstream's next read,
    normally of the same write), so that no event is read in two halves."""

    strip_usage: bool
    usage: Usage | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error_status: int | None = None  # an error event ended the stream (the status its type stands for)
    _held: bytes = b""

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """The bytes to send on now, and how many events (tokens, near enough) they complete."""
        if self._held:
            chunk = self._held + chunk
            self._held = b""
        if not chunk.endswith(_EVENT_END):
            cut = chunk.rfind(_EVENT_END) + 2  # 1 when there is none: keep the whole chunk
            if cut == 1:
                self._held = chunk
                return b"", 0
            chunk, self._held = chunk[:cut], chunk[cut:]
        if b'"finish_reason":' in chunk:
            self.finish_reasons.extend(m.decode() for m in _FINISH.findall(chunk))
        if _ERROR_EVENT in chunk:
            self.error_status = _error_status(chunk)
        at = chunk.find(b'"usage"')
        if at != -1 and (usage := parse_usage(chunk, at)) is not None:
            self.usage = usage
            if self.strip_usage:
                chunk = _without_usage_event(chunk, at)
        return chunk, chunk.count(_EVENT_END)

    def flush(self) -> bytes:
        """Whatever is still held when the stream ends (an unterminated last event), sent as it is."""
        held, self._held = self._held, b""
        return held


def _without_usage_event(chunk: bytes, at: int) -> bytes:
    """``chunk`` (whole events) without the event that contains position ``at``, if that event is a usage
    event (empty ``choices``); a server that reports usage on its last choice keeps that event."""
    start = chunk.rfind(_EVENT_END, 0, at)
    start = 0 if start == -1 else start + 2
    end = chunk.find(_EVENT_END, at) + 2
    if _EMPTY_CHOICES.search(chunk, start, end) is None:
        return chunk
    return chunk[:start] + chunk[end:]


def _error_status(chunk: bytes) -> int:
    """The HTTP status an in-stream error event stands for, from its ``code`` (502 when it is not one of the
    gateway's own: an engine's error)."""
    match = _ERROR_CODE.search(chunk, chunk.find(_ERROR_EVENT))
    return ERROR_STATUS.get(match.group(1).decode() if match else "", 502)


def _statuses(cls: type[GatewayError]) -> dict[str, int]:
    found = {cls.code: cls.status} if cls.code else {}
    for sub in cls.__subclasses__():
        found.update(_statuses(sub))
    return found


ERROR_STATUS = _statuses(GatewayError)
