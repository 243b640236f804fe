"""What a response says about itself: token usage and finish reasons, read from the bytes as they pass.

Pure and byte-level: the gateway forwards responses untouched, so nothing here parses a whole JSON body.
A non-streamed body is searched from its ``"usage"`` key (at its end, where OpenAI servers put it). A stream
is read with ``StreamReader``, which also removes the usage event that the gateway asked for
on the client's behalf (``stream_options.include_usage``) when the client did not ask for it itself.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from backends.errors import GatewayError

_FINISH = re.compile(rb'"finish_reason":\s*"(\w+)"')
_USAGE = re.compile(rb'"usage":\s*\{')
# The two counts first, in the order OpenAI writes them, or vLLM (its ``total_tokens`` between them), or
# sorted (llama-server): read by one match; anything else takes the general scan (``_parse_usage_scan``).
_COUNTS = re.compile(
    rb'"usage":\s*\{\s*(?:"prompt_tokens":\s*(\d+),\s*(?:"total_tokens":\s*\d+,\s*)?'
    rb'"completion_tokens":\s*(\d+)'
    rb'|"completion_tokens":\s*(\d+),\s*"prompt_tokens":\s*(\d+))'
)
_CACHED = b'"cached_tokens"'
_NUMBER = re.compile(rb'"cached_tokens":\s*(\d+)')
_NUMBERS = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens)":\s*(\d+)')
_EMPTY_CHOICES = re.compile(rb'"choices":\s*\[\]')
_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]\n\n"
_USAGE_KEY = b'"usage"'
_FINISH_SET = b'"finish_reason":"'
_FINISH_SET_SPACED = b'"finish_reason": "'
_USAGE_WINDOW = 512
_MARKERS = re.compile(rb'"(?:finish_reason": ?"|usage"|error"|timings")')
_TIMINGS_KEY = b'"timings"'
_TIMINGS = re.compile(rb'"timings":\s*\{')
_TIMING_NUMBERS = re.compile(rb'"(prompt_n|predicted_n|cache_n)":\s*(\d+)')
_ERROR_EVENT = b'data: {"error":'
_ERROR_CODE = re.compile(rb'"code":\s*"(\w+)"')


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None


def parse_usage(data: bytes, start: int = 0) -> Usage | None:
    """The usage object at or after ``start`` (the position of its ``"usage"`` key), if any. A usage object
    is small: its numbers are looked for in the next few hundred bytes only. The common shapes (the two
    counts first, in either order) are read by one match; ``cached_tokens`` by one search after them."""
    counts = _COUNTS.match(data, start)
    if counts is None:
        return _parse_usage_scan(data, start)
    prompt, completion, completion2, prompt2 = counts.groups()
    usage = (
        Usage(int(prompt), int(completion)) if prompt is not None else Usage(int(prompt2), int(completion2))
    )
    window = data.find(b"{", start) + 1 + _USAGE_WINDOW  # as the scan's window: from the object's brace
    at = data.find(_CACHED, counts.end(), window)
    if at != -1 and (cached := _NUMBER.match(data, at)) is not None and cached.end() <= window:
        usage.cached_tokens = int(cached.group(1))
    return usage


def _parse_usage_scan(data: bytes, start: int) -> Usage | None:
    match = _USAGE.search(data, start)
    if match is None:
        return None
    usage = Usage()
    for key, value in _NUMBERS.findall(data, match.end(), match.end() + _USAGE_WINDOW):
        setattr(usage, key.decode(), int(value))
    return usage


def parse_timings(data: bytes, start: int) -> Usage | None:
    """The usage that llama.cpp's server gives in its ``timings`` object (at or after ``start``), which it
    puts on a stream's last chunk unasked: ``prompt_n`` prompt tokens evaluated, ``cache_n`` taken from its
    cache (their sum is its ``usage.prompt_tokens``, ``cache_n`` its ``cached_tokens``) and ``predicted_n``
    generated. None unless all three are there."""
    match = _TIMINGS.search(data, start)
    if match is None:
        return None
    found = dict(_TIMING_NUMBERS.findall(data, match.end(), match.end() + _USAGE_WINDOW))
    if len(found) < 3:  # an older server without ``cache_n`` would undercount a prompt taken from its cache
        return None
    cached = int(found[b"cache_n"])
    return Usage(int(found[b"prompt_n"]) + cached, int(found[b"predicted_n"]), cached)


def read_body(body: bytes, choices: int = 1) -> tuple[Usage | None, list[str]]:
    """Usage and finish reasons of a complete (non-streamed) response body with ``choices`` choices. For
    one choice only its last ``finish_reason`` is read (the body is not searched through twice)."""
    at = body.rfind(b'"usage"')
    usage = parse_usage(body, at) if at != -1 else None
    if choices == 1:
        last = body.rfind(b'"finish_reason"')
        found = _FINISH.match(body, last) if last != -1 else None
        return usage, [found.group(1).decode()] if found else []
    return usage, [m.decode() for m in _FINISH.findall(body)]


class StreamReader:
    """Reads an SSE response as it passes: its usage, finish reasons and a final error, and, with
    ``strip_usage``, takes the usage event (the one with empty ``choices``) out of what goes on.

    A stream has hundreds of chunks, so a chunk costs as little as can be: finish reasons, usage and errors
    come at the end of a stream, so the last ``TAIL`` chunks are kept (``keep``) and read once it has ended
    (``close``), joined, so that an event cut in two is read whole. The relay's loop
    (``gateway.http.relay``) keeps a chunk itself, without calling ``feed``, when nothing in it needs more:
    always when not stripping; when stripping, a chunk that ends a line, holds no ``"usage"`` key and comes
    while nothing is held back (``holding``). ``feed`` is the general path: a chunk that ends inside a line
    is held back until its event is complete (the upstream's next read, normally of the same write), so
    that a usage event is never cut in two; a chunk that holds whole events passes on as the very same
    bytes object. With several choices (``every_chunk``), which finish at different points, every chunk
    goes through ``feed`` and is read as it passes."""

    TAIL = 16

    __slots__ = ("_closed", "_from_timings", "_held", "_tail", "done", "error_status", "every_chunk",
                 "finish_reasons", "keep", "strip_usage", "timings", "usage")  # fmt: skip

    def __init__(self, strip_usage: bool, every_chunk: bool = False) -> None:
        self.strip_usage = strip_usage
        self.every_chunk = every_chunk
        self.usage: Usage | None = None
        self.finish_reasons: list[str] = []
        self.error_status: int | None = None  # an error event ended the stream (the status it stands for)
        self.done = False  # the stream's ``data: [DONE]`` has passed: the client has all of it
        self.timings = False  # llama.cpp's ``timings`` came with it: its server reports usage unasked
        self._from_timings = False  # ``usage`` came from timings (later ones, or a usage object, replace it)
        self._closed = False
        self._held = b""
        self._tail: deque[bytes] = deque(maxlen=self.TAIL)
        self.keep = self._tail.append  # note a chunk that passes untouched (the relay's fast path)

    @property
    def holding(self) -> bool:
        """The start of an event is held back, waiting for its end: the next chunk goes through ``feed``."""
        return bool(self._held)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send on now (empty while an incomplete event is held back)."""
        if self._held or not chunk.endswith(_EVENT_END):
            chunk = self._whole_events(chunk)
            if not chunk:
                return chunk
        if self.strip_usage and chunk.rfind(_USAGE_KEY) != -1:  # rfind: 2.4x faster than ``in`` here
            chunk = self._take_usage(chunk)
        if self.every_chunk:
            if chunk.endswith(_DONE):
                self.done = True
            self._read(chunk)
        else:
            self._tail.append(chunk)
        return chunk

    def close(self) -> bytes:
        """At the end of the stream: read the last chunks, and return what is still held (an unterminated
        last event), to be sent as it is."""
        if self._closed:
            return b""
        self._closed = True
        held, self._held = self._held, b""
        if not self.every_chunk:
            self._read_end(b"".join(self._tail) + held)
        self._tail.clear()
        return held

    def _whole_events(self, chunk: bytes) -> bytes:
        if self._held:
            chunk = self._held + chunk
            self._held = b""
        if chunk.endswith(_EVENT_END):
            return chunk
        cut = chunk.rfind(_EVENT_END) + 2  # 1 when there is none: hold the whole chunk
        if cut == 1:
            self._held = chunk
            return b""
        chunk, self._held = chunk[:cut], chunk[cut:]
        return chunk

    def _take_usage(self, chunk: bytes) -> bytes:
        at = chunk.find(_USAGE_KEY)
        usage = parse_usage(chunk, at)
        if usage is None:
            return chunk
        stripped = _without_usage_event(chunk, at, self._tail[-1] if self._tail else b"")
        if stripped is not chunk:
            self.usage, self._from_timings = usage, False
            # llama.cpp's server puts its ``timings`` on its last event, which is this one when asked: note
            # them before the event goes (then the gateway need not ask again).
            self._read_timings(chunk, chunk.find(_TIMINGS_KEY, at, chunk.find(_EVENT_END, at)))
        return stripped

    def _read_end(self, text: bytes) -> None:
        """The end of a stream of one choice (its last chunks, joined), searched from its end: its finish
        reason (the last that is not null), its usage (unless the stripped usage event gave it: that one is
        the stream's final count) and an error event."""
        if text.rfind(_DONE) != -1:
            self.done = True
        at = text.rfind(_FINISH_SET)  # a string value (not null), written compact or with one space
        at = text.rfind(_FINISH_SET_SPACED) if at == -1 else max(at, text.find(_FINISH_SET_SPACED, at))
        if at != -1 and (found := _FINISH.match(text, at)) is not None:
            self.finish_reasons.append(found.group(1).decode())
        if self.usage is None:
            at = text.rfind(_USAGE_KEY)
            while at != -1:  # a ``"usage"`` key may also hold null
                if (usage := parse_usage(text, at)) is not None:
                    self.usage = usage
                    break
                at = text.rfind(_USAGE_KEY, 0, at)
        self._read_timings(text, text.rfind(_TIMINGS_KEY))
        at = text.rfind(_ERROR_EVENT)
        if at != -1:
            self.error_status = _error_status(text, at)

    def _read_timings(self, text: bytes, at: int) -> None:
        """llama.cpp's ``timings`` at ``at`` (-1: none): its counts, when no ``usage`` object gave them (a
        server asked for ``timings_per_token`` sends them on every chunk: the last ones count)."""
        if at != -1 and (usage := parse_timings(text, at)) is not None:
            self.timings = True
            if self.usage is None or self._from_timings:
                self.usage, self._from_timings = usage, True

    def _read(self, chunk: bytes) -> None:
        # One scan for the three rare things (a finish reason that is not null, a usage object, an error).
        # Inside a JSON string a quote is escaped, so generated text cannot look like these keys.
        marker = _MARKERS.search(chunk)
        if marker is None:
            return
        start = marker.start()
        self.finish_reasons.extend(m.decode() for m in _FINISH.findall(chunk, start))
        at = chunk.find(_USAGE_KEY, start)
        if at != -1 and (usage := parse_usage(chunk, at)) is not None:
            self.usage, self._from_timings = usage, False
        self._read_timings(chunk, chunk.find(_TIMINGS_KEY, start))
        at = chunk.find(_ERROR_EVENT)
        if at != -1:
            self.error_status = _error_status(chunk, at)


def _without_usage_event(chunk: bytes, at: int, before: bytes = b"") -> bytes:
    """``chunk`` (whole events) without the event that contains position ``at``, if that event is a usage
    event (empty ``choices``); a server that reports usage on its last choice keeps that event. ``before``:
    the chunk that went out before this one. The relay passes a chunk that ends a line without calling
    ``feed``, so this one may begin with the blank line that ends the event before (it stays), or, with an
    upstream that writes ``event:`` or ``id:`` lines, inside the usage event: that one then goes on whole (a
    well-formed event the client did not ask for, rather than half of one)."""
    start = chunk.rfind(_EVENT_END, 0, at)
    if start != -1:
        start += 2
    elif not before or before.endswith(_EVENT_END):
        start = 0
    elif before.endswith(b"\n") and chunk[:1] == b"\n":
        start = 1
    else:
        return chunk
    end = chunk.find(_EVENT_END, at) + 2
    if _EMPTY_CHOICES.search(chunk, start, end) is None:
        return chunk
    return chunk[:start] + chunk[end:]


def _error_status(chunk: bytes, at: int) -> int:
    """The HTTP status the in-stream error event at ``at`` stands for, from its ``code`` (502 when it is not
    one of the gateway's own: an engine's error)."""
    match = _ERROR_CODE.search(chunk, at)
    return ERROR_STATUS.get(match.group(1).decode() if match else "", 502)


def _statuses(cls: type[GatewayError]) -> dict[str, int]:
    found = {cls.code: cls.status} if cls.code else {}
    for sub in cls.__subclasses__():
        found.update(_statuses(sub))
    return found


ERROR_STATUS = _statuses(GatewayError)
