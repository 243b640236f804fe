"""The checks of an upstream's answer (``backends/upstream/answer_shape.py``): pure, so every way an event
stream can be cut into chunks is tried here; the fault matrix proves the same over real sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.upstream.answer_shape import EventShape, first_problem

GOOD = [
    b'data: {"id":"1","choices":[{"delta":{"content":"a"}}]}\n\n',
    b": keep-alive comment\n\n",
    b'event: message\nid: 7\ndata: {"id":"2",\ndata: "choices":[]}\n\n',
    b'data:{"id":"3"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n',  # a named event
    b"data: [DONE]\n\n",
]


def feed(shape: EventShape, stream: bytes, cuts: list[int]) -> list[str]:
    problems, at = [], 0
    for cut in [*sorted(cuts), len(stream)]:
        if cut > at:
            problem = shape.check(stream[at:cut])
            if problem is not None:
                problems.append(problem)
        at = max(at, cut)
    return problems


@given(st.lists(st.integers(0, len(b"".join(GOOD))), max_size=12))
def test_a_good_stream_passes_however_it_is_cut(cuts: list[int]) -> None:
    assert feed(EventShape(), b"".join(GOOD), cuts) == []


@given(st.lists(st.integers(0, 2 * len(b"".join(GOOD))), max_size=12))
def test_crlf_line_ends_pass(cuts: list[int]) -> None:
    stream = b"".join(GOOD).replace(b"\n", b"\r\n")
    assert feed(EventShape(), stream, [c for c in cuts if c <= len(stream)]) == []


BAD = {
    "truncated object": b"data: {garbage\n\n",
    "not data": b"this is not an event\n\n",
    "plain text data": b"data: hello\n\n",
    "named, truncated": b"event: message_delta\ndata: {garbage\n\n",
    "named, plain text": b"event: message_delta\ndata: hello}\n\n",
    "html": b"<html><body>502 Bad Gateway</body></html>\n\n",
}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
@given(cuts=st.lists(st.integers(0, 400), max_size=8))
def test_a_bad_event_is_found_however_the_stream_is_cut(bad: bytes, cuts: list[int]) -> None:
    stream = GOOD[0] + GOOD[1] + bad + GOOD[0] + GOOD[-1]
    problems = feed(EventShape(), stream, [c for c in cuts if c <= len(stream)])
    assert len(problems) >= 1
    assert bad.split(b"\n")[0][:20].decode() in problems[0]


def test_the_bad_event_is_reported_on_the_chunk_that_completes_it() -> None:
    shape = EventShape()
    assert shape.check(GOOD[0]) is None
    assert shape.check(b"data: {garb") is None  # not ended yet: nothing to judge
    assert shape.check(b"age\n") is None
    assert shape.check(b"\n") is not None


def test_an_event_that_never_ends_is_a_problem_not_a_growing_buffer() -> None:
    shape = EventShape(limit=1000)
    assert shape.check(b'data: {"x": "' + b"y" * 900) is None
    problem = shape.check(b"y" * 200)
    assert problem is not None and "1000 bytes" in problem


def test_first_problem_parses_the_first_event_and_checks_a_body_by_its_braces() -> None:
    assert first_problem(GOOD[0], stream=True) is None
    assert first_problem(b"data: [DONE]\n\n", stream=True) is None
    assert first_problem(b"data: {not json}\n\n", stream=True) is not None
    assert first_problem(b'data: {"incomplete', stream=True) is None  # its line has not ended
    assert first_problem(json.dumps({"id": "x"}).encode(), stream=False) is None
    assert first_problem(b"<html></html>", stream=False) is not None
