"""A streaming client that waits for its model (here: a swap, while another model that holds the memory
serves its own clients) gets its stream started and keep-alives (SSE comments; Anthropic's ``ping``
events) until it is admitted, then a normal stream that the official SDKs parse; a load that fails after
the stream started ends it with the API's error event. Real SmolLM2 in process, real sockets."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from backends.gguf.memory import MiB
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest, wait_for

SWAP_WAIT = 2.0
KEEPALIVE = 0.25


@contextmanager
def busy(gw: RunningGateway, model: str) -> Iterator[None]:
    """A closed-loop client keeping ``model`` busy (so another model's load must wait its turn)."""
    stop = threading.Event()
    started = threading.Event()
    body = {"model": model, "messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 64}

    def loop() -> None:
        with httpx.Client(base_url=gw.base_url, timeout=120) as http:
            while not stop.is_set():
                http.post("/v1/chat/completions", json=body)
                started.set()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        started.wait(120)  # its model is loaded and has served once
        yield
    finally:
        stop.set()
        thread.join(120)


def stream_lines(gw: RunningGateway, path: str, body: dict[str, object]) -> tuple[int, list[str]]:
    with (
        httpx.Client(base_url=gw.base_url, timeout=120) as http,
        http.stream("POST", path, json=body) as r,
    ):
        return r.status_code, [line for line in r.iter_lines() if line]


def test_a_stream_waiting_for_a_swap_gets_keepalives_then_its_answer(
    serve: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # loads fail: not a model
    gw = serve(
        [
            llama_manifest(name, path, memory=f"{100 * MiB}", backend={"n_threads": 1})
            for name, path in (("a", SMOLLM2), ("b", SMOLLM2), ("broken", broken))
        ],
        memory_budget=150 * MiB,  # one at a time
        max_swap_wait=SWAP_WAIT,
        stream_keepalive=KEEPALIVE,
    )
    ask = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True}

    with busy(gw, "a"):
        got: list[tuple[int, list[str]]] = []
        waiter = threading.Thread(
            target=lambda: got.append(stream_lines(gw, "/v1/chat/completions", {"model": "b", **ask}))
        )
        waiter.start()
        # operators see how long it has waited for its model
        wait_for(lambda: (gw.model_state("b")["waiting_seconds"] or 0) > 0, "b's wait in /admin/models")
        waiter.join(120)
    ((status, lines),) = got
    assert status == 200
    waited = [line for line in lines[: lines.index(next(ln for ln in lines if ln.startswith("data:")))]]
    assert waited and all(line.startswith(":") for line in waited), lines[:5]  # keep-alives first
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).strip()

    with busy(gw, "b"):  # the official SDK parses a stream that began with keep-alives
        stream = gw.client().chat.completions.create(model="a", stream=True, **_sdk(ask))
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()

    with busy(gw, "a"):  # Anthropic's SDK: ping events while it waits, then the message
        client = gw.anthropic_client()
        with client.messages.stream(
            model="b", max_tokens=8, messages=[{"role": "user", "content": "Say hi."}]
        ) as s:
            kinds = [event.type for event in s]
            final = s.get_final_message()
    assert final.content and final.content[0].type == "text" and final.content[0].text.strip()
    assert kinds[-1] == "message_stop"
    with busy(gw, "b"):  # the same, as bytes: pings first
        body = {
            "model": "a",
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        status, lines = stream_lines(gw, "/v1/messages", body)
    assert status == 200 and lines[:2] == ["event: ping", 'data: {"type":"ping"}'], lines[:4]
    assert "event: message_stop" in lines

    with busy(gw, "a"):  # its load fails after the stream began: the error comes as an error event
        status, lines = stream_lines(gw, "/v1/chat/completions", {"model": "broken", **ask})
    assert status == 200 and lines[0].startswith(":")
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "model_load_failed", error


def _sdk(body: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in body.items() if k != "stream"}
