"""Whether an upstream's 200 can be an OpenAI answer: its start, and each later event of a stream.

An upstream that answers 200 with something else (an nginx page, a truncated body, a broken event stream)
must become an upstream error, not bytes that a client's SDK then fails to decode in some confusing way.
Two checks, priced for the hot path:

- ``first_problem``: the start of the answer, before any byte reaches the client (so another replica may
  still answer). A whole body must look like a JSON object (its first and last bytes); a stream's first
  event is parsed, as it is the one a client decodes first.
- ``EventShape``: every later event of a stream, as the chunks pass. An event's data must be ``[DONE]`` or
  look like a JSON object, ``{`` ... ``}``; it is not parsed (a JSON parse per event would cost more than
  the rest of forwarding it), so a truncated or garbled event is caught, braces around garbage are not. A
  chunk holding exactly one ``data: {...}`` event (with an ``event:`` line before it or not), which is what
  llama-server and vLLM send, is judged by a few byte comparisons; anything else (events split across
  chunks, several in one, comments, CRLF) takes the slow path, which keeps at most one incomplete event
  between chunks.
"""

from __future__ import annotations

import json
import re

_FIRST_EVENT = re.compile(rb"(?:(?::[^\n]*|event:[^\n]*|id:[^\n]*|retry:[^\n]*)\n)*data: ?([^\n]*)\n")
_FIELDS = (b"event:", b"id:", b"retry:")


def first_problem(first: bytes, stream: bool) -> str | None:
    """What is wrong with the start of a 200 that cannot be an OpenAI answer, or None."""
    if not stream:
        body = first.strip()
        if body[:1] == b"{" and body[-1:] == b"}":
            return None
        return f"a body that is not a JSON object: {show(first)}"
    start = first.lstrip()
    if b"\n" not in start and start.startswith((b"data:", b":")):
        return None  # the first event's line is not complete yet: nothing to judge
    match = _FIRST_EVENT.match(start)
    if match is None:
        return f"a stream whose first event is not 'data: ...': {show(first)}"
    data = match.group(1).strip()
    if data == b"[DONE]":
        return None
    try:
        json.loads(data)
    except ValueError:
        return f"a stream whose first event is not JSON: {show(first)}"
    return None


class EventShape:
    """Checks the events of one stream as its chunks pass, in order. ``check(chunk)`` returns what is wrong
    with the first bad event that the chunk completes, or None; after a problem the stream must end."""

    __slots__ = ("_limit", "_pending")

    def __init__(self, limit: int = 16 * 2**20) -> None:
        self._pending = b""  # an event begun in an earlier chunk and not yet ended
        self._limit = limit  # one event larger than this is a problem, not a buffer that grows

    def check(self, chunk: bytes) -> str | None:
        # One whole event holding an object: the common case, plain (chat completions) or named (``event:``,
        # the Messages API of engines that speak it).
        if (
            not self._pending
            and chunk.endswith(b"}\n\n")
            and chunk.find(b"\n\n") == len(chunk) - 2
            and (
                chunk.startswith(b"data: {")
                or (chunk.startswith(b"event: ") and chunk.startswith(b"data: {", chunk.find(b"\n") + 1))
            )
        ):
            return None
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        *whole, self._pending = data.split(b"\n\n")
        for event in whole:
            problem = _event_problem(event)
            if problem is not None:
                return problem
        if len(self._pending) > self._limit:
            return f"an event of over {self._limit} bytes that does not end"
        return None


def _event_problem(event: bytes) -> str | None:
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line and not line.startswith(b":") and not line.startswith(_FIELDS):
            return f"a stream event that is not 'data: ...': {show(event)}"
    if not data:
        return None  # a comment or a keep-alive: nothing for a client to decode
    value = b"\n".join(data).strip()
    if value == b"[DONE]" or (value[:1] == b"{" and value[-1:] == b"}"):
        return None
    return f"a stream event whose data is not a JSON object: {show(event)}"


def show(data: bytes) -> str:
    return repr(data[:80].decode("utf-8", "replace"))
